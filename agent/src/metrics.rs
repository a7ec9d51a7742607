//! Prometheus text-format metrics: requests, errors and a latency histogram
//! per model, version and variant, plus request errors by reason and the
//! inference log's size and drop counter.
//!
//! Hand-written rather than a metrics crate: a few atomics per series, and
//! the request path touches only its own series' counters.

use crate::batching::{BatchStats, BATCH_BUCKETS};
use crate::inference_log::LogStats;
use crate::plan_cache::PlanStats;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Histogram upper bounds in seconds.
pub const BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Default)]
pub struct Series {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_ns: AtomicU64,
}

impl Series {
    pub fn observe(&self, seconds: f64, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

type Key = (String, u64, String);

#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<Key, Arc<Series>>>,
    /// Rejected requests by model (as requested) and reason code.
    rejected: Mutex<BTreeMap<(String, String), u64>>,
    /// Shadow copies dropped because too many were in flight, by model.
    shadow_dropped: Mutex<BTreeMap<String, u64>>,
    /// Activations by outcome (`activated`, `refused`) and refusal code.
    activations: Mutex<BTreeMap<(&'static str, String), u64>>,
}

/// One loaded model version's compile and plan-cache counters.
pub struct PlanLine<'a> {
    pub model: &'a str,
    pub version: u64,
    pub stats: &'a PlanStats,
    /// The engine serving this version.
    pub engine: crate::engine_choice::EngineInfo,
}

/// One batched model version's batcher counters.
pub struct BatchLine<'a> {
    pub model: &'a str,
    pub version: u64,
    pub stats: &'a BatchStats,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The series for one model version and variant (created on first use;
    /// callers keep the `Arc` so the request path takes no lock).
    pub fn series(&self, model: &str, version: u64, variant: &str) -> Arc<Series> {
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((model.to_string(), version, variant.to_string()))
            .or_default()
            .clone()
    }

    pub fn rejected(&self, model: &str, code: &str) {
        let mut m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((model.to_string(), code.to_string())).or_default() += 1;
    }

    /// A shadow copy of a request to `model` (a loaded model) was dropped.
    pub fn shadow_dropped(&self, model: &str) {
        let mut m = self
            .shadow_dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry(model.to_string()).or_default() += 1;
    }

    /// Counts an activation (side-load, admin upload or fleet) by outcome;
    /// `code` names why one was refused.
    pub fn activation(&self, outcome: &'static str, code: &str) {
        let mut m = self.activations.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((outcome, code.to_string())).or_default() += 1;
    }

