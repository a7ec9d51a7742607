#!/usr/bin/env python3
"""A CNN on every engine of this host, side by side: onnxruntime's CPU
provider (in process), Ferry's tract (CPU) and Ferry's burn engine on each
backend given (cuda, wgpu, cpu), at batch 1, 8 and 64. Prints one table:
p50 latency per batch and images/s, and each engine's speed over
onnxruntime's.

Ferry's numbers come from `ferry-agent bench-model --engine ...`: a signed
bundle loaded as the agent loads it (test vectors included), each run
converting the request's values as a request does, outputs read back to the
host (so a GPU run includes both copies).

    scripts/bench/gpu_engines.py --agent target/release/ferry-agent \\
        --ferry target/debug/ferry --backends cuda,wgpu

Measured, never asserted. The model is tests/fixtures/models/gpu/bench_cnn.onnx
(x [N, 3, 64, 64], 0.2 M parameters) unless --model says otherwise.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchproc import ROOT, sh  # noqa: E402
from models_vs_onnxruntime import session, time_ferry, time_ort, write_case  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default=os.path.join(ROOT, "target", "release", "ferry-agent"))
    ap.add_argument("--ferry", default=os.path.join(ROOT, "target", "debug", "ferry"))
    ap.add_argument("--model", default=os.path.join(ROOT, "tests", "fixtures", "models", "gpu",
                                                     "bench_cnn.onnx"))
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--backends", default="cuda,wgpu", help="burn backends to measure")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ferry-gpu-bench-")
    for name in ["root", "pub"]:
        sh(a.ferry, "key", "generate", "--out", f"{work}/keys", "--name", name)
    sh(a.ferry, "trust", "init", "--root-key", f"{work}/keys/root.key", "--publisher",
       f"{work}/keys/pub.pub", "--out", f"{work}/trust.root")
    bundle = f"{work}/cnn.ferry"
    sh(a.ferry, "bundle", "build", a.model, "--name", "cnn", "--version", "1",
       "--sign-with", f"{work}/keys/pub.key", "--out", bundle)
    sess = session(a.model, a.threads)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    engines = [("tract", ["--engine", "tract"])]
    engines += [(f"burn-{b}", ["--engine", "burn", "--gpu-backend", b])
                for b in a.backends.split(",") if b]
    rows = []
    rng = np.random.default_rng(0)
    for batch in [int(b) for b in a.batches.split(",")]:
        x = rng.standard_normal([batch] + shape[1:]).astype(np.float32)
        feeds = {inp.name: x}
        case = {"inputs": [{"name": inp.name, "datatype": "FP32"}]}
        path = write_case(os.path.join(work, f"b{batch}"), case, feeds)
        results = {"onnxruntime-cpu": time_ort(sess, feeds, a.seconds)}
        for name, extra in engines:
            results[name] = time_ferry(a.agent, bundle, f"{work}/trust.root", path, a.threads,
                                       a.seconds, extra)
        rows.append((batch, results))
    names = ["onnxruntime-cpu"] + [n for n, _ in engines]
    print(f"\nmodel {os.path.basename(a.model)}, {a.threads} CPU threads, "
          f"{a.seconds}s per measurement")
    print(f"{'batch':>5}  " + "".join(f"{n:>22}" for n in names))
    for batch, results in rows:
        cells = []
        for n in names:
            r = results[n]
            if "error" in r:
                cells.append(f"{'error':>22}")
                continue
            ips = batch / (r["p50_us"] / 1e6)
            cells.append(f"{r['p50_us'] / 1000:>9.2f} ms {ips:>7.0f}/s")
        print(f"{batch:>5}  " + "".join(f"{c:>22}" for c in cells))
    print("\nspeed over onnxruntime-cpu (p50):")
    for batch, results in rows:
        base = results["onnxruntime-cpu"]["p50_us"]
        line = ", ".join(f"{n} {base / results[n]['p50_us']:.2f}x" for n in names[1:]
                         if "error" not in results[n])
        print(f"  batch {batch}: {line}")
    for batch, results in rows:
        for n in names:
            if "error" in results[n]:
                print(f"  batch {batch} {n}: {results[n]['error']}")
    print(json.dumps({str(b): r for b, r in rows}))


if __name__ == "__main__":
    main()
