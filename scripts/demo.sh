#!/usr/bin/env bash
# The README's run command: builds Ferry and runs `ferry demo`, which starts
# a control plane (SQLite, local artifacts, embedded MQTT broker) and one
# enrolled ferry-agent on localhost, signs and deploys a real ONNX model,
# sends a little traffic and prints the URLs. Ctrl-C stops everything.
# Extra arguments go to `ferry demo` (see `ferry demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ferry -p ferry-agent
exec target/release/ferry demo --agent-bin target/release/ferry-agent "$@"
