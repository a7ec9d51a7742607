//! The device's own admin endpoints: activation state, side-load, rollback,
//! clearing a challenger or shadow, and the inference log.

use super::{body_error, error, App};
use crate::serving::{ActivateError, Role};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Largest bundle accepted by `POST /v1/models/activate`.
pub(super) const BUNDLE_LIMIT: usize = 4 << 30;

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
    let job = move || -> Result<_, ActivateError> {
        match q.path {
            Some(p) => agent.install(&p, role, q.split),
            None => {
                let tmp = agent.upload_path();
                std::fs::write(&tmp, &body).map_err(|source| ActivateError::Io {
                    what: "writing upload",
                    path: tmp.clone(),
                    source,
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
