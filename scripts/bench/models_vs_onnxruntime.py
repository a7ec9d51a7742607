#!/usr/bin/env python3
"""The real-model corpus, Ferry's engine against onnxruntime, side by side.

For every model of the corpus (scripts/models/fetch_corpus.py) that
`ferry bundle build --check` accepts, with the same number of threads on
both sides (onnxruntime: intra_op_num_threads=N, inter_op_num_threads=1;
Ferry: `ferry-agent bench-model --threads N`, the agent's `threads` knob):

  single   one request of the corpus input: p50 and p99 latency
  batch    BATCH requests stacked on the first axis when every input's first
           axis is dynamic, else BATCH single requests in a row: items/s

Ferry is timed through its own engine as the agent serves (the serving
plans of a signed bundle, the request's values converted to tract tensors
on every run), in the release `ferry-agent`; onnxruntime through its Python
API on ready numpy arrays. Ratios are onnxruntime's time over Ferry's:
above 1.0 Ferry is faster. With one thread the CPU time per request is
printed too (Ferry: the CPU time of a long and a short `bench-model` run,
differenced; onnxruntime: process time over its runs): on a machine shared
with other work it moves far less than wall-clock latency. Measured, never
asserted.

  python scripts/bench/models_vs_onnxruntime.py [--threads 1,2] [--only ID,...]
  python scripts/bench/models_vs_onnxruntime.py --rss ddddocr-common

--rss ID instead starts `ferry-agent run` with that model side-loaded and
prints its resident memory after start, after warm-up requests and after
more requests (VmRSS, and VmHWM for the peak), from /proc.

Needs: release `ferry-agent` (cargo build --release -p ferry-agent --bin
ferry-agent), a `ferry` binary (debug is fine: it only signs bundles), and
a Python with onnxruntime and numpy (scripts/python-env.sh makes .venv).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
NP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
      "BOOL": np.bool_}


def first_existing(*paths):
    return next((p for p in paths if os.path.exists(p)), paths[0])


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def load_case(d):
    with open(os.path.join(d, "case.json")) as f:
        case = json.load(f)
    feeds = {}
    for t in case["inputs"]:
        raw = np.fromfile(os.path.join(d, t["file"]), dtype=np.dtype(NP[t["datatype"]]).newbyteorder("<"))
        feeds[t["name"]] = raw.reshape(t["shape"])
    return case, feeds


def write_case(d, case, feeds):
    """A case file holding `feeds` (for `ferry-agent bench-model --inputs`)."""
    os.makedirs(d, exist_ok=True)
    inputs = []
    for t in case["inputs"]:
        v = np.ascontiguousarray(feeds[t["name"]])
        file = f"in-{len(inputs)}.bin"
        v.astype(v.dtype.newbyteorder("<")).tofile(os.path.join(d, file))
        inputs.append({"name": t["name"], "datatype": t["datatype"], "shape": list(v.shape), "file": file})
    path = os.path.join(d, "case.json")
    with open(path, "w") as f:
        json.dump({"inputs": inputs}, f)
    return path


def session(model, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.log_severity_level = 3  # shape-annotation warnings on every run otherwise
    return ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])


def time_ort(sess, feeds, seconds, min_runs=20, warmup=3, max_runs=100_000):
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    t0 = time.perf_counter()
    c0 = time.process_time()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - t0 < seconds):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e6)
    cpu = (time.process_time() - c0) / len(times) * 1e6
    times.sort()
    q = lambda p: times[min(len(times), max(1, int(np.ceil(len(times) * p)))) - 1]
    return {"runs": len(times), "p50_us": q(0.5), "p99_us": q(0.99),
            "mean_us": sum(times) / len(times), "cpu_us": cpu}


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_ferry(agent, bundle, trust, inputs, threads, seconds, extra=()):
    """`ferry-agent bench-model`, run twice: a short run and the measured one.
    The difference of their CPU times over the difference of their run
    counts is the CPU time of one run, without loading and compiling."""
    base = [agent, "bench-model", "--bundle", bundle, "--trust", trust, "--inputs", inputs,
            "--threads", str(threads), *extra]
    out = []
    for args in (["--seconds", "0", "--min-runs", "3"], ["--seconds", str(seconds)]):
        c0 = children_cpu()
        r = run(base + args)
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["cpu_s"] = children_cpu() - c0
        out.append(res)
    short, res = out
    if res["runs"] > short["runs"]:
        res["cpu_us"] = (res["cpu_s"] - short["cpu_s"]) / (res["runs"] - short["runs"]) * 1e6
    return res


def batchable(sess):
    """Every input has a dynamic first axis: requests stack on it."""
    return all(len(i.shape) >= 1 and not isinstance(i.shape[0], int) for i in sess.get_inputs())


def test_vectors(work, mid, d, case):
    """The case's reference as signed test vectors, as agent/tests/corpus.rs
    signs them: `--check` compiles the shapes they carry (a graph compiled
    per input shape needs them), when small enough for a manifest."""
    tensors = case["inputs"] + case["outputs"]
    if sum(os.path.getsize(os.path.join(d, t["file"])) for t in tensors) > 2 << 20:
        return None

    def as_json(ts):
        out = {}
        for t in ts:
            v = np.fromfile(os.path.join(d, t["file"]), dtype=np.dtype(NP[t["datatype"]]).newbyteorder("<"))
            out[t["name"]] = {"shape": t["shape"], "datatype": t["datatype"], "data": v.tolist()}
        return out

    path = os.path.join(work, f"{mid}.vectors.json")
    with open(path, "w") as f:
        json.dump({"tolerance": 1e-2, "vectors": [
            {"inputs": as_json(case["inputs"]), "outputs": as_json(case["outputs"])}]}, f)
    return path


def bundle(ferry, work, keys, mid, d, case):
    out = os.path.join(work, f"{mid}.ferry")
    cmd = [ferry, "bundle", "build", os.path.join(d, "model.onnx"), "--name", mid, "--version", "1",
           "--sign-with", os.path.join(keys, "pub.key"), "--out", out, "--check"]
    for s in case.get("input_shapes", []):
        cmd += ["--input-shape", s]
    for s in case.get("const_inputs", []):
        cmd += ["--const-input", s]
    vectors = test_vectors(work, mid, d, case)
    if vectors:
        cmd += ["--test-vectors", vectors]
    r = run(cmd)
    if r.returncode != 0 and "--test-vectors" in r.stderr and not vectors:
        # Compiled per input shape, and its reference is too large to sign:
        # the agent compiles it at the first request instead.
        r = run([c for c in cmd if c != "--check"])
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["refused"])[-1]
    return out, None


def ms(us):
    return f"{us / 1000:.2f}"


def rss_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure_rss(args, agent, trust, path, case, feeds, threads, work):
    """The agent's memory with one model side-loaded, from /proc."""
    p = subprocess.Popen([agent, "run", "--bundle", path, "--trust", trust, "--listen", "127.0.0.1:0",
                          "--data", os.path.join(work, "rss-data"), "--threads", str(threads),
                          *args.agent_arg],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        addr = None
        for line in p.stdout:
            if line.startswith("ferry-agent listening on http://"):
                addr = line.split("http://", 1)[1].strip()
                break
        if addr is None:
            raise SystemExit("the agent exited before listening")
        rows = {"at start (model loaded, no request)": rss_kib(p.pid, "VmRSS")}
        body = json.dumps({"inputs": [
            {"name": t["name"], "shape": t["shape"], "datatype": t["datatype"],
             "data": feeds[t["name"]].reshape(-1).tolist()} for t in case["inputs"]]}).encode()

        def infer(n):
            for _ in range(n):
                req = urllib.request.Request(f"http://{addr}/v2/models/{case['id']}/infer", data=body,
                                             headers={"content-type": "application/json"})
                with urllib.request.urlopen(req) as r:
                    r.read()
        done = 0
        for mark in [5, 50, 200, 500, 1000, 2000, 5000]:
            if mark > max(5, args.rss_requests):
                break
            infer(mark - done)
            done = mark
            rows[f"after {mark} requests"] = rss_kib(p.pid, "VmRSS")
        rows["peak (VmHWM)"] = rss_kib(p.pid, "VmHWM")
    finally:
        p.terminate()
        p.wait()
    size = os.path.getsize(os.path.join(args.corpus, case["id"], "model.onnx"))
    print(f"ferry-agent run, {case['id']} ({size / 2**20:.1f} MB model file), threads {threads}")
    print("| measure | RSS |\n|---|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v / 1024:.0f} MiB |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=os.path.join(ROOT, "target", "model-corpus"))
    ap.add_argument("--only", default="", help="comma-separated model ids")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--agent", default=os.path.join(ROOT, "target", "release", "ferry-agent"))
    ap.add_argument("--ferry", default=first_existing(os.path.join(ROOT, "target", "release", "ferry"),
                                                      os.path.join(ROOT, "target", "debug", "ferry")))
    ap.add_argument("--rss", default="", help="measure the agent's memory with this model instead")
    ap.add_argument("--rss-requests", type=int, default=500,
                    help="requests sent in all; RSS read after 5, 50, 200, 500, 1000, ...")
    ap.add_argument("--agent-arg", action="append", default=[],
                    help="extra flag for `ferry-agent run` in --rss mode (repeatable)")
    ap.add_argument("--symbolic-only", action="store_true",
                    help="Ferry without plans specialised to repeated shapes (the engine before them)")
    args = ap.parse_args()
    for b in (args.agent, args.ferry):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} is not built")
    if not os.path.exists(os.path.join(args.corpus, "corpus.json")):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "models", "fetch_corpus.py"),
                        "--out", args.corpus], check=True)
    with open(os.path.join(args.corpus, "corpus.json")) as f:
        ids = json.load(f)
    if args.only or args.rss:
        ids = [i for i in (args.rss or args.only).split(",") if i]
    threads = [int(t) for t in args.threads.split(",")]
    work = tempfile.mkdtemp(prefix="ferry-models-bench-")
    try:
        keys = os.path.join(work, "keys")
        trust = os.path.join(work, "trust.root")
        for name in ("root", "pub"):
            run([args.ferry, "key", "generate", "--out", keys, "--name", name], check=True)
        run([args.ferry, "trust", "init", "--root-key", os.path.join(keys, "root.key"),
             "--publisher", os.path.join(keys, "pub.pub"), "--out", trust], check=True)
        if args.rss:
            d = os.path.join(args.corpus, args.rss)
            case, feeds = load_case(d)
            path, why = bundle(args.ferry, work, keys, args.rss, d, case)
            if path is None:
                raise SystemExit(f"{args.rss}: refused: {why}")
            measure_rss(args, args.agent, trust, path, case, feeds, threads[0], work)
            return
        print(f"cores: {os.cpu_count()}, onnxruntime {ort.__version__}, batch {args.batch}, "
              f"{args.seconds:g} s per measurement")
        rows = []
        extra = ["--symbolic-only"] if args.symbolic_only else []
        for mid in ids:
            d = os.path.join(args.corpus, mid)
            case, feeds = load_case(d)
            path, why = bundle(args.ferry, work, keys, mid, d, case)
            if path is None:
                rows.append(f"| {mid} | refused at build time: {why} |")
                print(rows[-1], flush=True)
                continue
            single = os.path.join(d, "case.json")
            probe = session(os.path.join(d, "model.onnx"), 1)
            stacked = batchable(probe)
            if stacked:
                bfeeds = {k: np.concatenate([v] * args.batch, axis=0) for k, v in feeds.items()}
                binputs = write_case(os.path.join(work, mid + "-batch"), case, bfeeds)
            for n in threads:
                sess = session(os.path.join(d, "model.onnx"), n)
                f1 = time_ferry(args.agent, path, trust, single, n, args.seconds, extra)
                o1 = time_ort(sess, feeds, args.seconds)
                if "error" in f1:
                    rows.append(f"| {mid} | {n} | ferry failed: {f1['error']} |")
                    print(rows[-1], flush=True)
                    continue
                if stacked:
                    fb = time_ferry(args.agent, path, trust, binputs, n, args.seconds, extra)
                    ob = time_ort(sess, bfeeds, args.seconds)
                    fb_ips = args.batch / (fb["mean_us"] / 1e6) if "mean_us" in fb else float("nan")
                    ob_ips = args.batch / (ob["mean_us"] / 1e6)
                    how = f"stacked {args.batch}"
                else:
                    # BATCH requests in a row: the single runs' mean.
                    fb_ips = 1e6 / f1["mean_us"]
                    ob_ips = 1e6 / o1["mean_us"]
                    how = "one by one"
                # CPU per request: with one thread, the work done, which
                # the other processes of a shared machine disturb least.
                cpu = (f"{ms(f1['cpu_us'])} / {ms(o1['cpu_us'])} | **{o1['cpu_us'] / f1['cpu_us']:.2f}**"
                       if n == 1 and "cpu_us" in f1 else "– | –")
                rows.append(
                    f"| {mid} | {n} | {ms(f1['p50_us'])} / {ms(f1['p99_us'])} | "
                    f"{ms(o1['p50_us'])} / {ms(o1['p99_us'])} | **{o1['p50_us'] / f1['p50_us']:.2f}** | "
                    f"{cpu} | {fb_ips:.1f} | {ob_ips:.1f} | **{fb_ips / ob_ips:.2f}** | {how} |")
                print(rows[-1], flush=True)
        print()
        print("| model | threads | Ferry p50 / p99 (ms) | onnxruntime p50 / p99 (ms) | p50 ratio | "
              "CPU ms per request, Ferry / onnxruntime | CPU ratio | "
              "Ferry batch (items/s) | onnxruntime batch (items/s) | batch ratio | batch |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
