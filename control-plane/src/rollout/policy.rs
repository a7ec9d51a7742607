//! The rollout policy: how a version reaches a fleet (waves, bake times,
//! canary spread), what must hold before each next wave (install and model
//! gates), and what happens on a failing or passing verdict.
//!
//! A policy is a TOML or JSON document; every field has a default, so an
//! empty document is the default policy. Unknown fields are refused: a
//! misspelt gate must not silently vanish from a rollout.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default bake time of a wave, seconds.
pub const DEFAULT_BAKE_SECS: u64 = 600;
/// Default requests the new version must have served before a model verdict.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;
/// The bake time of one step of an exponential rate: its minute.
pub const RATE_STEP_SECS: u64 = 60;
/// Most waves a policy may list.
pub const MAX_WAVES: usize = 100;
/// Most model gates a policy may list.
pub const MAX_GATES: usize = 32;
/// Longest bake time, seconds (30 days).
pub const MAX_BAKE_SECS: u64 = 30 * 24 * 3600;

/// A policy that cannot be read or cannot work.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The TOML text does not parse into a policy.
    #[error("rollout policy (TOML): {0}")]
    Toml(#[from] toml::de::Error),
    /// The JSON text does not parse into a policy.
    #[error("rollout policy (JSON): {0}")]
    Json(#[from] serde_json::Error),
    /// A field holds a value the engine cannot work with.
    #[error("rollout policy: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

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

/// The size of a wave, cumulative over the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaveSize {
    /// Hundredths of a percent of the matching devices (`"12.5%"` is 1250),
    /// rounded up to whole devices.
    Percent { basis_points: u32 },
    /// A number of devices (at most the fleet).
    Count(u64),
}

impl WaveSize {
    pub const ALL: WaveSize = WaveSize::Percent {
        basis_points: 10_000,
    };

    /// Devices this size means in a fleet of `fleet`.
    pub fn devices(self, fleet: usize) -> usize {
        match self {
            WaveSize::Percent { basis_points } => {
                let n = fleet as u128 * u128::from(basis_points);
                usize::try_from(n.div_ceil(10_000)).unwrap_or(usize::MAX)
            }
            WaveSize::Count(c) => usize::try_from(c).unwrap_or(usize::MAX).min(fleet),
        }
    }

    /// Reads `"10%"`, `"12.5%"` (two decimals at most) or `"25"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let Some(p) = s.strip_suffix('%') else {
            return s.parse::<u64>().map(WaveSize::Count).map_err(|_| {
                format!("{s:?} is neither a device count nor a percentage like \"10%\"")
            });
        };
        let (whole, frac) = p.trim().split_once('.').unwrap_or((p.trim(), ""));
        let bad = || format!("{s:?} is not a percentage with at most two decimals");
        if frac.len() > 2 || !frac.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<2}").parse().map_err(|_| bad())?
        };
        let basis_points = whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(bad)?;
        Ok(WaveSize::Percent { basis_points })
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Percent { basis_points } => {
                let (w, r) = (basis_points / 100, basis_points % 100);
                match r {
                    0 => write!(f, "{w}%"),
                    r if r % 10 == 0 => write!(f, "{w}.{}%", r / 10),
                    r => write!(f, "{w}.{r:02}%"),
                }
            }
            WaveSize::Count(c) => write!(f, "{c}"),
        }
    }
}

impl Serialize for WaveSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WaveSize::Count(c) => s.serialize_u64(*c),
            p => s.collect_str(p),
        }
    }
}

struct WaveSizeVisitor;

