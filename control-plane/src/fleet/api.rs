//! REST endpoints of the fleet: enrollment tokens, devices, deployments.
//! Mounted beside the registry API under `/api/v1`.

use super::Fleet;
use crate::action::Action;
use crate::api::json_body;
use crate::api::query::parse_labels;
use crate::api::types::{
    AssignmentInfo, Deployment, DeploymentDeleted, DeploymentDetail, DeploymentDevice,
    DeploymentList, DeploymentRequest, DeploymentScaled, Device, DeviceDetail, DeviceLabels,
    DeviceList, DeviceRevoked, DeviceTokenCreated, DeviceTokenRequest, Downloads, ErrorBody,
    LabelsRequest, ScaleRequest,
};
use crate::api::{ApiError, AppState, Auth};
use crate::audit::OUTCOME_OK;
use crate::auth::Role;
use crate::store::fleet::{self as db, NewEnrollmentToken};
use crate::store::StoreError;
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Res<T> = Result<Json<T>, ApiError>;

fn store_err(e: StoreError) -> ApiError {
    e.into()
}

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
        .routes(routes!(create_token))
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

fn device_dto(d: db::Device, connected: bool) -> Device {
    Device {
        id: d.id,
        tenant: d.tenant,
        hostname: d.hostname,
        labels: d.labels,
        created_at: d.created_at,
        revoked_at: d.revoked_at,
        last_seen: d.last_seen,
        connected,
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
        }
    }
}

/// Create an enrollment token.
#[utoipa::path(post, path = "/api/v1/fleet/devices/tokens", tag = "fleet",
    request_body = DeviceTokenRequest,
    responses((status = 200, body = DeviceTokenCreated), (status = "4XX", body = ErrorBody)))]
