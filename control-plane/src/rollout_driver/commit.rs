//! Carrying out the engine's actions and saving its state: rollout
//! assignments, audit records, the finished rollout's deployment, the
//! retained MQTT state, in one compare-and-set save.

use super::{DriverError, RolloutDriver};
use crate::audit::{AuditEntry, OUTCOME_OK};
use crate::rollout::engine::{Action, Phase, Rollout, RolloutState};
use crate::rollout::policy::RolloutPolicy;
use crate::store::fleet::Deployment;
use crate::store::rollouts::{RolloutRow, RolloutSave};
use serde_json::json;

/// Who the driver's own audit records name.
pub const DRIVER_ACTOR: &str = "rollout driver";

/// The stored name of a phase (`rollouts.phase`, the API's `phase`).
pub fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Running => "running",
        Phase::AwaitingApproval => "awaiting_approval",
        Phase::Paused { .. } => "paused",
        Phase::Finished => "finished",
        Phase::Aborted { .. } => "aborted",
    }
}

/// The retained MQTT topic of a rollout's state.
pub fn state_topic(tenant: &str, id: &str) -> String {
    format!(
        "ferry/v1/{tenant}/{}/rollouts/{id}",
        ferry_protocol::telemetry::CONTROL_DEVICE
    )
}

/// Parses a stored policy document.
pub fn parse_policy(document: &str, format: &str) -> Result<RolloutPolicy, DriverError> {
    Ok(match format {
        "json" => RolloutPolicy::from_json(document)?,
        _ => RolloutPolicy::from_toml(document)?,
    })
}

/// The engine of a stored rollout.
pub fn load(row: &RolloutRow) -> Result<Rollout, DriverError> {
    let policy = parse_policy(&row.policy_document, &row.policy_format)?;
    let state: RolloutState =
        serde_json::from_str(&row.state).map_err(|e| DriverError::State(e.to_string()))?;
    Ok(Rollout::resume(policy, state)?)
}

/// The state without the verdict's time: a poll that changed nothing else
/// is not saved.
fn settled(s: &RolloutState) -> RolloutState {
    let mut s = s.clone();
    if let Some(v) = &mut s.last_verdict {
        v.at_ms = 0;
    }
    s
}

fn entry(row: &RolloutRow, action: &str, detail: String) -> AuditEntry {
    AuditEntry {
        tenant: row.tenant.clone(),
        request_id: String::new(),
        actor: DRIVER_ACTOR.into(),
        action: action.into(),
        target: row.id.clone(),
        outcome: OUTCOME_OK.into(),
        detail,
    }
}

