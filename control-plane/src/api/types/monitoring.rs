//! `GET /models/{name}/monitoring`: a model's charts over a time range,
//! read from the telemetry roll-ups.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every series is aligned with `buckets`; `null` marks a bucket without
/// windows (a device offline, a version not serving yet). The heat map
/// (`features`) has buckets of its own, `heat_buckets`: coarser than the
/// charts' from 24 h up (hours), the last one holding now.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Monitoring {
    pub model: String,
    /// `1h`, `6h`, `24h`, `7d` or `30d`.
    pub range: String,
    /// `minute` or `hour`: the roll-up read for this range.
    pub resolution: String,
    /// Width of a bucket, milliseconds.
    pub bucket_ms: i64,
    /// Start of each bucket, oldest first, milliseconds since the epoch.
    pub buckets: Vec<i64>,
    /// The one device shown; absent for the whole fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The drift policy's PSI threshold (its default when none was saved).
    pub psi_threshold: f64,
    /// One per version and variant (champion, challenger, shadow) seen.
    pub series: Vec<MonitoringSeries>,
    /// Width of a heat-map bucket, milliseconds: a minute for 1 h and
    /// 6 h, an hour for 24 h, 7 d and 30 d.
    // Defaults: a client reading an older server, which had neither.
    #[serde(default)]
    pub heat_bucket_ms: i64,
    /// Start of each heat-map bucket, oldest first, milliseconds since the
    /// epoch; the last is the bucket holding now. Every `features[].psi`
    /// is aligned with these (not with `buckets`).
    #[serde(default)]
    pub heat_buckets: Vec<i64>,
    /// Largest PSI per feature per heat-map bucket over the series shown
    /// (fleet-wide only; empty for one device).
    pub features: Vec<FeatureHeat>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MonitoringSeries {
    pub version: i64,
    pub variant: String,
    pub requests_per_s: Vec<Option<f64>>,
    pub error_rate: Vec<Option<f64>>,
    /// Request-weighted mean of the windows' medians.
    pub latency_p50_us: Vec<Option<f64>>,
    /// The worst window's p99.
    pub latency_p99_us: Vec<Option<f64>>,
    /// Correct over labelled, from feedback labels.
    pub accuracy: Vec<Option<f64>>,
    pub max_psi: Vec<Option<f64>>,
    pub drifted_rows: Vec<Option<i64>>,
    pub totals: MonitoringTotals,
}

/// A series summed over the whole range.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct MonitoringTotals {
    pub windows: i64,
    pub requests: i64,
    pub errors: i64,
    pub error_rate: Option<f64>,
    pub latency_p50_us: Option<f64>,
    pub latency_p99_max_us: Option<i64>,
    pub labelled: i64,
    pub accuracy: Option<f64>,
    pub max_psi: Option<f64>,
    pub drifted_rows: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FeatureHeat {
    pub feature: String,
    /// Aligned with `Monitoring.heat_buckets`; `null`: no PSI in that bucket.
    pub psi: Vec<Option<f64>>,
}
