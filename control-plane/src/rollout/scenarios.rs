//! The engine's behaviours from issue 20's "Must show", on a fake clock.

use super::engine::{AbortCause, Action, Hold, Phase, Rollout, RolloutError};
use super::fake_fleet::{device, good, healthy, Behaviour, FakeFleet, NEW, OLD};
use super::gates::Verdict;
use super::policy::{OnSuccess, RolloutPolicy};

const BAKE_MS: u64 = 10_000;

/// The default policy with 10 s bake times.
fn policy() -> RolloutPolicy {
    RolloutPolicy {
        bake_secs: BAKE_MS / 1000,
        ..RolloutPolicy::default()
    }
}

fn fleet(n: usize) -> Vec<super::observations::Device> {
    (0..n).map(|i| device(i, &[])).collect()
}

fn bad(f: impl FnOnce(&mut super::observations::TelemetryAggregate)) -> Behaviour {
    let mut b = good();
    f(&mut b.telemetry);
    b
}

fn abort_gate(f: &FakeFleet) -> String {
    match &f.rollout.state().phase {
        Phase::Aborted {
            cause: AbortCause::Gate { report },
        } => report.gate.clone(),
        other => panic!("not aborted by a gate: {other:?}"),
    }
}

#[test]
fn a_good_version_walks_1_10_50_100_percent_and_finishes() {
    let mut f = FakeFleet::new(policy(), fleet(200), |_| good());
    assert_eq!(f.rollout.next_deadline_ms(), Some(BAKE_MS));
    f.run(1000, 200);
    assert_eq!(f.rollout.state().phase, Phase::Finished);
    assert_eq!(f.rollout.next_deadline_ms(), None);
    let waves = f.wave_starts();
    let sizes: Vec<(usize, usize)> = waves.iter().map(|w| (w.0, w.2)).collect();
    assert_eq!(sizes, [(0, 2), (1, 20), (2, 100), (3, 200)]);
    // Each wave starts only once the previous one has baked.
    for pair in waves.windows(2) {
        assert!(pair[1].1 >= pair[0].1 + BAKE_MS, "{pair:?}");
    }
    assert!(f.running.values().all(|v| *v == Some(NEW)));
    assert!(matches!(f.log.last(), Some((_, Action::Finish))));
}

#[test]
fn failing_test_vectors_pause_at_the_first_wave() {
    // armv7 devices refuse the bundle's test vectors; spreading by arch puts
    // one in the first wave.
    let devices: Vec<_> = (0..200)
        .map(|i| {
            device(
                i,
                &[(
                    "arch",
                    if i.is_multiple_of(2) {
                        "armv7"
                    } else {
                        "x86_64"
                    },
                )],
            )
        })
        .collect();
    let p = RolloutPolicy {
        spread_by: Some("arch".into()),
        ..policy()
    };
    let mut f = FakeFleet::new(p, devices, |d| Behaviour {
        activates: d.labels["arch"] != "armv7",
        ..good()
    });
    f.run(1000, 100);
    let Phase::Paused {
        reason: Hold::Gate { report },
    } = &f.rollout.state().phase
    else {
        panic!("not paused by a gate: {:?}", f.rollout.state().phase)
    };
    assert_eq!(report.gate, "install");
    assert_eq!(f.rollout.state().wave, 0);
    // Paused, it assigns nothing more however long it waits.
    for _ in 0..100 {
        assert!(f.step(60_000).is_empty());
    }
    assert_eq!(f.assigned().len(), 2);
}

