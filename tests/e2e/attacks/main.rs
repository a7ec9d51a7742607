//! Attacks from the trust model and the security review (docs/security.md),
//! each performed against real processes and shown refused, with the reason
//! visible in the audit trail or the device report. One module per surface.

mod admin;
mod api;
mod bundles;
mod real_network;
mod telemetry;
mod trust;
