//! A signed desired state may send a device back to a version it served
//! as champion and still holds (restored from its store, no download), and
//! to nothing else; a replayed older document cannot downgrade it.

use super::*;

#[test]
fn a_desired_state_sends_a_device_back_to_a_version_it_holds_and_no_other() {
    let mut p = pair();
    let a1 = p.server.publish("fraud", 1, true);
    let a2 = p.server.publish("fraud", 2, true);
    p.server.deploy(&a1);
    p.connect();
    // A validly signed document assigning v1, kept by an attacker.
    let old = p.server.desired(p.now);
    p.server.deploy(&a2);
    p.push();
    assert_eq!(p.device.version("fraud"), Some(2));
    // Replayed, it is refused (lower sequence): no downgrade.
    p.deliver(&old);
    assert_eq!(p.device.version("fraud"), Some(2));
    assert_eq!(
        p.server.desired_refusals(),
        vec!["replayed_desired_state".to_string()]
    );
    let fetches = p.server.fetches.len();
    // A rollout's rollback: v1 again, restored from the device, no download,
    // and reported again although v1 was reported earlier in this session.
    p.server.deploy(&a1);
    p.push();
    assert_eq!(p.device.version("fraud"), Some(1));
    assert_eq!(p.server.fetches.len(), fetches, "nothing downloaded");
    assert_eq!(
        p.server.reports(),
        vec![
            ("fraud".into(), 1, "activated"),
            ("fraud".into(), 2, "activated"),
            ("fraud".into(), 1, "activated"),
        ]
    );
    // A version below the serving one that the device never ran is refused
    // (not fetched), reported, and what serves keeps serving.
    let c5 = p.server.publish("churn", 5, true);
    let c3 = p.server.publish("churn", 3, true);
    p.server.deploy(&c5);
    p.push();
    p.server.deploy(&c3);
    p.push();
    assert_eq!(p.device.version("churn"), Some(5));
    assert!(!p
        .server
        .fetches
        .iter()
        .any(|(d, _)| *d == c3.manifest_digest));
    assert_eq!(
        p.server.reports().last(),
        Some(&("churn".to_string(), 3, "refused"))
    );
}
