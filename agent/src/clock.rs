//! Time as a value passed in. Only binaries (the CLI) build a
//! [`SystemClock`]; libraries take a `&dyn Clock` or an `Arc<dyn Clock>`,
//! and tests pass a [`FixedClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;

    /// Seconds since the Unix epoch (what signatures and expiries compare).
    fn now_unix(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The system's clock. A clock before 1970 reads as 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that reads what it was last set to (tests, simulations).
#[derive(Debug, Default)]
pub struct FixedClock(AtomicU64);

impl FixedClock {
    pub fn at_ms(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }

    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::Relaxed);
    }

    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_reads_what_it_was_set_to() {
        let c = FixedClock::at_ms(1_700_000_000_999);
        assert_eq!(c.now_unix(), 1_700_000_000);
        c.advance_ms(1);
        assert_eq!(c.now_ms(), 1_700_000_001_000);
        c.set_ms(5);
        assert_eq!(c.now_unix(), 0);
    }
}