async fn create_token(
    a: Auth,
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
    body: Bytes,
) -> Res<DeviceTokenCreated> {
    a.authorize(Action::DeviceTokenCreate, "").await?;
    let req: DeviceTokenRequest = json_body(&body)?;
    let labels = parse_labels(req.labels.as_ref())?;
    let now = st.store.clock().now_secs() as i64;
    let expires_at = now + req.expires_in.unwrap_or(86_400).min(365 * 86_400) as i64;
    let uses = req.uses.unwrap_or(1).clamp(1, 1_000_000) as i64;
    let token = format!("fe_{}", hex::encode(rand::random::<[u8; 32]>()));
    let id = crate::auth::random_id("enr_", 6);
    let new = NewEnrollmentToken {
        id: id.clone(),
        tenant: a.p.tenant.clone(),
        hash: crate::auth::hash_token(&token),
        labels: labels.clone(),
        expires_at,
        uses,
        created_by: a.p.actor(),
    };
    let audit = a.entry(
        Action::DeviceTokenCreate,
        &id,
        OUTCOME_OK,
        format!(
            "labels {}, uses {uses}, expires {expires_at}",
            db::labels_to_string(&labels)
        ),
    );
    st.store
        .create_enrollment_token(&new, audit)
        .await
        .map_err(store_err)?;
    Ok(Json(DeviceTokenCreated {
        id,
        token,
        tenant: a.p.tenant.clone(),
        labels,
        uses,
        expires_at,
        quic: fleet.opts.quic.to_string(),
        ca_pem: fleet.ca.cert_pem(),
    }))
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
async fn list_devices(
    a: Auth,
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
) -> Res<DeviceList> {
    a.authorize(Action::DeviceList, "").await?;
    let devs = st.store.devices(&a.p.tenant).await.map_err(store_err)?;
    let online = fleet.connected();
    let devices = devs
        .into_iter()
        .map(|d| {
            let connected = online.contains(&d.id);
            device_dto(d, connected)
        })
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
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeviceDetail> {
    a.authorize(Action::DeviceShow, &id).await?;
    let d = st.store.device(&a.p.tenant, &id).await.map_err(store_err)?;
    let assignments = fleet.assignments(&d).await.map_err(store_err)?;
    let connected = fleet.connected().contains(&d.id);
    Ok(Json(DeviceDetail {
        device: device_dto(d, connected),
        assignments: assignments
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
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Res<DeviceLabels> {
    a.authorize(Action::DeviceLabel, &id).await?;
    let body: LabelsRequest = json_body(&body)?;
    let labels = parse_labels(body.labels.as_ref())?;
    let audit = a.entry(
        Action::DeviceLabel,
        &id,
        OUTCOME_OK,
        db::labels_to_string(&labels),
    );
    st.store
        .set_device_labels(&a.p.tenant, &id, &labels, audit)
        .await
        .map_err(store_err)?;
    fleet.changed();
    Ok(Json(DeviceLabels { id, labels }))
}

/// Revoke a device: its connection is closed and it cannot reconnect.
#[utoipa::path(post, path = "/api/v1/fleet/devices/{id}/revoke", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceRevoked), (status = "4XX", body = ErrorBody)))]
async fn revoke(
    a: Auth,
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeviceRevoked> {
    a.authorize(Action::DeviceRevoke, &id).await?;
    st.store
        .revoke_device(&a.p.tenant, &id, a.ok(Action::DeviceRevoke, &id))
        .await
        .map_err(store_err)?;
    fleet.disconnect(&id, "device revoked");
    Ok(Json(DeviceRevoked { id, revoked: true }))
}

/// Deploy a model version to the devices matching a selector.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "fleet",
    request_body = DeploymentRequest,
    responses((status = 200, body = Deployment), (status = "4XX", body = ErrorBody)))]
async fn create_deployment(
    a: Auth,
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
    body: Bytes,
) -> Res<Deployment> {
    a.authorize(Action::DeploymentCreate, "").await?;
    let req: DeploymentRequest = json_body(&body)?;
    let selector = parse_labels(req.selector.as_ref())?;
    let version: i64 = match &req.version {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "version must be a positive integer",
            )
        })?,
        Value::String(s) => match s.parse::<i64>() {
            Ok(v) => v,
            Err(_) => {
                let aliases = st
                    .store
                    .aliases(&a.p.tenant, &req.model)
                    .await
                    .map_err(store_err)?;
                aliases
                    .iter()
                    .find(|x| x.alias == *s)
                    .map(|x| x.version)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            format!("model {:?} has no alias {s:?}", req.model),
                        )
                    })?
            }
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "version must be a number or an alias",
            ))
        }
    };
    let row = st
        .store
        .version(&a.p.tenant, &req.model, version)
        .await
        .map_err(store_err)?;
    if row.status == "archived" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "archived",
            format!("{} v{version} is archived", req.model),
        ));
    }
    let d = db::Deployment {
        id: crate::auth::random_id("dep_", 6),
        tenant: a.p.tenant.clone(),
        model: req.model.clone(),
        version,
        digest: row.digest.clone(),
        selector,
        created_at: st.store.clock().now_secs() as i64,
        created_by: a.p.actor(),
        deleted_at: None,
    };
    let audit = a.entry(
        Action::DeploymentCreate,
        &d.id,
        OUTCOME_OK,
        format!(
            "{} v{} to {}",
            d.model,
            d.version,
            db::labels_to_string(&d.selector)
        ),
    );
    st.store
        .create_deployment(&d, audit)
        .await
        .map_err(store_err)?;
    fleet.changed();
    Ok(Json(d.into()))
}

/// The tenant's live deployments.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "fleet",
    responses((status = 200, body = DeploymentList), (status = "4XX", body = ErrorBody)))]
