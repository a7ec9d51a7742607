//! `/rollouts…`: start a rollout, list and show them (devices by wave, the
//! last verdict with its gate reports), the operator commands (pause,
//! resume, approve, abort), and named, versioned rollout policies.
//! Mounted with the fleet (they need its driver).

use super::auth::Auth;
use super::error::ApiError;
use super::query::{json_body, parse_labels, parse_name};
use super::state::AppState;
use super::types::{
    ErrorBody, Rollout, RolloutDetail, RolloutDevice, RolloutList, RolloutPolicyInfo,
    RolloutPolicyList, RolloutPolicyRequest, RolloutRequest, RolloutWave,
};
use crate::action::Action;
use crate::rollout::engine::RolloutState;
use crate::rollout::observations::Activation;
use crate::rollout_driver::service::{self, Command, PolicyChoice, RolloutServiceError as E};
use crate::rollout_driver::{phase_name, RolloutDriver};
use crate::store::rollouts::{PolicyRow, RolloutRow};
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Res<T> = Result<Json<T>, ApiError>;

/// The rollout routes' state: the API's, and the driver.
#[derive(Clone)]
pub struct RolloutsState {
    pub app: AppState,
    pub driver: Arc<RolloutDriver>,
}

impl FromRef<RolloutsState> for AppState {
    fn from_ref(s: &RolloutsState) -> Self {
        s.app.clone()
    }
}

impl FromRef<RolloutsState> for Arc<RolloutDriver> {
    fn from_ref(s: &RolloutsState) -> Self {
        s.driver.clone()
    }
}

impl From<E> for ApiError {
    fn from(e: E) -> Self {
        match e {
            E::Store(s) => s.into(),
            E::BadPolicy(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_policy", m),
            E::WrongPhase(m) => ApiError::new(StatusCode::CONFLICT, "wrong_phase", m),
            E::NoAlias { .. } => ApiError::not_found(e.to_string()),
            E::Archived { .. } => ApiError::new(StatusCode::CONFLICT, "archived", e.to_string()),
            E::Busy(_) => ApiError::new(StatusCode::CONFLICT, "busy", e.to_string()),
            E::Internal(m) => ApiError::internal(m),
        }
    }
}

pub fn routes() -> OpenApiRouter<RolloutsState> {
    OpenApiRouter::new()
        .routes(routes!(list_rollouts, start_rollout))
        .routes(routes!(show_rollout))
        .routes(routes!(pause_rollout))
        .routes(routes!(resume_rollout))
        .routes(routes!(approve_rollout))
        .routes(routes!(abort_rollout))
        .routes(routes!(list_policies))
        .routes(routes!(show_policy, put_policy))
}

fn counts(s: Option<&RolloutState>) -> (usize, usize, usize) {
    let Some(s) = s else { return (0, 0, 0) };
    let present = s.devices.values().filter(|d| d.present).count();
    let assigned = s
        .devices
        .values()
        .filter(|d| d.assigned_wave.is_some())
        .count();
    let active = s
        .devices
        .values()
        .filter(|d| d.assigned_wave.is_some() && d.outcome == Some(Activation::Active))
        .count();
    (present, assigned, active)
}

pub(crate) fn rollout_dto(r: &RolloutRow, s: Option<&RolloutState>) -> Rollout {
    let (devices, assigned, active) = counts(s);
    Rollout {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        model: r.model.clone(),
        version: r.version,
        digest: r.digest.clone(),
        selector: r.selector.clone(),
        policy: r.policy_name.clone(),
        policy_version: r.policy_version,
        phase: s.map_or_else(|| r.phase.clone(), |s| phase_name(&s.phase).to_string()),
        wave: s.map_or(1, |s| s.wave + 1),
        devices,
        assigned,
        active,
        created_by: r.created_by.clone(),
        created_at: r.created_at,
        updated_at: r.updated_at,
        lease_holder: r.lease_holder.clone(),
    }
}

fn policy_dto(p: PolicyRow) -> RolloutPolicyInfo {
    RolloutPolicyInfo {
        name: p.name,
        version: p.version,
        format: p.format,
        document: p.document,
        created_at: p.created_at,
        created_by: p.created_by,
    }
}

pub(crate) fn parse_state(r: &RolloutRow) -> Option<RolloutState> {
    serde_json::from_str(&r.state).ok()
}

/// Start a rollout: a version to the devices matching a selector, wave by
/// wave under a policy (named, one-off, or the defaults).
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts",
    request_body = RolloutRequest,
    responses((status = 200, body = Rollout), (status = "4XX", body = ErrorBody)))]
