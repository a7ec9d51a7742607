//! The rollout engine: a sans-IO state machine.
//!
//! Inputs are the policy, the matching devices, what they report
//! (activation outcomes, telemetry aggregates), operator commands and
//! `now_ms`; `poll` returns the [`Action`]s to carry out. The engine reads
//! no clock and does no I/O, so the server drives it and tests drive it on a
//! fake clock. Its [`RolloutState`] is plain data the server persists after
//! every call and hands back to [`Rollout::resume`] after a restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gates::{self, Evidence, GateReport, InstallCounts, Verdict};
use super::observations::{Activation, Device, TelemetryAggregate, TelemetryError};
use super::policy::{OnFailure, OnSuccess, PolicyError, RolloutPolicy, WavePlan};
use super::waves::{self, Member};

/// What the server must do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Give `version` to these devices (desired state).
    Assign {
        version: u64,
        wave: usize,
        devices: Vec<String>,
    },
    /// Send these devices back to what they ran before `version`.
    Rollback {
        version: u64,
        devices: Vec<RollbackTarget>,
    },
    /// The rollout holds at `wave` until resumed or aborted.
    Pause { wave: usize, reason: Hold },
    /// `wave` passed; the next starts when an operator approves.
    AwaitApproval { wave: usize },
    /// Every wave passed: the rollout is done.
    Finish,
    /// The rollout ended without reaching the fleet.
    Abort { cause: AbortCause },
}

/// A device to roll back and the version it goes back to (`None`: it ran
/// no version of the model before, so its assignment is withdrawn).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackTarget {
    pub device: String,
    pub to: Option<u64>,
}

/// Why a rollout holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Hold {
    /// A gate failed and the policy says pause.
    Gate { report: GateReport },
    /// An operator paused it.
    Operator,
}

/// Why a rollout ended early.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum AbortCause {
    /// A gate failed and the policy says roll back.
    Gate { report: GateReport },
    /// An operator aborted it.
    Operator,
}

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Running,
    AwaitingApproval,
    Paused { reason: Hold },
    Finished,
    Aborted { cause: AbortCause },
}

impl Phase {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Finished | Phase::Aborted { .. })
    }
}

/// What the engine knows of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The version the device last reported active.
    pub version: Option<u64>,
    /// The wave in which it was given the new version.
    pub assigned_wave: Option<usize>,
    /// What it ran when it was given the new version: where a rollback sends it.
    pub previous: Option<u64>,
    /// How it took the new version, once reported.
    pub outcome: Option<Activation>,
    /// It still matches the rollout's selector.
    pub present: bool,
}

/// The last evaluation of the current wave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveVerdict {
    pub wave: usize,
    pub at_ms: u64,
    /// Devices the wave aims at and devices given the version so far.
    pub target_devices: usize,
    pub assigned_devices: usize,
    pub bake_ends_ms: u64,
    /// Devices active on the version and the fewest a verdict needs.
    pub active_devices: u64,
    pub min_devices: u64,
    pub install: GateReport,
    pub model: Vec<GateReport>,
}

impl WaveVerdict {
    /// The first failing gate, install first.
    pub fn failure(&self) -> Option<&GateReport> {
        std::iter::once(&self.install)
            .chain(&self.model)
            .find(|r| r.verdict == Verdict::Fail)
    }

    /// The wave may end: its bake is over, it has its devices, and every
    /// gate passes or does not apply.
    pub fn passed(&self) -> bool {
        self.at_ms >= self.bake_ends_ms
            && self.active_devices >= self.min_devices
            && self.install.verdict == Verdict::Pass
            && self
                .model
                .iter()
                .all(|r| matches!(r.verdict, Verdict::Pass | Verdict::NotApplicable))
    }
}

/// A rollout's whole state: serialisable, so a restarted server resumes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The version being rolled out.
    pub version: u64,
    /// Mixed into the canary ranks, so rollouts choose different canaries.
    pub salt: String,
    pub phase: Phase,
    /// The current wave (0-based).
    pub wave: usize,
    pub wave_started_ms: u64,
    pub started_ms: u64,
    pub devices: BTreeMap<String, DeviceRecord>,
    /// Device → version → telemetry.
    #[serde(default)]
    pub telemetry: BTreeMap<String, BTreeMap<u64, TelemetryAggregate>>,
    pub last_verdict: Option<WaveVerdict>,
}

