#!/usr/bin/env bash
# The README's run command: builds `ferry` and `ferry-agent` (the dev
# profile: dependencies optimised, no LTO; the profile `scripts/test.sh`
# uses too, so no second profile is compiled) and runs `ferry demo`, which
# starts a control plane (SQLite, local artifacts, embedded MQTT broker) and
# one enrolled ferry-agent on localhost, signs and deploys a real ONNX model,
# sends a little traffic and prints the URLs. Ctrl-C stops everything.
# Extra arguments go to `ferry demo` (see `ferry demo --help`).
# `cargo build --release` is for benchmarks and packages (LTO: much slower).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bin ferry --bin ferry-agent
exec target/debug/ferry demo --agent-bin target/debug/ferry-agent "$@"
