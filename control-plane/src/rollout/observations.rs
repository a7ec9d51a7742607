//! What the engine is told about the fleet: devices, activation outcomes and
//! per-device, per-version telemetry aggregates.

use std::collections::BTreeMap;

use ferry_protocol::telemetry::{histogram_quantile, DriftSummary, LATENCY_BOUNDS_US};
use serde::{Deserialize, Serialize};

/// Latency histogram buckets: one per bound and one above.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// A device the rollout's selector matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The model version the device reports active, if any.
    pub version: Option<u64>,
}

/// How a device took the version it was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Activation {
    /// Verified, test vectors passed, serving.
    Active,
    /// Refused or failed (test vectors, download, crash), with the device's reason.
    Failed { reason: String },
}

/// A telemetry aggregate the engine cannot use.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryError {
    /// More correct predictions than labelled rows.
    #[error("telemetry: {correct} correct predictions out of {labelled} labelled rows")]
    CorrectAboveLabelled { correct: u64, labelled: u64 },
    /// More failed requests than requests.
    #[error("telemetry: {errors} errors out of {requests} requests")]
    ErrorsAboveRequests { errors: u64, requests: u64 },
    /// The latency histogram has the wrong number of buckets.
    #[error("telemetry: latency histogram of {0} buckets (expected {LATENCY_BUCKETS})")]
    LatencyBuckets(usize),
    /// A PSI that is negative or not a number.
    #[error("telemetry: PSI must be finite and non-negative")]
    BadPsi,
}

/// One version's telemetry on one device over the window the server feeds
/// (for the new version: since it was given; for the others: the bake
/// window). Sums of drift summaries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryAggregate {
    pub requests: u64,
    pub errors: u64,
    /// Counts per latency bucket (`LATENCY_BOUNDS_US`, then one above);
    /// empty when there were no requests.
    #[serde(default)]
    pub latency_us: Vec<u64>,
    /// The largest PSI across features and windows (none without a baseline).
    pub max_psi: Option<f64>,
    /// Predicted class → count.
    #[serde(default)]
    pub predictions: BTreeMap<String, u64>,
    pub labelled: u64,
    pub correct: u64,
}

