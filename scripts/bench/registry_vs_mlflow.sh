#!/usr/bin/env bash
# Model registry read throughput: `ferry server` (SQLite, embedded default)
# against MLflow's model registry REST API (`mlflow server`, SQLite backend),
# side by side on this machine with the same models and versions.
#
# Measured, never asserted. Prints requests/s for list, search, show and
# version lookups and the ferry/mlflow ratio.
#
#   scripts/bench/registry_vs_mlflow.sh
#   MODELS=100 VERSIONS=3 DURATION=10 CONNECTIONS=8 scripts/bench/registry_vs_mlflow.sh
#
# Needs: wrk (apt-get install wrk), curl, a Python venv with mlflow
# (BENCH_VENV, default target/bench-venv; created with `pip install mlflow`
# when missing), and a ferry binary (FERRY_BIN, default a release build).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MODELS=${MODELS:-100}
VERSIONS=${VERSIONS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-8}
THREADS=${THREADS:-2}
MLFLOW_WORKERS=${MLFLOW_WORKERS:-2}
BENCH_VENV=${BENCH_VENV:-$ROOT/target/bench-venv}
FERRY_PORT=${FERRY_PORT:-18470}
MLFLOW_PORT=${MLFLOW_PORT:-18500}

if [[ -z "${FERRY_BIN:-}" ]]; then
  cargo build --release -p ferry >&2
  FERRY_BIN=$ROOT/target/release/ferry
fi
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
if [[ ! -x "$BENCH_VENV/bin/mlflow" ]]; then
  python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install -q mlflow
fi

WORK=$(mktemp -d)
PIDS=()
# Each server runs in its own session (setsid) so its whole process group —
# mlflow's uvicorn workers and job consumers included — is stopped at exit.
cleanup() { for p in "${PIDS[@]}"; do kill -- "-$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

TOKEN=$("$FERRY_BIN" token generate)
F=$ROOT/tests/fixtures/models

echo "# building $((MODELS * VERSIONS)) signed bundles" >&2
"$FERRY_BIN" key generate --out "$WORK/keys" --name root >/dev/null
"$FERRY_BIN" key generate --out "$WORK/keys" --name pub >/dev/null
"$FERRY_BIN" trust init --root-key "$WORK/keys/root.key" --publisher "$WORK/keys/pub.pub" \
  --tenant default --out "$WORK/trust.root" >/dev/null
mkdir -p "$WORK/bundles"
build_every_other() { # FIRST: models FIRST, FIRST+2, ...
  for m in $(seq -f "%04g" "$1" 2 "$MODELS"); do
    for v in $(seq 1 "$VERSIONS"); do
      "$FERRY_BIN" bundle build "$F/bc_logreg.onnx" --name "model-$m" --version "$v" --metric "auc=0.9$v" \
        --tag team=risk --sign-with "$WORK/keys/pub.key" --out "$WORK/bundles/model-$m-$v.ferry" >/dev/null
    done
  done
}
build_every_other 1 & b1=$!
build_every_other 2 & b2=$!
wait "$b1" "$b2"

echo "# starting ferry server and mlflow server" >&2
FERRY_BOOTSTRAP_TOKEN=$TOKEN setsid "$FERRY_BIN" server --http "127.0.0.1:$FERRY_PORT" --data "$WORK/ferry" \
  --rate-limit-per-minute 0 >"$WORK/ferry.log" 2>&1 &
PIDS+=($!)
setsid "$BENCH_VENV/bin/mlflow" server --backend-store-uri "sqlite:///$WORK/mlflow.db" \
  --default-artifact-root "$WORK/mlruns" --host 127.0.0.1 --port "$MLFLOW_PORT" \
  --workers "$MLFLOW_WORKERS" >"$WORK/mlflow.log" 2>&1 &
PIDS+=($!)

for _ in $(seq 1 1500); do
  if curl -sf "http://127.0.0.1:$FERRY_PORT/api/v1/health" >/dev/null &&
     curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null; then break; fi
  sleep 0.2
done

echo "# registering the same models and versions in both" >&2
export FERRY_SERVER=http://127.0.0.1:$FERRY_PORT FERRY_TOKEN=$TOKEN FERRY_CONFIG_DIR=$WORK/cli
"$FERRY_BIN" trust push "$WORK/trust.root" >/dev/null
for m in $(seq -f "%04g" 1 "$MODELS"); do
  for v in $(seq 1 "$VERSIONS"); do
    curl -sf -H "Authorization: Bearer $TOKEN" --data-binary "@$WORK/bundles/model-$m-$v.ferry" \
      "$FERRY_SERVER/api/v1/models" >/dev/null
  done
  curl -sf -X PUT -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"version\": $VERSIONS}" "$FERRY_SERVER/api/v1/models/model-$m/aliases/production" >/dev/null
done
"$BENCH_VENV/bin/python" - "$MODELS" "$VERSIONS" "http://127.0.0.1:$MLFLOW_PORT" <<'PY'
import json, sys, urllib.request
models, versions, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def post(path, body):
    req = urllib.request.Request(base + "/api/2.0/mlflow/" + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req).read()
for i in range(1, models + 1):
    name = "model-%04d" % i
    post("registered-models/create", {"name": name, "tags": [{"key": "team", "value": "risk"}]})
    for v in range(1, versions + 1):
        post("model-versions/create", {"name": name, "source": "s3://bench/%s/%d" % (name, v),
                                       "tags": [{"key": "auc", "value": "0.9%d" % v}]})
    post("registered-models/alias", {"name": name, "alias": "production", "version": str(versions)})
PY

rate() { # URL [AUTH]
  local out
  if [[ -n "${2:-}" ]]; then
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -H "Authorization: Bearer $2" "$1")
  else
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "$1")
  fi
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses from $1" >&2; echo "$out" >&2; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

