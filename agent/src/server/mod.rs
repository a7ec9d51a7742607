//! The local HTTP API (axum): Open Inference Protocol v2, feedback, metrics,
//! and the admin/log endpoints the device's own tooling uses. Served on TCP
//! and optionally a Unix socket.
//!
//! This layer owns the OIP codec: it decodes request bodies against the
//! schema of the route the serving core picks, runs the decoded inputs on
//! that route, and encodes the outputs.

mod admin;
mod inference;
mod listen;

pub use listen::{bind, Bound};

use crate::serving::Agent;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
/// What every handler reads.
struct App {
    agent: Arc<Agent>,
    max_body: usize,
}

pub struct ServeOptions {
    pub listen: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub max_body: usize,
    /// TCP event loops. With more than one, each runs on its own thread and
    /// single-threaded runtime; an acceptor deals connections to them in
    /// turn, so a request never wakes another thread (measurements in
    /// docs/BENCHMARKS.md). With one, TCP is served on the caller's runtime.
    pub tcp_loops: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("nothing to listen on: give a TCP address or a Unix socket")]
    NoListener,
}

/// A JSON error. A server-side failure's detail (engine, log store,
/// runtime) goes to the agent's log; the client gets its code only.
fn error(status: StatusCode, code: &str, msg: impl std::fmt::Display) -> Response {
    let msg = if status.is_server_error() {
        tracing::error!(code, error = %msg, "request failed");
        "internal error (details are in the agent's log)".to_string()
    } else {
        msg.to_string()
    };
    (status, Json(json!({ "error": msg, "code": code }))).into_response()
}

fn body_error(r: BytesRejection, limit: usize) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is over the {limit}-byte limit"),
        )
    } else {
        error(r.status(), "bad_body", r.body_text())
    }
}

pub fn router(agent: Arc<Agent>, max_body: usize) -> Router {
    let app = App { agent, max_body };
    let infer_routes = Router::new()
        .route("/v2/models/{name}/infer", post(inference::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(inference::infer_version),
        )
        .route("/v2/models/{name}/feedback", post(inference::feedback))
        .layer(DefaultBodyLimit::max(max_body));
    let admin = Router::new()
        .route("/v1/models/activate", post(admin::activate))
        .layer(DefaultBodyLimit::max(admin::BUNDLE_LIMIT));
    Router::new()
        .route("/v2", get(inference::server_metadata))
        .route("/v2/health/live", get(inference::live))
        .route("/v2/health/ready", get(inference::ready))
        .route("/v2/models/{name}", get(inference::model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(inference::model_version_metadata),
        )
        .route("/v2/models/{name}/ready", get(inference::model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(inference::model_version_ready),
        )
        .route("/metrics", get(inference::metrics))
        .route("/v1/models", get(admin::models))
        .route("/v1/models/{name}/rollback", post(admin::rollback))
        .route(
            "/v1/models/{name}/challenger",
            delete(admin::clear_challenger),
        )
        .route("/v1/models/{name}/shadow", delete(admin::clear_shadow))
        .route("/v1/log", get(admin::read_log))
        .route("/v1/log/ack", post(admin::ack_log))
        .route("/v1/log/stats", get(admin::log_stats))
        .merge(infer_routes)
        .merge(admin)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(app)
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    bound: Bound,
    agent: Arc<Agent>,
    max_body: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::run(bound, router(agent, max_body), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: Response) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(axum::body::to_bytes(r.into_body(), usize::MAX))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn server_side_failures_keep_their_detail_out_of_the_response() {
        let r = error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "log_failed",
            "sled: /var/lib/ferry/log/conf: disk full",
        );
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v = body(r);
        assert_eq!(v["code"], "log_failed");
        assert!(!v["error"].as_str().unwrap().contains("sled"), "{v}");
        // A client's own mistake is explained to it.
        let v = body(error(
            StatusCode::BAD_REQUEST,
            "bad_input",
            "input \"x\": 3 values",
        ));
        assert_eq!(v["error"], "input \"x\": 3 values");
    }
}
