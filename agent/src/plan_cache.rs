//! Plans compiled for one concrete set of input shapes, for graphs tract
//! cannot type with symbolic dimensions (shapes computed at run time through
//! `Shape → Gather → Concat → Reshape`). The first request of each shape
//! compiles its plan; the cache keeps the most recently used ones within a
//! count and a byte bound, and counts what it did for `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::TypedRunnableModel;

pub type Plan = Arc<TypedRunnableModel>;

/// The concrete shapes of every input fed to the graph, in order, each
/// preceded by its rank.
pub type ShapeKey = Vec<usize>;

/// How many plans, and how many bytes of them, a model keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBounds {
    pub plans: usize,
    pub bytes: u64,
}

impl Default for CacheBounds {
    fn default() -> Self {
        // Each plan holds its own packed copy of the weights: the byte bound
        // is what caps memory on a device; the count caps compile churn.
        Self {
            plans: 16,
            bytes: 512 << 20,
        }
    }
}

/// Compile and cache counters of one engine, read by `/metrics`.
#[derive(Debug, Default)]
pub struct PlanStats {
    /// Plans compiled (at load and per shape).
    pub compiles: AtomicU64,
    /// Time spent compiling them, in microseconds.
    pub compile_micros: AtomicU64,
    /// Compilations that failed (a shape the graph cannot take).
    pub compile_failures: AtomicU64,
    /// Requests that found their shape's plan in the cache.
    pub hits: AtomicU64,
    /// Plans dropped to stay within the bounds.
    pub evictions: AtomicU64,
    /// Plans and charged bytes in the cache now.
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
}

impl PlanStats {
    pub fn compiled(&self, micros: u64) {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        self.compile_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

struct Entry {
    plan: Plan,
    bytes: u64,
    used: u64,
}

#[derive(Default)]
struct Inner {
    tick: u64,
    bytes: u64,
    plans: HashMap<ShapeKey, Entry>,
}

/// Least-recently-used plans by shape.
pub struct PlanCache {
    bounds: CacheBounds,
    inner: Mutex<Inner>,
    stats: Arc<PlanStats>,
}

impl PlanCache {
    pub fn new(bounds: CacheBounds, stats: Arc<PlanStats>) -> Self {
        Self {
            bounds: CacheBounds {
                plans: bounds.plans.max(1),
                bytes: bounds.bytes,
            },
            inner: Mutex::default(),
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &[usize]) -> Option<Plan> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.plans.get_mut(key)?;
        e.used = tick;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(e.plan.clone())
    }

    /// Keeps `plan` (charged `bytes`), dropping the least recently used
    /// others until both bounds hold. The newest plan always stays, even
    /// alone over the byte bound: the request that made it runs on it.
    pub fn insert(&self, key: ShapeKey, plan: Plan, bytes: u64) {
        let mut inner = self.lock();
        inner.tick += 1;
        let used = inner.tick;
        if let Some(old) = inner.plans.insert(key.clone(), Entry { plan, bytes, used }) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        while inner.plans.len() > self.bounds.plans
            || (inner.bytes > self.bounds.bytes && inner.plans.len() > 1)
        {
            let Some(oldest) = inner
                .plans
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = inner.plans.remove(&oldest) {
                inner.bytes -= e.bytes;
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats
            .entries
            .store(inner.plans.len() as u64, Ordering::Relaxed);
        self.stats.bytes.store(inner.bytes, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.lock().plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    fn plan() -> Plan {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1])).unwrap();
        m.select_output_outlets(&[x]).unwrap();
        m.into_runnable().unwrap()
    }

    #[test]
    fn keeps_the_most_recently_used_within_both_bounds() {
        let stats = Arc::new(PlanStats::default());
        let cache = PlanCache::new(
            CacheBounds {
                plans: 3,
                bytes: 1000,
            },
            stats.clone(),
        );
        let p = plan();
        // 100 distinct shapes, the first one kept hot.
        for n in 0..100 {
            cache.insert(vec![1, n], p.clone(), 100);
            assert!(
                cache.get(&[1, 0]).is_some(),
                "the hot shape was evicted at {n}"
            );
            assert!(cache.len() <= 3);
        }
        assert!(cache.get(&[1, 99]).is_some());
        assert!(cache.get(&[1, 50]).is_none());
        assert_eq!(PlanStats::get(&stats.entries), 3);
        assert_eq!(PlanStats::get(&stats.evictions), 97);
        // The byte bound: two plans of 400 fit in 1000, a third does not.
        let cache = PlanCache::new(
            CacheBounds {
                plans: 10,
                bytes: 1000,
            },
            Arc::new(PlanStats::default()),
        );
        for n in 0..5 {
            cache.insert(vec![n], p.clone(), 400);
        }
        assert_eq!(cache.len(), 2);
        // One plan over the byte bound alone still stays: its request runs.
        cache.insert(vec![9], p, 5000);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&[9]).is_some());
    }
}
