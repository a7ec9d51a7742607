//! Wave sizes and deterministic canary choice.
//!
//! Devices are ranked by SHA-256 of the rollout's salt and their id: a
//! device's rank never depends on which other devices exist, so the choice
//! is stable as devices join. With `spread_by`, each value of the label
//! gets its share of the wave (largest-remainder apportionment), and within
//! a value the lowest ranks go first.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::policy::{RolloutPolicy, WavePlan, RATE_STEP_SECS};

/// What one wave asks for in a fleet of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaveTarget {
    /// Devices given the version by the end of this wave (cumulative).
    pub devices: usize,
    pub bake_ms: u64,
    pub min_devices: u64,
    pub min_requests: u64,
    /// This wave reaches the whole fleet: passing it finishes the rollout.
    pub last: bool,
}

/// Wave `wave` (0-based) of `policy` in a fleet of `fleet` devices.
pub fn target(policy: &RolloutPolicy, wave: usize, fleet: usize) -> WaveTarget {
    match &policy.waves {
        WavePlan::Steps(waves) => {
            let last_index = waves.len().saturating_sub(1);
            let i = wave.min(last_index);
            // Cumulative: a count wave after a larger percentage never shrinks.
            let devices = waves
                .iter()
                .take(i + 1)
                .map(|w| w.size.devices(fleet))
                .max()
                .unwrap_or(fleet);
            let w = waves.get(i);
            WaveTarget {
                devices,
                bake_ms: w
                    .and_then(|w| w.bake_secs)
                    .unwrap_or(policy.bake_secs)
                    .saturating_mul(1000),
                min_devices: w.and_then(|w| w.min_devices).unwrap_or(policy.min_devices),
                min_requests: w
                    .and_then(|w| w.min_requests)
                    .unwrap_or(policy.min_requests),
                last: i == last_index,
            }
        }
        WavePlan::Exponential(rate) => {
            let mut devices = 0usize;
            let mut per_minute = f64::from(rate.base_per_minute);
            for _ in 0..=wave {
                let step = per_minute
                    .floor()
                    .min(f64::from(rate.max_per_minute))
                    .max(1.0) as usize;
                devices = devices.saturating_add(step);
                per_minute = (per_minute * rate.growth_factor).min(f64::from(rate.max_per_minute));
                if devices >= fleet {
                    break;
                }
            }
            WaveTarget {
                devices: devices.min(fleet),
                bake_ms: RATE_STEP_SECS * 1000,
                min_devices: policy.min_devices,
                min_requests: policy.min_requests,
                last: devices >= fleet,
            }
        }
    }
}

/// A device's canary rank under `salt`: lower goes first.
pub fn rank(salt: &str, device: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(device.as_bytes());
    h.finalize().into()
}

/// A candidate for a wave.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    pub id: &'a str,
    /// The value of the `spread_by` label ("" without one or when missing).
    pub group: &'a str,
    pub assigned: bool,
}

/// The devices to give the version now so that `target` devices have it:
/// none when as many already do. Never more than `target - assigned`.
pub fn fill<'a>(salt: &str, target: usize, members: &[Member<'a>]) -> Vec<&'a str> {
    let assigned = members.iter().filter(|m| m.assigned).count();
    let mut room = target.min(members.len()).saturating_sub(assigned);
    if room == 0 {
        return Vec::new();
    }
    let mut groups: BTreeMap<&str, Vec<&Member<'a>>> = BTreeMap::new();
    for m in members {
        groups.entry(m.group).or_default().push(m);
    }
    let quotas = apportion(target.min(members.len()), members.len(), &groups);
    // Groups furthest below their share first, then by name.
    let mut order: Vec<(usize, &str)> = groups
        .iter()
        .map(|(g, ms)| {
            let have = ms.iter().filter(|m| m.assigned).count();
            (
                quotas.get(*g).copied().unwrap_or(0).saturating_sub(have),
                *g,
            )
        })
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let mut chosen = Vec::new();
    for (deficit, g) in order {
        if room == 0 {
            break;
        }
        let mut free: Vec<(&str, [u8; 32])> = groups
            .get(g)
            .into_iter()
            .flatten()
            .filter(|m| !m.assigned)
            .map(|m| (m.id, rank(salt, m.id)))
            .collect();
        free.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
        let take = deficit.min(room);
        chosen.extend(free.into_iter().take(take).map(|(id, _)| id));
        room -= take;
    }
    chosen
}

