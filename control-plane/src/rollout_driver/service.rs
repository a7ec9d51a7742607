//! The rollout operations behind REST and the CLI: start a rollout, the
//! operator commands (pause, resume, approve, abort), named policies, and
//! the views. Like `fleet::service`, they take a [`Caller`] and return
//! domain results.

use super::commit::{self, parse_policy, phase_name};
use super::{inputs, DriverError, RolloutDriver};
use crate::action::Action;
use crate::auth;
use crate::fleet::service::FleetServiceError;
use crate::registry::Caller;
use crate::rollout::engine::{Rollout, RolloutError, RolloutState};
use crate::rollout::policy::RolloutPolicy;
use crate::store::fleet::Labels;
use crate::store::rollouts::{PolicyRow, RolloutRow};
use crate::store::StoreError;

/// Why a rollout operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RolloutServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A policy that does not parse or validate.
    #[error("{0}")]
    BadPolicy(String),
    /// A command the rollout's phase refuses.
    #[error("{0}")]
    WrongPhase(String),
    #[error("model {model:?} has no alias {alias:?}")]
    NoAlias { model: String, alias: String },
    #[error("{model} v{version} is archived")]
    Archived { model: String, version: i64 },
    /// The rollout kept changing under the command.
    #[error("rollout {0} changed while the command ran; try again")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

impl From<FleetServiceError> for RolloutServiceError {
    fn from(e: FleetServiceError) -> Self {
        match e {
            FleetServiceError::Store(s) => Self::Store(s),
            FleetServiceError::NoAlias { model, alias } => Self::NoAlias { model, alias },
            FleetServiceError::Archived { model, version } => Self::Archived { model, version },
        }
    }
}

impl From<DriverError> for RolloutServiceError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Store(s) => Self::Store(s),
            DriverError::Policy(p) => Self::BadPolicy(p.to_string()),
            DriverError::Rollout(RolloutError::WrongPhase { .. }) => {
                Self::WrongPhase(e.to_string())
            }
            DriverError::Rollout(RolloutError::Policy(p)) => Self::BadPolicy(p.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

type Res<T> = Result<T, RolloutServiceError>;

/// Which policy a new rollout follows.
#[derive(Clone, Debug)]
pub enum PolicyChoice {
    /// The defaults (docs/rollouts.md).
    Default,
    /// The newest version of a named policy.
    Named(String),
    /// A one-off document (`toml` or `json`).
    Document { text: String, format: String },
}

/// An operator command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Approve,
    Abort,
}

impl Command {
    fn action(self) -> Action {
        match self {
            Command::Pause => Action::RolloutPause,
            Command::Resume => Action::RolloutResume,
            Command::Approve => Action::RolloutApprove,
            Command::Abort => Action::RolloutAbort,
        }
    }
}

/// The format of a policy document: `json` when it parses as JSON's
/// object syntax (starts with `{`), else `toml`.
pub fn guess_format(text: &str) -> &'static str {
    if text.trim_start().starts_with('{') {
        "json"
    } else {
        "toml"
    }
}

/// Stores `document` as the next version of policy `name`, once it parses
/// and validates; returns that version.
pub async fn put_policy(
    d: &RolloutDriver,
    caller: &Caller,
    name: &str,
    document: &str,
) -> Res<i64> {
    let format = guess_format(document);
    parse_policy(document, format).map_err(|e| RolloutServiceError::BadPolicy(e.to_string()))?;
    let mut audit = caller.ok(Action::RolloutPolicyPut, name);
    audit.detail = format!("{} bytes of {format}", document.len());
    Ok(d.fleet
        .store
        .put_rollout_policy(&caller.tenant, name, document, format, &caller.actor, audit)
        .await?)
}

pub async fn policies(d: &RolloutDriver, caller: &Caller) -> Res<Vec<PolicyRow>> {
    Ok(d.fleet.store.rollout_policies(&caller.tenant).await?)
}

pub async fn policy(
    d: &RolloutDriver,
    caller: &Caller,
    name: &str,
    version: Option<i64>,
) -> Res<PolicyRow> {
    Ok(d.fleet
        .store
        .rollout_policy(&caller.tenant, name, version)
        .await?)
}

