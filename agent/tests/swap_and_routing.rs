//! Hot swap under load, rollback from the local store, A/B split with
//! stickiness, and shadow traffic, all over real loopback HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use common::{admin, http, infer_body, reference_rows, Conn, Keys, Served};
use ferry_agent::serving::{Agent, Role};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[test]
fn twenty_swaps_under_concurrent_load_drop_nothing_and_rollback_needs_no_download() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    // Alternate two different models so a swap really changes the plan.
    let bundles: Vec<_> = (1..=21)
        .map(|v| keys.bundle(if v % 2 == 0 { "bc_forest" } else { "bc_logreg" }, "m", v))
        .collect();
    agent.install(&bundles[0], Role::Champion, None).unwrap();
    let s = Served::start(agent.clone(), 1 << 20);
    let rows = reference_rows("bc_logreg");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, ok, addr) = (stop.clone(), ok.clone(), s.addr);
            let rows = rows.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).unwrap();
                let mut failures = Vec::new();
                let mut versions = BTreeMap::<String, u64>::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let body = infer_body(
                        &format!("c{c}-{i}"),
                        &rows[i % rows.len()..i % rows.len() + 1],
                    );
                    match conn.request("POST", "/v2/models/m/infer", &[], &body) {
                        Ok(r) if r.status == 200 => {
                            let v = r.json();
                            *versions
                                .entry(v["model_version"].as_str().unwrap().to_string())
                                .or_default() += 1;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!(
                            "{} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(e) => failures.push(e.to_string()),
                    }
                    i += 1;
                }
                (failures, versions)
            })
        })
        .collect();
    for b in &bundles[1..] {
        // Let some requests land on each version.
        let before = ok.load(Ordering::Relaxed);
        while ok.load(Ordering::Relaxed) < before + 20 {
            std::thread::yield_now();
        }
        agent.install(b, Role::Champion, None).unwrap();
    }
    let before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < before + 20 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let mut all_versions = BTreeMap::<String, u64>::new();
    for c in clients {
        let (failures, versions) = c.join().unwrap();
        assert!(
            failures.is_empty(),
            "requests failed during swaps: {failures:?}"
        );
        for (k, v) in versions {
            *all_versions.entry(k).or_default() += v;
        }
    }
    assert!(
        all_versions.len() >= 10,
        "requests saw too few versions: {all_versions:?}"
    );
    assert_eq!(agent.table().models["m"].champion.version(), 21);

    // Only the last 3 versions are kept on disk.
    let stored = std::fs::read_dir(data.path().join("models/m"))
        .unwrap()
        .count();
    assert_eq!(stored, 3);

    // Rollback uses the store: the operator's bundle files are gone.
    for b in &bundles {
        std::fs::remove_file(b).unwrap();
    }
    let r = admin(&s.admin, "POST", "/v1/models/m/rollback", b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["version"], 20);
    let v = http(
        s.addr,
        "POST",
        "/v2/models/m/infer",
        &infer_body("after", &rows[..1]),
    )
    .json();
    assert_eq!(v["model_version"], "20");
    assert_eq!(agent.rollback("m").unwrap().version, 19);
    let err = agent.rollback("m").unwrap_err();
    assert_eq!(err.code(), "no_previous_version", "{err}");

    // An older bundle than the highest seen is refused (anti-rollback);
    // only the explicit rollback goes backwards.
    let old = keys.bundle("bc_logreg", "m", 5);
    let err = agent.install(&old, Role::Champion, None).unwrap_err();
    assert_eq!(err.code(), "rollback", "{err}");
}

