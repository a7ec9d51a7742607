//! Shared by the test crates (`ferry-agent`, `ferry`, `ferry-mqtt` and
//! `ferry-e2e`): the rules `scripts/test.sh` promises around real services.
//!
//! - A test whose service or tool is missing fails under `CI=true` (which
//!   the script sets unless `FERRY_ALLOW_SKIP=1`), and otherwise skips,
//!   listed in `$FERRY_SKIP_LOG` for the script's summary.
//! - The services a test binary ran against are listed in
//!   `$FERRY_SERVICE_LOG`: one line per binary at the end of the run.
//! - Child processes' logs go through the test's own output, which the
//!   harness shows only when the test fails.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Child;

fn append(var: &str, line: &str) {
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&path))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A real dependency is missing: under `CI=true` the test fails naming
/// `what`; otherwise it is skipped (the caller returns), said on stderr and
/// listed for the summary.
pub fn skip_or_fail(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{what} is required (CI=true; FERRY_ALLOW_SKIP=1 scripts/test.sh skips instead)");
    }
    eprintln!("SKIPPED: {what}");
    let test = std::thread::current().name().unwrap_or("?").to_string();
    append("FERRY_SKIP_LOG", &format!("{test}: {what}"));
}

/// Notes that this test binary ran against the real service `what`.
pub fn used_service(what: &str) {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    // target/debug/deps/NAME-HASH
    let binary = stem.rsplit_once('-').map_or(stem.as_str(), |(n, _)| n);
    append("FERRY_SERVICE_LOG", &format!("{binary}\t{what}"));
}

/// Sends the child's stderr (its log) through this test's own output, which
/// the harness shows only when the test fails: expected refusals and
/// reconnects logged by passing tests stay quiet. Threads spawned from a
/// test inherit its output capture.
pub fn quiet_stderr(child: &mut Child) {
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
    }
}
