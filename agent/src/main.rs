fn main() -> anyhow::Result<()> {
    ferry_agent::cli::main()
}
