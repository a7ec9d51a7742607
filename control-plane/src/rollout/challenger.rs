//! Champion–challenger comparison: a model's challenger (A/B split) or
//! shadow against its champion, from the drift summaries devices reported
//! over a window, and whether the challenger is ready to be promoted.
//!
//! Pure: the server feeds [`Evidence`] the summaries it stored and asks for
//! a [`ChallengerReport`]. Each non-champion variant is compared with the
//! champion **on the devices that reported that variant** (an A/B split
//! serves both to the same traffic; devices without the challenger would
//! compare another population). The statistics are `stats`' (checked
//! against scipy): one-sided pooled two-proportion z tests, Wilson 95 %
//! intervals, PSI and Jensen–Shannon between the predicted-class counts.

use std::collections::{BTreeMap, BTreeSet};

use ferry_protocol::telemetry::{histogram_quantile, DriftSummary};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::observations::TelemetryAggregate;
use super::stats;

/// The variant every other variant is compared with.
pub const CHAMPION: &str = "champion";

/// What promotion asks of the evidence. Defaults as the rollout policy's
/// accuracy and error gates: 200 labelled rows, α = 0.01.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Criteria {
    /// Labelled rows (feedback) each side needs before a verdict on
    /// accuracy, and before `ready` (0: accuracy is not required).
    pub min_labelled: u64,
    /// Requests each side needs before a verdict on error rate and latency.
    pub min_requests: u64,
    /// Significance level of the one-sided tests.
    pub alpha: f64,
    /// The challenger's p99 may be at most this many times the champion's.
    pub max_latency_ratio: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Self {
            min_labelled: 200,
            min_requests: 100,
            alpha: 0.01,
            max_latency_ratio: 1.5,
        }
    }
}

impl Criteria {
    /// Refuses values no comparison can use, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(format!("alpha {} must be in (0, 1)", self.alpha));
        }
        if !(self.max_latency_ratio.is_finite() && self.max_latency_ratio >= 1.0) {
            return Err(format!(
                "max_latency_ratio {} must be a number ≥ 1",
                self.max_latency_ratio
            ));
        }
        Ok(())
    }
}

/// A proportion with its Wilson 95 % interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Proportion {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

fn proportion(x: u64, n: u64) -> Option<Proportion> {
    let (low, high) = stats::wilson_interval(x, n, stats::Z_95)?;
    Some(Proportion {
        value: x as f64 / n as f64,
        low,
        high,
    })
}

/// One variant's figures over the window (on the compared devices).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VariantStats {
    pub variant: String,
    /// Versions that reported as this variant.
    pub versions: Vec<u64>,
    pub devices: u64,
    pub windows: u64,
    pub requests: u64,
    pub errors: u64,
    /// Errors / requests; `None` without requests.
    pub error_rate: Option<Proportion>,
    /// At the latency histogram's bucket bounds; `None` without samples.
    pub latency_p50_us: Option<u32>,
    pub latency_p99_us: Option<u32>,
    pub labelled: u64,
    pub correct: u64,
    /// Correct / labelled; `None` without labelled rows.
    pub accuracy: Option<Proportion>,
    /// Predicted class → rows.
    pub predictions: BTreeMap<String, u64>,
}

/// A one-sided test that the challenger is worse, and the counts it rests on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorseTest {
    /// The pooled two-proportion z statistic, signed so that negative
    /// means the challenger did worse (a higher error rate, a lower
    /// accuracy).
    pub z: f64,
    /// P-value of H1 "the challenger is worse"; small means worse.
    pub p_value: f64,
    /// The sample sizes: requests (error rate) or labelled rows (accuracy).
    pub n_champion: u64,
    pub n_challenger: u64,
}

/// Whether the challenger may be promoted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Readiness {
    /// Enough evidence, and worse on nothing.
    Ready,
    /// Worse on nothing yet, but short of the minimums: this many more
    /// labelled rows and requests (summed over both sides).
    NotYet {
        needs_labelled: u64,
        needs_requests: u64,
    },
    /// Significantly worse (or slower) on these.
    Worse { on: Vec<String> },
}

impl Readiness {
    /// `ready`, `not yet: needs 150 more labelled rows`, `worse on: error rate, accuracy`.
    pub fn summary(&self) -> String {
        match self {
            Readiness::Ready => "ready".into(),
            Readiness::NotYet {
                needs_labelled,
                needs_requests,
            } => {
                let mut parts = Vec::new();
                if *needs_labelled > 0 {
                    parts.push(format!("{needs_labelled} more labelled rows"));
                }
                if *needs_requests > 0 {
                    parts.push(format!("{needs_requests} more requests"));
                }
                format!("not yet: needs {}", parts.join(" and "))
            }
            Readiness::Worse { on } => format!("worse on: {}", on.join(", ")),
        }
    }
}

