//! The local HTTP API (axum): Open Inference Protocol v2, feedback, metrics,
//! and the admin/log endpoints the device's own tooling uses. Served on TCP
//! and optionally a Unix socket.

use crate::oip::HEADER_LEN;
use crate::serving::{Agent, InferError, Role};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ferry_protocol::{Dim, TensorSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Requests larger than this run on the blocking pool instead of inline.
const INLINE_BODY: usize = 64 * 1024;
/// Largest bundle accepted by `POST /v1/models/activate`.
const BUNDLE_LIMIT: usize = 4 << 30;

#[derive(Clone)]
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
    /// turn, and a request never wakes another thread (on two cores the
    /// work-stealing runtime spent a fifth of its time on those wake-ups).
    /// With one, TCP is served on the caller's runtime.
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

fn error(status: StatusCode, code: &str, msg: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": msg.to_string(), "code": code })),
    )
        .into_response()
}

fn infer_error(e: &InferError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.code(), e)
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
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
        .route("/v2/models/{name}/feedback", post(feedback))
        .layer(DefaultBodyLimit::max(max_body));
    let admin = Router::new()
        .route("/v1/models/activate", post(activate))
        .layer(DefaultBodyLimit::max(BUNDLE_LIMIT));
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_version_metadata),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{name}/rollback", post(rollback))
        .route("/v1/models/{name}/challenger", delete(clear_challenger))
        .route("/v1/models/{name}/shadow", delete(clear_shadow))
        .route("/v1/log", get(read_log))
        .route("/v1/log/ack", post(ack_log))
        .route("/v1/log/stats", get(log_stats))
        .merge(infer_routes)
        .merge(admin)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(app)
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(app): State<App>) -> Response {
    let ready = app.agent.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "ferry-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

fn spec_json(s: &TensorSpec) -> Value {
    let shape: Vec<i64> = s
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as i64,
            Dim::Symbolic(_) => -1,
        })
        .collect();
    json!({ "name": s.name, "datatype": s.dtype.oip_name(), "shape": shape })
}

fn metadata(app: &App, name: &str, version: Option<&str>) -> Response {
    let table = app.agent.table();
    let Some(routes) = table.models.get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!("unknown model {name:?}"),
        );
    };
    let all: Vec<_> = [
        Some(&routes.champion),
        routes.challenger.as_ref().map(|c| &c.0),
        routes.shadow.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let route = match version {
        None => &routes.champion,
        Some(v) => match all.iter().find(|r| r.version().to_string() == v) {
            Some(r) => r,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    "unknown_version",
                    format!("model {name:?} has no loaded version {v}"),
                )
            }
        },
    };
    let m = &route.loaded.manifest;
    let versions: Vec<String> = all.iter().map(|r| r.version().to_string()).collect();
    Json(json!({
        "name": name,
        "versions": versions,
        "platform": "onnx",
        "inputs": m.schema.inputs.iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": m.schema.outputs.iter().map(spec_json).collect::<Vec<_>>(),
        "parameters": {
            "version": m.version,
            "variant": route.variant,
            "tags": m.tags,
            "metrics": m.metrics,
            "created_at": m.created_at,
        },
    }))
    .into_response()
}

async fn model_metadata(State(app): State<App>, Path(name): Path<String>) -> Response {
    metadata(&app, &name, None)
}

async fn model_version_metadata(
    State(app): State<App>,
    Path((name, v)): Path<(String, String)>,
) -> Response {
    metadata(&app, &name, Some(&v))
}

fn model_ready_response(app: &App, name: &str, version: Option<&str>) -> Response {
    let table = app.agent.table();
    let ready = table.models.get(name).is_some_and(|r| match version {
        None => true,
        Some(v) => [
            Some(&r.champion),
            r.challenger.as_ref().map(|c| &c.0),
            r.shadow.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|r| r.version().to_string() == v),
    });
    if ready {
        Json(json!({ "name": name, "ready": true })).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!("model {name:?} is not ready"),
        )
    }
}

async fn model_ready(State(app): State<App>, Path(name): Path<String>) -> Response {
    model_ready_response(&app, &name, None)
}

async fn model_version_ready(
    State(app): State<App>,
    Path((name, v)): Path<(String, String)>,
) -> Response {
    model_ready_response(&app, &name, Some(&v))
}

async fn infer(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(app, name, None, headers, body).await
}

async fn infer_version(
    State(app): State<App>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(app, name, Some(version), headers, body).await
}

