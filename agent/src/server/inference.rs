//! The Open Inference Protocol endpoints: health, metadata, infer (decoded
//! and encoded here, routed and run by the serving core), feedback and
//! metrics.

use super::{body_error, error, App};
use crate::oip::{self, Encoded, RequestError, HEADER_LEN};
use crate::serving::{Agent, InferError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_protocol::{Dim, TensorSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Requests larger than this run on the blocking pool instead of inline.
const INLINE_BODY: usize = 64 * 1024;

fn infer_error(e: &InferError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.code(), e)
}

/// Why an infer request failed: its body did not decode against the
/// schema, or the serving core refused or failed it.
#[derive(Debug)]
enum InferFailure {
    Request(RequestError),
    Serving(InferError),
}

impl From<InferError> for InferFailure {
    fn from(e: InferError) -> Self {
        InferFailure::Serving(e)
    }
}

impl InferFailure {
    fn response(&self) -> Response {
        match self {
            InferFailure::Request(e) => error(StatusCode::BAD_REQUEST, e.code(), e),
            InferFailure::Serving(e) => infer_error(e),
        }
    }
}

pub(super) async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

pub(super) async fn ready(State(app): State<App>) -> Response {
    let ready = app.agent.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let engines = crate::engine_choice::available();
    (status, Json(json!({ "ready": ready, "engines": engines }))).into_response()
}

pub(super) async fn server_metadata() -> Json<Value> {
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
    let route = match version {
        None => &routes.champion,
        Some(v) => match routes.by_version_text(v) {
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
    let batching = route.loaded.batcher.as_ref().map(|b| {
        let p = b.policy();
        json!({ "max_batch": p.max_rows, "max_delay_us": p.max_delay.as_micros() as u64 })
    });
    let versions: Vec<String> = routes.iter().map(|r| r.version().to_string()).collect();
    let info = route.loaded.engine.info();
    let engine = json!({ "name": info.engine, "backend": info.backend, "adapter": info.adapter });
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
            "batching": batching,
            "engine": engine,
        },
    }))
    .into_response()
}

pub(super) async fn model_metadata(State(app): State<App>, Path(name): Path<String>) -> Response {
    metadata(&app, &name, None)
}

pub(super) async fn model_version_metadata(
    State(app): State<App>,
    Path((name, v)): Path<(String, String)>,
) -> Response {
    metadata(&app, &name, Some(&v))
}

fn model_ready_response(app: &App, name: &str, version: Option<&str>) -> Response {
    let table = app.agent.table();
    let ready = table.models.get(name).is_some_and(|r| match version {
        None => true,
        Some(v) => r.by_version_text(v).is_some(),
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

pub(super) async fn model_ready(State(app): State<App>, Path(name): Path<String>) -> Response {
    model_ready_response(&app, &name, None)
}

pub(super) async fn model_version_ready(
    State(app): State<App>,
    Path((name, v)): Path<(String, String)>,
) -> Response {
    model_ready_response(&app, &name, Some(&v))
}

pub(super) async fn infer(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(app, name, None, headers, body).await
}

pub(super) async fn infer_version(
    State(app): State<App>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(app, name, Some(version), headers, body).await
}

pub(super) async fn run_infer(
    app: App,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            app.agent.rejected(&name, "bad_body");
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
    let max_rows = app.rows.for_model(&name);
    // A batched request waits for others: never on an async worker.
    let result = if body.len() <= INLINE_BODY && !agent.batches(&name) {
        infer_body(
            &agent,
            max_rows,
            &name,
            version.as_deref(),
            &body,
            json_len,
            key.as_deref(),
        )
    } else {
        // Large batches: keep the async workers free for small requests.
        let a = agent.clone();
        match tokio::task::spawn_blocking(move || {
            infer_body(
                &a,
                max_rows,
                &name,
                version.as_deref(),
                &body,
                json_len,
                key.as_deref(),
            )
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
        Err(e) => e.response(),
    }
}

/// Decodes one OIP request body, runs it on the route the serving core
/// picks (and its shadow), and encodes the reply. `header_key` is the
/// `x-ferry-routing-key` header.
fn infer_body(
    agent: &Arc<Agent>,
    max_rows: u64,
    model: &str,
    pinned: Option<&str>,
    body: &[u8],
    json_len: Option<usize>,
    header_key: Option<&str>,
) -> Result<Encoded, InferFailure> {
    let decode = |schema: &ferry_protocol::Schema, fixed: &[ferry_protocol::Tensor]| {
        oip::decode_fixed(body, json_len, schema, fixed, max_rows).map_err(|e| {
            agent.rejected(model, e.code());
            InferFailure::Request(e)
        })
    };
    let table = agent.table();
    let routing = agent.route(&table, model, pinned)?;
    let first = routing.schema();
    let first_fixed = routing.fixed();
    let decoded = decode(first, first_fixed)?;
    let key = header_key
        .or(decoded.routing_key.as_deref())
        .or(decoded.id.as_deref());
    let route = routing.pick(key);
    // A challenger with another schema reads the body its own way.
    let same = (std::ptr::eq(route.schema(), first) || route.schema() == first)
        && route.fixed() == first_fixed;
    let decoded = if same {
        decoded
    } else {
        decode(route.schema(), route.fixed())?
    };
    // NaN and infinity only reach a model whose signed manifest accepts them.
    decoded
        .check_finite(route.accepts_non_finite())
        .map_err(|e| {
            agent.rejected(model, e.code());
            InferFailure::Request(e)
        })?;
    // The shadow sees the same request, decoded against its own schema; one
    // it cannot read or would refuse is skipped, never refused.
    if let Some(shadow) = routing.shadow() {
        if let Ok(d) = oip::decode_fixed(body, json_len, shadow.schema(), shadow.fixed(), max_rows)
        {
            if d.check_finite(shadow.accepts_non_finite()).is_ok() {
                shadow.spawn(d.id, d.inputs);
            }
        }
    }
    let outputs = route.run(decoded.id.as_deref(), &decoded.inputs)?;
    Ok(oip::encode(
        model,
        route.version(),
        decoded.id.as_deref(),
        &outputs,
        &decoded.outputs,
    ))
}

#[derive(Deserialize)]
struct Feedback {
    id: String,
    label: Value,
}

pub(super) async fn feedback(
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

pub(super) async fn metrics(State(app): State<App>) -> Response {
    let mut text = app.agent.metrics.render(Some(app.agent.log.stats()));
    let table = app.agent.table();
    let mut plans = Vec::new();
    let mut batches = Vec::new();
    for (name, routes) in &table.models {
        for r in routes.iter() {
            plans.push(crate::metrics::PlanLine {
                model: name,
                version: r.version(),
                stats: r.loaded.engine.plan_stats(),
                engine: r.loaded.engine.info(),
            });
            if let Some(b) = &r.loaded.batcher {
                batches.push(crate::metrics::BatchLine {
                    model: name,
                    version: r.version(),
                    stats: b.stats(),
                });
            }
        }
    }
    crate::metrics::Metrics::render_plans(&mut text, &plans);
    crate::metrics::Metrics::render_engines(&mut text, &crate::engine_choice::available(), &plans);
    crate::metrics::Metrics::render_batches(&mut text, &batches);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
