//! Which engine serves a model: tract on the CPU, or (with the `gpu`
//! feature) burn on a GPU. `--engine auto|tract|burn` and `--gpu-backend`
//! choose; `auto` takes burn when this host has a GPU adapter and burn runs
//! every operator of the model, and tract otherwise.
//!
//! Whichever engine is chosen also runs the bundle's signed test vectors
//! before activation (`crate::serving::verify`): a model that computes
//! differently on this GPU never goes live.

#[cfg(feature = "gpu")]
use crate::tensors::{Input, Output, RunError};
#[cfg(feature = "gpu")]
use ferry_protocol::Schema;
use serde::Deserialize;

/// Why the engine asked for cannot serve a model (`crate::engine`'s
/// `LoadError` carries it).
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    #[error("model uses operator(s) the burn engine does not support: {}", .0.join(", "))]
    UnsupportedOps(Vec<String>),
    #[error("{0}")]
    Engine(String),
}

/// `--engine` / `engine` in agent.toml. The agent defaults to `auto`; a
/// library caller (tests, `bench-model`, `score`) gets tract unless it
/// asks, so its results do not depend on the host's GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// burn when a GPU adapter is present and every operator is
    /// supported, tract otherwise.
    Auto,
    #[default]
    Tract,
    Burn,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "tract" => Ok(EngineChoice::Tract),
            "burn" => Ok(EngineChoice::Burn),
            other => Err(format!("engine {other:?}: expected auto, tract or burn")),
        }
    }
}

/// The engine choice and, for burn, the backend (`--gpu-backend
/// cuda|wgpu|cpu`; unset: the first GPU backend this build has whose
/// adapter is present).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineSelect {
    pub choice: EngineChoice,
    pub gpu_backend: Option<String>,
}

/// What serves a model, for metadata, health and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// `tract` or `burn`.
    pub engine: &'static str,
    /// For burn: `cuda`, `wgpu` or `cpu`.
    pub backend: Option<&'static str>,
    /// For burn: the adapter's name.
    pub adapter: Option<String>,
}

impl EngineInfo {
    pub const TRACT: EngineInfo = EngineInfo {
        engine: "tract",
        backend: None,
        adapter: None,
    };
}

/// An engine this agent has, and the device under it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Available {
    /// `tract` or `burn`.
    pub engine: &'static str,
    /// For burn: `cuda`, `wgpu` or `cpu`.
    pub backend: Option<&'static str>,
    /// The adapter's name, type (`discrete-gpu`, `cpu`, …), graphics API
    /// and memory, where the backend reports them.
    pub adapter: Option<String>,
    pub kind: Option<String>,
    pub api: Option<String>,
    pub memory_bytes: Option<u64>,
    /// Why this backend cannot run here (no driver, no adapter).
    pub error: Option<String>,
}

/// Every engine of this build, each burn backend probed (once per
/// process) for its device: for health and `/metrics`.
pub fn available() -> Vec<Available> {
    // Pushed to only with the `gpu` feature.
    #[allow(unused_mut)]
    let mut all = vec![Available {
        engine: "tract",
        backend: None,
        adapter: None,
        kind: Some("cpu".into()),
        api: None,
        memory_bytes: None,
        error: None,
    }];
    #[cfg(feature = "gpu")]
    for b in ferry_burn::Backend::compiled() {
        let (adapter, error) = match ferry_burn::adapter(b) {
            Ok(a) => (Some(a), None),
            Err(e) => (None, Some(e)),
        };
        all.push(Available {
            engine: "burn",
            backend: Some(b.name()),
            adapter: adapter.as_ref().map(|a| a.name.clone()),
            kind: adapter.as_ref().map(|a| a.kind.clone()),
            api: adapter.as_ref().map(|a| a.api.clone()),
            memory_bytes: adapter.and_then(|a| a.memory_bytes),
            error,
        });
    }
    all
}

