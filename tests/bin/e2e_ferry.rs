//! The `ferry` binary, rebuilt inside this crate so its integration tests can
//! start it as a real process (`CARGO_BIN_EXE_e2e-ferry`): Cargo only gives
//! tests the binaries of their own package. Built with failpoints, which
//! the tests configure through `FAILPOINTS`.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let _failpoints = fail::FailScenario::setup();
    let cli = ferry::cli::Cli::parse();
    ferry::cli::init_tracing();
    match ferry::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