/// A command or observation the engine refuses.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The device is not part of this rollout.
    #[error("device {0:?} is not part of this rollout")]
    UnknownDevice(String),
    /// The command does not apply in the rollout's phase.
    #[error("cannot {command} a rollout that is {phase}")]
    WrongPhase {
        command: &'static str,
        phase: &'static str,
    },
    /// A saved state that does not fit its policy.
    #[error("saved rollout state: {0}")]
    BadState(String),
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Running => "running",
        Phase::AwaitingApproval => "awaiting approval",
        Phase::Paused { .. } => "paused",
        Phase::Finished => "finished",
        Phase::Aborted { .. } => "aborted",
    }
}

/// One rollout: its policy and state.
#[derive(Clone, Debug)]
pub struct Rollout {
    policy: RolloutPolicy,
    state: RolloutState,
}

impl Rollout {
    /// Starts a rollout of `version` over `devices`; nothing is assigned
    /// until the first [`poll`](Self::poll).
    pub fn start(
        policy: RolloutPolicy,
        version: u64,
        salt: impl Into<String>,
        devices: impl IntoIterator<Item = Device>,
        now_ms: u64,
    ) -> Result<Self, RolloutError> {
        policy.validate()?;
        let mut r = Self {
            policy,
            state: RolloutState {
                version,
                salt: salt.into(),
                phase: Phase::Running,
                wave: 0,
                wave_started_ms: now_ms,
                started_ms: now_ms,
                devices: BTreeMap::new(),
                telemetry: BTreeMap::new(),
                last_verdict: None,
            },
        };
        for d in devices {
            r.device_seen(d);
        }
        Ok(r)
    }

    /// Picks a saved rollout up again.
    pub fn resume(policy: RolloutPolicy, state: RolloutState) -> Result<Self, RolloutError> {
        policy.validate()?;
        if let WavePlan::Steps(w) = &policy.waves {
            if state.wave >= w.len() {
                return Err(RolloutError::BadState(format!(
                    "wave {} but the policy has {} waves",
                    state.wave,
                    w.len()
                )));
            }
        }
        Ok(Self { policy, state })
    }

    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    pub fn policy(&self) -> &RolloutPolicy {
        &self.policy
    }

    /// A device that matches the selector: at the start, enrolled since, or
    /// matching since a label change. New devices join the current wave's pool.
    pub fn device_seen(&mut self, d: Device) {
        let rec = self.state.devices.entry(d.id).or_insert(DeviceRecord {
            labels: BTreeMap::new(),
            version: d.version,
            assigned_wave: None,
            previous: None,
            outcome: None,
            present: true,
        });
        rec.labels = d.labels;
        rec.present = true;
        if rec.assigned_wave.is_none() {
            rec.version = d.version;
        }
    }

    /// A device that no longer matches (or was revoked): it leaves the
    /// fleet the waves are sized on, but a rollback still covers it.
    pub fn device_left(&mut self, id: &str) -> Result<(), RolloutError> {
        let rec = self.record(id)?;
        rec.present = false;
        Ok(())
    }

    /// A device's report about `version`: active, or failed to activate.
    pub fn activation(
        &mut self,
        id: &str,
        version: u64,
        outcome: Activation,
    ) -> Result<(), RolloutError> {
        let target = self.state.version;
        let rec = self.record(id)?;
        if outcome == Activation::Active {
            rec.version = Some(version);
        }
        if version == target && rec.assigned_wave.is_some() {
            rec.outcome = Some(outcome);
        }
        Ok(())
    }

    /// Telemetry of `version` on a device over the window the server
    /// tracks; replaces what was known for that device and version.
    pub fn telemetry(
        &mut self,
        id: &str,
        version: u64,
        t: TelemetryAggregate,
    ) -> Result<(), RolloutError> {
        t.validate()?;
        self.record(id)?;
        self.state
            .telemetry
            .entry(id.to_string())
            .or_default()
            .insert(version, t);
        Ok(())
    }

