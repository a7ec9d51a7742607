//! The reconciler driven by an in-memory pair on a fake clock, in the
//! manner of quinn-proto's `Pair`: a fake control plane (signs desired
//! state with a real key, serves bundle bytes, can cut the link, takes
//! frames) and a fake device (its disk and what serves), with the
//! session's part (executing actions, feeding outcomes back) done in
//! between. No processes, sockets, threads or sleeps.

use super::*;
use ed25519_dalek::SigningKey;
use ferry_protocol::desired::Variant;
use ferry_protocol::keys::{sha256, PublicKey};
use ferry_protocol::trust::SignedTrustRoot;
use ferry_protocol::trust::{Publisher, TrustRoot};
use ferry_protocol::ModelName;
use std::collections::BTreeMap;

const DEVICE: &str = "dev_a";

struct Bundle {
    bytes: Vec<u8>,
    /// False: its test vectors fail at activation.
    good: bool,
    /// Seed of the publisher key that signed it.
    publisher: u8,
}

/// Publisher key `seed` (the fake signatures are by seed).
fn publisher_key(seed: u8) -> PublicKey {
    PublicKey::from_signing_key(&SigningKey::from_bytes(&[seed; 32]))
}

/// The tenant's root key in the fake control plane.
const ROOT_SEED: u8 = 1;
/// The publisher of `Server::publish`.
const PUB_A: u8 = 10;

/// The control plane's side.
struct Server {
    key: SigningKey,
    sequence: u64,
    ttl: u64,
    bundles: HashMap<Digest, Bundle>,
    assigned: Vec<Assignment>,
    /// The link drops after this many bytes of the next fetch.
    cut_after: Option<u64>,
    /// Every fetch: the digest and the offset asked for.
    fetches: Vec<(Digest, u64)>,
    bytes_sent: u64,
    frames: Vec<AgentFrame>,
    revoked: bool,
    /// Every version of the tenant's trust root, oldest first.
    roots: Vec<SignedTrustRoot>,
}

impl Server {
    fn new() -> Self {
        Self {
            key: SigningKey::from_bytes(&[7; 32]),
            sequence: 0,
            ttl: 3600,
            bundles: HashMap::new(),
            assigned: vec![],
            cut_after: None,
            fetches: vec![],
            bytes_sent: 0,
            frames: vec![],
            revoked: false,
            roots: vec![SignedTrustRoot::sign(
                &trust_root(1, &[PUB_A], &[], 1_000_000),
                &[&SigningKey::from_bytes(&[ROOT_SEED; 32])],
            )],
        }
    }

    /// Registers a bundle of `model` v`version`; its assignment.
    fn publish(&mut self, model: &str, version: u64, good: bool) -> Assignment {
        let bytes = format!("{model} v{version} ").repeat(200).into_bytes();
        let digest = sha256(&bytes);
        self.bundles.insert(
            digest,
            Bundle {
                bytes,
                good,
                publisher: PUB_A,
            },
        );
        Assignment {
            model: ModelName::try_from(model.to_string()).unwrap(),
            version,
            manifest_digest: digest,
            variant: Variant::Champion,
            traffic_percent: 100,
        }
    }

    /// Assigns `a` (replacing any assignment of its model).
    fn deploy(&mut self, a: &Assignment) {
        self.assigned.retain(|x| x.model != a.model);
        self.assigned.push(a.clone());
    }

    fn undeploy(&mut self, model: &str) {
        self.assigned.retain(|x| x.model.as_str() != model);
    }

    fn desired(&mut self, now: u64) -> SignedDesiredState {
        self.sequence += 1;
        let doc = DesiredState {
            tenant: "t".into(),
            device_id: DEVICE.into(),
            sequence: self.sequence,
            issued_at: now,
            expires_at: now + self.ttl,
            assignments: self.assigned.clone(),
        };
        SignedDesiredState::sign(&doc, &self.key)
    }

    fn size(&self, a: &Assignment) -> u64 {
        self.bundles[&a.manifest_digest].bytes.len() as u64
    }

    fn reports(&self) -> Vec<(String, u64, &'static str)> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                AgentFrame::Report {
                    model,
                    version,
                    outcome,
                } => Some((
                    model.to_string(),
                    *version,
                    match outcome {
                        ActivationOutcome::Activated => "activated",
                        ActivationOutcome::Refused { .. } => "refused",
                        ActivationOutcome::RolledBack { .. } => "rolled_back",
                    },
                )),
                _ => None,
            })
            .collect()
    }

    fn desired_refusals(&self) -> Vec<String> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                AgentFrame::DesiredStateRefused { code, .. } => Some(code.clone()),
                _ => None,
            })
            .collect()
    }
}

