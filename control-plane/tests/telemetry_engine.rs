//! The telemetry engine on a real store (SQLite and PostgreSQL) with a
//! clock the test controls: validation and refusals, signatures of the
//! enrolled devices, de-duplication, drift alerts with their cooldown,
//! other alert kinds, and the time-based retraining trigger firing on
//! schedule — without sleeping minutes.
#![allow(clippy::unwrap_used)]

mod support;

use ferry::audit::{AuditEntry, OUTCOME_OK};
use ferry::store::device_index::{DeviceOrder, DevicePageQuery};
use ferry::store::fleet::Device;
use ferry::store::{AuditQuery, Store};
use ferry::telemetry::admission::Refusal;
use ferry::telemetry::engine::{save_policy, Clock, Engine, IngestError};
use ferry::telemetry::policy::DriftPolicy;
use ferry_protocol::telemetry::{
    sign_payload, ClosedBy, DriftSummary, Health, Predictions, TelemetrySigError,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Backend;

const T0: u64 = 1_795_449_360_000; // 2026-11-23 15:56:00 UTC, ms

struct Fx {
    _dir: tempfile::TempDir,
    /// Keeps a PostgreSQL test database alive.
    _db: Backend,
    store: Store,
    now: Arc<AtomicU64>,
    engine: Arc<Engine>,
}

async fn fx(b: Backend) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let url = match &b {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
        Backend::Postgres(db) => db.url.clone(),
    };
    let now = Arc::new(AtomicU64::new(T0));
    let n = now.clone();
    let clock: Clock = Arc::new(move || n.load(Ordering::SeqCst));
    // The store stamps audit records on the same clock as the engine.
    let store = Store::connect_with(&url, 4, clock.clone()).await.unwrap();
    assert_eq!(
        store.migrations().await.unwrap(),
        (1..=ferry::store::MIGRATION_COUNT as i64).collect::<Vec<_>>()
    );
    // The devices the tests publish as, enrolled with their keys.
    for d in ["d1", "d2", "d3"] {
        let device = device(d);
        let pk = key(d).verifying_key().to_bytes();
        store
            .enroll_device(&device, &format!("fp-{d}"), &pk, entry("device.enroll"))
            .await
            .unwrap();
    }
    // The webhook receivers of these tests listen on loopback, which
    // webhooks may only reach when the operator allows it.
    ferry::telemetry::webhook::allow_networks(&["127.0.0.0/8".into()]).unwrap();
    let engine = Engine::new(store.clone(), clock);
    Fx {
        _dir: dir,
        _db: b,
        store,
        now,
        engine,
    }
}

/// Each test device's key.
fn key(device: &str) -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    seed[..device.len()].copy_from_slice(device.as_bytes());
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// `value` as `device` publishes it: JSON signed with its key.
fn signed<T: serde::Serialize>(device: &str, kind: &str, value: &T) -> Vec<u8> {
    sign_payload(kind, &serde_json::to_vec(value).unwrap(), &key(device)).unwrap()
}

/// Device `id` of tenant `acme`, named after its id, unlabelled.
fn device(id: &str) -> Device {
    Device {
        id: id.into(),
        tenant: "acme".into(),
        hostname: id.into(),
        labels: Default::default(),
        created_at: 0,
        revoked_at: None,
        last_seen: None,
        session_until: None,
        runtimes: None,
    }
}

fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        tenant: "acme".into(),
        request_id: "t".into(),
        actor: "test".into(),
        action: action.into(),
        target: "m".into(),
        outcome: OUTCOME_OK.into(),
        detail: String::new(),
    }
}

fn summary(device: &str, seq: u64, psi: &[f64], rows: u64) -> DriftSummary {
    let n = psi.len();
    DriftSummary {
        schema: 1,
        tenant: "acme".into(),
        device: device.into(),
        seq,
        model: "m".into(),
        version: 3,
        variant: "champion".into(),
        window_start_ms: T0,
        window_end_ms: T0 + 1000,
        closed_by: ClosedBy::Rows,
        rows,
        features: (0..n).map(|i| format!("f{i}")).collect(),
        psi: psi.iter().map(|p| Some(*p)).collect(),
        missing: vec![0; n],
        out_of_range: vec![0; n],
        predictions: Predictions {
            output: "label".into(),
            classes: [
                ("0".to_string(), rows / 2),
                ("1".to_string(), rows - rows / 2),
            ]
            .into(),
            numeric: None,
        },
        latency_us: vec![0; 12],
        latency_p50_us: 100,
        latency_p99_us: 250,
        errors: 0,
        requests: rows,
        labelled: 0,
        correct: 0,
    }
}