async fn run_infer(
    app: App,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            app.agent.metrics.rejected(&name, "bad_body");
            return body_error(r, app.max_body);
        }
    };
    let json_len = match headers
        .get(HEADER_LEN)
        .map(|v| v.to_str().ok().and_then(|s| s.parse().ok()))
    {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_header",
                "Inference-Header-Content-Length is not a number",
            )
        }
    };
    let key = headers
        .get("x-ferry-routing-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let agent = app.agent.clone();
    let result = if body.len() <= INLINE_BODY {
        agent.infer(&name, version.as_deref(), &body, json_len, key.as_deref())
    } else {
        // Large batches: keep the async workers free for small requests.
        let a = agent.clone();
        match tokio::task::spawn_blocking(move || {
            a.infer(&name, version.as_deref(), &body, json_len, key.as_deref())
        })
        .await
        {
            Ok(r) => r,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        }
    };
    match result {
        Ok(enc) => {
            if let Err(e) = agent.log.wait_durable().await {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "log_failed", e);
            }
            let mut resp = enc.body.into_response();
            let h = resp.headers_mut();
            match enc.json_len {
                None => {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                Some(n) => {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    h.insert(HEADER_LEN, HeaderValue::from(n));
                }
            }
            resp
        }
        Err(e) => infer_error(&e),
    }
}

#[derive(Deserialize)]
struct Feedback {
    id: String,
    label: Value,
}