#[test]
fn ab_split_is_close_to_the_ratio_and_sticky() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    agent
        .install(&keys.bundle("bc_logreg", "m", 1), Role::Champion, None)
        .unwrap();
    agent
        .install(
            &keys.bundle("bc_forest", "m", 2),
            Role::Challenger,
            Some(0.3),
        )
        .unwrap();
    let s = Served::start(agent.clone(), 1 << 20);
    let rows = reference_rows("bc_logreg");
    let mut conn = Conn::open(s.addr).unwrap();
    let n = 2000;
    let mut challenger = 0;
    for i in 0..n {
        let r = conn
            .request(
                "POST",
                "/v2/models/m/infer",
                &[],
                &infer_body(&format!("user-{i}"), &rows[..1]),
            )
            .unwrap();
        assert_eq!(r.status, 200);
        if r.json()["model_version"] == "2" {
            challenger += 1;
        }
    }
    // Binomial sd at p=0.3, n=2000 is 0.0102; allow 5 sd.
    let share = f64::from(challenger) / f64::from(n);
    assert!((share - 0.3).abs() < 0.051, "challenger share {share}");

    // Stickiness: the same id, routing key or header always gets the same
    // version.
    for i in 0..50 {
        let id = format!("user-{i}");
        let first = conn
            .request(
                "POST",
                "/v2/models/m/infer",
                &[],
                &infer_body(&id, &rows[..1]),
            )
            .unwrap()
            .json()["model_version"]
            .clone();
        for _ in 0..5 {
            let again = conn
                .request(
                    "POST",
                    "/v2/models/m/infer",
                    &[],
                    &infer_body(&id, &rows[..1]),
                )
                .unwrap()
                .json();
            assert_eq!(again["model_version"], first, "{id} switched variant");
        }
        // The routing key wins over the id.
        let key = format!("account-{i}");
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..5 {
            let body = serde_json::json!({
                "id": format!("{key}-req-{k}"),
                "parameters": {"routing_key": key},
                "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": rows[0]}]
            });
            let v = conn
                .request(
                    "POST",
                    "/v2/models/m/infer",
                    &[],
                    body.to_string().as_bytes(),
                )
                .unwrap()
                .json();
            seen.insert(v["model_version"].as_str().unwrap().to_string());
            let h = conn
                .request(
                    "POST",
                    "/v2/models/m/infer",
                    &[("x-ferry-routing-key", &key)],
                    &infer_body(&format!("h-{k}"), &rows[..1]),
                )
                .unwrap()
                .json();
            seen.insert(h["model_version"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{key} was split across variants: {seen:?}");
    }
    let m = String::from_utf8(http(s.addr, "GET", "/metrics", b"").body).unwrap();
    assert!(
        m.contains(r#"variant="challenger""#) && m.contains(r#"variant="champion""#),
        "{m}"
    );
}

#[test]
fn shadow_sees_every_request_and_never_answers() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    agent
        .install(&keys.bundle("bc_logreg", "m", 1), Role::Champion, None)
        .unwrap();
    agent
        .install(&keys.bundle("bc_forest", "m", 2), Role::Shadow, None)
        .unwrap();
    let s = Served::start(agent.clone(), 1 << 20);
    let rows = reference_rows("bc_logreg");
    let mut conn = Conn::open(s.addr).unwrap();
    let n = 100;
    for i in 0..n {
        let r = conn
            .request(
                "POST",
                "/v2/models/m/infer",
                &[],
                &infer_body(&format!("s-{i}"), &rows[i % 20..i % 20 + 1]),
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["model_version"], "1", "the shadow answered");
    }
    // Shadow runs off the request path; wait until its records are in.
    let shadow_records = || {
        agent
            .log
            .read_from(0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|(_, e)| matches!(e, ferry_agent::inference_log::Entry::Inference(r) if r.variant == "shadow"))
            .count()
    };
    let mut waited = 0;
    while shadow_records() < n && waited < 3000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    assert_eq!(shadow_records(), n);
    let records = agent.log.read_from(0, 10_000).unwrap();
    let shadow: Vec<_> = records
        .iter()
        .filter_map(|(_, e)| match e {
            ferry_agent::inference_log::Entry::Inference(r) if r.variant == "shadow" => Some(r),
            _ => None,
        })
        .collect();
    assert!(shadow
        .iter()
        .all(|r| r.version == 2 && r.outputs.len() == 2 && r.error.is_none()));
    assert!(shadow
        .iter()
        .any(|r| r.request_id.as_deref() == Some("s-7")));
    let m = String::from_utf8(http(s.addr, "GET", "/metrics", b"").body).unwrap();
    assert!(
        m.contains(&format!(
            r#"ferry_inference_requests_total{{model="m",version="2",variant="shadow"}} {n}"#
        )),
        "{m}"
    );
    // Stopping the shadow.
    assert_eq!(
        admin(&s.admin, "DELETE", "/v1/models/m/shadow", b"").status,
        200
    );
    assert!(agent.table().models["m"].shadow.is_none());
}

