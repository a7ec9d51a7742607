//! The fleet's domain operations: enrollment tokens, device labels and
//! revocation, deployments (create, scale, delete, per-device status).
//! The HTTP handlers in [`super::api`], the CLI and a future dashboard call
//! these; like the registry's, they take a [`Caller`] instead of an HTTP
//! request and return domain results.

use super::Fleet;
use crate::action::Action;
use crate::auth;
use crate::registry::Caller;
use crate::store::device_index::{DeviceKey, DevicePageQuery};
use crate::store::fleet::{self as db, Labels, NewEnrollmentToken};
use crate::store::StoreError;
use ferry_protocol::desired::Assignment;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a fleet operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FleetServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("model {model:?} has no alias {alias:?}")]
    NoAlias { model: String, alias: String },
    #[error("{model} v{version} is archived")]
    Archived { model: String, version: i64 },
}

/// Which version a deployment names: a number, or an alias of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionRef {
    Number(i64),
    Alias(String),
}

/// An enrollment token as minted; the secret is shown once.
#[derive(Debug)]
pub struct MintedToken {
    pub id: String,
    pub token: String,
    pub labels: Labels,
    pub uses: i64,
    pub expires_at: i64,
    /// SHA-256 fingerprint (hex) of the tenant's current trust root, which
    /// enrolling devices pin (`ferry-agent enroll --root-fingerprint`).
    pub root_fingerprint: Option<String>,
}

/// Default lifetime of an enrollment token, and the longest allowed.
const TOKEN_TTL_SECS: u64 = 86_400;
const TOKEN_MAX_TTL_SECS: u64 = 365 * 86_400;
const TOKEN_MAX_USES: u64 = 1_000_000;

/// Mints an enrollment token that gives enrolling devices `labels`.
/// `expires_in` is capped at a year, `uses` kept within 1..=1,000,000.
pub async fn create_enrollment_token(
    fleet: &Fleet,
    caller: &Caller,
    labels: Labels,
    expires_in: Option<u64>,
    uses: Option<u64>,
) -> Result<MintedToken, FleetServiceError> {
    let now = fleet.store.clock().now_secs() as i64;
    let expires_at = now + expires_in.unwrap_or(TOKEN_TTL_SECS).min(TOKEN_MAX_TTL_SECS) as i64;
    let uses = uses.unwrap_or(1).clamp(1, TOKEN_MAX_USES) as i64;
    let token = format!("fe_{}", hex::encode(rand::random::<[u8; 32]>()));
    let id = auth::random_id("enr_", 6);
    let new = NewEnrollmentToken {
        id: id.clone(),
        tenant: caller.tenant.clone(),
        hash: auth::hash_token(&token),
        labels: labels.clone(),
        expires_at,
        uses,
        created_by: caller.actor.clone(),
    };
    let mut audit = caller.ok(Action::DeviceTokenCreate, &id);
    audit.detail = format!(
        "labels {}, uses {uses}, expires {expires_at}",
        db::labels_to_string(&labels)
    );
    fleet.store.create_enrollment_token(&new, audit).await?;
    let root_fingerprint = fleet
        .store
        .trust_root(&caller.tenant)
        .await?
        .and_then(|(_, hexed)| hex::decode(hexed).ok())
        .and_then(|b| ferry_protocol::SignedTrustRoot::from_bytes(&b).ok())
        .map(|s| ferry_protocol::trust::fingerprint(&s).to_hex());
    Ok(MintedToken {
        id,
        token,
        labels,
        uses,
        expires_at,
        root_fingerprint,
    })
}

/// The tenant's enrollment tokens, newest first; secrets are never stored.
pub async fn enrollment_tokens(
    fleet: &Fleet,
    caller: &Caller,
) -> Result<Vec<db::EnrollmentToken>, FleetServiceError> {
    Ok(fleet.store.enrollment_tokens(&caller.tenant).await?)
}

/// Revokes one of the tenant's enrollment tokens: every later enrollment
/// with it is refused (`enrollment token revoked`). Devices it already
/// enrolled stay; revoke those one by one.
pub async fn revoke_enrollment_token(
    fleet: &Fleet,
    caller: &Caller,
    id: &str,
) -> Result<(), FleetServiceError> {
    fleet
        .store
        .revoke_enrollment_token(&caller.tenant, id, caller.ok(Action::DeviceTokenRevoke, id))
        .await?;
    Ok(())
}

