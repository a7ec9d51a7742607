//! The serving core: verified activation, the routing table that requests
//! read without locks, hot swap, rollback, A/B and shadow.
//!
//! Requests load the current [`Table`] from an `ArcSwap` and hold `Arc`s to
//! the plans they run, so a swap never waits for them and never cuts one
//! short: in-flight requests finish on the plan they started with, and the old
//! plan is freed when the last of them returns.
//!
//! Activation (side-load or, later, QUIC) is serialised by one mutex and is
//! all-or-nothing: the bundle is verified against the trust root while it is
//! copied into the store, compiled, checked against its test vectors, and
//! only then published. A refused bundle leaves the previous version serving.

use crate::engine::{Engine, Input, LoadError, Output, PlanFor, RunError};
use crate::inference_log::{
    Durability, Entry, FeedbackRecord, InferenceLog, InferenceRecord, LogError,
};
use crate::metrics::{Metrics, Series};
use crate::oip::{self, Encoded, RequestError};
use arc_swap::ArcSwap;
use ferry_protocol::bundle::read_verified;
use ferry_protocol::{Manifest, Tensor, TensorData, TrustRoot, VerifyError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How a version serves traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Answers requests (the default).
    Champion,
    /// Answers the share of requests given by the split.
    Challenger,
    /// Sees a copy of every request; its results are logged, never returned.
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Challenger => "challenger",
            Role::Shadow => "shadow",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "champion" => Ok(Role::Champion),
            "challenger" => Ok(Role::Challenger),
            "shadow" => Ok(Role::Shadow),
            _ => Err(format!(
                "unknown role {s:?} (champion, challenger or shadow)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("bundle refused: {0}")]
    Verify(#[from] VerifyError),
    #[error("model {model} v{version} refused at activation: {source}")]
    Load {
        model: String,
        version: u64,
        source: LoadError,
    },
    #[error("model {model} v{version} fails its test vector {index}: {reason}")]
    TestVector {
        model: String,
        version: u64,
        index: usize,
        reason: String,
    },
    #[error("the bundle has no model artifact")]
    NoModel,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no model named {0:?} is active")]
    UnknownModel(String),
    #[error("model {model}: no earlier version to roll back to")]
    NoPrevious { model: String },
    #[error("model {model} v{version} is not in the local store")]
    NotStored { model: String, version: u64 },
    #[error("a challenger needs a split between 0 and 1, got {0}")]
    BadSplit(f64),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

impl ActivateError {
    pub fn code(&self) -> &'static str {
        match self {
            ActivateError::Verify(e) => e.code(),
            ActivateError::Load { .. } => "model_load_failed",
            ActivateError::TestVector { .. } => "test_vector_mismatch",
            ActivateError::NoModel => "no_model_artifact",
            ActivateError::Io { .. } => "io",
            ActivateError::UnknownModel(_) => "unknown_model",
            ActivateError::NoPrevious { .. } => "no_previous_version",
            ActivateError::NotStored { .. } => "not_stored",
            ActivateError::BadSplit(_) => "bad_split",
            ActivateError::State { .. } => "state",
        }
    }
}

/// A request that failed, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model {model:?} has no loaded version {version}")]
    UnknownVersion { model: String, version: String },
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl InferError {
    pub fn code(&self) -> &'static str {
        match self {
            InferError::UnknownModel(_) => "unknown_model",
            InferError::UnknownVersion { .. } => "unknown_version",
            InferError::Request(e) => e.code(),
            InferError::Run(RunError::Input { .. }) => "bad_input",
            InferError::Run(_) => "model_failed",
            InferError::Log(_) => "log_failed",
        }
    }
    /// 404 for what is not there, 400 for a bad request, 500 for our side.
    pub fn status(&self) -> u16 {
        match self {
            InferError::UnknownModel(_) | InferError::UnknownVersion { .. } => 404,
            InferError::Request(_) | InferError::Run(RunError::Input { .. }) => 400,
            InferError::Run(_) | InferError::Log(_) => 500,
        }
    }
}

/// A compiled, verified model version.
pub struct Loaded {
    pub manifest: Manifest,
    /// SHA-256 of the signed manifest bytes: the bundle's identity in the
    /// fleet protocol.
    pub manifest_digest: ferry_protocol::keys::Digest,
    pub engine: Engine,
}

/// One servable (model version, variant) with its metrics series.
#[derive(Clone)]
pub struct Route {
    pub loaded: Arc<Loaded>,
    pub variant: &'static str,
    pub series: Arc<Series>,
}

impl Route {
    pub fn version(&self) -> u64 {
        self.loaded.manifest.version
    }
}

#[derive(Clone)]
pub struct ModelRoutes {
    pub champion: Route,
    pub challenger: Option<(Route, f64)>,
    pub shadow: Option<Route>,
}

/// What requests read: immutable, replaced whole on every change.
#[derive(Default)]
pub struct Table {
    pub models: BTreeMap<String, ModelRoutes>,
}

/// Per-model activation state, persisted as `state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    pub champion: Option<u64>,
    pub challenger: Option<(u64, f64)>,
    pub shadow: Option<u64>,
    /// Earlier champions, most recent last (rollback targets).
    pub history: Vec<u64>,
    /// Highest version ever installed: older bundles are refused.
    pub highest_seen: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub models: BTreeMap<String, ModelState>,
}

struct Admin {
    state: State,
    loaded: BTreeMap<(String, u64), Arc<Loaded>>,
}

pub struct AgentOptions {
    pub data_dir: PathBuf,
    pub trust: TrustRoot,
    pub keep_versions: usize,
    pub sample_rate: f64,
    pub log_max_bytes: u64,
    pub log_durability: Durability,
    pub log_flush_ms: u64,
}

/// What an activation did.
#[derive(Clone, Debug, Serialize)]
pub struct Activated {
    pub model: String,
    pub version: u64,
    pub role: Role,
    pub previous: Option<u64>,
}

pub struct Agent {
    table: ArcSwap<Table>,
    admin: Mutex<Admin>,
    pub log: InferenceLog,
    pub metrics: Metrics,
    /// Drift windows (telemetry); a no-op until enabled.
    pub telemetry: Arc<crate::telemetry::Windows>,
    trust: TrustRoot,
    data_dir: PathBuf,
    keep_versions: usize,
    sample_threshold: u64,
    counter: AtomicU64,
    /// Activations, refusals, rollbacks and unloads for the telemetry
    /// events topic.
    events: Mutex<Events>,
}

/// One activation-path outcome, as the events topic reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEvent {
    /// `activated`, `refused`, `rolled_back` or `unloaded`.
    pub kind: &'static str,
    pub model: Option<String>,
    pub version: Option<u64>,
    pub detail: String,
}

