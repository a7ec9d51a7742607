#!/usr/bin/env bash
# Tests a cross-built ferry-agent under qemu-user:
#  1. ferry-protocol's unit and integration tests, built for the target with
#     Debian's rustc-web and run under qemu (cargo's runner, .cargo/config.toml);
#  2. the cross-built agent started under qemu with a side-loaded signed
#     fixture bundle, real inference requests over HTTP, outputs compared with
#     the x86 onnxruntime reference; first-inference latency and the RSS of
#     the emulated process reported (marked emulated).
#
#   cross/test-emulated.sh [TARGET]    (default rpi4-aarch64; build it first
#                                       with cross/target.py build TARGET)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-rpi4-aarch64}"
triple=$(python3 -c "import tomllib;print(tomllib.load(open('firmware-targets/$target.toml','rb'))['triple'])")
agent=$(python3 cross/target.py path "$target")
[ -x "$agent" ] || { echo "missing $agent: run cross/target.py build $target" >&2; exit 1; }
case "$triple" in
  aarch64-*) qemu="qemu-aarch64-static -L /" ;;  # one sysroot: see .cargo/config.toml
  armv7-*) qemu="qemu-arm-static -L /" ;;
  *) qemu="" ;;
esac

echo "== ferry-protocol tests for $triple under qemu"
RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross \
  cargo test --locked -p ferry-protocol --target "$triple" --lib --tests  # rustdoc is rustup's: no ARM std

echo "== agent under emulation"
cargo build --locked -q -p ferry --bin ferry
ferry=target/debug/ferry
work=$(mktemp -d -t ferry-emu.XXXXXX)
agent_pid=""
cleanup() { [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
$ferry key generate --out "$work/keys" --name root >/dev/null
$ferry key generate --out "$work/keys" --name pub >/dev/null
$ferry trust init --root-key "$work/keys/root.key" --publisher "$work/keys/pub.pub" --out "$work/trust.root" >/dev/null
$ferry bundle build tests/fixtures/models/bc_logreg.onnx --name bc --version 1 \
  --baseline tests/fixtures/models/bc_logreg.baseline.csv \
  --test-vectors tests/fixtures/models/bc_logreg.testvectors.json \
  --sign-with "$work/keys/pub.key" --out "$work/bc.ferry" >/dev/null
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
start_ns=$(date +%s%N)
# shellcheck disable=SC2086
$qemu "$agent" run --bundle "$work/bc.ferry" --trust "$work/trust.root" \
  --listen "127.0.0.1:$port" --data "$work/data" >"$work/agent.log" 2>&1 &
agent_pid=$!
python3 cross/check_agent.py --port "$port" --pid "$agent_pid" --start-ns "$start_ns" \
  --reference tests/fixtures/models/bc_logreg.reference.json --model bc \
  --label "$target (qemu-user, emulated)" || { cat "$work/agent.log" >&2; exit 1; }
