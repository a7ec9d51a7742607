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
use crate::store::telemetry::{AlertQuery, AlertRow, WindowQuery, WindowRow};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde_json::{Map, Value};
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

fn model_name(s: &str) -> R<String> {
    crate::api::query::parse_name(s)
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
        let s: ferry_protocol::telemetry::DriftSummary = serde_json::from_str(&r.summary)
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
            drifted: r.drifted,
            received_at_ms: r.received_at_ms,
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
        let (start, end, requests) = (r.window_start_ms, r.window_end_ms, r.requests);
        let (labelled, correct, errors) = (r.labelled, r.correct, r.errors);
        let secs = (end - start) as f64 / 1000.0;
        points.push(MetricPoint {
            device: r.device,
            seq: r.seq,
            version: r.version,
            variant: r.variant,
            window_start_ms: start,
            window_end_ms: end,
            requests,
            rows: r.rows_seen,
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
            latency_p50_us: r.latency_p50_us,
            latency_p99_us: r.latency_p99_us,
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

fn alert_json(r: &AlertRow) -> Alert {
    let ack = r.acknowledged_at_ms;
    Alert {
        id: r.id.clone(),
        model: r.model.clone(),
        version: r.version,
        kind: r.kind.clone(),
        device: r.device.clone(),
        opened_at_ms: r.opened_at_ms,
        evidence: serde_json::from_str::<Value>(&r.evidence).unwrap_or(Value::Null),
        acknowledged: ack > 0,
        acknowledged_at_ms: if ack > 0 { Some(ack) } else { None },
        acknowledged_by: r.acknowledged_by.clone(),
    }
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
    let alerts = rows.iter().map(alert_json).collect();
    Ok(Json(AlertList { alerts }))
}

/// Acknowledge an alert.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "telemetry",
    params(("id" = String, Path)),
    responses((status = 200, body = Alert), (status = "4XX", body = ErrorBody)))]
async fn ack(a: Auth, State(st): State<AppState>, Path(id): Path<String>) -> R<Json<Alert>> {
    let action = Action::AlertAck;
    a.authorize(action, &id).await?;
    let row = st
        .store
        .ack_alert(&a.p.tenant, &id, &a.p.actor(), a.ok(action, id.clone()))
        .await?;
    let Some(row) = row else {
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert {id:?}"),
        );
        return Err(a.refuse(action, &id, e).await);
    };
    Ok(Json(alert_json(&row)))
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
    let rows = st
        .store
        .triggers(&a.p.tenant, q.since_ms, model.as_deref(), q.limit)
        .await?;
    let mut list = Vec::new();
    for r in rows {
        list.push(Trigger {
            payload: serde_json::from_str::<Value>(&r.payload).unwrap_or(Value::Null),
            id: r.id,
            model: r.model,
            version: r.version,
            reason: r.reason,
            alert_id: r.alert_id,
            fired_at_ms: r.fired_at_ms,
            delivered: r.delivered,
            attempts: r.attempts,
            last_error: r.last_error,
        });
    }
    Ok(Json(TriggerList { triggers: list }))
}

/// The latest health report per device.
#[utoipa::path(get, path = "/api/v1/devices", tag = "telemetry",
    responses((status = 200, body = DeviceHealthList), (status = "4XX", body = ErrorBody)))]
async fn devices(a: Auth, State(st): State<AppState>) -> R<Json<DeviceHealthList>> {
    a.authorize(Action::DeviceHealthList, "devices").await?;
    let rows = st.store.device_health(&a.p.tenant).await?;
    let mut list = Vec::new();
    for r in rows {
        list.push(DeviceHealth {
            health: serde_json::from_str::<Value>(&r.payload).unwrap_or(Value::Null),
            device: r.device,
            status: r.status,
            received_at_ms: r.received_at_ms,
        });
    }
    Ok(Json(DeviceHealthList { devices: list }))
}
