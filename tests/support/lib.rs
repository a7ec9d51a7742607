//! Helpers for the end-to-end tests: locating binaries, free ports, fixtures.

pub mod admin;
pub mod db;
pub mod fleet;
pub mod table;

pub use ferry_test_harness::{quiet_stderr, skip_or_fail, used_service};