/// Each of `items` with whether its device is connected now: a session
/// with this replica, or a lease on one that some replica holds
/// (`lease(item)`: until when, in milliseconds).
fn with_connected<T>(
    fleet: &Fleet,
    items: Vec<T>,
    id: impl Fn(&T) -> &String,
    lease: impl Fn(&T) -> Option<i64>,
) -> Vec<(T, bool)> {
    let online = fleet.connected();
    let now = fleet.store.now_ms();
    items
        .into_iter()
        .map(|x| {
            let connected = online.contains(id(&x)) || db::lease_holds(lease(&x), now);
            (x, connected)
        })
        .collect()
}

/// The tenant's devices, each with whether it is connected now.
pub async fn devices(
    fleet: &Fleet,
    caller: &Caller,
) -> Result<Vec<(db::Device, bool)>, FleetServiceError> {
    let devs = fleet.store.devices(&caller.tenant).await?;
    Ok(with_connected(fleet, devs, |d| &d.id, |d| d.session_until))
}

/// (version, state, detail) of `model` on each of the tenant's devices.
pub async fn model_states(
    fleet: &Fleet,
    caller: &Caller,
    model: &str,
) -> Result<BTreeMap<String, db::DeviceModelState>, FleetServiceError> {
    Ok(fleet.store.device_models(&caller.tenant, model).await?)
}

/// The tenant's devices as of its device generation
/// ([`Fleet::device_snapshot`]): which there are, their labels and
/// revocations, current; `last_seen` and sessions as of that generation.
pub async fn device_snapshot(
    fleet: &Fleet,
    caller: &Caller,
) -> Result<Arc<Vec<db::Device>>, FleetServiceError> {
    Ok(fleet.device_snapshot(&caller.tenant).await?)
}

/// The sort and filter keys of the tenant's unrevoked devices (with when
/// their health arrived, with `health`), each with whether it is connected
/// now: what a device listing orders and pages before it reads the rows it
/// shows ([`devices_by_id`]).
pub async fn device_keys(
    fleet: &Fleet,
    caller: &Caller,
    health: bool,
) -> Result<Vec<(DeviceKey, bool)>, FleetServiceError> {
    let keys = fleet.store.device_keys(&caller.tenant, health).await?;
    Ok(with_connected(fleet, keys, |k| &k.id, |k| k.session_until))
}

/// One page of the tenant's unrevoked devices as `q` filters and orders
/// them, paged by the database, and how many there are.
pub async fn device_page(
    fleet: &Fleet,
    caller: &Caller,
    q: &DevicePageQuery,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<String>), FleetServiceError> {
    let now = fleet.store.now_ms();
    Ok(fleet
        .store
        .device_page(&caller.tenant, q, now, offset, limit)
        .await?)
}

/// The tenant's devices `ids` (those that exist), each with whether it is
/// connected now, in no particular order.
pub async fn devices_by_id(
    fleet: &Fleet,
    caller: &Caller,
    ids: &[String],
) -> Result<Vec<(db::Device, bool)>, FleetServiceError> {
    let devs = fleet.store.devices_by_id(&caller.tenant, ids).await?;
    Ok(with_connected(fleet, devs, |d| &d.id, |d| d.session_until))
}

/// The tenant's devices that report `model` active.
pub async fn devices_with_active(
    fleet: &Fleet,
    caller: &Caller,
    model: &str,
) -> Result<Vec<String>, FleetServiceError> {
    Ok(fleet
        .store
        .devices_with_active(&caller.tenant, model)
        .await?)
}

/// One device as seen by the fleet.
#[derive(Debug)]
pub struct DeviceView {
    pub device: db::Device,
    pub connected: bool,
    /// What it should run now.
    pub assignments: Vec<Assignment>,
}

pub async fn device(
    fleet: &Fleet,
    caller: &Caller,
    id: &str,
) -> Result<DeviceView, FleetServiceError> {
    let device = fleet.store.device(&caller.tenant, id).await?;
    let assignments = fleet.assignments(&device).await?;
    let connected = fleet.is_connected(&device.id);
    Ok(DeviceView {
        device,
        connected,
        assignments,
    })
}

