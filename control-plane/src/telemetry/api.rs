//! Telemetry routes under `/api/v1`: drift and metrics time series, drift
//! policies, alerts (with acknowledge) and retraining triggers. Reads need
//! any role of the tenant; changes need operator or above and are audited.
//! The handlers parse, authorize and answer; [`super::service`] does the
//! work.

use super::service::{self, TelemetryError};
use crate::action::Action;
use crate::api::query::{series_query as query, SeriesQuery as Q};
use crate::api::types::{
    Alert, AlertList, DeviceHealthList, DriftPolicyView, DriftSeries, ErrorBody, MetricSeries,
    Monitoring, TriggerList,
};
use crate::api::{ApiError, AppState, Auth};
use crate::store::telemetry::{AlertQuery, WindowQuery};
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use bytes::Bytes;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type R<T> = Result<T, ApiError>;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(drift))
        .routes(routes!(metrics))
        .routes(routes!(monitoring))
        .routes(routes!(get_policy, set_policy))
        .routes(routes!(alerts))
        .routes(routes!(ack))
        .routes(routes!(triggers))
        .routes(routes!(devices))
}

fn model_name(s: &str) -> R<String> {
    crate::api::query::parse_name(s)
}

fn window_query(q: &Q) -> WindowQuery {
    WindowQuery {
        version: q.version,
        device: q.device.clone(),
        since_ms: q.since_ms,
        limit: q.limit,
    }
}

/// The service's answer; a refusal it names is audited against `target`.
async fn answer<T>(a: &Auth, action: Action, target: &str, r: Result<T, TelemetryError>) -> R<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.is_refusal() => Err(a.refuse(action, target, e.into()).await),
        Err(e) => Err(e.into()),
    }
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
    let s = service::drift_series(&st.store, &a.caller(), &name, &window_query(&q)).await?;
    Ok(Json(s))
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
    let s = service::metric_series(&st.store, &a.caller(), &name, &window_query(&q)).await?;
    Ok(Json(s))
}

/// Charts over a time range from the roll-ups: requests/s, error rate,
/// p50/p99 latency, accuracy, max PSI, drifted rows per version and
/// variant, and the per-feature PSI heat map (fleet-wide; its cells are
/// aligned with `heat_buckets`, hours from 24 h up, not with `buckets`).
#[utoipa::path(get, path = "/api/v1/models/{name}/monitoring", tag = "telemetry",
    params(("name" = String, Path), ("range" = Option<String>, Query, description = "1h, 6h, 24h (default), 7d or 30d"),
        ("version" = Option<i64>, Query), ("device" = Option<String>, Query, description = "one device; default the whole fleet")),
    responses((status = 200, body = Monitoring), (status = "4XX", body = ErrorBody)))]
async fn monitoring(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> R<Json<Monitoring>> {
    let name = model_name(&name)?;
    a.authorize(Action::MetricSeries, &name).await?;
    let q = super::monitoring::MonitoringQuery::parse(raw.as_deref())?;
    st.store.model(&a.p.tenant, &name).await?;
    let m = super::monitoring::monitoring(&st.store, &a.caller(), &name, &q).await?;
    Ok(Json(m))
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
    Ok(Json(service::policy(&st.store, &a.caller(), &name).await?))
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
    let r = service::set_policy(&st.store, &a.caller(), &name, &body).await;
    Ok(Json(answer(&a, action, &name, r).await?))
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
                _ => return Err(ApiError::bad_request("open must be true or false")),
            },
            _ => {}
        }
    }
    Ok(Json(service::alerts(&st.store, &a.caller(), &aq).await?))
}

/// Acknowledge an alert.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "telemetry",
    params(("id" = String, Path)),
    responses((status = 200, body = Alert), (status = "4XX", body = ErrorBody)))]
async fn ack(a: Auth, State(st): State<AppState>, Path(id): Path<String>) -> R<Json<Alert>> {
    let action = Action::AlertAck;
    a.authorize(action, &id).await?;
    let r = service::ack_alert(&st.store, &a.caller(), &id).await;
    Ok(Json(answer(&a, action, &id, r).await?))
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
        .map(|(_, v)| v.as_str());
    let list = service::triggers(&st.store, &a.caller(), model, q.since_ms, q.limit).await?;
    Ok(Json(list))
}

/// The latest health report per device.
#[utoipa::path(get, path = "/api/v1/devices", tag = "telemetry",
    responses((status = 200, body = DeviceHealthList), (status = "4XX", body = ErrorBody)))]
async fn devices(a: Auth, State(st): State<AppState>) -> R<Json<DeviceHealthList>> {
    a.authorize(Action::DeviceHealthList, "devices").await?;
    Ok(Json(service::device_health(&st.store, &a.caller()).await?))
}
