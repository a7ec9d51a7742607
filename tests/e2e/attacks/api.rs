//! Attacks on the api surface (see docs/security.md).
