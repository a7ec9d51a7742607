//! Telemetry routes under `/api/v1`: drift and metrics time series, drift
//! policies, alerts (with acknowledge) and retraining triggers. Reads need
//! any role of the tenant; changes need operator or above and are audited.

use super::engine::{load_policy, save_policy};
use super::policy::DriftPolicy;
use crate::api::{ApiError, AppState, Auth};
use crate::audit::{AuditEntry, OUTCOME_OK, OUTCOME_REFUSED};
use crate::auth::Role;
use crate::store::telemetry::{AlertQuery, AlertRow, WindowQuery, WindowRow};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};

/// The telemetry routes (method, path), as `crate::api::ROUTES` lists its own.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/models/{name}/drift"),
    ("GET", "/api/v1/models/{name}/metrics"),
    ("GET", "/api/v1/models/{name}/drift-config"),
    ("POST", "/api/v1/models/{name}/drift-config"),
    ("GET", "/api/v1/alerts"),
    ("POST", "/api/v1/alerts/{id}/ack"),
    ("GET", "/api/v1/retrain-triggers"),
    ("GET", "/api/v1/devices"),
];

type R<T = Json<Value>> = Result<T, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/models/{name}/drift", get(drift))
        .route("/models/{name}/metrics", get(metrics))
        .route(
            "/models/{name}/drift-config",
            get(get_policy).post(set_policy),
        )
        .route("/alerts", get(alerts))
        .route("/alerts/{id}/ack", post(ack))
        .route("/retrain-triggers", get(triggers))
        .route("/devices", get(devices))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg)
}

fn model_name(s: &str) -> R<String> {
    ferry_protocol::ModelName::new(s)
        .map(|n| n.to_string())
        .map_err(|e| bad(e.to_string()))
}

/// Common filters: `version`, `device`, `since_ms`, `limit`.
struct Q {
    version: Option<i64>,
    device: Option<String>,
    since_ms: i64,
    limit: i64,
    extra: Vec<(String, String)>,
}

fn query(q: &Option<String>, extra_allowed: &[&str]) -> R<Q> {
    let mut out = Q {
        version: None,
        device: None,
        since_ms: 0,
        limit: 500,
        extra: Vec::new(),
    };
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        let int = |v: &str| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| bad(format!("{k}={v:?} is not a non-negative integer")))
        };
        match k.as_ref() {
            "version" => out.version = Some(int(&v)?),
            "device" => out.device = Some(v.into_owned()),
            "since_ms" => out.since_ms = int(&v)?,
            "limit" => out.limit = int(&v)?.clamp(1, 10_000),
            other if extra_allowed.contains(&other) => {
                out.extra.push((other.to_string(), v.into_owned()))
            }
            other => {
                return Err(bad(format!(
                "unknown query parameter {other:?} (allowed: version, device, since_ms, limit{})",
                extra_allowed
                    .iter()
                    .map(|s| format!(", {s}"))
                    .collect::<String>()
            )))
            }
        }
    }
    Ok(out)
}

async fn windows(st: &AppState, tenant: &str, model: &str, q: &Q) -> R<Vec<WindowRow>> {
    let wq = WindowQuery {
        version: q.version,
        device: q.device.clone(),
        since_ms: q.since_ms,
        limit: q.limit,
    };
    Ok(st.store.windows(tenant, model, &wq).await?)
}

