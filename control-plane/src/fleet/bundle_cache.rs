//! A cache bounded by bytes, never by count, that holds no lock across
//! I/O: the blocks of bundle artifacts the fetch streams serve, and the
//! bundles' layouts.
//!
//! A lookup takes the map's lock only to find (or make) the entry's
//! `OnceCell`; the read that fills it runs without the lock, and every
//! other fetch of the same block waits on that cell (one read for a
//! thousand devices), while fetches of other blocks go on. Once filled, an
//! entry is charged its size and the least recently used filled entries go
//! until the total is within the budget.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::OnceCell;

/// What a cached value costs, in bytes.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for bytes::Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl<T: Weigh> Weigh for Arc<T> {
    fn weight(&self) -> usize {
        T::weight(self)
    }
}

struct Entry<V> {
    cell: Arc<OnceCell<V>>,
    /// Bytes charged (0 until filled).
    charged: usize,
    last_used: u64,
}

struct Inner<K, V> {
    map: HashMap<K, Entry<V>>,
    used: usize,
    tick: u64,
}

/// Bytes held now and the budget.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheUse {
    pub used: usize,
    pub capacity: usize,
    pub entries: usize,
}

pub(crate) struct ByteCache<K, V> {
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone + Weigh> ByteCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                used: 0,
                tick: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // The map is consistent after every statement; a panic elsewhere
        // while it was held leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    pub fn usage(&self) -> CacheUse {
        let g = self.lock();
        CacheUse {
            used: g.used,
            capacity: self.capacity,
            entries: g.map.values().filter(|e| e.charged > 0).count(),
        }
    }

    /// The value for `key`, loaded by `load` when missing. Concurrent
    /// callers for one key share one load; no lock is held while it runs.
    pub async fn get_or_load<E, F, Fut>(&self, key: &K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut g = self.lock();
            g.tick += 1;
            let tick = g.tick;
            let e = g.map.entry(key.clone()).or_insert_with(|| Entry {
                cell: Arc::new(OnceCell::new()),
                charged: 0,
                last_used: tick,
            });
            e.last_used = tick;
            e.cell.clone()
        };
        if let Some(v) = cell.get() {
            return Ok(v.clone());
        }
        match cell.get_or_try_init(load).await {
            Ok(v) => {
                let v = v.clone();
                self.charge(key, &cell, v.weight());
                Ok(v)
            }
            Err(e) => {
                self.forget_empty(key, &cell);
                Err(e)
            }
        }
    }

    /// Charges a freshly filled entry and evicts down to the budget.
    fn charge(&self, key: &K, cell: &Arc<OnceCell<V>>, weight: usize) {
        let mut g = self.lock();
        let inner = &mut *g;
        let fresh = inner
            .map
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.cell, cell) && e.charged == 0);
        if !fresh {
            return;
        }
        if weight > self.capacity {
            // Bigger than the whole budget: served, never kept.
            inner.map.remove(key);
            return;
        }
        let charged = weight.max(1);
        if let Some(e) = inner.map.get_mut(key) {
            e.charged = charged;
        }
        inner.used += charged;
        while inner.used > self.capacity {
            let victim = inner
                .map
                .iter()
                .filter(|(_, e)| e.charged > 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(k) = victim else { break };
            if let Some(e) = inner.map.remove(&k) {
                inner.used -= e.charged;
            }
        }
        // Entries whose loads were all abandoned (their streams went away)
        // hold nothing: drop them with the evictions.
        inner
            .map
            .retain(|_, e| e.charged > 0 || Arc::strong_count(&e.cell) > 1);
    }

    fn forget_empty(&self, key: &K, cell: &Arc<OnceCell<V>>) {
        let mut g = self.lock();
        if g.map
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.cell, cell) && e.charged == 0 && !cell.initialized())
        {
            g.map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn block(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[tokio::test]
    async fn the_budget_is_in_bytes_and_the_least_recently_used_go_first() {
        let c: ByteCache<u32, Bytes> = ByteCache::new(1000);
        for k in 0..3 {
            let v = c
                .get_or_load(&k, || async { Ok::<_, ()>(block(400)) })
                .await
                .unwrap();
            assert_eq!(v.len(), 400);
        }
        // 1,200 bytes asked for, 1,000 allowed: the oldest went.
        assert_eq!(
            c.usage(),
            CacheUse {
                used: 800,
                capacity: 1000,
                entries: 2
            }
        );
        // Key 1 used again, so key 2 is the oldest when 3 arrives.
        let loads = std::sync::atomic::AtomicUsize::new(0);
        c.get_or_load(&1, || async {
            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(block(400))
        })
        .await
        .unwrap();
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 0);
        c.get_or_load(&3, || async { Ok::<_, ()>(block(400)) })
            .await
            .unwrap();
        c.get_or_load(&1, || async {
            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(block(400))
        })
        .await
        .unwrap();
        assert_eq!(
            loads.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "1 was evicted"
        );
        // Many small values never exceed the budget either.
        for k in 10..1000 {
            c.get_or_load(&k, || async { Ok::<_, ()>(block(3)) })
                .await
                .unwrap();
            assert!(c.usage().used <= 1000);
        }
    }

    #[tokio::test]
    async fn a_value_larger_than_the_budget_is_served_but_not_kept() {
        let c: ByteCache<u32, Bytes> = ByteCache::new(100);
        let v = c
            .get_or_load(&1, || async { Ok::<_, ()>(block(500)) })
            .await
            .unwrap();
        assert_eq!(v.len(), 500);
        assert_eq!(c.usage().used, 0);
        assert_eq!(c.usage().entries, 0);
    }

    #[tokio::test]
    async fn a_pending_load_blocks_neither_other_keys_nor_the_cache() {
        let c = Arc::new(ByteCache::<u32, Bytes>::new(1 << 20));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_or_load(&1, || async move {
                    // Held open until the test says: a read that takes ages.
                    let _ = rx.await;
                    Ok::<_, ()>(block(10))
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        // Another key loads and hits while key 1's read is outstanding.
        c.get_or_load(&2, || async { Ok::<_, ()>(block(20)) })
            .await
            .unwrap();
        let hit = c
            .get_or_load(&2, || async { Err::<Bytes, _>("must not load again") })
            .await
            .unwrap();
        assert_eq!(hit.len(), 20);
        // A second reader of key 1 waits for the same load, not a new one.
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_or_load(&1, || async { Err::<Bytes, _>("a second load") })
                    .await
            })
        };
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        assert_eq!(slow.await.unwrap().unwrap().len(), 10);
        assert_eq!(waiter.await.unwrap().unwrap().len(), 10);
    }

    #[tokio::test]
    async fn a_failed_load_is_not_cached() {
        let c: ByteCache<u32, Bytes> = ByteCache::new(1000);
        assert!(c
            .get_or_load(&1, || async { Err::<Bytes, _>("disk") })
            .await
            .is_err());
        let v = c
            .get_or_load(&1, || async { Ok::<_, &str>(block(5)) })
            .await
            .unwrap();
        assert_eq!(v.len(), 5);
    }
}
