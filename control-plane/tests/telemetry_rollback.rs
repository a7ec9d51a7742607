//! Fault injection in the telemetry engine (in process): an alert whose
//! audit append fails leaves nothing behind, not even its cooldown gate, so
//! the next raise goes through. Its own test binary, because failpoints are
//! process-wide.
#![allow(clippy::unwrap_used)]

mod support;

use ferry::store::telemetry::AlertQuery;
use ferry::store::{AuditQuery, Store};
use ferry::telemetry::engine::{Clock, Engine};
use serde_json::json;
use std::sync::Arc;
use support::Backend;

const T0: u64 = 1_795_449_360_000;

async fn raise_rolls_back(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = match &b {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
        Backend::Postgres(db) => db.url.clone(),
    };
    let clock: Clock = Arc::new(|| T0);
    let store = Store::connect_with(&url, 4, clock.clone()).await.unwrap();
    let engine = Engine::new(store.clone(), clock);
    let raise = || engine.raise("acme", "m", 3, "drift", "d1", json!({"psi": 0.9}), 60_000);

    fail::cfg("store::audit_append", "return(alert.raise)").unwrap();
    let r = raise().await;
    fail::remove("store::audit_append");
    assert!(r.is_err(), "{r:?}");
    let alerts = AlertQuery {
        limit: 100,
        ..Default::default()
    };
    let audit = AuditQuery {
        limit: 100,
        ..Default::default()
    };
    assert!(store.alerts("acme", &alerts).await.unwrap().is_empty());
    assert!(store.audit_list("acme", &audit).await.unwrap().is_empty());

    // Same instant, inside the cooldown: the gate was rolled back too.
    let id = raise().await.unwrap().expect("raised");
    let stored = store.alerts("acme", &alerts).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    let records = store.audit_list("acme", &audit).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].action, "alert.raise");
    // And the cooldown holds from here.
    assert_eq!(raise().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_raise_rolls_back_with_its_audit_record() {
    // One test, both backends in turn: the failpoint is process-wide.
    raise_rolls_back(Backend::Sqlite).await;
    if let Some(b) = Backend::postgres().await {
        raise_rolls_back(b).await;
    }
}
