//! A model's monitoring charts over a time range (requests/s, error rate,
//! p50/p99 latency, accuracy, max PSI, drifted rows, the per-feature PSI
//! heat map), per version and variant, fleet-wide or for one device. Read
//! from the roll-ups: a 30-day chart is 720 hourly buckets per series,
//! whatever the fleet's size, merged into its points by the database; the
//! heat map reads its per-feature maps apart, hourly from a day up.

use super::engine::load_policy;
use super::service::TelemetryError;
use crate::api::types::{FeatureHeat, Monitoring, MonitoringSeries, MonitoringTotals};
use crate::registry::Caller;
use crate::store::rollups::{FeaturePsiRow, Resolution, Rollup, RollupQuery, RollupRow};
use crate::store::Store;
use std::collections::BTreeMap;

/// Points per chart at most.
pub const MAX_POINTS: i64 = 360;

/// The time ranges a chart offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    Hour,
    SixHours,
    Day,
    Week,
    Month,
}

impl Range {
    pub const ALL: [Range; 5] = [
        Range::Hour,
        Range::SixHours,
        Range::Day,
        Range::Week,
        Range::Month,
    ];

    pub fn parse(s: &str) -> Result<Self, TelemetryError> {
        Range::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                TelemetryError::BadRequest(format!("range {s:?}: use 1h, 6h, 24h, 7d or 30d"))
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::SixHours => "6h",
            Range::Day => "24h",
            Range::Week => "7d",
            Range::Month => "30d",
        }
    }

    pub fn ms(self) -> i64 {
        const H: i64 = 3_600_000;
        match self {
            Range::Hour => H,
            Range::SixHours => 6 * H,
            Range::Day => 24 * H,
            Range::Week => 7 * 24 * H,
            Range::Month => 30 * 24 * H,
        }
    }

    /// The width of a chart's point: buckets of [`Range::resolution`]
    /// merged so that a chart has at most [`MAX_POINTS`] (a 24-hour chart
    /// of 4-minute points, a 30-day one of 2-hour points). Merging is exact
    /// ([`Rollup::merge`]), and the page stays small and fast.
    pub fn step_ms(self) -> i64 {
        let width = self.resolution().width_ms();
        let buckets = self.ms() / width;
        width * ((buckets + MAX_POINTS - 1) / MAX_POINTS).max(1)
    }

    /// The roll-up the heat map reads: hours from a day up (the page draws
    /// at most 24 columns, so minutes would only cost rows, each with a
    /// JSON map to parse), minutes below.
    pub fn heat_resolution(self) -> Resolution {
        match self {
            Range::Hour | Range::SixHours => Resolution::Minute,
            Range::Day | Range::Week | Range::Month => Resolution::Hour,
        }
    }

    /// The finest roll-up with at most 1,440 buckets over the range.
    pub fn resolution(self) -> Resolution {
        match self {
            Range::Hour | Range::SixHours | Range::Day => Resolution::Minute,
            Range::Week | Range::Month => Resolution::Hour,
        }
    }
}

/// What a chart asks for.
#[derive(Clone, Debug)]
pub struct MonitoringQuery {
    pub range: Range,
    pub version: Option<i64>,
    pub device: Option<String>,
}