/// The latest activation report of each model on the tenant's devices
/// (one device's, when `device` is given): what they have installed and
/// whether it is active, failed or rolled back.
pub async fn device_reports(
    fleet: &Fleet,
    caller: &Caller,
    device: Option<&str>,
) -> Result<Vec<db::DeviceModelReport>, FleetServiceError> {
    Ok(fleet
        .store
        .device_model_reports(&caller.tenant, device)
        .await?)
}

/// The latest activation reports of the tenant's devices `ids`.
pub async fn device_reports_of_each(
    fleet: &Fleet,
    caller: &Caller,
    ids: &[String],
) -> Result<Vec<db::DeviceModelReport>, FleetServiceError> {
    Ok(fleet
        .store
        .device_model_reports_of_each(&caller.tenant, ids)
        .await?)
}

/// Replaces a device's labels; its desired state is recomputed.
pub async fn set_labels(
    fleet: &Fleet,
    caller: &Caller,
    id: &str,
    labels: &Labels,
) -> Result<(), FleetServiceError> {
    let mut audit = caller.ok(Action::DeviceLabel, id);
    audit.detail = db::labels_to_string(labels);
    fleet
        .store
        .set_device_labels(&caller.tenant, id, labels, audit)
        .await?;
    fleet.changed();
    Ok(())
}

/// Revokes a device and closes its connection; it cannot reconnect. The
/// change is announced, so a control stream of this device that survived
/// the close (a connection registered during the revocation) stops too.
pub async fn revoke(fleet: &Fleet, caller: &Caller, id: &str) -> Result<(), FleetServiceError> {
    fleet
        .store
        .revoke_device(&caller.tenant, id, caller.ok(Action::DeviceRevoke, id))
        .await?;
    fleet.disconnect(id, "device revoked");
    fleet.changed();
    Ok(())
}

/// The version `version` names (a number or an alias of `model`), if it
/// may be sent to devices: deployments and rollouts both refuse an unknown
/// alias and an archived version.
pub async fn deployable_version(
    store: &crate::store::Store,
    caller: &Caller,
    model: &str,
    version: &VersionRef,
) -> Result<crate::store::VersionRow, FleetServiceError> {
    let version = match version {
        VersionRef::Number(v) => *v,
        VersionRef::Alias(alias) => store
            .aliases(&caller.tenant, model)
            .await?
            .iter()
            .find(|x| x.alias == *alias)
            .map(|x| x.version)
            .ok_or_else(|| FleetServiceError::NoAlias {
                model: model.to_string(),
                alias: alias.clone(),
            })?,
    };
    let row = store.version(&caller.tenant, model, version).await?;
    if row.status == "archived" {
        return Err(FleetServiceError::Archived {
            model: model.to_string(),
            version,
        });
    }
    Ok(row)
}

/// Deploys `version` of `model` (a number or an alias) to the devices
/// whose labels match `selector`. Archived versions are refused.
pub async fn create_deployment(
    fleet: &Fleet,
    caller: &Caller,
    model: &str,
    version: &VersionRef,
    selector: Labels,
) -> Result<db::Deployment, FleetServiceError> {
    let store = &fleet.store;
    let row = deployable_version(store, caller, model, version).await?;
    let version = row.version;
    let d = db::Deployment {
        id: auth::random_id("dep_", 6),
        tenant: caller.tenant.clone(),
        model: model.to_string(),
        version,
        digest: row.digest.clone(),
        selector,
        created_at: store.clock().now_secs() as i64,
        created_us: 0,
        created_by: caller.actor.clone(),
        deleted_at: None,
        runtime: None,
    };
    let mut audit = caller.ok(Action::DeploymentCreate, &d.id);
    audit.detail = format!(
        "{} v{} to {}",
        d.model,
        d.version,
        db::labels_to_string(&d.selector)
    );
    store.create_deployment(&d, audit).await?;
    fleet.changed();
    // Read back: the version's runtime requirement comes from its tags.
    Ok(store.deployment(&d.tenant, &d.id).await?)
}

