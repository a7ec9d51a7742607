//! The waves of a policy: sizes (percentages or counts, bare or as tables
//! with per-wave settings) or an exponential rate, their TOML/JSON forms and
//! their validation.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{invalid, PolicyError};

/// The bake time of one step of an exponential rate: its minute.
pub const RATE_STEP_SECS: u64 = 60;
/// Most waves a policy may list.
pub const MAX_WAVES: usize = 100;
/// Longest bake time, seconds (30 days).
pub const MAX_BAKE_SECS: u64 = 30 * 24 * 3600;

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

impl WavePlan {
    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        match self {
            WavePlan::Steps(waves) => validate_steps(waves),
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
                Ok(())
            }
        }
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
