//! What the engine is fed on every step, from the fleet's tables:
//!
//! - devices: the tenant's unrevoked devices whose labels match the
//!   selector and offer the runtime the version requires, if any
//!   (`device_seen`; new enrollments and label changes included),
//!   and those that stopped matching or were revoked (`device_left`);
//! - activation outcomes: each device's last report on the model
//!   (`device_models`, written by `fleet::quic::report`): `active` for any
//!   version, `failed` or `rolled_back` for the rollout's version;
//! - telemetry: the drift summaries of the model the devices closed since
//!   [`LOOKBACK_MS`] before the rollout started, summed per device and
//!   version; read incrementally ([`TelemetryCache`]: only the windows
//!   received since the last step).
//!
//! Feeding is idempotent: the engine keeps the latest of each, so every
//! step feeds everything again.

use super::DriverError;
use crate::rollout::engine::Rollout;
use crate::rollout::observations::{Activation, Device, TelemetryAggregate};
use crate::store::fleet::{matches, runtime_offered};
use crate::store::rollouts::RolloutRow;
use crate::store::Store;
use ferry_protocol::telemetry::DriftSummary;
use std::collections::{BTreeMap, HashMap};

/// Telemetry of the versions devices ran before the rollout is read from
/// this long before it started: the reference of `previous_version` gates.
pub const LOOKBACK_MS: u64 = 3_600_000;
/// Windows read per step, at most (the rest come at the next step).
const MAX_WINDOWS: i64 = 50_000;
/// Windows are read again this far behind the newest one read: one
/// received earlier but committed later is not missed (each counts once).
const OVERLAP_MS: i64 = 5_000;

/// A rollout's telemetry sums per device and version, kept between steps.
#[derive(Default)]
pub struct TelemetryCache {
    /// When the newest window read was received.
    cursor_ms: i64,
    /// (device, seq) → when received, of the windows summed that a later
    /// read can still return (inside the overlap); older ones are dropped,
    /// so the set stays the size of a few seconds of telemetry.
    seen: HashMap<(String, i64), i64>,
    sums: BTreeMap<(String, u64), TelemetryAggregate>,
}