impl MonitoringQuery {
    /// A query string: `range` (default 24h), `version`, `device` (empty
    /// values are left out; other keys are ignored, as a page's own are).
    pub fn parse(raw: Option<&str>) -> Result<Self, TelemetryError> {
        let mut q = MonitoringQuery {
            range: Range::Day,
            version: None,
            device: None,
        };
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match k.as_ref() {
                "range" => q.range = Range::parse(v)?,
                "version" => {
                    q.version = Some(v.parse().ok().filter(|n: &i64| *n >= 1).ok_or_else(|| {
                        TelemetryError::BadRequest(format!("version {v:?}: a version number"))
                    })?)
                }
                "device" => q.device = Some(v.to_string()),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// The charts of `model` for `q`, ending now (the store's clock).
pub async fn monitoring(
    store: &Store,
    caller: &Caller,
    model: &str,
    q: &MonitoringQuery,
) -> Result<Monitoring, TelemetryError> {
    let policy = load_policy(store, &caller.tenant, model)
        .await?
        .unwrap_or_default();
    let now = store.now_ms();
    let res = q.range.resolution();
    let step = q.range.step_ms();
    let first = (now - q.range.ms() + step).div_euclid(step) * step;
    let device = q.device.clone().unwrap_or_default();
    // The database merges the buckets into points: a row per point is what
    // a chart costs (sqlx's Any driver hands rows over one at a time).
    let points = store
        .rollup_points(
            &caller.tenant,
            model,
            &RollupQuery {
                resolution: res,
                device: device.clone(),
                version: q.version,
                since_ms: first,
            },
            step,
        )
        .await?;
    let mut m = chart(model, q, res, step, first, now, points);
    // Only fleet-wide rows carry per-feature PSI: one device has no map.
    if device.is_empty() {
        if let Some(&since_ms) = m.heat_buckets.first() {
            let rows = store
                .rollup_feature_psi(
                    &caller.tenant,
                    model,
                    &RollupQuery {
                        resolution: q.range.heat_resolution(),
                        device,
                        version: q.version,
                        since_ms,
                    },
                )
                .await?;
            m.features = heat(&m.heat_buckets, m.heat_bucket_ms, rows);
        }
    }
    m.psi_threshold = policy.psi_threshold;
    Ok(m)
}

/// The charts from the stored buckets or points `rows` (by version,
/// variant, time): points `step` wide (a multiple of the resolution's
/// buckets; rows inside one point are merged, so the store's points and
/// its raw buckets draw the same), from `first` to the one holding `now`.
/// The heat map's buckets are set, its features left empty ([`heat`]
/// fills them).
pub fn chart(
    model: &str,
    q: &MonitoringQuery,
    res: Resolution,
    step: i64,
    first: i64,
    now: i64,
    rows: Vec<RollupRow>,
) -> Monitoring {
    let width = step;
    let last = now.div_euclid(width) * width;
    let buckets: Vec<i64> = (0..)
        .map(|i| first + i * width)
        .take_while(|b| *b <= last)
        .collect();
    let index = |b: i64| -> Option<usize> {
        (b >= first && b < last + width).then(|| ((b - first) / width) as usize)
    };
    // The current bucket has run only since its start.
    let seconds = |b: i64| ((now - b).clamp(1, width) as f64) / 1000.0;
    let mut by_series: BTreeMap<(i64, String), BTreeMap<usize, Rollup>> = BTreeMap::new();
    for r in rows {
        let Some(i) = index(r.bucket_ms) else {
            continue;
        };
        by_series
            .entry((r.version, r.variant))
            .or_default()
            .entry(i)
            .or_insert_with(Rollup::empty)
            .merge(&r.sums);
    }
    let series = by_series
        .into_iter()
        .map(|((version, variant), points)| {
            let n = buckets.len();
            let mut s = MonitoringSeries {
                version,
                variant,
                requests_per_s: vec![None; n],
                error_rate: vec![None; n],
                latency_p50_us: vec![None; n],
                latency_p99_us: vec![None; n],
                accuracy: vec![None; n],
                max_psi: vec![None; n],
                drifted_rows: vec![None; n],
                totals: MonitoringTotals::default(),
            };
            let mut total = Rollup::empty();
            for (i, r) in &points {
                let i = *i;
                s.requests_per_s[i] = Some(r.requests as f64 / seconds(buckets[i]));
                s.error_rate[i] = ratio(r.errors, r.requests);
                s.latency_p50_us[i] =
                    (r.requests > 0).then(|| r.latency_p50_weighted / r.requests as f64);
                s.latency_p99_us[i] = (r.windows > 0).then_some(r.latency_p99_max_us as f64);
                s.accuracy[i] = ratio(r.correct, r.labelled);
                s.max_psi[i] = (r.max_psi >= 0.0).then_some(r.max_psi);
                s.drifted_rows[i] = Some(r.drifted_rows);
                total.merge(r);
            }
            s.totals = MonitoringTotals {
                windows: total.windows,
                requests: total.requests,
                errors: total.errors,
                error_rate: ratio(total.errors, total.requests),
                latency_p50_us: (total.requests > 0)
                    .then(|| total.latency_p50_weighted / total.requests as f64),
                latency_p99_max_us: (total.windows > 0).then_some(total.latency_p99_max_us),
                labelled: total.labelled,
                accuracy: ratio(total.correct, total.labelled),
                max_psi: (total.max_psi >= 0.0).then_some(total.max_psi),
                drifted_rows: total.drifted_rows,
            };
            s
        })
        .collect();
    Monitoring {
        model: model.to_string(),
        range: q.range.as_str().to_string(),
        resolution: res.as_str().to_string(),
        bucket_ms: width,
        buckets,
        device: q.device.clone(),
        psi_threshold: 0.0,
        series,
        heat_bucket_ms: q.range.heat_resolution().width_ms(),
        heat_buckets: heat_buckets(q.range, now),
        features: Vec::new(),
    }
}

/// The heat map's buckets for `range` at `now`: [`Range::heat_resolution`]
/// buckets, as many as the range holds, the last the one holding `now`
/// (the roll-up job writes every resolution at once, so the current hour
/// has its row). Never older than the range.
pub fn heat_buckets(range: Range, now: i64) -> Vec<i64> {
    let res = range.heat_resolution();
    let width = res.width_ms();
    let last = res.bucket(now);
    let n = (range.ms() / width).max(1);
    (0..n).map(|i| last - (n - 1 - i) * width).collect()
}

/// The per-feature PSI heat map: for each feature, the largest PSI of
/// `rows` (every version and variant) in each of `buckets`, `width` wide.
/// Rows outside the buckets are left out.
pub fn heat(buckets: &[i64], width: i64, rows: Vec<FeaturePsiRow>) -> Vec<FeatureHeat> {
    let (Some(&first), Some(&last)) = (buckets.first(), buckets.last()) else {
        return Vec::new();
    };
    let mut heat: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for r in rows {
        if r.bucket_ms < first || r.bucket_ms >= last + width {
            continue;
        }
        let i = ((r.bucket_ms - first) / width) as usize;
        for (f, v) in r.feature_psi {
            let cells = heat.entry(f).or_insert_with(|| vec![None; buckets.len()]);
            cells[i] = Some(cells[i].map_or(v, |c: f64| c.max(v)));
        }
    }
    heat.into_iter()
        .map(|(feature, psi)| FeatureHeat { feature, psi })
        .collect()
}

fn ratio(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i64, variant: &str, bucket_ms: i64, requests: i64, psi: f64) -> RollupRow {
        RollupRow {
            version,
            variant: variant.into(),
            bucket_ms,
            sums: Rollup {
                windows: 2,
                rows_seen: requests,
                requests,
                errors: requests / 10,
                latency_p50_weighted: requests as f64 * 500.0,
                latency_p99_max_us: 2_000,
                labelled: 10,
                correct: 8,
                max_psi: psi,
                drifted_windows: 0,
                drifted_rows: 0,
                feature_psi: [("amount".to_string(), psi)]
                    .into_iter()
                    .filter(|(_, p)| *p >= 0.0)
                    .collect(),
            },
        }
    }

    #[test]
    fn buckets_align_series_and_leave_gaps() {
        let q = MonitoringQuery {
            range: Range::Hour,
            version: None,
            device: None,
        };
        let res = Resolution::Minute;
        let now = 10 * 3_600_000 + 30_000; // 30 s into a minute
        let first = res.bucket(now - Range::Hour.ms() + res.width_ms());
        let rows = vec![
            row(1, "champion", first, 600, 0.1),
            row(1, "champion", res.bucket(now), 60, 0.4),
            row(2, "challenger", first + 60_000, 120, -1.0),
            // Outside the range: ignored.
            row(1, "champion", first - 60_000, 1, 0.9),
        ];
        let m = chart("fraud", &q, res, res.width_ms(), first, now, rows);
        assert_eq!(m.buckets.len(), 60);
        assert_eq!(m.series.len(), 2);
        let champ = &m.series[0];
        assert_eq!((champ.version, champ.variant.as_str()), (1, "champion"));
        assert_eq!(champ.requests_per_s[0], Some(10.0));
        // The current bucket: 60 requests in the 30 s it has run.
        assert_eq!(champ.requests_per_s[59], Some(2.0));
        assert_eq!(champ.requests_per_s[1], None);
        assert_eq!(champ.error_rate[0], Some(0.1));
        assert_eq!(champ.latency_p50_us[0], Some(500.0));
        assert_eq!(champ.accuracy[0], Some(0.8));
        assert_eq!(champ.totals.requests, 660);
        assert_eq!(champ.totals.max_psi, Some(0.4));
        let chall = &m.series[1];
        assert_eq!(chall.max_psi[1], None);
        // The heat map is read apart: its buckets are set, its cells not.
        assert_eq!(m.heat_bucket_ms, 60_000);
        assert_eq!(m.heat_buckets.len(), 60);
        assert_eq!(m.heat_buckets[59], res.bucket(now));
        assert!(m.features.is_empty());
    }

    fn heat_row(bucket_ms: i64, psi: &[(&str, f64)]) -> FeaturePsiRow {
        FeaturePsiRow {
            bucket_ms,
            feature_psi: psi.iter().map(|(f, p)| (f.to_string(), *p)).collect(),
        }
    }

    /// A day's heat map is 24 hours, the last the one holding now; each
    /// cell the largest PSI of the rows (versions, variants) in its hour.
    #[test]
    fn heat_map_reads_hours_for_a_day() {
        let h = 3_600_000;
        let now = 500 * h + 90_000;
        let b = heat_buckets(Range::Day, now);
        assert_eq!(b.len(), 24);
        assert_eq!(*b.last().unwrap(), 500 * h);
        assert_eq!(b[0], 477 * h);
        assert!(b.windows(2).all(|w| w[1] - w[0] == h));
        assert_eq!(Range::Day.heat_resolution(), Resolution::Hour);
        let rows = vec![
            heat_row(477 * h, &[("amount", 0.1)]),
            // Two series in the current hour: the larger per feature.
            heat_row(500 * h, &[("amount", 0.4), ("age", 0.2)]),
            heat_row(500 * h, &[("amount", 0.9)]),
            // Before the first hour or after the last: left out.
            heat_row(476 * h, &[("amount", 0.8)]),
            heat_row(501 * h, &[("amount", 0.8)]),
        ];
        let f = heat(&b, h, rows);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].feature, "age");
        assert_eq!(f[0].psi[23], Some(0.2));
        assert_eq!(f[0].psi[0], None);
        let amount = &f[1];
        assert_eq!(amount.psi.len(), 24);
        assert_eq!(amount.psi[0], Some(0.1));
        assert_eq!(amount.psi[23], Some(0.9));
        assert_eq!(amount.psi.iter().flatten().count(), 2);
    }

