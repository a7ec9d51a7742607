//! The local HTTP API (axum), on two surfaces:
//!
//! - the inference port (TCP, optionally a Unix socket): Open Inference
//!   Protocol v2, feedback, health and metrics. On TCP every request must
//!   name a loopback host or one the operator allowed (DNS rebinding), a
//!   browser's cross-origin request is refused, and a POST must carry a JSON
//!   or binary-tensor body (CSRF: a page can only send text/plain, form or
//!   multipart bodies without a preflight) (`guard`);
//! - the admin API (activation, rollback, clearing roles, the inference log)
//!   on its own listener: a Unix socket, mode 0600, by default
//!   `DATA/admin.sock`, and optionally a loopback TCP port that wants the
//!   bearer token kept in `DATA/admin.token` (`admin_access`).
//!
//! This layer owns the OIP codec: it decodes request bodies against the
//! schema of the route the serving core picks, runs the decoded inputs on
//! that route, and encodes the outputs.

mod admin;
pub mod admin_access;
mod guard;
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
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
/// What every handler reads.
struct App {
    agent: Arc<Agent>,
    max_body: usize,
    rows: Arc<RowLimits>,
}

/// The most rows one infer request may carry, per model.
#[derive(Debug, Clone)]
pub struct RowLimits {
    pub default: u64,
    pub per_model: BTreeMap<String, u64>,
}

impl RowLimits {
    pub fn for_model(&self, model: &str) -> u64 {
        self.per_model.get(model).copied().unwrap_or(self.default)
    }
}

impl Default for RowLimits {
    fn default() -> Self {
        Self {
            default: crate::config::DEFAULT_MAX_BATCH_ROWS,
            per_model: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The inference port.
    pub listen: Option<SocketAddr>,
    /// The inference API on a Unix socket too.
    pub unix_socket: Option<PathBuf>,
    /// The admin API's Unix socket (made mode 0600).
    pub admin_socket: Option<PathBuf>,
    /// The admin API on a loopback TCP port, with `admin_token`.
    pub admin_listen: Option<SocketAddr>,
    /// The bearer token the admin TCP port wants (required with it).
    pub admin_token: Option<String>,
    /// Host names besides the loopback ones the inference port answers to.
    pub allowed_hosts: Vec<String>,
    pub max_body: usize,
    pub rows: RowLimits,
    /// TCP event loops. With more than one, each runs on its own thread and
    /// single-threaded runtime; an acceptor deals connections to them in
    /// turn, so a request never wakes another thread (measurements in
    /// docs/BENCHMARKS.md). With one, TCP is served on the caller's runtime.
    pub tcp_loops: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: None,
            unix_socket: None,
            admin_socket: None,
            admin_listen: None,
            admin_token: None,
            allowed_hosts: Vec::new(),
            max_body: crate::config::DEFAULT_MAX_BODY,
            rows: RowLimits::default(),
            tcp_loops: 1,
        }
    }
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
    #[error("the admin TCP port needs a token")]
    NoAdminToken,
    #[error(transparent)]
    Admin(#[from] admin_access::AccessError),
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

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The inference API: OIP, feedback, health, metrics. No admin or log
/// route is on it.
pub fn inference_router(agent: Arc<Agent>, opts: &ServeOptions) -> Router {
    let app = App {
        agent,
        max_body: opts.max_body,
        rows: Arc::new(opts.rows.clone()),
    };
    let infer_routes = Router::new()
        .route("/v2/models/{name}/infer", post(inference::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(inference::infer_version),
        )
        .route("/v2/models/{name}/feedback", post(inference::feedback))
        .layer(DefaultBodyLimit::max(opts.max_body));
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
        .merge(infer_routes)
        .fallback(|| async { not_found() })
        .with_state(app)
}

/// The admin API: activation state, side-load, rollback, clearing a
/// challenger or shadow, and the inference log. Served only on the admin
/// listeners.
pub fn admin_router(agent: Arc<Agent>, opts: &ServeOptions) -> Router {
    let app = App {
        agent,
        max_body: opts.max_body,
        rows: Arc::new(opts.rows.clone()),
    };
    Router::new()
        .route("/v1/models", get(admin::models))
        // The upload is streamed to disk with its own byte limit.
        .route("/v1/models/activate", post(admin::activate))
        .route("/v1/models/{name}/rollback", post(admin::rollback))
        .route(
            "/v1/models/{name}/challenger",
            delete(admin::clear_challenger),
        )
        .route("/v1/models/{name}/shadow", delete(admin::clear_shadow))
        .route("/v1/log", get(admin::read_log))
        .route("/v1/log/ack", post(admin::ack_log))
        .route("/v1/log/stats", get(admin::log_stats))
        .route("/v2/health/live", get(inference::live))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .fallback(|| async { not_found() })
        .with_state(app)
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    bound: Bound,
    agent: Arc<Agent>,
    opts: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let inference = inference_router(agent.clone(), opts);
    let hosts = Arc::new(guard::Hosts::new(&opts.allowed_hosts));
    let guarded = guard::layer(inference.clone(), hosts.clone());
    let admin = admin_router(agent, opts);
    let admin_tcp = opts
        .admin_token
        .as_ref()
        .map(|t| guard::layer(admin_access::require_token(admin.clone(), t.clone()), hosts));
    listen::run(
        bound,
        listen::Apps {
            tcp: guarded,
            unix: inference,
            admin,
            admin_tcp,
        },
        shutdown,
    )
    .await
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
