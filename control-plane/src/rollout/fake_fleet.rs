//! A simulated fleet on a fake clock for the engine's tests: it carries out
//! the engine's actions, answers with activation reports and telemetry as
//! each device's behaviour says, and records every assignment.

use std::collections::{BTreeMap, BTreeSet};

use super::engine::{Action, Phase, Rollout};
use super::observations::{Activation, Device, TelemetryAggregate, LATENCY_BUCKETS};
use super::policy::RolloutPolicy;

pub const OLD: u64 = 3;
pub const NEW: u64 = 4;

/// How a device fares with the new version.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    pub activates: bool,
    pub telemetry: TelemetryAggregate,
}

/// Telemetry of a healthy window: `requests` requests, 1 % errors, p99 in
/// the 250 µs bucket, classes 60/40, 90 % accuracy on 300 labels.
pub fn healthy(requests: u64) -> TelemetryAggregate {
    let mut latency = vec![0; LATENCY_BUCKETS];
    latency[1] = requests;
    TelemetryAggregate {
        requests,
        errors: requests / 100,
        latency_us: latency,
        max_psi: Some(0.05),
        predictions: [
            ("0".to_string(), requests * 6 / 10),
            ("1".to_string(), requests * 4 / 10),
        ]
        .into(),
        labelled: 300,
        correct: 270,
    }
}

pub fn good() -> Behaviour {
    Behaviour {
        activates: true,
        telemetry: healthy(200),
    }
}

pub fn device(i: usize, labels: &[(&str, &str)]) -> Device {
    Device {
        id: format!("dev-{i:04}"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        version: Some(OLD),
    }
}

pub struct FakeFleet {
    pub rollout: Rollout,
    pub now_ms: u64,
    /// The version each device runs.
    pub running: BTreeMap<String, Option<u64>>,
    /// What each device ran when first given the new version.
    pub ran_before: BTreeMap<String, Option<u64>>,
    pub behaviour: BTreeMap<String, Behaviour>,
    /// Every action, with the time it was returned.
    pub log: Vec<(u64, Action)>,
}

impl FakeFleet {
    /// A rollout of [`NEW`] over `devices`, started and first polled at
    /// time 0; every device reports healthy telemetry of [`OLD`], and
    /// behaves as `behaviour` says on NEW.
    pub fn new(
        policy: RolloutPolicy,
        devices: Vec<Device>,
        behaviour: impl Fn(&Device) -> Behaviour,
    ) -> Self {
        let rollout = Rollout::start(policy, NEW, "fraud", devices.clone(), 0).unwrap();
        let mut f = Self {
            rollout,
            now_ms: 0,
            running: BTreeMap::new(),
            ran_before: BTreeMap::new(),
            behaviour: BTreeMap::new(),
            log: Vec::new(),
        };
        for d in devices {
            f.add(&d, behaviour(&d));
        }
        // The server polls right after starting a rollout.
        f.step(0);
        f
    }

    fn add(&mut self, d: &Device, b: Behaviour) {
        self.running.insert(d.id.clone(), d.version);
        self.behaviour.insert(d.id.clone(), b);
        if let Some(v) = d.version {
            self.rollout.telemetry(&d.id, v, healthy(500)).unwrap();
        }
    }

    /// A device enrolls (or starts matching) now.
    pub fn join(&mut self, d: Device, b: Behaviour) {
        self.rollout.device_seen(d.clone());
        self.add(&d, b);
    }

    /// Carries out `actions` the way devices would and logs them.
    pub fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match &a {
                Action::Assign {
                    version, devices, ..
                } => {
                    for id in devices {
                        let before = self.running[id];
                        self.ran_before.entry(id.clone()).or_insert(before);
                        let b = self.behaviour[id].clone();
                        if b.activates {
                            self.running.insert(id.clone(), Some(*version));
                            self.rollout
                                .activation(id, *version, Activation::Active)
                                .unwrap();
                            self.rollout.telemetry(id, *version, b.telemetry).unwrap();
                        } else {
                            let failed = Activation::Failed {
                                reason: "test vectors: output 0 differs".into(),
                            };
                            self.rollout.activation(id, *version, failed).unwrap();
                        }
                    }
                }
                Action::Rollback { devices, .. } => {
                    for t in devices {
                        self.running.insert(t.device.clone(), t.to);
                        if let Some(v) = t.to {
                            self.rollout
                                .activation(&t.device, v, Activation::Active)
                                .unwrap();
                        }
                    }
                }
                _ => {}
            }
            self.log.push((self.now_ms, a));
        }
    }

    /// Moves the clock by `dt_ms`, polls, and carries out what it returns.
    pub fn step(&mut self, dt_ms: u64) -> Vec<Action> {
        self.now_ms += dt_ms;
        let actions = self.rollout.poll(self.now_ms);
        self.apply(actions.clone());
        actions
    }

    /// Steps until the rollout leaves `Running` or `steps` run out.
    pub fn run(&mut self, dt_ms: u64, steps: usize) {
        for _ in 0..steps {
            self.step(dt_ms);
            if self.rollout.state().phase != Phase::Running {
                return;
            }
        }
    }

    /// Devices ever given the new version, in the order of the log.
    pub fn assigned(&self) -> BTreeSet<String> {
        self.log
            .iter()
            .flat_map(|(_, a)| match a {
                Action::Assign { devices, .. } => devices.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Sizes of the Assign actions per wave, cumulative, with their times.
    pub fn wave_starts(&self) -> Vec<(usize, u64, usize)> {
        let mut out: Vec<(usize, u64, usize)> = Vec::new();
        let mut total = 0;
        for (t, a) in &self.log {
            if let Action::Assign { wave, devices, .. } = a {
                total += devices.len();
                match out.last_mut() {
                    Some(last) if last.0 == *wave => last.2 = total,
                    _ => out.push((*wave, *t, total)),
                }
            }
        }
        out
    }
}
