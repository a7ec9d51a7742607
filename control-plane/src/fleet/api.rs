//! REST endpoints of the fleet: enrollment tokens, devices, deployments.
//! Mounted beside the registry API under `/api/v1`.

use super::service::{self, VersionRef};
use super::Fleet;
use crate::action::Action;
use crate::api::json_body;
use crate::api::query::parse_labels;
use crate::api::types::{
    AssignmentInfo, Deployment, DeploymentDeleted, DeploymentDetail, DeploymentDevice,
    DeploymentList, DeploymentRequest, DeploymentScaled, Device, DeviceDetail, DeviceLabels,
    DeviceList, DeviceRevoked, DeviceToken, DeviceTokenCreated, DeviceTokenList,
    DeviceTokenRequest, DeviceTokenRevoked, Downloads, ErrorBody, LabelsRequest, ScaleRequest,
};
use crate::api::{ApiError, AppState, Auth};
use crate::auth::Role;
use crate::store::fleet as db;
use axum::extract::{FromRef, Path, State};
use axum::Json;
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Res<T> = Result<Json<T>, ApiError>;

/// The fleet routes' state: the API's, and the fleet.
#[derive(Clone)]
pub struct FleetState {
    pub app: AppState,
    pub fleet: Arc<Fleet>,
}

impl FromRef<FleetState> for AppState {
    fn from_ref(s: &FleetState) -> Self {
        s.app.clone()
    }
}

impl FromRef<FleetState> for Arc<Fleet> {
    fn from_ref(s: &FleetState) -> Self {
        s.fleet.clone()
    }
}

pub fn routes() -> OpenApiRouter<FleetState> {
    OpenApiRouter::new()
        .routes(routes!(list_devices))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(ca_pem))
        .routes(routes!(show_device))
        .routes(routes!(set_labels))
        .routes(routes!(revoke))
        .routes(routes!(list_deployments, create_deployment))
        .routes(routes!(
            show_deployment,
            scale_deployment,
            delete_deployment
        ))
}

/// The device DTO, shared with the dashboard's fleet page.
pub(crate) fn device_dto(fleet: &Fleet, d: db::Device, connected: bool) -> Device {
    let held = fleet.held_root(&d.id);
    Device {
        trust_root_version: held.map(|h| h.0),
        trust_root_expires_at: held.map(|h| h.1),
        id: d.id,
        tenant: d.tenant,
        hostname: d.hostname,
        labels: d.labels,
        created_at: d.created_at,
        revoked_at: d.revoked_at,
        last_seen: d.last_seen,
        connected,
        runtimes: d.runtimes,
    }
}

impl From<db::Deployment> for Deployment {
    fn from(d: db::Deployment) -> Self {
        Deployment {
            id: d.id,
            tenant: d.tenant,
            model: d.model,
            version: d.version,
            digest: d.digest,
            selector: d.selector,
            created_at: d.created_at,
            created_by: d.created_by,
            deleted_at: d.deleted_at,
            runtime: d.runtime,
        }
    }
}

/// Create an enrollment token.
#[utoipa::path(post, path = "/api/v1/fleet/devices/tokens", tag = "fleet",
    request_body = DeviceTokenRequest,
    responses((status = 200, body = DeviceTokenCreated), (status = "4XX", body = ErrorBody)))]
async fn create_token(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    body: Bytes,
) -> Res<DeviceTokenCreated> {
    a.authorize(Action::DeviceTokenCreate, "").await?;
    let req: DeviceTokenRequest = json_body(&body)?;
    let labels = parse_labels(req.labels.as_ref())?;
    let t = service::create_enrollment_token(&fleet, &a.caller(), labels, req.expires_in, req.uses)
        .await?;
    Ok(Json(DeviceTokenCreated {
        id: t.id,
        token: t.token,
        tenant: a.p.tenant.clone(),
        labels: t.labels,
        uses: t.uses,
        expires_at: t.expires_at,
        quic: fleet.opts.quic.to_string(),
        ca_pem: fleet.ca.cert_pem(),
        root_fingerprint: t.root_fingerprint,
    }))
}

/// The tenant's enrollment tokens (never their secrets), newest first.
#[utoipa::path(get, path = "/api/v1/fleet/devices/tokens", tag = "fleet",
    responses((status = 200, body = DeviceTokenList), (status = "4XX", body = ErrorBody)))]
