//! The rollout policy: how a version reaches a fleet (waves, bake times,
//! canary spread), what must hold before each next wave (install and model
//! gates), and what happens on a failing or passing verdict.
//!
//! A policy is a TOML or JSON document; every field has a default, so an
//! empty document is the default policy. Unknown fields are refused: a
//! misspelt gate must not silently vanish from a rollout.

mod error;
mod gate_rules;
mod wave_plan;

use serde::{Deserialize, Serialize};

pub use error::PolicyError;
pub use gate_rules::{
    Against, InstallGate, ModelGate, ModelGates, OnFailure, ShiftMeasure, MAX_GATES,
};
pub use wave_plan::{
    ExponentialRate, Wave, WavePlan, WaveSize, MAX_BAKE_SECS, MAX_WAVES, RATE_STEP_SECS,
};

use error::invalid;

/// Default bake time of a wave, seconds.
pub const DEFAULT_BAKE_SECS: u64 = 600;
/// Default requests the new version must have served before a model verdict.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

/// How a version reaches a fleet and what must hold along the way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutPolicy {
    /// The waves: a list of sizes (`["1%", "10%", "50%", "100%"]`, counts
    /// such as `5`, or tables with per-wave settings) or an exponential rate.
    pub waves: WavePlan,
    /// A device label: every value of it gets its share of each wave.
    pub spread_by: Option<String>,
    /// Default bake time of a wave, seconds.
    pub bake_secs: u64,
    /// Default devices of a wave that must run the new version before a
    /// verdict (fewer when the wave itself is smaller).
    pub min_devices: u64,
    /// Default requests the new version must have served before a model
    /// gate gives a verdict.
    pub min_requests: u64,
    /// What a passing wave leads to.
    pub on_success: OnSuccess,
    pub install: InstallGate,
    pub model: ModelGates,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            waves: WavePlan::default(),
            spread_by: None,
            bake_secs: DEFAULT_BAKE_SECS,
            min_devices: 1,
            min_requests: DEFAULT_MIN_REQUESTS,
            on_success: OnSuccess::Advance,
            install: InstallGate::default(),
            model: ModelGates::default(),
        }
    }
}

/// What a passing wave leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSuccess {
    /// The next wave starts at once.
    Advance,
    /// The rollout waits for an operator's approval.
    Approve,
}

impl RolloutPolicy {
    /// Reads and validates a TOML policy.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let p: Self = toml::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    /// Reads and validates a JSON policy.
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let p: Self = serde_json::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    /// Refuses values the engine cannot work with, naming the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.waves.validate()?;
        if let Some(label) = &self.spread_by {
            if label.is_empty() || label.len() > 128 {
                return Err(invalid(
                    "spread_by",
                    "must be a label name of 1 to 128 bytes",
                ));
            }
        }
        if self.bake_secs > MAX_BAKE_SECS {
            return Err(invalid("bake_secs", "must be at most 30 days"));
        }
        self.install.validate()?;
        self.model.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_documents_are_the_default_policy() {
        let d = RolloutPolicy::default();
        assert_eq!(RolloutPolicy::from_toml("").unwrap(), d);
        assert_eq!(RolloutPolicy::from_json("{}").unwrap(), d);
        d.validate().unwrap();
        let WavePlan::Steps(w) = &d.waves else {
            panic!("default waves are steps")
        };
        let sizes: Vec<String> = w.iter().map(|w| w.size.to_string()).collect();
        assert_eq!(sizes, ["1%", "10%", "50%", "100%"]);
    }