fn trust_root(version: u64, publishers: &[u8], revoked: &[u8], expires_at: u64) -> TrustRoot {
    TrustRoot {
        tenant: "t".into(),
        version,
        expires_at,
        threshold: 1,
        root_keys: vec![publisher_key(ROOT_SEED)],
        publishers: publishers
            .iter()
            .map(|s| Publisher {
                name: format!("p{s}"),
                key: publisher_key(*s),
                scopes: vec!["*".into()],
            })
            .collect(),
        publisher_threshold: 1,
        revoked: revoked.iter().map(|s| publisher_key(*s).id()).collect(),
    }
}

/// The device: what survives a restart (its disk) and what serves.
#[derive(Default)]
struct Device {
    serving: BTreeMap<String, (u64, Digest)>,
    partial: HashMap<Digest, Vec<u8>>,
    managed: BTreeSet<String>,
    floor: Option<u64>,
    refusals: Vec<String>,
    /// `fleet/trust.root`; `None`: activation checks no publisher.
    trust: Option<TrustRoot>,
    /// Earlier champions still held, per model (the agent's rollback
    /// history).
    history: BTreeMap<String, Vec<(u64, Digest)>>,
}

impl Device {
    fn installed(&self) -> Vec<InstalledBundle> {
        self.serving
            .iter()
            .map(|(m, (v, d))| InstalledBundle {
                model: ModelName::try_from(m.clone()).unwrap(),
                version: *v,
                manifest_digest: *d,
                active: true,
            })
            .collect()
    }

    fn version(&self, model: &str) -> Option<u64> {
        self.serving.get(model).map(|(v, _)| *v)
    }
}

/// The two sides and the session between them, on a fake clock.
struct Pair {
    server: Server,
    device: Device,
    rec: Reconciler,
    now: u64,
    up: bool,
    reconnects: usize,
}

impl Pair {
    fn new(server: Server, device: Device) -> Self {
        let rec = Self::boot(&server, &device);
        Self {
            server,
            device,
            rec,
            now: 1_000,
            up: false,
            reconnects: 0,
        }
    }

    /// The reconciler a (re)started agent builds from its disk.
    fn boot(server: &Server, device: &Device) -> Reconciler {
        let gate = DesiredGate::new(
            PublicKey::from_signing_key(&server.key),
            DEVICE,
            device.floor,
        );
        Reconciler::new(
            gate,
            Restored {
                installed: device.installed(),
                managed: device.managed.clone(),
                partials: device
                    .partial
                    .iter()
                    .map(|(d, b)| (*d, b.len() as u64))
                    .collect(),
                trust: device.trust.clone(),
            },
        )
    }

    /// The control plane offers the roots after the one the device said
    /// it holds (as its control loop does).
    fn offer_trust(&mut self) {
        let Some(held) = self.server.held() else {
            return;
        };
        let chain = self.server.chain_after(held);
        if chain.is_empty() {
            return;
        }
        self.deliver_trust(&chain);
    }

    fn deliver_trust(&mut self, chain: &[SignedTrustRoot]) {
        self.rec.handle_trust_roots(chain, self.now);
        self.run();
    }

    /// The agent process restarts: only the disk is left.
    fn restart(&mut self) {
        self.up = false;
        self.rec = Self::boot(&self.server, &self.device);
    }

    /// A session comes up; the control plane sends fresh desired state.
    fn connect(&mut self) {
        self.now += 1;
        if self.server.revoked {
            // Refused at connect: the session never starts.
            self.rec.handle_revoked();
            self.run();
            return;
        }
        self.rec.handle_connected();
        self.up = true;
        let signed = self.server.desired(self.now);
        self.deliver(&signed);
    }

    /// The control plane closes the connection.
    fn cut(&mut self) {
        self.up = false;
        self.rec.handle_disconnected();
        self.run();
    }

    fn deliver(&mut self, signed: &SignedDesiredState) {
        let installed = self.device.installed();
        self.rec.handle_desired(signed, &installed, self.now);
        self.run();
    }

    /// A fresh desired state on the open session (a change or a refresh).
    fn push(&mut self) {
        let signed = self.server.desired(self.now);
        self.deliver(&signed);
    }

