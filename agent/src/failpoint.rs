//! Crash points for the e2e tests: with the `failpoints` feature and
//! `FAILPOINTS=NAME=return` (e.g. `NAME=1*return` for once) the process
//! exits on the spot with code 137, as `kill -9` or a power cut would.
//! Without the feature [`crash_point`] is an empty function, so a release
//! build contains none.
//!
//! The points, in the order an activation from the control plane passes
//! them:
//! - `fleet-download-half` (`fleet::download`): half of a bundle on disk;
//! - `fleet-downloaded` (`fleet::session`): download complete, not yet
//!   installed;
//! - `serving-install-copied` (`serving::activation`): the bundle copied
//!   into `incoming/`, before verification, compilation and test vectors;
//! - `serving-install-verified`: verified, compiled, test vectors passed
//!   and the bundle moved into `models/`; `state.json` not yet saved;
//! - `serving-install-saved`: `state.json` names the new version; the
//!   routing table not yet swapped;
//! - `serving-install-swapped`: the new version serves; superseded stored
//!   versions not yet pruned;
//! - `fleet-activated` (`fleet::session`): installed, the download removed,
//!   not yet reported to the control plane.

/// Exits the process with code 137 when the failpoint `name` is configured
/// to fire (feature `failpoints` only).
pub(crate) fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("failpoint {name}: exiting");
        std::process::exit(137);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// The argument of the failpoint `name` when a test configured it
/// (`FAILPOINTS=name=return(arg)`; empty without one); always `None`
/// without the `failpoints` feature. The arguments name a model version:
/// - `serving-test-vectors-fail=return(V)`: version V's test vectors fail
///   at activation (a version that is broken on this device);
/// - `serving-infer-error=return(V)`: every request served by version V
///   fails (a version with a high error rate).
pub(crate) fn failpoint_arg(name: &str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    return fail::eval(name, |arg| arg.unwrap_or_default());
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Whether the failpoint `name` is configured with `version` as argument.
pub(crate) fn fails_for_version(name: &str, version: u64) -> bool {
    failpoint_arg(name).is_some_and(|v| v.trim() == version.to_string())
}
