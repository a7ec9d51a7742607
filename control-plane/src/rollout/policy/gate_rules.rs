//! The gates of a policy: install gates, model gates (absolute or relative
//! to the previous version or the rest of the fleet) and what a failure
//! leads to; their TOML/JSON forms and validation.

use serde::{Deserialize, Serialize};

use super::error::{invalid, PolicyError};

/// Most model gates a policy may list.
pub const MAX_GATES: usize = 32;

/// What a failing gate leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The rollout holds where it is until an operator resumes or aborts it.
    Pause,
    /// Every device that was given the new version goes back to its
    /// previous one, and the rollout ends.
    Rollback,
}

/// Install gates: how the devices of the waves so far took the version.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstallGate {
    /// Fraction of the devices given the version that must report it active.
    pub min_success: f64,
    /// Most devices that may fail to activate it (test-vector refusal,
    /// download failure, crash).
    pub max_failures: Option<u64>,
    /// Most failures as a fraction of the devices given the version.
    pub max_failure_rate: Option<f64>,
    pub on_failure: OnFailure,
}

impl Default for InstallGate {
    fn default() -> Self {
        Self {
            min_success: 0.95,
            max_failures: None,
            max_failure_rate: None,
            on_failure: OnFailure::Pause,
        }
    }
}

/// Model gates over the telemetry of the bake window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelGates {
    pub gates: Vec<ModelGate>,
    pub on_failure: OnFailure,
}

impl Default for ModelGates {
    fn default() -> Self {
        Self {
            gates: vec![
                ModelGate::ErrorRate {
                    against: Against::Absolute,
                    max: 0.05,
                },
                ModelGate::LatencyP99 {
                    against: Against::PreviousVersion,
                    max: 1.5,
                },
                ModelGate::PredictionShift {
                    against: Against::PreviousVersion,
                    measure: ShiftMeasure::JensenShannon,
                    max: 0.1,
                },
                ModelGate::Accuracy {
                    against: Against::PreviousVersion,
                    alpha: 0.01,
                    min_labelled: 200,
                    min_accuracy: None,
                },
            ],
            on_failure: OnFailure::Rollback,
        }
    }
}

/// What a model gate compares the new version with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Against {
    /// A fixed limit.
    Absolute,
    /// The version the same devices ran before.
    PreviousVersion,
    /// The devices not (yet) given the new version, on what they run.
    RestOfFleet,
}

/// How far apart two prediction distributions are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShiftMeasure {
    /// Population stability index over the classes.
    Psi,
    /// Jensen–Shannon divergence in bits (0 to 1).
    JensenShannon,
}

/// One model gate. Relative limits read as "the new version may be at most
/// this much worse than the reference".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelGate {
    /// Failed requests / requests. Absolute: at most `max`; relative: at
    /// most `max` above the reference's rate.
    ErrorRate {
        #[serde(default = "absolute")]
        against: Against,
        max: f64,
    },
    /// p99 latency. Absolute: at most `max` µs; relative: at most `max`
    /// times the reference's.
    LatencyP99 {
        #[serde(default = "absolute")]
        against: Against,
        max: f64,
    },
    /// Input drift, the largest PSI across features. Absolute: at most
    /// `max`; relative: at most `max` above the reference's.
    Drift {
        #[serde(default = "absolute")]
        against: Against,
        max: f64,
    },
    /// Shift of the predicted-class distribution from the reference's (never absolute).
    PredictionShift {
        #[serde(default = "previous_version")]
        against: Against,
        #[serde(default = "jensen_shannon")]
        measure: ShiftMeasure,
        max: f64,
    },
    /// Accuracy on labelled rows: fails when a one-sided test at `alpha`
    /// says the new version is worse than the reference (relative) or than
    /// `min_accuracy` (absolute). Needs `min_labelled` rows on each side.
    Accuracy {
        #[serde(default = "previous_version")]
        against: Against,
        alpha: f64,
        min_labelled: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_accuracy: Option<f64>,
    },
}

