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
#
# The host `ferry` (bundle signing) builds into $CARGO_TARGET_DIR if set,
# else target/ (CI reuses the main tests' build).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-rpi4-aarch64}"
triple=$(python3 -c "import tomllib;print(tomllib.load(open('firmware-targets/$target.toml','rb'))['triple'])")
agent=$(python3 cross/target.py path "$target")
[ -x "$agent" ] || { echo "missing $agent: run cross/target.py build $target" >&2; exit 1; }
# qemu-user with one glibc sysroot (multiarch or cross package, never mixed:
# see .cargo/config.toml); empty for the host target.
qemu=$(python3 cross/target.py runner "$target")

echo "== ferry-protocol tests for $triple under qemu"
# Debian's rustc into target/cross, qemu as cargo's runner, std built from
# source where the target file asks for it. rustdoc is rustup's (no ARM std),
# so no doctests.
python3 cross/target.py cargo "$target" test --locked -p ferry-protocol --lib --tests

echo "== agent under emulation"
host_dir="${CARGO_TARGET_DIR:-target}"
ferry="$host_dir/debug/ferry"
# The host `ferry` only makes keys and the bundle. .ci/run has just built it
# with the tests; `-p ferry` alone unifies features differently and would
# rebuild tract and most dependencies (about 8 of CI's 40 minutes).
if [ ! -x "$ferry" ] || [ "${FERRY_EMU_REBUILD:-0}" = 1 ]; then
  CARGO_TARGET_DIR="$host_dir" cargo build --locked -q -p ferry --bin ferry
fi
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