    #[test]
    fn heat_buckets_per_range() {
        let now = 1_000 * 3_600_000 + 1_234;
        for (r, n, width) in [
            (Range::Hour, 60, 60_000),
            (Range::SixHours, 360, 60_000),
            (Range::Day, 24, 3_600_000),
            (Range::Week, 168, 3_600_000),
            (Range::Month, 720, 3_600_000),
        ] {
            let b = heat_buckets(r, now);
            assert_eq!(b.len(), n, "{r:?}");
            assert_eq!(r.heat_resolution().width_ms(), width);
            assert_eq!(*b.last().unwrap(), r.heat_resolution().bucket(now));
            // Never older than the range.
            assert!(b[0] > now - r.ms(), "{r:?}");
        }
    }

    /// A day of minutes is drawn as 360 points of 4 minutes each, every
    /// minute's counts added into its point.
    #[test]
    fn minutes_merge_into_wider_points() {
        let q = MonitoringQuery {
            range: Range::Day,
            version: None,
            device: None,
        };
        let step = Range::Day.step_ms();
        assert_eq!(step, 4 * 60_000);
        let now = 100 * 86_400_000 + 90_000;
        let first = (now - Range::Day.ms() + step).div_euclid(step) * step;
        let rows = (0..8)
            .map(|m| row(1, "champion", first + m * 60_000, 60, m as f64 / 10.0))
            .collect();
        let m = chart("fraud", &q, Resolution::Minute, step, first, now, rows);
        assert_eq!(m.buckets.len(), 360);
        assert_eq!(m.bucket_ms, step);
        let s = &m.series[0];
        // 4 minutes of 60 requests in a 240 s point: 1 request/s.
        assert_eq!(s.requests_per_s[0], Some(1.0));
        assert_eq!(s.requests_per_s[1], Some(1.0));
        assert_eq!(s.requests_per_s[2], None);
        assert_eq!(s.max_psi[1], Some(0.7));
        assert_eq!(s.totals.requests, 480);
    }

