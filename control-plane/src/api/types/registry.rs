//! Models, versions, aliases, registration.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// One model in a listing.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelSummary {
    pub name: String,
    pub project: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The highest ready version.
    pub latest_version: Option<i64>,
    pub versions: i64,
    /// Alias to version.
    pub aliases: BTreeMap<String, i64>,
}

/// `GET /models`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
    pub next_page_token: Option<String>,
}

/// `GET /models/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelDetail {
    #[serde(flatten)]
    pub summary: ModelSummary,
    pub latest: Option<LatestVersion>,
}

/// The latest ready version's metrics, tags and schema.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LatestVersion {
    pub version: i64,
    pub metrics: Option<BTreeMap<String, f64>>,
    pub tags: Option<BTreeMap<String, String>>,
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
}

/// One version in a listing.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionSummary {
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub size: i64,
    pub status: String,
    pub created_at: i64,
    pub created_by: String,
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub lineage: Option<Value>,
}

/// `GET /models/{name}/versions`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    pub model: String,
    pub versions: Vec<VersionSummary>,
    pub next_page_token: Option<String>,
}

/// A signature on a version and the publisher the trust root names for it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SignatureInfo {
    pub key_id: String,
    pub publisher: Option<String>,
}

/// `GET /models/{name}/versions/{version}`: one version's full metadata.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelDoc {
    pub model: String,
    pub version: i64,
    pub project: String,
    pub status: String,
    pub aliases: Vec<String>,
    pub digest: String,
    pub size: i64,
    pub registered_at: i64,
    pub registered_by: String,
    pub signatures: Vec<SignatureInfo>,
    /// Present when the stored manifest decodes.
    #[serde(flatten)]
    pub manifest: Option<ManifestDoc>,
}

/// What a version's manifest says.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ManifestDoc {
    #[schema(value_type = Object)]
    pub runtime: Value,
    pub schema: SchemaDoc,
    pub metrics: BTreeMap<String, f64>,
    pub tags: BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub lineage: Value,
    #[schema(value_type = Object)]
    pub target: Value,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    #[schema(value_type = Vec<Object>)]
    pub artifacts: Vec<Value>,
    pub baseline: Option<BaselineSummary>,
    /// How many test vectors the bundle carries.
    pub test_vectors: usize,
}

/// Inputs and outputs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SchemaDoc {
    pub inputs: Vec<TensorDoc>,
    pub outputs: Vec<TensorDoc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TensorDoc {
    pub name: String,
    /// Open Inference Protocol type name (`FP32`).
    pub datatype: String,
    pub shape: String,
}

/// The drift reference distribution, summarised.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BaselineSummary {
    pub rows: u64,
    pub features: Vec<BaselineFeature>,
}

/// `numeric` features have bins and a range; `categorical` ones a
/// category count.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BaselineFeature {
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<usize>,
}

/// `GET /models/{name}/compare`: versions side by side; deltas and changes
/// are keyed by version number (as a string) against the first, the base.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Comparison {
    pub model: Option<String>,
    pub base: Option<i64>,
    pub versions: Vec<ComparedVersion>,
    pub metrics: Vec<MetricComparison>,
    pub tags: Vec<TagComparison>,
    pub size_delta: BTreeMap<String, i64>,
    pub schema_changes: BTreeMap<String, Vec<String>>,
    pub baseline_changes: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ComparedVersion {
    pub version: i64,
    pub status: String,
    pub aliases: Vec<String>,
    pub digest: String,
    pub size: i64,
    pub registered_at: i64,
    #[schema(value_type = Option<Object>)]
    pub lineage: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricComparison {
    pub name: String,
    pub values: BTreeMap<String, Option<f64>>,
    pub delta: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TagComparison {
    pub name: String,
    pub values: BTreeMap<String, Option<String>>,
}

/// `POST /models`: what was registered (`status`: `created`, or
/// `restored` for an archived version pushed again).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RegisteredVersion {
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub size: i64,
    pub project: String,
    pub status: String,
}

/// An alias and the version it points at.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Alias {
    pub alias: String,
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

/// `GET /models/{name}/aliases`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AliasList {
    pub model: String,
    pub aliases: Vec<Alias>,
}

/// `PUT /models/{name}/aliases/{alias}`: `expect_current` makes it a
/// compare-and-set (`null`: only while unset).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasRequest {
    pub version: u64,
    #[serde(
        default,
        deserialize_with = "crate::api::query::deserialize_some",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub expect_current: Option<Option<u64>>,
}

/// `POST /models/{name}/promote` (alias defaults to `production`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::api::query::deserialize_some",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub expect_current: Option<Option<u64>>,
}

/// An alias moved: where it points and where it pointed before.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AliasSet {
    pub model: String,
    pub alias: String,
    pub version: i64,
    pub previous: Option<i64>,
}

/// An alias removed, and the version it pointed at.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AliasRemoved {
    pub model: String,
    pub alias: String,
    pub removed_from: i64,
}

/// A version archived (`archived`) or restored (`ready`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionStatus {
    pub model: String,
    pub version: i64,
    pub status: String,
}

/// A model or version deleted, and the artifacts nothing references now.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
    pub artifacts_removed: Vec<String>,
}
