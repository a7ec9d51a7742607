//! Drift windows: per (model, version, variant), counts of every request's
//! feature bins, missing and out-of-range values, predictions, latencies,
//! errors and fed-back labels, closed by rows or by time into a
//! [`DriftSummary`].
//!
//! The inference path calls [`Windows::observe`] with the bin indices the
//! inference log already computed, so accounting is a few counter increments
//! under one short mutex. Time is an argument (`now_ms`); only the publisher
//! task reads the clock.

use crate::engine::{Input, Output};
use ferry_protocol::telemetry::{
    histogram_quantile, latency_bucket, ClosedBy, DriftSummary, FeatureCounts, NumericStats,
    Predictions, LATENCY_BOUNDS_US, TELEMETRY_SCHEMA,
};
use ferry_protocol::{Manifest, TensorData};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Remembered predictions awaiting a label (oldest forgotten first).
pub const PENDING_LABELS: usize = 10_000;

/// When a window closes: after `rows` rows or `secs` seconds, whichever
/// comes first (0 disables that bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    pub rows: u64,
    pub secs: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            rows: 1000,
            secs: 60,
        }
    }
}

struct Window {
    /// The served version's manifest: its baseline bins the features.
    manifest: Arc<Manifest>,
    model: String,
    version: u64,
    variant: &'static str,
    start_ms: u64,
    last_ms: u64,
    rows: u64,
    requests: u64,
    errors: u64,
    counts: Option<FeatureCounts>,
    latency: [u64; LATENCY_BOUNDS_US.len() + 1],
    output: String,
    classes: BTreeMap<String, u64>,
    numeric: Option<NumericStats>,
    labelled: u64,
    correct: u64,
}

impl Window {
    fn new(manifest: Arc<Manifest>, model: &str, variant: &'static str, now_ms: u64) -> Self {
        let counts = manifest.baseline.as_ref().map(FeatureCounts::new);
        let version = manifest.version;
        Self {
            manifest,
            model: model.to_string(),
            version,
            variant,
            start_ms: now_ms,
            last_ms: now_ms,
            rows: 0,
            requests: 0,
            errors: 0,
            counts,
            latency: [0; LATENCY_BOUNDS_US.len() + 1],
            output: String::new(),
            classes: BTreeMap::new(),
            numeric: None,
            labelled: 0,
            correct: 0,
        }
    }

    fn summary(&self, closed_by: ClosedBy, end_ms: u64) -> DriftSummary {
        let baseline = self.manifest.baseline.as_ref();
        let (features, psi, missing, out_of_range) = match (baseline, &self.counts) {
            (Some(b), Some(c)) => (
                b.features.iter().map(|f| f.name.clone()).collect(),
                // Lengths agree by construction; a mismatch reports no PSI.
                c.psi(b).unwrap_or_else(|_| vec![None; b.features.len()]),
                c.missing.clone(),
                c.out_of_range.clone(),
            ),
            _ => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        DriftSummary {
            schema: TELEMETRY_SCHEMA,
            tenant: String::new(),
            device: String::new(),
            seq: 0,
            model: self.model.clone(),
            version: self.version,
            variant: self.variant.to_string(),
            window_start_ms: self.start_ms,
            window_end_ms: end_ms.max(self.start_ms),
            closed_by,
            rows: self.rows,
            features,
            psi,
            missing,
            out_of_range,
            predictions: Predictions {
                output: self.output.clone(),
                classes: self.classes.clone(),
                numeric: self.numeric.clone(),
            },
            latency_us: self.latency.to_vec(),
            latency_p50_us: histogram_quantile(&self.latency, 0.5),
            latency_p99_us: histogram_quantile(&self.latency, 0.99),
            errors: self.errors,
            requests: self.requests,
            labelled: self.labelled,
            correct: self.correct,
        }
    }
}

struct Pending {
    model: String,
    version: u64,
    variant: &'static str,
    predicted: String,
}

#[derive(Default)]
struct Inner {
    cfg: WindowConfig,
    open: Vec<Window>,
    closed: VecDeque<DriftSummary>,
    /// Request id → the predictions made for it: the answering variant's
    /// and a shadow's copy (a label counts for each).
    pending: HashMap<String, Vec<Pending>>,
    pending_order: VecDeque<String>,
}

/// All open windows of an agent. Disabled (a no-op) until
/// [`Windows::enable`].
#[derive(Default)]
pub struct Windows {
    enabled: AtomicBool,
    inner: Mutex<Inner>,
    /// Woken when a window closes by rows.
    pub closed_notify: tokio::sync::Notify,
    /// When the trust root the serving core verifies against expires
    /// (Unix seconds; 0: not known), for the health message.
    trust_expires_at: std::sync::atomic::AtomicU64,
}

/// One request as the inference path saw it.
pub struct Observation<'a> {
    pub model: &'a str,
    /// The manifest of the version that answered.
    pub manifest: &'a Arc<Manifest>,
    pub variant: &'static str,
    pub input: Option<&'a Input>,
    /// Bin indices per row (the inference log's `bins`).
    pub bins: &'a [Vec<u8>],
    pub outputs: Option<&'a [Output]>,
    pub latency_us: u32,
    pub request_id: Option<&'a str>,
    pub now_ms: u64,
}

