//! Every refusal of DESIGN.md's trust model, checked on the pure verifier,
//! plus round-trip property tests of the encoding.
#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use ferry_protocol::bundle;
use ferry_protocol::keys::{sha256, PublicKey};
use ferry_protocol::manifest::{ArtifactRef, Lineage, Manifest, Runtime, TargetConstraints};
use ferry_protocol::model::{DType, Dim, ModelName, Schema, TensorSpec};
use ferry_protocol::trust::{Publisher, SignedTrustRoot, TrustError, TrustRoot};
use ferry_protocol::verify::VerifyError;
use ferry_protocol::SignedManifest;
use proptest::prelude::*;
use std::collections::BTreeMap;

const NOW: u64 = 1_800_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

struct World {
    roots: Vec<SigningKey>,
    publisher: SigningKey,
    narrow: SigningKey,
    trust: TrustRoot,
}

fn world() -> World {
    let roots = vec![key(1), key(2), key(3)];
    let publisher = key(10);
    let narrow = key(11);
    let trust = TrustRoot {
        tenant: "acme".into(),
        version: 1,
        expires_at: NOW + 86_400,
        threshold: 2,
        root_keys: roots.iter().map(PublicKey::from_signing_key).collect(),
        publishers: vec![
            Publisher {
                name: "ml-team".into(),
                key: PublicKey::from_signing_key(&publisher),
                scopes: vec!["*".into()],
            },
            Publisher {
                name: "fraud-team".into(),
                key: PublicKey::from_signing_key(&narrow),
                scopes: vec!["fraud-*".into()],
            },
        ],
        publisher_threshold: 1,
        revoked: vec![],
    };
    World {
        roots,
        publisher,
        narrow,
        trust,
    }
}

const MODEL_BYTES: &[u8] = b"not really onnx, but bytes with a digest";

fn manifest(name: &str, version: u64) -> Manifest {
    Manifest {
        model: ModelName::new(name).unwrap(),
        version,
        runtime: Runtime::Onnx,
        schema: Schema {
            inputs: vec![TensorSpec {
                name: "input".into(),
                dtype: DType::F32,
                shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(4)],
            }],
            outputs: vec![],
        },
        baseline: None,
        artifacts: vec![ArtifactRef {
            name: "model.onnx".into(),
            len: MODEL_BYTES.len() as u64,
            sha256: sha256(MODEL_BYTES),
        }],
        tags: BTreeMap::from([("team".into(), "risk".into())]),
        metrics: BTreeMap::from([("auc".into(), 0.97)]),
        lineage: Lineage::default(),
        created_at: NOW - 10,
        expires_at: None,
        target: TargetConstraints::default(),
        test_vectors: None,
        const_inputs: Vec::new(),
    }
}

fn bundle_bytes(m: &Manifest, signers: &[&SigningKey], payload: &[u8]) -> Vec<u8> {
    let header = SignedManifest::sign(m, signers);
    let mut out = header.to_preamble();
    out.extend_from_slice(payload);
    out
}

fn verify(w: &World, bytes: &[u8], highest: Option<u64>) -> Result<(), VerifyError> {
    bundle::verify(&w.trust, bytes, NOW, highest).map(|_| ())
}

#[test]
fn a_good_bundle_verifies() {
    let w = world();
    let b = bundle_bytes(&manifest("fraud-eu", 3), &[&w.publisher], MODEL_BYTES);
    let v = bundle::verify(&w.trust, &b, NOW, Some(2)).unwrap();
    assert_eq!(v.manifest.manifest().version, 3);
    assert_eq!(v.manifest.signers().len(), 1);
}

#[test]
fn tampered_artifact() {
    let w = world();
    let mut b = bundle_bytes(&manifest("m", 1), &[&w.publisher], MODEL_BYTES);
    let last = b.len() - 1;
    b[last] ^= 1;
    assert!(matches!(
        verify(&w, &b, None),
        Err(VerifyError::DigestMismatch { .. })
    ));
}

#[test]
fn tampered_manifest() {
    let w = world();
    let mut header = SignedManifest::sign(&manifest("m", 1), &[&w.publisher]);
    // Change the version inside the signed bytes.
    let mut m = manifest("m", 1);
    m.version = 99;
    header.manifest = m.encode();
    let mut b = header.to_preamble();
    b.extend_from_slice(MODEL_BYTES);
    assert!(matches!(
        verify(&w, &b, None),
        Err(VerifyError::BadSignature(_))
    ));
}

#[test]
fn unknown_key() {
    let w = world();
    let stranger = key(99);
    let b = bundle_bytes(&manifest("m", 1), &[&stranger], MODEL_BYTES);
    assert!(matches!(
        verify(&w, &b, None),
        Err(VerifyError::UnknownKey(_))
    ));
    let unsigned = bundle_bytes(&manifest("m", 1), &[], MODEL_BYTES);
    assert!(
        matches!(verify(&w, &unsigned, None), Err(VerifyError::UnknownKey(s)) if s == "nobody")
    );
}