impl TelemetryAggregate {
    /// Refuses an aggregate whose counts contradict each other.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if self.correct > self.labelled {
            return Err(TelemetryError::CorrectAboveLabelled {
                correct: self.correct,
                labelled: self.labelled,
            });
        }
        if self.errors > self.requests {
            return Err(TelemetryError::ErrorsAboveRequests {
                errors: self.errors,
                requests: self.requests,
            });
        }
        if !self.latency_us.is_empty() && self.latency_us.len() != LATENCY_BUCKETS {
            return Err(TelemetryError::LatencyBuckets(self.latency_us.len()));
        }
        if self.max_psi.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
            return Err(TelemetryError::BadPsi);
        }
        Ok(())
    }

    /// Sums drift summaries (the server's windows of one device and version).
    pub fn from_summaries<'a>(windows: impl IntoIterator<Item = &'a DriftSummary>) -> Self {
        let mut a = Self::default();
        for w in windows {
            let mut one = Self {
                requests: w.requests,
                errors: w.errors.min(w.requests),
                latency_us: if w.latency_us.len() == LATENCY_BUCKETS {
                    w.latency_us.clone()
                } else {
                    Vec::new()
                },
                max_psi: w.psi.iter().flatten().copied().reduce(f64::max),
                predictions: w.predictions.classes.clone(),
                labelled: w.labelled,
                correct: w.correct.min(w.labelled),
            };
            one.max_psi = one.max_psi.filter(|p| p.is_finite() && *p >= 0.0);
            a.add(&one);
        }
        a
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &TelemetryAggregate) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        if self.latency_us.is_empty() {
            self.latency_us = other.latency_us.clone();
        } else if other.latency_us.len() == self.latency_us.len() {
            for (a, b) in self.latency_us.iter_mut().zip(&other.latency_us) {
                *a = a.saturating_add(*b);
            }
        }
        self.max_psi = match (self.max_psi, other.max_psi) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (class, n) in &other.predictions {
            let c = self.predictions.entry(class.clone()).or_insert(0);
            *c = c.saturating_add(*n);
        }
        self.labelled = self.labelled.saturating_add(other.labelled);
        self.correct = self.correct.saturating_add(other.correct);
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// p99 latency, µs, at the histogram's bucket bounds; `None` without samples.
    pub fn latency_p99_us(&self) -> Option<u32> {
        (self.latency_us.iter().sum::<u64>() > 0)
            .then(|| histogram_quantile(&self.latency_us, 0.99))
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_add_up_and_contradictions_are_refused() {
        let mut hist = vec![0; LATENCY_BUCKETS];
        hist[2] = 99;
        hist[9] = 1;
        let a = TelemetryAggregate {
            requests: 100,
            errors: 5,
            latency_us: hist,
            max_psi: Some(0.1),
            predictions: [("0".to_string(), 60), ("1".to_string(), 40)].into(),
            labelled: 10,
            correct: 9,
        };
        let mut sum = a.clone();
        sum.add(&TelemetryAggregate {
            max_psi: Some(0.4),
            ..a.clone()
        });
        assert_eq!(sum.requests, 200);
        assert_eq!(sum.max_psi, Some(0.4));
        assert_eq!(sum.predictions["1"], 80);
        assert_eq!(sum.latency_p99_us(), Some(LATENCY_BOUNDS_US[2]));
        assert_eq!(sum.error_rate(), 0.05);
        sum.validate().unwrap();
        let bad = TelemetryAggregate {
            correct: 11,
            ..a.clone()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("11 correct"));
        let bad = TelemetryAggregate {
            latency_us: vec![1, 2],
            ..a
        };
        assert_eq!(bad.validate(), Err(TelemetryError::LatencyBuckets(2)));
    }

    fn window(requests: u64, errors: u64, psi: Vec<Option<f64>>) -> DriftSummary {
        let mut latency_us = vec![0; LATENCY_BUCKETS];
        latency_us[3] = requests;
        DriftSummary {
            schema: ferry_protocol::telemetry::TELEMETRY_SCHEMA,
            tenant: "t".into(),
            device: "d".into(),
            seq: 1,
            model: "fraud".into(),
            version: 4,
            variant: "champion".into(),
            window_start_ms: 0,
            window_end_ms: 1000,
            closed_by: ferry_protocol::telemetry::ClosedBy::Time,
            rows: requests,
            features: (0..psi.len()).map(|i| format!("f{i}")).collect(),
            missing: vec![0; psi.len()],
            out_of_range: vec![0; psi.len()],
            psi,
            predictions: ferry_protocol::telemetry::Predictions {
                output: "label".into(),
                classes: [("1".to_string(), requests)].into(),
                numeric: None,
            },
            latency_us,
            latency_p50_us: 500,
            latency_p99_us: 500,
            errors,
            requests,
            labelled: 10,
            correct: 12,
        }
    }

    #[test]
    fn drift_summaries_sum_into_an_aggregate() {
        let a = TelemetryAggregate::from_summaries(&[
            window(100, 2, vec![Some(0.1), None]),
            window(50, 80, vec![Some(0.3), Some(f64::NAN)]),
        ]);
        assert_eq!(
            (a.requests, a.errors),
            (150, 52),
            "errors capped at requests"
        );
        assert_eq!(a.max_psi, Some(0.3), "NaN ignored");
        assert_eq!(a.predictions["1"], 150);
        assert_eq!(
            (a.labelled, a.correct),
            (20, 20),
            "correct capped at labelled"
        );
        assert_eq!(a.latency_p99_us(), Some(LATENCY_BOUNDS_US[3]));
        a.validate().unwrap();
    }
}
