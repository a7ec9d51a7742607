//! The OpenAPI document, derived from the routers' annotated handlers and
//! the DTOs in `api::types`, served at [`DOCUMENT_PATH`].

use crate::api::{self, types::ErrorBody, AppState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const DOCUMENT_PATH: &str = "/api/v1/openapi.json";

/// The whole API: registry, telemetry, fleet and this document's route.
pub fn document() -> OpenApi {
    let mut doc = OpenApi::builder()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("Ferry control plane")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Signed ML models for edge fleets. Every route but health and this \
                     document needs `Authorization: Bearer TOKEN`; errors are \
                     `{\"error\": MESSAGE, \"code\": CODE}`.",
                ))
                .build(),
        )
        .build();
    doc.merge(api::routes().split_for_parts().1);
    doc.merge(crate::telemetry::api::routes().split_for_parts().1);
    doc.merge(crate::fleet::api::routes().split_for_parts().1);
    doc.merge(api::rollouts::routes().split_for_parts().1);
    doc.merge(routes().split_for_parts().1);
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    doc
}

/// The route that serves the document.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi))
}

/// This document; needs no token.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", security(()),
    responses((status = 200, body = Object, description = "OpenAPI 3.1"), (status = "5XX", body = ErrorBody)))]
async fn openapi() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let text = DOC.get_or_init(|| document().to_json().unwrap_or_else(|_| "{}".into()));
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

/// One operation of the document: method (upper case), path template and
/// tags; the RBAC matrix tests iterate these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub method: String,
    pub path: String,
    pub tags: Vec<String>,
}

/// Every operation of [`document`].
pub fn operations() -> Vec<Operation> {
    let doc = document();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                out.push(Operation {
                    method: method.into(),
                    path: path.clone(),
                    tags: op.tags.clone().unwrap_or_default(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::RefOr;

    #[test]
    fn every_response_has_a_schema() {
        let doc = document();
        let mut n = 0;
        for (path, item) in &doc.paths.paths {
            let ops = [&item.get, &item.put, &item.post, &item.delete, &item.patch];
            for op in ops.into_iter().flatten() {
                assert!(!op.responses.responses.is_empty(), "{path}: no responses");
                for (status, r) in &op.responses.responses {
                    let RefOr::T(r) = r else { continue };
                    assert!(!r.content.is_empty(), "{path} {status}: no content");
                    for (ty, c) in &r.content {
                        assert!(c.schema.is_some(), "{path} {status} {ty}: no schema");
                    }
                }
                n += 1;
            }
        }
        // Registry 28 (with the challenger comparison), telemetry 9 (with
        // monitoring), fleet 13, rollouts 10, the sign-in link 1.
        assert_eq!(n, 61);
        assert_eq!(operations().len(), n);
    }

    /// Routes are only added through `routes!` from annotated handlers,
    /// so the document and the routers are one list.
    #[test]
    fn routers_register_only_documented_handlers() {
        for (file, text) in [
            ("api/mod.rs", include_str!("../api/mod.rs")),
            ("fleet/api.rs", include_str!("../fleet/api.rs")),
            ("api/rollouts.rs", include_str!("../api/rollouts.rs")),
            ("telemetry/api.rs", include_str!("../telemetry/api.rs")),
            ("server/mod.rs", include_str!("mod.rs")),
            ("server/openapi.rs", include_str!("openapi.rs")),
        ] {
            let needle = [".rou", "te("].concat();
            assert!(
                !text.contains(&needle),
                "{file} adds a route that bypasses the OpenAPI document"
            );
        }
    }

    /// Every documented operation is served (the fleet's only when the
    /// fleet runs), and nothing answers the no-route fallback.
    #[tokio::test]
    async fn every_documented_path_is_routed() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        let store = crate::store::Store::connect(&db, 2).await.unwrap();
        let blobs = crate::blobs::Blobs::local(&dir.path().join("blobs")).unwrap();
        let state = AppState::new(
            store,
            blobs,
            dir.path().to_path_buf(),
            api::Limits {
                max_upload: 1 << 20,
                rate_per_minute: 0,
                root_tenant: "default".into(),
                secure_cookies: false,
            },
        );
        let app = super::super::app(state, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        for op in operations() {
            let path = op
                .path
                .replace("{name}", "m")
                .replace("{version}", "1")
                .replace("{alias}", "a")
                .replace("{id}", "x");
            let method = reqwest::Method::from_bytes(op.method.as_bytes()).unwrap();
            let resp = http
                .request(method, format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            // Fleet and rollout routes exist only with the fleet (`--quic`).
            let fleet = op.tags.iter().any(|t| t == "fleet" || t == "rollouts");
            let unrouted = body["code"] == "no_route" || status == 405;
            assert_eq!(unrouted, fleet, "{} {path}: {status} {body}", op.method);
        }
    }
}