/// One challenger (or shadow) against the champion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChallengerComparison {
    pub champion: VariantStats,
    pub challenger: VariantStats,
    /// H1: the challenger's error rate is higher. `None` without requests
    /// on a side.
    pub error_rate_test: Option<WorseTest>,
    /// H1: the challenger's accuracy is lower. `None` without labelled
    /// rows on a side.
    pub accuracy_test: Option<WorseTest>,
    /// Challenger p99 / champion p99.
    pub latency_p99_ratio: Option<f64>,
    /// Between the champion's and the challenger's predicted classes.
    pub prediction_psi: Option<f64>,
    /// Jensen–Shannon divergence in bits (0–1).
    pub prediction_js: Option<f64>,
    pub readiness: Readiness,
    /// [`Readiness::summary`].
    pub verdict: String,
}

/// `GET /models/{name}/challenger`: every non-champion variant that
/// reported in the window, against the champion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChallengerReport {
    pub model: String,
    /// Windows that ended after this (ms since the epoch, device clock).
    pub since_ms: u64,
    pub window_secs: u64,
    pub criteria: Criteria,
    /// Empty when no challenger or shadow reported in the window.
    pub comparisons: Vec<ChallengerComparison>,
}

#[derive(Clone, Debug, Default)]
struct DeviceVariant {
    aggregate: TelemetryAggregate,
    versions: BTreeSet<u64>,
    windows: u64,
}

/// Summaries folded per variant and device.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    by_variant: BTreeMap<String, BTreeMap<String, DeviceVariant>>,
}

impl Evidence {
    pub fn add(&mut self, s: &DriftSummary) {
        let dv = self
            .by_variant
            .entry(s.variant.clone())
            .or_default()
            .entry(s.device.clone())
            .or_default();
        dv.aggregate
            .add(&TelemetryAggregate::from_summaries(std::iter::once(s)));
        dv.versions.insert(s.version);
        dv.windows += 1;
    }

    /// The variant's figures over `devices` (all its devices when `None`).
    fn variant(&self, variant: &str, devices: Option<&BTreeSet<&String>>) -> VariantStats {
        let mut agg = TelemetryAggregate::default();
        let mut versions = BTreeSet::new();
        let (mut n_devices, mut windows) = (0, 0);
        for (device, dv) in self.by_variant.get(variant).into_iter().flatten() {
            if devices.is_some_and(|d| !d.contains(device)) {
                continue;
            }
            agg.add(&dv.aggregate);
            versions.extend(&dv.versions);
            n_devices += 1;
            windows += dv.windows;
        }
        let quantile = |q: f64| {
            (agg.latency_us.iter().sum::<u64>() > 0).then(|| histogram_quantile(&agg.latency_us, q))
        };
        VariantStats {
            variant: variant.to_string(),
            versions: versions.into_iter().collect(),
            devices: n_devices,
            windows,
            requests: agg.requests,
            errors: agg.errors,
            error_rate: proportion(agg.errors, agg.requests),
            latency_p50_us: quantile(0.5),
            latency_p99_us: quantile(0.99),
            labelled: agg.labelled,
            correct: agg.correct,
            accuracy: proportion(agg.correct, agg.labelled),
            predictions: agg.predictions,
        }
    }

    /// Every non-champion variant against the champion on its devices.
    pub fn report(&self, c: &Criteria) -> Vec<ChallengerComparison> {
        self.by_variant
            .iter()
            .filter(|(v, _)| v.as_str() != CHAMPION)
            .map(|(variant, devices)| {
                let on: BTreeSet<&String> = devices.keys().collect();
                compare(
                    self.variant(CHAMPION, Some(&on)),
                    self.variant(variant, None),
                    c,
                )
            })
            .collect()
    }
}

