//! Dynamic batching (Triton's dynamic batcher is the model): concurrent
//! requests for one model version are stacked along their first dimension
//! into one run, up to `max_batch` rows or until the oldest has waited
//! `max_delay`, and the outputs are cut back into one answer per request.
//!
//! Configured per model (`[batching."name"]` in `agent.toml`, or
//! `--batch name=ROWS[:DELAY_US]`); off unless configured. On a CPU a batch
//! saves little beyond per-run overhead and adds up to `max_delay` to a
//! lone request's latency; it pays where one run has a high fixed cost.
//!
//! - `queue`: which waiting requests run together and when (sans-IO,
//!   tested on a fake clock);
//! - `stack`: requests stacked into one batch and the outputs cut back;
//! - `worker`: the thread per batched model version that drives the queue.
//!
//! Each request is still logged, metered and observed for drift on its own
//! (by the serving core, around [`Batcher::run`]); only the engine run is
//! shared.

mod queue;
mod stack;
mod worker;

use crate::engine::Engine;
use crate::tensors::{Input, Output, RunError};
use ferry_protocol::{Dim, Manifest};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use worker::{Job, Queued, Worker};

/// The default wait for more requests (Triton's examples use 100 µs to a
/// few ms; 2 ms keeps a lone request's added latency small).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(2);

/// How one model's requests are batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most rows (first-dimension entries, summed over requests) per run.
    pub max_rows: usize,
    /// Longest the oldest waiting request waits for more.
    pub max_delay: Duration,
}

/// Which models batch: by name, and `*` for every other model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchingConfig {
    pub models: BTreeMap<String, BatchPolicy>,
}

impl BatchingConfig {
    pub fn for_model(&self, name: &str) -> Option<BatchPolicy> {
        self.models
            .get(name)
            .or_else(|| self.models.get("*"))
            .copied()
    }

    /// Parses `--batch name=ROWS[:DELAY_US]` (`*` names every model).
    pub fn parse_flag(text: &str) -> Result<(String, BatchPolicy), String> {
        let usage =
            || format!("{text:?}: expected MODEL=MAX_ROWS[:MAX_DELAY_US], e.g. resnet=32:2000");
        let (name, rest) = text.split_once('=').ok_or_else(usage)?;
        let (rows, delay) = match rest.split_once(':') {
            Some((r, d)) => (r, Some(d)),
            None => (rest, None),
        };
        let max_rows: usize = rows.trim().parse().map_err(|_| usage())?;
        let max_delay = match delay {
            None => DEFAULT_MAX_DELAY,
            Some(d) => Duration::from_micros(d.trim().parse().map_err(|_| usage())?),
        };
        let policy = BatchPolicy::new(max_rows, max_delay)?;
        if name.trim().is_empty() {
            return Err(usage());
        }
        Ok((name.trim().to_string(), policy))
    }
}

impl BatchPolicy {
    /// Refuses a policy that cannot batch anything, or that would hold a
    /// request for more than a second.
    pub fn new(max_rows: usize, max_delay: Duration) -> Result<Self, String> {
        if max_rows < 2 {
            return Err(format!(
                "max_batch {max_rows}: batching needs at least 2 rows"
            ));
        }
        if max_delay > Duration::from_secs(1) {
            return Err(format!(
                "max_delay {} µs: at most 1,000,000 µs",
                max_delay.as_micros()
            ));
        }
        Ok(Self {
            max_rows,
            max_delay,
        })
    }
}

/// Why a configured model is served unbatched.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NotBatchable {
    #[error(
        "input {0:?} has a fixed first dimension; only a dynamic batch dimension can be stacked"
    )]
    FixedInput(String),
    #[error("output {0:?} has a fixed first dimension, so it cannot be cut back per request")]
    FixedOutput(String),
    #[error("the model has inputs fixed at build time (--const-input)")]
    ConstInputs,
    #[error("the model has no inputs")]
    NoInputs,
    #[error("could not start the batching thread: {0}")]
    Thread(String),
}

