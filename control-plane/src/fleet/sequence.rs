//! Desired-state sequence numbers: a persisted monotonic counter, never the
//! wall clock (a clock stepped back would otherwise issue numbers devices
//! refuse as replays until it caught up again).
//!
//! The high-water mark in `DATA/fleet/sequence` is reserved a block at a
//! time (temp file, fsync, rename), so a restart continues above anything
//! issued before it without a write per document. Each connection also
//! issues above the floor its device reported in `Hello`, so devices that
//! saw numbers from another replica or an older server (which used the
//! microsecond clock) keep accepting.

use super::FleetError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Numbers reserved per write of the high-water mark.
const BLOCK: u64 = 1024;

pub(crate) struct Sequencer {
    path: PathBuf,
    /// (next to issue, first not reserved).
    state: Mutex<(u64, u64)>,
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> FleetError {
    let what = format!("{what} {}", path.display());
    move |source| FleetError::Io { what, source }
}

fn persist(path: &Path, value: u64) -> Result<(), FleetError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(value.to_string().as_bytes())
        .map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("renaming", path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl Sequencer {
    /// Opens the counter at `path` (absent: starts at 1).
    pub(crate) fn open(path: &Path) -> Result<Self, FleetError> {
        let hwm = match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| FleetError::Io {
                what: format!("reading {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        let next = hwm.max(1);
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new((next, next)),
        })
    }

    /// The next number: above every number this or an earlier process on
    /// this data directory issued.
    pub(crate) fn next(&self) -> Result<u64, FleetError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| FleetError::Sequence("counter lock poisoned".into()))?;
        if st.0 >= st.1 {
            let limit = st.0.saturating_add(BLOCK);
            persist(&self.path, limit)?;
            st.1 = limit;
        }
        let n = st.0;
        st.0 += 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_increase_across_reopen_without_a_clock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sequence");
        let s = Sequencer::open(&p).unwrap();
        let a: Vec<u64> = (0..3).map(|_| s.next().unwrap()).collect();
        assert_eq!(a, [1, 2, 3]);
        drop(s);
        // A restart continues above the reserved block.
        let s = Sequencer::open(&p).unwrap();
        let b = s.next().unwrap();
        assert!(b > 3, "{b}");
        let c = s.next().unwrap();
        assert_eq!(c, b + 1);
    }
}
