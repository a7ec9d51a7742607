//! `ferry-agent`: the edge daemon. It verifies signed bundles, serves their
//! models over the Open Inference Protocol, records every inference in a
//! bounded sled log, and scores files offline with the same runtime.
//!
//! Module map:
//! - [`engine`]: tract-onnx plans, run on validated inputs;
//! - [`oip`]: Open Inference Protocol v2 codec and request validation;
//! - [`serving`]: activation, hot swap, rollback, A/B and shadow routing;
//!   requests are routed and run there, decoded and encoded by [`server`];
//! - [`clock`]: the time source passed in (only the CLI reads the system clock);
//! - [`inference_log`]: the bounded, crash-safe record log;
//! - [`metrics`]: Prometheus text metrics;
//! - [`server`]: the axum HTTP API on TCP and a Unix socket;
//! - [`score`]: offline batch scoring;
//! - [`rowops`]: row-wise softmax and reductions over a short last axis, replacing tract's per-row kernels;
//! - [`trees`]: fast tree-ensemble evaluation (ONNX-ML TreeEnsemble* ops) inside tract;
//! - [`telemetry`]: drift windows, the sled outbox and the MQTT publisher;
//! - [`fleet`]: enrollment and the QUIC session with the control plane (desired state, resumable downloads, activation reports);
//! - `failpoint`: crash points for the e2e tests (feature `failpoints`);
//! - [`config`] and [`cli`]: `agent.toml`, flags, environment.

pub mod admin_client;
pub mod axis_reduce;
pub mod axis_softmax;
pub mod batching;
pub mod bench;
pub mod channel_affine;
pub mod channel_broadcast;
mod channel_product;
pub mod channels_last;
pub mod cli;
pub mod clock;
pub mod concrete;
pub mod config;
pub mod const_fold;
pub mod const_operand;
pub mod conv_per_image;
pub mod dense;
pub mod depthwise;
pub mod direct_conv;
pub mod engine;
pub mod engine_choice;
pub mod executor;
mod failpoint;
pub mod fleet;
pub mod front_end;
pub mod hard_swish;
pub mod inference_log;
mod kernel_swaps;
pub mod metrics;
pub mod oip;
pub mod one_hot;
pub mod onnx_ml;
pub mod plan_cache;
pub mod pointwise;
pub mod pointwise_batch;
pub mod row_product;
pub mod rowops;
pub mod score;
pub mod server;
pub mod serving;
pub mod sled_open;
pub mod specialise;
pub mod systemd;
pub mod telemetry;
pub mod tensors;
#[cfg(test)]
mod test_fixtures;
pub mod trees;
