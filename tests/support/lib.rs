//! Helpers for the end-to-end tests: locating binaries, free ports, fixtures.

pub mod admin;
pub mod db;
pub mod fleet;
