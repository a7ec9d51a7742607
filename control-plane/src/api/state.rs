//! What every handler shares: the store, the artifact store, limits, and
//! the per-token rate limiter.

use crate::blobs::Blobs;
use crate::store::Store;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Server-wide settings the handlers need.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted bundle upload, bytes.
    pub max_upload: u64,
    /// Requests per minute per token; 0 disables rate limiting.
    pub rate_per_minute: u32,
    /// The tenant of the bootstrap admin; its admins may create tokens in
    /// other tenants (which creates those tenants).
    pub root_tenant: String,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub blobs: Blobs,
    pub tmp: PathBuf,
    pub limits: Limits,
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl AppState {
    pub fn new(store: Store, blobs: Blobs, tmp: PathBuf, limits: Limits) -> Self {
        Self {
            store,
            blobs,
            tmp,
            limits,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Token bucket per token: `rate_per_minute` capacity, refilled
    /// continuously.
    pub(crate) fn allow(&self, token_id: &str) -> bool {
        let rate = self.limits.rate_per_minute;
        if rate == 0 {
            return true;
        }
        let cap = f64::from(rate);
        let Ok(mut b) = self.buckets.lock() else {
            return true;
        };
        let now = Instant::now();
        let entry = b.entry(token_id.to_string()).or_insert((cap, now));
        let refill = now.duration_since(entry.1).as_secs_f64() * cap / 60.0;
        entry.0 = (entry.0 + refill).min(cap);
        entry.1 = now;
        if entry.0 >= 1.0 {
            entry.0 -= 1.0;
            true
        } else {
            false
        }
    }
}
