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
    /// Inputs the publisher fixed for every request (a sample rate, a
    /// mode flag): the agent folds the graph's branches on them before
    /// compiling and refuses requests that send another value. A manifest
    /// with any is encoded as format version [`MANIFEST_V2`]; one without
    /// keeps the version-1 bytes every deployed agent decodes.
    pub const_inputs: Vec<Tensor>,
}

/// The format version of a manifest that fixes inputs. Agents built before
/// it refuse such a bundle as an unsupported format version, which is right:
/// they could not honour the fixed values.
pub const MANIFEST_V2: u8 = 2;

/// The manifest as format version 1 lays it out (no `const_inputs`).
#[derive(Serialize)]
struct ManifestV1Ref<'a> {
    model: &'a ModelName,
    version: Version,
    runtime: Runtime,
    schema: &'a Schema,
    baseline: &'a Option<Baseline>,
    artifacts: &'a [ArtifactRef],
    tags: &'a BTreeMap<String, String>,
    metrics: &'a BTreeMap<String, f64>,
    lineage: &'a Lineage,
    created_at: UnixTime,
    expires_at: Option<UnixTime>,
    target: &'a TargetConstraints,
    test_vectors: &'a Option<TestVectors>,
}

/// [`ManifestV1Ref`], owned, for decoding.
#[derive(Deserialize)]
struct ManifestV1 {
    model: ModelName,
    version: Version,
    runtime: Runtime,
    schema: Schema,
    baseline: Option<Baseline>,
    artifacts: Vec<ArtifactRef>,
    tags: BTreeMap<String, String>,
    metrics: BTreeMap<String, f64>,
    lineage: Lineage,
    created_at: UnixTime,
    expires_at: Option<UnixTime>,
    target: TargetConstraints,
    test_vectors: Option<TestVectors>,
}

impl Manifest {
    /// The canonical bytes a publisher signs: version 1 (the layout every
    /// deployed agent reads) unless inputs are fixed, then version 2.
    pub fn encode(&self) -> Vec<u8> {
        if self.const_inputs.is_empty() {
            let v1 = ManifestV1Ref {
                model: &self.model,
                version: self.version,
                runtime: self.runtime,
                schema: &self.schema,
                baseline: &self.baseline,
                artifacts: &self.artifacts,
                tags: &self.tags,
                metrics: &self.metrics,
                lineage: &self.lineage,
                created_at: self.created_at,
                expires_at: self.expires_at,
                target: &self.target,
                test_vectors: &self.test_vectors,
            };
            encoding::encode(&v1)
        } else {
            encoding::encode_version(MANIFEST_V2, self)
        }
    }

