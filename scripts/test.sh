#!/usr/bin/env bash
# The project's test command (README): every test in the workspace, against
# the real services. It sets up what it can first: the Python tools
# environment (.venv, idempotent and quick when nothing changed) and, when
# they are installed but not running, Mosquitto on 127.0.0.1:1883 and
# PostgreSQL on 127.0.0.1:5432.
#
# A test whose service or tool is missing FAILS, naming it (CI=true is set
# for the tests). FERRY_ALLOW_SKIP=1 makes such tests skip instead, for a
# quick partial run; the skips are listed at the end.
# Extra arguments go to `cargo test` (e.g. `--test fleet_e2e`).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '== %s\n' "$*"; }

say "python tools (.venv)"
if ! scripts/python-env.sh; then
  echo "scripts/python-env.sh failed: the ONNX Runtime, moto and tritonclient tests need it" >&2
  [ "${FERRY_ALLOW_SKIP:-0}" = 1 ] || exit 1
fi
if [ -x .venv/bin/python ]; then export FERRY_PYTHON="${FERRY_PYTHON:-$PWD/.venv/bin/python}"; fi

say "browser test packages (tests/browser)"
if [ ! -d tests/browser/node_modules ]; then
  if command -v npm >/dev/null; then
    npm ci --prefix tests/browser --no-audit --no-fund || echo "npm ci in tests/browser failed: the dashboard's browser test will fail" >&2
  else
    echo "npm is missing: the dashboard's browser test will fail (apt-get install nodejs npm chromium)" >&2
  fi
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
say "services"
if ! port_open 1883 && command -v mosquitto >/dev/null; then
  mosquitto -d -c /etc/mosquitto/mosquitto.conf 2>/dev/null || mosquitto -d || true
fi
if ! port_open 5432 && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
port_open 1883 && echo "Mosquitto   127.0.0.1:1883" || echo "Mosquitto   not running (its tests will fail)"
port_open 5432 && echo "PostgreSQL  127.0.0.1:5432" || echo "PostgreSQL  not running (its tests will fail)"

skip_log="$PWD/target/ferry-skipped.txt"
service_log="$PWD/target/ferry-services.txt"
mkdir -p target
: >"$skip_log"
: >"$service_log"
export FERRY_SERVICE_LOG="$service_log"
if [ "${FERRY_ALLOW_SKIP:-0}" = 1 ]; then
  export CI=false FERRY_SKIP_LOG="$skip_log"
else
  export CI=true
fi

# The agent's `gpu` feature is on: the burn engine's tests run too, its
# GPU path (wgpu) on the host's Vulkan driver (Mesa's lavapipe without a
# GPU: apt-get install mesa-vulkan-drivers). Models load on tract unless a
# test asks for burn, so a GPU on the machine changes no other result.
say "cargo test --workspace --features ferry-agent/gpu $*"
status=0
cargo test --workspace --features ferry-agent/gpu "$@" || status=$?

if [ -s "$service_log" ]; then
  echo "== real services, by test binary:"
  sort -u "$service_log" | awk -F '\t' '{ s[$1] = (s[$1] ? s[$1] ", " : "") $2 } END { for (b in s) printf "  %-22s %s\n", b, s[b] }' | sort
fi
if [ -s "$skip_log" ]; then
  echo "== SKIPPED ($(wc -l <"$skip_log") test(s), FERRY_ALLOW_SKIP=1):"
  sed 's/^/  /' "$skip_log"
fi
exit "$status"
