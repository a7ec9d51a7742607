//! Telemetry's domain operations: drift and metric series shaped from the
//! stored windows, the drift policy (read, validate, replace), alerts
//! (list, acknowledge), retraining triggers and device health. The HTTP
//! handlers in [`super::api`], the CLI and a future dashboard call these;
//! they take a [`Caller`] and answer the API's contract types, which are
//! what every reader of a series wants.

use super::engine::{load_policy, save_policy};
use super::policy::DriftPolicy;
use crate::action::Action;
use crate::api::types::{
    Alert, AlertList, DeviceHealth, DeviceHealthList, DriftPoint, DriftPolicyView, DriftSeries,
    MetricPoint, MetricSeries, Trigger, TriggerList,
};
use crate::registry::Caller;
use crate::rollout::challenger::{ChallengerReport, Criteria, Evidence};
use crate::store::telemetry::{AlertQuery, AlertRow, HealthRow, WindowQuery, WindowRow};
use crate::store::{Store, StoreError};
use ferry_protocol::telemetry::Health;
use serde_json::{Map, Value};

/// Why a telemetry operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid drift policy: {0}")]
    InvalidPolicy(String),
    #[error("no alert {id:?}")]
    NoAlert { id: String },
}

impl TelemetryError {
    /// Whether the audit chain records this as a refusal of the operation
    /// (a policy that does not validate, an unknown alert). Other errors
    /// are answered without a record, as before the services existed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::InvalidPolicy(_) | Self::NoAlert { .. })
    }
}

