//! The `ferry-agent` binary, rebuilt inside this crate so its integration
//! tests can start it as a real process (`CARGO_BIN_EXE_e2e-ferry-agent`).
fn main() -> anyhow::Result<()> {
    ferry_agent::cli::main()
}
