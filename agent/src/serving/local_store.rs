//! The on-device store under the data directory: verified bundles as
//! `models/NAME/VERSION.ferry`, uploads in flight under `incoming/`, and the
//! activation state in `state.json` (written atomically).

use super::error::{io_err, ActivateError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Per-model activation state, persisted in `state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    pub champion: Option<u64>,
    pub challenger: Option<(u64, f64)>,
    pub shadow: Option<u64>,
    /// Earlier champions, most recent last (rollback targets).
    pub history: Vec<u64>,
    /// Highest version ever installed: older bundles are refused.
    pub highest_seen: u64,
}

impl ModelState {
    /// Whether `version` serves in any role.
    pub fn in_use(&self, version: u64) -> bool {
        self.champion == Some(version)
            || self.challenger.map(|c| c.0) == Some(version)
            || self.shadow == Some(version)
    }
}

/// Every model's activation state: the content of `state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivationState {
    pub models: BTreeMap<String, ModelState>,
}

/// The data directory's layout.
pub(super) struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// Creates the store's directories under `dir` if they are missing.
    pub(super) fn open(dir: PathBuf) -> Result<Self, ActivateError> {
        for sub in ["models", "incoming"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        Ok(Self { dir })
    }

    pub(super) fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The saved state; empty on a fresh device.
    pub(super) fn load_state(&self) -> Result<ActivationState, ActivateError> {
        let path = self.state_path();
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ActivateError::State {
                path: path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ActivationState::default()),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    pub(super) fn save_state(&self, state: &ActivationState) -> Result<(), ActivateError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| ActivateError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes).map_err(io_err("writing", &path))
    }

    /// Where `model` v`version` is kept once verified.
    pub(super) fn version_path(&self, model: &str, version: u64) -> PathBuf {
        self.dir
            .join("models")
            .join(model)
            .join(format!("{version:020}.ferry"))
    }

    /// A path named `name` in the incoming directory (uploads, copies
    /// being verified).
    pub(super) fn incoming(&self, name: String) -> PathBuf {
        self.dir.join("incoming").join(name)
    }

    /// Deletes what is left in `incoming/`: copies and uploads of a process
    /// that died mid-install. Only for `Agent::open`, before anything of
    /// this process writes there.
    pub(super) fn clear_incoming(&self) {
        let dir = self.dir.join("incoming");
        let Ok(rd) = fs::read_dir(&dir) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            if let Err(err) = fs::remove_file(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "stale incoming file not removed");
            }
        }
    }

    /// Moves a verified copy into place as `model` v`version`.
    pub(super) fn keep(
        &self,
        verified: &Path,
        model: &str,
        version: u64,
    ) -> Result<(), ActivateError> {
        let dest = self.version_path(model, version);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        fs::rename(verified, &dest).map_err(io_err("storing bundle", &dest))
    }

    /// The stored versions of `model`, oldest first; `None` when its
    /// directory cannot be read.
    pub(super) fn versions(&self, model: &str) -> Option<Vec<u64>> {
        let rd = fs::read_dir(self.dir.join("models").join(model)).ok()?;
        let mut versions: Vec<u64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".ferry"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        versions.sort_unstable();
        Some(versions)
    }

    /// Deletes a stored version; one already gone is not an error.
    pub(super) fn remove(&self, model: &str, version: u64) {
        let _ = fs::remove_file(self.version_path(model, version));
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_versions_list_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(store.load_state().unwrap(), ActivationState::default());
        assert_eq!(store.versions("m"), None);

        let mut state = ActivationState::default();
        state.models.insert(
            "m".into(),
            ModelState {
                champion: Some(10),
                challenger: Some((9, 0.25)),
                history: vec![2],
                highest_seen: 10,
                ..Default::default()
            },
        );
        store.save_state(&state).unwrap();
        assert_eq!(store.load_state().unwrap(), state);
        assert!(state.models["m"].in_use(9) && !state.models["m"].in_use(2));

        for v in [10, 2, 9] {
            let tmp = store.incoming(format!("t{v}"));
            fs::write(&tmp, b"bundle").unwrap();
            store.keep(&tmp, "m", v).unwrap();
        }
        // Zero-padded names: 10 sorts after 9 on disk as in memory.
        assert_eq!(store.versions("m"), Some(vec![2, 9, 10]));
        store.remove("m", 9);
        store.remove("m", 9);
        assert_eq!(store.versions("m"), Some(vec![2, 10]));

        // A copy left by a crash mid-install is gone after the next open.
        fs::write(store.incoming("12-0.ferry".into()), b"half").unwrap();
        store.clear_incoming();
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
    }
}
