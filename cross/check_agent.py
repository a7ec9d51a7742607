#!/usr/bin/env python3
"""Waits for an agent, sends the reference rows one by one over the Open
Inference Protocol, compares outputs with the onnxruntime reference, and
prints startup time, first-inference latency and RSS as JSON."""
import argparse
import json
import sys
import time
import urllib.request


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--start-ns", type=int, required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    base = f"http://127.0.0.1:{a.port}"
    deadline = time.time() + 300  # emulated start-up is slow; no timing is asserted
    while True:
        try:
            status, _ = get(f"{base}/v2/models/{a.model}/ready")
            if status == 200:
                break
        except Exception:
            pass
        if time.time() > deadline:
            sys.exit("agent never became ready")
        time.sleep(0.2)
    ready_s = (time.time_ns() - a.start_ns) / 1e9
    idle_rss = rss_bytes(a.pid)
    ref = json.load(open(a.reference))
    first_ms = None
    for i, row in enumerate(ref["rows"]):
        body = {"id": f"r{i}", "inputs": [{"name": ref["input"], "shape": [1, len(row)],
                                           "datatype": "FP32", "data": row}]}
        t0 = time.perf_counter()
        out = post(f"{base}/v2/models/{a.model}/infer", body)
        if first_ms is None:
            first_ms = (time.perf_counter() - t0) * 1e3
        got = {o["name"]: o["data"] for o in out["outputs"]}
        want_label = ref["outputs"]["label"][i]
        want_prob = ref["outputs"]["probabilities"][i]
        if got["label"][0] != want_label:
            sys.exit(f"row {i}: label {got['label'][0]} != reference {want_label}")
        for x, y in zip(got["probabilities"], want_prob):
            if abs(x - y) > a.tolerance:
                sys.exit(f"row {i}: probability {x} != reference {y}")
    print(json.dumps({"target": a.label, "rows_checked": len(ref["rows"]),
                      "ready_after_s": round(ready_s, 2),
                      "first_inference_ms": round(first_ms, 2),
                      "idle_rss_bytes": idle_rss,
                      "rss_after_requests_bytes": rss_bytes(a.pid)}, indent=2))


if __name__ == "__main__":
    main()