    #[test]
    fn a_full_toml_policy_reads_and_round_trips() {
        let text = r#"
            waves = ["0.5%", 20, { size = "50%", bake_secs = 1200, min_requests = 5000 }, "100%"]
            spread_by = "site"
            bake_secs = 300
            on_success = "approve"
            [install]
            min_success = 0.9
            max_failures = 3
            on_failure = "rollback"
            [model]
            on_failure = "pause"
            [[model.gates]]
            metric = "error_rate"
            against = "rest_of_fleet"
            max = 0.02
            [[model.gates]]
            metric = "prediction_shift"
            measure = "psi"
            max = 0.2
            [[model.gates]]
            metric = "accuracy"
            against = "absolute"
            alpha = 0.05
            min_labelled = 100
            min_accuracy = 0.8
        "#;
        let p = RolloutPolicy::from_toml(text).unwrap();
        let WavePlan::Steps(w) = &p.waves else {
            panic!("steps")
        };
        assert_eq!(w[0].size, WaveSize::Percent { basis_points: 50 });
        assert_eq!(w[1].size, WaveSize::Count(20));
        assert_eq!(w[2].bake_secs, Some(1200));
        assert_eq!(w[2].min_requests, Some(5000));
        assert_eq!(p.on_success, OnSuccess::Approve);
        assert_eq!(p.install.max_failures, Some(3));
        assert_eq!(p.model.on_failure, OnFailure::Pause);
        assert_eq!(
            p.model.gates[1],
            ModelGate::PredictionShift {
                against: Against::PreviousVersion,
                measure: ShiftMeasure::Psi,
                max: 0.2
            }
        );
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(RolloutPolicy::from_json(&json).unwrap(), p);
        let toml_text = toml::to_string(&p).unwrap();
        assert_eq!(RolloutPolicy::from_toml(&toml_text).unwrap(), p);
    }

    #[test]
    fn an_exponential_rate_reads_from_a_table() {
        let p = RolloutPolicy::from_json(
            r#"{"waves": {"base_per_minute": 5, "growth_factor": 2.0, "max_per_minute": 50}}"#,
        )
        .unwrap();
        assert_eq!(
            p.waves,
            WavePlan::Exponential(ExponentialRate {
                base_per_minute: 5,
                growth_factor: 2.0,
                max_per_minute: 50
            })
        );
    }

    #[test]
    fn wave_sizes_round_up_to_whole_devices() {
        let pct = |s| WaveSize::parse(s).unwrap();
        assert_eq!(pct("1%").devices(1000), 10);
        assert_eq!(pct("1%").devices(50), 1);
        assert_eq!(pct("0.1%").devices(1000), 1);
        assert_eq!(pct("12.5%").devices(8), 1);
        assert_eq!(pct("100%").devices(7), 7);
        assert_eq!(pct("25").devices(7), 7);
        assert_eq!(pct("12.5%").to_string(), "12.5%");
        assert_eq!(pct("0.25%").to_string(), "0.25%");
    }

    /// Each bad policy and the message it gets.
    #[test]
    fn bad_policies_are_refused_with_the_field_and_reason() {
        let cases = [
            (r#"waves = ["10%", "5%", "100%"]"#, "waves[1]: percentages must increase"),
            (r#"waves = ["1%", "50%"]"#, "waves[1]: the last wave must be \"100%\""),
            (r#"waves = []"#, "waves: needs at least one wave"),
            (r#"waves = ["0%", "100%"]"#, "waves[0]: a percentage must be above 0%"),
            (r#"waves = ["1.234%", "100%"]"#, "at most two decimals"),
            (r#"waves = [0.5, "100%"]"#, "ambiguous"),
            (
                "waves = { base_per_minute = 10, growth_factor = 9.0, max_per_minute = 50 }",
                "waves.growth_factor: must be 1.0 to 5.0",
            ),
            ("bake_sec = 10", "unknown field `bake_sec`"),
            ("[install]\nmin_success = 1.5", "install.min_success: must be between 0 and 1"),
            (
                "[[model.gates]]\nmetric = \"prediction_shift\"\nagainst = \"absolute\"\nmax = 0.1",
                "model.gates[0].against",
            ),
            (
                "[[model.gates]]\nmetric = \"accuracy\"\nalpha = 0.9\nmin_labelled = 10",
                "model.gates[0].alpha: must be in (0, 0.5]",
            ),
            (
                "[[model.gates]]\nmetric = \"accuracy\"\nagainst = \"absolute\"\nalpha = 0.05\nmin_labelled = 10",
                "needs min_accuracy",
            ),
            (
                "[[model.gates]]\nmetric = \"latency_p99\"\nagainst = \"previous_version\"\nmax = 0.5",
                "ratio of at least 1",
            ),
            ("[[model.gates]]\nmetric = \"error_rate\"\nmax = 0.1\nlimit = 3", "unknown field `limit`"),
            ("[[model.gates]]\nmetric = \"speed\"\nmax = 0.1", "unknown variant `speed`"),
        ];
        for (text, want) in cases {
            let err = RolloutPolicy::from_toml(text).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should contain {want:?}"
            );
        }
    }
}
