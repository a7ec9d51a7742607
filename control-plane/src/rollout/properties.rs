//! Property tests of the engine over random fleets, policies and event
//! sequences: a wave is never exceeded, a wave never ends on a failing or
//! undecided gate (checked against the simulated fleet's own counts, not
//! the engine's), a rollback always covers every device given the version,
//! and canary choice is deterministic and stable as devices join.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::engine::{Action, Phase};
use super::fake_fleet::{device, good, Behaviour, FakeFleet, NEW};
use super::gates::successes_needed;
use super::policy::{OnFailure, OnSuccess, RolloutPolicy, Wave, WavePlan, WaveSize};
use super::waves::{self, Member};

const BAKE_MS: u64 = 10_000;

#[derive(Clone, Debug)]
enum Op {
    Tick(u64),
    Join(u8),
    Leave(usize),
    Approve,
    Resume,
    Abort,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..15_000).prop_map(Op::Tick),
        1 => any::<u8>().prop_map(Op::Join),
        1 => any::<usize>().prop_map(Op::Leave),
        1 => Just(Op::Approve),
        1 => Just(Op::Resume),
        1 => Just(Op::Abort),
    ]
}

/// A device's behaviour from one random byte: about 1 in 16 refuses the
/// version, 1 in 16 errs on 20 % of requests, 1 in 8 serves too few
/// requests for a verdict.
fn behaviour(b: u8) -> Behaviour {
    let mut g = good();
    g.activates = !b.is_multiple_of(16);
    if b % 16 == 1 {
        g.telemetry.errors = g.telemetry.requests / 5;
    }
    if (b / 16).is_multiple_of(8) {
        g.telemetry.requests = 30;
        g.telemetry.errors = g.telemetry.errors.min(30);
    }
    g
}

#[derive(Clone, Debug)]
struct Scenario {
    behaviours: Vec<u8>,
    percents: Vec<u32>,
    approve: bool,
    rollback: bool,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(any::<u8>(), 1..120),
        prop::collection::btree_set(1u32..10_000, 0..4),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(op(), 1..80),
    )
        .prop_map(|(behaviours, percents, approve, rollback, ops)| Scenario {
            behaviours,
            percents: percents.into_iter().collect(),
            approve,
            rollback,
            ops,
        })
}

fn policy_of(s: &Scenario) -> RolloutPolicy {
    let mut waves: Vec<Wave> = s
        .percents
        .iter()
        .map(|&basis_points| Wave::sized(WaveSize::Percent { basis_points }))
        .collect();
    waves.push(Wave::sized(WaveSize::ALL));
    let mut p = RolloutPolicy {
        waves: WavePlan::Steps(waves),
        bake_secs: BAKE_MS / 1000,
        on_success: if s.approve {
            OnSuccess::Approve
        } else {
            OnSuccess::Advance
        },
        ..RolloutPolicy::default()
    };
    p.model.on_failure = if s.rollback {
        OnFailure::Rollback
    } else {
        OnFailure::Pause
    };
    p
}

/// The wave's size computed here, from the policy's percentages.
fn wave_size(percents: &[u32], wave: usize, fleet: usize) -> usize {
    let all: Vec<u32> = percents.iter().copied().chain([10_000]).collect();
    let bp = all[wave.min(all.len() - 1)];
    (fleet * bp as usize).div_ceil(10_000)
}

/// What the test's own books say about the gates of the default policy
/// (install ≥ 95 %, error rate ≤ 5 % over ≥ 100 requests) at `now_ms`.
/// Devices in `opened` were given the version by the wave the verdict opened,
/// after it was made.
fn gates_hold(
    f: &FakeFleet,
    wave_started_ms: u64,
    opened: &BTreeSet<String>,
) -> Result<(), String> {
    if f.now_ms < wave_started_ms + BAKE_MS {
        return Err(format!(
            "bake not over: {} < {}",
            f.now_ms,
            wave_started_ms + BAKE_MS
        ));
    }
    let given: Vec<&String> = f
        .ran_before
        .keys()
        .filter(|id| !opened.contains(*id))
        .collect();
    let failed = given
        .iter()
        .filter(|id| !f.behaviour[**id].activates)
        .count() as u64;
    let active = given.len() as u64 - failed;
    if active < successes_needed(0.95, given.len() as u64) {
        return Err(format!("{active} of {} active", given.len()));
    }
    let (mut requests, mut errors) = (0, 0);
    for id in &given {
        let b = &f.behaviour[*id];
        if b.activates {
            requests += b.telemetry.requests;
            errors += b.telemetry.errors;
        }
    }
    if requests < 100 {
        return Err(format!("only {requests} requests"));
    }
    if errors as f64 / requests as f64 > 0.05 {
        return Err(format!("error rate {errors}/{requests}"));
    }
    Ok(())
}

