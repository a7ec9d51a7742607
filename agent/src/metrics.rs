//! Prometheus text-format metrics: requests, errors and a latency histogram
//! per model, version and variant, plus request errors by reason and the
//! inference log's size and drop counter.
//!
//! Hand-written rather than a metrics crate: a few atomics per series, and
//! the request path touches only its own series' counters.

use crate::inference_log::LogStats;
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
