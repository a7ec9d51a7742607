//! `ferry bundle build --check`: the agent's own compile (`ferry_agent::engine`,
//! the code a device runs at activation) and its test-vector check, run on
//! the build machine before the bundle is signed, so a graph the runtime
//! cannot type is refused here rather than discovered on a device.

use ferry_agent::engine::{Engine, LoadError, LoadOptions};
use ferry_protocol::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("--check: the agent's runtime refuses this model: {0}")]
    Load(#[from] LoadError),
    #[error("--check: {0}")]
    TestVectors(String),
    #[error(
        "--check: the graph does not type with symbolic shapes ({0}), so the agent compiles it \
         per input shape; give --test-vectors (the check compiles the shapes they carry) or pin \
         every dimension with --input-shape"
    )]
    NothingToCompile(String),
}

/// What the check compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The graph did not type symbolically: plans are compiled per shape.
    pub per_shape: bool,
    /// Test vectors run.
    pub vectors: usize,
}

/// Compiles `model` against `manifest` exactly as an agent serving it would
/// and runs the manifest's test vectors on the shapes they carry.
pub fn check(model: &[u8], manifest: &Manifest) -> Result<CheckReport, CheckError> {
    let opts = LoadOptions {
        const_inputs: manifest.const_inputs.clone(),
        ..LoadOptions::default()
    };
    let engine = Engine::load_with(model, &manifest.schema, &opts)?;
    let vectors = manifest
        .test_vectors
        .as_ref()
        .map_or(0, |t| t.vectors.len());
    let compiled = ferry_agent::plan_cache::PlanStats::get(&engine.plan_stats().entries);
    if let (Some(why), 0, 0) = (engine.symbolic_failure(), vectors, compiled) {
        return Err(CheckError::NothingToCompile(why.to_string()));
    }
    ferry_agent::serving::check_test_vectors(manifest, &engine)
        .map_err(|e| CheckError::TestVectors(e.to_string()))?;
    Ok(CheckReport {
        per_shape: engine.per_shape(),
        vectors,
    })
}