/// Probes every burn backend's device once, at start (unless the agent is
/// pinned to tract), and logs what it found.
pub fn probe_at_start(sel: &EngineSelect) {
    if sel.choice == EngineChoice::Tract {
        return;
    }
    for a in available() {
        match (&a.adapter, &a.error) {
            (Some(name), _) => tracing::info!(
                engine = a.engine,
                backend = a.backend.unwrap_or(""),
                adapter = %name,
                kind = a.kind.as_deref().unwrap_or(""),
                "engine available"
            ),
            (None, Some(why)) => tracing::info!(
                engine = a.engine,
                backend = a.backend.unwrap_or(""),
                reason = %why,
                "engine not available on this host"
            ),
            (None, None) => tracing::info!(engine = a.engine, "engine available"),
        }
    }
}

/// The runtimes this agent offers a bundle under `sel`, as its fleet hello
/// lists them (`ferry_protocol::required_runtime`): `onnx` (tract) unless
/// pinned to burn, and `onnx-burn-<backend>` for every burn backend whose
/// device is present (only the one `--gpu-backend` names, if set) unless
/// pinned to tract.
pub fn runtimes(sel: &EngineSelect) -> Vec<String> {
    let mut r = Vec::new();
    if sel.choice != EngineChoice::Burn {
        r.push(ferry_protocol::required_runtime::TRACT_RUNTIME.to_string());
    }
    #[cfg(feature = "gpu")]
    if sel.choice != EngineChoice::Tract {
        for b in ferry_burn::Backend::compiled() {
            let named = sel.gpu_backend.as_deref().is_none_or(|n| n == b.name());
            if named && ferry_burn::adapter(b).is_ok() {
                r.push(format!(
                    "{}{}",
                    ferry_protocol::required_runtime::BURN_RUNTIME_PREFIX,
                    b.name()
                ));
            }
        }
    }
    r
}

impl EngineSelect {
    /// The selection for a bundle: its required runtime (the signed
    /// `ferry.target.runtime` tag), if any, decides the engine and burn's
    /// backend; a requirement this agent does not offer under `self` is
    /// the error's reason. A bundle without one gets `self`.
    pub fn for_manifest(&self, m: &ferry_protocol::Manifest) -> Result<EngineSelect, String> {
        use ferry_protocol::required_runtime::{BURN_RUNTIME_PREFIX, GPU_BACKENDS};
        use ferry_protocol::RequiredRuntime;
        if m.required_runtime()?.is_none() {
            return Ok(self.clone());
        }
        let offered = runtimes(self);
        let Some(required) = m.runtime_among(&offered)? else {
            return Ok(self.clone());
        };
        Ok(match required {
            RequiredRuntime::Tract => EngineSelect {
                choice: EngineChoice::Tract,
                gpu_backend: None,
            },
            RequiredRuntime::Burn(backend) => {
                // `burn` alone: the first GPU backend offered, in the
                // order burn prefers them (CUDA before wgpu).
                let backend = backend.map(str::to_string).or_else(|| {
                    GPU_BACKENDS
                        .into_iter()
                        .find(|b| {
                            offered
                                .iter()
                                .any(|o| o == &format!("{BURN_RUNTIME_PREFIX}{b}"))
                        })
                        .map(str::to_string)
                });
                EngineSelect {
                    choice: EngineChoice::Burn,
                    gpu_backend: backend,
                }
            }
        })
    }
}

/// The GPU adapter the burn engine would use, for the agent's reports.
#[cfg(feature = "gpu")]
pub fn gpu_adapter() -> Option<ferry_burn::Adapter> {
    ferry_burn::first_gpu().map(|(_, a)| a)
}

/// A model loaded on burn, with the schema's outputs matched to the
/// graph's.
#[cfg(feature = "gpu")]
pub struct BurnPlan {
    engine: ferry_burn::Engine,
    info: EngineInfo,
}

#[cfg(feature = "gpu")]
impl BurnPlan {
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    pub fn input_count(&self) -> usize {
        self.engine.input_names().len()
    }