    fn record(&mut self, id: &str) -> Result<&mut DeviceRecord, RolloutError> {
        self.state
            .devices
            .get_mut(id)
            .ok_or_else(|| RolloutError::UnknownDevice(id.to_string()))
    }

    fn wrong_phase(&self, command: &'static str) -> RolloutError {
        RolloutError::WrongPhase {
            command,
            phase: phase_name(&self.state.phase),
        }
    }

    /// An operator holds the rollout.
    pub fn pause(&mut self) -> Result<Vec<Action>, RolloutError> {
        match self.state.phase {
            Phase::Running | Phase::AwaitingApproval => {
                self.state.phase = Phase::Paused {
                    reason: Hold::Operator,
                };
                Ok(vec![Action::Pause {
                    wave: self.state.wave,
                    reason: Hold::Operator,
                }])
            }
            _ => Err(self.wrong_phase("pause")),
        }
    }

    /// An operator resumes a paused rollout: its wave's bake starts over.
    pub fn resume_paused(&mut self, now_ms: u64) -> Result<Vec<Action>, RolloutError> {
        if !matches!(self.state.phase, Phase::Paused { .. }) {
            return Err(self.wrong_phase("resume"));
        }
        self.state.phase = Phase::Running;
        self.state.wave_started_ms = now_ms;
        Ok(self.poll(now_ms))
    }

    /// An operator approves the next wave.
    pub fn approve(&mut self, now_ms: u64) -> Result<Vec<Action>, RolloutError> {
        if self.state.phase != Phase::AwaitingApproval {
            return Err(self.wrong_phase("approve"));
        }
        self.state.phase = Phase::Running;
        self.next_wave(now_ms);
        Ok(self.poll(now_ms))
    }

    /// An operator aborts: every device given the version goes back.
    pub fn abort(&mut self) -> Result<Vec<Action>, RolloutError> {
        if self.state.phase.is_terminal() {
            return Err(self.wrong_phase("abort"));
        }
        Ok(self.end_with_rollback(AbortCause::Operator))
    }

