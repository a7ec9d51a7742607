//! What the engine is fed on every step, from the fleet's tables:
//!
//! - devices: the tenant's unrevoked devices whose labels match the
//!   selector (`device_seen`; new enrollments and label changes included),
//!   and those that stopped matching or were revoked (`device_left`);
//! - activation outcomes: each device's last report on the model
//!   (`device_models`, written by `fleet::quic::report`): `active` for any
//!   version, `failed` or `rolled_back` for the rollout's version;
//! - telemetry: the drift summaries of the model the devices closed since
//!   [`LOOKBACK_MS`] before the rollout started, summed per device and
//!   version.
//!
//! Feeding is idempotent: the engine keeps the latest of each, so every
//! step feeds everything again.

use super::DriverError;
use crate::rollout::engine::Rollout;
use crate::rollout::observations::{Activation, Device, TelemetryAggregate};
use crate::store::fleet::matches;
use crate::store::rollouts::RolloutRow;
use crate::store::Store;
use ferry_protocol::telemetry::DriftSummary;
use std::collections::BTreeMap;

/// Telemetry of the versions devices ran before the rollout is read from
/// this long before it started: the reference of `previous_version` gates.
pub const LOOKBACK_MS: u64 = 3_600_000;
/// Windows read per step, at most (the newest are dropped past it).
const MAX_WINDOWS: i64 = 200_000;

pub async fn feed(store: &Store, row: &RolloutRow, r: &mut Rollout) -> Result<(), DriverError> {
    let reports = store.device_models(&row.tenant, &row.model).await?;
    for dev in store.devices(&row.tenant).await? {
        let matching = dev.revoked_at.is_none() && matches(&row.selector, &dev.labels);
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
    let mut windows: BTreeMap<(String, u64), Vec<DriftSummary>> = BTreeMap::new();
    for raw in store
        .rollout_windows(&row.tenant, &row.model, since, MAX_WINDOWS)
        .await?
    {
        let Ok(s) = serde_json::from_str::<DriftSummary>(&raw) else {
            continue;
        };
        if r.state().devices.contains_key(&s.device) {
            windows
                .entry((s.device.clone(), s.version))
                .or_default()
                .push(s);
        }
    }
    for ((device, version), w) in windows {
        let agg = TelemetryAggregate::from_summaries(&w);
        if let Err(e) = r.telemetry(&device, version, agg) {
            tracing::warn!(%device, version, error = %e, "telemetry not fed to the rollout");
        }
    }
    Ok(())
}
