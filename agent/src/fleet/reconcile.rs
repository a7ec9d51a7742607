//! The fleet reconciler: what the agent does about its desired state, as a
//! pure state machine in the manner of quinn-proto. It does no I/O, reads no
//! clock (`now` is an argument) and knows nothing of tokio. The session
//! (`session.rs`) feeds it what arrives ([`Reconciler::handle_desired`]),
//! what came of each action ([`Reconciler::handle_outcome`]) and connection
//! events, and executes what [`Reconciler::poll_action`] returns. At most
//! one long action (unload, fetch, activate) is in flight at a time.
//!
//! Per session it remembers what it reported and which bundles were
//! refused (a refused bundle is retried once per session, never in a loop);
//! across sessions, what is installed and managed, the replay floor and the
//! partial downloads, all of which a restart rebuilds from disk
//! ([`Restored`]).

use super::gate::DesiredGate;
use super::Refusal;
use ferry_protocol::desired::{Assignment, DesiredState, SignedDesiredState};
use ferry_protocol::frames::{ActivationOutcome, AgentFrame, InstalledBundle};
use ferry_protocol::keys::Digest;
use ferry_protocol::trust::{follow_chain, SignedTrustRoot, TrustRoot};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// What the reconciler asks the session to do. The first four are quick
/// and local (or one frame); the next three are long and report back
/// through [`Outcome`].
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Persist the replay floor (`fleet/sequence`) before anything of the
    /// document is acted on.
    SaveSequence(u64),
    /// Persist the models the control plane put here (`fleet/managed.json`):
    /// only these are ever unloaded, so side-loaded models are left alone.
    SaveManaged(BTreeSet<String>),
    /// Persist a trust root accepted as the successor of the held one
    /// (`fleet/trust.root`, atomically), then verify bundles against it.
    SaveTrust {
        root: TrustRoot,
        signed: SignedTrustRoot,
    },
    /// Send a frame on the control stream: a report, or the refusal of a
    /// desired-state document.
    Send(AgentFrame),
    /// Record on the device that a bundle was refused before activation.
    RecordRefusal {
        assignment: Assignment,
        refusal: Refusal,
    },
    /// Stop serving a model the control plane no longer assigns.
    Unload { model: String },
    /// Download the assigned bundle into its partial file, resuming at
    /// `offset` bytes.
    Fetch { assignment: Assignment, offset: u64 },
    /// Verify and activate the complete download of the assignment.
    Activate { assignment: Assignment },
    /// Make an earlier version the champion again from the local store
    /// (no download): the assignment is below the version serving, as a
    /// rollout's rollback sends it. The activator applies the rollback
    /// rule (docs/security.md) and refuses anything else.
    Restore { assignment: Assignment },
    /// End the session and connect again (a download broke; the next
    /// session resumes it).
    Reconnect,
}

/// How a download ended.
#[derive(Clone, Debug, PartialEq)]
pub enum FetchResult {
    Complete,
    /// Refused by the control plane, the disk-space check or the header
    /// precheck.
    Refused(Refusal),
    /// The connection broke.
    Broken(String),
}

/// What came of a long action.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Unloaded {
        model: String,
        result: Result<(), Refusal>,
    },
    /// `have`: bytes of the partial file on disk afterwards.
    Fetched {
        assignment: Assignment,
        have: u64,
        result: FetchResult,
    },
    Activated {
        assignment: Assignment,
        result: Result<(), Refusal>,
    },
}

/// What a (re)started agent knows, read from disk and the serving core.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub installed: Vec<InstalledBundle>,
    /// `fleet/managed.json`.
    pub managed: BTreeSet<String>,
    /// `fleet/partial/*.part`: bytes on disk by digest.
    pub partials: HashMap<Digest, u64>,
    /// `fleet/trust.root`: the trust root this device holds.
    pub trust: Option<TrustRoot>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    /// No session: nothing but persistence is handed out.
    Down,
    Up,
    /// A download broke; waiting for the session to end.
    Closing,
    /// The control plane revoked this device: nothing more is done; what is
    /// installed keeps serving.
    Revoked,
}