async fn start_rollout(a: Auth, State(d): State<Arc<RolloutDriver>>, body: Bytes) -> Res<Rollout> {
    a.authorize(Action::RolloutStart, "").await?;
    let req: RolloutRequest = json_body(&body)?;
    let model = parse_name(&req.model)?;
    let version = crate::fleet::api::version_ref(&req.version)?;
    let selector = parse_labels(req.selector.as_ref())?;
    let policy = match (req.policy, req.policy_document) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give policy (a name) or policy_document, not both",
            ))
        }
        (Some(name), None) => PolicyChoice::Named(name),
        (None, Some(text)) => {
            let format = service::guess_format(&text).to_string();
            PolicyChoice::Document { text, format }
        }
        (None, None) => PolicyChoice::Default,
    };
    let r = service::start(&d, &a.caller(), &model, &version, selector, policy).await;
    let r = a.audited(Action::RolloutStart, &model, r).await?;
    Ok(Json(rollout_dto(&r, parse_state(&r).as_ref())))
}

/// The tenant's rollouts, newest first.
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts",
    responses((status = 200, body = RolloutList), (status = "4XX", body = ErrorBody)))]
async fn list_rollouts(a: Auth, State(d): State<Arc<RolloutDriver>>) -> Res<RolloutList> {
    a.authorize(Action::RolloutList, "").await?;
    let rows = service::list(&d, &a.caller()).await?;
    Ok(Json(RolloutList {
        rollouts: rows
            .iter()
            .map(|r| rollout_dto(r, parse_state(r).as_ref()))
            .collect(),
    }))
}

/// A rollout: its devices by wave, those still waiting, and the last
/// verdict with one report per gate.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDetail), (status = "4XX", body = ErrorBody)))]
async fn show_rollout(
    a: Auth,
    State(d): State<Arc<RolloutDriver>>,
    Path(id): Path<String>,
) -> Res<RolloutDetail> {
    a.authorize(Action::RolloutShow, &id).await?;
    let v = service::show(&d, &a.caller(), &id).await?;
    Ok(Json(detail(&v.row, &v.state)))
}

/// The detail DTO, shared with the dashboard's rollout page.
pub(crate) fn detail(row: &RolloutRow, s: &RolloutState) -> RolloutDetail {
    let mut waves: Vec<RolloutWave> = Vec::new();
    let mut waiting = Vec::new();
    for (id, d) in &s.devices {
        let (outcome, reason) = match (&d.assigned_wave, &d.outcome) {
            (None, _) => (String::new(), String::new()),
            (Some(_), None) => ("pending".to_string(), String::new()),
            (Some(_), Some(Activation::Active)) => ("active".to_string(), String::new()),
            (Some(_), Some(Activation::Failed { reason })) => {
                ("failed".to_string(), reason.clone())
            }
        };
        let dev = RolloutDevice {
            device: id.clone(),
            version: d.version,
            previous: d.previous,
            outcome,
            detail: reason,
            present: d.present,
        };
        match d.assigned_wave {
            Some(w) => {
                while waves.len() <= w {
                    waves.push(RolloutWave {
                        wave: waves.len() + 1,
                        devices: Vec::new(),
                    });
                }
                waves[w].devices.push(dev);
            }
            None => waiting.push(dev),
        }
    }
    RolloutDetail {
        rollout: rollout_dto(row, Some(s)),
        phase_detail: serde_json::to_value(&s.phase).unwrap_or_default(),
        waves,
        waiting,
        last_verdict: s
            .last_verdict
            .as_ref()
            .and_then(|v| serde_json::to_value(v).ok()),
        policy_document: row.policy_document.clone(),
    }
}

