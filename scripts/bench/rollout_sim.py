#!/usr/bin/env python3
"""Rollouts over simulated devices: a clean four-wave rollout, and how fast a
bad version's canaries are rolled back once its first bad window reaches
the control plane (issue 20's two goals: <= 45 s and <= 5 s).

From the repository root (any Python 3):

    python3 scripts/bench/rollout_sim.py [--devices 1000] [--bake-secs 10]
        [--window-secs 1] [--bin-dir target/release]

Uses `ferry` (or `e2e-ferry`) and `ferry-fleet-sim` from --bin-dir (build
them first: `cargo build --release -p ferry --bin ferry -p ferry-agent
--features sim --bin ferry-fleet-sim`). Starts `ferry server` with its
embedded broker and default rollout settings (1 s tick, 5 s lease),
enrolls N simulated devices with `--telemetry` (each its own MQTT
connection, a signed summary of 100 requests every --window-secs; v3's
profile has a 20 % error rate, every other version none), deploys v1 to
all, then:

  1. clean: `ferry rollout start m --version 2` with waves 1 %, 10 %, 50 %,
     100 %, --bake-secs per wave and an error-rate gate (max 5 %): start ->
     each wave -> finished;
  2. bad: v3 with the same waves, a 600 s bake and the same gate: the first
     v3 window stored (polled every 50 ms on the metrics API) -> rollout
     aborted -> every canary reported active on v2 again; and that no
     device outside the canary wave was ever given v3.

The control plane's CPU seconds and RSS are printed for each phase.
"""

import argparse
import json
import os
import shutil
import time
import urllib.request

from benchproc import (ADMIN, ROOT, Proc, cpu_seconds, ferry_bin, peak_rss_mb, rss_mb, sh,
                       signed_versions, start_server)