/// The tenant's live deployments, in creation order.
pub async fn deployments(
    fleet: &Fleet,
    caller: &Caller,
) -> Result<Vec<db::Deployment>, FleetServiceError> {
    Ok(fleet.store.live_deployments(&caller.tenant).await?)
}

/// One matched device's state in a deployment.
#[derive(Debug)]
pub struct DeviceState {
    pub device: String,
    pub hostname: String,
    pub connected: bool,
    /// `revoked`, `superseded`, `downloading N%`, `pending`, or what the
    /// device reported (`active`, `failed`, ...).
    pub state: String,
    pub detail: String,
}

/// A deployment with the state of every device its selector matches.
#[derive(Debug)]
pub struct DeploymentStatus {
    pub deployment: db::Deployment,
    pub devices: Vec<DeviceState>,
    /// Devices per state.
    pub summary: BTreeMap<String, u64>,
}

pub async fn deployment_status(
    fleet: &Fleet,
    caller: &Caller,
    id: &str,
) -> Result<DeploymentStatus, FleetServiceError> {
    let store = &fleet.store;
    let d = store.deployment(&caller.tenant, id).await?;
    let devices = fleet.device_snapshot(&caller.tenant).await?;
    let states = store.device_models(&caller.tenant, &d.model).await?;
    deployment_status_among(fleet, d, &devices, &states).await
}

/// [`deployment_status`] of `d` among `devices` (the tenant's, read once
/// for a page of deployments), given what each device reported of `d`'s
/// model (`states`, [`model_states`]).
pub async fn deployment_status_among(
    fleet: &Fleet,
    d: db::Deployment,
    devices: &[db::Device],
    states: &BTreeMap<String, db::DeviceModelState>,
) -> Result<DeploymentStatus, FleetServiceError> {
    let online = fleet.connected();
    let mut rows = Vec::new();
    let mut summary = BTreeMap::<String, u64>::new();
    let matched: Vec<&db::Device> = devices
        .iter()
        .filter(|x| db::matches(&d.selector, &x.labels))
        .collect();
    // A newer deployment may win a device; then this one is not what it
    // should run, whatever it reports.
    let wanted = fleet.wanted(&d, &matched).await?;
    for (dev, wanted) in matched.into_iter().zip(wanted) {
        let (state, detail) = match states.get(&dev.id) {
            _ if dev.revoked_at.is_some() => ("revoked".to_string(), String::new()),
            _ if !db::runtime_offered(d.runtime.as_deref(), dev.runtimes.as_deref()) => (
                "unsupported".to_string(),
                match &dev.runtimes {
                    Some(r) => format!(
                        "the version requires runtime {}; the device offers {}",
                        d.runtime.as_deref().unwrap_or_default(),
                        if r.is_empty() { "none".into() } else { r.join(", ") }
                    ),
                    None => format!(
                        "the version requires runtime {}; the device has not said which runtimes it offers yet",
                        d.runtime.as_deref().unwrap_or_default()
                    ),
                },
            ),
            _ if !wanted => ("superseded".to_string(), String::new()),
            Some((v, s, det)) if *v == d.version => (s.clone(), det.clone()),
            _ => match fleet.progress(&dev.id, &d.digest) {
                Some(p) => (format!("downloading {p}%"), String::new()),
                None => ("pending".to_string(), String::new()),
            },
        };
        *summary.entry(state.clone()).or_default() += 1;
        rows.push(DeviceState {
            device: dev.id.clone(),
            hostname: dev.hostname.clone(),
            connected: online.contains(&dev.id),
            state,
            detail,
        });
    }
    Ok(DeploymentStatus {
        deployment: d,
        devices: rows,
        summary,
    })
}

/// Changes a deployment's selector.
pub async fn scale_deployment(
    fleet: &Fleet,
    caller: &Caller,
    id: &str,
    selector: &Labels,
) -> Result<(), FleetServiceError> {
    let mut audit = caller.ok(Action::DeploymentScale, id);
    audit.detail = db::labels_to_string(selector);
    fleet
        .store
        .scale_deployment(&caller.tenant, id, selector, audit)
        .await?;
    fleet.changed();
    Ok(())
}

