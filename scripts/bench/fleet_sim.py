#!/usr/bin/env python3
"""The fleet benchmark: N simulated agents receive a B-MB bundle.

From the repository root (Python 3 with `onnx`, e.g. the .venv made by
scripts/python-env.sh plus tests/fixtures/requirements.txt):

    .venv/bin/python scripts/bench/fleet_sim.py [--devices 1000] [--mb 5]
                     [--single-mb 100] [--no-single] [--cache-mb 64]
                     [--max-rss-mb 300] [--debug] [--quinn]

Builds `ferry` and `ferry-fleet-sim` (release), makes a signed bundle around
an ONNX model of about B MB (one MatMul with a large initializer), starts
`ferry server --quic` on loopback, enrolls N devices in one simulator process
(each with its own key, certificate and QUIC connection), waits until all are
connected, then deploys and reports:

  deploy -> all N verified and activated (simulator's clock)
  deploy -> the control plane shows all N active (polled every 0.25 s)
  the server's CPU seconds over that window and its peak RSS (VmHWM, from
  /proc/PID/status), with the bundle's size beside it: the server serves
  byte ranges from the artifact store through a cache bounded by
  --cache-mb (FERRY_FLEET_CACHE_MB), so its peak RSS must not grow with
  the bundle or the fleet. --max-rss-mb makes a peak above it an error
  (exit status 1), e.g. 1,000 devices x --mb 200 under 300 MB.

--debug uses (and builds) debug binaries in target/debug instead of a
release build: for checking the script at small scale (e.g. --devices 20
--mb 20 --no-single), not for figures.

Then one device and a --single-mb bundle over one connection, for the
single-connection transfer rate (deploy to verified activation, so it
includes the desired-state push, the download to disk and a SHA-256 pass).
With --quinn it also runs quinn's own bulk benchmark (large_data_1_stream,
from the quinn crate's source in the Cargo registry, built in
target/quinn-bench) for comparison on the same machine.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

from benchproc import Proc, cpu_seconds, peak_rss_mb, sh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REL = os.environ.get("FERRY_BENCH_BIN", os.path.join(ROOT, "target", "release"))
CACHE_MB = None
# The control plane's binary in REL: `ferry`, or with --debug the copy the
# e2e crate builds (`e2e-ferry`, the same code plus inert failpoints), so a
# debug check builds the ferry library once.
FERRY = "ferry"
WORK = os.path.join(ROOT, "target", "fleet-bench")
ADMIN = "fy_" + "0" * 62 + "b7"


def padded_model(path, mb):
    """Without the onnx package: the bc_logreg fixture with a `doc_string`
    (ModelProto field 6) of about `mb` MB appended, which protobuf merges
    in. The simulator verifies bundles but runs no model, so only the size
    matters."""
    src = os.path.join(ROOT, "tests", "fixtures", "models", "bc_logreg.onnx")
    pad = int(mb * (1 << 20))
    head = bytearray([0x32])
    n = pad
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    with open(path, "wb") as out:
        out.write(open(src, "rb").read())
        out.write(bytes(head))
        block = bytes(ord("a") + i % 26 for i in range(1 << 20))
        while pad > 0:
            out.write(block[: min(pad, len(block))])
            pad -= len(block)


def make_model(path, mb):
    try:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return padded_model(path, mb)

    width = max(1, int(mb * (1 << 20) / (30 * 4)))
    w = np.random.default_rng(0).standard_normal((30, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["output"])], "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", width])],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def run(devices, mb, label):
    work = os.path.join(WORK, label)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    ferry = os.path.join(REL, FERRY)
    env = dict(os.environ, HOME=work, FERRY_BOOTSTRAP_TOKEN=ADMIN)
    for name in ["root", "pub"]:
        sh(ferry, "key", "generate", "--out", f"{work}/keys", "--name", name)
    sh(ferry, "trust", "init", "--root-key", f"{work}/keys/root.key", "--publisher",
       f"{work}/keys/pub.pub", "--tenant", "default", "--out", f"{work}/trust.root")
    make_model(f"{work}/big.onnx", mb)
    sh(ferry, "bundle", "build", f"{work}/big.onnx", "--name", "big", "--version", "1",
       "--sign-with", f"{work}/keys/pub.key", "--out", f"{work}/big.ferry")
    size = os.path.getsize(f"{work}/big.ferry")

    senv = dict(env, FERRY_LOG=os.environ.get("SIM_LOG", "warn"))
    if CACHE_MB is not None:
        senv["FERRY_FLEET_CACHE_MB"] = str(CACHE_MB)
    server = Proc([ferry, "server", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0",
                   "--no-mqtt", "--data", f"{work}/server"], env=senv, log=f"{work}/server.log")
    sim = None
    try:
        url = server.wait_line("ferry server listening on ").split()[0]
        quic = server.wait_line("ferry fleet listening on quic://")
        cenv = dict(env, FERRY_SERVER=url, FERRY_TOKEN=ADMIN)
        cli = lambda *a: sh(ferry, *a, env=cenv)
        cli("trust", "push", f"{work}/trust.root")
        cli("model", "push", f"{work}/big.ferry")
        minted = json.loads(cli("device", "token", "create", "--labels", "fleet=sim", "--uses",
                                str(devices), "--ca-out", f"{work}/ca.pem", "--json"))
        tok, root_fp = minted["token"], minted["root_fingerprint"]
        # SIM_DIR (e.g. /dev/shm/fleet-sim): where the simulated devices keep
        # their keys and downloads; 1,000 devices share this one machine's disk.
        sim_dir = os.path.join(os.environ.get("SIM_DIR", work), label, "sim")
        shutil.rmtree(sim_dir, ignore_errors=True)
        t = time.time()
        sim = Proc([os.path.join(REL, "ferry-fleet-sim"), "--server", quic, "--token", tok,
                    "--ca", f"{work}/ca.pem", "--root-fingerprint", root_fp, "--dir", sim_dir, "--devices", str(devices),
                    "--timeout-secs", os.environ.get("SIM_TIMEOUT", "600")],
                   env=dict(os.environ, FERRY_LOG=os.environ.get("SIM_LOG", "warn")), log=f"{work}/sim.log")
        sim.wait_line("running ")
        while True:
            v = json.loads(cli("device", "list", "--json"))
            if sum(1 for d in v["devices"] if d.get("connected")) >= devices:
                break
            time.sleep(0.5)
        print(f"[{label}] {devices} devices enrolled and connected in {time.time() - t:.1f}s",
              file=sys.stderr)
        pid = server.p.pid
        rss_before_deploy = peak_rss_mb(pid)
        cpu0, sim_cpu0 = cpu_seconds(pid), cpu_seconds(sim.p.pid)
        t0 = time.time()
        dep = json.loads(cli("deploy", "big", "--version", "1", "--selector", "fleet=sim",
                             "--json"))["id"]
        try:
            line = sim.wait_line("activated=", timeout=float(os.environ.get("SIM_TIMEOUT", "600")))
        except SystemExit:
            # The memory figure holds for the part that ran; say it.
            print(f"[{label}] server peak RSS so far: {peak_rss_mb(pid):.1f} MB", file=sys.stderr)
            raise
        sim_done = float(re.search(r"at=([0-9.]+)", line).group(1))
        while True:
            v = json.loads(cli("deployments", dep, "--json"))
            if v.get("summary", {}).get("active", 0) >= devices:
                break
            time.sleep(0.25)
        cp_done = time.time()
        cpu = cpu_seconds(pid) - cpu0
        sim_cpu = cpu_seconds(sim.p.pid) - sim_cpu0
        return {
            "devices": devices,
            "bundle_bytes": size,
            "deploy_to_all_activated_s": round(sim_done - t0, 2),
            "deploy_to_control_plane_all_active_s": round(cp_done - t0, 2),
            "server_cpu_s": round(cpu, 2),
            "server_cpu_share_of_2_cores": round(cpu / (cp_done - t0) / 2, 2),
            "bundle_mb": round(size / (1 << 20), 1),
            "server_peak_rss_mb": round(peak_rss_mb(pid), 1),
            "server_peak_rss_before_deploy_mb": round(rss_before_deploy, 1),
            "simulator_cpu_s": round(sim_cpu, 2),
            "aggregate_mb_per_s": round(devices * size / (1 << 20) / (sim_done - t0), 1),
        }
    finally:
        if sim:
            sim.stop()
        server.stop()


def quinn_bulk():
    import glob
    src = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/quinn-0.11.*/")))
    if not src:
        return "quinn source not in the Cargo registry"
    dst = os.path.join(ROOT, "target", "quinn-bench")
    if not os.path.exists(dst):
        shutil.copytree(src[-1], dst)
        # Its own workspace, not ours (it sits under our target/).
        with open(os.path.join(dst, "Cargo.toml"), "a") as f:
            f.write("\n[workspace]\n")
    r = subprocess.run(["cargo", "bench", "--bench", "bench", "--features", "rustls-ring", "--",
                        "large_data_1_stream"], cwd=dst, capture_output=True, text=True)
    m = re.search(r"large_data_1_stream\b.*?= (\d+) MB/s", r.stdout)
    return f"{m.group(1)} MB/s" if m else (r.stdout + r.stderr)[-800:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--mb", type=float, default=5)
    ap.add_argument("--single-mb", type=float, default=100)
    ap.add_argument("--no-single", action="store_true",
                    help="skip the single-connection run")
    ap.add_argument("--cache-mb", type=int, default=None,
                    help="the server's artifact block cache (FERRY_FLEET_CACHE_MB; default 64)")
    ap.add_argument("--max-rss-mb", type=float, default=None,
                    help="fail when the server's peak RSS in the fleet run exceeds this")
    ap.add_argument("--debug", action="store_true",
                    help="debug binaries from target/debug (checks the script, not for figures)")
    ap.add_argument("--quinn", action="store_true")
    a = ap.parse_args()
    global REL, CACHE_MB, FERRY
    CACHE_MB = a.cache_mb
    if a.debug:
        FERRY = "e2e-ferry"
    if a.debug and "FERRY_BENCH_BIN" not in os.environ:
        REL = os.path.join(ROOT, "target", "debug")
        subprocess.run(["cargo", "build", "-q", "-p", "ferry-e2e", "--bins"],
                       cwd=ROOT, check=True)
    elif "FERRY_BENCH_BIN" not in os.environ:
        # Two builds: in one, Cargo would unify features and give `ferry` the
        # failpoints that ferry-e2e (the simulator's crate) enables.
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferry", "--bin", "ferry"],
                       cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ferry-e2e", "--bin",
                        "ferry-fleet-sim"], cwd=ROOT, check=True)
    fleet = run(a.devices, a.mb, "fleet")
    print(json.dumps(fleet, indent=2))
    if not a.no_single:
        single = run(1, a.single_mb, "single")
        single["single_connection_mb_per_s"] = single.pop("aggregate_mb_per_s")
        print(json.dumps(single, indent=2))
    if a.quinn:
        print(f"quinn large_data_1_stream (its own benchmark, same machine): {quinn_bulk()}")
    if a.max_rss_mb is not None and fleet["server_peak_rss_mb"] > a.max_rss_mb:
        sys.exit(f"the control plane's peak RSS {fleet['server_peak_rss_mb']} MB is over "
                 f"--max-rss-mb {a.max_rss_mb} ({a.devices} devices x {fleet['bundle_mb']} MB)")


if __name__ == "__main__":
    main()
