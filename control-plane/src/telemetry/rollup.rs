//! Telemetry roll-ups: the job that sums drift windows per minute, hour and
//! day (per device, and fleet-wide with a per-feature PSI map for the heat
//! map), and the retention that ages out raw windows and each resolution.
//! The sums are pure ([`sum`]); the store claims windows and adds them in
//! one transaction (`Store::roll_up`).

use crate::changes::ChangeKind;
use crate::store::rollups::{Resolution, Rollup, RollupKey, RollupWindow};
use crate::store::{Store, StoreError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Windows claimed per transaction.
const BATCH: i64 = 5_000;
/// Rows deleted per statement when ageing out.
const EXPIRE_CHUNK: i64 = 10_000;
const DAY_MS: i64 = 86_400_000;

/// How long each kind of telemetry row is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Raw windows (their full summaries; what drift evaluation, the
    /// challenger comparison and per-window listings read).
    pub raw_days: i64,
    pub minute_days: i64,
    pub hour_days: i64,
    pub day_days: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_days: 7,
            minute_days: 14,
            hour_days: 90,
            day_days: 400,
        }
    }
}

impl Retention {
    /// `raw=7d,minute=14d,hour=90d,day=400d`; names left out keep their
    /// defaults. Days only: retention finer than a day is not a policy.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut r = Retention::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: use NAME=DAYSd, e.g. raw=7d"))?;
            let days: i64 = value
                .trim()
                .strip_suffix('d')
                .unwrap_or(value.trim())
                .parse()
                .ok()
                .filter(|d| *d >= 1)
                .ok_or_else(|| format!("{part:?}: the retention is a whole number of days ≥ 1"))?;
            match name.trim() {
                "raw" => r.raw_days = days,
                "minute" => r.minute_days = days,
                "hour" => r.hour_days = days,
                "day" => r.day_days = days,
                other => {
                    return Err(format!(
                        "{other:?}: the retention names are raw, minute, hour and day"
                    ))
                }
            }
        }
        Ok(r)
    }

    pub fn days(&self, res: Resolution) -> i64 {
        match res {
            Resolution::Minute => self.minute_days,
            Resolution::Hour => self.hour_days,
            Resolution::Day => self.day_days,
        }
    }
}

/// The per-feature PSI of a stored summary (other fields are not read).
#[derive(Deserialize)]
struct FeaturePsi {
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    psi: Vec<Option<f64>>,
}

/// The sums of `windows` for every bucket they touch: each resolution,
/// per device and fleet-wide. A window belongs to the bucket its last
/// millisecond falls in.
pub fn sum(windows: &[RollupWindow]) -> BTreeMap<RollupKey, Rollup> {
    let mut out: BTreeMap<RollupKey, Rollup> = BTreeMap::new();
    for w in windows {
        let one = Rollup {
            windows: 1,
            rows_seen: w.rows_seen,
            requests: w.requests,
            errors: w.errors,
            latency_p50_weighted: w.latency_p50_us as f64 * w.requests as f64,
            latency_p99_max_us: w.latency_p99_us,
            labelled: w.labelled,
            correct: w.correct,
            max_psi: if w.max_psi >= 0.0 { w.max_psi } else { -1.0 },
            drifted_windows: i64::from(w.drifted),
            drifted_rows: if w.drifted { w.rows_seen } else { 0 },
            feature_psi: BTreeMap::new(),
        };
        let mut fleet = one.clone();
        // An unreadable summary still counts; it just adds no heat-map cell.
        if let Ok(f) = serde_json::from_str::<FeaturePsi>(&w.summary) {
            for (name, psi) in f.features.into_iter().zip(f.psi) {
                if let Some(p) = psi.filter(|p| p.is_finite()) {
                    let e = fleet.feature_psi.entry(name).or_insert(p);
                    *e = e.max(p);
                }
            }
        }
        let at = w.window_end_ms.saturating_sub(1);
        for res in Resolution::ALL {
            for (device, sums) in [(w.device.as_str(), &one), ("", &fleet)] {
                let key = RollupKey {
                    tenant: w.tenant.clone(),
                    model: w.model.clone(),
                    resolution: res,
                    device: device.to_string(),
                    version: w.version,
                    variant: w.variant.clone(),
                    bucket_ms: res.bucket(at),
                };
                out.entry(key).or_insert_with(Rollup::empty).merge(sums);
            }
        }
    }
    out
}

/// Rolls up everything waiting, batch by batch; tells the change feed
/// which models' charts moved. Returns the windows rolled up.
pub async fn catch_up(store: &Store) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let (n, changed) = store.roll_up(BATCH, sum).await?;
        total += n;
        for (tenant, model) in changed {
            store.changes().send(&tenant, ChangeKind::Telemetry(model));
        }
        if n < BATCH as usize {
            return Ok(total);
        }
    }
}

/// Ages out raw windows and buckets older than `retention` at `now_ms`.
pub async fn expire(store: &Store, retention: &Retention, now_ms: i64) -> Result<u64, StoreError> {
    let cuts: Vec<(Resolution, i64)> = Resolution::ALL
        .into_iter()
        .map(|r| (r, now_ms - retention.days(r) * DAY_MS))
        .collect();
    store
        .expire_telemetry(now_ms - retention.raw_days * DAY_MS, &cuts, EXPIRE_CHUNK)
        .await
}