/// Activations, refusals, rollbacks and unloads reach the event sink (the
/// telemetry events topic), in order; those before the sink was set are
/// held and delivered first.
#[test]
fn activation_path_events_reach_the_sink_in_order() {
    use ferry_agent::serving::DeviceEvent;
    use std::sync::Mutex;
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    let v1 = keys.bundle("bc_logreg", "m", 1);
    let v2 = keys.bundle("bc_logreg", "m", 2);
    // Held: no sink yet (side-loads run before telemetry starts).
    agent.install(&v1, Role::Champion, None).unwrap();
    let got = Arc::new(Mutex::new(Vec::<DeviceEvent>::new()));
    let g = got.clone();
    agent.set_event_sink(Arc::new(move |e| g.lock().unwrap().push(e)));
    agent.install(&v2, Role::Champion, None).unwrap();
    let mut tampered = std::fs::read(&v2).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let bad = data.path().join("tampered.ferry");
    std::fs::write(&bad, &tampered).unwrap();
    assert!(agent.install(&bad, Role::Champion, None).is_err());
    agent.rollback("m").unwrap();
    agent.unload("m").unwrap();
    let got = got.lock().unwrap().clone();
    let kinds: Vec<_> = got
        .iter()
        .map(|e| (e.kind, e.model.clone(), e.version))
        .collect();
    let m = || Some("m".to_string());
    assert_eq!(
        kinds,
        vec![
            ("activated", m(), Some(1)),
            ("activated", m(), Some(2)),
            ("refused", None, None),
            ("rolled_back", m(), Some(1)),
            ("unloaded", m(), None),
        ]
    );
    assert_eq!(got[0].detail, "champion");
    assert_eq!(got[1].detail, "champion, previous v1");
    assert!(got[2].detail.contains(':'), "{}", got[2].detail);
    assert_eq!(got[3].detail, "from v2");
}

/// A label fed back for a request counts for every variant that predicted
/// it: the champion's answer and the shadow's copy each get it (a shadow
/// finishing last used to take the champion's label away).
#[test]
fn a_label_counts_for_the_champion_and_for_the_shadow() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    agent
        .install(&keys.bundle("bc_logreg", "m", 1), Role::Champion, None)
        .unwrap();
    agent
        .install(&keys.bundle("bc_forest", "m", 2), Role::Shadow, None)
        .unwrap();
    agent
        .telemetry
        .enable(ferry_agent::telemetry::WindowConfig {
            rows: 1_000_000,
            secs: 0,
        });
    let s = Served::start(agent.clone(), 1 << 20);
    let rows = reference_rows("bc_logreg");
    let mut conn = Conn::open(s.addr).unwrap();
    let n = 40;
    let mut labels = Vec::new();
    for i in 0..n {
        let r = conn
            .request(
                "POST",
                "/v2/models/m/infer",
                &[],
                &infer_body(&format!("l-{i}"), &rows[i % 20..i % 20 + 1]),
            )
            .unwrap();
        assert_eq!(r.status, 200);
        labels.push(r.json()["outputs"][0]["data"][0].clone());
    }
    // The shadow's copies run off the request path: wait for their records
    // (written after the telemetry counted them).
    let shadow_records = || {
        agent
            .log
            .read_from(0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|(_, e)| matches!(e, ferry_agent::inference_log::Entry::Inference(r) if r.variant == "shadow"))
            .count()
    };
    let mut waited = 0;
    while shadow_records() < n && waited < 3000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    assert_eq!(shadow_records(), n);
    // Label every request with the champion's own answer.
    for (i, label) in labels.iter().enumerate() {
        let body = serde_json::json!({"id": format!("l-{i}"), "label": label}).to_string();
        let r = conn
            .request("POST", "/v2/models/m/feedback", &[], body.as_bytes())
            .unwrap();
        assert_eq!(r.status, 200);
    }
    agent.telemetry.close_all(u64::MAX / 2);
    let closed = agent.telemetry.take_closed();
    let of = |variant: &str| closed.iter().find(|w| w.variant == variant).unwrap();
    let (champion, shadow) = (of("champion"), of("shadow"));
    assert_eq!((champion.labelled, champion.correct), (n as u64, n as u64));
    assert_eq!(shadow.labelled, n as u64, "the shadow got every label too");
    assert!(shadow.correct <= shadow.labelled);
}