async fn feedback(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_error(r, app.max_body),
    };
    let fb: Feedback = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("feedback must be {{\"id\": \"<request id>\", \"label\": <value>}}: {e}"),
            )
        }
    };
    match app.agent.feedback(&name, fb.id, fb.label.to_string()) {
        Ok(seq) => {
            if let Err(e) = app.agent.log.wait_durable().await {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "log_failed", e);
            }
            Json(json!({ "ok": true, "seq": seq })).into_response()
        }
        Err(e) => infer_error(&e),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let text = app.agent.metrics.render(Some(app.agent.log.stats()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(app): State<App>) -> Response {
    Json(json!(app.agent.state())).into_response()
}

#[derive(Deserialize)]
struct ActivateQuery {
    role: Option<String>,
    split: Option<f64>,
    /// A bundle already on this device (side-load without upload).
    path: Option<PathBuf>,
}

async fn activate(
    State(app): State<App>,
    Query(q): Query<ActivateQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let role: Role = match q.role.as_deref().unwrap_or("champion").parse() {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_role", e),
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_error(r, BUNDLE_LIMIT),
    };
    let agent = app.agent.clone();
    let job = move || -> Result<_, crate::serving::ActivateError> {
        match q.path {
            Some(p) => agent.install(&p, role, q.split),
            None => {
                let tmp = agent.upload_path();
                std::fs::write(&tmp, &body).map_err(|source| {
                    crate::serving::ActivateError::Io {
                        what: "writing upload",
                        path: tmp.clone(),
                        source,
                    }
                })?;
                let r = agent.install(&tmp, role, q.split);
                let _ = std::fs::remove_file(&tmp);
                r
            }
        }
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(Ok(a)) => Json(json!(a)).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn rollback(State(app): State<App>, Path(name): Path<String>) -> Response {
    let agent = app.agent.clone();
    match tokio::task::spawn_blocking(move || agent.rollback(&name)).await {
        Ok(Ok(a)) => Json(json!(a)).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn clear_role(app: App, name: String, role: Role) -> Response {
    let agent = app.agent.clone();
    match tokio::task::spawn_blocking(move || agent.clear(&name, role)).await {
        Ok(Ok(())) => Json(json!({ "ok": true })).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e.code(), e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn clear_challenger(State(app): State<App>, Path(name): Path<String>) -> Response {
    clear_role(app, name, Role::Challenger).await
}

async fn clear_shadow(State(app): State<App>, Path(name): Path<String>) -> Response {
    clear_role(app, name, Role::Shadow).await
}

#[derive(Deserialize)]
struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn read_log(State(app): State<App>, Query(q): Query<LogQuery>) -> Response {
    let from = q.from.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).min(10_000);
    match app.agent.log.read_from(from, limit) {
        Ok(entries) => {
            let next = entries.last().map(|(s, _)| s + 1).unwrap_or(from);
            let records: Vec<Value> = entries
                .into_iter()
                .map(|(seq, e)| json!({ "seq": seq, "entry": e }))
                .collect();
            Json(json!({ "records": records, "next": next })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "log_failed", e),
    }
}

#[derive(Deserialize)]
struct Ack {
    upto: u64,
}

async fn ack_log(State(app): State<App>, body: Bytes) -> Response {
    let ack: Ack = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("expected {{\"upto\": N}}: {e}"),
            )
        }
    };
    match app.agent.log.ack(ack.upto) {
        Ok(n) => Json(json!({ "deleted": n })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "log_failed", e),
    }
}

async fn log_stats(State(app): State<App>) -> Response {
    Json(json!(app.agent.log.stats())).into_response()
}

/// Bound listeners, ready to serve.
pub struct Bound {
    tcp: Option<std::net::TcpListener>,
    tcp_loops: usize,
    unix: Option<tokio::net::UnixListener>,
    pub local_addr: Option<SocketAddr>,
}

pub async fn bind(opts: &ServeOptions) -> Result<Bound, ServeError> {
    if opts.listen.is_none() && opts.unix_socket.is_none() {
        return Err(ServeError::NoListener);
    }
    let tcp = match opts.listen {
        Some(a) => {
            let err = |source| ServeError::Bind {
                what: a.to_string(),
                source,
            };
            let l = tokio::net::TcpListener::bind(a).await.map_err(err)?;
            Some(l.into_std().map_err(err)?)
        }
        None => None,
    };
    let unix = match &opts.unix_socket {
        Some(p) => {
            // A stale socket from a previous run would make bind fail.
            let _ = std::fs::remove_file(p);
            Some(
                tokio::net::UnixListener::bind(p).map_err(|source| ServeError::Bind {
                    what: p.display().to_string(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let local_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    Ok(Bound {
        tcp,
        tcp_loops: opts.tcp_loops.max(1),
        unix,
        local_addr,
    })
}

/// axum over `l` until `stop` fires.
async fn serve_on<L>(
    l: L,
    app: Router,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(l, app)
        .with_graceful_shutdown(async move {
            let _ = stop.recv().await;
        })
        .await
}

type Handed = (std::net::TcpStream, SocketAddr);

/// One serving loop's share of the connections, as axum's listener.
struct Dealt {
    rx: tokio::sync::mpsc::UnboundedReceiver<Handed>,
    local: SocketAddr,
}

impl axum::serve::Listener for Dealt {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.rx.recv().await {
                Some((s, a)) => match tokio::net::TcpStream::from_std(s) {
                    Ok(s) => return (s, a),
                    Err(e) => tracing::warn!(error = %e, peer = %a, "dropping a connection"),
                },
                // The acceptor stopped: graceful shutdown ends this loop.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accepts on `l` and deals connections to `loops` in turn, until `stop`.
/// Round robin keeps the loops evenly loaded, which a kernel hash over
/// `SO_REUSEPORT` listeners did not (52 % against 38 % of samples).
async fn deal(
    l: std::net::TcpListener,
    loops: Vec<tokio::sync::mpsc::UnboundedSender<Handed>>,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::from_std(l)?;
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = stop.recv() => return Ok(()),
            r = l.accept() => match r {
                Ok((s, peer)) => {
                    // Nagle would add up to 40 ms to small responses.
                    let _ = s.set_nodelay(true);
                    let s = s.into_std()?;
                    if let Some(tx) = loops.get(next % loops.len()) {
                        if tx.send((s, peer)).is_err() {
                            tracing::warn!(peer = %peer, "a serving loop has stopped");
                        }
                    }
                    next = next.wrapping_add(1);
                }
                // Out of descriptors and the like: back off, as axum does.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    bound: Bound,
    agent: Arc<Agent>,
    max_body: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(agent, max_body);
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    let mut threads = Vec::new();
    match (bound.tcp, bound.tcp_loops) {
        (None, _) => {}
        (Some(l), 1) => {
            let stop = tx.subscribe();
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let l = tokio::net::TcpListener::from_std(l)?;
                // Nagle would add up to 40 ms to small responses.
                let l = axum::serve::ListenerExt::tap_io(l, |s| {
                    let _ = s.set_nodelay(true);
                });
                serve_on(l, app, stop).await
            }));
        }
        (Some(l), n) => {
            let local = l.local_addr()?;
            let mut senders = Vec::with_capacity(n);
            for i in 0..n {
                let (conn_tx, rx) = tokio::sync::mpsc::unbounded_channel();
                senders.push(conn_tx);
                let (app, stop) = (app.clone(), tx.subscribe());
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name(format!("ferry-http-{i}"))
                    .spawn(move || {
                        let r = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .and_then(|rt| rt.block_on(serve_on(Dealt { rx, local }, app, stop)));
                        let _ = done_tx.send(r);
                    })?;
                threads.push(done_rx);
            }
            tasks.push(tokio::spawn(deal(l, senders, tx.subscribe())));
        }
    }
    if let Some(l) = bound.unix {
        let mut rx = tx.subscribe();
        tasks.push(tokio::spawn(async move {
            axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.recv().await;
                })
                .await
        }));
    }
    shutdown.await;
    let _ = tx.send(());
    for t in tasks {
        match t.await {
            Ok(r) => r?,
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    for t in threads {
        match t.await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::other("a serving thread stopped")),
        }
    }
    Ok(())
}