pub struct Reconciler {
    gate: DesiredGate,
    /// Active version by model.
    installed: HashMap<String, u64>,
    managed: BTreeSet<String>,
    partials: HashMap<Digest, u64>,
    trust: Option<TrustRoot>,
    link: Link,
    // Per session.
    desired: Option<DesiredState>,
    reported: HashSet<(String, u64)>,
    failed: HashMap<Digest, Refusal>,
    /// Unloads that failed under the current document: retried with the next.
    unload_failed: HashSet<String>,
    /// A long action is in flight.
    busy: bool,
    /// Bumped on every accepted trust-root rotation.
    trust_epoch: u64,
    /// `trust_epoch` when the fetch or activation in flight was handed out:
    /// a refusal decided under an older root is retried, not recorded.
    job_epoch: u64,
    activate_next: Option<Assignment>,
    queue: VecDeque<Action>,
}

fn active_versions(installed: &[InstalledBundle]) -> HashMap<String, u64> {
    installed
        .iter()
        .filter(|b| b.active)
        .map(|b| (b.model.to_string(), b.version))
        .collect()
}

fn report(a: &Assignment, outcome: ActivationOutcome) -> Action {
    Action::Send(AgentFrame::Report {
        model: a.model.clone(),
        version: a.version,
        outcome,
    })
}

fn refused(r: &Refusal) -> ActivationOutcome {
    ActivationOutcome::Refused {
        code: r.code.clone(),
        reason: r.reason.clone(),
    }
}

impl Reconciler {
    pub fn new(gate: DesiredGate, restored: Restored) -> Self {
        Self {
            gate,
            installed: active_versions(&restored.installed),
            managed: restored.managed,
            partials: restored.partials,
            trust: restored.trust,
            link: Link::Down,
            desired: None,
            reported: HashSet::new(),
            failed: HashMap::new(),
            unload_failed: HashSet::new(),
            busy: false,
            trust_epoch: 0,
            job_epoch: 0,
            activate_next: None,
            queue: VecDeque::new(),
        }
    }

    /// The replay floor, for the `Hello` frame.
    pub fn last_sequence(&self) -> Option<u64> {
        self.gate.last()
    }

    pub fn is_revoked(&self) -> bool {
        self.link == Link::Revoked
    }

    /// The trust root this device holds.
    pub fn trust(&self) -> Option<&TrustRoot> {
        self.trust.as_ref()
    }

    fn say_trust(&mut self) {
        if let Some(t) = &self.trust {
            self.queue.push_back(Action::Send(AgentFrame::TrustRoot {
                version: t.version,
                expires_at: t.expires_at,
            }));
        }
    }

