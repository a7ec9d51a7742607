//! Builds a signed `.ferry` bundle on the operator's machine: schema from the
//! ONNX graph, baseline from reference CSV, artifacts hashed while streamed,
//! manifest signed with the publisher's key, file written atomically.

use crate::baseline_csv::{self, BaselineCsvError};
use crate::build_check::{self, CheckError, CheckReport};
use crate::input_shapes::{self, InputSpecError, ShapeDim};
use crate::keyfile::{tmp_path, KeyFileError};
use crate::onnx_schema::{self, OnnxSchemaError};
use crate::test_vectors::{self, TestVectorError};
use ed25519_dalek::SigningKey;
use ferry_protocol::keys::{Digest, Hasher};
use ferry_protocol::manifest::{
    ArtifactRef, Lineage, Manifest, ManifestError, Runtime, TargetConstraints,
};
use ferry_protocol::SignedManifest;
use ferry_protocol::{ModelName, Version};
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Onnx(#[from] OnnxSchemaError),
    #[error(transparent)]
    Baseline(#[from] BaselineCsvError),
    #[error(transparent)]
    TestVectors(#[from] TestVectorError),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the model has no inputs")]
    NoInputs,
    #[error("at least one --sign-with key is required")]
    NoSigner,
    #[error(transparent)]
    Inputs(#[from] InputSpecError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error("{0}")]
    Runtime(String),
}

pub struct BuildSpec {
    pub model: PathBuf,
    pub name: ModelName,
    pub version: Version,
    pub baseline: Option<PathBuf>,
    pub bins: usize,
    pub tags: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    pub lineage: Lineage,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub target: TargetConstraints,
    pub test_vectors: Option<PathBuf>,
    /// `--input-shape NAME=D,…`: dimensions pinned or named by the publisher.
    pub input_shapes: Vec<(String, Vec<ShapeDim>)>,
    /// `--symbol FROM=TO`: the graph's dimension names renamed.
    pub symbols: Vec<(String, String)>,
    /// `--const-input NAME=VALUE`: inputs fixed for every request.
    pub const_inputs: Vec<(String, String)>,
    /// `--check`: compile the model as the agent does (and run the test
    /// vectors) before anything is signed.
    pub check: bool,
    pub signers: Vec<SigningKey>,
    pub out: PathBuf,
}

pub struct Built {
    pub manifest: Manifest,
    pub digest: Digest,
    pub bytes: u64,
    /// What `--check` found, when it ran.
    pub check: Option<CheckReport>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Streams `path` once to learn its length and digest.
fn hash_file(path: &Path, progress: &ProgressBar) -> Result<(u64, Digest), BuildError> {
    let f = File::open(path).map_err(io(path))?;
    progress.set_length(f.metadata().map_err(io(path))?.len());
    progress.set_position(0);
    progress.set_message("hashing");
    let mut r = BufReader::new(progress.wrap_read(f));
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, h.finish()))
}

/// The manifest's tags: the publisher's, plus
/// `ferry.non_finite_inputs = accept` for a tree ensemble that routes
/// missing values, unless the publisher set that tag otherwise.
fn tags(
    publisher: &BTreeMap<String, String>,
    tracks_missing_values: bool,
) -> BTreeMap<String, String> {
    use ferry_protocol::manifest::{NON_FINITE_ACCEPT, NON_FINITE_TAG};
    let mut tags = publisher.clone();
    if tracks_missing_values {
        tags.entry(NON_FINITE_TAG.into())
            .or_insert_with(|| NON_FINITE_ACCEPT.into());
    }
    tags
}

/// Refuses a `ferry.target.runtime` tag no agent would honour: an unknown
/// name, or burn with fixed inputs (burn does not fold them into the graph,
/// so every agent would refuse the bundle).
fn check_required_runtime(
    tags: &BTreeMap<String, String>,
    has_const_inputs: bool,
) -> Result<(), BuildError> {
    use ferry_protocol::{RequiredRuntime, RUNTIME_TAG};
    let Some(v) = tags.get(RUNTIME_TAG) else {
        return Ok(());
    };
    let required = RequiredRuntime::parse(v).map_err(BuildError::Runtime)?;
    if has_const_inputs && matches!(required, RequiredRuntime::Burn(_)) {
        return Err(BuildError::Runtime(format!(
            "runtime {required}: the burn engine cannot serve a bundle with fixed inputs (--const-input)"
        )));
    }
    Ok(())
}

pub fn build(spec: &BuildSpec, progress: &ProgressBar) -> Result<Built, BuildError> {
    if spec.signers.is_empty() {
        return Err(BuildError::NoSigner);
    }
    let mut info = onnx_schema::read(&spec.model)?;
    input_shapes::apply_shapes(&mut info.schema, &spec.symbols, &spec.input_shapes)?;
    let const_inputs = input_shapes::const_inputs(&info.schema, &spec.const_inputs)?;
    check_required_runtime(&spec.tags, !const_inputs.is_empty())?;
    let first_input = info.schema.inputs.first().ok_or(BuildError::NoInputs)?;
    let baseline = match &spec.baseline {
        None => None,
        Some(csv) => {
            let b = baseline_csv::from_csv(csv, spec.bins)?;
            if let Some(width) = first_input.feature_width() {
                if b.features.len() as u64 != width {
                    return Err(BaselineCsvError::ModelWidth {
                        path: csv.display().to_string(),
                        columns: b.features.len(),
                        input: first_input.name.clone(),
                        width,
                    }
                    .into());
                }
            }
            Some(b)
        }
    };
    let test_vectors = spec
        .test_vectors
        .as_deref()
        .map(test_vectors::read)
        .transpose()?;
    let (len, sha256) = hash_file(&spec.model, progress)?;
    let manifest = Manifest {
        model: spec.name.clone(),
        version: spec.version,
        runtime: Runtime::Onnx,
        schema: info.schema,
        baseline,
        artifacts: vec![ArtifactRef {
            name: "model.onnx".into(),
            len,
            sha256,
        }],
        tags: tags(&spec.tags, info.tracks_missing_values),
        metrics: spec.metrics.clone(),
        lineage: spec.lineage.clone(),
        created_at: spec.created_at,
        expires_at: spec.expires_at,
        target: spec.target.clone(),
        test_vectors,
        const_inputs,
    };
    manifest.validate()?;
    // The same compile the agent runs at activation, here, before signing:
    // a graph the runtime cannot type is refused on the build machine.
    let check = if spec.check {
        progress.set_message("checking");
        let bytes = std::fs::read(&spec.model).map_err(io(&spec.model))?;
        Some(build_check::check(&bytes, &manifest)?)
    } else {
        None
    };
    let signers: Vec<&SigningKey> = spec.signers.iter().collect();
    let header = SignedManifest::sign(&manifest, &signers);

    // Write beside the target and rename, so a crash never leaves a
    // half-written bundle under the final name.
    let tmp = tmp_path(&spec.out);
    let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
    out.write_all(&header.to_preamble()).map_err(io(&tmp))?;
    progress.set_position(0);
    progress.set_message("writing");
    let model = File::open(&spec.model).map_err(io(&spec.model))?;
    let copied = std::io::copy(&mut progress.wrap_read(model), &mut out).map_err(io(&tmp))?;
    if copied != len {
        // The model changed between hashing and copying.
        let _ = std::fs::remove_file(&tmp);
        return Err(BuildError::Io {
            path: spec.model.clone(),
            source: std::io::Error::other("file changed while the bundle was built"),
        });
    }
    let file = out.into_inner().map_err(|e| BuildError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(&tmp))?;
    let bytes = file.metadata().map_err(io(&tmp))?.len();
    std::fs::rename(&tmp, &spec.out).map_err(io(&spec.out))?;
    progress.finish_and_clear();
    Ok(Built {
        digest: ferry_protocol::keys::sha256(&header.manifest),
        manifest,
        bytes,
        check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::manifest::NON_FINITE_TAG;

    #[test]
    fn trees_routing_missing_values_accept_non_finite_unless_the_publisher_says_otherwise() {
        let none = BTreeMap::new();
        assert_eq!(tags(&none, true)[NON_FINITE_TAG], "accept");
        assert!(tags(&none, false).is_empty());
        let refuse = BTreeMap::from([(NON_FINITE_TAG.to_string(), "refuse".to_string())]);
        assert_eq!(tags(&refuse, true)[NON_FINITE_TAG], "refuse");
    }
}
