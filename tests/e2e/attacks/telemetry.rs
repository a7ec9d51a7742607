//! Attacks on the telemetry surface (see docs/security.md).