    /// Trust roots arrived at `now`: accepted only as a valid successor
    /// chain of the held root (threshold of the old root's keys, strictly
    /// higher versions, same tenant, the newest unexpired); persisted before
    /// use. Bundles refused in this session are tried again under the new
    /// root. A chain that does not verify changes nothing and is reported.
    pub fn handle_trust_roots(&mut self, chain: &[SignedTrustRoot], now: u64) {
        if self.link != Link::Up {
            return;
        }
        let Some(held) = &self.trust else {
            self.queue
                .push_back(Action::Send(AgentFrame::TrustRootRefused {
                    code: "no_trust_root".into(),
                    reason: "this device holds no trust root to follow a chain from".into(),
                }));
            return;
        };
        match follow_chain(held, chain, now) {
            Ok(Some((root, signed))) => {
                tracing::info!(from = held.version, to = root.version, "trust root rotated");
                self.trust = Some(root.clone());
                self.queue.push_back(Action::SaveTrust { root, signed });
                self.failed.clear();
                self.trust_epoch += 1;
                self.say_trust();
            }
            Ok(None) => self.say_trust(),
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), held = held.version, "trust roots refused; keeping the held one");
                self.queue
                    .push_back(Action::Send(AgentFrame::TrustRootRefused {
                        code: e.code().into(),
                        reason: e.to_string(),
                    }));
            }
        }
    }

    /// A session is up: what was reported or refused in the last one is
    /// forgotten (the control plane hears it again).
    pub fn handle_connected(&mut self) {
        if self.link == Link::Revoked {
            return;
        }
        self.forget_session();
        self.link = Link::Up;
        self.say_trust();
    }

    /// The session ended; a job in flight is abandoned (a download resumes
    /// from what it left on disk).
    pub fn handle_disconnected(&mut self) {
        if self.link != Link::Revoked {
            self.link = Link::Down;
        }
        self.forget_session();
    }

    /// The control plane revoked this device: stop acting on the fleet
    /// (no fetch, activation or unload); what is installed keeps serving.
    pub fn handle_revoked(&mut self) {
        self.link = Link::Revoked;
        self.forget_session();
    }

    fn forget_session(&mut self) {
        self.desired = None;
        self.reported.clear();
        self.failed.clear();
        self.unload_failed.clear();
        self.busy = false;
        self.activate_next = None;
        // Persistence asked for is still owed; frames for the old session are not.
        self.queue.retain(|a| {
            matches!(
                a,
                Action::SaveSequence(_) | Action::SaveManaged(_) | Action::SaveTrust { .. }
            )
        });
    }

    /// A desired-state document arrived at `now`; `installed` is what
    /// serves at this moment.
    pub fn handle_desired(
        &mut self,
        signed: &SignedDesiredState,
        installed: &[InstalledBundle],
        now: u64,
    ) {
        if self.link != Link::Up {
            return;
        }
        match self.gate.accept(signed, now) {
            Ok(doc) => {
                self.queue.push_back(Action::SaveSequence(doc.sequence));
                self.installed = active_versions(installed);
                self.unload_failed.clear();
                self.desired = Some(doc);
            }
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "desired state refused");
                self.queue
                    .push_back(Action::Send(AgentFrame::DesiredStateRefused {
                        sequence: signed.peek_sequence(),
                        code: e.code().into(),
                        reason: e.to_string(),
                    }));
            }
        }
    }

    /// A long action ended.
    pub fn handle_outcome(&mut self, outcome: Outcome) {
        self.busy = false;
        match outcome {
            Outcome::Unloaded { model, result } => match result {
                Ok(()) => {
                    tracing::info!(model = %model, "undeployed by the control plane; unloaded");
                    self.installed.remove(&model);
                    self.reported.retain(|(m, _)| *m != model);
                    self.set_managed(&model, false);
                }
                Err(r) => {
                    tracing::error!(model = %model, code = %r.code, reason = %r.reason, "could not unload");
                    self.unload_failed.insert(model);
                }
            },
            Outcome::Fetched {
                assignment: a,
                have,
                result,
            } => {
                if have == 0 {
                    self.partials.remove(&a.manifest_digest);
                } else {
                    self.partials.insert(a.manifest_digest, have);
                }
                match result {
                    FetchResult::Complete => {
                        if self.link == Link::Up {
                            self.activate_next = Some(a);
                        }
                    }
                    FetchResult::Refused(r) if self.job_epoch != self.trust_epoch => {
                        tracing::info!(model = %a.model, version = a.version, code = %r.code, "bundle refused under the previous trust root; trying again under the new one");
                    }
                    FetchResult::Refused(r) => {
                        tracing::error!(model = %a.model, version = a.version, code = %r.code, reason = %r.reason, "bundle refused before activation");
                        self.queue.push_back(Action::RecordRefusal {
                            assignment: a.clone(),
                            refusal: r.clone(),
                        });
                        self.queue.push_back(report(&a, refused(&r)));
                        self.failed.insert(a.manifest_digest, r);
                    }
                    FetchResult::Broken(e) => {
                        // The whole session ends: the next one resumes from
                        // the partial file. Carrying on would leave a live
                        // connection with nobody reconciling.
                        tracing::warn!(error = %e, model = %a.model, "download interrupted; reconnecting to resume");
                        if self.link == Link::Up {
                            self.link = Link::Closing;
                            self.queue.push_back(Action::Reconnect);
                        }
                    }
                }
            }
            Outcome::Activated {
                assignment: a,
                result,
            } => {
                // Verified or not, the download is done with: a refused one
                // is fetched afresh, never resumed.
                self.partials.remove(&a.manifest_digest);
                match result {
                    Ok(()) => {
                        tracing::info!(model = %a.model, version = a.version, "activated from the control plane");
                        self.installed.insert(a.model.to_string(), a.version);
                        self.set_managed(a.model.as_str(), true);
                        // Every activation is reported, also back onto a
                        // version reported earlier in this session (a
                        // rollback).
                        self.reported.retain(|(m, _)| m != a.model.as_str());
                        self.reported.insert((a.model.to_string(), a.version));
                        self.queue
                            .push_back(report(&a, ActivationOutcome::Activated));
                    }
                    Err(r) if self.job_epoch != self.trust_epoch => {
                        tracing::info!(model = %a.model, version = a.version, code = %r.code, "activation refused under the previous trust root; trying again under the new one");
                    }
                    Err(r) => {
                        tracing::error!(model = %a.model, version = a.version, code = %r.code, reason = %r.reason, "activation refused; previous version keeps serving");
                        self.queue.push_back(report(&a, refused(&r)));
                        self.failed.insert(a.manifest_digest, r);
                    }
                }
            }
        }
    }

    fn set_managed(&mut self, model: &str, present: bool) {
        let changed = if present {
            self.managed.insert(model.to_string())
        } else {
            self.managed.remove(model)
        };
        if changed {
            self.queue
                .push_back(Action::SaveManaged(self.managed.clone()));
        }
    }

    /// The next thing to do, if any. Call until `None` after every
    /// `handle_*`.
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(a) = self.queue.pop_front() {
            return Some(a);
        }
        if self.link != Link::Up || self.busy {
            return None;
        }
        if let Some(a) = self.activate_next.take() {
            self.busy = true;
            self.job_epoch = self.trust_epoch;
            return Some(Action::Activate { assignment: a });
        }
        let assignments = self.desired.as_ref()?.assignments.clone();
        // Undeployed: what the control plane put here and no longer assigns.
        let gone = self
            .managed
            .iter()
            .find(|m| {
                !assignments.iter().any(|a| a.model.as_str() == m.as_str())
                    && !self.unload_failed.contains(*m)
            })
            .cloned();
        if let Some(model) = gone {
            self.busy = true;
            return Some(Action::Unload { model });
        }
        for a in assignments {
            if self.installed.get(a.model.as_str()) == Some(&a.version) {
                self.set_managed(a.model.as_str(), true);
                if self.reported.insert((a.model.to_string(), a.version)) {
                    self.queue
                        .push_back(report(&a, ActivationOutcome::Activated));
                }
                continue;
            }
            if self.failed.contains_key(&a.manifest_digest) {
                continue;
            }
            if self
                .installed
                .get(a.model.as_str())
                .is_some_and(|serving| a.version < *serving)
            {
                self.busy = true;
                self.job_epoch = self.trust_epoch;
                return Some(Action::Restore { assignment: a });
            }
            let offset = self.partials.get(&a.manifest_digest).copied().unwrap_or(0);
            self.busy = true;
            self.job_epoch = self.trust_epoch;
            self.queue.push_back(Action::Fetch {
                assignment: a,
                offset,
            });
            break;
        }
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests;
