//! Telemetry routes under `/api/v1`: drift and metrics time series, drift
//! policies, alerts (with acknowledge) and retraining triggers. Reads need
//! any role of the tenant; changes need operator or above and are audited.

use super::engine::{load_policy, save_policy};
use super::policy::DriftPolicy;
use crate::action::Action;
use crate::api::query::{series_query as query, SeriesQuery as Q};
use crate::api::types::{
    Alert, AlertList, DeviceHealth, DeviceHealthList, DriftPoint, DriftPolicyView, DriftSeries,
    ErrorBody, MetricPoint, MetricSeries, Trigger, TriggerList,
};
use crate::api::{ApiError, AppState, Auth};
use crate::audit::OUTCOME_OK;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde_json::{Map, Value};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type R<T> = Result<T, ApiError>;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(drift))
        .routes(routes!(metrics))
        .routes(routes!(get_policy, set_policy))
        .routes(routes!(alerts))
        .routes(routes!(ack))
        .routes(routes!(triggers))
        .routes(routes!(devices))
}

/// A policy as shown: the stored fields less the webhook secret.
fn policy_view(p: &DriftPolicy, model: &str, default: Option<bool>) -> DriftPolicyView {
    let policy = match p.public_json() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    DriftPolicyView {
        model: model.to_string(),
        default,
        policy,
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg)
}

fn db(e: sqlx::Error) -> ApiError {
    ApiError::from(crate::store::StoreError::Db(e))
}

fn model_name(s: &str) -> R<String> {
    crate::api::query::parse_name(s)
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

/// PSI per feature per window.
#[utoipa::path(get, path = "/api/v1/models/{name}/drift", tag = "telemetry",
    params(("name" = String, Path), ("version" = Option<i64>, Query), ("device" = Option<String>, Query),
        ("since_ms" = Option<i64>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = DriftSeries), (status = "4XX", body = ErrorBody)))]
async fn drift(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> R<Json<DriftSeries>> {
    let name = model_name(&name)?;
    a.authorize(Action::DriftSeries, &name).await?;
    let q = query(&raw, &[])?;
    let policy = load_policy(&st.store, &a.p.tenant, &name)
        .await?
        .unwrap_or_default();
    let mut points = Vec::new();
    for r in windows(&st, &a.p.tenant, &name, &q).await? {
        let summary: String = r.try_get("summary").map_err(db)?;
        let s: ferry_protocol::telemetry::DriftSummary = serde_json::from_str(&summary)
            .map_err(|e| ApiError::from(crate::store::StoreError::Corrupt(e.to_string())))?;
        points.push(DriftPoint {
            max_psi: policy.max_psi(&s),
            device: s.device,
            seq: s.seq,
            version: s.version,
            variant: s.variant,
            window_start_ms: s.window_start_ms,
            window_end_ms: s.window_end_ms,
            rows: s.rows,
            features: s.features,
            psi: s.psi,
            missing: s.missing,
            out_of_range: s.out_of_range,
            drifted: r.try_get::<i64, _>("drifted").map_err(db)? == 1,
            received_at_ms: r.try_get::<i64, _>("received_at_ms").map_err(db)?,
        });
    }
    Ok(Json(DriftSeries {
        model: name,
        psi_threshold: policy.psi_threshold,
        windows: points,
    }))
}

/// Latency, throughput, errors and accuracy per window.
#[utoipa::path(get, path = "/api/v1/models/{name}/metrics", tag = "telemetry",
    params(("name" = String, Path), ("version" = Option<i64>, Query), ("device" = Option<String>, Query),
        ("since_ms" = Option<i64>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = MetricSeries), (status = "4XX", body = ErrorBody)))]
async fn metrics(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> R<Json<MetricSeries>> {
    let name = model_name(&name)?;
    a.authorize(Action::MetricSeries, &name).await?;
    let q = query(&raw, &[])?;
    let mut points = Vec::new();
    for r in windows(&st, &a.p.tenant, &name, &q).await? {
        let g = |c: &str| r.try_get::<i64, _>(c).map_err(db);
        let (start, end, requests) = (g("window_start_ms")?, g("window_end_ms")?, g("requests")?);
        let (labelled, correct, errors) = (g("labelled")?, g("correct")?, g("errors")?);
        let secs = (end - start) as f64 / 1000.0;
        points.push(MetricPoint {
            device: r.try_get::<String, _>("device").map_err(db)?,
            seq: g("seq")?,
            version: g("version")?,
            variant: r.try_get::<String, _>("variant").map_err(db)?,
            window_start_ms: start,
            window_end_ms: end,
            requests,
            rows: g("rows_seen")?,
            errors,
            error_rate: if requests > 0 {
                errors as f64 / requests as f64
            } else {
                0.0
            },
            throughput_rps: if secs > 0.0 {
                Some(requests as f64 / secs)
            } else {
                None
            },
            latency_p50_us: g("latency_p50_us")?,
            latency_p99_us: g("latency_p99_us")?,
            labelled,
            accuracy: if labelled > 0 {
                Some(correct as f64 / labelled as f64)
            } else {
                None
            },
        });
    }
    Ok(Json(MetricSeries {
        model: name,
        windows: points,
    }))
}

/// The model's drift policy (`default`: none was saved).
#[utoipa::path(get, path = "/api/v1/models/{name}/drift-config", tag = "telemetry",
    params(("name" = String, Path)),
    responses((status = 200, body = DriftPolicyView), (status = "4XX", body = ErrorBody)))]