    #[test]
    fn query_defaults_and_refusals() {
        let q = MonitoringQuery::parse(None).unwrap();
        assert_eq!((q.range, q.version, q.device), (Range::Day, None, None));
        let q = MonitoringQuery::parse(Some("range=7d&version=2&device=abc&page=3")).unwrap();
        assert_eq!(
            (q.range, q.version, q.device.as_deref()),
            (Range::Week, Some(2), Some("abc"))
        );
        assert_eq!(
            MonitoringQuery::parse(Some("version=&device="))
                .unwrap()
                .version,
            None
        );
        assert!(MonitoringQuery::parse(Some("range=1y")).is_err());
        assert!(MonitoringQuery::parse(Some("version=x")).is_err());
        assert!(MonitoringQuery::parse(Some("version=0")).is_err());
    }

    #[test]
    fn ranges_parse_and_pick_resolutions() {
        assert_eq!(Range::parse("7d").unwrap().resolution(), Resolution::Hour);
        assert_eq!(
            Range::parse("24h").unwrap().resolution(),
            Resolution::Minute
        );
        assert!(Range::parse("2d").is_err());
        for r in Range::ALL {
            assert!(r.ms() / r.resolution().width_ms() <= 1_440);
            assert!(r.ms() / r.step_ms() <= MAX_POINTS);
            assert_eq!(r.step_ms() % r.resolution().width_ms(), 0);
        }
    }
}