    /// When the engine next wants a `poll` without new input: the end of
    /// the current wave's bake (already past when the wave waits for
    /// evidence; new input is then what moves it). `None` unless running.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.state.phase != Phase::Running {
            return None;
        }
        let fleet = self.fleet_size();
        let t = waves::target(&self.policy, self.state.wave, fleet);
        Some(self.state.wave_started_ms.saturating_add(t.bake_ms))
    }

    /// Decides what to do now: fill the wave, judge it, and act on the
    /// verdict. At most one wave ends per poll (a new wave's bake has just
    /// begun), and the wave it opens is filled in the same poll.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.state.phase != Phase::Running {
            return actions;
        }
        self.fill(&mut actions);
        let verdict = self.evaluate(now_ms);
        let failure = verdict.failure().cloned();
        let install_failed = verdict.install.verdict == Verdict::Fail;
        let passed = verdict.passed();
        let last = waves::target(&self.policy, self.state.wave, self.fleet_size()).last;
        self.state.last_verdict = Some(verdict);
        if let Some(report) = failure {
            let on_failure = if install_failed {
                self.policy.install.on_failure
            } else {
                self.policy.model.on_failure
            };
            match on_failure {
                OnFailure::Pause => {
                    let reason = Hold::Gate { report };
                    self.state.phase = Phase::Paused {
                        reason: reason.clone(),
                    };
                    actions.push(Action::Pause {
                        wave: self.state.wave,
                        reason,
                    });
                }
                OnFailure::Rollback => {
                    actions.extend(self.end_with_rollback(AbortCause::Gate { report }))
                }
            }
        } else if passed {
            if last {
                self.state.phase = Phase::Finished;
                actions.push(Action::Finish);
            } else if self.policy.on_success == OnSuccess::Approve {
                self.state.phase = Phase::AwaitingApproval;
                actions.push(Action::AwaitApproval {
                    wave: self.state.wave,
                });
            } else {
                self.next_wave(now_ms);
                self.fill(&mut actions);
            }
        }
        actions
    }

    fn next_wave(&mut self, now_ms: u64) {
        self.state.wave += 1;
        self.state.wave_started_ms = now_ms;
        self.state.last_verdict = None;
    }

    fn fleet_size(&self) -> usize {
        self.state.devices.values().filter(|d| d.present).count()
    }

    /// Gives the version to the next devices of the current wave.
    fn fill(&mut self, actions: &mut Vec<Action>) {
        let fleet = self.fleet_size();
        let target = waves::target(&self.policy, self.state.wave, fleet);
        let label = self.policy.spread_by.as_deref();
        let members: Vec<Member<'_>> = self
            .state
            .devices
            .iter()
            .filter(|(_, d)| d.present)
            .map(|(id, d)| Member {
                id,
                group: label
                    .and_then(|l| d.labels.get(l))
                    .map_or("", String::as_str),
                assigned: d.assigned_wave.is_some(),
            })
            .collect();
        let chosen: Vec<String> = waves::fill(&self.state.salt, target.devices, &members)
            .into_iter()
            .map(str::to_string)
            .collect();
        if chosen.is_empty() {
            return;
        }
        for id in &chosen {
            if let Some(d) = self.state.devices.get_mut(id) {
                d.assigned_wave = Some(self.state.wave);
                d.previous = d.version;
                d.outcome = None;
            }
        }
        actions.push(Action::Assign {
            version: self.state.version,
            wave: self.state.wave,
            devices: chosen,
        });
    }

    fn evaluate(&self, now_ms: u64) -> WaveVerdict {
        let s = &self.state;
        let fleet = self.fleet_size();
        let target = waves::target(&self.policy, s.wave, fleet);
        let mut install = InstallCounts::default();
        let mut new = TelemetryAggregate::default();
        let (mut previous, mut rest) =
            (TelemetryAggregate::default(), TelemetryAggregate::default());
        let (mut has_previous, mut has_rest) = (false, false);
        let mut assigned_present = 0usize;
        for (id, d) in &s.devices {
            let tele = s.telemetry.get(id);
            if d.assigned_wave.is_some() {
                install.assigned += 1;
                assigned_present += usize::from(d.present);
                match d.outcome {
                    Some(Activation::Active) => install.active += 1,
                    Some(Activation::Failed { .. }) => install.failed += 1,
                    None => {}
                }
                if let Some(t) = tele.and_then(|t| t.get(&s.version)) {
                    new.add(t);
                }
                if let Some(t) = d.previous.and_then(|v| tele.and_then(|t| t.get(&v))) {
                    previous.add(t);
                    has_previous = true;
                }
            } else if d.present {
                // A device that runs the new version without being given it
                // (another deployment) is no reference.
                let running = d.version.filter(|v| *v != s.version);
                if let Some(t) = running.and_then(|v| tele.and_then(|t| t.get(&v))) {
                    rest.add(t);
                    has_rest = true;
                }
            }
        }
        let evidence = Evidence {
            new: &new,
            previous: has_previous.then_some(&previous),
            rest: has_rest.then_some(&rest),
            min_requests: target.min_requests,
        };
        WaveVerdict {
            wave: s.wave,
            at_ms: now_ms,
            target_devices: target.devices,
            assigned_devices: assigned_present,
            bake_ends_ms: s.wave_started_ms.saturating_add(target.bake_ms),
            active_devices: install.active,
            min_devices: target.min_devices.min(target.devices as u64),
            install: gates::install(&self.policy.install, install),
            model: self
                .policy
                .model
                .gates
                .iter()
                .map(|g| gates::model(g, &evidence))
                .collect(),
        }
    }

    /// Rolls back every device given the version and ends the rollout.
    fn end_with_rollback(&mut self, cause: AbortCause) -> Vec<Action> {
        let devices: Vec<RollbackTarget> = self
            .state
            .devices
            .iter()
            .filter(|(_, d)| d.assigned_wave.is_some())
            .map(|(id, d)| RollbackTarget {
                device: id.clone(),
                to: d.previous,
            })
            .collect();
        self.state.phase = Phase::Aborted {
            cause: cause.clone(),
        };
        let mut actions = Vec::new();
        if !devices.is_empty() {
            actions.push(Action::Rollback {
                version: self.state.version,
                devices,
            });
        }
        actions.push(Action::Abort { cause });
        actions
    }
}