/// Where events go: held until telemetry starts (side-loads happen before
/// it does), then straight to its outbox.
enum Events {
    Pending(Vec<DeviceEvent>),
    Live(Arc<dyn Fn(DeviceEvent) + Send + Sync>),
}

/// Events held before telemetry starts; more are dropped (without a broker
/// nobody reads them).
const MAX_PENDING_EVENTS: usize = 100;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// FNV-1a: stable across builds and platforms, so a user keeps its variant
/// across agent restarts and upgrades.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (from splitmix64) so nearby keys spread over [0, 1).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `key` goes to the challenger under `split` (deterministic).
pub fn routes_to_challenger(model: &str, key: &str, split: f64) -> bool {
    let u = (fnv1a(&[model.as_bytes(), key.as_bytes()]) >> 11) as f64 / (1u64 << 53) as f64;
    u < split
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ActivateError + 'a {
    move |source| ActivateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn now_unix() -> u64 {
    now_ms() / 1000
}

/// Verifies `bundle` against `trust` and compiles its model; nothing is
/// written. `highest_seen` gives the anti-rollback floor per model name.
pub fn verify_and_load(
    trust: &TrustRoot,
    bundle: &Path,
    highest_seen: impl Fn(&str) -> Option<u64>,
) -> Result<Loaded, ActivateError> {
    verify_and_load_for(trust, bundle, highest_seen, PlanFor::Serving)
}

/// [`verify_and_load`], with the engine's specialised plan built for
/// `plan_for` (offline scoring passes its block size).
pub fn verify_and_load_for(
    trust: &TrustRoot,
    bundle: &Path,
    highest_seen: impl Fn(&str) -> Option<u64>,
    plan_for: PlanFor,
) -> Result<Loaded, ActivateError> {
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
    let verified = read_verified(
        &mut r,
        trust,
        now_unix(),
        highest_seen(&name),
        |a, bytes| {
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
        },
    )?;
    let manifest = verified.manifest.into_manifest();
    if model_bytes.is_empty() {
        return Err(ActivateError::NoModel);
    }
    let engine =
        Engine::load_bytes_for(&model_bytes, &manifest.schema, plan_for).map_err(|source| {
            ActivateError::Load {
                model: manifest.model.to_string(),
                version: manifest.version,
                source,
            }
        })?;
    check_test_vectors(&manifest, &engine)?;
    Ok(Loaded {
        manifest,
        manifest_digest,
        engine,
    })
}

/// Runs the manifest's test vectors; a model that does not reproduce its
/// publisher's outputs is not activated.
fn check_test_vectors(m: &Manifest, engine: &Engine) -> Result<(), ActivateError> {
    let Some(tv) = &m.test_vectors else {
        return Ok(());
    };
    let fail = |index: usize, reason: String| ActivateError::TestVector {
        model: m.model.to_string(),
        version: m.version,
        index,
        reason,
    };
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

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

impl Agent {
    /// Opens the data directory, the inference log and the saved activation
    /// state, and reloads the versions that were active.
    pub fn open(opts: AgentOptions) -> Result<Arc<Self>, ActivateError> {
        let dir = &opts.data_dir;
        for sub in ["models", "incoming"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        let log_dir = dir.join("log");
        let log = InferenceLog::open(
            &log_dir,
            opts.log_max_bytes,
            opts.log_durability,
            opts.log_flush_ms,
        )
        .map_err(|e| ActivateError::State {
            path: log_dir.clone(),
            reason: e.to_string(),
        })?;
        let state_path = dir.join("state.json");
        let state: State = match fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ActivateError::State {
                path: state_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err("reading", &state_path)(e)),
        };
        let rate = opts.sample_rate.clamp(0.0, 1.0);
        let agent = Arc::new(Self {
            table: ArcSwap::from_pointee(Table::default()),
            admin: Mutex::new(Admin {
                state,
                loaded: BTreeMap::new(),
            }),
            log,
            metrics: Metrics::default(),
            telemetry: Arc::default(),
            trust: opts.trust,
            data_dir: opts.data_dir,
            keep_versions: opts.keep_versions.max(1),
            sample_threshold: (rate * u64::MAX as f64) as u64,
            counter: AtomicU64::new(0),
            events: Mutex::new(Events::Pending(Vec::new())),
        });
        agent.reload_from_state();
        Ok(agent)
    }

    /// Sends every later activation-path event to `sink`, after the ones
    /// held so far.
    pub fn set_event_sink(&self, sink: Arc<dyn Fn(DeviceEvent) + Send + Sync>) {
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Events::Pending(held) = &mut *g {
            for e in held.drain(..) {
                sink(e);
            }
        }
        *g = Events::Live(sink);
    }

    fn event(&self, kind: &'static str, model: Option<&str>, version: Option<u64>, detail: String) {
        self.record_event(DeviceEvent {
            kind,
            model: model.map(str::to_string),
            version,
            detail,
        });
    }

    /// Reports an activation-path outcome decided outside `install` (the
    /// fleet client refuses some bundles before installing them).
    pub fn record_event(&self, e: DeviceEvent) {
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *g {
            Events::Pending(held) if held.len() < MAX_PENDING_EVENTS => held.push(e),
            Events::Pending(_) => {}
            Events::Live(sink) => sink(e),
        }
    }

    fn admin(&self) -> std::sync::MutexGuard<'_, Admin> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stored_path(&self, model: &str, version: u64) -> PathBuf {
        self.data_dir
            .join("models")
            .join(model)
            .join(format!("{version:020}.ferry"))
    }

    /// Loads what `state.json` says was active. A version that no longer
    /// verifies (expired, tampered on disk) is logged and left out.
    fn reload_from_state(&self) {
        let mut admin = self.admin();
        let models: Vec<(String, ModelState)> = admin
            .state
            .models
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, st) in models {
            let wanted = st
                .champion
                .into_iter()
                .chain(st.challenger.map(|c| c.0))
                .chain(st.shadow);
            for v in wanted {
                match self.load_stored(&mut admin, &name, v) {
                    Ok(_) => tracing::info!(model = %name, version = v, "reloaded"),
                    Err(e) => {
                        tracing::error!(model = %name, version = v, error = %e, "stored version not reloaded")
                    }
                }
            }
        }
        self.publish(&admin);
    }

    fn load_stored(
        &self,
        admin: &mut Admin,
        model: &str,
        version: u64,
    ) -> Result<Arc<Loaded>, ActivateError> {
        if let Some(l) = admin.loaded.get(&(model.to_string(), version)) {
            return Ok(l.clone());
        }
        let path = self.stored_path(model, version);
        if !path.exists() {
            return Err(ActivateError::NotStored {
                model: model.into(),
                version,
            });
        }
        let loaded = Arc::new(verify_and_load(&self.trust, &path, |_| None)?);
        admin
            .loaded
            .insert((model.to_string(), version), loaded.clone());
        Ok(loaded)
    }

    /// Rebuilds the routing table from the admin state and swaps it in.
    fn publish(&self, admin: &Admin) {
        let mut table = Table::default();
        let route = |name: &str, v: u64, variant: &'static str| {
            admin.loaded.get(&(name.to_string(), v)).map(|l| Route {
                loaded: l.clone(),
                variant,
                series: self.metrics.series(name, v, variant),
            })
        };
        for (name, st) in &admin.state.models {
            let Some(champion) = st.champion.and_then(|v| route(name, v, "champion")) else {
                continue;
            };
            table.models.insert(
                name.clone(),
                ModelRoutes {
                    champion,
                    challenger: st
                        .challenger
                        .and_then(|(v, split)| route(name, v, "challenger").map(|r| (r, split))),
                    shadow: st.shadow.and_then(|v| route(name, v, "shadow")),
                },
            );
        }
        self.table.store(Arc::new(table));
    }

    fn save_state(&self, admin: &Admin) -> Result<(), ActivateError> {
        let path = self.data_dir.join("state.json");
        let bytes = serde_json::to_vec_pretty(&admin.state).map_err(|e| ActivateError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes).map_err(io_err("writing", &path))
    }

    /// Verifies, stores and activates a bundle file in `role`. `split` is the
    /// challenger's share of traffic.
    pub fn install(
        &self,
        bundle: &Path,
        role: Role,
        split: Option<f64>,
    ) -> Result<Activated, ActivateError> {
        let split = match role {
            Role::Challenger => {
                let s = split.unwrap_or(0.5);
                if !(0.0..=1.0).contains(&s) {
                    return Err(ActivateError::BadSplit(s));
                }
                s
            }
            _ => 0.0,
        };
        // Copy first, verify the copy: what is verified is what is stored.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .data_dir
            .join("incoming")
            .join(format!("{}-{n}.ferry", std::process::id()));
        fs::copy(bundle, &tmp).map_err(io_err("copying bundle", bundle))?;
        let result = self.install_verified_copy(&tmp, role, split);
        let _ = fs::remove_file(&tmp);
        match &result {
            Ok(a) => self.event(
                "activated",
                Some(&a.model),
                Some(a.version),
                match a.previous {
                    Some(p) => format!("{}, previous v{p}", a.role.as_str()),
                    None => a.role.as_str().to_string(),
                },
            ),
            Err(e) => self.event("refused", None, None, format!("{}: {e}", e.code())),
        }
        result
    }

    fn install_verified_copy(
        &self,
        tmp: &Path,
        role: Role,
        split: f64,
    ) -> Result<Activated, ActivateError> {
        let mut admin = self.admin();
        let highest = |name: &str| admin.state.models.get(name).map(|s| s.highest_seen);
        let loaded = match verify_and_load(&self.trust, tmp, highest) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "activation refused; previous version keeps serving");
                return Err(e);
            }
        };
        let name = loaded.manifest.model.to_string();
        let version = loaded.manifest.version;
        let dest = self.stored_path(&name, version);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        fs::rename(tmp, &dest).map_err(io_err("storing bundle", &dest))?;
        admin.loaded.insert((name.clone(), version), loaded);
        let st = admin.state.models.entry(name.clone()).or_default();
        st.highest_seen = st.highest_seen.max(version);
        let previous = match role {
            Role::Champion => {
                let prev = st.champion.replace(version);
                if let Some(p) = prev.filter(|p| *p != version) {
                    st.history.retain(|h| *h != p);
                    st.history.push(p);
                }
                // A challenger promoted to champion stops being a challenger.
                if st.challenger.map(|c| c.0) == Some(version) {
                    st.challenger = None;
                }
                prev
            }
            Role::Challenger => st.challenger.replace((version, split)).map(|c| c.0),
            Role::Shadow => st.shadow.replace(version),
        };
        if st.champion.is_none() && role != Role::Champion {
            // Without a champion there is nothing to compare with: serve it.
            st.champion = Some(version);
            match role {
                Role::Challenger => st.challenger = None,
                Role::Shadow => st.shadow = None,
                Role::Champion => {}
            }
        }
        self.prune(&mut admin, &name);
        self.save_state(&admin)?;
        self.publish(&admin);
        tracing::info!(model = %name, version, role = role.as_str(), ?previous, "activated");
        Ok(Activated {
            model: name,
            version,
            role,
            previous,
        })
    }

    /// Keeps the newest `keep_versions` stored versions of `model` plus any
    /// in use; deletes the rest and forgets their compiled plans.
    fn prune(&self, admin: &mut Admin, model: &str) {
        let Some(st) = admin.state.models.get(model).cloned() else {
            return;
        };
        let dir = self.data_dir.join("models").join(model);
        let Ok(rd) = fs::read_dir(&dir) else { return };
        let mut versions: Vec<u64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".ferry"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        versions.sort_unstable();
        let in_use = |v: u64| {
            st.champion == Some(v) || st.challenger.map(|c| c.0) == Some(v) || st.shadow == Some(v)
        };
        let keep_from = versions.len().saturating_sub(self.keep_versions);
        for (i, v) in versions.iter().enumerate() {
            if i < keep_from && !in_use(*v) {
                let _ = fs::remove_file(self.stored_path(model, *v));
            }
        }
        let stored: Vec<u64> = versions
            .iter()
            .enumerate()
            .filter(|(i, v)| *i >= keep_from || in_use(**v))
            .map(|(_, v)| *v)
            .collect();
        if let Some(st) = admin.state.models.get_mut(model) {
            st.history.retain(|v| stored.contains(v));
        }
        admin.loaded.retain(|(m, v), _| m != model || in_use(*v));
    }

    /// Reactivates the previous champion from the local store (no download).
    pub fn rollback(&self, model: &str) -> Result<Activated, ActivateError> {
        let mut admin = self.admin();
        let st = admin
            .state
            .models
            .get(model)
            .cloned()
            .ok_or_else(|| ActivateError::UnknownModel(model.into()))?;
        let Some(&target) = st.history.last() else {
            return Err(ActivateError::NoPrevious {
                model: model.into(),
            });
        };
        self.load_stored(&mut admin, model, target)?;
        let previous = {
            let Some(st) = admin.state.models.get_mut(model) else {
                return Err(ActivateError::UnknownModel(model.into()));
            };
            st.history.pop();
            st.champion.replace(target)
        };
        self.prune(&mut admin, model);
        self.save_state(&admin)?;
        self.publish(&admin);
        tracing::info!(model, version = target, ?previous, "rolled back");
        self.event(
            "rolled_back",
            Some(model),
            Some(target),
            previous.map(|p| format!("from v{p}")).unwrap_or_default(),
        );
        Ok(Activated {
            model: model.into(),
            version: target,
            role: Role::Champion,
            previous,
        })
    }

    /// Stops a challenger or shadow.
    pub fn clear(&self, model: &str, role: Role) -> Result<(), ActivateError> {
        let mut admin = self.admin();
        let st = admin
            .state
            .models
            .get_mut(model)
            .ok_or_else(|| ActivateError::UnknownModel(model.into()))?;
        match role {
            Role::Challenger => st.challenger = None,
            Role::Shadow => st.shadow = None,
            Role::Champion => {}
        }
        self.prune(&mut admin, model);
        self.save_state(&admin)?;
        self.publish(&admin);
        Ok(())
    }

    /// Stops serving `model` in every role (the control plane undeployed
    /// it). The highest version seen is kept, so an older bundle of the same
    /// model is still refused if it comes back.
    pub fn unload(&self, model: &str) -> Result<(), ActivateError> {
        let mut admin = self.admin();
        let st = admin
            .state
            .models
            .get_mut(model)
            .ok_or_else(|| ActivateError::UnknownModel(model.into()))?;
        st.champion = None;
        st.challenger = None;
        st.shadow = None;
        st.history.clear();
        self.prune(&mut admin, model);
        self.save_state(&admin)?;
        self.publish(&admin);
        tracing::info!(model, "unloaded");
        self.event("unloaded", Some(model), None, String::new());
        Ok(())
    }

    /// A fresh path in the store's incoming directory (for uploads).
    pub fn upload_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.data_dir
            .join("incoming")
            .join(format!("upload-{}-{n}.ferry", std::process::id()))
    }

    /// The persisted activation state (for `GET /v1/models`).
    pub fn state(&self) -> State {
        self.admin().state.clone()
    }

    pub fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    /// Ready when at least one model is serving.
    pub fn ready(&self) -> bool {
        !self.table.load().models.is_empty()
    }

    /// Serves one OIP infer request. `pinned` is the version from
    /// `/versions/{v}/infer`; `routing_header` the `x-ferry-routing-key`
    /// header.
    pub fn infer(
        self: &Arc<Self>,
        model: &str,
        pinned: Option<&str>,
        body: &[u8],
        json_len: Option<usize>,
        routing_header: Option<&str>,
    ) -> Result<Encoded, InferError> {
        let table = self.table.load();
        let Some(routes) = table.models.get(model) else {
            // One label for every unknown name: clients must not be able to
            // grow the metrics without bound.
            self.metrics.rejected("(unknown)", "unknown_model");
            return Err(InferError::UnknownModel(model.into()));
        };
        let result = self.infer_on(routes, model, pinned, body, json_len, routing_header);
        if let Err(e) = &result {
            self.metrics.rejected(model, e.code());
        }
        result
    }

    fn infer_on(
        self: &Arc<Self>,
        routes: &ModelRoutes,
        model: &str,
        pinned: Option<&str>,
        body: &[u8],
        json_len: Option<usize>,
        routing_header: Option<&str>,
    ) -> Result<Encoded, InferError> {
        let champion_schema = &routes.champion.loaded.manifest.schema;
        let (route, decoded) = match pinned {
            Some(v) => {
                let n: Option<u64> = v.parse().ok();
                let r = [
                    Some(&routes.champion),
                    routes.challenger.as_ref().map(|c| &c.0),
                    routes.shadow.as_ref(),
                ]
                .into_iter()
                .flatten()
                .find(|r| Some(r.version()) == n)
                .ok_or_else(|| InferError::UnknownVersion {
                    model: model.into(),
                    version: v.into(),
                })?;
                (r, oip::decode(body, json_len, &r.loaded.manifest.schema)?)
            }
            None => {
                let decoded = oip::decode(body, json_len, champion_schema)?;
                match &routes.challenger {
                    Some((ch, split)) => {
                        let key = routing_header
                            .map(str::to_string)
                            .or_else(|| decoded.routing_key.clone())
                            .or_else(|| decoded.id.clone())
                            .unwrap_or_else(|| {
                                self.counter.fetch_add(1, Ordering::Relaxed).to_string()
                            });
                        if routes_to_challenger(model, &key, *split) {
                            let schema = &ch.loaded.manifest.schema;
                            let d = if schema == champion_schema {
                                decoded
                            } else {
                                oip::decode(body, json_len, schema)?
                            };
                            (ch, d)
                        } else {
                            (&routes.champion, decoded)
                        }
                    }
                    None => (&routes.champion, decoded),
                }
            }
        };
        // The shadow sees the same request, decoded against its own schema.
        if pinned.is_none() {
            if let Some(sh) = &routes.shadow {
                if let Ok(d) = oip::decode(body, json_len, &sh.loaded.manifest.schema) {
                    let agent = self.clone();
                    let sh = sh.clone();
                    let model = model.to_string();
                    let job = move || {
                        let _ = agent.run_and_log(&sh, &model, d);
                    };
                    // Off the request path: the caller never waits for it.
                    match tokio::runtime::Handle::try_current() {
                        Ok(h) => drop(h.spawn_blocking(job)),
                        Err(_) => drop(
                            std::thread::Builder::new()
                                .name("ferry-shadow".into())
                                .spawn(job),
                        ),
                    }
                }
            }
        }
        let (outputs, decoded) = self.run_and_log(route, model, decoded)?;
        Ok(oip::encode(
            model,
            route.version(),
            decoded.id.as_deref(),
            &outputs,
            &decoded.outputs,
        ))
    }

    /// Runs `decoded` on `route`, records metrics and appends the log record.
    fn run_and_log(
        &self,
        route: &Route,
        model: &str,
        decoded: oip::Decoded,
    ) -> Result<(Vec<Output>, oip::Decoded), InferError> {
        let manifest = &route.loaded.manifest;
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let sampled = self.sample_threshold > 0
            && fnv1a(&[
                &seq.to_le_bytes(),
                decoded.id.as_deref().unwrap_or("").as_bytes(),
            ]) <= self.sample_threshold;
        let bins = match (&manifest.baseline, decoded.inputs.first()) {
            (Some(b), Some(input)) => bin_rows(b, input),
            _ => Vec::new(),
        };
        let payload = sampled.then(|| {
            decoded
                .inputs
                .iter()
                .zip(&manifest.schema.inputs)
                .map(|(i, s)| Tensor {
                    name: s.name.clone(),
                    shape: i.shape.iter().map(|d| *d as u64).collect(),
                    data: i.data.clone(),
                })
                .collect()
        });
        let inputs = decoded.inputs.clone();
        let start = Instant::now();
        let result = route.loaded.engine.run(inputs);
        let elapsed = start.elapsed();
        route.series.observe(elapsed.as_secs_f64(), result.is_ok());
        let latency_us = elapsed.as_micros().min(u128::from(u32::MAX)) as u32;
        self.telemetry
            .observe(crate::telemetry::window::Observation {
                model,
                loaded: &route.loaded,
                variant: route.variant,
                input: decoded.inputs.first(),
                bins: &bins,
                outputs: result.as_deref().ok(),
                latency_us,
                request_id: decoded.id.as_deref(),
                now_ms: now_ms(),
            });
        let (outputs, error) = match &result {
            Ok(o) => (
                o.iter()
                    .map(|o| Tensor {
                        name: o.name.clone(),
                        shape: o.shape.iter().map(|d| *d as u64).collect(),
                        data: o.data.clone(),
                    })
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let record = InferenceRecord {
            time_ms: now_ms(),
            model: model.to_string(),
            version: manifest.version,
            variant: route.variant.to_string(),
            latency_us,
            request_id: decoded.id.clone(),
            error,
            outputs,
            bins,
            payload,
        };
        self.log.append(&Entry::Inference(record))?;
        Ok((result?, decoded))
    }

    /// Appends a ground-truth label for an earlier request.
    pub fn feedback(
        &self,
        model: &str,
        request_id: String,
        label_json: String,
    ) -> Result<u64, InferError> {
        if !self.table.load().models.contains_key(model) {
            return Err(InferError::UnknownModel(model.into()));
        }
        self.telemetry.feedback(&request_id, &label_json);
        Ok(self.log.append(&Entry::Feedback(FeedbackRecord {
            time_ms: now_ms(),
            model: model.into(),
            request_id,
            label_json,
        }))?)
    }
}

/// Bins each row of a `[rows, features]` input against the baseline.
fn bin_rows(b: &ferry_protocol::Baseline, input: &Input) -> Vec<Vec<u8>> {
    let width = b.features.len();
    if input.shape.len() != 2 || input.shape[1] != width || width == 0 {
        return Vec::new();
    }
    let row_f64 = |vals: &mut dyn Iterator<Item = f64>| -> Vec<u8> {
        b.features
            .iter()
            .zip(vals)
            .map(|(f, x)| f.bin_f64(x))
            .collect()
    };
    match &input.data {
        TensorData::F32(v) => v
            .chunks_exact(width)
            .map(|r| row_f64(&mut r.iter().map(|x| f64::from(*x))))
            .collect(),
        TensorData::F64(v) => v
            .chunks_exact(width)
            .map(|r| row_f64(&mut r.iter().copied()))
            .collect(),
        TensorData::I64(v) => v
            .chunks_exact(width)
            .map(|r| row_f64(&mut r.iter().map(|x| *x as f64)))
            .collect(),
        _ => Vec::new(),
    }
}