/// `GET /models/{name}/drift`: PSI per feature per window.
async fn drift(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> R {
    let name = model_name(&name)?;
    let q = query(&raw, &[])?;
    let policy = load_policy(&st.store, &a.p.tenant, &name)
        .await?
        .unwrap_or_default();
    let mut points = Vec::new();
    for r in windows(&st, &a.p.tenant, &name, &q).await? {
        let s: ferry_protocol::telemetry::DriftSummary = serde_json::from_str(&r.summary)
            .map_err(|e| ApiError::from(crate::store::StoreError::Corrupt(e.to_string())))?;
        points.push(json!({
            "device": s.device, "seq": s.seq, "version": s.version, "variant": s.variant,
            "window_start_ms": s.window_start_ms, "window_end_ms": s.window_end_ms,
            "rows": s.rows, "features": s.features, "psi": s.psi,
            "missing": s.missing, "out_of_range": s.out_of_range,
            "max_psi": policy.max_psi(&s),
            "drifted": r.drifted,
            "received_at_ms": r.received_at_ms,
        }));
    }
    Ok(Json(json!({
        "model": name,
        "psi_threshold": policy.psi_threshold,
        "windows": points,
    })))
}

/// `GET /models/{name}/metrics`: latency, throughput, errors, accuracy per
/// window.
async fn metrics(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> R {
    let name = model_name(&name)?;
    let q = query(&raw, &[])?;
    let mut points = Vec::new();
    for r in windows(&st, &a.p.tenant, &name, &q).await? {
        let (start, end, requests) = (r.window_start_ms, r.window_end_ms, r.requests);
        let (labelled, correct, errors) = (r.labelled, r.correct, r.errors);
        let secs = (end - start) as f64 / 1000.0;
        points.push(json!({
            "device": r.device,
            "seq": r.seq,
            "version": r.version,
            "variant": r.variant,
            "window_start_ms": start, "window_end_ms": end,
            "requests": requests, "rows": r.rows_seen, "errors": errors,
            "error_rate": if requests > 0 { errors as f64 / requests as f64 } else { 0.0 },
            "throughput_rps": if secs > 0.0 { Some(requests as f64 / secs) } else { None },
            "latency_p50_us": r.latency_p50_us, "latency_p99_us": r.latency_p99_us,
            "labelled": labelled,
            "accuracy": if labelled > 0 { Some(correct as f64 / labelled as f64) } else { None },
        }));
    }
    Ok(Json(json!({ "model": name, "windows": points })))
}

async fn get_policy(a: Auth, State(st): State<AppState>, Path(name): Path<String>) -> R {
    let name = model_name(&name)?;
    st.store.model(&a.p.tenant, &name).await?;
    let stored = load_policy(&st.store, &a.p.tenant, &name).await?;
    let is_default = stored.is_none();
    let p = stored.unwrap_or_default();
    let mut v = p.public_json();
    if let Some(o) = v.as_object_mut() {
        o.insert("model".into(), json!(name));
        o.insert("default".into(), json!(is_default));
    }
    Ok(Json(v))
}

async fn refuse(st: &AppState, a: &Auth, action: &str, target: &str, err: ApiError) -> ApiError {
    let _ = st
        .store
        .audit(AuditEntry {
            tenant: a.p.tenant.clone(),
            request_id: a.rid.clone(),
            actor: a.p.actor(),
            action: action.into(),
            target: target.into(),
            outcome: OUTCOME_REFUSED.into(),
            detail: format!("{}: {}", err.code, err.message),
        })
        .await;
    err
}

async fn require(st: &AppState, a: &Auth, role: Role, action: &str, target: &str) -> R<()> {
    if a.p.role >= role {
        return Ok(());
    }
    let e = ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("role {} may not {action} (needs {role} or above)", a.p.role),
    );
    Err(refuse(st, a, action, target, e).await)
}

/// `POST /models/{name}/drift-config`: replaces the model's policy (fields
/// left out take their defaults).
async fn set_policy(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> R {
    let name = model_name(&name)?;
    let action = "drift_policy.set";
    require(&st, &a, Role::Operator, action, &name).await?;
    st.store.model(&a.p.tenant, &name).await?;
    let p: DriftPolicy = if body.is_empty() {
        return Err(bad("request body is empty; expected a JSON drift policy"));
    } else {
        match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                let err = bad(format!("invalid drift policy: {e}"));
                return Err(refuse(&st, &a, action, &name, err).await);
            }
        }
    };
    if let Err(m) = p.validate() {
        return Err(refuse(
            &st,
            &a,
            action,
            &name,
            bad(format!("invalid drift policy: {m}")),
        )
        .await);
    }
    let mut shown = p.public_json();
    save_policy(
        &st.store,
        &a.p.tenant,
        &name,
        &p,
        AuditEntry {
            tenant: a.p.tenant.clone(),
            request_id: a.rid.clone(),
            actor: a.p.actor(),
            action: action.into(),
            target: name.clone(),
            outcome: OUTCOME_OK.into(),
            detail: shown.to_string(),
        },
    )
    .await?;
    if let Some(o) = shown.as_object_mut() {
        o.insert("model".into(), json!(name));
    }
    Ok(Json(shown))
}

