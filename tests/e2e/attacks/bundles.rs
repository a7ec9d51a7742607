//! Attacks on the bundles surface (see docs/security.md).
