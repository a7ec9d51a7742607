#!/usr/bin/env python3
"""Drift telemetry benchmarks: alert latency and control-plane ingest rate.

From the repository root, with release binaries and paho-mqtt:

    cargo build --release -p ferry --bin ferry -p ferry-agent --bin ferry-agent
    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install paho-mqtt==2.2.0
    /tmp/tv/bin/python scripts/bench/telemetry.py [--trials 5] [--devices 10000]

1. Alert latency: `ferry server` (embedded broker, SQLite) and one
   `ferry-agent` with 1 s windows serving the breast_cancer fixture. Held-out
   rows stream at --rate rows/s for 3 s (no alert), then the shifted rows;
   the time from the first shifted row sent to the drift alert listed by
   `GET /api/v1/alerts?kind=drift` (polled every 20 ms), per trial.
2. Ingest: --devices simulated devices each publish --rounds drift
   summaries (a real 30-feature summary captured from the agent, re-labelled)
   at QoS 1 through the embedded broker; the rate at which the control plane
   stores them (counted in its SQLite database), from the first publish to
   the last stored, and the publisher's own rate for comparison.

FERRY_BENCH_BIN selects the binaries' directory (default target/release).
--broker mqtt://127.0.0.1:1883 runs both against an external broker
(Mosquitto speaks MQTT 5, which agent and control plane then use) instead
of the embedded rumqttd (MQTT 3.1.1 only).
"""

import argparse
import csv
import http.client
import json
import os
import shutil
import sqlite3
import sys
import threading
import time

import paho.mqtt.client as mqtt

from benchproc import Proc, sh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REL = os.environ.get("FERRY_BENCH_BIN", os.path.join(ROOT, "target", "release"))
WORK = os.path.join(ROOT, "target", "telemetry-bench")
BROKER = None  # --broker
FIX = os.path.join(ROOT, "tests", "fixtures")
ADMIN = "fy_" + "0" * 62 + "c3"


def rows(name):
    with open(os.path.join(FIX, "psi", name)) as f:
        r = csv.reader(f)
        next(r)
        return [[float(x) for x in row] for row in r if row]


