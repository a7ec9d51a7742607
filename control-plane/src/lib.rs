//! `ferry`: the control plane and the operator's command line.
//!
//! The operator side (`key`, `trust`, `bundle`) runs on the operator's
//! machine and is the only place publisher private keys are used.

pub mod action;
pub mod api;
pub mod audit;
pub mod auth;
pub mod baseline_csv;
pub mod blobs;
pub mod build_check;
pub mod bundle_build;
pub mod changes;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod fleet;
pub mod input_shapes;
pub mod keyfile;
pub mod onnx_schema;
pub mod registry;
pub mod rollout;
pub mod rollout_driver;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod test_vectors;

/// Seconds since the Unix epoch, read once at the edge of the program and
/// passed into the pure core.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