/// The job: roll up every `tick`, age out every ten minutes. Errors are
/// logged and retried on the next tick (the windows stay unclaimed).
pub async fn run(store: Store, retention: Retention, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiry: Option<i64> = None;
    loop {
        interval.tick().await;
        if let Err(e) = catch_up(&store).await {
            tracing::error!(error = %e, "telemetry roll-up failed; retrying next tick");
        }
        let now = store.now_ms();
        if last_expiry.is_none_or(|t| now.saturating_sub(t) >= 600_000) {
            last_expiry = Some(now);
            match expire(&store, &retention, now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "telemetry aged out"),
                Err(e) => tracing::error!(error = %e, "telemetry retention failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(device: &str, end_ms: i64, requests: i64, p50: i64, psi: f64) -> RollupWindow {
        RollupWindow {
            tenant: "t".into(),
            device: device.into(),
            seq: end_ms,
            model: "fraud".into(),
            version: 1,
            variant: "champion".into(),
            window_end_ms: end_ms,
            rows_seen: requests,
            requests,
            errors: 1,
            latency_p50_us: p50,
            latency_p99_us: p50 * 3,
            labelled: 10,
            correct: 9,
            max_psi: psi,
            drifted: psi > 0.3,
            summary: format!(r#"{{"features":["a","b"],"psi":[{psi},null],"rows":{requests}}}"#),
        }
    }

    fn key(res: Resolution, device: &str, bucket_ms: i64) -> RollupKey {
        RollupKey {
            tenant: "t".into(),
            model: "fraud".into(),
            resolution: res,
            device: device.into(),
            version: 1,
            variant: "champion".into(),
            bucket_ms,
        }
    }

    #[test]
    fn windows_sum_per_bucket_device_and_fleet() {
        let h = 3_600_000;
        // Two devices in the same minute, one window ending exactly on the
        // next minute (it belongs to the minute it covered).
        let w = [
            window("d1", h + 30_000, 100, 1_000, 0.1),
            window("d2", h + 60_000, 300, 2_000, 0.5),
            window("d1", h + 90_000, 50, 4_000, -1.0),
        ];
        let s = sum(&w);
        let fleet_min = &s[&key(Resolution::Minute, "", h)];
        assert_eq!(
            (fleet_min.windows, fleet_min.requests, fleet_min.errors),
            (2, 400, 2)
        );
        assert_eq!(
            fleet_min.latency_p50_weighted,
            100.0 * 1_000.0 + 300.0 * 2_000.0
        );
        assert_eq!(fleet_min.latency_p99_max_us, 6_000);
        assert_eq!(fleet_min.max_psi, 0.5);
        assert_eq!(
            (fleet_min.drifted_windows, fleet_min.drifted_rows),
            (1, 300)
        );
        assert_eq!(fleet_min.feature_psi.get("a"), Some(&0.5));
        assert!(!fleet_min.feature_psi.contains_key("b"));
        // The third window is the next minute's; the hour has all three.
        let next = &s[&key(Resolution::Minute, "", h + 60_000)];
        assert_eq!((next.windows, next.max_psi), (1, -1.0));
        let hour = &s[&key(Resolution::Hour, "", h)];
        assert_eq!((hour.windows, hour.requests), (3, 450));
        // Per-device rows carry no heat map.
        let d1 = &s[&key(Resolution::Day, "d1", 0)];
        assert_eq!((d1.windows, d1.requests), (2, 150));
        assert!(d1.feature_psi.is_empty());
        // Minutes: d1 twice, d2, the fleet twice; hour and day: d1, d2, fleet.
        assert_eq!(s.len(), 5 + 3 + 3);
    }

    #[test]
    fn merging_is_the_same_as_summing_at_once() {
        let w: Vec<RollupWindow> = (0..20)
            .map(|i| {
                window(
                    if i % 2 == 0 { "a" } else { "b" },
                    i * 7_000 + 1,
                    i + 1,
                    100 * i,
                    i as f64 / 20.0,
                )
            })
            .collect();
        let all = sum(&w);
        let mut split = sum(&w[..7]);
        for (k, r) in sum(&w[7..]) {
            split.entry(k).or_insert_with(Rollup::empty).merge(&r);
        }
        assert_eq!(all, split);
    }

    #[test]
    fn a_window_without_psi_keeps_the_sentinel() {
        let s = sum(&[window("d", 1, 1, 1, -1.0)]);
        assert_eq!(s[&key(Resolution::Minute, "d", 0)].max_psi, -1.0);
    }

    #[test]
    fn retention_parses_and_refuses() {
        assert_eq!(Retention::parse("").unwrap(), Retention::default());
        let r = Retention::parse("raw=3d, hour=30").unwrap();
        assert_eq!((r.raw_days, r.minute_days, r.hour_days), (3, 14, 30));
        assert!(Retention::parse("raw=0d").is_err());
        assert!(Retention::parse("week=3d").is_err());
        assert!(Retention::parse("raw").is_err());
    }
}