impl Visitor<'_> for WaveSizeVisitor {
    type Value = WaveSize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a device count or a percentage such as \"10%\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<WaveSize, E> {
        Ok(WaveSize::Count(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<WaveSize, E> {
        u64::try_from(v)
            .map(WaveSize::Count)
            .map_err(|_| E::custom(format!("a wave of {v} devices")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<WaveSize, E> {
        Err(E::custom(format!(
            "{v} is ambiguous: write a percentage as \"{v}%\" or a whole device count"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<WaveSize, E> {
        WaveSize::parse(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WaveSizeVisitor)
    }
}

/// One wave: its size and what may differ from the policy's defaults.
/// Written as a bare size (`"10%"`) or a table (`{ size = "10%", bake_secs = 1200 }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wave {
    pub size: WaveSize,
    pub bake_secs: Option<u64>,
    pub min_devices: Option<u64>,
    pub min_requests: Option<u64>,
}

impl Wave {
    pub fn sized(size: WaveSize) -> Self {
        Self {
            size,
            bake_secs: None,
            min_devices: None,
            min_requests: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaveTable {
    size: WaveSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bake_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_devices: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_requests: Option<u64>,
}

impl Serialize for Wave {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.bake_secs.is_none() && self.min_devices.is_none() && self.min_requests.is_none() {
            return self.size.serialize(s);
        }
        WaveTable {
            size: self.size,
            bake_secs: self.bake_secs,
            min_devices: self.min_devices,
            min_requests: self.min_requests,
        }
        .serialize(s)
    }
}

struct WaveVisitor;

impl<'de> Visitor<'de> for WaveVisitor {
    type Value = Wave;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a wave size (\"10%\", 25) or a table with `size`")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Wave, E> {
        WaveSizeVisitor.visit_u64(v).map(Wave::sized)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Wave, E> {
        WaveSizeVisitor.visit_i64(v).map(Wave::sized)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Wave, E> {
        WaveSizeVisitor.visit_f64(v).map(Wave::sized)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Wave, E> {
        WaveSizeVisitor.visit_str(v).map(Wave::sized)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Wave, A::Error> {
        let t = WaveTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Wave {
            size: t.size,
            bake_secs: t.bake_secs,
            min_devices: t.min_devices,
            min_requests: t.min_requests,
        })
    }
}

impl<'de> Deserialize<'de> for Wave {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WaveVisitor)
    }
}

/// An IoT-Jobs-style exponential rate: one step a minute, the first adding
/// `base_per_minute` devices, each next one `growth_factor` times more, never
/// more than `max_per_minute`; the gates are checked at every step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExponentialRate {
    pub base_per_minute: u32,
    pub growth_factor: f64,
    pub max_per_minute: u32,
}

/// The waves of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum WavePlan {
    /// Cumulative sizes, the last one `100%`.
    Steps(Vec<Wave>),
    /// An exponential rate (written as a table).
    Exponential(ExponentialRate),
}

impl Default for WavePlan {
    fn default() -> Self {
        let pct = |p: u32| {
            Wave::sized(WaveSize::Percent {
                basis_points: p * 100,
            })
        };
        WavePlan::Steps(vec![pct(1), pct(10), pct(50), pct(100)])
    }
}

struct WavePlanVisitor;

impl<'de> Visitor<'de> for WavePlanVisitor {
    type Value = WavePlan;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "a list of wave sizes, or a table with base_per_minute, growth_factor, max_per_minute",
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<WavePlan, A::Error> {
        Vec::<Wave>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(WavePlan::Steps)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WavePlan, A::Error> {
        ExponentialRate::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(WavePlan::Exponential)
    }
}

impl<'de> Deserialize<'de> for WavePlan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WavePlanVisitor)
    }
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
        match &self.waves {
            WavePlan::Steps(waves) => validate_steps(waves)?,
            WavePlan::Exponential(r) => {
                if !(1..=1000).contains(&r.base_per_minute) {
                    return Err(invalid("waves.base_per_minute", "must be 1 to 1000"));
                }
                if !(1..=1000).contains(&r.max_per_minute) {
                    return Err(invalid("waves.max_per_minute", "must be 1 to 1000"));
                }
                if r.base_per_minute > r.max_per_minute {
                    return Err(invalid(
                        "waves.base_per_minute",
                        "must not exceed max_per_minute",
                    ));
                }
                if !(1.0..=5.0).contains(&r.growth_factor) {
                    return Err(invalid("waves.growth_factor", "must be 1.0 to 5.0"));
                }
            }
        }
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
        let g = &self.install;
        if !(0.0..=1.0).contains(&g.min_success) {
            return Err(invalid("install.min_success", "must be between 0 and 1"));
        }
        if let Some(r) = g.max_failure_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(invalid(
                    "install.max_failure_rate",
                    "must be between 0 and 1",
                ));
            }
        }
        if self.model.gates.len() > MAX_GATES {
            return Err(invalid("model.gates", format!("at most {MAX_GATES} gates")));
        }
        for (i, gate) in self.model.gates.iter().enumerate() {
            gate.validate(&format!("model.gates[{i}]"))?;
        }
        Ok(())
    }
}

fn validate_steps(waves: &[Wave]) -> Result<(), PolicyError> {
    if waves.is_empty() {
        return Err(invalid("waves", "needs at least one wave"));
    }
    if waves.len() > MAX_WAVES {
        return Err(invalid("waves", format!("at most {MAX_WAVES} waves")));
    }
    let (mut last_pct, mut last_count) = (0u32, 0u64);
    for (i, w) in waves.iter().enumerate() {
        let field = format!("waves[{i}]");
        match w.size {
            WaveSize::Percent { basis_points } => {
                if basis_points == 0 || basis_points > 10_000 {
                    return Err(invalid(
                        field,
                        "a percentage must be above 0% and at most 100%",
                    ));
                }
                if basis_points <= last_pct {
                    return Err(invalid(
                        field,
                        "percentages must increase from wave to wave",
                    ));
                }
                last_pct = basis_points;
            }
            WaveSize::Count(c) => {
                if c == 0 {
                    return Err(invalid(field, "a wave needs at least one device"));
                }
                if c <= last_count {
                    return Err(invalid(
                        field,
                        "device counts must increase from wave to wave",
                    ));
                }
                last_count = c;
            }
        }
        if w.bake_secs.is_some_and(|b| b > MAX_BAKE_SECS) {
            return Err(invalid(
                format!("{field}.bake_secs"),
                "must be at most 30 days",
            ));
        }
    }
    if waves.last().map(|w| w.size) != Some(WaveSize::ALL) {
        return Err(invalid(
            format!("waves[{}]", waves.len() - 1),
            "the last wave must be \"100%\" so that the rollout reaches every device",
        ));
    }
    Ok(())
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