FB=http://127.0.0.1:$FERRY_PORT/api/v1
MB=http://127.0.0.1:$MLFLOW_PORT/api/2.0/mlflow
mid=$(printf "%04d" $(( (MODELS + 1) / 2 )))
pre=${mid:0:3}
declare -a NAMES FERRY MLFLOW
NAMES+=("list 100 models");            FERRY+=("$FB/models?limit=100");                      MLFLOW+=("$MB/registered-models/search?max_results=100")
NAMES+=("search name prefix");         FERRY+=("$FB/models?name_prefix=model-$pre");          MLFLOW+=("$MB/registered-models/search?filter=name%20LIKE%20%27model-$pre%25%27")
NAMES+=("show model");                 FERRY+=("$FB/models/model-$mid");                      MLFLOW+=("$MB/registered-models/get?name=model-$mid")
NAMES+=("show version");               FERRY+=("$FB/models/model-$mid/versions/$VERSIONS");   MLFLOW+=("$MB/model-versions/get?name=model-$mid&version=$VERSIONS")
NAMES+=("list a model's versions");    FERRY+=("$FB/models/model-$mid/versions");             MLFLOW+=("$MB/model-versions/search?filter=name%3D%27model-$mid%27")

echo
echo "models=$MODELS versions/model=$VERSIONS wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s; mlflow workers=$MLFLOW_WORKERS; $(nproc) cores"
echo "mlflow $("$BENCH_VENV/bin/mlflow" --version 2>/dev/null | awk '{print $NF}'), ferry $("$FERRY_BIN" --version | awk '{print $NF}')"
printf "%-26s %14s %14s %8s\n" "request" "ferry req/s" "mlflow req/s" "ratio"
for i in "${!NAMES[@]}"; do
  f=$(rate "${FERRY[$i]}" "$TOKEN")
  m=$(rate "${MLFLOW[$i]}")
  ratio=$(awk -v f="$f" -v m="$m" 'BEGIN { if (m > 0) printf "%.1fx", f / m; else print "-" }')
  printf "%-26s %14s %14s %8s\n" "${NAMES[$i]}" "$f" "$m" "$ratio"
done