    /// The compile-time and plan-cache lines for the loaded versions.
    pub fn render_plans(out: &mut String, plans: &[PlanLine<'_>]) {
        type Read = fn(&PlanStats) -> u64;
        let rows: [(&str, &str, &str, Read); 7] = [
            (
                "ferry_plan_compiles_total",
                "Plans compiled (at activation and per new input shape).",
                "counter",
                |s| PlanStats::get(&s.compiles),
            ),
            (
                "ferry_plan_compile_seconds_total",
                "Time spent compiling plans.",
                "counter",
                |s| PlanStats::get(&s.compile_micros),
            ),
            (
                "ferry_plan_compile_failures_total",
                "Input shapes the graph could not be compiled for.",
                "counter",
                |s| PlanStats::get(&s.compile_failures),
            ),
            (
                "ferry_plan_cache_hits_total",
                "Requests that found their input shapes' plan compiled.",
                "counter",
                |s| PlanStats::get(&s.hits),
            ),
            (
                "ferry_plan_cache_evictions_total",
                "Per-shape plans dropped to stay within the cache bounds.",
                "counter",
                |s| PlanStats::get(&s.evictions),
            ),
            (
                "ferry_plan_cache_entries",
                "Per-shape plans held.",
                "gauge",
                |s| PlanStats::get(&s.entries),
            ),
            (
                "ferry_plan_cache_bytes",
                "Bytes charged for the per-shape plans held.",
                "gauge",
                |s| PlanStats::get(&s.bytes),
            ),
        ];
        for (name, help, kind, read) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in plans {
                let v = read(p.stats);
                let labels = format!("model=\"{}\",version=\"{}\"", esc(p.model), p.version);
                if name == "ferry_plan_compile_seconds_total" {
                    let _ = writeln!(out, "{name}{{{labels}}} {}", v as f64 / 1e6);
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
    }

    /// The engines this agent has (with each GPU adapter) and the one
    /// serving each loaded version.
    pub fn render_engines(
        out: &mut String,
        available: &[crate::engine_choice::Available],
        plans: &[PlanLine<'_>],
    ) {
        let _ = writeln!(
            out,
            "# HELP ferry_engine_available Engines of this agent; 1 when its device is present.\n# TYPE ferry_engine_available gauge"
        );
        for a in available {
            let _ = writeln!(
                out,
                "ferry_engine_available{{engine=\"{}\",backend=\"{}\",adapter=\"{}\",kind=\"{}\",api=\"{}\"}} {}",
                a.engine,
                a.backend.unwrap_or(""),
                esc(a.adapter.as_deref().unwrap_or("")),
                esc(a.kind.as_deref().unwrap_or("")),
                esc(a.api.as_deref().unwrap_or("")),
                u8::from(a.error.is_none())
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_gpu_memory_bytes Device memory of a GPU adapter, where its backend reports it.\n# TYPE ferry_gpu_memory_bytes gauge"
        );
        for a in available {
            if let (Some(b), Some(m)) = (a.backend, a.memory_bytes) {
                let _ = writeln!(out, "ferry_gpu_memory_bytes{{backend=\"{b}\"}} {m}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP ferry_model_engine_info The engine serving each loaded version.\n# TYPE ferry_model_engine_info gauge"
        );
        for p in plans {
            let _ = writeln!(
                out,
                "ferry_model_engine_info{{model=\"{}\",version=\"{}\",engine=\"{}\",backend=\"{}\"}} 1",
                esc(p.model),
                p.version,
                p.engine.engine,
                p.engine.backend.unwrap_or("")
            );
        }
    }

    /// The dynamic batcher's lines for the batched versions: runs,
    /// requests, a histogram of requests per run, and runs that had to be
    /// split into single requests.
    pub fn render_batches(out: &mut String, batches: &[BatchLine<'_>]) {
        if batches.is_empty() {
            return;
        }
        let labels =
            |b: &BatchLine<'_>| format!("model=\"{}\",version=\"{}\"", esc(b.model), b.version);
        let _ = writeln!(
            out,
            "# HELP ferry_batch_size Requests per run of the dynamic batcher.\n# TYPE ferry_batch_size histogram"
        );
        for b in batches {
            let l = labels(b);
            let mut cumulative = 0;
            for (bound, n) in BATCH_BUCKETS.iter().zip(b.stats.size_counts()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "ferry_batch_size_bucket{{{l},le=\"{bound}\"}} {cumulative}"
                );
            }
            let runs = b.stats.runs();
            let _ = writeln!(out, "ferry_batch_size_bucket{{{l},le=\"+Inf\"}} {runs}");
            let _ = writeln!(out, "ferry_batch_size_sum{{{l}}} {}", b.stats.requests());
            let _ = writeln!(out, "ferry_batch_size_count{{{l}}} {runs}");
        }
        let _ = writeln!(
            out,
            "# HELP ferry_batch_unstacked_total Batches run one request at a time (the stacked run failed or its outputs were not per row).\n# TYPE ferry_batch_unstacked_total counter"
        );
        for b in batches {
            let _ = writeln!(
                out,
                "ferry_batch_unstacked_total{{{}}} {}",
                labels(b),
                b.stats.unstacked_runs()
            );
        }
    }

    pub fn render(&self, log: Option<LogStats>) -> String {
        let mut out = String::with_capacity(4096);
        let series: Vec<(Key, Arc<Series>)> = {
            let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let labels = |(m, v, var): &Key| {
            format!(
                "model=\"{}\",version=\"{v}\",variant=\"{}\"",
                esc(m),
                esc(var)
            )
        };
        out.push_str("# HELP ferry_inference_requests_total Inference requests served.\n");
        out.push_str("# TYPE ferry_inference_requests_total counter\n");
        for (k, s) in &series {
            let _ = writeln!(
                out,
                "ferry_inference_requests_total{{{}}} {}",
                labels(k),
                s.requests()
            );
        }
        out.push_str(
            "# HELP ferry_inference_errors_total Inference requests the model failed on.\n",
        );
        out.push_str("# TYPE ferry_inference_errors_total counter\n");
        for (k, s) in &series {
            let _ = writeln!(
                out,
                "ferry_inference_errors_total{{{}}} {}",
                labels(k),
                s.errors.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP ferry_inference_latency_seconds Model execution latency.\n");
        out.push_str("# TYPE ferry_inference_latency_seconds histogram\n");
        for (k, s) in &series {
            let l = labels(k);
            let mut cum = 0;
            for (b, c) in BUCKETS.iter().zip(&s.buckets) {
                cum += c.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "ferry_inference_latency_seconds_bucket{{{l},le=\"{b}\"}} {cum}"
                );
            }
            let n = s.requests();
            let _ = writeln!(
                out,
                "ferry_inference_latency_seconds_bucket{{{l},le=\"+Inf\"}} {n}"
            );
            let sum = s.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "ferry_inference_latency_seconds_sum{{{l}}} {sum}");
            let _ = writeln!(out, "ferry_inference_latency_seconds_count{{{l}}} {n}");
        }
        out.push_str(
            "# HELP ferry_request_rejected_total Requests refused before inference, by reason.\n",
        );
        out.push_str("# TYPE ferry_request_rejected_total counter\n");
        {
            let m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
            for ((model, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "ferry_request_rejected_total{{model=\"{}\",reason=\"{}\"}} {n}",
                    esc(model),
                    esc(code)
                );
            }
        }
        out.push_str(
            "# HELP ferry_shadow_dropped_total Shadow copies not run: too many in flight.\n",
        );
        out.push_str("# TYPE ferry_shadow_dropped_total counter\n");
        {
            let m = self
                .shadow_dropped
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (model, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "ferry_shadow_dropped_total{{model=\"{}\"}} {n}",
                    esc(model)
                );
            }
        }
        let activations: Vec<((&str, String), u64)> = {
            let m = self.activations.lock().unwrap_or_else(|p| p.into_inner());
            m.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        if !activations.is_empty() {
            out.push_str("# HELP ferry_activations_total Bundle activations by outcome and refusal reason.\n");
            out.push_str("# TYPE ferry_activations_total counter\n");
            for ((outcome, code), n) in activations {
                let _ = writeln!(
                    out,
                    "ferry_activations_total{{outcome=\"{outcome}\",reason=\"{}\"}} {n}",
                    esc(&code)
                );
            }
        }
        if let Some(s) = log {
            for (name, help, kind, v) in [
                (
                    "ferry_inference_log_records",
                    "Records in the inference log.",
                    "gauge",
                    s.records,
                ),
                (
                    "ferry_inference_log_bytes",
                    "Bytes of records in the inference log.",
                    "gauge",
                    s.bytes,
                ),
                (
                    "ferry_inference_log_max_bytes",
                    "The inference log's bound.",
                    "gauge",
                    s.max_bytes,
                ),
                (
                    "ferry_inference_log_dropped_total",
                    "Records dropped because the log was full.",
                    "counter",
                    s.dropped,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        }
        out
    }
}