async fn get_policy(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> R<Json<DriftPolicyView>> {
    let name = model_name(&name)?;
    a.authorize(Action::DriftPolicyShow, &name).await?;
    st.store.model(&a.p.tenant, &name).await?;
    let stored = load_policy(&st.store, &a.p.tenant, &name).await?;
    let is_default = stored.is_none();
    let p = stored.unwrap_or_default();
    Ok(Json(policy_view(&p, &name, Some(is_default))))
}

/// Replace the model's drift policy (fields left out take their defaults).
#[utoipa::path(post, path = "/api/v1/models/{name}/drift-config", tag = "telemetry",
    params(("name" = String, Path)),
    request_body(content = Object, description = "a drift policy"),
    responses((status = 200, body = DriftPolicyView), (status = "4XX", body = ErrorBody)))]
async fn set_policy(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> R<Json<DriftPolicyView>> {
    let name = model_name(&name)?;
    let action = Action::DriftPolicySet;
    a.authorize(action, &name).await?;
    st.store.model(&a.p.tenant, &name).await?;
    let p: DriftPolicy = if body.is_empty() {
        return Err(bad("request body is empty; expected a JSON drift policy"));
    } else {
        match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                let err = bad(format!("invalid drift policy: {e}"));
                return Err(a.refuse(action, &name, err).await);
            }
        }
    };
    if let Err(m) = p.validate() {
        return Err(a
            .refuse(action, &name, bad(format!("invalid drift policy: {m}")))
            .await);
    }
    let shown = p.public_json();
    save_policy(
        &st.store,
        &a.p.tenant,
        &name,
        &p,
        a.entry(action, name.clone(), OUTCOME_OK, shown.to_string()),
    )
    .await?;
    Ok(Json(policy_view(&p, &name, None)))
}

fn alert_json(r: &sqlx::any::AnyRow) -> R<Alert> {
    let s = |c: &str| r.try_get::<String, _>(c).map_err(db);
    let i = |c: &str| r.try_get::<i64, _>(c).map_err(db);
    let ack = i("acknowledged_at_ms")?;
    Ok(Alert {
        id: s("id")?,
        model: s("model")?,
        version: i("version")?,
        kind: s("kind")?,
        device: s("device")?,
        opened_at_ms: i("opened_at_ms")?,
        evidence: serde_json::from_str::<Value>(&s("evidence")?).unwrap_or(Value::Null),
        acknowledged: ack > 0,
        acknowledged_at_ms: if ack > 0 { Some(ack) } else { None },
        acknowledged_by: s("acknowledged_by")?,
    })
}

/// Alerts, oldest first.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "telemetry",
    params(("model" = Option<String>, Query), ("kind" = Option<String>, Query), ("open" = Option<bool>, Query),
        ("device" = Option<String>, Query), ("since_ms" = Option<i64>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = AlertList), (status = "4XX", body = ErrorBody)))]
async fn alerts(
    a: Auth,
    State(st): State<AppState>,
    RawQuery(raw): RawQuery,
) -> R<Json<AlertList>> {
    a.authorize(Action::AlertList, "alerts").await?;
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
    let alerts = rows.iter().map(alert_json).collect::<R<Vec<_>>>()?;
    Ok(Json(AlertList { alerts }))
}

/// Acknowledge an alert.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "telemetry",
    params(("id" = String, Path)),
    responses((status = 200, body = Alert), (status = "4XX", body = ErrorBody)))]
async fn ack(a: Auth, State(st): State<AppState>, Path(id): Path<String>) -> R<Json<Alert>> {
    let action = Action::AlertAck;
    a.authorize(action, &id).await?;
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
        return Err(a.refuse(action, &id, e).await);
    };
    if n == 1 {
        a.append(a.ok(action, id.clone())).await?;
    }
    Ok(Json(alert_json(&row)?))
}

/// Retraining triggers and their webhook deliveries.
#[utoipa::path(get, path = "/api/v1/retrain-triggers", tag = "telemetry",
    params(("model" = Option<String>, Query), ("since_ms" = Option<i64>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = TriggerList), (status = "4XX", body = ErrorBody)))]
async fn triggers(
    a: Auth,
    State(st): State<AppState>,
    RawQuery(raw): RawQuery,
) -> R<Json<TriggerList>> {
    a.authorize(Action::TriggerList, "retrain-triggers").await?;
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
        list.push(Trigger {
            id: s("id")?,
            model: s("model")?,
            version: i("version")?,
            reason: s("reason")?,
            alert_id: s("alert_id")?,
            fired_at_ms: i("fired_at_ms")?,
            payload: serde_json::from_str::<Value>(&s("payload")?).unwrap_or(Value::Null),
            delivered: i("delivered")? == 1,
            attempts: i("attempts")?,
            last_error: s("last_error")?,
        });
    }
    Ok(Json(TriggerList { triggers: list }))
}

/// The latest health report per device.
#[utoipa::path(get, path = "/api/v1/devices", tag = "telemetry",
    responses((status = 200, body = DeviceHealthList), (status = "4XX", body = ErrorBody)))]
async fn devices(a: Auth, State(st): State<AppState>) -> R<Json<DeviceHealthList>> {
    a.authorize(Action::DeviceHealthList, "devices").await?;
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
        list.push(DeviceHealth {
            device: r.try_get::<String, _>("device").map_err(db)?,
            status: r.try_get::<String, _>("status").map_err(db)?,
            received_at_ms: r.try_get::<i64, _>("received_at_ms").map_err(db)?,
            health: serde_json::from_str::<Value>(&payload).unwrap_or(Value::Null),
        });
    }
    Ok(Json(DeviceHealthList { devices: list }))
}
