#!/usr/bin/env python3
"""Ferry's tree-ensemble evaluator vs onnxruntime, side by side.

From the repository root:

    .venv/bin/pip install -r tests/fixtures/trees/requirements.txt
    .venv/bin/python scripts/bench/trees_vs_onnxruntime.py [--quick] [--stock-tract]

Trains two models on a synthetic 30-feature binary task (fixed seeds):
  forest: RandomForestClassifier, 100 trees, max_depth 8
  gbm:    GradientBoostingClassifier, 500 trees, max_depth 6
converts them with skl2onnx, and measures for 1 and 2 threads:
  batch rows/s   best of 5 runs over 100,000 rows
  single-row     median latency of one-row calls, microseconds
for onnxruntime's Python API (intra_op_num_threads = threads) and for Ferry
(the agent's tract plan with the tree op, via the Rust bench binary
agent/benches/trees_vs_onnxruntime.rs, built with `cargo bench`).

onnxruntime's single-row figure includes the Python call; the script also
prints the latency of an Identity model with the same input through the same
API, as the floor of that overhead. Ferry's figure includes tract's plan run.
Models and rows go to target/trees-bench/.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "target", "trees-bench")
N_FEATURES = 30
N_TRAIN = 20_000
N_SCORE = 100_000


def models(quick):
    x, y = make_classification(n_samples=N_TRAIN + N_SCORE, n_features=N_FEATURES,
                               n_informative=12, n_redundant=6, random_state=0)
    x = x.astype(np.float32)
    xtr, ytr, xsc = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:]
    specs = [
        ("forest", RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=2)),
        ("gbm", GradientBoostingClassifier(n_estimators=100 if quick else 500, max_depth=6,
                                           subsample=0.5, random_state=0)),
    ]
    out = []
    for name, est in specs:
        path = os.path.join(OUT, f"{name}.onnx")
        if not os.path.exists(path) or quick:
            t = time.time()
            est.fit(xtr[:5000] if quick else xtr, ytr[:5000] if quick else ytr)
            onx = convert_sklearn(est, initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
                                  target_opset={"": 17, "ai.onnx.ml": 3},
                                  options={id(est): {"zipmap": False}})
            with open(path, "wb") as f:
                f.write(onx.SerializeToString())
            print(f"trained {name} in {time.time() - t:.1f}s", file=sys.stderr)
        out.append((name, path))
    rows = os.path.join(OUT, "rows.f32")
    xsc.astype("<f4").tofile(rows)
    return out, xsc, rows


def identity_model():
    path = os.path.join(OUT, "identity.onnx")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])], "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, N_FEATURES])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, N_FEATURES])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_batch(sess, x, reps=5):
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:10_000]})
    best = min(_timed(lambda: sess.run(None, {name: x})) for _ in range(reps))
    return len(x) / best


def ort_single(sess, x, budget=2.0):
    name = sess.get_inputs()[0].name
    rows = [x[i:i + 1].copy() for i in range(256)]
    samples, i, deadline = [], 0, time.perf_counter() + budget
    while time.perf_counter() < deadline or len(samples) < 100:
        start = time.perf_counter()
        for _ in range(16):
            sess.run(None, {name: rows[i % 256]})
            i += 1
        samples.append((time.perf_counter() - start) * 1e6 / 16)
    samples.sort()
    return samples[len(samples) // 2]


def _timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def ferry(model, rows, threads, stock):
    cmd = ["cargo", "bench", "-q", "-p", "ferry-agent", "--bench", "trees_vs_onnxruntime", "--",
           model, rows, str(N_FEATURES), str(threads)] + (["--stock-tract"] if stock else [])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 and stock:
        # Stock tract cannot build some ensembles at all (it refuses the
        # 500-tree GBM's TreeEnsembleClassifier node): measure Ferry alone.
        f = ferry(model, rows, threads, False)
        f["stock_tract_error"] = "stock tract cannot load this model"
        return f
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    quick = "--quick" in sys.argv
    stock = "--stock-tract" in sys.argv
    os.makedirs(OUT, exist_ok=True)
    subprocess.run(["cargo", "bench", "-q", "-p", "ferry-agent", "--bench", "trees_vs_onnxruntime",
                    "--no-run"], cwd=ROOT, check=True)
    specs, x, rows = models(quick)
    ident = identity_model()
    print(f"onnxruntime {ort.__version__}, {N_SCORE} rows x {N_FEATURES} features, "
          f"{os.cpu_count()} CPUs")
    for threads in (1, 2):
        s = session(ident, threads)
        print(f"onnxruntime Python-API floor (Identity model), {threads} thread(s): "
              f"{ort_single(s, x, 1.0):.2f} us per single-row call")
    header = (f"{'model':8s} {'thr':>3s} {'ort rows/s':>12s} {'ferry rows/s':>13s} {'ratio':>6s}"
              f" {'ort 1-row us':>13s} {'ferry 1-row us':>15s} {'ratio':>6s}")
    print(header)
    results = []
    for name, path in specs:
        for threads in (1, 2):
            sess = session(path, threads)
            o_rows, o_lat = ort_batch(sess, x), ort_single(sess, x)
            f = ferry(path, rows, threads, stock and threads == 1)
            line = (f"{name:8s} {threads:3d} {o_rows:12,.0f} {f['rows_per_s']:13,.0f}"
                    f" {f['rows_per_s'] / o_rows:6.2f} {o_lat:13.2f} {f['single_row_us']:15.2f}"
                    f" {o_lat / f['single_row_us']:6.2f}")
            if "stock_tract_error" in f:
                line += f"   ({f['stock_tract_error']})"
            if "stock_tract_rows_per_s" in f:
                line += (f"   (stock tract: {f['stock_tract_rows_per_s']:,.0f} rows/s,"
                         f" {f['stock_tract_single_row_us']:.1f} us/row)")
            print(line, flush=True)
            results.append({"model": name, "threads": threads, "ort_rows_per_s": o_rows,
                            "ort_single_row_us": o_lat, **{f"ferry_{k}": v for k, v in f.items()}})
    print("ratios: rows/s ferry/ort (>1 = Ferry faster); latency ort/ferry (>1 = Ferry faster)")
    with open(os.path.join(OUT, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