/// Removes a deployment from the devices' desired state. Returns warnings
/// for devices that now fall back to an older version (see
/// [`rollback_warnings`]).
pub async fn delete_deployment(
    fleet: &Fleet,
    caller: &Caller,
    id: &str,
) -> Result<Vec<String>, FleetServiceError> {
    let store = &fleet.store;
    let gone = store
        .delete_deployment(&caller.tenant, id, caller.ok(Action::DeploymentDelete, id))
        .await?;
    fleet.changed();
    // The deletion stands either way; the warnings only tell the operator
    // what devices will do next.
    let warnings = match (
        store.live_deployments(&caller.tenant).await,
        store.devices(&caller.tenant).await,
    ) {
        (Ok(live), Ok(devices)) => rollback_warnings(&gone, &live, &devices),
        _ => Vec::new(),
    };
    Ok(warnings)
}
/// Devices that `gone` reached and that now fall back to an older
/// deployment of the same model. Agents refuse a version below the highest
/// they have run (anti-rollback), so those devices keep serving what they
/// have and report the refusal. One line per older version.
pub fn rollback_warnings(
    gone: &db::Deployment,
    live: &[db::Deployment],
    devices: &[db::Device],
) -> Vec<String> {
    let mut older: BTreeMap<i64, usize> = Default::default();
    for d in devices.iter().filter(|d| d.revoked_at.is_none()) {
        if !db::matches(&gone.selector, &d.labels) {
            continue;
        }
        // `live` is in creation order: the last match wins, as in
        // `Fleet::assignments`.
        let next = live
            .iter()
            .rev()
            .find(|l| l.model == gone.model && db::matches(&l.selector, &d.labels));
        if let Some(next) = next.filter(|n| n.version < gone.version) {
            *older.entry(next.version).or_default() += 1;
        }
    }
    older
        .into_iter()
        .map(|(v, n)| {
            format!(
                "{n} device(s) fall back to {} version {v}, older than version {}: \
                 agents that ran version {} refuse it as a rollback and keep serving it; \
                 deploy version {} or newer instead, or undeploy version {v} too",
                gone.model, gone.version, gone.version, gone.version
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dep(id: &str, version: i64, selector: &[(&str, &str)]) -> db::Deployment {
        db::Deployment {
            id: id.into(),
            tenant: "t".into(),
            model: "fraud".into(),
            version,
            digest: String::new(),
            selector: labels(selector),
            created_at: 0,
            created_us: 0,
            created_by: "op".into(),
            deleted_at: None,
            runtime: None,
        }
    }

    fn device(id: &str, l: &[(&str, &str)], revoked: bool) -> db::Device {
        db::Device {
            id: id.into(),
            tenant: "t".into(),
            hostname: id.into(),
            labels: labels(l),
            created_at: 0,
            revoked_at: revoked.then_some(1),
            last_seen: None,
            session_until: None,
            runtimes: None,
        }
    }

    #[test]
    fn undeploying_onto_an_older_version_warns_per_version_and_counts_devices() {
        let gone = dep("v3", 3, &[("site", "berlin")]);
        let live = vec![
            dep("v1", 1, &[]),                  // everyone
            dep("v2", 2, &[("hw", "rpi4")]),    // newer, for the Pis
            dep("other", 9, &[("x", "never")]), // matches nobody
        ];
        let devices = vec![
            device("a", &[("site", "berlin")], false), // falls to v1
            device("b", &[("site", "berlin"), ("hw", "rpi4")], false), // to v2
            device("c", &[("site", "berlin"), ("hw", "rpi4")], false), // to v2
            device("d", &[("site", "paris")], false),  // never had v3
            device("e", &[("site", "berlin")], true),  // revoked
        ];
        let w = rollback_warnings(&gone, &live, &devices);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("1 device(s) fall back to fraud version 1"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("2 device(s) fall back to fraud version 2"),
            "{w:?}"
        );
        assert!(w[0].contains("refuse it as a rollback"), "{w:?}");
        // Nothing older underneath, or a newer one: no warning.
        assert!(rollback_warnings(&gone, &[], &devices).is_empty());
        assert!(rollback_warnings(&dep("v1", 1, &[]), &[dep("v3", 3, &[])], &devices).is_empty());
    }
}