    /// Runs validated inputs (schema order) and returns the schema's
    /// outputs, by name.
    pub fn run(&self, schema: &Schema, inputs: Vec<Input>) -> Result<Vec<Output>, RunError> {
        let feed = inputs.into_iter().map(|i| (i.shape, i.data)).collect();
        let mut outs = self.engine.run(feed).map_err(|e| match e {
            ferry_burn::RunError::Input { index, reason } => RunError::Input {
                name: schema
                    .inputs
                    .get(index)
                    .map_or_else(|| format!("#{index}"), |s| s.name.clone()),
                reason,
            },
            other => RunError::Exec(other.to_string()),
        })?;
        schema
            .outputs
            .iter()
            .enumerate()
            .map(|(k, spec)| {
                let pos = outs.iter().position(|o| o.name == spec.name).unwrap_or(k);
                if pos >= outs.len() {
                    return Err(RunError::Exec(format!(
                        "output {:?} was not produced",
                        spec.name
                    )));
                }
                let o = outs.swap_remove(pos);
                Ok(Output {
                    name: spec.name.clone(),
                    shape: o.shape,
                    data: o.data,
                })
            })
            .collect()
    }
}

/// Picks the engine for a model: `Ok(Some(plan))` to serve it on burn,
/// `Ok(None)` for tract.
#[cfg(feature = "gpu")]
pub fn select(
    bytes: &[u8],
    sel: &EngineSelect,
    has_const_inputs: bool,
) -> Result<Option<BurnPlan>, ChoiceError> {
    use ferry_burn::Backend;
    let explicit = match sel.choice {
        EngineChoice::Tract => return Ok(None),
        EngineChoice::Burn => true,
        EngineChoice::Auto => false,
    };
    if has_const_inputs {
        // burn does not fold fixed inputs into the graph.
        return if explicit {
            Err(ChoiceError::Engine(
                "the burn engine cannot serve a bundle with fixed inputs (--const-input); use --engine tract".into(),
            ))
        } else {
            Ok(None)
        };
    }
    let backend = match &sel.gpu_backend {
        Some(name) => match Backend::parse(name) {
            Some(b) => b,
            None => {
                let have: Vec<&str> = Backend::compiled().iter().map(|b| b.name()).collect();
                return Err(ChoiceError::Engine(format!(
                    "gpu backend {name:?} is not in this build (it has {})",
                    have.join(", ")
                )));
            }
        },
        None => match ferry_burn::first_gpu() {
            Some((b, _)) => b,
            None if explicit => {
                return Err(ChoiceError::Engine(
                    "no GPU adapter found on this host; --gpu-backend cpu runs the burn engine on the CPU".into(),
                ))
            }
            None => return Ok(None),
        },
    };
    match ferry_burn::Engine::load(bytes, backend) {
        Ok(engine) => {
            let adapter = ferry_burn::adapter(backend).ok();
            Ok(Some(BurnPlan {
                engine,
                info: EngineInfo {
                    engine: "burn",
                    backend: Some(backend.name()),
                    adapter: adapter.map(|a| a.name),
                },
            }))
        }
        Err(ferry_burn::LoadError::UnsupportedOps(ops)) if !explicit => {
            tracing::info!(operators = %ops.join(", "), "the burn engine does not run these operators; serving on tract");
            Ok(None)
        }
        Err(e) if !explicit => {
            tracing::warn!(error = %e, "the burn engine cannot load the model; serving on tract");
            Ok(None)
        }
        Err(ferry_burn::LoadError::UnsupportedOps(ops)) => Err(ChoiceError::UnsupportedOps(ops)),
        Err(e) => Err(ChoiceError::Engine(e.to_string())),
    }
}

/// Without the `gpu` feature there is one engine: `burn` is refused,
/// `auto` is tract.
#[cfg(not(feature = "gpu"))]
pub fn select(
    _bytes: &[u8],
    sel: &EngineSelect,
    _has_const_inputs: bool,
) -> Result<Option<std::convert::Infallible>, ChoiceError> {
    match sel.choice {
        EngineChoice::Burn => Err(ChoiceError::Engine(
            "this agent was built without the `gpu` feature; --engine burn needs it".into(),
        )),
        _ => Ok(None),
    }
}