fn alert_json(r: &AlertRow) -> Value {
    let ack = r.acknowledged_at_ms;
    json!({
        "id": r.id, "model": r.model, "version": r.version, "kind": r.kind,
        "device": r.device, "opened_at_ms": r.opened_at_ms,
        "evidence": serde_json::from_str::<Value>(&r.evidence).unwrap_or(Value::Null),
        "acknowledged": ack > 0,
        "acknowledged_at_ms": if ack > 0 { Some(ack) } else { None },
        "acknowledged_by": r.acknowledged_by,
    })
}

/// `GET /alerts?model=&kind=&open=true`.
async fn alerts(a: Auth, State(st): State<AppState>, RawQuery(raw): RawQuery) -> R {
    let q = query(&raw, &["model", "kind", "open"])?;
    let mut aq = AlertQuery {
        since_ms: q.since_ms,
        device: q.device.clone(),
        limit: q.limit,
        ..Default::default()
    };
    for (k, v) in &q.extra {
        match k.as_str() {
            "model" => aq.model = Some(v.clone()),
            "kind" => aq.kind = Some(v.clone()),
            "open" => match v.as_str() {
                "true" => aq.open = Some(true),
                "false" => aq.open = Some(false),
                _ => return Err(bad("open must be true or false")),
            },
            _ => {}
        }
    }
    let rows = st.store.alerts(&a.p.tenant, &aq).await?;
    let list = rows.iter().map(alert_json).collect::<Vec<_>>();
    Ok(Json(json!({ "alerts": list })))
}

/// `POST /alerts/{id}/ack`.
async fn ack(a: Auth, State(st): State<AppState>, Path(id): Path<String>) -> R {
    let action = "alert.ack";
    require(&st, &a, Role::Operator, action, &id).await?;
    let entry = AuditEntry {
        tenant: a.p.tenant.clone(),
        request_id: a.rid.clone(),
        actor: a.p.actor(),
        action: action.into(),
        target: id.clone(),
        outcome: OUTCOME_OK.into(),
        detail: String::new(),
    };
    let row = st
        .store
        .ack_alert(&a.p.tenant, &id, &a.p.actor(), entry)
        .await?;
    let Some(row) = row else {
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert {id:?}"),
        );
        return Err(refuse(&st, &a, action, &id, e).await);
    };
    Ok(Json(alert_json(&row)))
}

/// `GET /retrain-triggers?model=`.
async fn triggers(a: Auth, State(st): State<AppState>, RawQuery(raw): RawQuery) -> R {
    let q = query(&raw, &["model"])?;
    let model = q
        .extra
        .iter()
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v.clone());
    let rows = st
        .store
        .triggers(&a.p.tenant, q.since_ms, model.as_deref(), q.limit)
        .await?;
    let mut list = Vec::new();
    for r in rows {
        list.push(json!({
            "id": r.id, "model": r.model, "version": r.version, "reason": r.reason,
            "alert_id": r.alert_id, "fired_at_ms": r.fired_at_ms,
            "payload": serde_json::from_str::<Value>(&r.payload).unwrap_or(Value::Null),
            "delivered": r.delivered, "attempts": r.attempts, "last_error": r.last_error,
        }));
    }
    Ok(Json(json!({ "triggers": list })))
}

/// `GET /devices`: latest health per device.
async fn devices(a: Auth, State(st): State<AppState>) -> R {
    let rows = st.store.device_health(&a.p.tenant).await?;
    let mut list = Vec::new();
    for r in rows {
        list.push(json!({
            "device": r.device,
            "status": r.status,
            "received_at_ms": r.received_at_ms,
            "health": serde_json::from_str::<Value>(&r.payload).unwrap_or(Value::Null),
        }));
    }
    Ok(Json(json!({ "devices": list })))
}