async fn list_deployments(a: Auth, State(st): State<AppState>) -> Res<DeploymentList> {
    a.authorize(Action::DeploymentList, "").await?;
    let deps = st
        .store
        .live_deployments(&a.p.tenant)
        .await
        .map_err(store_err)?;
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
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeploymentDetail> {
    a.authorize(Action::DeploymentShow, &id).await?;
    let d = st
        .store
        .deployment(&a.p.tenant, &id)
        .await
        .map_err(store_err)?;
    let devices = st.store.devices(&a.p.tenant).await.map_err(store_err)?;
    let states = st
        .store
        .device_models(&a.p.tenant, &d.model)
        .await
        .map_err(store_err)?;
    let online = fleet.connected();
    let mut rows = Vec::new();
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for dev in devices
        .iter()
        .filter(|x| db::matches(&d.selector, &x.labels))
    {
        let wanted = fleet
            .assignments(dev)
            .await
            .map_err(store_err)?
            .into_iter()
            .any(|x| x.manifest_digest.to_hex() == d.digest);
        let (state, detail) = match states.get(&dev.id) {
            _ if dev.revoked_at.is_some() => ("revoked".to_string(), String::new()),
            _ if !wanted => ("superseded".to_string(), String::new()),
            Some((v, s, det)) if *v == d.version => (s.clone(), det.clone()),
            _ => match fleet.progress(&dev.id, &d.digest) {
                Some(p) => (format!("downloading {p}%"), String::new()),
                None => ("pending".to_string(), String::new()),
            },
        };
        *counts.entry(state.clone()).or_default() += 1;
        rows.push(DeploymentDevice {
            device: dev.id.clone(),
            hostname: dev.hostname.clone(),
            connected: online.contains(&dev.id),
            state,
            detail,
        });
    }
    Ok(Json(DeploymentDetail {
        deployment: d.into(),
        devices: rows,
        summary: counts,
    }))
}

/// Change a deployment's selector.
#[utoipa::path(patch, path = "/api/v1/deployments/{id}", tag = "fleet",
    params(("id" = String, Path)),
    request_body = ScaleRequest,
    responses((status = 200, body = DeploymentScaled), (status = "4XX", body = ErrorBody)))]
async fn scale_deployment(
    a: Auth,
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Res<DeploymentScaled> {
    a.authorize(Action::DeploymentScale, &id).await?;
    let body: ScaleRequest = json_body(&body)?;
    let selector = parse_labels(body.selector.as_ref())?;
    let audit = a.entry(
        Action::DeploymentScale,
        &id,
        OUTCOME_OK,
        db::labels_to_string(&selector),
    );
    st.store
        .scale_deployment(&a.p.tenant, &id, &selector, audit)
        .await
        .map_err(store_err)?;
    fleet.changed();
    Ok(Json(DeploymentScaled { id, selector }))
}

/// Remove a deployment from the devices' desired state.
#[utoipa::path(delete, path = "/api/v1/deployments/{id}", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 200, body = DeploymentDeleted), (status = "4XX", body = ErrorBody)))]
async fn delete_deployment(
    a: Auth,
    State(st): State<AppState>,
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res<DeploymentDeleted> {
    a.authorize(Action::DeploymentDelete, &id).await?;
    let gone = st
        .store
        .delete_deployment(&a.p.tenant, &id, a.ok(Action::DeploymentDelete, &id))
        .await
        .map_err(store_err)?;
    fleet.changed();
    // The deletion stands either way; the warnings only tell the operator
    // what devices will do next.
    let warnings = match (
        st.store.live_deployments(&a.p.tenant).await,
        st.store.devices(&a.p.tenant).await,
    ) {
        (Ok(live), Ok(devices)) => rollback_warnings(&gone, &live, &devices),
        _ => Vec::new(),
    };
    Ok(Json(DeploymentDeleted {
        id,
        deleted: true,
        warnings,
    }))
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
    let mut older: std::collections::BTreeMap<i64, usize> = Default::default();
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

    fn labels(kv: &[(&str, &str)]) -> db::Labels {
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
            created_by: "op".into(),
            deleted_at: None,
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
