//! REST endpoints of the fleet: enrollment tokens, devices, deployments.
//! Mounted beside the registry API under `/api/v1`.

use super::Fleet;
use crate::api::json_body;
use crate::api::{ApiError, AppState, Auth};
use crate::audit::{AuditEntry, OUTCOME_OK, OUTCOME_REFUSED};
use crate::auth::Role;
use crate::store::fleet::{self as db, NewEnrollmentToken};
use crate::store::StoreError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type Res = Result<Json<Value>, ApiError>;

fn store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        other => {
            tracing::error!("internal error: {other}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            )
        }
    }
}

fn entry(a: &Auth, action: &str, target: &str, outcome: &str, detail: String) -> AuditEntry {
    AuditEntry {
        tenant: a.p.tenant.clone(),
        request_id: a.rid.clone(),
        actor: a.p.actor(),
        action: action.into(),
        target: target.into(),
        outcome: outcome.into(),
        detail,
    }
}

async fn need(st: &AppState, a: &Auth, role: Role, action: &str) -> Result<(), ApiError> {
    if a.p.role >= role {
        return Ok(());
    }
    let msg = format!(
        "{action} needs the {} role; this token has {}",
        role.as_str(),
        a.p.role.as_str()
    );
    let _ = st
        .store
        .audit(entry(a, action, "", OUTCOME_REFUSED, msg.clone()))
        .await;
    Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg))
}

fn ok_entry(a: &Auth, action: &str, target: &str, detail: String) -> AuditEntry {
    entry(a, action, target, OUTCOME_OK, detail)
}

/// Every fleet route (method, path): the OpenAPI document and the fleet
/// RBAC matrix test are checked against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/fleet/devices"),
    ("POST", "/api/v1/fleet/devices/tokens"),
    ("GET", "/api/v1/fleet/devices/ca.pem"),
    ("GET", "/api/v1/fleet/devices/{id}"),
    ("PUT", "/api/v1/fleet/devices/{id}/labels"),
    ("POST", "/api/v1/fleet/devices/{id}/revoke"),
    ("GET", "/api/v1/deployments"),
    ("POST", "/api/v1/deployments"),
    ("GET", "/api/v1/deployments/{id}"),
    ("PATCH", "/api/v1/deployments/{id}"),
    ("DELETE", "/api/v1/deployments/{id}"),
];

pub fn routes(fleet: Arc<Fleet>) -> Router<AppState> {
    let v1 = Router::new()
        .route("/fleet/devices", get(list_devices))
        .route("/fleet/devices/tokens", post(create_token))
        .route("/fleet/devices/ca.pem", get(ca_pem))
        .route("/fleet/devices/{id}", get(show_device))
        .route("/fleet/devices/{id}/labels", put(set_labels))
        .route("/fleet/devices/{id}/revoke", post(revoke))
        .route(
            "/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route(
            "/deployments/{id}",
            get(show_deployment)
                .patch(scale_deployment)
                .delete(delete_deployment),
        );
    Router::new().nest("/api/v1", v1).layer(Extension(fleet))
}

fn parse_labels(v: Option<&Value>) -> Result<db::Labels, ApiError> {
    let mut out = db::Labels::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(s) = v.as_str() else {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("label {k:?} must be a string"),
                    ));
                };
                out.insert(k.clone(), s.to_string());
            }
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "labels must be an object of strings",
            ))
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct TokenReq {
    labels: Option<Value>,
    /// Lifetime in seconds (default one day).
    expires_in: Option<u64>,
    /// How many devices may enroll with it (default 1).
    uses: Option<u64>,
}

async fn create_token(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
    body: Bytes,
) -> Res {
    need(&st, &a, Role::Operator, "device.token.create").await?;
    let req: TokenReq = json_body(&body)?;
    let labels = parse_labels(req.labels.as_ref())?;
    let now = crate::now_unix() as i64;
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
    let audit = ok_entry(
        &a,
        "device.token.create",
        &id,
        format!(
            "labels {}, uses {uses}, expires {expires_at}",
            db::labels_to_string(&labels)
        ),
    );
    st.store
        .create_enrollment_token(&new, audit)
        .await
        .map_err(store_err)?;
    Ok(Json(json!({
        "id": id,
        "token": token,
        "tenant": a.p.tenant,
        "labels": labels,
        "uses": uses,
        "expires_at": expires_at,
        "quic": fleet.opts.quic.to_string(),
        "ca_pem": fleet.ca.cert_pem(),
    })))
}