fn short_json<T: serde::Serialize>(v: &T) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    if s.len() > 1000 {
        let mut end = 1000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// Carries out `actions` of `rollout` (loaded from `row`) and saves its
/// state, with `command` (an operator's audit record) first. Returns false
/// when the rollout moved on meanwhile and nothing was written.
pub async fn commit(
    d: &RolloutDriver,
    row: &RolloutRow,
    rollout: &Rollout,
    actions: &[Action],
    command: Option<AuditEntry>,
) -> Result<bool, DriverError> {
    let state = rollout.state();
    let before: Option<RolloutState> = serde_json::from_str(&row.state).ok();
    if actions.is_empty()
        && command.is_none()
        && before.as_ref().map(settled) == Some(settled(state))
    {
        return Ok(true);
    }
    let store = &d.fleet.store;
    let mut save = RolloutSave {
        state: serde_json::to_string(state).map_err(|e| DriverError::State(e.to_string()))?,
        phase: phase_name(&state.phase).into(),
        ..RolloutSave::default()
    };
    let mut audits: Vec<AuditEntry> = command.into_iter().collect();
    for a in actions {
        match a {
            Action::Assign {
                version,
                wave,
                devices,
            } => {
                for dev in devices {
                    save.targets
                        .push((dev.clone(), Some((*version as i64, row.digest.clone()))));
                }
                audits.push(entry(
                    row,
                    "rollout.assign",
                    format!(
                        "{} v{version}, wave {}: {} devices: {}",
                        row.model,
                        wave + 1,
                        devices.len(),
                        devices.join(",")
                    ),
                ));
            }
            Action::Rollback { version, devices } => {
                // Where the deployments already send a device back, its
                // target is removed: they decide for it again (a later
                // undeploy or deploy then applies as to any device).
                let deployments = store.live_deployments(&row.tenant).await?;
                let mut digests = std::collections::BTreeMap::new();
                for t in devices {
                    let labels = state
                        .devices
                        .get(&t.device)
                        .map(|d| d.labels.clone())
                        .unwrap_or_default();
                    let deployed = crate::fleet::assign::assign(&deployments, &[], &labels)
                        .into_iter()
                        .find(|a| a.model.as_str() == row.model)
                        .map(|a| a.version);
                    if deployed == t.to {
                        save.cleared.push(t.device.clone());
                        continue;
                    }
                    let to = match t.to {
                        Some(v) => {
                            let digest: Option<String> = match digests.get(&v) {
                                Some(d) => Option::clone(d),
                                None => {
                                    let d = store
                                        .version(&row.tenant, &row.model, v as i64)
                                        .await
                                        .ok()
                                        .map(|r| r.digest);
                                    digests.insert(v, d.clone());
                                    d
                                }
                            };
                            // A version since deleted cannot be sent:
                            // the assignment is withdrawn instead.
                            digest.map(|dg| (v as i64, dg))
                        }
                        None => None,
                    };
                    save.targets.push((t.device.clone(), to));
                }
                let shown: Vec<String> = devices
                    .iter()
                    .map(|t| match t.to {
                        Some(v) => format!("{}->v{v}", t.device),
                        None => format!("{}->none", t.device),
                    })
                    .collect();
                audits.push(entry(
                    row,
                    "rollout.rollback",
                    format!("{} v{version}: {}", row.model, shown.join(",")),
                ));
            }
            Action::Pause { wave, reason } => audits.push(entry(
                row,
                "rollout.hold",
                format!("wave {}: {}", wave + 1, short_json(reason)),
            )),
            Action::AwaitApproval { wave } => audits.push(entry(
                row,
                "rollout.await_approval",
                format!("wave {} passed; the next waits for approval", wave + 1),
            )),
            Action::Finish => {
                let dep = Deployment {
                    id: crate::auth::random_id("dep_", 6),
                    tenant: row.tenant.clone(),
                    model: row.model.clone(),
                    version: row.version,
                    digest: row.digest.clone(),
                    selector: row.selector.clone(),
                    created_at: store.clock().now_secs() as i64,
                    created_us: 0,
                    created_by: format!("rollout {}", row.id),
                    deleted_at: None,
                    runtime: None,
                };
                audits.push(entry(
                    row,
                    "rollout.finish",
                    format!(
                        "{} v{} reached every wave; deployment {} replaces the rollout",
                        row.model, row.version, dep.id
                    ),
                ));
                save.deployment = Some(dep);
                save.clear_all = true;
            }
            Action::Abort { cause } => {
                audits.push(entry(row, "rollout.end", short_json(cause)));
            }
        }
    }
    let fleet_moved =
        !save.targets.is_empty() || !save.cleared.is_empty() || save.deployment.is_some();
    let saved = store
        .save_rollout(&row.tenant, &row.id, row.revision, &save, audits)
        .await?;
    if !saved {
        return Ok(false);
    }
    if fleet_moved {
        d.fleet.changed();
    }
    let phase_moved = before.as_ref().map(|b| phase_name(&b.phase)) != Some(save.phase.as_str());
    if !actions.is_empty() || phase_moved {
        d.publish_retained(
            state_topic(&row.tenant, &row.id),
            state_message(row, state).to_string(),
        );
    }
    Ok(true)
}

/// The retained MQTT message of a rollout's state (docs/rollouts.md).
pub fn state_message(row: &RolloutRow, s: &RolloutState) -> serde_json::Value {
    let assigned = s
        .devices
        .values()
        .filter(|d| d.assigned_wave.is_some())
        .count();
    let active = s
        .devices
        .values()
        .filter(|d| {
            d.assigned_wave.is_some()
                && d.outcome == Some(crate::rollout::observations::Activation::Active)
        })
        .count();
    json!({
        "schema": 1,
        "id": row.id,
        "tenant": row.tenant,
        "model": row.model,
        "version": row.version,
        "selector": row.selector,
        "policy": row.policy_name,
        "phase": phase_name(&s.phase),
        // The reason of a pause or an abort.
        "phase_detail": s.phase,
        "wave": s.wave + 1,
        "wave_started_ms": s.wave_started_ms,
        "devices": s.devices.values().filter(|d| d.present).count(),
        "assigned": assigned,
        "active": active,
        "last_verdict": s.last_verdict,
    })
}