    /// Executes actions until the reconciler has nothing more to do; a
    /// reconciler that never settles is a hot loop.
    fn run(&mut self) {
        for _ in 0..1000 {
            let Some(action) = self.rec.poll_action() else {
                return;
            };
            if let Some(outcome) = self.execute(action) {
                self.rec.handle_outcome(outcome);
            }
        }
        panic!("the reconciler did not settle: a hot loop");
    }

    fn execute(&mut self, action: Action) -> Option<Outcome> {
        let (server, device) = (&mut self.server, &mut self.device);
        match action {
            Action::SaveSequence(s) => device.floor = Some(s),
            Action::SaveManaged(m) => device.managed = m,
            Action::SaveTrust { root, signed } => {
                assert_eq!(signed.open_any_time().unwrap(), root);
                device.trust = Some(root);
            }
            Action::RecordRefusal { refusal, .. } => device.refusals.push(refusal.code),
            Action::Send(f) => {
                assert!(self.up, "a frame sent without a session: {f:?}");
                server.frames.push(f);
            }
            Action::Reconnect => {
                assert!(self.up);
                self.reconnects += 1;
                self.up = false;
                self.rec.handle_disconnected();
            }
            Action::Unload { model } => {
                device.serving.remove(&model);
                return Some(Outcome::Unloaded {
                    model,
                    result: Ok(()),
                });
            }
            Action::Fetch { assignment, offset } => {
                assert!(self.up, "a fetch without a session");
                let d = assignment.manifest_digest;
                server.fetches.push((d, offset));
                let result = if !server.assigned.iter().any(|a| a.manifest_digest == d) {
                    FetchResult::Refused(Refusal::new("fetch_refused", "not assigned"))
                } else {
                    let bytes = &server.bundles[&d].bytes;
                    let part = device.partial.entry(d).or_default();
                    part.truncate(offset as usize);
                    let start = part.len();
                    let end = match server.cut_after.take() {
                        Some(n) => (start + n as usize).min(bytes.len()),
                        None => bytes.len(),
                    };
                    part.extend_from_slice(&bytes[start..end]);
                    server.bytes_sent += (end - start) as u64;
                    if end < bytes.len() {
                        FetchResult::Broken("link cut".into())
                    } else {
                        FetchResult::Complete
                    }
                };
                let have = device.partial.get(&d).map_or(0, |p| p.len() as u64);
                return Some(Outcome::Fetched {
                    assignment,
                    have,
                    result,
                });
            }
            Action::Activate { assignment } => {
                let d = assignment.manifest_digest;
                let part = device.partial.remove(&d).unwrap_or_default();
                let bundle = &server.bundles[&d];
                let result = if part != bundle.bytes {
                    Err(Refusal::new("digest_mismatch", "not the assigned bundle"))
                } else if let Some(r) = device.trust.as_ref().and_then(|t| {
                    let id = publisher_key(bundle.publisher).id();
                    if t.is_revoked(&id) {
                        Some(Refusal::new("revoked_key", "publisher key revoked"))
                    } else if t.publisher(&id).is_none() {
                        Some(Refusal::new("unknown_key", "publisher key unknown"))
                    } else {
                        None
                    }
                }) {
                    Err(r)
                } else if !bundle.good {
                    Err(Refusal::new("test_vectors_failed", "outputs differ"))
                } else {
                    let model = assignment.model.to_string();
                    if let Some(prev) = device
                        .serving
                        .insert(model.clone(), (assignment.version, d))
                    {
                        device.history.entry(model).or_default().push(prev);
                    }
                    Ok(())
                };
                return Some(Outcome::Activated { assignment, result });
            }
            Action::Restore { assignment } => {
                let model = assignment.model.to_string();
                let held = (assignment.version, assignment.manifest_digest);
                let history = device.history.entry(model.clone()).or_default();
                let result = if history.contains(&held) {
                    history.retain(|h| *h != held);
                    device.serving.insert(model, held);
                    Ok(())
                } else {
                    Err(Refusal::new("rollback_refused", "not held"))
                };
                return Some(Outcome::Activated { assignment, result });
            }
        }
        None
    }
}

fn pair() -> Pair {
    Pair::new(Server::new(), Device::default())
}

/// Trust-root rotation and refused roots.
mod trust;

/// Rollback through desired state (the rollback rule).
mod rollback;