/// A label's text as it is compared with a prediction: JSON numbers that are
/// integers print without a fraction, strings without quotes, a one-element
/// array as its element.
pub fn label_text(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    fn text(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::Number(n) => Some(match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
                _ => n.to_string(),
            }),
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Bool(b) => Some(u8::from(*b).to_string()),
            serde_json::Value::Array(a) if a.len() == 1 => text(&a[0]),
            _ => None,
        }
    }
    text(&v)
}

impl Windows {
    /// Records when the trust root in use expires (the serving core calls
    /// this at start and on every rotation).
    pub fn set_trust_expiry(&self, expires_at: u64) {
        self.trust_expires_at.store(expires_at, Ordering::Relaxed);
    }

    /// Seconds from `now` until the trust root in use expires, if known.
    pub fn trust_expires_in(&self, now: u64) -> Option<i64> {
        match self.trust_expires_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at as i64 - now as i64),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts accounting with `cfg`.
    pub fn enable(&self, cfg: WindowConfig) {
        self.lock().cfg = cfg;
        self.enabled.store(true, Ordering::Release);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Counts one request. Closes the window when it reaches its row bound.
    pub fn observe(&self, o: Observation<'_>) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        let version = o.manifest.version;
        let idx = match inner
            .open
            .iter()
            .position(|w| w.version == version && w.variant == o.variant && w.model == o.model)
        {
            Some(i) => i,
            None => {
                inner.open.push(Window::new(
                    o.manifest.clone(),
                    o.model,
                    o.variant,
                    o.now_ms,
                ));
                inner.open.len() - 1
            }
        };
        let rows_bound = inner.cfg.rows;
        let w = &mut inner.open[idx];
        w.last_ms = o.now_ms;
        w.requests += 1;
        w.latency[latency_bucket(o.latency_us)] += 1;
        if let Some(c) = &mut w.counts {
            for row in o.bins {
                c.add_bins(row);
            }
            if let (Some(b), Some(input)) = (&w.manifest.baseline, o.input) {
                let width = b.features.len();
                if width > 0 && input.shape.len() == 2 && input.shape[1] == width {
                    let mut count = |i: usize, x: f64| {
                        let f = i % width;
                        if b.features[f].out_of_range(x) {
                            c.out_of_range[f] += 1;
                        }
                    };
                    match &input.data {
                        TensorData::F32(v) => v
                            .iter()
                            .enumerate()
                            .for_each(|(i, x)| count(i, f64::from(*x))),
                        TensorData::F64(v) => v.iter().enumerate().for_each(|(i, x)| count(i, *x)),
                        TensorData::I64(v) => {
                            v.iter().enumerate().for_each(|(i, x)| count(i, *x as f64))
                        }
                        _ => {}
                    }
                }
            }
        }
        let rows = match o.input {
            Some(i) if !i.shape.is_empty() => i.shape[0] as u64,
            _ => o.bins.len().max(1) as u64,
        };
        w.rows += rows;
        let mut first_class: Option<String> = None;
        match o.outputs.and_then(|outs| outs.first()) {
            Some(out) => {
                if w.output.is_empty() {
                    w.output = out.name.clone();
                }
                let per_row = match out.shape.first() {
                    Some(&n) if n > 0 => out.data.len() / n,
                    _ => 1,
                }
                .max(1);
                match &out.data {
                    TensorData::I64(v) => {
                        for x in v.iter().step_by(per_row) {
                            let k = x.to_string();
                            if first_class.is_none() {
                                first_class = Some(k.clone());
                            }
                            *w.classes.entry(k).or_default() += 1;
                        }
                    }
                    TensorData::I32(v) => {
                        for x in v.iter().step_by(per_row) {
                            let k = x.to_string();
                            if first_class.is_none() {
                                first_class = Some(k.clone());
                            }
                            *w.classes.entry(k).or_default() += 1;
                        }
                    }
                    TensorData::Bytes(v) => {
                        for x in v.iter().step_by(per_row) {
                            let k = String::from_utf8_lossy(x).into_owned();
                            if first_class.is_none() {
                                first_class = Some(k.clone());
                            }
                            *w.classes.entry(k).or_default() += 1;
                        }
                    }
                    data => {
                        if let Some(vals) = data.as_f64() {
                            for x in vals.iter().step_by(per_row) {
                                let s = w.numeric.get_or_insert(NumericStats {
                                    n: 0,
                                    mean: 0.0,
                                    min: f64::INFINITY,
                                    max: f64::NEG_INFINITY,
                                });
                                s.n += 1;
                                s.mean += (x - s.mean) / s.n as f64;
                                s.min = s.min.min(*x);
                                s.max = s.max.max(*x);
                            }
                        }
                    }
                }
            }
            None => w.errors += 1,
        }
        let full = rows_bound > 0 && w.rows >= rows_bound;
        let (model, variant) = (w.model.clone(), w.variant);
        if let (Some(id), Some(predicted)) = (o.request_id, first_class) {
            inner.remember(id, model, version, variant, predicted);
        }
        if full {
            let w = inner.open.swap_remove(idx);
            inner.closed.push_back(w.summary(ClosedBy::Rows, o.now_ms));
            drop(inner);
            self.closed_notify.notify_one();
        }
    }

    /// Matches a fed-back label with the remembered prediction; counts it in
    /// the window of that version now open.
    pub fn feedback(&self, request_id: &str, label_json: &str) {
        if !self.enabled() {
            return;
        }
        let Some(label) = label_text(label_json) else {
            return;
        };
        let mut inner = self.lock();
        let Some(predictions) = inner.pending.remove(request_id) else {
            return;
        };
        for p in predictions {
            if let Some(w) = inner
                .open
                .iter_mut()
                .find(|w| w.version == p.version && w.variant == p.variant && w.model == p.model)
            {
                w.labelled += 1;
                if label == p.predicted {
                    w.correct += 1;
                }
            }
        }
    }

    /// Closes windows older than the time bound (with at least one row).
    pub fn tick(&self, now_ms: u64) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        let secs = inner.cfg.secs;
        if secs == 0 {
            return;
        }
        let mut i = 0;
        while i < inner.open.len() {
            if now_ms.saturating_sub(inner.open[i].start_ms) >= secs * 1000 {
                let w = inner.open.swap_remove(i);
                if w.rows > 0 {
                    inner.closed.push_back(w.summary(ClosedBy::Time, now_ms));
                }
            } else {
                i += 1;
            }
        }
    }