WAVES = 'waves = ["1%", "10%", "50%", "100%"]\n'
GATE = '\n[[model.gates]]\nmetric = "error_rate"\nagainst = "absolute"\nmax = 0.05\n'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--bake-secs", type=int, default=10)
    ap.add_argument("--window-secs", type=int, default=1)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    ferry = ferry_bin(a.bin_dir)
    work = os.path.join(ROOT, "target", "rollout-bench")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, HOME=work, FERRY_BOOTSTRAP_TOKEN=ADMIN, FERRY_LOG="warn")
    signed_versions(ferry, work, (1, 2, 3))
    with open(f"{work}/clean.toml", "w") as f:
        f.write(f"{WAVES}bake_secs = {a.bake_secs}\nmin_requests = 100\n{GATE}")
    with open(f"{work}/bad.toml", "w") as f:
        f.write(f"{WAVES}bake_secs = 600\nmin_requests = 100\n{GATE}")
    server, url, quic = start_server(ferry, work, env)
    sim = None
    try:
        pid = server.p.pid
        cenv = dict(env, FERRY_SERVER=url, FERRY_TOKEN=ADMIN)

        def cli(*args):
            return json.loads(sh(ferry, *args, "--json", env=cenv))

        def api(path):
            req = urllib.request.Request(f"{url}/api/v1{path}",
                                         headers={"authorization": f"Bearer {ADMIN}"})
            return json.loads(urllib.request.urlopen(req).read())

        def usage(label, since_cpu, since_t):
            cpu = cpu_seconds(pid) - since_cpu
            wall = time.time() - since_t
            print(f"  control plane over {label}: {cpu:.1f} CPU s in {wall:.1f} s "
                  f"({100 * cpu / wall:.0f} % of one core), RSS {rss_mb(pid):.0f} MiB, "
                  f"peak {peak_rss_mb(pid):.0f} MiB")

        sh(ferry, "trust", "push", f"{work}/trust.root", env=cenv)
        for v in (1, 2, 3):
            sh(ferry, "model", "push", f"{work}/m{v}.ferry", env=cenv)
        minted = cli("device", "token", "create", "--labels", "fleet=sim", "--uses",
                     str(a.devices), "--ca-out", f"{work}/ca.pem")
        t = time.time()
        sim = Proc([os.path.join(a.bin_dir, "ferry-fleet-sim"), "--server", quic, "--token",
                    minted["token"], "--ca", f"{work}/ca.pem", "--root-fingerprint",
                    minted["root_fingerprint"], "--dir", f"{work}/sim", "--devices",
                    str(a.devices), "--timeout-secs", "900", "--telemetry",
                    "--telemetry-window-secs", str(a.window_secs),
                    "--telemetry-profile", "default:error_rate=0,accuracy=0.95",
                    "--telemetry-profile", "v3:error_rate=0.2,accuracy=0.95"],
                   env=dict(os.environ, FERRY_LOG="warn"), log=f"{work}/sim.log")
        sim.wait_line("telemetry ")
        while sum(1 for d in api("/fleet/devices")["devices"] if d.get("connected")) < a.devices:
            time.sleep(0.5)
        print(f"{a.devices} devices enrolled and connected in {time.time() - t:.1f}s")
        dep = cli("deploy", "m", "--version", "1", "--selector", "fleet=sim")["id"]
        while api(f"/deployments/{dep}")["summary"].get("active", 0) < a.devices:
            time.sleep(0.25)
        time.sleep(3 * a.window_secs)
        cpu0, t0 = cpu_seconds(pid), time.time()
        time.sleep(10)
        usage("10 s of steady telemetry, no rollout", cpu0, t0)

        # 1. The clean rollout.
        cpu0, t0 = cpu_seconds(pid), time.time()
        rid = cli("rollout", "start", "m", "--version", "2", "--selector", "fleet=sim",
                  "--policy-file", f"{work}/clean.toml")["id"]
        wave, marks = 0, []
        while True:
            r = api(f"/rollouts/{rid}")["rollout"]
            if r["wave"] != wave:
                wave = r["wave"]
                marks.append(f"wave {wave} at {time.time() - t0:.1f}s")
            if r["phase"] in ("finished", "aborted", "paused"):
                break
            time.sleep(0.1)
        took = time.time() - t0
        print(f"clean rollout of v2 to {a.devices} devices, 4 waves of {a.bake_secs} s bake: "
              f"{r['phase']} in {took:.1f}s ({', '.join(marks)}; {r['active']} active)")
        usage("the clean rollout", cpu0, t0)
        if r["phase"] != "finished":
            raise SystemExit(f"the clean rollout ended {r['phase']}")
        v2dep = next(d["id"] for d in api("/deployments")["deployments"]
                     if d["created_by"] == f"rollout {rid}")

        # 2. The bad version: first bad evidence -> canaries back on v2.
        time.sleep(3 * a.window_secs)
        cpu0, t0 = cpu_seconds(pid), time.time()
        rid = cli("rollout", "start", "m", "--version", "3", "--selector", "fleet=sim",
                  "--policy-file", f"{work}/bad.toml")["id"]
        evidence = aborted = on_v3 = None
        while evidence is None:
            if on_v3 is None:
                v = api(f"/rollouts/{rid}")
                given = [d for w in v["waves"] for d in w["devices"]]
                if given and all(d["outcome"] == "active" for d in given):
                    on_v3 = time.time()
            if api("/models/m/metrics?version=3&limit=1")["windows"]:
                evidence = time.time()
            else:
                time.sleep(0.05)
        while True:
            v = api(f"/rollouts/{rid}")
            if aborted is None and v["rollout"]["phase"] == "aborted":
                aborted = time.time()
            if aborted is not None:
                canaries = {d["device"] for w in v["waves"] for d in w["devices"]}
                states = {d["device"]: d["state"] for d in api(f"/deployments/{v2dep}")["devices"]}
                if all(states.get(c) == "active" for c in canaries):
                    break
            time.sleep(0.05)
        done = time.time()
        seen_active = f"{on_v3 - t0:.1f}s" if on_v3 else "not seen before it"
        print(f"bad rollout of v3 (20 % errors): canaries active on v3 {seen_active}, "
              f"first v3 window stored {evidence - t0:.1f}s after start; aborted {aborted - evidence:.2f}s later; all {len(canaries)} "
              f"canaries reported active on v2 {done - evidence:.2f}s after the first bad "
              f"window (cause: {v['phase_detail'].get('cause', {}).get('report', {}).get('gate')})")
        usage("the bad rollout", cpu0, t0)
        records = cli("audit", "list", "--limit", "1000", "--action", "rollout.assign")
        if isinstance(records, dict):
            records = records.get("records", [])
        given = [r for r in records if r["target"] == rid]
        outside = len(v["waves"]) != 1 or len(given) != 1
        print(f"  waves given v3: {len(v['waves'])}, devices given v3: {len(canaries)} "
              f"({'only the canary wave' if not outside else 'MORE THAN THE CANARY WAVE'})")
    finally:
        if sim:
            sim.stop()
        server.stop()


if __name__ == "__main__":
    main()