class Api:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.c = http.client.HTTPConnection(host, int(port), timeout=30)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        self.c.request(method, path, body=data, headers={
            "authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
        r = self.c.getresponse()
        return r.status, json.loads(r.read() or b"null")


def setup(label):
    work = os.path.join(WORK, label)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    ferry = os.path.join(REL, "ferry")
    env = dict(os.environ, HOME=work, FERRY_BOOTSTRAP_TOKEN=ADMIN, FERRY_LOG="warn")
    for name in ["root", "pub"]:
        sh(ferry, "key", "generate", "--out", f"{work}/keys", "--name", name)
    sh(ferry, "trust", "init", "--root-key", f"{work}/keys/root.key", "--publisher",
       f"{work}/keys/pub.pub", "--tenant", "default", "--out", f"{work}/trust.root")
    m = os.path.join(FIX, "models")
    sh(ferry, "bundle", "build", f"{m}/bc_logreg.onnx", "--name", "bc", "--version", "1",
       "--baseline", f"{m}/bc_logreg.baseline.csv", "--sign-with", f"{work}/keys/pub.key",
       "--out", f"{work}/bc.ferry")
    mqtt_args = ["--mqtt-url", BROKER] if BROKER else ["--mqtt-listen", "127.0.0.1:0"]
    server = Proc([ferry, "server", "--http", "127.0.0.1:0", *mqtt_args,
                   "--rate-limit-per-minute", "0", "--data", f"{work}/server"], env=env,
                  log=f"{work}/server.log")
    http_addr = server.wait_line("ferry server listening on http://").split()[0]
    broker = server.wait_line("ferry server MQTT telemetry: ").split(" at ")[1]
    cenv = dict(env, FERRY_SERVER=f"http://{http_addr}", FERRY_TOKEN=ADMIN)
    sh(ferry, "trust", "push", f"{work}/trust.root", env=cenv)
    sh(ferry, "model", "push", f"{work}/bc.ferry", env=cenv)
    api = Api(http_addr)
    s, v = api.call("POST", "/api/v1/models/bc/drift-config", {
        "psi_threshold": 0.3, "min_drifted_rows": 100, "cooldown_secs": 3600})
    assert s == 200, v
    return work, env, server, http_addr, broker, api


def alert_trial(rate, captured):
    work, env, server, http_addr, broker, api = setup("latency")
    agent = None
    try:
        agent = Proc([os.path.join(REL, "ferry-agent"), "run", "--bundle", f"{work}/bc.ferry",
                      "--trust", f"{work}/trust.root", "--listen", "127.0.0.1:0", "--data",
                      f"{work}/agent", "--mqtt-url", broker, "--tenant", "default", "--device",
                      "bench-1", "--window-rows", "0", "--window-secs", "1"], env=env,
                     log=f"{work}/agent.log")
        a_host, a_port = agent.wait_line("ferry-agent listening on http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(a_host, int(a_port), timeout=30)
        if captured is not None:
            host, port = broker.removeprefix("mqtt://").rsplit(":", 1)
            sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-capture")
            sub.on_message = lambda c, u, m: captured.append(m.payload)
            sub.connect(host, int(port))
            sub.subscribe("ferry/v1/default/+/drift", qos=1)
            sub.loop_start()

        def stream(data, seconds=None, until=None):
            i, start = 0, time.time()
            first = None
            while True:
                now = time.time()
                if seconds is not None and now - start >= seconds:
                    return first
                if until is not None and until():
                    return first
                due = start + i / rate
                if due > now:
                    time.sleep(due - now)
                row = data[i % len(data)]
                body = json.dumps({"id": f"r{i}", "inputs": [{"name": "input", "shape": [1, len(row)],
                                   "datatype": "FP32", "data": row}]})
                conn.request("POST", "/v2/models/bc/infer", body=body,
                             headers={"content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                assert r.status == 200, r.status
                if first is None:
                    first = time.time()
                i += 1

        stream(rows("bc_test.csv"), seconds=3)
        s, v = api.call("GET", "/api/v1/alerts?kind=drift")
        assert s == 200 and not v["alerts"], v
        seen = {}

        def poll():
            a = Api(http_addr)
            while "t" not in seen:
                _, v = a.call("GET", "/api/v1/alerts?kind=drift")
                if v["alerts"]:
                    seen["t"] = time.time()
                time.sleep(0.02)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        t0 = stream(rows("bc_shifted.csv"), until=lambda: "t" in seen)
        th.join(30)
        if captured is not None:
            sub.loop_stop()
        return seen["t"] - t0
    finally:
        if agent:
            agent.stop()
        server.stop()


def ingest(devices, rounds, template):
    work, env, server, http_addr, broker, api = setup("ingest")
    try:
        host, port = broker.removeprefix("mqtt://").rsplit(":", 1)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
        pub.max_inflight_messages_set(1000)
        pub.max_queued_messages_set(0)
        pub.connect(host, int(port))
        pub.loop_start()
        base = json.loads(template)
        total = devices * rounds
        msgs = []
        for r in range(rounds):
            for d in range(devices):
                s = dict(base)
                s["device"] = f"sim-{d:05d}"
                s["seq"] = 10 + r
                msgs.append((f"ferry/v1/default/sim-{d:05d}/drift", json.dumps(s)))
        db = sqlite3.connect(f"file:{work}/server/ferry.db?mode=ro", uri=True, timeout=30)

        def stored():
            return db.execute("SELECT count(*) FROM telemetry_windows").fetchone()[0]

        t0 = time.time()
        infos = [pub.publish(t, p, qos=1) for t, p in msgs]
        for i in infos:
            i.wait_for_publish(60)
        t_pub = time.time()
        while True:
            n = stored()
            if n >= total or time.time() - t0 > 600:
                break
            time.sleep(0.05)
        t_end = time.time()
        pub.loop_stop()
        return {
            "summaries": total,
            "payload_bytes": len(msgs[0][1]),
            "stored": n,
            "publish_s": round(t_pub - t0, 2),
            "publisher_per_s": round(total / (t_pub - t0)),
            "stored_s": round(t_end - t0, 2),
            "ingest_per_s": round(n / (t_end - t0)),
        }
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--broker", default=None,
                    help="external broker URL (e.g. mqtt://127.0.0.1:1883, Mosquitto: MQTT 5) "
                         "instead of the embedded rumqttd (MQTT 3.1.1)")
    ap.add_argument("--rate", type=float, default=300, help="rows/s sent to the agent")
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    global BROKER
    BROKER = a.broker
    captured = []
    lat = []
    for i in range(a.trials):
        lat.append(alert_trial(a.rate, captured if i == 0 else None))
        print(f"trial {i + 1}: first drifted row -> alert {lat[-1]:.2f} s", file=sys.stderr)
    lat.sort()
    print(json.dumps({"alert_latency_s": [round(x, 2) for x in lat],
                      "median_s": round(lat[len(lat) // 2], 2), "max_s": round(lat[-1], 2)}))
    if not captured:
        sys.exit("no drift summary captured from the agent")
    print(json.dumps(ingest(a.devices, a.rounds, captured[0])))


if __name__ == "__main__":
    main()
