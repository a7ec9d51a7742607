//! Plans specialised to a request's concrete input shapes, for convolutional
//! graphs that type with symbolic dimensions (a dynamic batch, height or
//! width). tract picks its fast convolution kernels (lazy im2col, direct
//! and register-blocked convolutions) only for an input shape known when
//! the plan is compiled; with a symbol in it every convolution becomes a
//! generic im2col and matrix product. Depth-wise convolutions are Ferry's
//! own (`depthwise`), which take any shape: a graph with no other
//! convolution gets no specialiser (`direct_conv`'s count as others). A shape seen a
//! second time gets a plan of its own, kept in a [`PlanCache`] within the
//! model's bounds: a stream of one image size (a camera) runs on its own
//! plan from its second request, while shapes that never repeat (text lines
//! of every width) run on the symbolic plan and compile nothing.

use crate::direct_conv::DirectConv;
use crate::plan_cache::{CacheBounds, Plan, PlanCache, PlanStats, ShapeKey};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::Conv;

/// Shapes seen once and not yet compiled, at most this many (then forgotten).
const SEEN_ONCE: usize = 256;

pub struct Specialiser {
    /// The graph typed, decluttered and fused, with its symbols.
    typed: TypedModel,
    /// For each fed input, the symbol each dimension is, if it is one.
    dims: Vec<Vec<Option<Symbol>>>,
    cache: PlanCache,
    stats: Arc<PlanStats>,
    /// What one plan is charged against the byte bound (the model's size).
    plan_bytes: u64,
    seen_once: Mutex<HashSet<ShapeKey>>,
    /// Set when a specialisation failed: the symbolic plans serve from then
    /// on, and nothing more is compiled per request.
    off: AtomicBool,
}

/// The cache key of a set of input shapes: each preceded by its rank.
pub fn shape_key(shapes: &[&[usize]]) -> ShapeKey {
    let mut key = Vec::with_capacity(shapes.len() * 5);
    for s in shapes {
        key.push(s.len());
        key.extend_from_slice(s);
    }
    key
}

impl Specialiser {
    /// A specialiser for `typed`, when it has a convolution and a symbolic
    /// input dimension (otherwise its plans are as good as they get).
    pub fn new(
        typed: &TypedModel,
        bounds: CacheBounds,
        stats: Arc<PlanStats>,
        plan_bytes: u64,
    ) -> Option<Self> {
        // tract's convolutions, and `direct_conv`'s, which took some of
        // them: a graph whose every convolution is Ferry's still gains
        // concrete plans (its 1×1 layers on `pointwise`, a small batch's
        // convolutions one image at a time).
        let convolutions = typed
            .nodes
            .iter()
            .any(|n| n.op_is::<Conv>() || n.op_is::<DirectConv>());
        if !convolutions {
            return None;
        }
        let dims = typed
            .inputs
            .iter()
            .map(|o| {
                typed.outlet_fact(*o).map(|f| {
                    f.shape
                        .iter()
                        .map(|d| match d {
                            TDim::Sym(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect::<TractResult<Vec<_>>>()
            .ok()?;
        if dims.iter().flatten().all(Option::is_none) {
            return None;
        }
        Some(Self {
            typed: typed.clone(),
            dims,
            cache: PlanCache::new(bounds, stats.clone()),
            stats,
            plan_bytes,
            seen_once: Mutex::default(),
            off: AtomicBool::new(false),
        })
    }

    /// The plan for these input shapes: cached, or compiled now if the
    /// shape was seen before. `None`: run the symbolic plan.
    pub fn plan(&self, shapes: &[&[usize]]) -> Option<Plan> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        let key = shape_key(shapes);
        if let Some(p) = self.cache.get(&key) {
            return Some(p);
        }
        {
            let mut seen = self.seen_once.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.remove(&key) {
                if seen.len() >= SEEN_ONCE {
                    seen.clear();
                }
                seen.insert(key);
                return None;
            }
        }
        let started = Instant::now();
        let compiled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.compile(shapes)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the runtime panicked")));
        match compiled {
            Ok(plan) => {
                self.stats.compiled(started.elapsed().as_micros() as u64);
                self.cache.insert(key, plan.clone(), self.plan_bytes);
                Some(plan)
            }
            Err(e) => {
                self.stats.compile_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(shapes = ?shapes, error = %format!("{e:#}").replace('\n', " "),
                    "no plan specialised to these shapes; the symbolic plan serves this model from now on");
                self.off.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    fn compile(&self, shapes: &[&[usize]]) -> TractResult<Plan> {
        let mut subs = HashMap::new();
        for (dims, shape) in self.dims.iter().zip(shapes) {
            for (d, n) in dims.iter().zip(shape.iter()) {
                if let Some(sym) = d {
                    subs.insert(sym.clone(), TDim::Val(*n as i64));
                }
            }
        }
        crate::concrete::rewrite(self.typed.set_symbols(&subs)?)?
            .into_optimized()?
            .into_runnable()
    }
}
