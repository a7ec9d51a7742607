#!/usr/bin/env python3
"""Dynamic batching on any engine: the same agent binary, the same signed
bundle, served unbatched and with `--batch m=ROWS:DELAY_US`, under closed-loop
load at concurrency 1 and 32 (agent/examples/loadgen.rs), side by side in one
run. Prints req/s, p50 and p99 per setting and the batched/unbatched ratio.

Measured, never asserted.

    scripts/bench/batching.py                        # release builds first
    scripts/bench/batching.py --skip-build --duration 5 --models mobile_block
    # the burn engine (a `--features gpu` build) on its CPU backend, on wgpu:
    scripts/bench/batching.py --features gpu --models cnn \
        --agent-args="--engine burn --gpu-backend cpu"

Models (tests/fixtures/models): `bc_logreg` (one row of 30 features per
request) and `mobile_block` (`mobile_block_dynamic.onnx`: a 1x1 / depth-wise /
1x1 convolution block, one 8x56x56 image per request) and `cnn`
(`gpu/cnn_classifier.onnx`: a small CNN classifier, one 3x16x16 image).
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchproc import ROOT, Proc, ferry_bin, sh  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")


def body(model):
    if model == "bc_logreg":
        ref = json.load(open(os.path.join(FIXTURES, "bc_logreg.reference.json")))
        row = ref["rows"][0]
        return "bc_logreg.onnx", {"inputs": [{"name": "input", "shape": [1, len(row)],
                                              "datatype": "FP32", "data": row}]}
    if model == "mobile_block":
        shape = [1, 8, 56, 56]
        n = 8 * 56 * 56
        data = [((i * 37 % 101) / 50.0) - 1.0 for i in range(n)]
        return "mobile_block_dynamic.onnx", {"inputs": [{"name": "x", "shape": shape,
                                                         "datatype": "FP32", "data": data}]}
    if model == "cnn":
        shape = [1, 3, 16, 16]
        data = [((i * 37 % 101) / 50.0) - 1.0 for i in range(3 * 16 * 16)]
        return "gpu/cnn_classifier.onnx", {"inputs": [{"name": "x", "shape": shape,
                                                       "datatype": "FP32", "data": data}]}
    sys.exit(f"unknown model {model}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="bc_logreg,mobile_block")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--batch", default="32:2000", help="ROWS:DELAY_US")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--target", default=os.path.join(ROOT, "target"))
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--features", default="", help="the agent's cargo features (gpu)")
    ap.add_argument("--agent-args", default="",
                    help="extra `ferry-agent run` arguments (--engine burn --gpu-backend cpu)")
    a = ap.parse_args()
    if not a.skip_build:
        features = ["--features", a.features] if a.features else []
        sh("cargo", "build", "--release", "-p", "ferry-agent", "--bin", "ferry-agent",
           "--example", "loadgen", *features)
        sh("cargo", "build", "-p", "ferry", "--bin", "ferry")
    agent = os.path.join(a.target, "release", "ferry-agent")
    loadgen = os.path.join(a.target, "release", "examples", "loadgen")
    ferry = ferry_bin(os.path.join(a.target, "debug"))
    work = tempfile.mkdtemp(prefix="ferry-batching-")
    for name in ["root", "pub"]:
        sh(ferry, "key", "generate", "--out", f"{work}/keys", "--name", name)
    sh(ferry, "trust", "init", "--root-key", f"{work}/keys/root.key", "--publisher",
       f"{work}/keys/pub.pub", "--out", f"{work}/trust.root")
    conc = [int(c) for c in a.concurrency.split(",")]
    rows = []
    for model in a.models.split(","):
        onnx, req = body(model)
        bundle = f"{work}/{model}.ferry"
        sh(ferry, "bundle", "build", os.path.join(FIXTURES, onnx), "--name", "m", "--version",
           "1", "--sign-with", f"{work}/keys/pub.key", "--out", bundle)
        req_path = f"{work}/{model}.json"
        json.dump(req, open(req_path, "w"))
        for setting in ["unbatched", "batched"]:
            data = f"{work}/{model}-{setting}"
            args = [agent, "run", "--bundle", bundle, "--trust", f"{work}/trust.root",
                    "--listen", "127.0.0.1:0", "--data", data]
            args += a.agent_args.split()
            if setting == "batched":
                args += ["--batch", f"m={a.batch}"]
            p = Proc(args, log=f"{data}.log")
            addr = p.wait_line("ferry-agent listening on http://")
            for c in conc:
                out = sh(loadgen, "--addr", addr, "--path", "/v2/models/m/infer", "--body",
                         req_path, "--concurrency", str(c), "--duration", str(a.duration),
                         "--warmup", "1")
                r = json.loads(out.strip().splitlines()[-1])
                rows.append((model, c, setting, r))
            p.stop()
    print(f"\ncores: {os.cpu_count()}, duration {a.duration}s per run, batch {a.batch} (rows:delay_us)"
          f", agent args: {a.agent_args or '(none)'}")
    print(f"{'model':<14}{'c':>4} {'setting':<10}{'req/s':>10}{'p50_us':>10}{'p99_us':>10}{'errors':>8}")
    for model, c, setting, r in rows:
        print(f"{model:<14}{c:>4} {setting:<10}{r['rps']:>10.0f}{r['p50_us']:>10}{r['p99_us']:>10}"
              f"{r['errors']:>8}")
    by = {(m, c, s): r for m, c, s, r in rows}
    for model in a.models.split(","):
        for c in conc:
            u, b = by[(model, c, "unbatched")], by[(model, c, "batched")]
            print(f"{model} c={c}: batched/unbatched req/s {b['rps'] / u['rps']:.2f}x")


if __name__ == "__main__":
    main()