#[test]
fn a_fresh_device_fetches_activates_and_reports_once() {
    let mut p = pair();
    let a = p.server.publish("fraud", 1, true);
    p.server.deploy(&a);
    p.connect();
    assert_eq!(p.device.version("fraud"), Some(1));
    assert_eq!(p.server.fetches, vec![(a.manifest_digest, 0)]);
    assert_eq!(p.server.reports(), vec![("fraud".into(), 1, "activated")]);
    assert!(p.device.managed.contains("fraud"));
    assert_eq!(p.device.floor, Some(1));
    assert!(p.device.partial.is_empty());
    // Refreshes of the same state change nothing and say nothing again.
    for _ in 0..5 {
        p.now += 1800;
        p.push();
    }
    assert_eq!(p.server.fetches.len(), 1);
    assert_eq!(p.server.reports().len(), 1);
}

#[test]
fn a_download_cut_half_way_resumes_where_it_stopped() {
    let mut p = pair();
    let a = p.server.publish("fraud", 1, true);
    let size = p.server.size(&a);
    p.server.deploy(&a);
    let cut = size / 2 + 7;
    p.server.cut_after = Some(cut);
    p.connect();
    // The link broke: the session ends, nothing is activated.
    assert_eq!(p.reconnects, 1);
    assert!(!p.up);
    assert_eq!(p.device.version("fraud"), None);
    assert_eq!(p.device.partial[&a.manifest_digest].len() as u64, cut);
    // Nothing is done without a session.
    assert_eq!(p.rec.poll_action(), None);
    // Backoff (fake clock), reconnect: the fetch resumes at the cut.
    p.now += 2;
    p.connect();
    assert_eq!(
        p.server.fetches,
        vec![(a.manifest_digest, 0), (a.manifest_digest, cut)]
    );
    assert_eq!(p.server.bytes_sent, size, "resumed, not restarted");
    assert_eq!(p.device.version("fraud"), Some(1));
    assert_eq!(p.server.reports(), vec![("fraud".into(), 1, "activated")]);
}

#[test]
fn a_restart_mid_download_resumes_from_the_partial_file() {
    let mut p = pair();
    let a = p.server.publish("fraud", 1, true);
    let size = p.server.size(&a);
    p.server.deploy(&a);
    p.server.cut_after = Some(size / 3);
    p.connect();
    // The process dies; the new one finds the partial file on disk.
    p.restart();
    p.connect();
    assert_eq!(p.server.fetches[1], (a.manifest_digest, size / 3));
    assert_eq!(p.server.bytes_sent, size);
    assert_eq!(p.device.version("fraud"), Some(1));
}

#[test]
fn a_refused_bundle_is_reported_once_not_retried_and_the_previous_model_keeps_serving() {
    let mut p = pair();
    let v1 = p.server.publish("fraud", 1, true);
    let v2 = p.server.publish("fraud", 2, false);
    p.server.deploy(&v1);
    p.connect();
    p.server.deploy(&v2);
    p.push();
    assert_eq!(p.device.version("fraud"), Some(1), "v1 keeps serving");
    assert_eq!(
        p.server.reports(),
        vec![
            ("fraud".into(), 1, "activated"),
            ("fraud".into(), 2, "refused")
        ]
    );
    // The refused download is not kept for resuming.
    assert!(p.device.partial.is_empty());
    // Refreshes and changes of the same assignment: no hot loop.
    for _ in 0..50 {
        p.now += 60;
        p.push();
    }
    assert_eq!(p.server.fetches.len(), 2);
    assert_eq!(p.server.reports().len(), 2);
    // A new session tries once more (the operator may have fixed the
    // device), and reports once more.
    p.cut();
    p.connect();
    assert_eq!(p.server.fetches.len(), 3);
    assert_eq!(p.server.reports().last().unwrap().2, "refused");
    assert_eq!(p.device.version("fraud"), Some(1));
}

#[test]
fn a_bundle_the_server_refuses_is_recorded_and_reported() {
    let mut p = pair();
    let a = p.server.publish("fraud", 1, true);
    p.server.deploy(&a);
    p.connect();
    // A desired state naming a bundle the server will not serve (it was
    // undeployed in between).
    let b = p.server.publish("churn", 3, true);
    p.server.deploy(&b);
    let signed = p.server.desired(p.now);
    p.server.undeploy("churn");
    p.deliver(&signed);
    assert_eq!(p.device.refusals, vec!["fetch_refused".to_string()]);
    assert_eq!(
        p.server.reports().last().unwrap(),
        &("churn".into(), 3, "refused")
    );
    assert_eq!(p.device.version("churn"), None);
}

