//! The bundle manifest: what a publisher signs.

use crate::baseline::Baseline;
use crate::encoding::{self, DecodeError};
use crate::keys::{self, Digest, Domain, Signature};
use crate::model::{is_safe_name, ModelName, Schema, Tensor, Version};
use crate::UnixTime;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest manifest (encoded) any decoder accepts.
pub const MANIFEST_LIMIT: usize = 8 * 1024 * 1024;
/// Largest single artifact a manifest may declare (64 GiB).
pub const ARTIFACT_LIMIT: u64 = 64 << 30;
/// Most artifacts in one bundle.
pub const MAX_ARTIFACTS: usize = 64;
/// The manifest tag by which a publisher says the model takes NaN and
/// infinite input values (a tree ensemble that routes missing values, say):
/// its value is [`NON_FINITE_ACCEPT`]. Without it, serving and scoring
/// refuse non-finite inputs. A tag, not a new field: tags are signed with
/// the manifest, and deployed agents decode it unchanged.
pub const NON_FINITE_TAG: &str = "ferry.non_finite_inputs";
pub const NON_FINITE_ACCEPT: &str = "accept";

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// An ONNX graph, run by tract on CPU (or a compiled-in burn architecture
    /// on GPU hosts).
    Onnx,
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Runtime::Onnx => f.write_str("onnx"),
        }
    }
}

/// One file of a bundle, by length and content digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// File name on the device; a single safe path component.
    pub name: String,
    pub len: u64,
    pub sha256: Digest,
}

/// Where a version came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub parent_version: Option<Version>,
    pub training_run: Option<String>,
    pub data_hash: Option<String>,
}

/// Which devices may run the bundle. Empty lists mean "any".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetConstraints {
    /// Target architectures (`x86_64`, `aarch64`, `arm`), as Rust names them.
    pub architectures: Vec<String>,
    /// Lowest agent version (`MAJOR.MINOR.PATCH`) that may run the bundle.
    pub min_agent_version: Option<String>,
}

/// Inputs with expected outputs that the agent runs before activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestVectors {
    /// Absolute tolerance on numeric outputs; integer outputs must be equal.
    pub tolerance: f64,
    pub vectors: Vec<TestVector>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestVector {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

/// Everything a device needs to know about a model version, signed by its
/// publisher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub model: ModelName,
    pub version: Version,
    pub runtime: Runtime,
    pub schema: Schema,
    /// Reference distribution of the first input's features.
    pub baseline: Option<Baseline>,
    /// The model file is the first artifact.
    pub artifacts: Vec<ArtifactRef>,
    pub tags: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    pub lineage: Lineage,
    pub created_at: UnixTime,
    pub expires_at: Option<UnixTime>,
    pub target: TargetConstraints,
    pub test_vectors: Option<TestVectors>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest lists no artifacts")]
    NoArtifacts,
    #[error("manifest lists {0} artifacts, at most {MAX_ARTIFACTS} allowed")]
    TooManyArtifacts(usize),
    #[error("artifact name {0:?} is not a safe file name")]
    UnsafeArtifactName(String),
    #[error("artifact name {0:?} appears twice")]
    DuplicateArtifact(String),
    #[error("artifact {name:?} declares {len} bytes, over the {ARTIFACT_LIMIT}-byte limit")]
    ArtifactTooLarge { name: String, len: u64 },
    #[error("test vector {index} is inconsistent: {reason}")]
    BadTestVector { index: usize, reason: String },
}

impl Manifest {
    /// Whether the publisher signed [`NON_FINITE_TAG`]` = accept`.
    pub fn accepts_non_finite(&self) -> bool {
        self.tags
            .get(NON_FINITE_TAG)
            .is_some_and(|v| v == NON_FINITE_ACCEPT)
    }

    /// Structural checks that do not depend on trust: safe names, bounded
    /// sizes, consistent test vectors.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.artifacts.is_empty() {
            return Err(ManifestError::NoArtifacts);
        }
        if self.artifacts.len() > MAX_ARTIFACTS {
            return Err(ManifestError::TooManyArtifacts(self.artifacts.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.artifacts {
            if !is_safe_name(&a.name) {
                return Err(ManifestError::UnsafeArtifactName(a.name.clone()));
            }
            if !seen.insert(a.name.as_str()) {
                return Err(ManifestError::DuplicateArtifact(a.name.clone()));
            }
            if a.len > ARTIFACT_LIMIT {
                return Err(ManifestError::ArtifactTooLarge {
                    name: a.name.clone(),
                    len: a.len,
                });
            }
        }
        if let Some(tv) = &self.test_vectors {
            for (index, v) in tv.vectors.iter().enumerate() {
                for t in v.inputs.iter().chain(&v.outputs) {
                    if !t.is_consistent() {
                        return Err(ManifestError::BadTestVector {
                            index,
                            reason: format!("tensor {:?} shape does not match its data", t.name),
                        });
                    }
                }
                for t in &v.inputs {
                    if self.schema.input(&t.name).is_none() {
                        return Err(ManifestError::BadTestVector {
                            index,
                            reason: format!("input {:?} is not in the schema", t.name),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Sum of all artifact lengths.
    pub fn total_len(&self) -> u64 {
        self.artifacts.iter().map(|a| a.len).sum()
    }

    /// The model file (first artifact).
    pub fn model_artifact(&self) -> Option<&ArtifactRef> {
        self.artifacts.first()
    }
}

/// A manifest as signed: its exact encoded bytes and the publisher
/// signatures over them (the header of a bundle file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    pub manifest: Vec<u8>,
    pub signatures: Vec<Signature>,
}

impl SignedManifest {
    /// Encodes `manifest` and signs it with each of `keys`.
    pub fn sign(manifest: &Manifest, keys: &[&SigningKey]) -> Self {
        let bytes = encoding::encode(manifest);
        let signatures = keys
            .iter()
            .map(|k| keys::sign(Domain::Manifest, &bytes, k))
            .collect();
        Self {
            manifest: bytes,
            signatures,
        }
    }

    /// Decodes the manifest without verifying anything (for `inspect`).
    pub fn peek_manifest(&self) -> Result<Manifest, DecodeError> {
        encoding::decode(&self.manifest, MANIFEST_LIMIT, "manifest")
    }
}