async fn put(e: &Engine, s: &DriftSummary) -> ferry::telemetry::engine::Outcome {
    e.ingest(
        &format!("ferry/v1/{}/{}/drift", s.tenant, s.device),
        &signed(&s.device, "drift", s),
    )
    .await
    .unwrap()
}

fn receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut b = vec![0; len];
            r.read_exact(&mut b).unwrap();
            g.lock().unwrap().push(b);
            let mut w = s;
            let _ = w.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

async fn wait_hooks(got: &Arc<Mutex<Vec<Vec<u8>>>>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "webhook not received");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bad_messages_are_refused_with_reasons(b: Backend) {
    let f = fx(b).await;
    let e = &f.engine;
    let good = signed("d1", "drift", &summary("d1", 1, &[0.1], 10));
    let r = e.ingest("ferry/v1/acme/d1/nonsense", &good).await;
    assert!(matches!(r, Err(IngestError::Topic(_))), "{r:?}");
    // d2 signs a summary naming d1, on its own topic.
    let r = e
        .ingest(
            "ferry/v1/acme/d2/drift",
            &signed("d2", "drift", &summary("d1", 1, &[0.1], 10)),
        )
        .await;
    assert!(matches!(r, Err(IngestError::Mismatch { .. })), "{r:?}");
    let r = e
        .ingest(
            "ferry/v1/acme/d1/drift",
            &sign_payload("drift", b"{not json}", &key("d1")).unwrap(),
        )
        .await;
    assert!(matches!(r, Err(IngestError::Invalid { .. })), "{r:?}");
    let mut bad = summary("d1", 1, &[0.1, 0.2], 10);
    bad.psi.pop();
    let r = e
        .ingest("ferry/v1/acme/d1/drift", &signed("d1", "drift", &bad))
        .await;
    assert!(matches!(r, Err(IngestError::Invalid { .. })), "{r:?}");
    let mut neg = summary("d1", 1, &[-0.5], 10);
    neg.schema = 1;
    let r = e
        .ingest("ferry/v1/acme/d1/drift", &signed("d1", "drift", &neg))
        .await;
    assert!(matches!(r, Err(IngestError::Invalid { .. })), "{r:?}");
    // Not the device: unsigned, signed by another device, a device the
    // tenant does not have, a drift signature replayed as an event.
    let plain = serde_json::to_vec(&summary("d1", 1, &[0.1], 10)).unwrap();
    let r = e.ingest("ferry/v1/acme/d1/drift", &plain).await;
    assert!(
        matches!(
            r,
            Err(IngestError::Refused(Refusal::Signature(
                TelemetrySigError::Unsigned
            )))
        ),
        "{r:?}"
    );
    let r = e
        .ingest(
            "ferry/v1/acme/d1/drift",
            &signed("d2", "drift", &summary("d1", 1, &[0.1], 10)),
        )
        .await;
    assert!(
        matches!(
            r,
            Err(IngestError::Refused(Refusal::Signature(
                TelemetrySigError::BadSignature
            )))
        ),
        "{r:?}"
    );
    let r = e.ingest("ferry/v1/other/d1/drift", &good).await;
    assert!(
        matches!(r, Err(IngestError::Refused(Refusal::UnknownDevice { .. }))),
        "{r:?}"
    );
    let r = e.ingest("ferry/v1/acme/d1/events", &good).await;
    assert!(matches!(r, Err(IngestError::Refused(_))), "{r:?}");
    assert_eq!(e.counters.unauthenticated.load(Ordering::Relaxed), 4);
    // Four refusals of d1's topic in one minute: one audit record.
    let refusals = f
        .store
        .audit_list(
            "acme",
            &AuditQuery {
                action: Some("telemetry.refuse".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let r = e
        .ingest("ferry/v1/acme/d1/drift", &vec![b' '; 70_000])
        .await;
    assert!(matches!(r, Err(IngestError::TooLarge(_))), "{r:?}");
    // The good one is stored once; its redelivery is a no-op.
    let o = e.ingest("ferry/v1/acme/d1/drift", &good).await.unwrap();
    assert!(o.stored && !o.duplicate);
    let o = e.ingest("ferry/v1/acme/d1/drift", &good).await.unwrap();
    assert!(o.duplicate);
}

async fn one_drift_episode_fires_one_alert_and_one_trigger(b: Backend) {
    let f = fx(b).await;
    let (url, hooks) = receiver();
    save_policy(
        &f.store,
        "acme",
        "m",
        &DriftPolicy {
            min_drifted_rows: 150,
            cooldown_secs: 600,
            webhook_url: Some(url),
            webhook_secret: Some("k".into()),
            ..Default::default()
        },
        entry("drift_policy.set"),
    )
    .await
    .unwrap();
    let e = &f.engine;
    // Under the threshold: nothing.
    let o = put(e, &summary("d1", 1, &[0.1, 0.29], 100)).await;
    assert!(o.alerts.is_empty());
    // Drifted, but 100 drifted rows < 150: no alert yet.
    let o = put(e, &summary("d1", 2, &[0.1, 0.9], 100)).await;
    assert!(o.alerts.is_empty(), "{o:?}");
    // Another device's drifted rows complete the count: alert + trigger.
    let o = put(e, &summary("d2", 1, &[0.5, 0.1], 100)).await;
    assert_eq!(o.alerts.len(), 1, "{o:?}");
    assert_eq!(o.triggers.len(), 1);
    // The same episode continues: no new alert within the cooldown.
    f.now.fetch_add(300_000, Ordering::SeqCst);
    let o = put(e, &summary("d1", 3, &[0.1, 0.9], 100)).await;
    assert!(o.alerts.is_empty() && o.triggers.is_empty(), "{o:?}");
    wait_hooks(&hooks, 1).await;
    let body: serde_json::Value = serde_json::from_slice(&hooks.lock().unwrap()[0]).unwrap();
    assert_eq!(body["reason"], "drift");
    assert_eq!(body["version"], 3);
    assert_eq!(body["evidence"]["drifted_rows"], 200);
    // After the cooldown, a drift still going on fires again.
    f.now.fetch_add(600_000, Ordering::SeqCst);
    let o = put(e, &summary("d1", 4, &[0.1, 0.9], 200)).await;
    assert_eq!((o.alerts.len(), o.triggers.len()), (1, 1), "{o:?}");
    wait_hooks(&hooks, 2).await;
    let audit = f
        .store
        .audit_list(
            "acme",
            &AuditQuery {
                action: Some("retrain.trigger".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(audit.len(), 2);
}

async fn feature_selection_and_fleet_fraction(b: Backend) {
    let f = fx(b).await;
    save_policy(
        &f.store,
        "acme",
        "m",
        &DriftPolicy {
            features: vec!["f0".into()],
            min_drifted_rows: 1,
            aggregation: ferry::telemetry::policy::Aggregation::FleetFraction,
            fleet_fraction: 0.5,
            ..Default::default()
        },
        entry("drift_policy.set"),
    )
    .await
    .unwrap();
    let e = &f.engine;
    // f1 drifts but is not watched.
    assert!(put(e, &summary("d1", 1, &[0.1, 0.9], 50))
        .await
        .alerts
        .is_empty());
    put(e, &summary("d2", 1, &[0.1, 0.1], 50)).await;
    put(e, &summary("d3", 1, &[0.1, 0.1], 50)).await;
    // 1 of 3 devices drifted on f0: under half the fleet.
    assert!(put(e, &summary("d1", 2, &[0.9, 0.1], 50))
        .await
        .alerts
        .is_empty());
    // 2 of 3: alert.
    let o = put(e, &summary("d2", 2, &[0.8, 0.1], 50)).await;
    assert_eq!(o.alerts.len(), 1, "{o:?}");
}

async fn other_alert_kinds(b: Backend) {
    let f = fx(b).await;
    save_policy(
        &f.store,
        "acme",
        "m",
        &DriftPolicy {
            latency_p99_us_threshold: 1000,
            // The operator's reference: half and half.
            prediction_reference: Some([("0".to_string(), 1), ("1".to_string(), 1)].into()),
            ..Default::default()
        },
        entry("drift_policy.set"),
    )
    .await
    .unwrap();
    let e = &f.engine;
    let mut s = summary("d1", 1, &[0.0, 0.0], 100);
    s.errors = 10;
    s.latency_p99_us = 2500;
    s.missing = vec![30, 0];
    let o = put(e, &s).await;
    assert_eq!(o.alerts.len(), 3, "{o:?}");
    let mut s = summary("d1", 2, &[0.0, 0.0], 100);
    s.predictions.classes = [("1".to_string(), 100)].into();
    let o = put(e, &s).await;
    assert_eq!(o.alerts.len(), 1, "prediction shift: {o:?}");
    let h = Health {
        schema: 1,
        tenant: "acme".into(),
        device: "d1".into(),
        status: "online".into(),
        at_ms: T0,
        agent_version: "0".into(),
        serving: vec![],
        outbox_depth: 0,
        outbox_dropped: 0,
        published: 0,
        mqtt_protocol: Some(5),
        trust_root_expires_in: Some(30 * 86_400),
        arch: Some("aarch64-linux".into()),
    };
    let topic = "ferry/v1/acme/d1/health";
    assert!(e
        .ingest(topic, &signed("d1", "health", &h))
        .await
        .unwrap()
        .alerts
        .is_empty());
    let off = Health {
        status: "offline".into(),
        at_ms: 0,
        ..h
    };
    let o = e
        .ingest(topic, &signed("d1", "health", &off))
        .await
        .unwrap();
    assert_eq!(o.alerts.len(), 1, "device offline: {o:?}");
    // The retained offline message seen again is not a new alert.
    let o = e
        .ingest(topic, &signed("d1", "health", &off))
        .await
        .unwrap();
    assert!(o.alerts.is_empty());

    // What the dashboard's device page reads, newest first and paged.
    let h = f
        .store
        .device_health_of("acme", "d1")
        .await
        .unwrap()
        .unwrap();
    assert!(h.payload.contains("aarch64-linux"), "{}", h.payload);
    assert_eq!(h.status, "offline");
    assert!(f
        .store
        .device_health_of("acme", "d2")
        .await
        .unwrap()
        .is_none());
    let w = f
        .store
        .device_windows("acme", "d1", None, 0, 1)
        .await
        .unwrap();
    assert_eq!((w.len(), w[0].0.as_str(), w[0].1.seq), (1, "m", 2));
    let w = f
        .store
        .device_windows("acme", "d1", Some("m"), 1, 10)
        .await
        .unwrap();
    assert_eq!(w.iter().map(|(_, r)| r.seq).collect::<Vec<_>>(), [1]);
    assert!(f
        .store
        .device_windows("acme", "d1", Some("x"), 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        f.store.device_window_models("acme", "d1").await.unwrap(),
        ["m"]
    );
    for seq in [10, 11, 12] {
        f.store
            .insert_device_event("acme", "d1", seq, T0 as i64 + seq, "activated", "{}")
            .await
            .unwrap();
    }
    let seqs =
        |v: Vec<ferry::store::telemetry::EventRow>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(f.store.device_events("acme", "d1", 0, 2).await.unwrap()),
        [12, 11]
    );
    assert_eq!(
        seqs(f.store.device_events("acme", "d1", 2, 2).await.unwrap()),
        [10]
    );
    assert!(f
        .store
        .device_events("acme", "d2", 0, 2)
        .await
        .unwrap()
        .is_empty());
    assert!(f
        .store
        .device_model_reports("acme", None)
        .await
        .unwrap()
        .is_empty());
    f.store
        .report_device_model("d1", "m", 3, "active", "", entry("device.activate"))
        .await
        .unwrap();
    let r = f
        .store
        .device_model_reports("acme", Some("d1"))
        .await
        .unwrap();
    assert_eq!(
        (r.len(), r[0].version, r[0].state.as_str()),
        (1, 3, "active")
    );
    assert_eq!(f.store.device_model_reports("acme", None).await.unwrap(), r);
    assert!(f
        .store
        .device_model_reports("acme", Some("d2"))
        .await
        .unwrap()
        .is_empty());
}

async fn time_based_trigger_fires_on_schedule_with_a_controlled_clock(b: Backend) {
    let f = fx(b).await;
    let (url, hooks) = receiver();
    save_policy(
        &f.store,
        "acme",
        "m",
        &DriftPolicy {
            retrain_schedule: Some("0 * * * *".into()), // hourly, on the hour
            webhook_url: Some(url),
            ..Default::default()
        },
        entry("drift_policy.set"),
    )
    .await
    .unwrap();
    let e = &f.engine;
    // 15:56: the schedule is first seen; nothing is due.
    assert!(e.tick().await.unwrap().is_empty());
    f.now.store(T0 + 3 * 60_000, Ordering::SeqCst); // 15:59
    assert!(e.tick().await.unwrap().is_empty());
    f.now.store(T0 + 4 * 60_000, Ordering::SeqCst); // 16:00
    let fired = e.tick().await.unwrap();
    assert_eq!(fired.len(), 1);
    // The same slot never fires twice.
    f.now.store(T0 + 30 * 60_000, Ordering::SeqCst);
    assert!(e.tick().await.unwrap().is_empty());
    // 17:00 is the next.
    f.now.store(T0 + 64 * 60_000, Ordering::SeqCst);
    assert_eq!(e.tick().await.unwrap().len(), 1);
    wait_hooks(&hooks, 2).await;
    // Deliveries run concurrently: compare the slots, not arrival order.
    let bodies: Vec<serde_json::Value> = hooks
        .lock()
        .unwrap()
        .iter()
        .map(|h| serde_json::from_slice(h).unwrap())
        .collect();
    let mut due: Vec<u64> = bodies
        .iter()
        .map(|b| b["evidence"]["due_at_ms"].as_u64().unwrap())
        .collect();
    due.sort_unstable();
    assert_eq!(due, [T0 + 4 * 60_000, T0 + 64 * 60_000]);
    for body in &bodies {
        assert_eq!(body["reason"], "schedule");
        assert_eq!(body["evidence"]["schedule"], "0 * * * *");
    }
}

/// The fleet listing's two reads: every unrevoked device's keys (with when
/// its health arrived), the devices running a model (an active report, or
/// health naming it; LIKE's wildcards in a name match only themselves),
/// then the rows of the page shown.
async fn fleet_listing_reads_keys_then_the_page(b: Backend) {
    let f = fx(b).await;
    let s = &f.store;
    let health = |serving: &[&str]| {
        serde_json::json!({
            "schema": 1, "tenant": "acme", "device": "d", "status": "online",
            "at_ms": 1, "agent_version": "0.1.0", "serving": serving
        })
        .to_string()
    };
    s.put_device_health(
        "acme",
        "d1",
        "online",
        1,
        &health(&["fraud@2/champion"]),
        5_000,
    )
    .await
    .unwrap();
    s.put_device_health(
        "acme",
        "d2",
        "online",
        1,
        &health(&["fraudyx@1/champion"]),
        6_000,
    )
    .await
    .unwrap();
    s.report_device_model("d3", "fraud_x", 1, "active", "", entry("device.report"))
        .await
        .unwrap();
    s.report_device_model("d2", "fraud", 1, "failed", "bad", entry("device.report"))
        .await
        .unwrap();
    s.revoke_device("acme", "d3", entry("device.revoke"))
        .await
        .unwrap();

    let mut keys = s.device_keys("acme", true).await.unwrap();
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    let got: Vec<(&str, Option<i64>)> = keys
        .iter()
        .map(|k| (k.id.as_str(), k.health_at_ms))
        .collect();
    assert_eq!(
        got,
        [("d1", Some(5_000)), ("d2", Some(6_000))],
        "d3 is revoked"
    );
    assert!(s.device_keys("acme", false).await.unwrap()[0]
        .health_at_ms
        .is_none());
    assert!(s.device_keys("other", true).await.unwrap().is_empty());

    // The default view, paged by the database: by host, labels matched
    // exactly (a value's prefix, another key's value, a quoted look-alike
    // inside a value, or another case do not match).
    let labels = |pairs: &[(&str, &str)]| -> ferry::store::fleet::Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    s.set_device_labels(
        "acme",
        "d1",
        &labels(&[("site", "site-07"), ("note", r#"a "site":"x""#)]),
        entry("device.labels"),
    )
    .await
    .unwrap();
    s.set_device_labels(
        "acme",
        "d2",
        &labels(&[("site", "site-0"), ("tier", "site")]),
        entry("device.labels"),
    )
    .await
    .unwrap();
    let page = |l: &[(&str, &str)], offset: i64, limit: i64| {
        let l: Vec<(String, String)> = l
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        async move {
            let q = DevicePageQuery {
                labels: l,
                connected: None,
                order: DeviceOrder::Host,
            };
            s.device_page("acme", &q, T0 as i64, offset, limit)
                .await
                .unwrap()
        }
    };
    let ids = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
    assert_eq!(page(&[], 0, 10).await, (2, ids(&["d1", "d2"])));
    assert_eq!(page(&[], 1, 10).await, (2, ids(&["d2"])));
    assert_eq!(page(&[], 0, 1).await, (2, ids(&["d1"])));
    assert_eq!(page(&[("site", "site-0")], 0, 10).await, (1, ids(&["d2"])));
    assert_eq!(page(&[("site", "site-07")], 0, 10).await, (1, ids(&["d1"])));
    assert_eq!(page(&[("site", "SITE-0")], 0, 10).await.0, 0);
    assert_eq!(page(&[("site", "x")], 0, 10).await.0, 0);
    assert_eq!(
        page(&[("tier", "site"), ("site", "site-0")], 0, 10).await.0,
        1
    );
    assert_eq!(
        page(&[("tier", "site"), ("site", "site-07")], 0, 10)
            .await
            .0,
        0
    );

    assert_eq!(
        s.devices_with_active("acme", "fraud_x").await.unwrap(),
        ["d3"]
    );
    assert!(s
        .devices_with_active("acme", "fraud")
        .await
        .unwrap()
        .is_empty());
    let near: Vec<String> = s
        .device_health_containing("acme", "\"fraud_x@")
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.device)
        .collect();
    assert!(near.is_empty(), "`_` matched a character: {near:?}");
    let caller = ferry::registry::Caller {
        tenant: "acme".into(),
        actor: "test".into(),
        request_id: "t".into(),
    };
    assert_eq!(
        ferry::telemetry::service::devices_serving(s, &caller, "fraud")
            .await
            .unwrap(),
        ["d1"]
    );

    let ids = ["d2".to_string(), "d1".to_string(), "gone".to_string()];
    let mut devs: Vec<String> = s
        .devices_by_id("acme", &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    devs.sort();
    assert_eq!(devs, ["d1", "d2"]);
    assert!(s.devices_by_id("other", &ids).await.unwrap().is_empty());
    assert_eq!(
        s.device_health_of_each("acme", &ids).await.unwrap().len(),
        2
    );
    let reports = s.device_model_reports_of_each("acme", &ids).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].device.as_str(), reports[0].state.as_str()),
        ("d2", "failed")
    );
    assert!(s.devices_by_id("acme", &[]).await.unwrap().is_empty());
}

/// Connection and last-heard-of in the database: a replica's session lease
/// (opened, renewed, lapsed, closed; a stale session's end leaves a newer
/// one alone), the listing filtered by connection and ordered by session
/// then last heard of (QUIC or MQTT) in SQL, and the device generation
/// that every enrollment, label change and revocation bumps.
async fn sessions_and_last_heard_page_in_the_database(b: Backend) {
    let f = fx(b).await;
    let s = &f.store;
    let now = |ms: u64| f.now.store(T0 + ms, Ordering::SeqCst);
    let g0 = s.device_generation("acme").await.unwrap();
    assert!(g0 >= 3, "three enrollments: {g0}");
    assert_eq!(s.device_generation("other").await.unwrap(), 0);
    for d in ["d4", "d5"] {
        s.enroll_device(
            &device(d),
            &format!("fp-{d}"),
            &[0; 32],
            entry("device.enroll"),
        )
        .await
        .unwrap();
    }
    s.revoke_device("acme", "d3", entry("device.revoke"))
        .await
        .unwrap();
    let labels: ferry::store::fleet::Labels = [("site".to_string(), "b".to_string())].into();
    s.set_device_labels("acme", "d5", &labels, entry("device.labels"))
        .await
        .unwrap();
    assert_eq!(s.device_generation("acme").await.unwrap(), g0 + 4);
    // Each change stamped the device it changed: d4 enrolled (g0 + 1), d5
    // enrolled and relabelled (g0 + 2, then + 4), d3 revoked (g0 + 3).
    let since = |g: i64| async move {
        let v: Vec<String> = s
            .devices_changed_after("acme", g)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        v.join(" ")
    };
    assert_eq!(since(g0).await, "d3 d4 d5");
    assert_eq!(since(g0 + 1).await, "d3 d5");
    assert_eq!(since(g0 + 3).await, "d5");
    assert_eq!(since(g0 + 4).await, "");
    // Neither sight nor health changes which devices there are.
    s.touch_device("d1").await.unwrap();
    s.put_device_health("acme", "d4", "online", 1, "{}", T0 as i64 + 10_000)
        .await
        .unwrap();
    s.open_device_session("d2", "ses_a", T0 as i64 + 60_000)
        .await
        .unwrap();
    assert_eq!(s.device_generation("acme").await.unwrap(), g0 + 4);

    let page = |connected: Option<bool>, order: DeviceOrder, at: u64| {
        let q = DevicePageQuery {
            labels: vec![],
            connected,
            order,
        };
        async move {
            let (n, ids) = s
                .device_page("acme", &q, (T0 + at) as i64, 0, 10)
                .await
                .unwrap();
            (n, ids.join(" "))
        }
    };
    use DeviceOrder::{Host, LastSeen};
    assert_eq!(page(None, Host, 0).await, (4, "d1 d2 d4 d5".into()));
    // d2 has a session; d4's health (T0 + 10 s) came after d1 was seen
    // over QUIC (T0); d5 was never heard of.
    assert_eq!(page(None, LastSeen, 0).await, (4, "d2 d4 d1 d5".into()));
    assert_eq!(page(Some(true), Host, 0).await, (1, "d2".into()));
    assert_eq!(page(Some(false), Host, 0).await, (3, "d1 d4 d5".into()));
    let d2 = s.device("acme", "d2").await.unwrap();
    assert!(d2.session_at(T0 as i64 + 60_000) && !d2.session_at(T0 as i64 + 60_001));

    // Renewed only where the session named is still the device's.
    s.renew_device_sessions(
        &[
            ("d2".to_string(), "ses_a".to_string()),
            ("d1".to_string(), "ses_x".to_string()),
        ],
        T0 as i64 + 120_000,
    )
    .await
    .unwrap();
    assert_eq!(page(Some(true), Host, 90_000).await, (1, "d2".into()));
    // Lapsed: a replica that died leaves nothing connected. d2 was seen
    // at T0, as d1 was: by host between them.
    assert_eq!(page(Some(true), Host, 120_001).await.0, 0);
    assert_eq!(
        page(None, LastSeen, 120_001).await,
        (4, "d4 d1 d2 d5".into())
    );

    // The device reconnected (session b) before the end of session a was
    // recorded: that end leaves session b alone.
    now(1_000);
    s.open_device_session("d2", "ses_b", T0 as i64 + 61_000)
        .await
        .unwrap();
    s.close_device_session("d2", "ses_a").await.unwrap();
    assert_eq!(page(Some(true), Host, 1_000).await, (1, "d2".into()));
    now(2_000);
    s.close_device_session("d2", "ses_b").await.unwrap();
    assert_eq!(page(Some(true), Host, 2_000).await.0, 0);
    let d2 = s.device("acme", "d2").await.unwrap();
    assert_eq!(
        (d2.session_until, d2.last_seen),
        (None, Some((T0 as i64 + 2_000) / 1000))
    );
    // Revocation ends the session with it.
    s.open_device_session("d1", "ses_c", T0 as i64 + 600_000)
        .await
        .unwrap();
    s.revoke_device("acme", "d1", entry("device.revoke"))
        .await
        .unwrap();
    assert_eq!(s.device("acme", "d1").await.unwrap().session_until, None);
}

/// The charts' points are merged by the database (`Store::rollup_points`):
/// on both backends each point equals `Rollup::merge` of the stored
/// buckets it covers (counts added, maxima kept, -1 kept where no bucket
/// had a PSI), for aligned and unaligned starts, devices and versions. The
/// heat map read from hour rows equals the one the minute rows would give,
/// and `monitoring()` draws what `chart()` of the raw buckets draws.
async fn chart_points_are_merged_by_the_database(b: Backend) {
    use ferry::store::rollups::{FeaturePsiRow, Resolution, Rollup, RollupQuery, RollupWindow};
    use ferry::telemetry::monitoring::{self, MonitoringQuery, Range};
    use std::collections::BTreeMap;

    let f = fx(b).await;
    let s = &f.store;
    const H: i64 = 3_600_000;
    let now = T0 as i64 + 30 * H + 75_000;
    f.now.store(now as u64, Ordering::SeqCst);
    // A small deterministic generator: the same windows on both backends.
    let mut x: u64 = 7;
    let mut next = move |m: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % m
    };
    let mut windows = Vec::new();
    // Every 173 s for 27 hours back from now: past the 24-hour range, a
    // few per 4-minute point, gaps where a series skips a window.
    for i in 0..(27 * 3_600 / 173) {
        let end = now - i * 173_000;
        for device in ["d1", "d2"] {
            for (version, variant) in [(3, "champion"), (4, "challenger")] {
                if i > 0 && next(5) == 0 {
                    continue;
                }
                let requests = next(500) as i64;
                // Every seventh window had no PSI (no baseline yet).
                let psi = if i % 7 == 3 {
                    -1.0
                } else {
                    next(1_000) as f64 / 1_000.0
                };
                let summary = if psi < 0.0 {
                    r#"{"features":["f0","f1"],"psi":[null,null]}"#.to_string()
                } else {
                    format!(
                        r#"{{"features":["f0","f1"],"psi":[{psi},{}]}}"#,
                        next(100) as f64 / 1_000.0
                    )
                };
                windows.push(RollupWindow {
                    tenant: "acme".into(),
                    device: device.into(),
                    seq: i * 4 + version,
                    model: "m".into(),
                    version,
                    variant: variant.into(),
                    window_end_ms: end,
                    rows_seen: requests + next(3) as i64,
                    requests,
                    errors: requests / 10,
                    // Integers: their sums are exact in any order, as
                    // Rollup::merge's are.
                    latency_p50_us: 100 + next(900) as i64,
                    latency_p99_us: 1_000 + next(9_000) as i64,
                    labelled: next(20) as i64,
                    correct: next(10) as i64,
                    max_psi: psi,
                    drifted: psi >= 0.5,
                    summary,
                });
            }
        }
    }
    s.add_rollups(ferry::telemetry::rollup::sum(&windows))
        .await
        .unwrap();

    let day_step = Range::Day.step_ms();
    let day_first = (now - Range::Day.ms() + day_step).div_euclid(day_step) * day_step;
    let cases = [
        (Resolution::Minute, day_step, day_first),
        (Resolution::Minute, 60_000, now - H - 60_000),
        // A start not aligned to the step: points start from it.
        (Resolution::Minute, 300_000, day_first + 60_000),
        (
            Resolution::Hour,
            2 * H,
            Resolution::Hour.bucket(now - 28 * H),
        ),
    ];
    let mut none_seen = false;
    for (resolution, step, since_ms) in cases {
        for device in ["", "d1"] {
            for version in [None, Some(4)] {
                let q = RollupQuery {
                    resolution,
                    device: device.into(),
                    version,
                    since_ms,
                };
                let raw = s.rollups("acme", "m", &q).await.unwrap();
                assert!(!raw.is_empty());
                let mut want: BTreeMap<(i64, String, i64), Rollup> = BTreeMap::new();
                for r in &raw {
                    let point = since_ms + (r.bucket_ms - since_ms).div_euclid(step) * step;
                    want.entry((r.version, r.variant.clone(), point))
                        .or_insert_with(Rollup::empty)
                        .merge(&r.sums);
                }
                let want: Vec<_> = want
                    .into_iter()
                    .map(|(k, mut r)| {
                        r.feature_psi.clear();
                        (k, r)
                    })
                    .collect();
                let got: Vec<_> = s
                    .rollup_points("acme", "m", &q, step)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| ((r.version, r.variant, r.bucket_ms), r.sums))
                    .collect();
                assert_eq!(got, want, "{resolution:?} {step} {device:?} {version:?}");
                none_seen |= got.iter().any(|(_, r)| r.max_psi == -1.0);
            }
        }
    }
    assert!(none_seen, "a point without PSI was checked");

    // The heat map: per-feature maps only where a fleet-wide bucket has
    // one, and an hour's cells the largest of its minutes'.
    let q = MonitoringQuery {
        range: Range::Day,
        version: None,
        device: None,
    };
    let heat_buckets = monitoring::heat_buckets(Range::Day, now);
    let since_ms = heat_buckets[0];
    let fleet = |resolution| RollupQuery {
        resolution,
        device: String::new(),
        version: None,
        since_ms,
    };
    let hours = s
        .rollup_feature_psi("acme", "m", &fleet(Resolution::Hour))
        .await
        .unwrap();
    // In no order: compared sorted by hour, then map.
    let mut stored: Vec<(i64, String)> = s
        .rollups("acme", "m", &fleet(Resolution::Hour))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.sums.feature_psi.is_empty())
        .map(|r| (r.bucket_ms, format!("{:?}", r.sums.feature_psi)))
        .collect();
    let mut read: Vec<(i64, String)> = hours
        .iter()
        .map(|r| (r.bucket_ms, format!("{:?}", r.feature_psi)))
        .collect();
    stored.sort();
    read.sort();
    assert!(!read.is_empty());
    assert_eq!(read, stored);
    let from_minutes: Vec<FeaturePsiRow> = s
        .rollups("acme", "m", &fleet(Resolution::Minute))
        .await
        .unwrap()
        .into_iter()
        .map(|r| FeaturePsiRow {
            bucket_ms: Resolution::Hour.bucket(r.bucket_ms),
            feature_psi: r.sums.feature_psi,
        })
        .collect();
    let want_heat = monitoring::heat(&heat_buckets, H, from_minutes);
    let caller = ferry::registry::Caller {
        tenant: "acme".into(),
        actor: "test".into(),
        request_id: "t".into(),
    };
    let m = monitoring::monitoring(s, &caller, "m", &q).await.unwrap();
    assert_eq!((m.heat_bucket_ms, &m.heat_buckets), (H, &heat_buckets));
    assert_eq!(json(&m.features), json(&want_heat));
    // The current hour has its cells (the newest window had a PSI).
    assert!(m.features.iter().any(|f| f.psi[23].is_some()));

    // The charts: what chart() of the raw minute buckets draws.
    let raw = s
        .rollups(
            "acme",
            "m",
            &RollupQuery {
                resolution: Resolution::Minute,
                device: String::new(),
                version: None,
                since_ms: day_first,
            },
        )
        .await
        .unwrap();
    let want = monitoring::chart("m", &q, Resolution::Minute, day_step, day_first, now, raw);
    assert_eq!(m.buckets, want.buckets);
    assert_eq!(m.series.len(), 2);
    assert_eq!(json(&m.series), json(&want.series));

    // One device: the same charts from its rows, and no heat map.
    let one = MonitoringQuery {
        device: Some("d2".into()),
        ..q
    };
    let m = monitoring::monitoring(s, &caller, "m", &one).await.unwrap();
    assert!(m.features.is_empty());
    assert_eq!(m.series.len(), 2);
}

/// A value as its JSON (the API's types have no `PartialEq`).
fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

both_backends!(
    sessions_and_last_heard_page_in_the_database,
    chart_points_are_merged_by_the_database,
    fleet_listing_reads_keys_then_the_page,
    bad_messages_are_refused_with_reasons,
    one_drift_episode_fires_one_alert_and_one_trigger,
    feature_selection_and_fleet_fraction,
    other_alert_kinds,
    time_based_trigger_fires_on_schedule_with_a_controlled_clock,
);
