//! The device's own admin endpoints: activation state, side-load, rollback,
//! clearing a challenger or shadow, and the inference log.

use super::{error, App};
use crate::serving::{ActivateError, Role};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Largest bundle accepted by `POST /v1/models/activate` (streamed to
/// disk, never held in memory).
const BUNDLE_LIMIT: u64 = 4 << 30;

pub(super) async fn models(State(app): State<App>) -> Response {
    Json(json!(app.agent.state())).into_response()
}

#[derive(Deserialize)]
pub(super) struct ActivateQuery {
    role: Option<String>,
    split: Option<f64>,
    /// A bundle already on this device (side-load without upload).
    path: Option<PathBuf>,
}

pub(super) async fn activate(
    State(app): State<App>,
    Query(q): Query<ActivateQuery>,
    req: Request,
) -> Response {
    let role: Role = match q.role.as_deref().unwrap_or("champion").parse() {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_role", e),
    };
    let agent = app.agent.clone();
    let upload = match q.path {
        Some(p) => Upload::OnDevice(p),
        None => {
            let tmp = agent.upload_path();
            match receive(req.into_body(), &tmp, BUNDLE_LIMIT).await {
                Ok(()) => Upload::Received(tmp),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return e.response();
                }
            }
        }
    };
    let job = move || -> Result<_, ActivateError> {
        match upload {
            Upload::OnDevice(p) => agent.install(&p, role, q.split),
            Upload::Received(tmp) => {
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

/// Where the bundle to activate is.
enum Upload {
    /// `?path=`: a file already on the device.
    OnDevice(PathBuf),
    /// The request body, received into `incoming/`.
    Received(PathBuf),
}

/// Why an upload was not received.
#[derive(Debug)]
enum ReceiveError {
    TooLarge(u64),
    Body(axum::Error),
    Io(std::io::Error),
}

impl ReceiveError {
    fn response(&self) -> Response {
        match self {
            ReceiveError::TooLarge(limit) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the bundle is over the {limit}-byte limit"),
            ),
            ReceiveError::Body(e) => error(StatusCode::BAD_REQUEST, "bad_body", e),
            ReceiveError::Io(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "io", e),
        }
    }
}

/// Streams `body` into a new file at `path`, refusing it past `limit`
/// bytes: the bundle is never held in memory.
async fn receive(body: Body, path: &std::path::Path, limit: u64) -> Result<(), ReceiveError> {
    use axum::body::HttpBody;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(ReceiveError::Io)?;
    let mut body = body;
    let mut received: u64 = 0;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let Ok(data) = frame.map_err(ReceiveError::Body)?.into_data() else {
            continue; // trailers
        };
        received = received.saturating_add(data.len() as u64);
        if received > limit {
            return Err(ReceiveError::TooLarge(limit));
        }
        file.write_all(&data).await.map_err(ReceiveError::Io)?;
    }
    file.flush().await.map_err(ReceiveError::Io)?;
    Ok(())
}

pub(super) async fn rollback(State(app): State<App>, Path(name): Path<String>) -> Response {
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

pub(super) async fn clear_challenger(State(app): State<App>, Path(name): Path<String>) -> Response {
    clear_role(app, name, Role::Challenger).await
}

pub(super) async fn clear_shadow(State(app): State<App>, Path(name): Path<String>) -> Response {
    clear_role(app, name, Role::Shadow).await
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

pub(super) async fn read_log(State(app): State<App>, Query(q): Query<LogQuery>) -> Response {
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

pub(super) async fn ack_log(State(app): State<App>, body: Bytes) -> Response {
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

pub(super) async fn log_stats(State(app): State<App>) -> Response {
    Json(json!(app.agent.log.stats())).into_response()
}
