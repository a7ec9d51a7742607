//! The `ferry-agent` binary, rebuilt inside this crate so its integration
//! tests can start it as a real process (`CARGO_BIN_EXE_e2e-ferry-agent`).
//! Built with failpoints (the crash points of the fetch/activate path),
//! which the tests configure through `FAILPOINTS`.
fn main() -> anyhow::Result<()> {
    let _failpoints = fail::FailScenario::setup();
    ferry_agent::cli::main()
}