/// Largest-remainder shares of `total` devices over the groups, by size.
fn apportion(
    total: usize,
    fleet: usize,
    groups: &BTreeMap<&str, Vec<&Member<'_>>>,
) -> BTreeMap<String, usize> {
    if fleet == 0 {
        return BTreeMap::new();
    }
    let mut shares: Vec<(&str, usize, usize)> = groups
        .iter()
        .map(|(g, ms)| {
            let exact = total as u128 * ms.len() as u128;
            let floor = (exact / fleet as u128) as usize;
            let rem = (exact % fleet as u128) as usize;
            (*g, floor, rem)
        })
        .collect();
    let mut left = total.saturating_sub(shares.iter().map(|s| s.1).sum());
    let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
    by_remainder.sort_by(|&a, &b| {
        shares[b]
            .2
            .cmp(&shares[a].2)
            .then(shares[a].0.cmp(shares[b].0))
    });
    for i in by_remainder {
        if left == 0 {
            break;
        }
        shares[i].1 += 1;
        left -= 1;
    }
    shares
        .into_iter()
        .map(|(g, n, _)| (g.to_string(), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::policy::{ExponentialRate, RolloutPolicy};

    fn members<'a>(ids: &'a [String], group: impl Fn(usize) -> &'a str) -> Vec<Member<'a>> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| Member {
                id,
                group: group(i),
                assigned: false,
            })
            .collect()
    }

    #[test]
    fn default_waves_in_a_fleet_of_1000() {
        let p = RolloutPolicy::default();
        let sizes: Vec<(usize, bool)> = (0..5)
            .map(|w| {
                let t = target(&p, w, 1000);
                (t.devices, t.last)
            })
            .collect();
        assert_eq!(
            sizes,
            [
                (10, false),
                (100, false),
                (500, false),
                (1000, true),
                (1000, true)
            ]
        );
        assert_eq!(target(&p, 0, 1000).bake_ms, 600_000);
    }

    #[test]
    fn an_exponential_rate_grows_to_its_cap_then_reaches_the_fleet() {
        let p = RolloutPolicy {
            waves: WavePlan::Exponential(ExponentialRate {
                base_per_minute: 5,
                growth_factor: 2.0,
                max_per_minute: 30,
            }),
            ..RolloutPolicy::default()
        };
        let sizes: Vec<usize> = (0..6).map(|w| target(&p, w, 100).devices).collect();
        // 5, +10, +20, +30, +30 (capped), then the fleet.
        assert_eq!(sizes, [5, 15, 35, 65, 95, 100]);
        assert!(!target(&p, 4, 100).last);
        assert!(target(&p, 5, 100).last);
        assert_eq!(target(&p, 0, 100).bake_ms, 60_000);
    }

    #[test]
    fn spread_gives_every_site_its_share() {
        let ids: Vec<String> = (0..300).map(|i| format!("dev-{i}")).collect();
        let sites = ["berlin", "lyon", "oslo"];
        let ms = members(&ids, |i| sites[i % 3]);
        let chosen = fill("fraud@4", 30, &ms);
        assert_eq!(chosen.len(), 30);
        for (s, site) in sites.iter().enumerate() {
            let n = chosen
                .iter()
                .filter(|id| ids.iter().position(|x| x == *id).unwrap() % 3 == s)
                .count();
            assert_eq!(n, 10, "{site}");
        }
        // A wave smaller than the number of sites still stays within its size.
        assert_eq!(fill("fraud@4", 2, &ms).len(), 2);
    }

    #[test]
    fn filling_never_passes_the_target_and_keeps_earlier_choices() {
        let ids: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
        let mut ms = members(&ids, |_| "");
        let first = fill("s", 5, &ms);
        assert_eq!(first.len(), 5);
        for m in ms.iter_mut() {
            m.assigned = first.contains(&m.id);
        }
        assert!(fill("s", 5, &ms).is_empty());
        assert!(fill("s", 3, &ms).is_empty());
        let more = fill("s", 8, &ms);
        assert_eq!(more.len(), 3);
        assert!(more.iter().all(|id| !first.contains(id)));
    }
}
