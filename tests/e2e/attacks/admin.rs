//! Attacks on the admin surface (see docs/security.md).
