//! From a bundle file to a [`LoadedModel`]: verify against the trust root,
//! compile, and check the signed test vectors. Nothing is written.

use super::error::{io_err, ActivateError};
use crate::engine::{Engine, Input, LoadOptions, PlanFor};
use ferry_protocol::bundle::read_verified;
use ferry_protocol::{Manifest, TrustRoot};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

/// A compiled, verified model version.
pub struct LoadedModel {
    /// Shared with the drift windows, which need its baseline and version.
    pub manifest: Arc<Manifest>,
    /// SHA-256 of the signed manifest bytes: the bundle's identity in the
    /// fleet protocol.
    pub manifest_digest: ferry_protocol::keys::Digest,
    pub engine: Engine,
    /// Set when the agent batches this model's requests
    /// (`crate::batching`); the engine then runs through it.
    pub batcher: Option<crate::batching::Batcher>,
}

/// Verifies `bundle` against `trust` at `now_unix` and compiles its model;
/// nothing is written. `highest_seen` gives the anti-rollback floor per
/// model name.
pub fn verify_and_load(
    trust: &TrustRoot,
    bundle: &Path,
    now_unix: u64,
    highest_seen: impl Fn(&str) -> Option<u64>,
) -> Result<LoadedModel, ActivateError> {
    verify_and_load_for(trust, bundle, now_unix, highest_seen, PlanFor::Serving)
}

/// [`verify_and_load`], with the engine's specialised plan built for
/// `plan_for` (offline scoring passes its block size).
pub fn verify_and_load_for(
    trust: &TrustRoot,
    bundle: &Path,
    now_unix: u64,
    highest_seen: impl Fn(&str) -> Option<u64>,
    plan_for: PlanFor,
) -> Result<LoadedModel, ActivateError> {
    verify_and_load_with(
        trust,
        bundle,
        now_unix,
        highest_seen,
        LoadOptions {
            plan_for,
            ..LoadOptions::default()
        },
    )
}

/// [`verify_and_load`], compiled with `opts` (the manifest's fixed inputs
/// replace `opts.const_inputs`).
pub fn verify_and_load_with(
    trust: &TrustRoot,
    bundle: &Path,
    now_unix: u64,
    highest_seen: impl Fn(&str) -> Option<u64>,
    opts: LoadOptions,
) -> Result<LoadedModel, ActivateError> {
    let f = File::open(bundle).map_err(io_err("opening bundle", bundle))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    // Peek the model name for the anti-rollback check, then verify the whole
    // file from the start.
    let header = ferry_protocol::bundle::read_header(&mut r)?;
    let manifest_digest = ferry_protocol::keys::sha256(&header.manifest);
    let name = header
        .peek_manifest()
        .map(|m| m.model.to_string())
        .unwrap_or_default();
    let f = File::open(bundle).map_err(io_err("opening bundle", bundle))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let mut model_bytes: Vec<u8> = Vec::new();
    let mut first: Option<String> = None;
    let verified = read_verified(&mut r, trust, now_unix, highest_seen(&name), |a, bytes| {
        let is_model = match &first {
            None => {
                first = Some(a.name.clone());
                true
            }
            Some(n) => *n == a.name,
        };
        if is_model {
            model_bytes.extend_from_slice(bytes);
        }
        Ok(())
    })?;
    let manifest = verified.manifest.into_manifest();
    if model_bytes.is_empty() {
        return Err(ActivateError::NoModel);
    }
    let engine = opts
        .engine
        .for_manifest(&manifest)
        .map_err(|reason| ActivateError::Runtime {
            model: manifest.model.to_string(),
            version: manifest.version,
            reason,
        })?;
    let opts = LoadOptions {
        const_inputs: manifest.const_inputs.clone(),
        engine,
        ..opts
    };
    let engine = Engine::load_with(&model_bytes, &manifest.schema, &opts).map_err(|source| {
        ActivateError::Load {
            model: manifest.model.to_string(),
            version: manifest.version,
            source,
        }
    })?;
    check_test_vectors(&manifest, &engine)?;
    Ok(LoadedModel {
        manifest: Arc::new(manifest),
        manifest_digest,
        engine,
        batcher: None,
    })
}

/// Runs the manifest's test vectors; a model that does not reproduce its
/// publisher's outputs is not activated.
pub fn check_test_vectors(m: &Manifest, engine: &Engine) -> Result<(), ActivateError> {
    let Some(tv) = &m.test_vectors else {
        return Ok(());
    };
    let fail = |index: usize, reason: String| ActivateError::TestVector {
        model: m.model.to_string(),
        version: m.version,
        index,
        reason,
    };
    if crate::failpoint::fails_for_version("serving-test-vectors-fail", m.version) {
        return Err(fail(0, "outputs differ (failpoint)".into()));
    }
    for (index, v) in tv.vectors.iter().enumerate() {
        let mut inputs = Vec::new();
        for spec in &engine.schema().inputs {
            let t = v
                .inputs
                .iter()
                .find(|t| t.name == spec.name)
                .ok_or_else(|| fail(index, format!("input {:?} missing", spec.name)))?;
            inputs.push(Input {
                shape: t.shape.iter().map(|d| *d as usize).collect(),
                data: t.data.clone(),
            });
        }
        let outs = engine.run(inputs).map_err(|e| fail(index, e.to_string()))?;
        for want in &v.outputs {
            let Some(got) = outs.iter().find(|o| o.name == want.name) else {
                return Err(fail(index, format!("output {:?} not produced", want.name)));
            };
            let (Some(a), Some(b)) = (got.data.as_f64(), want.data.as_f64()) else {
                continue;
            };
            if a.len() != b.len() {
                return Err(fail(
                    index,
                    format!(
                        "output {:?} has {} values, expected {}",
                        want.name,
                        a.len(),
                        b.len()
                    ),
                ));
            }
            for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                if (x - y).abs() > tv.tolerance {
                    return Err(fail(
                        index,
                        format!(
                            "output {:?}[{k}] = {x}, expected {y} (tolerance {})",
                            want.name, tv.tolerance
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
