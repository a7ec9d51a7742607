//! RBAC matrix: every endpoint × every role × own/other tenant, asserting
//! the status code, against a real server on SQLite and on PostgreSQL.
//!
//! Each role works on its own models (`rbac-ROLE`, `rbac-del-ROLE`) so the
//! mutations one role is allowed do not change what another role sees. The
//! "other tenant" column uses tokens of tenant `beta` on the same names:
//! model-scoped endpoints answer 404 (never revealing that the name exists)
//! once the role check passes; tenant-scoped ones answer for beta's own data.
#![allow(clippy::unwrap_used)]

mod support;

use ferry::auth::Role;
use serde_json::{json, Value};
use support::{Backend, Fixture, Server, ADMIN};

both_backends!(rbac_matrix);

#[derive(Clone, Copy)]
enum Body {
    None,
    Json(&'static str),
    Bundle(u64),
    TrustV2,
}

struct Cell {
    method: &'static str,
    /// `{name}`, `{del}`, `{id}`, `{role}` are substituted.
    path: &'static str,
    route: &'static str,
    body: Body,
    /// `None`: no token needed.
    needs: Option<Role>,
    ok: u16,
    /// Status for a sufficient role of the other tenant.
    other: u16,
}

const fn c(
    method: &'static str,
    path: &'static str,
    route: &'static str,
    body: Body,
    needs: Option<Role>,
    ok: u16,
    other: u16,
) -> Cell {
    Cell {
        method,
        path,
        route,
        body,
        needs,
        ok,
        other,
    }
}

use Role::{Admin, Operator, Publisher, Viewer};

/// In execution order: reads, then the mutations each role may do.
const MATRIX: &[Cell] = &[
    c(
        "GET",
        "/api/v1/health",
        "/api/v1/health",
        Body::None,
        None,
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/openapi.json",
        "/api/v1/openapi.json",
        Body::None,
        None,
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/whoami",
        "/api/v1/whoami",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    c(
        "POST",
        "/api/v1/session/link",
        "/api/v1/session/link",
        Body::None,
        Some(Viewer),
        201,
        201,
    ),
    c(
        "GET",
        "/api/v1/models",
        "/api/v1/models",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/models/{name}",
        "/api/v1/models/{name}",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/models/{name}/versions",
        "/api/v1/models/{name}/versions",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/models/{name}/versions/1",
        "/api/v1/models/{name}/versions/{version}",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/models/{name}/versions/1/bundle",
        "/api/v1/models/{name}/versions/{version}/bundle",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/models/{name}/compare?versions=1,2",
        "/api/v1/models/{name}/compare",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/models/{name}/aliases",
        "/api/v1/models/{name}/aliases",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/projects",
        "/api/v1/projects",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/trust-root",
        "/api/v1/trust-root",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    c(
        "POST",
        "/api/v1/models",
        "/api/v1/models",
        Body::Bundle(3),
        Some(Publisher),
        201,
        422,
    ),
    c(
        "POST",
        "/api/v1/models/register",
        "/api/v1/models/register",
        Body::Bundle(4),
        Some(Publisher),
        201,
        422,
    ),
    c(
        "PUT",
        "/api/v1/models/{name}/aliases/production",
        "/api/v1/models/{name}/aliases/{alias}",
        Body::Json(r#"{"version": 1}"#),
        Some(Publisher),
        200,
        404,
    ),
    c(
        "POST",
        "/api/v1/models/{name}/promote",
        "/api/v1/models/{name}/promote",
        Body::Json(r#"{"version": 2, "alias": "challenger"}"#),
        Some(Publisher),
        200,
        404,
    ),
    c(
        "DELETE",
        "/api/v1/models/{name}/aliases/staging",
        "/api/v1/models/{name}/aliases/{alias}",
        Body::None,
        Some(Publisher),
        200,
        404,
    ),
    c(
        "POST",
        "/api/v1/models/{name}/versions/3/archive",
        "/api/v1/models/{name}/versions/{version}/archive",
        Body::None,
        Some(Publisher),
        200,
        404,
    ),
    c(
        "POST",
        "/api/v1/models/{name}/versions/3/restore",
        "/api/v1/models/{name}/versions/{version}/restore",
        Body::None,
        Some(Publisher),
        200,
        404,
    ),
    c(
        "POST",
        "/api/v1/projects",
        "/api/v1/projects",
        Body::Json("project"),
        Some(Publisher),
        201,
        201,
    ),
    c(
        "GET",
        "/api/v1/tokens",
        "/api/v1/tokens",
        Body::None,
        Some(Admin),
        200,
        200,
    ),
    c(
        "POST",
        "/api/v1/tokens",
        "/api/v1/tokens",
        Body::Json(r#"{"name": "made-in-matrix", "role": "viewer"}"#),
        Some(Admin),
        201,
        201,
    ),
    c(
        "DELETE",
        "/api/v1/tokens/{id}",
        "/api/v1/tokens/{id}",
        Body::None,
        Some(Admin),
        200,
        404,
    ),
    c(
        "PUT",
        "/api/v1/trust-root",
        "/api/v1/trust-root",
        Body::TrustV2,
        Some(Admin),
        200,
        422,
    ),
    // Telemetry: reads for any role; drift policies and alert
    // acknowledgement for operators. The drift and metrics series answer
    // an empty series for a name the tenant does not have (200).
    c(
        "GET",
        "/api/v1/models/{name}/drift",
        "/api/v1/models/{name}/drift",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/models/{name}/metrics",
        "/api/v1/models/{name}/metrics",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    // Monitoring and the challenger comparison are scoped as the model
    // routes: another tenant's name is not found.
    c(
        "GET",
        "/api/v1/models/{name}/monitoring",
        "/api/v1/models/{name}/monitoring",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/models/{name}/challenger",
        "/api/v1/models/{name}/challenger",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/models/{name}/drift-config",
        "/api/v1/models/{name}/drift-config",
        Body::None,
        Some(Viewer),
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/alerts",
        "/api/v1/alerts",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/retrain-triggers",
        "/api/v1/retrain-triggers",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/devices",
        "/api/v1/devices",
        Body::None,
        Some(Viewer),
        200,
        200,
    ),
    c(
        "POST",
        "/api/v1/models/{name}/drift-config",
        "/api/v1/models/{name}/drift-config",
        Body::Json(r#"{"psi_threshold": 0.25, "min_drifted_rows": 50}"#),
        Some(Operator),
        200,
        404,
    ),
    // No alert exists here (alerts come from device telemetry): the role
    // gate answers first, then 404 in either tenant.
    c(
        "POST",
        "/api/v1/alerts/alr_0000000000000000/ack",
        "/api/v1/alerts/{id}/ack",
        Body::None,
        Some(Operator),
        404,
        404,
    ),
    c(
        "GET",
        "/api/v1/audit",
        "/api/v1/audit",
        Body::None,
        Some(Admin),
        200,
        200,
    ),
    c(
        "DELETE",
        "/api/v1/models/{name}/versions/4",
        "/api/v1/models/{name}/versions/{version}",
        Body::None,
        Some(Admin),
        200,
        404,
    ),
    c(
        "DELETE",
        "/api/v1/models/{del}",
        "/api/v1/models/{name}",
        Body::None,
        Some(Admin),
        200,
        404,
    ),
];

/// Iterates the generated OpenAPI document: a new route without a matrix
/// entry fails here. (Fleet and rollout routes have their own matrices, in
/// the e2e tests: `fleet_rbac`, `rollout_e2e::rollout_rbac_matrix`.)
#[test]
fn matrix_covers_every_route() {
    let ops = ferry::server::openapi::operations();
    assert!(ops.len() > 30, "{ops:?}");
    for op in ops
        .iter()
        .filter(|o| !o.tags.iter().any(|t| t == "fleet" || t == "rollouts"))
    {
        assert!(
            MATRIX
                .iter()
                .any(|c| c.method == op.method && c.route == op.path),
            "{} {} is not in the RBAC matrix",
            op.method,
            op.path
        );
    }
    for c in MATRIX {
        assert!(
            ops.iter()
                .any(|o| o.method == c.method && o.path == c.route),
            "{} {} is in the matrix but not in the OpenAPI document",
            c.method,
            c.route
        );
    }
}

async fn rbac_matrix(b: Backend) {
    let fx = Fixture::get();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&b, dir.path(), &["--rate-limit-per-minute", "0"]);
    let api = srv.api();
    let (s, _) = api.push_trust(ADMIN, &fx.path("default.root")).await;
    assert_eq!(s, 200);
    let beta_admin = api.token(ADMIN, "beta-admin", "admin", Some("beta")).await;
    let (s, _) = api.push_trust(&beta_admin, &fx.path("beta.root")).await;
    assert_eq!(s, 200);

    // Per role: its models, an alias to remove, a token to revoke, and a
    // token in each tenant.
    let mut own = Vec::new();
    let mut other = Vec::new();
    let mut victims = Vec::new();
    for role in Role::ALL {
        let r = role.as_str();
        for v in [1, 2] {
            let (s, x) = api.push(ADMIN, &fx.simple(&format!("rbac-{r}"), v)).await;
            assert_eq!(s, 201, "{x}");
        }
        let (s, _) = api
            .push(ADMIN, &fx.simple(&format!("rbac-del-{r}"), 1))
            .await;
        assert_eq!(s, 201);
        let (s, _) = api
            .call(
                ADMIN,
                "PUT",
                &format!("/api/v1/models/rbac-{r}/aliases/staging"),
                Some(json!({"version": 1})),
            )
            .await;
        assert_eq!(s, 200);
        let (s, v) = api
            .call(
                ADMIN,
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": format!("victim-{r}"), "role": "viewer"})),
            )
            .await;
        assert_eq!(s, 201);
        victims.push(v["id"].as_str().unwrap().to_string());
        own.push(api.token(ADMIN, &format!("own-{r}"), r, None).await);
        other.push(
            api.token(ADMIN, &format!("beta-{r}"), r, Some("beta"))
                .await,
        );
    }

    let mut failures = Vec::new();
    let mut checked = 0;
    for (tenant_is_own, tokens) in [(true, &own), (false, &other)] {
        for (i, role) in Role::ALL.into_iter().enumerate() {
            let r = role.as_str();
            for cell in MATRIX {
                let path = cell
                    .path
                    .replace("{name}", &format!("rbac-{r}"))
                    .replace("{del}", &format!("rbac-del-{r}"))
                    .replace("{id}", &victims[i]);
                let body: Option<Vec<u8>> = match cell.body {
                    Body::None => None,
                    Body::Json("project") => Some(
                        json!({"name": format!("proj-{r}-{}", if tenant_is_own { "own" } else { "other" })})
                            .to_string()
                            .into_bytes(),
                    ),
                    Body::Json(j) => Some(j.as_bytes().to_vec()),
                    Body::Bundle(v) => Some(std::fs::read(fx.simple(&format!("rbac-{r}"), v)).unwrap()),
                    Body::TrustV2 => Some(std::fs::read(fx.path("default-v2.root")).unwrap()),
                };
                let token = if cell.needs.is_some() {
                    tokens[i].as_str()
                } else {
                    ""
                };
                let m = reqwest::Method::from_bytes(cell.method.as_bytes()).unwrap();
                let mut req = api.http.request(m, format!("{}{path}", api.base));
                if !token.is_empty() {
                    req = req.bearer_auth(token);
                }
                if let Some(b) = body {
                    req = req.body(b);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let expected = match cell.needs {
                    Some(need) if role < need => 403,
                    _ if tenant_is_own => cell.ok,
                    _ => cell.other,
                };
                checked += 1;
                if status != expected {
                    failures.push(format!(
                        "{} {} as {r} of {} tenant: got {status}, expected {expected}: {}",
                        cell.method,
                        path,
                        if tenant_is_own { "own" } else { "other" },
                        text.chars().take(200).collect::<String>()
                    ));
                }
                if status >= 400 {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if !v["error"].is_string() {
                        failures.push(format!(
                            "{} {path}: error without a JSON message: {text}",
                            cell.method
                        ));
                    }
                }
                // Tenant-scoped listings never show the other tenant's names.
                // (The drift and metrics series echo the name asked for.)
                if !tenant_is_own
                    && status == 200
                    && !path.starts_with("/api/v1/audit")
                    && !path.ends_with("/drift")
                    && !path.ends_with("/metrics")
                    && text.contains("rbac-")
                {
                    failures.push(format!(
                        "{} {path} as beta {r} leaks default's names: {text}",
                        cell.method
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, MATRIX.len() * 8);

    // Every 403 was audited in the caller's tenant.
    let (_, a) = api
        .get(ADMIN, "/api/v1/audit?outcome=refused&limit=1000")
        .await;
    let forbidden = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["detail"].as_str().unwrap().starts_with("forbidden"))
        .count();
    let expected_403 = Role::ALL
        .iter()
        .map(|role| {
            MATRIX
                .iter()
                .filter(|c| c.needs.is_some_and(|n| *role < n))
                .count()
        })
        .sum::<usize>();
    assert_eq!(forbidden, expected_403);
}
