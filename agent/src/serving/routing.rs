//! The routing table requests read without locks: per model a champion, an
//! optional challenger with its share of traffic, an optional shadow; and
//! the hash that splits traffic between champion and challenger.

use super::verify::LoadedModel;
use crate::metrics::Series;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How a version serves traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Answers requests (the default).
    Champion,
    /// Answers the share of requests given by the split.
    Challenger,
    /// Sees a copy of every request; its results are logged, never returned.
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Challenger => "challenger",
            Role::Shadow => "shadow",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "champion" => Ok(Role::Champion),
            "challenger" => Ok(Role::Challenger),
            "shadow" => Ok(Role::Shadow),
            _ => Err(format!(
                "unknown role {s:?} (champion, challenger or shadow)"
            )),
        }
    }
}

/// One servable (model version, variant) with its metrics series.
#[derive(Clone)]
pub struct Route {
    pub loaded: Arc<LoadedModel>,
    pub variant: &'static str,
    pub series: Arc<Series>,
}

impl Route {
    pub fn version(&self) -> u64 {
        self.loaded.manifest.version
    }
}

/// What serves one model.
#[derive(Clone)]
pub struct ModelRoutes {
    pub champion: Route,
    /// The challenger and its share of traffic, in [0, 1].
    pub challenger: Option<(Route, f64)>,
    pub shadow: Option<Route>,
}

impl ModelRoutes {
    /// Champion, challenger, shadow: every loaded version of the model.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        [
            Some(&self.champion),
            self.challenger.as_ref().map(|c| &c.0),
            self.shadow.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// The route serving `version`, in any role.
    pub fn by_version(&self, version: u64) -> Option<&Route> {
        self.iter().find(|r| r.version() == version)
    }

    /// [`ModelRoutes::by_version`] for a version as a path gives it.
    pub fn by_version_text(&self, version: &str) -> Option<&Route> {
        self.by_version(version.parse().ok()?)
    }

    /// The champion, or the challenger for the keys its split routes to it.
    pub fn pick(&self, model: &str, key: &str) -> &Route {
        match &self.challenger {
            Some((ch, split)) if routes_to_challenger(model, key, *split) => ch,
            _ => &self.champion,
        }
    }
}

/// What requests read: immutable, replaced whole on every change.
#[derive(Default)]
pub struct Table {
    pub models: BTreeMap<String, ModelRoutes>,
}

/// FNV-1a over `parts` (each followed by a separator byte), then the
/// splitmix64 finaliser. Stable across builds and platforms, so a user keeps
/// its variant across agent restarts and upgrades: never change its output.
pub fn routing_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (from splitmix64) so nearby keys spread over [0, 1).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `key` goes to the challenger under `split` (deterministic).
pub fn routes_to_challenger(model: &str, key: &str, split: f64) -> bool {
    let u = (routing_hash(&[model.as_bytes(), key.as_bytes()]) >> 11) as f64 / (1u64 << 53) as f64;
    u < split
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deployed agents route users by these values: a change here moves
    /// users between variants on upgrade.
    #[test]
    fn routing_hash_output_is_pinned() {
        assert_eq!(routing_hash(&[]), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(routing_hash(&[b"fraud", b"user-42"]), 0x1a95_70ec_1e25_00bc);
        assert_eq!(
            routing_hash(&[&7u64.to_le_bytes(), b"req-1"]),
            0x9c46_8bce_a596_88cb
        );
        // u("m", "k") = 0.4796...
        assert!(routes_to_challenger("m", "k", 0.48));
        assert!(!routes_to_challenger("m", "k", 0.47));
    }
}