#[test]
fn replayed_and_expired_desired_states_are_refused() {
    let mut p = pair();
    let v1 = p.server.publish("fraud", 1, true);
    let v2 = p.server.publish("fraud", 2, true);
    p.server.deploy(&v1);
    p.connect();
    let old = p.server.desired(p.now);
    p.server.deploy(&v2);
    p.push();
    assert_eq!(p.device.version("fraud"), Some(2));
    // An attacker replays the older (validly signed) document.
    p.deliver(&old);
    assert_eq!(p.server.desired_refusals(), vec!["replayed_desired_state"]);
    assert_eq!(
        p.device.version("fraud"),
        Some(2),
        "nothing was rolled back"
    );
    assert_eq!(p.server.fetches.len(), 2);
    // After a restart too: the floor is on disk.
    p.restart();
    p.connect();
    p.deliver(&old);
    assert_eq!(p.server.desired_refusals().len(), 2);
    // An expired document (fake clock past its expiry) is refused and
    // nothing in it is acted on.
    let v3 = p.server.publish("fraud", 3, true);
    p.server.deploy(&v3);
    let stale = p.server.desired(p.now);
    p.now += p.server.ttl;
    p.deliver(&stale);
    assert_eq!(
        p.server.desired_refusals().last().unwrap(),
        "expired_desired_state"
    );
    assert_eq!(p.device.version("fraud"), Some(2));
}

#[test]
fn a_revoked_device_stops_acting_and_keeps_serving() {
    let mut p = pair();
    let v1 = p.server.publish("fraud", 1, true);
    p.server.deploy(&v1);
    p.connect();
    // Revoked mid-session: the connection goes; reconnecting is refused.
    p.server.revoked = true;
    p.cut();
    p.connect();
    assert!(p.rec.is_revoked());
    // Whatever arrives now is not acted on: no unload, no fetch.
    p.server.undeploy("fraud");
    let v2 = p.server.publish("churn", 2, true);
    p.server.deploy(&v2);
    let signed = p.server.desired(p.now);
    p.rec.handle_connected();
    p.rec.handle_desired(&signed, &p.device.installed(), p.now);
    assert_eq!(p.rec.poll_action(), None);
    assert_eq!(p.device.version("fraud"), Some(1), "keeps serving");
    assert_eq!(p.server.fetches.len(), 1);
}

#[test]
fn a_restarted_agent_rebuilds_its_state_from_what_is_installed() {
    let mut p = pair();
    let v1 = p.server.publish("fraud", 1, true);
    p.server.deploy(&v1);
    // A side-loaded model the control plane never put here.
    p.device
        .serving
        .insert("local".into(), (4, sha256(b"side-loaded")));
    p.connect();
    p.restart();
    p.connect();
    // Nothing fetched again; the control plane hears it is active.
    assert_eq!(p.server.fetches.len(), 1);
    assert_eq!(
        p.server.reports(),
        vec![
            ("fraud".into(), 1, "activated"),
            ("fraud".into(), 1, "activated")
        ]
    );
    // What it manages came back from disk: undeploying unloads it, and
    // only it.
    p.restart();
    p.server.undeploy("fraud");
    p.connect();
    assert_eq!(p.device.version("fraud"), None);
    assert_eq!(p.device.version("local"), Some(4));
    assert!(p.device.managed.is_empty());
}

#[test]
fn a_crash_after_download_before_activation_activates_on_restart() {
    let mut p = pair();
    let v1 = p.server.publish("fraud", 1, true);
    let size = p.server.size(&v1);
    p.server.deploy(&v1);
    p.connect();
    // Simulate the crash by keeping the complete download and forgetting
    // the activation.
    p.device.serving.clear();
    p.device.partial.insert(
        v1.manifest_digest,
        p.server.bundles[&v1.manifest_digest].bytes.clone(),
    );
    p.restart();
    p.connect();
    assert_eq!(p.server.fetches.last(), Some(&(v1.manifest_digest, size)));
    assert_eq!(p.device.version("fraud"), Some(1));
}

// Trust-root rotation (a rotated root arriving with the desired state, old
// and new bundles verifying across the switch) belongs here; it comes with
// the security issue that introduces rotation.