fn absolute() -> Against {
    Against::Absolute
}

fn previous_version() -> Against {
    Against::PreviousVersion
}

fn jensen_shannon() -> ShiftMeasure {
    ShiftMeasure::JensenShannon
}

impl ModelGate {
    pub fn against(&self) -> Against {
        match *self {
            ModelGate::ErrorRate { against, .. }
            | ModelGate::LatencyP99 { against, .. }
            | ModelGate::Drift { against, .. }
            | ModelGate::PredictionShift { against, .. }
            | ModelGate::Accuracy { against, .. } => against,
        }
    }

    /// `metric` as written in a policy.
    pub fn metric(&self) -> &'static str {
        match self {
            ModelGate::ErrorRate { .. } => "error_rate",
            ModelGate::LatencyP99 { .. } => "latency_p99",
            ModelGate::Drift { .. } => "drift",
            ModelGate::PredictionShift { .. } => "prediction_shift",
            ModelGate::Accuracy { .. } => "accuracy",
        }
    }

    fn validate(&self, field: &str) -> Result<(), PolicyError> {
        let fraction = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    format!("{field}.{name}"),
                    "must be between 0 and 1",
                ))
            }
        };
        let non_negative = |v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(invalid(
                    format!("{field}.max"),
                    "must be a non-negative number",
                ))
            }
        };
        match *self {
            ModelGate::ErrorRate { max, .. } => fraction("max", max),
            ModelGate::LatencyP99 { against, max } => {
                non_negative(max)?;
                if against != Against::Absolute && max < 1.0 {
                    return Err(invalid(
                        format!("{field}.max"),
                        "a relative latency limit is a ratio of at least 1 (1.5: 50 % slower)",
                    ));
                }
                Ok(())
            }
            ModelGate::Drift { max, .. } => non_negative(max),
            ModelGate::PredictionShift {
                against,
                measure,
                max,
            } => {
                if against == Against::Absolute {
                    return Err(invalid(
                        format!("{field}.against"),
                        "a prediction shift is measured against previous_version or rest_of_fleet",
                    ));
                }
                match measure {
                    ShiftMeasure::JensenShannon => fraction("max", max),
                    ShiftMeasure::Psi => non_negative(max),
                }
            }
            ModelGate::Accuracy {
                against,
                alpha,
                min_labelled,
                min_accuracy,
            } => {
                if !(alpha > 0.0 && alpha <= 0.5) {
                    return Err(invalid(format!("{field}.alpha"), "must be in (0, 0.5]"));
                }
                if min_labelled == 0 {
                    return Err(invalid(
                        format!("{field}.min_labelled"),
                        "must be at least 1",
                    ));
                }
                match (against, min_accuracy) {
                    (Against::Absolute, Some(a)) if a > 0.0 && a < 1.0 => Ok(()),
                    (Against::Absolute, _) => Err(invalid(
                        format!("{field}.min_accuracy"),
                        "an absolute accuracy gate needs min_accuracy in (0, 1)",
                    )),
                    (_, Some(_)) => Err(invalid(
                        format!("{field}.min_accuracy"),
                        "only an absolute accuracy gate takes min_accuracy",
                    )),
                    (_, None) => Ok(()),
                }
            }
        }
    }
}

impl InstallGate {
    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        if !(0.0..=1.0).contains(&self.min_success) {
            return Err(invalid("install.min_success", "must be between 0 and 1"));
        }
        if let Some(r) = self.max_failure_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(invalid(
                    "install.max_failure_rate",
                    "must be between 0 and 1",
                ));
            }
        }
        Ok(())
    }
}

impl ModelGates {
    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        if self.gates.len() > MAX_GATES {
            return Err(invalid("model.gates", format!("at most {MAX_GATES} gates")));
        }
        for (i, gate) in self.gates.iter().enumerate() {
            gate.validate(&format!("model.gates[{i}]"))?;
        }
        Ok(())
    }
}
