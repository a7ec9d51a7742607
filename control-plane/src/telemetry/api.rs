//! Telemetry routes under `/api/v1`: drift and metrics time series, drift
//! policies, alerts (with acknowledge) and retraining triggers. Reads need
//! any role of the tenant; changes need operator or above and are audited.

use super::engine::{load_policy, save_policy};
use super::policy::DriftPolicy;
use crate::api::{ApiError, AppState, Auth};
use crate::audit::{AuditEntry, OUTCOME_OK, OUTCOME_REFUSED};
use crate::auth::Role;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use sqlx::Row;

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

fn db(e: sqlx::Error) -> ApiError {
    ApiError::from(crate::store::StoreError::Db(e))
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

async fn windows(st: &AppState, tenant: &str, model: &str, q: &Q) -> R<Vec<sqlx::any::AnyRow>> {
    let mut sql = String::from(
        "SELECT device, seq, version, variant, window_start_ms, window_end_ms, rows_seen, requests, errors, latency_p50_us, latency_p99_us, labelled, correct, max_psi, drifted, summary, received_at_ms FROM telemetry_windows WHERE tenant = $1 AND model = $2 AND window_end_ms >= $3",
    );
    let mut n = 3;
    if q.version.is_some() {
        n += 1;
        sql += &format!(" AND version = ${n}");
    }
    if q.device.is_some() {
        n += 1;
        sql += &format!(" AND device = ${n}");
    }
    n += 1;
    sql += &format!(" ORDER BY window_end_ms, device, seq LIMIT ${n}");
    let mut qq = sqlx::query(&sql).bind(tenant).bind(model).bind(q.since_ms);
    if let Some(v) = q.version {
        qq = qq.bind(v);
    }
    if let Some(d) = &q.device {
        qq = qq.bind(d.as_str());
    }
    qq.bind(q.limit)
        .fetch_all(st.store.pool())
        .await
        .map_err(db)
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
        let summary: String = r.try_get("summary").map_err(db)?;
        let s: ferry_protocol::telemetry::DriftSummary = serde_json::from_str(&summary)
            .map_err(|e| ApiError::from(crate::store::StoreError::Corrupt(e.to_string())))?;
        points.push(json!({
            "device": s.device, "seq": s.seq, "version": s.version, "variant": s.variant,
            "window_start_ms": s.window_start_ms, "window_end_ms": s.window_end_ms,
            "rows": s.rows, "features": s.features, "psi": s.psi,
            "missing": s.missing, "out_of_range": s.out_of_range,
            "max_psi": policy.max_psi(&s),
            "drifted": r.try_get::<i64, _>("drifted").map_err(db)? == 1,
            "received_at_ms": r.try_get::<i64, _>("received_at_ms").map_err(db)?,
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
        let g = |c: &str| r.try_get::<i64, _>(c).map_err(db);
        let (start, end, requests) = (g("window_start_ms")?, g("window_end_ms")?, g("requests")?);
        let (labelled, correct, errors) = (g("labelled")?, g("correct")?, g("errors")?);
        let secs = (end - start) as f64 / 1000.0;
        points.push(json!({
            "device": r.try_get::<String, _>("device").map_err(db)?,
            "seq": g("seq")?,
            "version": g("version")?,
            "variant": r.try_get::<String, _>("variant").map_err(db)?,
            "window_start_ms": start, "window_end_ms": end,
            "requests": requests, "rows": g("rows_seen")?, "errors": errors,
            "error_rate": if requests > 0 { errors as f64 / requests as f64 } else { 0.0 },
            "throughput_rps": if secs > 0.0 { Some(requests as f64 / secs) } else { None },
            "latency_p50_us": g("latency_p50_us")?, "latency_p99_us": g("latency_p99_us")?,
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

fn alert_json(r: &sqlx::any::AnyRow) -> R<Value> {
    let s = |c: &str| r.try_get::<String, _>(c).map_err(db);
    let i = |c: &str| r.try_get::<i64, _>(c).map_err(db);
    let ack = i("acknowledged_at_ms")?;
    Ok(json!({
        "id": s("id")?, "model": s("model")?, "version": i("version")?, "kind": s("kind")?,
        "device": s("device")?, "opened_at_ms": i("opened_at_ms")?,
        "evidence": serde_json::from_str::<Value>(&s("evidence")?).unwrap_or(Value::Null),
        "acknowledged": ack > 0,
        "acknowledged_at_ms": if ack > 0 { Some(ack) } else { None },
        "acknowledged_by": s("acknowledged_by")?,
    }))
}

/// `GET /alerts?model=&kind=&open=true`.
async fn alerts(a: Auth, State(st): State<AppState>, RawQuery(raw): RawQuery) -> R {
    let q = query(&raw, &["model", "kind", "open"])?;
    let mut sql = String::from(
        "SELECT id, model, version, kind, device, opened_at_ms, evidence, acknowledged_at_ms, acknowledged_by FROM alerts WHERE tenant = $1 AND opened_at_ms >= $2",
    );
    let mut binds: Vec<String> = Vec::new();
    for (k, v) in &q.extra {
        match k.as_str() {
            "model" => {
                binds.push(v.clone());
                sql += &format!(" AND model = ${}", binds.len() + 2);
            }
            "kind" => {
                binds.push(v.clone());
                sql += &format!(" AND kind = ${}", binds.len() + 2);
            }
            "open" => match v.as_str() {
                "true" => sql += " AND acknowledged_at_ms = 0",
                "false" => sql += " AND acknowledged_at_ms > 0",
                _ => return Err(bad("open must be true or false")),
            },
            _ => {}
        }
    }
    if let Some(d) = &q.device {
        binds.push(d.clone());
        sql += &format!(" AND device = ${}", binds.len() + 2);
    }
    sql += &format!(" ORDER BY opened_at_ms, id LIMIT {}", q.limit);
    let mut qq = sqlx::query(&sql).bind(a.p.tenant.as_str()).bind(q.since_ms);
    for b in &binds {
        qq = qq.bind(b.as_str());
    }
    let rows = qq.fetch_all(st.store.pool()).await.map_err(db)?;
    let list = rows.iter().map(alert_json).collect::<R<Vec<_>>>()?;
    Ok(Json(json!({ "alerts": list })))
}

/// `POST /alerts/{id}/ack`.
async fn ack(a: Auth, State(st): State<AppState>, Path(id): Path<String>) -> R {
    let action = "alert.ack";
    require(&st, &a, Role::Operator, action, &id).await?;
    let now = crate::now_unix() as i64 * 1000;
    let n = sqlx::query(
        "UPDATE alerts SET acknowledged_at_ms = $1, acknowledged_by = $2 WHERE id = $3 AND tenant = $4 AND acknowledged_at_ms = 0",
    )
    .bind(now)
    .bind(a.p.actor())
    .bind(id.as_str())
    .bind(a.p.tenant.as_str())
    .execute(st.store.pool())
    .await
    .map_err(db)?
    .rows_affected();
    let row = sqlx::query(
        "SELECT id, model, version, kind, device, opened_at_ms, evidence, acknowledged_at_ms, acknowledged_by FROM alerts WHERE id = $1 AND tenant = $2",
    )
    .bind(id.as_str())
    .bind(a.p.tenant.as_str())
    .fetch_optional(st.store.pool())
    .await
    .map_err(db)?;
    let Some(row) = row else {
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert {id:?}"),
        );
        return Err(refuse(&st, &a, action, &id, e).await);
    };
    if n == 1 {
        st.store
            .audit(AuditEntry {
                tenant: a.p.tenant.clone(),
                request_id: a.rid.clone(),
                actor: a.p.actor(),
                action: action.into(),
                target: id.clone(),
                outcome: OUTCOME_OK.into(),
                detail: String::new(),
            })
            .await?;
    }
    Ok(Json(alert_json(&row)?))
}

/// `GET /retrain-triggers?model=`.
async fn triggers(a: Auth, State(st): State<AppState>, RawQuery(raw): RawQuery) -> R {
    let q = query(&raw, &["model"])?;
    let model = q
        .extra
        .iter()
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v.clone());
    let mut sql = String::from(
        "SELECT id, model, version, reason, alert_id, fired_at_ms, payload, delivered, attempts, last_error FROM retrain_triggers WHERE tenant = $1 AND fired_at_ms >= $2",
    );
    if model.is_some() {
        sql += " AND model = $3";
    }
    sql += &format!(" ORDER BY fired_at_ms, id LIMIT {}", q.limit);
    let mut qq = sqlx::query(&sql).bind(a.p.tenant.as_str()).bind(q.since_ms);
    if let Some(m) = &model {
        qq = qq.bind(m.as_str());
    }
    let rows = qq.fetch_all(st.store.pool()).await.map_err(db)?;
    let mut list = Vec::new();
    for r in rows {
        let s = |c: &str| r.try_get::<String, _>(c).map_err(db);
        let i = |c: &str| r.try_get::<i64, _>(c).map_err(db);
        list.push(json!({
            "id": s("id")?, "model": s("model")?, "version": i("version")?, "reason": s("reason")?,
            "alert_id": s("alert_id")?, "fired_at_ms": i("fired_at_ms")?,
            "payload": serde_json::from_str::<Value>(&s("payload")?).unwrap_or(Value::Null),
            "delivered": i("delivered")? == 1, "attempts": i("attempts")?, "last_error": s("last_error")?,
        }));
    }
    Ok(Json(json!({ "triggers": list })))
}

/// `GET /devices`: latest health per device.
async fn devices(a: Auth, State(st): State<AppState>) -> R {
    let rows = sqlx::query(
        "SELECT device, status, at_ms, payload, received_at_ms FROM device_health WHERE tenant = $1 ORDER BY device",
    )
    .bind(a.p.tenant.as_str())
    .fetch_all(st.store.pool())
    .await
    .map_err(db)?;
    let mut list = Vec::new();
    for r in rows {
        let payload: String = r.try_get("payload").map_err(db)?;
        list.push(json!({
            "device": r.try_get::<String, _>("device").map_err(db)?,
            "status": r.try_get::<String, _>("status").map_err(db)?,
            "received_at_ms": r.try_get::<i64, _>("received_at_ms").map_err(db)?,
            "health": serde_json::from_str::<Value>(&payload).unwrap_or(Value::Null),
        }));
    }
    Ok(Json(json!({ "devices": list })))
}
