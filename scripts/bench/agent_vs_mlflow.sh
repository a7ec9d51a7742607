#!/usr/bin/env bash
# Online inference: ferry-agent (OIP v2 over loopback HTTP) against
# `mlflow models serve` (2 workers) serving the same ONNX model (the
# breast-cancer logistic regression fixture, 30 features), one row per
# request, side by side on this machine. Also reports the agent's idle RSS.
#
# Measured, never asserted. Prints requests/s and p50/p99 at concurrency 1
# and 16 for both, and the ratios.
#
#   scripts/bench/agent_vs_mlflow.sh
#   DURATION=10 MLFLOW_WORKERS=2 scripts/bench/agent_vs_mlflow.sh
#   MODEL=bc_logreg_default scripts/bench/agent_vs_mlflow.sh  # skl2onnx's default export
#
# Needs: a Python venv with mlflow, onnx and onnxruntime (BENCH_VENV, default
# target/bench-venv; created with pip when missing), curl. Load comes from
# agent/examples/loadgen.rs (closed loop, keep-alive where the server allows).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DURATION=${DURATION:-10}
MLFLOW_WORKERS=${MLFLOW_WORKERS:-2}
BENCH_VENV=${BENCH_VENV:-$ROOT/target/bench-venv}
AGENT_PORT=${AGENT_PORT:-18081}
MLFLOW_PORT=${MLFLOW_PORT:-18082}
MODEL=${MODEL:-bc_logreg}

# Only the agent is measured: release build of it alone; the operator CLI
# (bundle signing) may be a debug build.
if [ -z "${SKIP_BUILD:-}" ]; then  # SKIP_BUILD=1: use the binaries already built
  cargo build --release -p ferry-agent --bin ferry-agent --example loadgen >&2
  cargo build -p ferry --bin ferry >&2
fi
BIN=$ROOT/target/release
FERRY=${FERRY_BIN:-$ROOT/target/debug/ferry}
if ! "$BENCH_VENV/bin/python" -c "import mlflow, onnx, onnxruntime" 2>/dev/null; then
  [ -x "$BENCH_VENV/bin/python" ] || python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install -q mlflow onnx onnxruntime pandas
fi

WORK=$(mktemp -d)
PIDS=()
# mlflow's workers are children: stop each server's whole process group.
cleanup() { for p in "${PIDS[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
F=$ROOT/tests/fixtures/models

"$FERRY" key generate --out "$WORK/keys" --name root >/dev/null
"$FERRY" key generate --out "$WORK/keys" --name pub >/dev/null
"$FERRY" trust init --root-key "$WORK/keys/root.key" --publisher "$WORK/keys/pub.pub" --out "$WORK/trust.root" >/dev/null
"$FERRY" bundle build "$F/$MODEL.onnx" --name m --version 1 --baseline "$F/$MODEL.baseline.csv" \
  --sign-with "$WORK/keys/pub.key" --out "$WORK/m.ferry" >/dev/null

setsid "$BIN/ferry-agent" run --bundle "$WORK/m.ferry" --trust "$WORK/trust.root" \
  --listen "127.0.0.1:$AGENT_PORT" --data "$WORK/agent" >"$WORK/agent.out" 2>"$WORK/agent.log" &
AGENT_PID=$!
PIDS+=($AGENT_PID)

# mlflow wants a float32 tensor signature to accept the ONNX input.
MLFLOW_ALLOW_FILE_STORE=true "$BENCH_VENV/bin/python" - "$F/$MODEL.onnx" "$WORK/mlflow-model" <<'PY'
import sys, numpy as np, onnx, mlflow.onnx
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
m = onnx.load(sys.argv[1])
f = m.graph.input[0].type.tensor_type.shape.dim[1].dim_value
sig = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, f), "input")]),
    outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label"),
                    TensorSpec(np.dtype(np.float32), (-1, 2), "probabilities")]))
