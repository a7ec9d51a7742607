//! Drift and metrics series, drift policies, alerts, retraining triggers,
//! device health.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// One device's drift window: PSI per feature.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DriftPoint {
    pub device: String,
    pub seq: u64,
    pub version: u64,
    pub variant: String,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub rows: u64,
    pub features: Vec<String>,
    pub psi: Vec<Option<f64>>,
    pub missing: Vec<u64>,
    pub out_of_range: Vec<u64>,
    /// Largest PSI over the features the policy watches.
    pub max_psi: Option<f64>,
    pub drifted: bool,
    pub received_at_ms: i64,
}

/// `GET /models/{name}/drift`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DriftSeries {
    pub model: String,
    pub psi_threshold: f64,
    pub windows: Vec<DriftPoint>,
}

/// One device's window of serving metrics.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricPoint {
    pub device: String,
    pub seq: i64,
    pub version: i64,
    pub variant: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub requests: i64,
    pub rows: i64,
    pub errors: i64,
    pub error_rate: f64,
    pub throughput_rps: Option<f64>,
    pub latency_p50_us: i64,
    pub latency_p99_us: i64,
    pub labelled: i64,
    pub accuracy: Option<f64>,
}

/// `GET /models/{name}/metrics`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricSeries {
    pub model: String,
    pub windows: Vec<MetricPoint>,
}

/// A model's drift policy as shown (the webhook secret only as
/// `webhook_secret_set`); `default` on reads says no policy was saved.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DriftPolicyView {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub policy: Map<String, Value>,
}

/// An alert raised by the drift engine.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub id: String,
    pub model: String,
    pub version: i64,
    pub kind: String,
    pub device: String,
    pub opened_at_ms: i64,
    #[schema(value_type = Object)]
    pub evidence: Value,
    pub acknowledged: bool,
    pub acknowledged_at_ms: Option<i64>,
    pub acknowledged_by: String,
}

/// `GET /alerts`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
}

/// A retraining trigger and its webhook delivery.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Trigger {
    pub id: String,
    pub model: String,
    pub version: i64,
    pub reason: String,
    pub alert_id: String,
    pub fired_at_ms: i64,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub delivered: bool,
    pub attempts: i64,
    pub last_error: String,
}

/// `GET /retrain-triggers`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<Trigger>,
}

/// A device's latest health report.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceHealth {
    pub device: String,
    pub status: String,
    pub received_at_ms: i64,
    #[schema(value_type = Object)]
    pub health: Value,
}

/// `GET /devices`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceHealthList {
    pub devices: Vec<DeviceHealth>,
}
