//! Rollouts: a version reaches a fleet in waves, each judged by gates on
//! how devices took it (install) and on what the model sees (errors,
//! latency, drift, prediction shift, accuracy from feedback).
//!
//! - `policy`: the policy document (TOML or JSON), defaults and validation.
//! - `observations`: devices, activation outcomes, telemetry aggregates.
//! - `waves`: wave sizes and deterministic canary choice, spread by label.
//! - `stats`: proportion tests, Wilson intervals and distribution distances.
//! - `challenger`: a challenger or shadow against the champion, and
//!   whether it is ready to be promoted (served by the API).
//! - `gates`: one verdict per gate.
//! - `engine`: the sans-IO state machine (`poll(now)` → actions) whose
//!   state the server persists.
//!
//! Pure: the server drives it through `crate::rollout_driver`
//! (docs/rollouts.md).

pub mod challenger;
pub mod engine;
pub mod gates;
pub mod observations;
pub mod policy;
pub mod stats;
pub mod waves;

#[cfg(test)]
mod fake_fleet;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod scenarios;