/// Runs a scenario and checks every property on the way; returns the log.
fn check(s: &Scenario, reverse: bool) -> Result<Vec<(u64, Action)>, TestCaseError> {
    let mut devices: Vec<_> = (0..s.behaviours.len()).map(|i| device(i, &[])).collect();
    let behaviours: BTreeMap<String, Behaviour> = devices
        .iter()
        .zip(&s.behaviours)
        .map(|(d, b)| (d.id.clone(), behaviour(*b)))
        .collect();
    if reverse {
        devices.reverse();
    }
    let mut f = FakeFleet::new(policy_of(s), devices, |d| behaviours[&d.id].clone());
    let mut present: BTreeSet<String> = f.running.keys().cloned().collect();
    let mut wave_started_ms = 0;
    let mut joined = 0usize;
    // The first poll (in `FakeFleet::new`) fills wave 0 of the whole fleet.
    let first = f.ran_before.len();
    prop_assert!(first <= wave_size(&s.percents, 0, present.len()));
    let mut seen = f.log.len();
    for op in &s.ops {
        let wave_before = f.rollout.state().wave;
        let given_before: BTreeSet<String> = f.ran_before.keys().cloned().collect();
        let mut polled = false;
        match op {
            Op::Tick(dt) => {
                f.step(*dt);
                polled = true;
            }
            Op::Join(b) => {
                let d = device(10_000 + joined, &[]);
                joined += 1;
                present.insert(d.id.clone());
                f.join(d, behaviour(*b));
            }
            Op::Leave(i) => {
                if let Some(id) = present.iter().nth(i % present.len().max(1)).cloned() {
                    present.remove(&id);
                    f.rollout.device_left(&id).unwrap();
                }
            }
            Op::Approve => {
                if let Ok(a) = f.rollout.approve(f.now_ms) {
                    f.apply(a);
                }
            }
            Op::Resume => {
                if let Ok(a) = f.rollout.resume_paused(f.now_ms) {
                    wave_started_ms = f.now_ms;
                    f.apply(a);
                }
            }
            Op::Abort => {
                if let Ok(a) = f.rollout.abort() {
                    f.apply(a);
                }
            }
        }
        let new_actions: Vec<Action> = f.log[seen..].iter().map(|(_, a)| a.clone()).collect();
        seen = f.log.len();
        let state = f.rollout.state();
        let opened: BTreeSet<String> = new_actions
            .iter()
            .flat_map(|a| match a {
                Action::Assign { wave, devices, .. } if *wave > wave_before => devices.clone(),
                _ => Vec::new(),
            })
            .collect();
        // Devices given the version so far, action by action.
        let mut given_so_far = given_before;
        for a in &new_actions {
            match a {
                Action::Assign { wave, devices, .. } => {
                    given_so_far.extend(devices.iter().cloned());
                    let fleet = present.len();
                    let given = given_so_far
                        .iter()
                        .filter(|id| present.contains(*id))
                        .count();
                    let size = wave_size(&s.percents, *wave, fleet);
                    prop_assert!(
                        given <= size,
                        "wave {wave}: {given} given, size {size} of {fleet}"
                    );
                }
                Action::Rollback { devices, version } => {
                    prop_assert_eq!(*version, NEW);
                    let back: BTreeMap<String, Option<u64>> =
                        devices.iter().map(|t| (t.device.clone(), t.to)).collect();
                    prop_assert_eq!(
                        &back,
                        &f.ran_before,
                        "a rollback covers every device given the version"
                    );
                    let then_abort = matches!(new_actions.last(), Some(Action::Abort { .. }));
                    prop_assert!(then_abort, "a rollback ends the rollout");
                }
                Action::AwaitApproval { .. } | Action::Finish if polled => {
                    if let Err(why) = gates_hold(&f, wave_started_ms, &opened) {
                        return Err(TestCaseError::fail(format!("{a:?} although {why}")));
                    }
                }
                _ => {}
            }
        }
        if polled && state.wave > wave_before {
            if let Err(why) = gates_hold(&f, wave_started_ms, &opened) {
                return Err(TestCaseError::fail(format!(
                    "advanced to wave {} although {why}",
                    state.wave
                )));
            }
        }
        if state.wave != wave_before {
            wave_started_ms = f.now_ms;
        }
        if let Phase::Aborted { .. } = state.phase {
            let announced = f.log.iter().any(|(_, a)| matches!(a, Action::Abort { .. }));
            prop_assert!(announced, "an aborted rollout said so");
        }
    }
    // An abort at the end, whatever happened: a rollback for every device
    // given the version (none when none was).
    if let Ok(a) = f.rollout.abort() {
        match a.first() {
            Some(Action::Rollback { devices, .. }) => {
                let back: BTreeMap<String, Option<u64>> =
                    devices.iter().map(|t| (t.device.clone(), t.to)).collect();
                prop_assert_eq!(&back, &f.ran_before);
            }
            _ => prop_assert!(f.ran_before.is_empty()),
        }
    }
    Ok(f.log)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn rollouts_keep_their_invariants(s in scenario()) {
        let log = check(&s, false)?;
        // Deterministic, whatever order the devices came in.
        prop_assert_eq!(check(&s, true)?, log);
    }

    /// A device chosen among more devices is also chosen among fewer: a
    /// device's rank never depends on who else is in the fleet.
    #[test]
    fn canary_choice_is_stable_as_devices_join(
        n in 1usize..200,
        joining in 0usize..200,
        target_bp in 1u32..=10_000,
        salt in "[a-z]{1,8}",
    ) {
        let ids: Vec<String> = (0..n + joining).map(|i| format!("d{i}")).collect();
        let members = |k: usize| -> Vec<Member<'_>> {
            ids[..k].iter().map(|id| Member { id, group: "", assigned: false }).collect()
        };
        let t = (n * target_bp as usize).div_ceil(10_000);
        let before: BTreeSet<&str> = waves::fill(&salt, t, &members(n)).into_iter().collect();
        let after: BTreeSet<&str> = waves::fill(&salt, t, &members(n + joining)).into_iter().collect();
        prop_assert_eq!(before.len(), t);
        prop_assert!(after.len() <= t);
        for id in after.iter().filter(|id| ids[..n].iter().any(|x| x == *id)) {
            prop_assert!(before.contains(id), "{id} chosen among more devices but not among fewer");
        }
        // Same inputs, same choice.
        let again: BTreeSet<&str> = waves::fill(&salt, t, &members(n)).into_iter().collect();
        prop_assert_eq!(before, again);
    }
}