async fn list_tokens(a: Auth, State(fleet): State<Arc<Fleet>>) -> Res<DeviceTokenList> {
    a.authorize(Action::DeviceTokenList, "").await?;
    let now = fleet.store.clock().now_secs() as i64;
    let tokens = service::enrollment_tokens(&fleet, &a.caller())
        .await?
        .into_iter()
        .map(|t| {
            let state = if t.revoked_at.is_some() {
                "revoked"
            } else if now >= t.expires_at {
                "expired"
            } else if t.uses_left <= 0 {
                "used_up"
            } else {
                "usable"
            };
            DeviceToken {
                id: t.id,
                labels: t.labels,
                uses_left: t.uses_left,
                expires_at: t.expires_at,
                created_at: t.created_at,
                created_by: t.created_by,
                revoked_at: t.revoked_at,
                state: state.into(),
            }
        })
        .collect();
    Ok(Json(DeviceTokenList { tokens }))
}

/// Revoke an enrollment token: enrollments with it are refused from now on.
#[utoipa::path(delete, path = "/api/v1/fleet/devices/tokens/{id}", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceTokenRevoked), (status = "4XX", body = ErrorBody)))]
async fn revoke_token(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeviceTokenRevoked> {
    a.authorize(Action::DeviceTokenRevoke, &id).await?;
    let r = service::revoke_enrollment_token(&fleet, &a.caller(), &id).await;
    a.audited(Action::DeviceTokenRevoke, &id, r).await?;
    Ok(Json(DeviceTokenRevoked { id, revoked: true }))
}

/// The control plane's CA certificate (PEM), for `ferry-agent enroll --ca`.
#[utoipa::path(get, path = "/api/v1/fleet/devices/ca.pem", tag = "fleet",
    responses((status = 200, body = String, content_type = "application/x-pem-file"), (status = "4XX", body = ErrorBody)))]
async fn ca_pem(a: Auth, State(fleet): State<Arc<Fleet>>) -> Result<String, ApiError> {
    a.authorize(Action::DeviceCa, "").await?;
    Ok(fleet.ca.cert_pem())
}

/// The tenant's devices with labels and connection state.
#[utoipa::path(get, path = "/api/v1/fleet/devices", tag = "fleet",
    responses((status = 200, body = DeviceList), (status = "4XX", body = ErrorBody)))]
async fn list_devices(a: Auth, State(fleet): State<Arc<Fleet>>) -> Res<DeviceList> {
    a.authorize(Action::DeviceList, "").await?;
    let devices = service::devices(&fleet, &a.caller())
        .await?
        .into_iter()
        .map(|(d, connected)| device_dto(&fleet, d, connected))
        .collect();
    // Slot usage is server-wide (all tenants), so only admins see it.
    let downloads = (a.p.role >= Role::Admin).then(|| {
        let s = fleet.download_slots();
        Downloads {
            limit: s.limit,
            in_flight: s.in_flight,
            peak: s.peak,
        }
    });
    Ok(Json(DeviceList { devices, downloads }))
}

/// One device and what it should run.
#[utoipa::path(get, path = "/api/v1/fleet/devices/{id}", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceDetail), (status = "4XX", body = ErrorBody)))]
async fn show_device(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeviceDetail> {
    a.authorize(Action::DeviceShow, &id).await?;
    let v = service::device(&fleet, &a.caller(), &id).await?;
    Ok(Json(DeviceDetail {
        device: device_dto(&fleet, v.device, v.connected),
        assignments: v
            .assignments
            .iter()
            .map(|x| AssignmentInfo {
                model: x.model.as_str().to_string(),
                version: x.version,
                digest: x.manifest_digest.to_hex(),
            })
            .collect(),
    }))
}

/// Replace a device's labels.
#[utoipa::path(put, path = "/api/v1/fleet/devices/{id}/labels", tag = "fleet",
    params(("id" = String, Path)),
    request_body = LabelsRequest,
    responses((status = 200, body = DeviceLabels), (status = "4XX", body = ErrorBody)))]