/// Compares two variants' figures under `c`.
pub fn compare(
    champion: VariantStats,
    challenger: VariantStats,
    c: &Criteria,
) -> ChallengerComparison {
    let (a, b) = (&champion, &challenger);
    // H1 champion's error rate < challenger's: the challenger fails more.
    let error_rate_test = stats::two_proportion_smaller(a.errors, a.requests, b.errors, b.requests)
        .map(|t| WorseTest {
            z: t.z,
            p_value: t.p_value,
            n_champion: a.requests,
            n_challenger: b.requests,
        });
    // H1 challenger's accuracy < champion's.
    let accuracy_test = stats::two_proportion_smaller(b.correct, b.labelled, a.correct, a.labelled)
        .map(|t| WorseTest {
            z: t.z,
            p_value: t.p_value,
            n_champion: a.labelled,
            n_challenger: b.labelled,
        });
    let latency_p99_ratio = match (a.latency_p99_us, b.latency_p99_us) {
        (Some(x), Some(y)) if x > 0 => Some(f64::from(y) / f64::from(x)),
        _ => None,
    };
    let requests_ok = a.requests >= c.min_requests && b.requests >= c.min_requests;
    let labelled_ok = a.labelled >= c.min_labelled && b.labelled >= c.min_labelled;
    let mut worse = Vec::new();
    if requests_ok && error_rate_test.is_some_and(|t| t.p_value < c.alpha) {
        worse.push("error rate".to_string());
    }
    if requests_ok && latency_p99_ratio.is_some_and(|r| r > c.max_latency_ratio) {
        worse.push("latency p99".to_string());
    }
    if labelled_ok && c.min_labelled > 0 && accuracy_test.is_some_and(|t| t.p_value < c.alpha) {
        worse.push("accuracy".to_string());
    }
    let short = |min: u64, n: u64| min.saturating_sub(n);
    let needs_labelled = short(c.min_labelled, a.labelled) + short(c.min_labelled, b.labelled);
    let needs_requests = short(c.min_requests, a.requests) + short(c.min_requests, b.requests);
    let readiness = if !worse.is_empty() {
        Readiness::Worse { on: worse }
    } else if needs_labelled > 0 || needs_requests > 0 {
        Readiness::NotYet {
            needs_labelled,
            needs_requests,
        }
    } else {
        Readiness::Ready
    };
    ChallengerComparison {
        prediction_psi: stats::class_psi(&a.predictions, &b.predictions),
        prediction_js: stats::jensen_shannon(&a.predictions, &b.predictions),
        verdict: readiness.summary(),
        readiness,
        error_rate_test,
        accuracy_test,
        latency_p99_ratio,
        champion,
        challenger,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::telemetry::{ClosedBy, Predictions, LATENCY_BOUNDS_US, TELEMETRY_SCHEMA};

    /// A window of `requests` on `device` as `variant`: `errors` failed,
    /// every request in latency bucket `bucket`, `labelled` of which
    /// `correct`, predicted classes `classes`.
    #[allow(clippy::too_many_arguments)]
    fn window(
        device: &str,
        variant: &str,
        version: u64,
        requests: u64,
        errors: u64,
        bucket: usize,
        labelled: u64,
        correct: u64,
        classes: &[(&str, u64)],
    ) -> DriftSummary {
        let mut latency_us = vec![0; LATENCY_BOUNDS_US.len() + 1];
        latency_us[bucket] = requests;
        DriftSummary {
            schema: TELEMETRY_SCHEMA,
            tenant: "t".into(),
            device: device.into(),
            seq: 0,
            model: "m".into(),
            version,
            variant: variant.into(),
            window_start_ms: 0,
            window_end_ms: 1,
            closed_by: ClosedBy::Time,
            rows: requests,
            features: vec![],
            psi: vec![],
            missing: vec![],
            out_of_range: vec![],
            predictions: Predictions {
                output: "label".into(),
                classes: classes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                numeric: None,
            },
            latency_us,
            latency_p50_us: LATENCY_BOUNDS_US[bucket.min(LATENCY_BOUNDS_US.len() - 1)],
            latency_p99_us: LATENCY_BOUNDS_US[bucket.min(LATENCY_BOUNDS_US.len() - 1)],
            errors,
            requests,
            labelled,
            correct,
        }
    }

    fn report(windows: &[DriftSummary], c: &Criteria) -> Vec<ChallengerComparison> {
        let mut e = Evidence::default();
        for w in windows {
            e.add(w);
        }
        e.report(c)
    }

    #[test]
    fn equal_variants_with_enough_evidence_are_ready() {
        let w = [
            window(
                "d1",
                "champion",
                1,
                500,
                5,
                3,
                250,
                225,
                &[("0", 300), ("1", 200)],
            ),
            window(
                "d1",
                "challenger",
                2,
                500,
                5,
                3,
                250,
                226,
                &[("0", 300), ("1", 200)],
            ),
        ];
        let r = report(&w, &Criteria::default());
        assert_eq!(r.len(), 1);
        let c = &r[0];
        assert_eq!(c.readiness, Readiness::Ready, "{c:?}");
        assert_eq!(c.verdict, "ready");
        assert_eq!(c.challenger.versions, [2]);
        assert_eq!(c.champion.versions, [1]);
        assert_eq!(c.prediction_js, Some(0.0));
        assert_eq!(c.latency_p99_ratio, Some(1.0));
        let acc = c.challenger.accuracy.unwrap();
        assert!(acc.low < acc.value && acc.value < acc.high);
        let t = c.accuracy_test.unwrap();
        assert_eq!((t.n_champion, t.n_challenger), (250, 250));
    }

    #[test]
    fn too_few_labels_say_how_many_more_are_needed() {
        let w = [
            window("d1", "champion", 1, 500, 0, 3, 120, 110, &[("1", 500)]),
            window("d1", "challenger", 2, 500, 0, 3, 50, 46, &[("1", 500)]),
        ];
        let r = report(&w, &Criteria::default());
        // (200 - 120) + (200 - 50)
        assert_eq!(
            r[0].readiness,
            Readiness::NotYet {
                needs_labelled: 230,
                needs_requests: 0
            }
        );
        assert_eq!(r[0].verdict, "not yet: needs 230 more labelled rows");
        let few = [
            window("d1", "champion", 1, 40, 0, 3, 0, 0, &[("1", 40)]),
            window("d1", "challenger", 2, 90, 0, 3, 0, 0, &[("1", 90)]),
        ];
        let c = Criteria {
            min_labelled: 0,
            ..Criteria::default()
        };
        assert_eq!(
            report(&few, &c)[0].verdict,
            "not yet: needs 70 more requests"
        );
    }

    #[test]
    fn a_worse_challenger_names_what_it_is_worse_on() {
        let w = [
            window(
                "d1",
                "champion",
                1,
                1000,
                10,
                3,
                300,
                285,
                &[("0", 600), ("1", 400)],
            ),
            window(
                "d1",
                "challenger",
                2,
                1000,
                60,
                6,
                300,
                240,
                &[("0", 200), ("1", 800)],
            ),
        ];
        let r = report(&w, &Criteria::default());
        let c = &r[0];
        assert_eq!(
            c.readiness,
            Readiness::Worse {
                on: vec!["error rate".into(), "latency p99".into(), "accuracy".into()]
            }
        );
        assert_eq!(c.verdict, "worse on: error rate, latency p99, accuracy");
        assert!(c.error_rate_test.unwrap().p_value < 1e-6);
        assert!(c.prediction_js.unwrap() > 0.1);
        // Worse is said even while labels are short of the minimum (the
        // error rate rests on requests).
        let w = [
            window("d1", "champion", 1, 1000, 10, 3, 10, 10, &[("1", 1000)]),
            window("d1", "challenger", 2, 1000, 60, 3, 10, 5, &[("1", 1000)]),
        ];
        assert_eq!(
            report(&w, &Criteria::default())[0].verdict,
            "worse on: error rate"
        );
    }

    #[test]
    fn a_better_challenger_is_not_worse() {
        let w = [
            window("d1", "champion", 1, 1000, 60, 3, 300, 240, &[("1", 1000)]),
            window("d1", "challenger", 2, 1000, 10, 2, 300, 290, &[("1", 1000)]),
        ];
        let c = &report(&w, &Criteria::default())[0];
        assert_eq!(c.readiness, Readiness::Ready);
        assert!(c.error_rate_test.unwrap().p_value > 0.99);
        assert!(c.accuracy_test.unwrap().p_value > 0.99);
    }

    #[test]
    fn the_champion_is_taken_from_the_challengers_devices_only() {
        let w = [
            window("d1", "champion", 1, 300, 0, 3, 200, 200, &[("1", 300)]),
            window("d1", "challenger", 2, 300, 0, 3, 200, 200, &[("1", 300)]),
            window("d1", "champion", 1, 300, 0, 3, 0, 0, &[("1", 300)]),
            // A device without the challenger, running an older champion.
            window("d2", "champion", 0, 5000, 2500, 9, 0, 0, &[("0", 5000)]),
            window("d3", "shadow", 3, 100, 0, 3, 0, 0, &[("0", 100)]),
        ];
        let r = report(&w, &Criteria::default());
        assert_eq!(r.len(), 2, "challenger and shadow");
        let (ch, sh) = (&r[0], &r[1]);
        assert_eq!(ch.challenger.variant, "challenger");
        assert_eq!(ch.champion.devices, 1);
        assert_eq!(ch.champion.windows, 2);
        assert_eq!(ch.champion.requests, 600);
        assert_eq!(ch.champion.versions, [1]);
        assert_eq!(sh.challenger.variant, "shadow");
        // No champion on the shadow's device: nothing to test against.
        assert_eq!(sh.champion.requests, 0);
        assert_eq!(sh.error_rate_test, None);
        assert_eq!(
            sh.readiness,
            Readiness::NotYet {
                needs_labelled: 400,
                needs_requests: 100
            }
        );
    }

    #[test]
    fn criteria_are_validated() {
        assert!(Criteria::default().validate().is_ok());
        let bad = Criteria {
            alpha: 1.0,
            ..Criteria::default()
        };
        assert!(bad.validate().unwrap_err().contains("alpha"));
        let bad = Criteria {
            max_latency_ratio: 0.5,
            ..Criteria::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_latency_ratio"));
    }
}