/// Counters of one batched model version, for `/metrics`.
#[derive(Default)]
pub struct BatchStats {
    runs: AtomicU64,
    requests: AtomicU64,
    /// Batches by request count, at the bounds of [`BATCH_BUCKETS`].
    sizes: [AtomicU64; BATCH_BUCKETS.len()],
    unstacked: AtomicU64,
}

/// Upper bounds (requests per run) of the batch-size histogram.
pub const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

impl BatchStats {
    fn record(&self, requests: usize) {
        let n = requests as u64;
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(n, Ordering::Relaxed);
        if let Some(i) = BATCH_BUCKETS.iter().position(|b| n <= *b) {
            self.sizes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unstacked(&self) {
        self.unstacked.fetch_add(1, Ordering::Relaxed);
    }

    /// Batches run (one engine run each, or one per request when unstacked).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Requests that went through the batcher.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Batches run one request at a time because the stacked run failed or
    /// its outputs were not per row.
    pub fn unstacked_runs(&self) -> u64 {
        self.unstacked.load(Ordering::Relaxed)
    }

    /// Non-cumulative counts per bucket of [`BATCH_BUCKETS`].
    pub fn size_counts(&self) -> Vec<u64> {
        self.sizes
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// One model version's batcher: the sending end of its worker's channel.
/// Dropping it lets the worker answer what waits and stop.
pub struct Batcher {
    tx: mpsc::Sender<Queued>,
    /// Runs requests the worker cannot take (too many rows, or the worker
    /// is gone).
    engine: Engine,
    policy: BatchPolicy,
    stats: Arc<BatchStats>,
}

impl Batcher {
    /// Whether `manifest`'s model can be batched: every input and output
    /// has a dynamic first dimension, and no input is fixed at build time.
    pub fn check(manifest: &Manifest) -> Result<(), NotBatchable> {
        if !manifest.const_inputs.is_empty() {
            return Err(NotBatchable::ConstInputs);
        }
        if manifest.schema.inputs.is_empty() {
            return Err(NotBatchable::NoInputs);
        }
        let dynamic = |shape: &[Dim]| matches!(shape.first(), Some(Dim::Symbolic(_)));
        if let Some(i) = manifest.schema.inputs.iter().find(|i| !dynamic(&i.shape)) {
            return Err(NotBatchable::FixedInput(i.name.clone()));
        }
        if let Some(o) = manifest.schema.outputs.iter().find(|o| !dynamic(&o.shape)) {
            return Err(NotBatchable::FixedOutput(o.name.clone()));
        }
        Ok(())
    }

    /// Starts the worker thread for `engine` (the model `manifest`
    /// describes, already checked with [`Batcher::check`]).
    pub fn start(
        manifest: &Manifest,
        engine: &Engine,
        policy: BatchPolicy,
    ) -> Result<Self, NotBatchable> {
        Self::check(manifest)?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(BatchStats::default());
        let worker = Worker {
            engine: engine.clone(),
            queue: queue::BatchQueue::new(
                policy.max_rows,
                policy.max_delay.as_micros().min(u128::from(u64::MAX)) as u64,
            ),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name(format!("ferry-batch-{}", manifest.version))
            .spawn(move || worker.run(rx))
            .map_err(|e| NotBatchable::Thread(e.to_string()))?;
        Ok(Self {
            tx,
            engine: engine.clone(),
            policy,
            stats,
        })
    }

    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Runs one request's inputs in the next batch of its shape and waits
    /// for its rows. Blocks the calling thread for up to `max_delay` plus
    /// the batch's run: call it off the async workers.
    pub fn run(&self, inputs: Vec<Input>) -> Result<Vec<Output>, RunError> {
        let Some((key, rows)) = stack::key_and_rows(&inputs) else {
            return self.engine.run(inputs);
        };
        if rows > self.policy.max_rows {
            return self.engine.run(inputs);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        let queued = Queued {
            key,
            rows,
            job: Job { inputs, reply },
        };
        if let Err(mpsc::SendError(q)) = self.tx.send(queued) {
            return self.engine.run(q.job.inputs);
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err(RunError::Exec("the batching thread stopped".into())))
    }
}
