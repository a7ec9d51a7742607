//! Fleet devices, enrollment tokens and deployments.

use super::Labels;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `POST /fleet/devices/tokens`: `labels` the enrolled devices get,
/// lifetime in seconds (default one day), how many devices may enroll
/// (default 1).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct DeviceTokenRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub labels: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
}

/// An enrollment token, its secret shown once, and what an agent needs to
/// enroll with it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceTokenCreated {
    pub id: String,
    pub token: String,
    pub tenant: String,
    pub labels: Labels,
    pub uses: i64,
    pub expires_at: i64,
    /// The fleet's QUIC address.
    pub quic: String,
    pub ca_pem: String,
    /// SHA-256 fingerprint of the tenant's current trust root, for
    /// `ferry-agent enroll --root-fingerprint` (compare it with the one
    /// `ferry trust init` printed); absent while the tenant has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_fingerprint: Option<String>,
}

/// An enrollment token as listed: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceToken {
    pub id: String,
    pub labels: Labels,
    /// Enrollments it still allows.
    pub uses_left: i64,
    pub expires_at: i64,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    /// `usable`, `revoked`, `expired` or `used_up`.
    pub state: String,
}

/// The tenant's enrollment tokens, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceTokenList {
    pub tokens: Vec<DeviceToken>,
}

/// A revoked enrollment token.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceTokenRevoked {
    pub id: String,
    pub revoked: bool,
}

/// An enrolled device.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Device {
    pub id: String,
    pub tenant: String,
    pub hostname: String,
    pub labels: Labels,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    pub connected: bool,
    /// The runtimes its last fleet hello offered (`onnx`,
    /// `onnx-burn-cuda`, ...); absent before its first hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtimes: Option<Vec<String>>,
    /// The trust-root version the device reported holding (as last heard
    /// by the replica that answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_root_version: Option<u64>,
    /// When that root expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_root_expires_at: Option<u64>,
}

/// Download slot usage, server-wide.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
pub struct Downloads {
    pub limit: usize,
    pub in_flight: usize,
    pub peak: usize,
}

/// `GET /fleet/devices` (`downloads` for admins only).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads: Option<Downloads>,
}

/// A model version a device should run.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AssignmentInfo {
    pub model: String,
    pub version: u64,
    pub digest: String,
}

/// `GET /fleet/devices/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: Device,
    pub assignments: Vec<AssignmentInfo>,
}

/// `PUT /fleet/devices/{id}/labels`: the request (labels replace all) and
/// the answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct LabelsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub labels: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceLabels {
    pub id: String,
    pub labels: Labels,
}

/// `POST /fleet/devices/{id}/revoke`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceRevoked {
    pub id: String,
    pub revoked: bool,
}

/// `POST /deployments`: `version` is a number or an alias (`production`);
/// an empty selector matches every device.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentRequest {
    pub model: String,
    #[schema(value_type = Object)]
    pub version: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub selector: Option<Value>,
}

/// A model version deployed to the devices matching a selector.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub selector: Labels,
    pub created_at: i64,
    pub created_by: String,
    pub deleted_at: Option<i64>,
    /// The runtime the version requires (`burn`, `burn-cuda`, ...): only
    /// devices that offer it are sent it; the others show `unsupported`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// `GET /deployments`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    pub deployments: Vec<Deployment>,
}

/// One matched device's state for a deployment (`active`, `failed`,
/// `pending`, `downloading N%`, `superseded`, `revoked`, `unsupported`
/// (it lacks the runtime the version requires), ...).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDevice {
    pub device: String,
    pub hostname: String,
    pub connected: bool,
    pub state: String,
    pub detail: String,
}

/// `GET /deployments/{id}`: per-device state and a count per state.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    pub deployment: Deployment,
    pub devices: Vec<DeploymentDevice>,
    pub summary: BTreeMap<String, u64>,
}

/// `PATCH /deployments/{id}`: a new selector; and the answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ScaleRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub selector: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentScaled {
    pub id: String,
    pub selector: Labels,
}

/// `DELETE /deployments/{id}`, with what devices will do next.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDeleted {
    pub id: String,
    pub deleted: bool,
    pub warnings: Vec<String>,
}
