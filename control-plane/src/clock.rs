//! The one place the control plane's library reads the wall clock.
//!
//! The store and the telemetry engine take a [`Clock`] at construction, so
//! tests drive time (cooldowns, schedules, audit timestamps) with a clock
//! they control; binaries hand in [`SystemClock`].

use std::sync::Arc;

/// Wall-clock time since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Milliseconds.
    fn now_ms(&self) -> u64;

    /// Microseconds; clocks without finer resolution scale milliseconds.
    fn now_micros(&self) -> u64 {
        self.now_ms().saturating_mul(1000)
    }

    /// Seconds.
    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// A clock shared by the store, the telemetry engine and their tasks.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }

    fn since_epoch() -> std::time::Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        Self::since_epoch().as_millis() as u64
    }

    fn now_micros(&self) -> u64 {
        Self::since_epoch().as_micros() as u64
    }
}

/// Any `Fn() -> u64` returning milliseconds is a clock (tests pass a closure
/// over an atomic).
impl<F: Fn() -> u64 + Send + Sync> Clock for F {
    fn now_ms(&self) -> u64 {
        self()
    }
}