    /// Decodes manifest bytes of either format version.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match encoding::peek_version(bytes, MANIFEST_LIMIT)? {
            MANIFEST_V2 => {
                let m: Manifest =
                    encoding::decode_version(bytes, MANIFEST_V2, MANIFEST_LIMIT, "manifest")?;
                Ok(m)
            }
            _ => {
                let v1: ManifestV1 = encoding::decode(bytes, MANIFEST_LIMIT, "manifest")?;
                Ok(Manifest {
                    model: v1.model,
                    version: v1.version,
                    runtime: v1.runtime,
                    schema: v1.schema,
                    baseline: v1.baseline,
                    artifacts: v1.artifacts,
                    tags: v1.tags,
                    metrics: v1.metrics,
                    lineage: v1.lineage,
                    created_at: v1.created_at,
                    expires_at: v1.expires_at,
                    target: v1.target,
                    test_vectors: v1.test_vectors,
                    const_inputs: Vec::new(),
                })
            }
        }
    }

    /// The value fixed for input `name`, if the publisher fixed one.
    pub fn const_input(&self, name: &str) -> Option<&Tensor> {
        self.const_inputs.iter().find(|t| t.name == name)
    }
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
    #[error("fixed input {name:?}: {reason}")]
    BadConstInput { name: String, reason: String },
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
        let mut fixed = std::collections::BTreeSet::new();
        for t in &self.const_inputs {
            let bad = |reason: String| ManifestError::BadConstInput {
                name: t.name.clone(),
                reason,
            };
            let Some(spec) = self.schema.input(&t.name) else {
                return Err(bad("not an input of the schema".into()));
            };
            if !fixed.insert(t.name.as_str()) {
                return Err(bad("fixed twice".into()));
            }
            if !t.is_consistent() {
                return Err(bad("shape does not match its data".into()));
            }
            if !spec.accepts_shape(&t.shape) {
                return Err(bad(format!(
                    "shape {:?} does not fit {}",
                    t.shape,
                    spec.shape_string()
                )));
            }
            if !t.data.fits(spec.dtype) {
                return Err(bad(format!(
                    "a {} value for a {} input",
                    t.data.dtype(),
                    spec.dtype
                )));
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
        let bytes = manifest.encode();
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
        Manifest::decode(&self.manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DType, Dim, TensorData, TensorSpec};

    /// The manifest as agents before fixed inputs declare it.
    #[derive(Serialize, Deserialize)]
    struct DeployedManifest {
        model: ModelName,
        version: Version,
        runtime: Runtime,
        schema: Schema,
        baseline: Option<Baseline>,
        artifacts: Vec<ArtifactRef>,
        tags: BTreeMap<String, String>,
        metrics: BTreeMap<String, f64>,
        lineage: Lineage,
        created_at: UnixTime,
        expires_at: Option<UnixTime>,
        target: TargetConstraints,
        test_vectors: Option<TestVectors>,
    }

    fn sample() -> Manifest {
        Manifest {
            model: ModelName::new("vad").unwrap(),
            version: 3,
            runtime: Runtime::Onnx,
            schema: Schema {
                inputs: vec![
                    TensorSpec {
                        name: "input".into(),
                        dtype: DType::F32,
                        shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(512)],
                    },
                    TensorSpec {
                        name: "sr".into(),
                        dtype: DType::I64,
                        shape: vec![],
                    },
                ],
                outputs: vec![],
            },
            baseline: None,
            artifacts: vec![ArtifactRef {
                name: "model.onnx".into(),
                len: 10,
                sha256: keys::sha256(b"m"),
            }],
            tags: BTreeMap::new(),
            metrics: BTreeMap::new(),
            lineage: Lineage::default(),
            created_at: 5,
            expires_at: None,
            target: TargetConstraints::default(),
            test_vectors: None,
            const_inputs: vec![],
        }
    }

    #[test]
    fn without_fixed_inputs_the_bytes_are_the_deployed_format() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(bytes[0], encoding::FORMAT_VERSION);
        let old: DeployedManifest = encoding::decode(&bytes, MANIFEST_LIMIT, "manifest").unwrap();
        assert_eq!(encoding::encode(&old), bytes);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn fixed_inputs_take_version_2_which_deployed_agents_refuse_cleanly() {
        let mut m = sample();
        m.const_inputs = vec![Tensor {
            name: "sr".into(),
            shape: vec![],
            data: TensorData::I64(vec![16000]),
        }];
        m.validate().unwrap();
        let bytes = m.encode();
        assert_eq!(bytes[0], MANIFEST_V2);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(
            encoding::decode::<DeployedManifest>(&bytes, MANIFEST_LIMIT, "manifest").err(),
            Some(DecodeError::UnsupportedVersion(MANIFEST_V2))
        );
    }

    #[test]
    fn a_fixed_input_must_fit_the_schema() {
        let mut m = sample();
        for (t, want) in [
            (("nope", vec![], TensorData::I64(vec![1])), "not an input"),
            (("sr", vec![2], TensorData::I64(vec![1, 2])), "does not fit"),
            (("sr", vec![], TensorData::Bool(vec![true])), "a BOOL value"),
        ] {
            m.const_inputs = vec![Tensor {
                name: t.0.into(),
                shape: t.1,
                data: t.2,
            }];
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
