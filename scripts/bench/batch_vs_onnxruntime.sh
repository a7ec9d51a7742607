#!/usr/bin/env bash
# Batch scoring: the agent's in-process engine against onnxruntime's Python
# API on a 100k-row batch (`ferry-agent bench`), and `ferry-agent score` on a CSV end to end
# against a pandas + onnxruntime script on the same file, side by side on
# this machine, for the logistic regression (the hand-shaped export and
# skl2onnx's default one, ai.onnx.ml Scaler + LinearClassifier) and the
# digits MLP fixtures.
#
# Measured, never asserted. Prints rows/s for each and the ratios.
#
#   scripts/bench/batch_vs_onnxruntime.sh
#   ROWS=100000 CSV_ROWS=1000000 scripts/bench/batch_vs_onnxruntime.sh
#   MODELS=bc_logreg_default scripts/bench/batch_vs_onnxruntime.sh
#
# Needs: a Python venv with onnxruntime, pandas, numpy (BENCH_VENV, default
# target/bench-venv; created with pip when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROWS=${ROWS:-100000}
CSV_ROWS=${CSV_ROWS:-1000000}
REPEAT=${REPEAT:-5}
MODELS=${MODELS:-bc_logreg bc_logreg_default digits_mlp}
BENCH_VENV=${BENCH_VENV:-$ROOT/target/bench-venv}
PY=$BENCH_VENV/bin/python

# Only the agent is measured: release build of it alone; the operator CLI
# (bundle signing) may be a debug build.
if [ -z "${SKIP_BUILD:-}" ]; then  # SKIP_BUILD=1: use the binaries already built
  cargo build --release -p ferry-agent --bin ferry-agent >&2
  cargo build -p ferry --bin ferry >&2
fi
BIN=$ROOT/target/release
FERRY=${FERRY_BIN:-$ROOT/target/debug/ferry}
if ! "$PY" -c "import onnxruntime, pandas, numpy" 2>/dev/null; then
  [ -x "$PY" ] || python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install -q onnxruntime pandas numpy
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
F=$ROOT/tests/fixtures/models
"$FERRY" key generate --out "$WORK/keys" --name root >/dev/null
"$FERRY" key generate --out "$WORK/keys" --name pub >/dev/null
"$FERRY" trust init --root-key "$WORK/keys/root.key" --publisher "$WORK/keys/pub.pub" --out "$WORK/trust.root" >/dev/null

cat >"$WORK/ort.py" <<'PY'
import json, sys, time
import numpy as np, onnxruntime as ort, pandas as pd
mode, model, csv = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "engine":
    rows, repeat = int(sys.argv[4]), int(sys.argv[5])
    src = pd.read_csv(csv).to_numpy(dtype=np.float32)
    x = np.ascontiguousarray(np.resize(src, (rows, src.shape[1])))
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter(); s.run(None, {name: x}); best = min(best, time.perf_counter() - t)
    print(json.dumps({"rows": rows, "best_s": best, "rows_per_s": rows / best}))
else:  # end to end: read CSV, score, write CSV
    out = sys.argv[4]
    t = time.perf_counter()
    df = pd.read_csv(csv)
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    label, proba = s.run(None, {s.get_inputs()[0].name: df.to_numpy(dtype=np.float32)})
    res = pd.DataFrame(proba, columns=[f"probabilities_{i}" for i in range(proba.shape[1])])
    res.insert(0, "label", label)
    res.to_csv(out, index_label="row")
    dt = time.perf_counter() - t
    print(json.dumps({"rows": len(df), "seconds": dt, "rows_per_s": len(df) / dt}))
PY
field() { "$PY" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
ratio() { "$PY" -c "print(round($1/$2, 2))"; }

echo "cores: $(nproc), batch: $ROWS rows (best of $REPEAT), CSV: $CSV_ROWS rows"
for MODEL in $MODELS; do
  "$FERRY" bundle build "$F/$MODEL.onnx" --name "$MODEL" --version 1 \
    --sign-with "$WORK/keys/pub.key" --out "$WORK/$MODEL.ferry" >/dev/null
  ours=$("$BIN/ferry-agent" bench --bundle "$WORK/$MODEL.ferry" --trust "$WORK/trust.root" \
    --csv "$F/$MODEL.baseline.csv" --rows "$ROWS" --repeat "$REPEAT")
  theirs=$("$PY" "$WORK/ort.py" engine "$F/$MODEL.onnx" "$F/$MODEL.baseline.csv" "$ROWS" "$REPEAT")
  a=$(field "$ours" rows_per_s); b=$(field "$theirs" rows_per_s)
  printf '%-11s engine   ferry %12.0f rows/s   onnxruntime %12.0f rows/s   ratio %sx\n' "$MODEL" "$a" "$b" "$(ratio "$a" "$b")"

  # The same big CSV for both end-to-end runs.
  "$PY" -c "
import numpy as np, pandas as pd
src = pd.read_csv('$F/$MODEL.baseline.csv')
big = pd.DataFrame(np.resize(src.to_numpy(), ($CSV_ROWS, src.shape[1])), columns=src.columns)
big.to_csv('$WORK/big.csv', index=False)"
  t0=$(date +%s.%N)
  "$BIN/ferry-agent" score --bundle "$WORK/$MODEL.ferry" --trust "$WORK/trust.root" \
    --input "$WORK/big.csv" --output "$WORK/ferry-preds.csv" --no-progress 2>/dev/null
  t1=$(date +%s.%N)
  a=$("$PY" -c "print($CSV_ROWS/($t1-$t0))")
  theirs=$("$PY" "$WORK/ort.py" e2e "$F/$MODEL.onnx" "$WORK/big.csv" "$WORK/ort-preds.csv")
  b=$(field "$theirs" rows_per_s)
  printf '%-11s csv e2e  ferry %12.0f rows/s   pandas+ort  %12.0f rows/s   ratio %sx\n' "$MODEL" "$a" "$b" "$(ratio "$a" "$b")"
done
