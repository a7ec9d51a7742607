//! Attacks on the trust surface (see docs/security.md).
