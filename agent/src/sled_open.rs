//! Opening a sled database that this process may just have closed.
//!
//! sled takes an exclusive file lock on open and releases it when the last
//! of its background I/O threads lets go of the file, which can be a few
//! milliseconds after the last `Db` handle is dropped (sled's own test
//! build blocks on the lock for this reason). An agent that reopens its
//! stores in-process (a restart of the serving loop, a test) would
//! otherwise fail at random with `could not acquire lock`. A lock still
//! held after [`LOCK_WAIT`] is another process's, and is reported as is.

use std::time::{Duration, Instant};

/// How long an open waits for a lock this process is releasing.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

fn is_lock_contention(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// `config.open()`, retried while the database's lock is held, up to
/// [`LOCK_WAIT`].
pub fn open(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(e) if is_lock_contention(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_lock_held_by_an_open_database_is_reported_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let config = sled::Config::new().path(dir.path());
        let held = open(&config).unwrap();
        let started = Instant::now();
        let second = sled::Config::new().path(dir.path());
        let err = open(&second).err().unwrap();
        assert!(is_lock_contention(&err), "{err}");
        assert!(started.elapsed() >= LOCK_WAIT);
        drop(held);
        // Released: the next open succeeds.
        open(&second).unwrap();
    }
}