async fn run_command(
    a: Auth,
    d: Arc<RolloutDriver>,
    id: String,
    cmd: Command,
    action: Action,
) -> Res<RolloutDetail> {
    a.authorize(action, &id).await?;
    let r = service::command(&d, &a.caller(), &id, cmd).await;
    let row = a.audited(action, &id, r).await?;
    let s = parse_state(&row).ok_or_else(|| ApiError::internal("stored rollout state"))?;
    Ok(Json(detail(&row, &s)))
}

/// Pause a running rollout (or one awaiting approval).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", tag = "rollouts",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDetail), (status = "4XX", body = ErrorBody)))]
async fn pause_rollout(
    a: Auth,
    State(d): State<Arc<RolloutDriver>>,
    Path(id): Path<String>,
) -> Res<RolloutDetail> {
    run_command(a, d, id, Command::Pause, Action::RolloutPause).await
}

/// Resume a paused rollout: the wave's bake starts over.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", tag = "rollouts",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDetail), (status = "4XX", body = ErrorBody)))]
async fn resume_rollout(
    a: Auth,
    State(d): State<Arc<RolloutDriver>>,
    Path(id): Path<String>,
) -> Res<RolloutDetail> {
    run_command(a, d, id, Command::Resume, Action::RolloutResume).await
}

/// Approve the next wave of a rollout awaiting approval.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/approve", tag = "rollouts",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDetail), (status = "4XX", body = ErrorBody)))]
async fn approve_rollout(
    a: Auth,
    State(d): State<Arc<RolloutDriver>>,
    Path(id): Path<String>,
) -> Res<RolloutDetail> {
    run_command(a, d, id, Command::Approve, Action::RolloutApprove).await
}

/// Abort a rollout: every device given the version goes back to what it
/// ran before.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", tag = "rollouts",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutDetail), (status = "4XX", body = ErrorBody)))]
async fn abort_rollout(
    a: Auth,
    State(d): State<Arc<RolloutDriver>>,
    Path(id): Path<String>,
) -> Res<RolloutDetail> {
    run_command(a, d, id, Command::Abort, Action::RolloutAbort).await
}

/// The newest version of each rollout policy.
#[utoipa::path(get, path = "/api/v1/rollouts/policies", tag = "rollouts",
    responses((status = 200, body = RolloutPolicyList), (status = "4XX", body = ErrorBody)))]
async fn list_policies(a: Auth, State(d): State<Arc<RolloutDriver>>) -> Res<RolloutPolicyList> {
    a.authorize(Action::RolloutPolicyList, "").await?;
    let policies = service::policies(&d, &a.caller())
        .await?
        .into_iter()
        .map(policy_dto)
        .collect();
    Ok(Json(RolloutPolicyList { policies }))
}

/// A rollout policy (its newest version).
#[utoipa::path(get, path = "/api/v1/rollouts/policies/{name}", tag = "rollouts",
    params(("name" = String, Path)),
    responses((status = 200, body = RolloutPolicyInfo), (status = "4XX", body = ErrorBody)))]
async fn show_policy(
    a: Auth,
    State(d): State<Arc<RolloutDriver>>,
    Path(name): Path<String>,
) -> Res<RolloutPolicyInfo> {
    a.authorize(Action::RolloutPolicyShow, &name).await?;
    let p = service::policy(&d, &a.caller(), &name, None).await?;
    Ok(Json(policy_dto(p)))
}

/// Store a new version of a rollout policy (validated first).
#[utoipa::path(put, path = "/api/v1/rollouts/policies/{name}", tag = "rollouts",
    params(("name" = String, Path)),
    request_body = RolloutPolicyRequest,
    responses((status = 200, body = RolloutPolicyInfo), (status = "4XX", body = ErrorBody)))]
async fn put_policy(
    a: Auth,
    State(d): State<Arc<RolloutDriver>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Res<RolloutPolicyInfo> {
    a.authorize(Action::RolloutPolicyPut, &name).await?;
    let name = parse_name(&name)?;
    let req: RolloutPolicyRequest = json_body(&body)?;
    let r = service::put_policy(&d, &a.caller(), &name, &req.document).await;
    a.audited(Action::RolloutPolicyPut, &name, r).await?;
    let p = service::policy(&d, &a.caller(), &name, None).await?;
    Ok(Json(policy_dto(p)))
}