/// PSI per feature per window of `model`, with the policy's threshold.
pub async fn drift_series(
    store: &Store,
    caller: &Caller,
    model: &str,
    q: &WindowQuery,
) -> Result<DriftSeries, TelemetryError> {
    let policy = load_policy(store, &caller.tenant, model)
        .await?
        .unwrap_or_default();
    let mut points = Vec::new();
    for r in store.windows(&caller.tenant, model, q).await? {
        let s: ferry_protocol::telemetry::DriftSummary =
            serde_json::from_str(&r.summary).map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
    Ok(DriftSeries {
        model: model.to_string(),
        psi_threshold: policy.psi_threshold,
        windows: points,
    })
}

/// Latency, throughput, error rate and accuracy per window of `model`.
pub async fn metric_series(
    store: &Store,
    caller: &Caller,
    model: &str,
    q: &WindowQuery,
) -> Result<MetricSeries, TelemetryError> {
    let mut points = Vec::new();
    for r in store.windows(&caller.tenant, model, q).await? {
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
    Ok(MetricSeries {
        model: model.to_string(),
        windows: points,
    })
}

/// The model's challenger and shadow against its champion over the
/// windows that ended in the last `window_secs` (server clock), judged by
/// `criteria`. Unreadable stored summaries are skipped and logged, never
/// answered with an error: one bad row must not hide the comparison.
pub async fn challenger(
    store: &Store,
    caller: &Caller,
    model: &str,
    window_secs: u64,
    criteria: Criteria,
) -> Result<ChallengerReport, TelemetryError> {
    criteria.validate().map_err(TelemetryError::BadRequest)?;
    // Tenant scoped as the registry's model routes: another tenant's name is
    // answered 404.
    store.model(&caller.tenant, model).await?;
    let since_ms = store
        .clock()
        .now_ms()
        .saturating_sub(window_secs.saturating_mul(1000));
    let mut evidence = Evidence::default();
    let mut unreadable = 0u64;
    let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
    store
        .for_each_summary(
            &caller.tenant,
            model,
            since,
            |json| match serde_json::from_str::<ferry_protocol::telemetry::DriftSummary>(json) {
                Ok(s) => evidence.add(&s),
                Err(_) => unreadable += 1,
            },
        )
        .await?;
    if unreadable > 0 {
        tracing::warn!(
            model,
            unreadable,
            "challenger: stored summaries that do not parse were skipped"
        );
    }
    Ok(ChallengerReport {
        model: model.to_string(),
        since_ms,
        window_secs,
        criteria,
        comparisons: evidence.report(&criteria),
    })
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

/// The model's drift policy; `default` says none was saved.
pub async fn policy(
    store: &Store,
    caller: &Caller,
    model: &str,
) -> Result<DriftPolicyView, TelemetryError> {
    store.model(&caller.tenant, model).await?;
    let stored = load_policy(store, &caller.tenant, model).await?;
    let is_default = stored.is_none();
    let p = stored.unwrap_or_default();
    Ok(policy_view(&p, model, Some(is_default)))
}

/// Replaces the model's drift policy with the JSON document `doc` (fields
/// left out take their defaults). The document is decoded here, after the
/// model check, so that an unknown model answers 404 whatever the body.
pub async fn set_policy(
    store: &Store,
    caller: &Caller,
    model: &str,
    doc: &[u8],
) -> Result<DriftPolicyView, TelemetryError> {
    store.model(&caller.tenant, model).await?;
    if doc.is_empty() {
        return Err(TelemetryError::BadRequest(
            "request body is empty; expected a JSON drift policy".into(),
        ));
    }
    let mut p: DriftPolicy =
        serde_json::from_slice(doc).map_err(|e| TelemetryError::InvalidPolicy(e.to_string()))?;
    let stored = load_policy(store, &caller.tenant, model).await?;
    p.keep_write_only(stored.as_ref());
    p.validate().map_err(TelemetryError::InvalidPolicy)?;
    let mut entry = caller.ok(Action::DriftPolicySet, model);
    entry.detail = p.public_json().to_string();
    save_policy(store, &caller.tenant, model, &p, entry).await?;
    Ok(policy_view(&p, model, None))
}

fn alert(r: &AlertRow) -> Alert {
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

/// Alerts matching `q`, oldest first.
pub async fn alerts(
    store: &Store,
    caller: &Caller,
    q: &AlertQuery,
) -> Result<AlertList, TelemetryError> {
    let rows = store.alerts(&caller.tenant, q).await?;
    Ok(AlertList {
        alerts: rows.iter().map(alert).collect(),
    })
}

/// Acknowledges alert `id` in the caller's name.
pub async fn ack_alert(store: &Store, caller: &Caller, id: &str) -> Result<Alert, TelemetryError> {
    let row = store
        .ack_alert(
            &caller.tenant,
            id,
            &caller.actor,
            caller.ok(Action::AlertAck, id),
        )
        .await?;
    let row = row.ok_or_else(|| TelemetryError::NoAlert { id: id.to_string() })?;
    Ok(alert(&row))
}

/// Retraining triggers (of `model`, when given) and their deliveries.
pub async fn triggers(
    store: &Store,
    caller: &Caller,
    model: Option<&str>,
    since_ms: i64,
    limit: i64,
) -> Result<TriggerList, TelemetryError> {
    let rows = store
        .triggers(&caller.tenant, since_ms, model, limit)
        .await?;
    let triggers = rows
        .into_iter()
        .map(|r| Trigger {
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
        })
        .collect();
    Ok(TriggerList { triggers })
}

/// The latest health report of every device of the tenant.
pub async fn device_health(
    store: &Store,
    caller: &Caller,
) -> Result<DeviceHealthList, TelemetryError> {
    let rows = store.device_health(&caller.tenant).await?;
    let devices = rows
        .into_iter()
        .map(|r| DeviceHealth {
            health: serde_json::from_str::<Value>(&r.payload).unwrap_or(Value::Null),
            device: r.device,
            status: r.status,
            received_at_ms: r.received_at_ms,
        })
        .collect();
    Ok(DeviceHealthList { devices })
}

/// One device's latest health report, if it sent one.
pub async fn device_health_of(
    store: &Store,
    caller: &Caller,
    device: &str,
) -> Result<Option<DeviceHealth>, TelemetryError> {
    Ok(store
        .device_health_of(&caller.tenant, device)
        .await?
        .map(|r| DeviceHealth {
            health: serde_json::from_str::<Value>(&r.payload).unwrap_or(Value::Null),
            device: r.device,
            status: r.status,
            received_at_ms: r.received_at_ms,
        }))
}

/// The latest health message of each of the devices `ids` that sent one,
/// as stored (the dashboard reads only the page it shows).
pub async fn device_health_of_each(
    store: &Store,
    caller: &Caller,
    ids: &[String],
) -> Result<Vec<HealthRow>, TelemetryError> {
    Ok(store.device_health_of_each(&caller.tenant, ids).await?)
}

/// The devices whose latest health message says they serve `model`
/// (`serving` names `model@version...`).
pub async fn devices_serving(
    store: &Store,
    caller: &Caller,
    model: &str,
) -> Result<Vec<String>, TelemetryError> {
    // The store narrows by text; the message decides.
    let rows = store
        .device_health_containing(&caller.tenant, &format!("\"{model}@"))
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            serde_json::from_str::<Health>(&r.payload).is_ok_and(|h| {
                h.serving
                    .iter()
                    .any(|s| s.split_once('@').is_some_and(|(m, _)| m == model))
            })
        })
        .map(|r| r.device)
        .collect())
}

/// A device event as stored, its payload read.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceEventView {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub model: Option<String>,
    pub version: Option<u64>,
    pub detail: String,
}

/// One device's events, newest first, `limit` from `offset`.
pub async fn device_events(
    store: &Store,
    caller: &Caller,
    device: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<DeviceEventView>, TelemetryError> {
    let rows = store
        .device_events(&caller.tenant, device, offset, limit)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            // Stored only after it parsed as an event; a row that no longer
            // does still shows its kind and time.
            let e = serde_json::from_str::<ferry_protocol::telemetry::Event>(&r.payload).ok();
            DeviceEventView {
                seq: r.seq,
                at_ms: r.at_ms,
                kind: r.kind,
                model: e.as_ref().and_then(|e| e.model.clone()),
                version: e.as_ref().and_then(|e| e.version),
                detail: e.map(|e| e.detail).unwrap_or_default(),
            }
        })
        .collect())
}

/// One device's drift windows (of `model`, or of all), newest first,
/// `limit` from `offset`, each with its model; and every model the device
/// has sent windows of.
pub async fn device_windows(
    store: &Store,
    caller: &Caller,
    device: &str,
    model: Option<&str>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<(String, WindowRow)>, Vec<String>), TelemetryError> {
    let rows = store
        .device_windows(&caller.tenant, device, model, offset, limit)
        .await?;
    let models = store.device_window_models(&caller.tenant, device).await?;
    Ok((rows, models))
}
