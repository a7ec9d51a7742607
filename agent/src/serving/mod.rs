//! The serving core: verified activation, the routing table that requests
//! read without locks, hot swap, rollback, A/B and shadow.
//!
//! Requests load the current [`Table`] from an `ArcSwap` and borrow the
//! plans they run from it, so a swap never waits for them and never cuts
//! one short: in-flight requests finish on the plan they started with, and
//! the old plan is freed when the last of them returns.
//!
//! - `verify`: bundle file → [`LoadedModel`] (verify, compile, test vectors);
//! - `routing`: the [`Table`], roles and the routing hash;
//! - `local_store`: `models/`, `incoming/` and `state.json` on disk;
//! - `activation`: install, rollback, clear, unload, prune (one mutex);
//! - `infer`: [`Agent::route`] and [`RouteRef::run`] for decoded requests;
//!   the wire codec is the caller's;
//! - `events`: activation-path events on their way to telemetry.

mod activation;
mod error;
mod events;
mod infer;
mod local_store;
mod routing;
mod shadow;
mod verify;

pub use crate::telemetry::events::{DeviceEvent, EventSink};
pub use activation::Activated;
pub use error::{ActivateError, InferError};
pub use infer::{RouteRef, Routing};
pub use local_store::{ActivationState, ModelState};
pub use routing::{routes_to_challenger, routing_hash, ModelRoutes, Role, Route, Table};
pub use verify::{
    check_test_vectors, verify_and_load, verify_and_load_for, verify_and_load_with, LoadedModel,
};

use crate::batching::BatchingConfig;
use crate::clock::Clock;
use crate::inference_log::{Durability, InferenceLog};
use crate::metrics::Metrics;
use crate::plan_cache::CacheBounds;
use activation::Activations;
use arc_swap::ArcSwap;
use events::EventQueue;
use ferry_protocol::TrustRoot;
use local_store::LocalStore;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct AgentOptions {
    pub data_dir: PathBuf,
    pub trust: TrustRoot,
    pub keep_versions: usize,
    pub sample_rate: f64,
    pub log_max_bytes: u64,
    pub log_durability: Durability,
    pub log_flush_ms: u64,
    /// Bounds of each model's per-shape plan cache.
    pub plan_cache: CacheBounds,
    /// What bundle expiry, log records and drift windows read the time from.
    pub clock: Arc<dyn Clock>,
    /// Which models' concurrent requests are stacked into one run.
    pub batching: BatchingConfig,
    /// Which engine serves models (`--engine`, `--gpu-backend`).
    pub engine: crate::engine_choice::EngineSelect,
}

pub struct Agent {
    table: ArcSwap<Table>,
    activations: Mutex<Activations>,
    pub log: InferenceLog,
    pub metrics: Metrics,
    /// Drift windows (telemetry); a no-op until enabled.
    pub telemetry: Arc<crate::telemetry::Windows>,
    /// The trust root bundles verify against; the fleet session replaces
    /// it with a verified successor (`set_trust`).
    trust: ArcSwap<TrustRoot>,
    store: LocalStore,
    keep_versions: usize,
    plan_cache: CacheBounds,
    batching: BatchingConfig,
    engine: crate::engine_choice::EngineSelect,
    sample_threshold: u64,
    /// Request sequence, fallback routing keys and temporary file names.
    counter: AtomicU64,
    /// Activations, refusals, rollbacks and unloads for the telemetry
    /// events topic.
    events: EventQueue,
    /// Shadow copies in flight (bounded).
    shadow_slots: Arc<shadow::ShadowSlots>,
    clock: Arc<dyn Clock>,
}

impl Agent {
    /// Opens the data directory, the inference log and the saved activation
    /// state, and reloads the versions that were active.
    pub fn open(opts: AgentOptions) -> Result<Arc<Self>, ActivateError> {
        let store = LocalStore::open(opts.data_dir)?;
        let log_dir = store.log_dir();
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
        // The log is open (and locked): no other process installs here.
        store.clear_incoming();
        let state = store.load_state()?;
        let rate = opts.sample_rate.clamp(0.0, 1.0);
        let telemetry: Arc<crate::telemetry::Windows> = Arc::default();
        telemetry.set_trust_expiry(opts.trust.expires_at);
        let agent = Arc::new(Self {
            table: ArcSwap::from_pointee(Table::default()),
            activations: Mutex::new(Activations::new(state)),
            log,
            metrics: Metrics::default(),
            telemetry,
            trust: ArcSwap::from_pointee(opts.trust),
            store,
            keep_versions: opts.keep_versions.max(1),
            plan_cache: opts.plan_cache,
            batching: opts.batching,
            engine: opts.engine,
            sample_threshold: (rate * u64::MAX as f64) as u64,
            counter: AtomicU64::new(0),
            events: EventQueue::default(),
            shadow_slots: Arc::default(),
            clock: opts.clock,
        });
        agent.reload_from_state();
        Ok(agent)
    }

    /// The trust root new bundles are verified against.
    /// The runtimes this agent offers bundles, for its fleet hello.
    pub fn runtimes(&self) -> Vec<String> {
        crate::engine_choice::runtimes(&self.engine)
    }

    pub fn trust(&self) -> Arc<TrustRoot> {
        self.trust.load_full()
    }

    /// Replaces the trust root (the caller verified it as a successor of
    /// the current one and persisted it). Later activations verify against
    /// it; what serves keeps serving.
    pub fn set_trust(&self, root: TrustRoot) {
        self.telemetry.set_trust_expiry(root.expires_at);
        self.trust.store(Arc::new(root));
    }

    /// The routing table as it is now (requests hold it while they run).
    pub fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    /// Whether requests for `model` wait for a batch (and so must not run
    /// on an async worker).
    pub fn batches(&self, model: &str) -> bool {
        self.table
            .load()
            .models
            .get(model)
            .is_some_and(|r| r.iter().any(|r| r.loaded.batcher.is_some()))
    }

    /// Ready when at least one model is serving.
    pub fn ready(&self) -> bool {
        !self.table.load().models.is_empty()
    }

    /// A fresh path in the store's incoming directory (for uploads).
    pub fn upload_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.store
            .incoming(format!("upload-{}-{n}.ferry", std::process::id()))
    }

    /// Sends every later activation-path event to `sink`, after the ones
    /// held so far.
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        self.events.set_sink(sink);
    }

    /// Reports an activation-path outcome decided outside `install` (the
    /// fleet client refuses some bundles before installing them).
    pub fn record_event(&self, e: DeviceEvent) {
        self.events.record(e);
    }

    fn event(&self, kind: &'static str, model: Option<&str>, version: Option<u64>, detail: String) {
        self.record_event(DeviceEvent {
            kind,
            model: model.map(str::to_string),
            version,
            detail,
        });
    }
}
