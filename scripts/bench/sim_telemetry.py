#!/usr/bin/env python3
"""Simulated devices' telemetry into the control plane: how fast the
ingest stores what N devices publish, and how soon after a bad version is
deployed its bad windows are stored from every device.

From the repository root (any Python 3):

    python3 scripts/bench/sim_telemetry.py [--devices 300] [--window-secs 1]
        [--seconds 30] [--bin-dir target/debug]

Uses `e2e-ferry` (or `ferry`) and `ferry-fleet-sim` from --bin-dir (build
them first: `cargo build --workspace --bins`, or --release). Starts `ferry
server` with its embedded broker, enrolls N simulated devices with
`--telemetry` (each its own MQTT connection, signed summaries of 100
requests every --window-secs), deploys v1 (healthy profile) and reports:

  - enrolled and connected;
  - over --seconds with every device on v1: summaries stored per second
    (`ferry_telemetry_ingested_total` from GET /metrics) against what the
    devices publish (N / window), and refused or unauthenticated ones;
  - v2 deployed with `v2:error_rate=0.2,accuracy=0.8`: deploy -> every
    device active on v2, deploy -> the first v2 window stored, deploy ->
    v2 windows stored from every device.
"""

import argparse
import json
import os
import re
import shutil
import time
import urllib.request

from benchproc import ADMIN, ROOT, Proc, ferry_bin, sh, signed_versions, start_server



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=300)
    ap.add_argument("--window-secs", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "debug"))
    a = ap.parse_args()
    bins = a.bin_dir
    ferry = ferry_bin(bins)
    work = os.path.join(ROOT, "target", "sim-telemetry-bench")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, HOME=work, FERRY_BOOTSTRAP_TOKEN=ADMIN, FERRY_LOG="warn")
    signed_versions(ferry, work, (1, 2))
    server, url, quic = start_server(ferry, work, env)
    sim = None
    try:
        cenv = dict(env, FERRY_SERVER=url, FERRY_TOKEN=ADMIN)
        cli = lambda *args: sh(ferry, *args, env=cenv)
        cli("trust", "push", f"{work}/trust.root")
        for v in (1, 2):
            cli("model", "push", f"{work}/m{v}.ferry")
        minted = json.loads(cli("device", "token", "create", "--labels", "fleet=sim", "--uses",
                                str(a.devices), "--ca-out", f"{work}/ca.pem", "--json"))
        t = time.time()
        sim = Proc([os.path.join(bins, "ferry-fleet-sim"), "--server", quic, "--token",
                    minted["token"], "--ca", f"{work}/ca.pem", "--root-fingerprint",
                    minted["root_fingerprint"], "--dir", f"{work}/sim", "--devices",
                    str(a.devices), "--timeout-secs", "600", "--telemetry",
                    "--telemetry-window-secs", str(a.window_secs),
                    "--telemetry-profile", "default:error_rate=0,accuracy=0.95",
                    "--telemetry-profile", "v2:error_rate=0.2,accuracy=0.8"],
                   env=dict(os.environ, FERRY_LOG="warn"), log=f"{work}/sim.log")
        sim.wait_line("telemetry ")
        while sum(1 for d in json.loads(cli("device", "list", "--json"))["devices"]
                  if d.get("connected")) < a.devices:
            time.sleep(0.5)
        print(f"{a.devices} devices enrolled and connected in {time.time() - t:.1f}s")

        def counter(name):
            req = urllib.request.Request(f"{url}/metrics",
                                         headers={"authorization": f"Bearer {ADMIN}"})
            text = urllib.request.urlopen(req).read().decode()
            m = re.search(rf"^{name}(?:{{[^}}]*}})? (\d+)", text, re.M)
            return int(m.group(1)) if m else 0

        def deploy_and_wait(version):
            t0 = time.time()
            dep = json.loads(cli("deploy", "m", "--version", str(version), "--selector",
                                 "fleet=sim", "--json"))["id"]
            while json.loads(cli("deployments", dep, "--json")).get("summary", {}).get(
                    "active", 0) < a.devices:
                time.sleep(0.25)
            return t0, time.time()

        deploy_and_wait(1)
        time.sleep(2 * a.window_secs)
        n0, t0 = counter("ferry_telemetry_ingested_total"), time.time()
        time.sleep(a.seconds)
        n1, t1 = counter("ferry_telemetry_ingested_total"), time.time()
        rate = (n1 - n0) / (t1 - t0)
        print(f"ingest: {rate:.0f} messages stored/s over {t1 - t0:.0f}s "
              f"(devices publish {a.devices / a.window_secs:.0f} summaries/s plus health)")
        for name in ["ferry_telemetry_refused_total", "ferry_telemetry_unauthenticated_total",
                     "ferry_telemetry_rate_limited_total"]:
            print(f"  {name} {counter(name)}")

        start, active = deploy_and_wait(2)
        first = None
        while True:
            v = json.loads(cli("model", "metrics", "m", "--version", "2", "--limit", "10000",
                               "--json"))
            devices = {w["device"] for w in v["windows"]}
            if devices and first is None:
                first = time.time()
            if len(devices) >= a.devices:
                break
            time.sleep(0.25)
        done = time.time()
        print(f"v2 deployed: every device active after {active - start:.1f}s, first v2 window "
              f"stored after {first - start:.1f}s, v2 windows from all {a.devices} devices "
              f"after {done - start:.1f}s")
    finally:
        if sim:
            sim.stop()
        server.stop()


if __name__ == "__main__":
    main()