pub async fn feed(
    store: &Store,
    row: &RolloutRow,
    r: &mut Rollout,
    cache: &mut TelemetryCache,
) -> Result<(), DriverError> {
    let reports = store.device_models(&row.tenant, &row.model).await?;
    // A version that requires a runtime rolls out to the devices that offer it.
    let runtime = store
        .version_tag(
            &row.tenant,
            &row.model,
            row.version,
            ferry_protocol::RUNTIME_TAG,
        )
        .await?;
    for dev in store.devices(&row.tenant).await? {
        let matching = dev.revoked_at.is_none()
            && matches(&row.selector, &dev.labels)
            && runtime_offered(runtime.as_deref(), dev.runtimes.as_deref());
        let known = r.state().devices.get(&dev.id);
        if matching {
            let fresh = known.is_none_or(|k| !k.present || k.labels != dev.labels);
            if fresh {
                let version = reports
                    .get(&dev.id)
                    .filter(|(_, state, _)| state == "active")
                    .map(|(v, _, _)| *v as u64);
                r.device_seen(Device {
                    id: dev.id,
                    labels: dev.labels,
                    version,
                });
            }
        } else if known.is_some_and(|k| k.present) {
            r.device_left(&dev.id)?;
        }
    }
    let target = r.state().version;
    for (id, (version, state, detail)) in &reports {
        if !r.state().devices.contains_key(id) {
            continue;
        }
        let version = *version as u64;
        let outcome = match state.as_str() {
            "active" => Activation::Active,
            "failed" | "rolled_back" if version == target => Activation::Failed {
                reason: detail.clone(),
            },
            _ => continue,
        };
        r.activation(id, version, outcome)?;
    }
    let since = r.state().started_ms.saturating_sub(LOOKBACK_MS) as i64;
    let from = cache.cursor_ms.saturating_sub(OVERLAP_MS);
    for (device, seq, received, raw) in store
        .rollout_windows(&row.tenant, &row.model, since, from, MAX_WINDOWS)
        .await?
    {
        cache.cursor_ms = cache.cursor_ms.max(received);
        if cache.seen.insert((device, seq), received).is_some() {
            continue;
        }
        let Ok(s) = serde_json::from_str::<DriftSummary>(&raw) else {
            continue;
        };
        let one = TelemetryAggregate::from_summaries([&s]);
        cache
            .sums
            .entry((s.device.clone(), s.version))
            .or_default()
            .add(&one);
    }
    // The next read starts OVERLAP_MS behind the cursor: nothing received
    // before that can come back.
    let horizon = cache.cursor_ms.saturating_sub(OVERLAP_MS);
    cache.seen.retain(|_, received| *received >= horizon);
    for ((device, version), agg) in &cache.sums {
        if !r.state().devices.contains_key(device) {
            continue;
        }
        if let Err(e) = r.telemetry(device, *version, agg.clone()) {
            tracing::warn!(%device, version, error = %e, "telemetry not fed to the rollout");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::policy::RolloutPolicy;
    use ferry_protocol::telemetry::{ClosedBy, Predictions, TELEMETRY_SCHEMA};

    fn window(seq: u64, requests: u64, errors: u64) -> DriftSummary {
        DriftSummary {
            schema: TELEMETRY_SCHEMA,
            tenant: "t".into(),
            device: "d1".into(),
            seq,
            model: "fraud".into(),
            version: 2,
            variant: "champion".into(),
            window_start_ms: 1_000,
            window_end_ms: 2_000,
            closed_by: ClosedBy::Time,
            rows: requests,
            features: vec![],
            missing: vec![],
            out_of_range: vec![],
            psi: vec![],
            predictions: Predictions {
                output: "label".into(),
                classes: Default::default(),
                numeric: None,
            },
            latency_us: vec![],
            latency_p50_us: 0,
            latency_p99_us: 0,
            errors,
            requests,
            labelled: 0,
            correct: 0,
        }
    }

    /// Steps read only the windows received since the last one (with an
    /// overlap), and count each window once.
    #[tokio::test]
    async fn telemetry_is_summed_incrementally_each_window_once() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", d.path().join("ferry.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        let put = |seq: u64, requests: u64, errors: u64, at: i64| {
            let store = store.clone();
            async move {
                let w = window(seq, requests, errors);
                let raw = serde_json::to_string(&w).unwrap();
                store
                    .insert_window(&w, -1.0, false, &raw, at)
                    .await
                    .unwrap();
            }
        };
        let row = RolloutRow {
            id: "ro_1".into(),
            tenant: "t".into(),
            model: "fraud".into(),
            version: 2,
            digest: String::new(),
            selector: Default::default(),
            policy_name: String::new(),
            policy_version: 0,
            policy_document: String::new(),
            policy_format: "toml".into(),
            state: String::new(),
            phase: String::new(),
            revision: 0,
            created_by: String::new(),
            created_at: 0,
            updated_at: 0,
            lease_holder: String::new(),
            lease_expires_ms: 0,
        };
        let device = Device {
            id: "d1".into(),
            labels: Default::default(),
            version: Some(1),
        };
        let mut r = Rollout::start(RolloutPolicy::default(), 2, "s", [device], 1_000).unwrap();
        let mut cache = TelemetryCache::default();
        let requests = |r: &Rollout| r.state().telemetry["d1"][&2].requests;
        put(1, 10, 1, 10_000).await;
        feed(&store, &row, &mut r, &mut cache).await.unwrap();
        assert_eq!(requests(&r), 10);
        // Nothing new: the same sums.
        feed(&store, &row, &mut r, &mut cache).await.unwrap();
        assert_eq!(requests(&r), 10);
        // A window received a little earlier than the newest read (inside
        // the overlap) and a later one: both counted, once.
        put(2, 5, 0, 9_000).await;
        put(3, 7, 7, 20_000).await;
        feed(&store, &row, &mut r, &mut cache).await.unwrap();
        feed(&store, &row, &mut r, &mut cache).await.unwrap();
        assert_eq!(requests(&r), 22);
        assert_eq!(r.state().telemetry["d1"][&2].errors, 8);
        // Only windows a later read can return again are remembered.
        assert_eq!(cache.seen.len(), 1);
        // A window received long after: the ones behind the overlap are
        // forgotten, and still counted once.
        put(4, 1, 0, 60_000).await;
        feed(&store, &row, &mut r, &mut cache).await.unwrap();
        feed(&store, &row, &mut r, &mut cache).await.unwrap();
        assert_eq!(requests(&r), 23);
        assert_eq!(cache.seen.len(), 1);
    }
}