/// Starts rolling `version` of `model` out to the devices matching
/// `selector` under `policy`. The first wave is assigned by the driver's
/// next step, which this wakes.
pub async fn start(
    d: &RolloutDriver,
    caller: &Caller,
    model: &str,
    version: &crate::fleet::service::VersionRef,
    selector: Labels,
    policy: PolicyChoice,
) -> Res<RolloutRow> {
    let store = &d.fleet.store;
    let row = crate::fleet::service::deployable_version(store, caller, model, version).await?;
    let version = row.version;
    let (policy_name, policy_version, document, format) = match policy {
        PolicyChoice::Default => (String::new(), 0, String::new(), "toml".to_string()),
        PolicyChoice::Named(name) => {
            let p = store.rollout_policy(&caller.tenant, &name, None).await?;
            (p.name, p.version, p.document, p.format)
        }
        PolicyChoice::Document { text, format } => (String::new(), 0, text, format),
    };
    let parsed: RolloutPolicy = parse_policy(&document, &format)
        .map_err(|e| RolloutServiceError::BadPolicy(e.to_string()))?;
    let id = auth::random_id("ro_", 6);
    let now_ms = store.clock().now_ms();
    let mut r = RolloutRow {
        id: id.clone(),
        tenant: caller.tenant.clone(),
        model: model.to_string(),
        version,
        digest: row.digest.clone(),
        selector,
        policy_name,
        policy_version,
        policy_document: document,
        policy_format: format,
        state: String::new(),
        phase: String::new(),
        revision: 0,
        created_by: caller.actor.clone(),
        created_at: store.clock().now_secs() as i64,
        updated_at: store.clock().now_secs() as i64,
        // The replica that starts a rollout drives it first.
        lease_holder: d.holder.clone(),
        lease_expires_ms: (now_ms as i64).saturating_add(d.lease_ms),
    };
    // The devices matching now: the engine ranks them for the waves.
    let mut rollout = Rollout::start(parsed, version as u64, id.clone(), Vec::new(), now_ms)
        .map_err(|e| RolloutServiceError::BadPolicy(e.to_string()))?;
    inputs::feed(
        store,
        &r,
        &mut rollout,
        &mut inputs::TelemetryCache::default(),
    )
    .await?;
    r.state = serde_json::to_string(rollout.state())
        .map_err(|e| RolloutServiceError::Internal(e.to_string()))?;
    r.phase = phase_name(&rollout.state().phase).into();
    let mut audit = caller.ok(Action::RolloutStart, &id);
    audit.detail = format!(
        "{model} v{version} to {}, policy {}",
        crate::store::fleet::labels_to_string(&r.selector),
        if r.policy_name.is_empty() {
            "(defaults)".to_string()
        } else {
            format!("{} v{}", r.policy_name, r.policy_version)
        }
    );
    store.create_rollout(&r, audit).await?;
    d.wake();
    Ok(r)
}

/// Carries out an operator command on rollout `id` and saves, retrying
/// when the driver saved a step meanwhile.
pub async fn command(
    d: &RolloutDriver,
    caller: &Caller,
    id: &str,
    cmd: Command,
) -> Res<RolloutRow> {
    let store = &d.fleet.store;
    for _ in 0..10 {
        let row = store.rollout(&caller.tenant, id).await?;
        let mut rollout = commit::load(&row)?;
        let now = store.clock().now_ms();
        let actions = match cmd {
            Command::Pause => rollout.pause(),
            Command::Resume => rollout.resume_paused(now),
            Command::Approve => rollout.approve(now),
            Command::Abort => rollout.abort(),
        }
        .map_err(|e| match e {
            RolloutError::WrongPhase { .. } => RolloutServiceError::WrongPhase(e.to_string()),
            other => RolloutServiceError::Internal(other.to_string()),
        })?;
        let audit = caller.ok(cmd.action(), id);
        if commit::commit(d, &row, &rollout, &actions, Some(audit)).await? {
            d.wake();
            return Ok(store.rollout(&caller.tenant, id).await?);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(RolloutServiceError::Busy(id.to_string()))
}

pub async fn list(d: &RolloutDriver, caller: &Caller) -> Res<Vec<RolloutRow>> {
    Ok(d.fleet.store.rollouts(&caller.tenant).await?)
}

/// A rollout with its engine state.
pub struct RolloutView {
    pub row: RolloutRow,
    pub state: RolloutState,
}

pub async fn show(d: &RolloutDriver, caller: &Caller, id: &str) -> Res<RolloutView> {
    let row = d.fleet.store.rollout(&caller.tenant, id).await?;
    let state: RolloutState = serde_json::from_str(&row.state)
        .map_err(|e| RolloutServiceError::Internal(format!("stored rollout state: {e}")))?;
    Ok(RolloutView { row, state })
}
