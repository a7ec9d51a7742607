//! Helpers for the end-to-end tests: locating binaries, free ports, fixtures.

pub mod admin;
pub mod db;
pub mod fleet;
pub mod table;

/// A real dependency is missing: under `CI=true` (which `scripts/test.sh`
/// sets unless `FERRY_ALLOW_SKIP=1`) the test fails with `what`; otherwise
/// it is skipped, said on stderr and listed in `$FERRY_SKIP_LOG` for the
/// summary `scripts/test.sh` prints.
pub fn skip_or_fail(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{what} is required (CI=true; FERRY_ALLOW_SKIP=1 scripts/test.sh skips instead)");
    }
    eprintln!("SKIPPED: {what}");
    if let Some(path) = std::env::var_os("FERRY_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let test = std::thread::current().name().unwrap_or("?").to_string();
            let _ = writeln!(f, "{test}: {what}");
        }
    }
}

/// Sends the child's stderr (its log) through this test's own output, which
/// the test harness shows only when the test fails: expected refusals and
/// reconnects logged by passing tests stay quiet. Threads spawned from a
/// test inherit its output capture.
pub fn quiet_stderr(child: &mut std::process::Child) {
    use std::io::BufRead;
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
    }
}

/// Notes that this test binary ran against a real service, for the
/// one-line-per-binary summary `scripts/test.sh` prints
/// (`$FERRY_SERVICE_LOG`).
pub fn used_service(what: &str) {
    let Some(path) = std::env::var_os("FERRY_SERVICE_LOG") else {
        return;
    };
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    // target/debug/deps/NAME-HASH
    let binary = stem
        .rsplit_once('-')
        .map_or(stem.as_str(), |(n, _)| n)
        .to_string();
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{binary}\t{what}");
    }
}