#[test]
fn revoked_key() {
    let mut w = world();
    w.trust
        .revoked
        .push(PublicKey::from_signing_key(&w.publisher).id());
    let b = bundle_bytes(&manifest("m", 1), &[&w.publisher], MODEL_BYTES);
    assert!(matches!(
        verify(&w, &b, None),
        Err(VerifyError::RevokedKey(_))
    ));
}

#[test]
fn publisher_outside_its_scope() {
    let w = world();
    let b = bundle_bytes(&manifest("churn", 1), &[&w.narrow], MODEL_BYTES);
    let err = verify(&w, &b, None).unwrap_err();
    assert!(matches!(err, VerifyError::OutOfScope { .. }), "{err}");
    assert!(err.to_string().contains("fraud-team"));
    let ok = bundle_bytes(&manifest("fraud-us", 1), &[&w.narrow], MODEL_BYTES);
    assert!(verify(&w, &ok, None).is_ok());
}

#[test]
fn below_publisher_threshold() {
    let mut w = world();
    w.trust.publisher_threshold = 2;
    let one = bundle_bytes(&manifest("fraud-x", 1), &[&w.publisher], MODEL_BYTES);
    assert!(matches!(
        verify(&w, &one, None),
        Err(VerifyError::BelowThreshold { have: 1, need: 2 })
    ));
    // The same key twice counts once.
    let twice = bundle_bytes(
        &manifest("fraud-x", 1),
        &[&w.publisher, &w.publisher],
        MODEL_BYTES,
    );
    assert!(matches!(
        verify(&w, &twice, None),
        Err(VerifyError::BelowThreshold { .. })
    ));
    let two = bundle_bytes(
        &manifest("fraud-x", 1),
        &[&w.publisher, &w.narrow],
        MODEL_BYTES,
    );
    assert!(verify(&w, &two, None).is_ok());
}

#[test]
fn expired_manifest_and_expired_trust_root() {
    let w = world();
    let mut m = manifest("m", 1);
    m.expires_at = Some(NOW);
    let b = bundle_bytes(&m, &[&w.publisher], MODEL_BYTES);
    assert!(matches!(
        verify(&w, &b, None),
        Err(VerifyError::Expired { .. })
    ));
    let good = bundle_bytes(&manifest("m", 1), &[&w.publisher], MODEL_BYTES);
    let later = w.trust.expires_at;
    assert!(matches!(
        bundle::verify(&w.trust, &good, later, None),
        Err(VerifyError::Trust(TrustError::Expired { .. }))
    ));
}

#[test]
fn version_rollback() {
    let w = world();
    let b = bundle_bytes(&manifest("m", 4), &[&w.publisher], MODEL_BYTES);
    assert!(matches!(
        verify(&w, &b, Some(5)),
        Err(VerifyError::Rollback {
            version: 4,
            highest_seen: 5
        })
    ));
    assert!(
        verify(&w, &b, Some(4)).is_ok(),
        "reinstalling the same version is allowed"
    );
}

#[test]
fn endless_data_and_short_data() {
    let w = world();
    let mut longer = MODEL_BYTES.to_vec();
    longer.extend_from_slice(b"and then some more");
    let b = bundle_bytes(&manifest("m", 1), &[&w.publisher], &longer);
    assert_eq!(verify(&w, &b, None), Err(VerifyError::TrailingData));
    let short = &MODEL_BYTES[..10];
    let b = bundle_bytes(&manifest("m", 1), &[&w.publisher], short);
    assert!(matches!(
        verify(&w, &b, None),
        Err(VerifyError::LengthMismatch { .. })
    ));
}

#[test]
fn endless_stream_is_cut_at_the_declared_length() {
    // A reader that never ends: verification must stop after len + 1 bytes.
    let w = world();
    let header = SignedManifest::sign(&manifest("m", 1), &[&w.publisher]);
    let preamble = header.to_preamble();
    let mut endless = std::io::Read::chain(
        std::io::Cursor::new([preamble, MODEL_BYTES.to_vec()].concat()),
        std::io::repeat(0x41),
    );
    let r = bundle::read_verified(&mut endless, &w.trust, NOW, None, |_, _| Ok(()));
    assert_eq!(r.unwrap_err(), VerifyError::TrailingData);
}

#[test]
fn unsafe_artifact_names_are_refused_even_when_signed() {
    let w = world();
    let mut m = manifest("m", 1);
    m.artifacts[0].name = "../../etc/passwd".into();
    let b = bundle_bytes(&m, &[&w.publisher], MODEL_BYTES);
    assert!(matches!(verify(&w, &b, None), Err(VerifyError::Invalid(_))));
}

#[test]
fn every_single_byte_flip_is_refused() {
    let w = world();
    let b = bundle_bytes(&manifest("fraud-eu", 2), &[&w.publisher], MODEL_BYTES);
    assert!(verify(&w, &b, None).is_ok());
    for i in 0..b.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = b.clone();
            t[i] ^= bit;
            assert!(
                verify(&w, &t, None).is_err(),
                "flip {bit:#x} at byte {i} accepted"
            );
        }
    }
}