async fn set_labels(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Res<DeviceLabels> {
    a.authorize(Action::DeviceLabel, &id).await?;
    let body: LabelsRequest = json_body(&body)?;
    let labels = parse_labels(body.labels.as_ref())?;
    service::set_labels(&fleet, &a.caller(), &id, &labels).await?;
    Ok(Json(DeviceLabels { id, labels }))
}

/// Revoke a device: its connection is closed and it cannot reconnect.
#[utoipa::path(post, path = "/api/v1/fleet/devices/{id}/revoke", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceRevoked), (status = "4XX", body = ErrorBody)))]
async fn revoke(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeviceRevoked> {
    a.authorize(Action::DeviceRevoke, &id).await?;
    service::revoke(&fleet, &a.caller(), &id).await?;
    Ok(Json(DeviceRevoked { id, revoked: true }))
}

/// A deployment's `version` field: a number, or a string that is a number
/// or an alias.
pub(crate) fn version_ref(v: &Value) -> Result<VersionRef, ApiError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(VersionRef::Number)
            .ok_or_else(|| ApiError::bad_request("version must be a positive integer")),
        Value::String(s) => Ok(match s.parse::<i64>() {
            Ok(v) => VersionRef::Number(v),
            Err(_) => VersionRef::Alias(s.clone()),
        }),
        _ => Err(ApiError::bad_request(
            "version must be a number or an alias",
        )),
    }
}

/// Deploy a model version to the devices matching a selector.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "fleet",
    request_body = DeploymentRequest,
    responses((status = 200, body = Deployment), (status = "4XX", body = ErrorBody)))]
async fn create_deployment(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    body: Bytes,
) -> Res<Deployment> {
    a.authorize(Action::DeploymentCreate, "").await?;
    let req: DeploymentRequest = json_body(&body)?;
    let selector = parse_labels(req.selector.as_ref())?;
    let version = version_ref(&req.version)?;
    let d = service::create_deployment(&fleet, &a.caller(), &req.model, &version, selector).await?;
    Ok(Json(d.into()))
}

/// The tenant's live deployments.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "fleet",
    responses((status = 200, body = DeploymentList), (status = "4XX", body = ErrorBody)))]
async fn list_deployments(a: Auth, State(fleet): State<Arc<Fleet>>) -> Res<DeploymentList> {
    a.authorize(Action::DeploymentList, "").await?;
    let deps = service::deployments(&fleet, &a.caller()).await?;
    Ok(Json(DeploymentList {
        deployments: deps.into_iter().map(Into::into).collect(),
    }))
}

/// A deployment with each matched device's state.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 200, body = DeploymentDetail), (status = "4XX", body = ErrorBody)))]
async fn show_deployment(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeploymentDetail> {
    a.authorize(Action::DeploymentShow, &id).await?;
    let s = service::deployment_status(&fleet, &a.caller(), &id).await?;
    Ok(Json(DeploymentDetail {
        deployment: s.deployment.into(),
        devices: s
            .devices
            .into_iter()
            .map(|d| DeploymentDevice {
                device: d.device,
                hostname: d.hostname,
                connected: d.connected,
                state: d.state,
                detail: d.detail,
            })
            .collect(),
        summary: s.summary,
    }))
}

/// Change a deployment's selector.
#[utoipa::path(patch, path = "/api/v1/deployments/{id}", tag = "fleet",
    params(("id" = String, Path)),
    request_body = ScaleRequest,
    responses((status = 200, body = DeploymentScaled), (status = "4XX", body = ErrorBody)))]
async fn scale_deployment(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Res<DeploymentScaled> {
    a.authorize(Action::DeploymentScale, &id).await?;
    let body: ScaleRequest = json_body(&body)?;
    let selector = parse_labels(body.selector.as_ref())?;
    service::scale_deployment(&fleet, &a.caller(), &id, &selector).await?;
    Ok(Json(DeploymentScaled { id, selector }))
}

/// Remove a deployment from the devices' desired state.
#[utoipa::path(delete, path = "/api/v1/deployments/{id}", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 200, body = DeploymentDeleted), (status = "4XX", body = ErrorBody)))]
async fn delete_deployment(
    a: Auth,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeploymentDeleted> {
    a.authorize(Action::DeploymentDelete, &id).await?;
    let warnings = service::delete_deployment(&fleet, &a.caller(), &id).await?;
    Ok(Json(DeploymentDeleted {
        id,
        deleted: true,
        warnings,
    }))
}
