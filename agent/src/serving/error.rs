//! The serving core's errors: activation refusals and request failures.
//! Neither carries the HTTP codec's errors; the server maps both to
//! statuses.

use crate::engine::{LoadError, RunError};
use crate::inference_log::LogError;
use ferry_protocol::VerifyError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("bundle refused: {0}")]
    Verify(#[from] VerifyError),
    #[error("model {model} v{version} refused at activation: {source}")]
    Load {
        model: String,
        version: u64,
        source: LoadError,
    },
    #[error("model {model} v{version} fails its test vector {index}: {reason}")]
    TestVector {
        model: String,
        version: u64,
        index: usize,
        reason: String,
    },
    #[error("the bundle has no model artifact")]
    NoModel,
    /// The bundle requires a runtime this agent does not offer.
    #[error("model {model} v{version} refused: {reason}")]
    Runtime {
        model: String,
        version: u64,
        reason: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no model named {0:?} is active")]
    UnknownModel(String),
    #[error("model {model}: no earlier version to roll back to")]
    NoPrevious { model: String },
    #[error("model {model} v{version} is not in the local store")]
    NotStored { model: String, version: u64 },
    /// A desired state asked for a version below the one serving that
    /// this device cannot go back to (docs/security.md, rollback rule).
    #[error("model {model} v{version}: {reason}; refusing to downgrade from v{serving}")]
    NotRestorable {
        model: String,
        version: u64,
        serving: u64,
        reason: &'static str,
    },
    #[error("a challenger needs a split between 0 and 1, got {0}")]
    BadSplit(f64),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

impl ActivateError {
    pub fn code(&self) -> &'static str {
        match self {
            ActivateError::Verify(e) => e.code(),
            ActivateError::Load { .. } => "model_load_failed",
            ActivateError::TestVector { .. } => "test_vector_mismatch",
            ActivateError::NoModel => "no_model_artifact",
            ActivateError::Runtime { .. } => "unsupported_runtime",
            ActivateError::Io { .. } => "io",
            ActivateError::UnknownModel(_) => "unknown_model",
            ActivateError::NoPrevious { .. } => "no_previous_version",
            ActivateError::NotStored { .. } => "not_stored",
            ActivateError::NotRestorable { .. } => "rollback_refused",
            ActivateError::BadSplit(_) => "bad_split",
            ActivateError::State { .. } => "state",
        }
    }
}

/// `map_err` adapter naming what was being done to which path.
pub(super) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ActivateError + 'a {
    move |source| ActivateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A request the serving core could not answer, with the HTTP status it
/// maps to.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model {model:?} has no loaded version {version}")]
    UnknownVersion { model: String, version: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl InferError {
    pub fn code(&self) -> &'static str {
        match self {
            InferError::UnknownModel(_) => "unknown_model",
            InferError::UnknownVersion { .. } => "unknown_version",
            InferError::Run(RunError::Input { .. }) => "bad_input",
            InferError::Run(RunError::Shapes(_)) => "bad_shape",
            InferError::Run(_) => "model_failed",
            InferError::Log(_) => "log_failed",
        }
    }

    /// 404 for what is not there, 400 for a bad request, 500 for our side.
    pub fn status(&self) -> u16 {
        match self {
            InferError::UnknownModel(_) | InferError::UnknownVersion { .. } => 404,
            InferError::Run(RunError::Input { .. } | RunError::Shapes(_)) => 400,
            InferError::Run(_) | InferError::Log(_) => 500,
        }
    }
}