async fn ca_pem(_a: Auth, Extension(fleet): Extension<Arc<Fleet>>) -> String {
    fleet.ca.cert_pem()
}

async fn list_devices(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
) -> Res {
    let devs = st.store.devices(&a.p.tenant).await.map_err(store_err)?;
    let online = fleet.connected();
    let items: Vec<Value> = devs
        .into_iter()
        .map(|d| {
            let connected = online.contains(&d.id);
            let mut v = json!(d);
            v["connected"] = json!(connected);
            v
        })
        .collect();
    let mut body = json!({ "devices": items });
    // Slot usage is server-wide (all tenants), so only admins see it.
    if a.p.role >= Role::Admin {
        body["downloads"] = json!(fleet.download_slots());
    }
    Ok(Json(body))
}

async fn show_device(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res {
    let d = st.store.device(&a.p.tenant, &id).await.map_err(store_err)?;
    let assignments = fleet.assignments(&d).await.map_err(store_err)?;
    let connected = fleet.connected().contains(&d.id);
    let mut v = json!(d);
    v["connected"] = json!(connected);
    v["assignments"] = json!(assignments
        .iter()
        .map(|x| json!({"model": x.model.as_str(), "version": x.version, "digest": x.manifest_digest.to_hex()}))
        .collect::<Vec<_>>());
    Ok(Json(v))
}

async fn set_labels(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Res {
    need(&st, &a, Role::Operator, "device.label").await?;
    let body: Value = json_body(&body)?;
    let labels = parse_labels(body.get("labels"))?;
    let audit = ok_entry(&a, "device.label", &id, db::labels_to_string(&labels));
    st.store
        .set_device_labels(&a.p.tenant, &id, &labels, audit)
        .await
        .map_err(store_err)?;
    fleet.changed();
    Ok(Json(json!({ "id": id, "labels": labels })))
}

async fn revoke(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res {
    need(&st, &a, Role::Operator, "device.revoke").await?;
    let audit = ok_entry(&a, "device.revoke", &id, String::new());
    st.store
        .revoke_device(&a.p.tenant, &id, audit)
        .await
        .map_err(store_err)?;
    fleet.disconnect(&id, "device revoked");
    Ok(Json(json!({ "id": id, "revoked": true })))
}

#[derive(Deserialize)]
struct DeployReq {
    model: String,
    /// A version number or an alias (`production`).
    version: Value,
    selector: Option<Value>,
}

async fn create_deployment(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
    body: Bytes,
) -> Res {
    need(&st, &a, Role::Operator, "deployment.create").await?;
    let req: DeployReq = json_body(&body)?;
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
        created_at: crate::now_unix() as i64,
        created_by: a.p.actor(),
        deleted_at: None,
    };
    let audit = ok_entry(
        &a,
        "deployment.create",
        &d.id,
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
    Ok(Json(json!(d)))
}

async fn list_deployments(a: Auth, State(st): State<AppState>) -> Res {
    let deps = st
        .store
        .live_deployments(&a.p.tenant)
        .await
        .map_err(store_err)?;
    Ok(Json(json!({ "deployments": deps })))
}

async fn show_deployment(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res {
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
        rows.push(json!({
            "device": dev.id,
            "hostname": dev.hostname,
            "connected": online.contains(&dev.id),
            "state": state,
            "detail": detail,
        }));
    }
    let mut v = json!(d);
    v["devices"] = json!(rows);
    v["summary"] = json!(counts);
    Ok(Json(v))
}

async fn scale_deployment(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Res {
    need(&st, &a, Role::Operator, "deployment.scale").await?;
    let body: Value = json_body(&body)?;
    let selector = parse_labels(body.get("selector"))?;
    let audit = ok_entry(&a, "deployment.scale", &id, db::labels_to_string(&selector));
    st.store
        .scale_deployment(&a.p.tenant, &id, &selector, audit)
        .await
        .map_err(store_err)?;
    fleet.changed();
    Ok(Json(json!({ "id": id, "selector": selector })))
}

async fn delete_deployment(
    a: Auth,
    State(st): State<AppState>,
    Extension(fleet): Extension<Arc<Fleet>>,
    Path(id): Path<String>,
) -> Res {
    need(&st, &a, Role::Operator, "deployment.delete").await?;
    let audit = ok_entry(&a, "deployment.delete", &id, String::new());
    let gone = st
        .store
        .delete_deployment(&a.p.tenant, &id, audit)
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
    Ok(Json(
        json!({ "id": id, "deleted": true, "warnings": warnings }),
    ))
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