mlflow.onnx.save_model(m, sys.argv[2], signature=sig)
PY
PATH="$BENCH_VENV/bin:$PATH" MLFLOW_ALLOW_FILE_STORE=true setsid "$BENCH_VENV/bin/mlflow" models serve -m "$WORK/mlflow-model" \
  --env-manager local -h 127.0.0.1 -p "$MLFLOW_PORT" -w "$MLFLOW_WORKERS" >"$WORK/mlflow.log" 2>&1 &
PIDS+=($!)

ROW=$("$BENCH_VENV/bin/python" -c "import json; print(json.dumps(json.load(open('$F/$MODEL.reference.json'))['rows'][0]))")
N=$("$BENCH_VENV/bin/python" -c "print(len($ROW))")
printf '{"id":"bench","inputs":[{"name":"input","shape":[1,%s],"datatype":"FP32","data":%s}]}' "$N" "$ROW" >"$WORK/agent.json"
printf '{"inputs":{"input":[%s]}}' "$ROW" >"$WORK/mlflow.json"

for _ in $(seq 1 600); do
  if curl -sf "http://127.0.0.1:$AGENT_PORT/v2/health/ready" >/dev/null &&
     curl -sf "http://127.0.0.1:$MLFLOW_PORT/ping" >/dev/null; then break; fi
  sleep 0.2
done
curl -sf -X POST -H 'content-type: application/json' --data @"$WORK/agent.json" \
  "http://127.0.0.1:$AGENT_PORT/v2/models/m/infer" >&2 && echo >&2
curl -sf -X POST -H 'content-type: application/json' --data @"$WORK/mlflow.json" \
  "http://127.0.0.1:$MLFLOW_PORT/invocations" >&2 && echo >&2

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
IDLE_RSS=$(rss_kb "$AGENT_PID")

run() { # name addr path body concurrency
  "$BIN/examples/loadgen" --addr "$2" --path "$3" --body "$4" --concurrency "$5" \
    --duration "$DURATION" --warmup 1
}
# How the kernel spread mlflow's keep-alive connections over its worker
# processes: a worker holds its connections for the whole run, so a skewed
# split leaves one core idle and mlflow's rate varies about 2x from run to run.
split() { # port
  sleep 3
  ss -Htnp state established "( sport = :$1 )" 2>/dev/null |
    grep -o 'pid=[0-9]*' | sort | uniq -c | awk '{printf "%s%s:%s", (NR>1?" ":""), $2, $1}'
}
declare -A R
declare -a MLFLOW_SPLIT
for c in 1 16; do
  R[agent_$c]=$(run agent "127.0.0.1:$AGENT_PORT" /v2/models/m/infer "$WORK/agent.json" "$c")
  split "$MLFLOW_PORT" >"$WORK/split" &
  R[mlflow_$c]=$(run mlflow "127.0.0.1:$MLFLOW_PORT" /invocations "$WORK/mlflow.json" "$c")
  wait $!
  MLFLOW_SPLIT[$c]=$(cat "$WORK/split")
done
LOADED_RSS=$(rss_kb "$AGENT_PID")

field() { "$BENCH_VENV/bin/python" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
echo
echo "model: $MODEL (one row per request), duration ${DURATION}s per run, mlflow workers: $MLFLOW_WORKERS, cores: $(nproc)"
printf '%-8s %-4s %12s %10s %10s %8s\n' server c req/s p50_us p99_us errors
for c in 1 16; do
  for s in agent mlflow; do
    r=${R[${s}_$c]}
    printf '%-8s %-4s %12s %10s %10s %8s\n' "$s" "$c" "$(field "$r" rps)" "$(field "$r" p50_us)" "$(field "$r" p99_us)" "$(field "$r" errors)"
  done
done
for c in 1 16; do
  a=$(field "${R[agent_$c]}" rps); m=$(field "${R[mlflow_$c]}" rps)
  echo "ratio req/s agent/mlflow at c=$c: $("$BENCH_VENV/bin/python" -c "print(round($a/$m, 1))")x"
done
echo "mlflow connections per worker process at c=16: ${MLFLOW_SPLIT[16]:-unknown}"
echo "agent idle RSS with the model loaded: $((IDLE_RSS / 1024)) MiB ($IDLE_RSS kB); after the load runs: $((LOADED_RSS / 1024)) MiB"
