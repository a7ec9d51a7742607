//! Trust-root rotation through the reconciler, on the fake pair.

use super::*;

impl Server {
    /// Rotates the tenant to a new root version: `publishers` may sign,
    /// `revoked` may not, signed by the root key (as `ferry trust push`
    /// requires). Its version.
    fn rotate(&mut self, publishers: &[u8], revoked: &[u8], expires_at: u64) -> u64 {
        let version = self.roots.len() as u64 + 1;
        let root = trust_root(version, publishers, revoked, expires_at);
        self.roots.push(SignedTrustRoot::sign(
            &root,
            &[&SigningKey::from_bytes(&[ROOT_SEED; 32])],
        ));
        version
    }

    /// The roots after `held`, as the control plane offers them.
    pub(super) fn chain_after(&self, held: u64) -> Vec<SignedTrustRoot> {
        self.roots
            .iter()
            .filter(|s| s.peek().unwrap().version > held)
            .cloned()
            .collect()
    }

    /// The last trust-root version the device said it holds.
    pub(super) fn held(&self) -> Option<u64> {
        self.frames.iter().rev().find_map(|f| match f {
            AgentFrame::TrustRoot { version, .. } => Some(*version),
            _ => None,
        })
    }

    fn trust_refusals(&self) -> Vec<String> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                AgentFrame::TrustRootRefused { code, .. } => Some(code.clone()),
                _ => None,
            })
            .collect()
    }

    /// Registers a bundle signed by publisher `seed`.
    fn publish_by(&mut self, model: &str, version: u64, seed: u8) -> Assignment {
        let a = self.publish(model, version, true);
        if let Some(b) = self.bundles.get_mut(&a.manifest_digest) {
            b.publisher = seed;
        }
        a
    }
}

/// A device enrolled with the tenant's v1 root.
fn pair_with_root() -> Pair {
    let server = Server::new();
    let device = Device {
        trust: Some(server.roots[0].open_any_time().unwrap()),
        ..Device::default()
    };
    Pair::new(server, device)
}

#[test]
fn trust_root_rotation_reaches_the_device_and_an_offline_one_catches_up() {
    let mut p = pair_with_root();
    let a1 = p.server.publish("fraud", 1, true);
    p.server.deploy(&a1);
    p.connect();
    assert_eq!(
        p.server.held(),
        Some(1),
        "the device says which root it holds"
    );
    assert_eq!(p.device.version("fraud"), Some(1));
    // Rotation: publisher B added, A revoked. Offered, followed, persisted,
    // reported.
    let b = PUB_A + 1;
    p.server.rotate(&[b], &[PUB_A], 1_000_000);
    p.offer_trust();
    assert_eq!(p.device.trust.as_ref().unwrap().version, 2);
    assert_eq!(p.server.held(), Some(2));
    assert_eq!(p.rec.trust().unwrap().version, 2);
    // A's new bundle is refused, B's activates; A's v1 serves meanwhile.
    let a2 = p.server.publish_by("fraud", 2, PUB_A);
    p.server.deploy(&a2);
    p.push();
    assert_eq!(p.device.version("fraud"), Some(1));
    assert_eq!(p.server.reports().last().unwrap().2, "refused");
    let b3 = p.server.publish_by("fraud", 3, b);
    p.server.deploy(&b3);
    p.push();
    assert_eq!(p.device.version("fraud"), Some(3));
    // Offline through two more rotations (and a restart): the chain from
    // the root it holds brings it to the newest at the next session.
    p.cut();
    let c = b + 1;
    p.server.rotate(&[b, c], &[PUB_A], 1_000_000);
    p.server.rotate(&[c], &[PUB_A, b], 1_000_000);
    p.restart();
    assert_eq!(p.rec.trust().unwrap().version, 2, "the persisted root");
    let c4 = p.server.publish_by("fraud", 4, c);
    p.server.deploy(&c4);
    p.connect();
    // The first session's fetch was refused (v2 does not know C) ...
    assert_eq!(p.device.version("fraud"), Some(3));
    p.offer_trust();
    // ... and retried under the new root, in the same session.
    assert_eq!(p.device.trust.as_ref().unwrap().version, 4);
    assert_eq!(p.device.version("fraud"), Some(4));
    assert!(p.server.trust_refusals().is_empty());
    assert_eq!(p.server.held(), Some(4));
}

#[test]
fn a_forged_expired_or_foreign_trust_root_is_refused_and_changes_nothing() {
    let mut p = pair_with_root();
    p.connect();
    let held = p.device.trust.clone();
    // Signed by a root key the held root does not list.
    let evil = SigningKey::from_bytes(&[66; 32]);
    let mut forged = trust_root(2, &[66], &[], 1_000_000);
    forged.root_keys = vec![PublicKey::from_signing_key(&evil)];
    p.deliver_trust(&[SignedTrustRoot::sign(&forged, &[&evil])]);
    // For another tenant, signed by the right key.
    let mut other = trust_root(2, &[PUB_A], &[], 1_000_000);
    other.tenant = "other".into();
    let root_key = SigningKey::from_bytes(&[ROOT_SEED; 32]);
    p.deliver_trust(&[SignedTrustRoot::sign(&other, &[&root_key])]);
    // A genuine successor that has already expired.
    let expired = trust_root(2, &[PUB_A], &[], p.now - 1);
    p.deliver_trust(&[SignedTrustRoot::sign(&expired, &[&root_key])]);
    assert_eq!(
        p.server.trust_refusals(),
        [
            "trust_root_signatures",
            "trust_root_tenant",
            "trust_root_expired"
        ]
    );
    assert_eq!(p.device.trust, held, "nothing persisted");
    assert_eq!(p.server.held(), Some(1));
}

/// The race the e2e test met on a loaded machine: the desired state
/// arrives before the chain, the activation runs against the old root and
/// is refused, and the rotation that would have let it through lands
/// while that activation is still in flight. The refusal was decided under
/// a root the device no longer holds: it is tried again, not recorded.
#[test]
fn a_refusal_decided_under_the_old_root_while_it_rotates_is_tried_again() {
    let mut p = pair_with_root();
    let b = PUB_A + 1;
    let b1 = p.server.publish_by("fraud", 1, b);
    p.server.deploy(&b1);
    p.now += 1;
    p.rec.handle_connected();
    p.up = true;
    let signed = p.server.desired(p.now);
    let installed = p.device.installed();
    p.rec.handle_desired(&signed, &installed, p.now);
    // Run until the activation is handed out, and hold it there.
    let activation = loop {
        let action = p.rec.poll_action().expect("an activation is handed out");
        if matches!(action, Action::Activate { .. }) {
            break action;
        }
        if let Some(o) = p.execute(action) {
            p.rec.handle_outcome(o);
        }
    };
    // It runs against v1, which does not know B ...
    let outcome = p.execute(activation).unwrap();
    assert!(
        matches!(&outcome, Outcome::Activated { result: Err(r), .. } if r.code == "unknown_key"),
        "{outcome:?}"
    );
    // ... while the rotation that adds B arrives.
    p.server.rotate(&[PUB_A, b], &[], 1_000_000);
    let chain = p.server.chain_after(1);
    p.rec.handle_trust_roots(&chain, p.now);
    p.rec.handle_outcome(outcome);
    p.run();
    assert_eq!(p.device.trust.as_ref().unwrap().version, 2);
    assert_eq!(p.device.version("fraud"), Some(1));
    assert!(p.device.refusals.is_empty(), "{:?}", p.device.refusals);
    assert_eq!(
        p.server.reports(),
        vec![("fraud".to_string(), 1, "activated")]
    );
}
