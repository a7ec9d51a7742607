//! What every handler shares: the store, the artifact store, limits, the
//! per-token rate limiter and the per-source count of failed logins.

use super::failed_logins::FailedLogins;
use crate::blobs::Blobs;
use crate::store::Store;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

/// Above this many tracked tokens, the limiter forgets those whose quota
/// has refilled (revoked or idle tokens must not accumulate).
const TRACKED_TOKENS: usize = 10_000;

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
    /// The server runs TLS: the dashboard's session cookie is `Secure`.
    pub secure_cookies: bool,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub blobs: Blobs,
    pub tmp: PathBuf,
    pub limits: Limits,
    /// `None` when rate limiting is off.
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    /// Failed logins per source: limited and audited in aggregate.
    pub failed_logins: Arc<FailedLogins>,
}

impl AppState {
    pub fn new(store: Store, blobs: Blobs, tmp: PathBuf, limits: Limits) -> Self {
        let limiter = NonZeroU32::new(limits.rate_per_minute)
            .map(|rate| Arc::new(RateLimiter::keyed(Quota::per_minute(rate))));
        Self {
            store,
            blobs,
            tmp,
            limits,
            limiter,
            failed_logins: Arc::new(FailedLogins::default()),
        }
    }

    /// Whether `token_id` may make another request now: `rate_per_minute`
    /// per token, with a burst of as many (GCRA).
    pub(crate) fn allow(&self, token_id: &str) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        if limiter.len() > TRACKED_TOKENS {
            limiter.retain_recent();
        }
        limiter.check_key(&token_id.to_string()).is_ok()
    }
}