/// A bad version on canaries rolls back, and no device outside the first
/// wave ever receives it.
fn rolled_back_at_the_first_wave(b: Behaviour, gate: &str) {
    let mut f = FakeFleet::new(policy(), fleet(200), |_| b.clone());
    f.run(1000, 100);
    assert_eq!(abort_gate(&f), gate);
    let assigned = f.assigned();
    assert_eq!(assigned.len(), 2, "only the 1 % canaries");
    let rolled_back: Vec<_> = f
        .log
        .iter()
        .flat_map(|(_, a)| match a {
            Action::Rollback { devices, .. } => devices.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(rolled_back.len(), 2);
    for t in &rolled_back {
        assert!(assigned.contains(&t.device));
        assert_eq!(t.to, Some(OLD));
    }
    assert!(f.running.values().all(|v| *v == Some(OLD)));
    for _ in 0..50 {
        assert!(f.step(60_000).is_empty());
    }
}

#[test]
fn a_20_percent_error_rate_rolls_back_the_canaries() {
    rolled_back_at_the_first_wave(bad(|t| t.errors = t.requests / 5), "error_rate vs absolute");
}

#[test]
fn a_prediction_shift_rolls_back_the_canaries() {
    let b = bad(|t| {
        t.predictions = [("0".to_string(), 20), ("1".to_string(), 180)].into();
    });
    rolled_back_at_the_first_wave(b, "prediction_shift vs previous version");
}

#[test]
fn a_10_point_accuracy_drop_rolls_back_the_canaries() {
    // 90 % before (270/300 per device), 80 % after.
    rolled_back_at_the_first_wave(bad(|t| t.correct = 240), "accuracy vs previous version");
}

#[test]
fn approval_mode_waits_for_approve() {
    let p = RolloutPolicy {
        on_success: OnSuccess::Approve,
        ..policy()
    };
    let mut f = FakeFleet::new(p, fleet(200), |_| good());
    f.run(1000, 100);
    assert_eq!(f.rollout.state().phase, Phase::AwaitingApproval);
    assert!(matches!(
        f.log.last(),
        Some((_, Action::AwaitApproval { wave: 0 }))
    ));
    for _ in 0..100 {
        assert!(f.step(60_000).is_empty());
    }
    assert_eq!(f.assigned().len(), 2);
    let actions = f.rollout.approve(f.now_ms).unwrap();
    assert!(
        matches!(&actions[..], [Action::Assign { wave: 1, devices, .. }] if devices.len() == 18)
    );
    f.apply(actions);
    assert!(matches!(
        f.rollout.approve(f.now_ms),
        Err(RolloutError::WrongPhase { .. })
    ));
}

#[test]
fn too_little_evidence_holds_the_wave_after_its_bake() {
    let mut f = FakeFleet::new(policy(), fleet(200), |_| Behaviour {
        activates: true,
        telemetry: healthy(40),
    });
    f.run(1000, 600);
    assert_eq!(f.rollout.state().phase, Phase::Running);
    assert_eq!(f.rollout.state().wave, 0);
    let v = f.rollout.state().last_verdict.clone().unwrap();
    assert_eq!(v.install.verdict, Verdict::Pass);
    assert_eq!(
        v.model[0].verdict,
        Verdict::Undecided,
        "{}",
        v.model[0].detail
    );
    assert_eq!(f.assigned().len(), 2);
}

#[test]
fn devices_that_join_mid_rollout_join_the_current_wave() {
    let mut f = FakeFleet::new(policy(), fleet(100), |_| good());
    f.step(0);
    assert_eq!(f.assigned().len(), 1);
    // 100 more devices at wave 0: 1 % of 200 is 2.
    for i in 100..200 {
        f.join(device(i, &[]), good());
    }
    f.step(0);
    assert_eq!(f.assigned().len(), 2);
    f.run(1000, 200);
    assert_eq!(f.rollout.state().phase, Phase::Finished);
    // Joining during the last wave: given the version at the next poll.
    let mut f = FakeFleet::new(policy(), fleet(100), |_| good());
    while f.rollout.state().wave < 3 {
        f.step(1000);
    }
    f.join(device(500, &[]), good());
    f.step(0);
    assert!(f.assigned().contains("dev-0500"));
}

#[test]
fn a_restarted_engine_resumes_where_it_was() {
    let run = |restart_at: Option<usize>| {
        let mut f = FakeFleet::new(policy(), fleet(150), |_| good());
        for i in 0..200 {
            if Some(i) == restart_at {
                let saved = serde_json::to_string(f.rollout.state()).unwrap();
                let policy_text = toml::to_string(f.rollout.policy()).unwrap();
                f.rollout = Rollout::resume(
                    RolloutPolicy::from_toml(&policy_text).unwrap(),
                    serde_json::from_str(&saved).unwrap(),
                )
                .unwrap();
            }
            f.step(1000);
        }
        f.log
    };
    let straight = run(None);
    assert!(matches!(straight.last(), Some((_, Action::Finish))));
    for at in [0, 5, 15, 25, 40] {
        assert_eq!(run(Some(at)), straight, "restart at step {at}");
    }
}

#[test]
fn operators_pause_resume_and_abort() {
    let mut f = FakeFleet::new(policy(), fleet(200), |_| good());
    f.run(1000, 15);
    let actions = f.rollout.pause().unwrap();
    assert!(matches!(
        &actions[..],
        [Action::Pause {
            reason: Hold::Operator,
            ..
        }]
    ));
    assert!(f.step(60_000).is_empty());
    assert!(matches!(
        f.rollout.pause(),
        Err(RolloutError::WrongPhase { .. })
    ));
    let actions = f.rollout.resume_paused(f.now_ms).unwrap();
    f.apply(actions);
    let assigned = f.assigned();
    let actions = f.rollout.abort().unwrap();
    let Some(Action::Rollback { devices, .. }) = actions.first() else {
        panic!("abort without a rollback: {actions:?}")
    };
    let back: std::collections::BTreeSet<String> =
        devices.iter().map(|t| t.device.clone()).collect();
    assert_eq!(back, assigned);
    assert!(matches!(
        actions.last(),
        Some(Action::Abort {
            cause: AbortCause::Operator
        })
    ));
    f.apply(actions);
    assert!(matches!(
        f.rollout.abort(),
        Err(RolloutError::WrongPhase { .. })
    ));
    assert!(f.running.values().all(|v| *v == Some(OLD)));
}

#[test]
fn unknown_devices_and_bad_telemetry_are_refused() {
    let mut f = FakeFleet::new(policy(), fleet(3), |_| good());
    let err = f
        .rollout
        .activation("nobody", NEW, super::observations::Activation::Active)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "device \"nobody\" is not part of this rollout"
    );
    let mut t = healthy(10);
    t.correct = t.labelled + 1;
    assert!(f.rollout.telemetry("dev-0000", NEW, t).is_err());
}

#[test]
fn an_exponential_rate_adds_devices_minute_by_minute() {
    let p = RolloutPolicy::from_toml(
        "waves = { base_per_minute = 5, growth_factor = 2.0, max_per_minute = 20 }",
    )
    .unwrap();
    let mut f = FakeFleet::new(p, fleet(60), |_| good());
    f.run(1000, 1000);
    assert_eq!(f.rollout.state().phase, Phase::Finished);
    let steps: Vec<(u64, usize)> = f.wave_starts().iter().map(|w| (w.1, w.2)).collect();
    // 5, +10, +20, +20 (capped), then the last 5; one step a minute.
    assert_eq!(
        steps,
        [
            (0, 5),
            (60_000, 15),
            (120_000, 35),
            (180_000, 55),
            (240_000, 60)
        ]
    );
}

#[test]
fn a_gate_against_the_rest_of_the_fleet_compares_with_devices_not_given_the_version() {
    let p = RolloutPolicy::from_toml(
        "[[model.gates]]\nmetric = \"error_rate\"\nagainst = \"rest_of_fleet\"\nmax = 0.02",
    )
    .unwrap();
    let p = RolloutPolicy { bake_secs: 10, ..p };
    // The rest of the fleet errs on 1 %; 2 points more is allowed, 9 is not.
    let mut f = FakeFleet::new(p.clone(), fleet(200), |_| {
        bad(|t| t.errors = t.requests / 40)
    });
    f.run(1000, 200);
    assert_eq!(f.rollout.state().phase, Phase::Finished);
    let mut f = FakeFleet::new(p, fleet(200), |_| bad(|t| t.errors = t.requests / 10));
    f.run(1000, 200);
    assert_eq!(abort_gate(&f), "error_rate vs rest of fleet");
    assert_eq!(f.assigned().len(), 2);
}