#[test]
fn trust_root_threshold_and_rotation() {
    let w = world();
    let signed = SignedTrustRoot::sign(&w.trust, &[&w.roots[0], &w.roots[1]]);
    let bytes = signed.to_bytes();
    let opened = SignedTrustRoot::from_bytes(&bytes)
        .unwrap()
        .open(NOW)
        .unwrap();
    assert_eq!(opened, w.trust);

    let one = SignedTrustRoot::sign(&w.trust, &[&w.roots[0]]);
    assert!(matches!(
        one.open(NOW),
        Err(TrustError::BelowThreshold {
            have: 1,
            need: 2,
            ..
        })
    ));
    let dup = SignedTrustRoot::sign(&w.trust, &[&w.roots[0], &w.roots[0]]);
    assert!(matches!(
        dup.open(NOW),
        Err(TrustError::BelowThreshold { .. })
    ));
    assert!(matches!(
        signed.open(w.trust.expires_at),
        Err(TrustError::Expired { .. })
    ));

    // Rotation to new root keys: needs old and new thresholds.
    let new_keys = [key(20), key(21)];
    let mut next = w.trust.clone();
    next.version = 2;
    next.threshold = 1;
    next.root_keys = new_keys.iter().map(PublicKey::from_signing_key).collect();
    let only_new = SignedTrustRoot::sign(&next, &[&new_keys[0]]);
    assert!(only_new.open(NOW).is_ok(), "self-consistent");
    assert!(matches!(
        only_new.open_as_successor(&w.trust, NOW),
        Err(TrustError::BelowThreshold {
            which: "the previous root's",
            ..
        })
    ));
    let both = SignedTrustRoot::sign(&next, &[&new_keys[0], &w.roots[1], &w.roots[2]]);
    assert_eq!(both.open_as_successor(&w.trust, NOW).unwrap().version, 2);
    // Not newer.
    let mut same = w.trust.clone();
    same.expires_at += 1;
    let same = SignedTrustRoot::sign(&same, &[&w.roots[0], &w.roots[1]]);
    assert!(matches!(
        same.open_as_successor(&w.trust, NOW),
        Err(TrustError::NotNewer { .. })
    ));
}

#[test]
fn desired_state_replay_expiry_and_forgery() {
    use ferry_protocol::desired::{DesiredState, DesiredStateError, SignedDesiredState};
    let online = key(50);
    let pk = PublicKey::from_signing_key(&online);
    let doc = DesiredState {
        tenant: "acme".into(),
        device_id: "dev-1".into(),
        sequence: 7,
        issued_at: NOW,
        expires_at: NOW + 60,
        assignments: vec![],
    };
    let s = SignedDesiredState::sign(&doc, &online);
    assert_eq!(s.verify(&pk, "dev-1", NOW, Some(6)).unwrap(), doc);
    assert!(matches!(
        s.verify(&pk, "dev-1", NOW, Some(7)),
        Err(DesiredStateError::Replayed { .. })
    ));
    assert!(matches!(
        s.verify(&pk, "dev-1", NOW + 60, None),
        Err(DesiredStateError::Expired { .. })
    ));
    assert!(matches!(
        s.verify(&pk, "dev-2", NOW, None),
        Err(DesiredStateError::WrongDevice { .. })
    ));
    let forged = SignedDesiredState::sign(&doc, &key(51));
    assert_eq!(
        forged.verify(&pk, "dev-1", NOW, None),
        Err(DesiredStateError::BadSignature)
    );
}

fn arb_manifest() -> impl Strategy<Value = Manifest> {
    (
        "[a-z][a-z0-9_-]{0,20}",
        any::<u64>(),
        proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,16}", 0..4),
        proptest::collection::btree_map("[a-z]{1,8}", -1e6f64..1e6, 0..4),
        proptest::collection::vec((1u64..1 << 40, any::<[u8; 32]>()), 1..4),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(name, version, tags, metrics, arts, expires_at)| {
            let mut m = manifest(&name, version);
            m.tags = tags;
            m.metrics = metrics;
            m.expires_at = expires_at;
            m.artifacts = arts
                .into_iter()
                .enumerate()
                .map(|(i, (len, d))| ArtifactRef {
                    name: format!("a{i}.bin"),
                    len,
                    sha256: ferry_protocol::Digest(d),
                })
                .collect();
            m
        })
}

proptest! {
    #[test]
    fn manifest_round_trips(m in arb_manifest()) {
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        // Canonical: re-encoding gives the same bytes.
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn header_round_trips(m in arb_manifest(), seed in any::<u8>()) {
        let h = SignedManifest::sign(&m, &[&key(seed)]);
        let pre = h.to_preamble();
        let back = bundle::read_header(&mut &pre[..]).unwrap();
        prop_assert_eq!(back, h);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = bundle::read_header(&mut &bytes[..]);
        let _ = SignedTrustRoot::from_bytes(&bytes);
        let _ = ferry_protocol::frames::AgentFrame::decode(&bytes);
        let _ = ferry_protocol::frames::ServerFrame::decode(&bytes);
        let _ = Manifest::decode(&bytes);
    }
}
