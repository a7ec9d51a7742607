//! Rollouts and rollout policies.

use super::Labels;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `POST /rollouts`: a version (number or alias) to the devices matching
/// `selector`, under the named `policy`, a one-off `policy_document`
/// (TOML or JSON), or the defaults when neither is given.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutRequest {
    pub model: String,
    #[schema(value_type = Object)]
    pub version: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub selector: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_document: Option<String>,
}

/// A rollout.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub selector: Labels,
    /// The policy's name; empty for the defaults or a one-off document.
    pub policy: String,
    pub policy_version: i64,
    /// `running`, `awaiting_approval`, `paused`, `finished` or `aborted`.
    pub phase: String,
    /// The current wave, from 1.
    pub wave: usize,
    /// Devices matching the selector, given the version, and active on it.
    pub devices: usize,
    pub assigned: usize,
    pub active: usize,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The replica driving it (its lease), empty when none has yet.
    pub lease_holder: String,
}

/// The tenant's rollouts, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<Rollout>,
}

/// One device of a rollout.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutDevice {
    pub device: String,
    /// The version it last reported active.
    pub version: Option<u64>,
    /// What it ran when given the new version: where a rollback sends it.
    pub previous: Option<u64>,
    /// `active`, `failed` or `pending` once given the version; empty before.
    pub outcome: String,
    pub detail: String,
    /// It still matches the selector.
    pub present: bool,
}

/// The devices given the version in one wave.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutWave {
    /// From 1.
    pub wave: usize,
    pub devices: Vec<RolloutDevice>,
}

/// A rollout with its devices by wave and its last verdict.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutDetail {
    pub rollout: Rollout,
    /// The phase with its reason (a pause's or an abort's gate report).
    #[schema(value_type = Object)]
    pub phase_detail: Value,
    pub waves: Vec<RolloutWave>,
    /// Matching devices not given the version (yet).
    pub waiting: Vec<RolloutDevice>,
    /// The last evaluation of the current wave: bake, devices, one report
    /// per gate (docs/rollouts.md).
    #[schema(value_type = Option<Object>)]
    pub last_verdict: Option<Value>,
    /// The policy document in force (empty: the defaults).
    pub policy_document: String,
}

/// `PUT /rollouts/policies/{name}`: a policy document, TOML or JSON.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutPolicyRequest {
    pub document: String,
}

/// One version of a named rollout policy.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutPolicyInfo {
    pub name: String,
    pub version: i64,
    /// `toml` or `json`.
    pub format: String,
    pub document: String,
    pub created_at: i64,
    pub created_by: String,
}

/// The newest version of each of the tenant's rollout policies.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutPolicyList {
    pub policies: Vec<RolloutPolicyInfo>,
}