    /// Closes every open window (at shutdown).
    pub fn close_all(&self, now_ms: u64) {
        let mut inner = self.lock();
        let open = std::mem::take(&mut inner.open);
        for w in open {
            if w.rows > 0 {
                inner
                    .closed
                    .push_back(w.summary(ClosedBy::Shutdown, now_ms));
            }
        }
    }

    /// Takes the closed windows' summaries, oldest first.
    pub fn take_closed(&self) -> Vec<DriftSummary> {
        self.lock().closed.drain(..).collect()
    }

    /// What is being served, as `model@version/variant`, from open windows.
    pub fn open_routes(&self) -> Vec<String> {
        self.lock()
            .open
            .iter()
            .map(|w| format!("{}@{}/{}", w.model, w.version, w.variant))
            .collect()
    }
}

impl Inner {
    fn remember(
        &mut self,
        id: &str,
        model: String,
        version: u64,
        variant: &'static str,
        predicted: String,
    ) {
        while self.pending_order.len() >= PENDING_LABELS {
            if let Some(old) = self.pending_order.pop_front() {
                self.pending.remove(&old);
            }
        }
        let p = Pending {
            model,
            version,
            variant,
            predicted,
        };
        match self.pending.get_mut(id) {
            // The same id again from the same variant replaces its
            // prediction; another variant's (a shadow's) is kept beside it.
            Some(list) => match list
                .iter_mut()
                .find(|q| q.model == p.model && q.variant == p.variant)
            {
                Some(q) => *q = p,
                None => list.push(p),
            },
            None => {
                self.pending.insert(id.to_string(), vec![p]);
                self.pending_order.push_back(id.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_normalise() {
        assert_eq!(label_text("1").as_deref(), Some("1"));
        assert_eq!(label_text("1.0").as_deref(), Some("1"));
        assert_eq!(label_text("\"cat\"").as_deref(), Some("cat"));
        assert_eq!(label_text("[0]").as_deref(), Some("0"));
        assert_eq!(label_text("{}"), None);
        assert_eq!(label_text("not json"), None);
    }
}
