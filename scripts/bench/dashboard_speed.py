#!/usr/bin/env python3
"""The dashboard's speed on a seeded database (issue 21): 10,000 devices,
1,000 models x 5 versions, 30 days of one-minute windows from 200 devices,
on SQLite (the embedded default) or PostgreSQL; with --mlflow, the same
pages of MLflow's UI (model list, model version) on the same machine.

Measured, never asserted. Prints, per page and data endpoint, the server
time (request sent to last byte, loopback, one keep-alive connection)
p50/p95 over --requests requests after 5 warm-ups; first contentful paint
in Chromium (tests/browser/fcp.mjs); the JavaScript + CSS a page ships,
gzipped.

  .venv/bin/python scripts/bench/dashboard_speed.py --bin-dir target/release
  .venv/bin/python scripts/bench/dashboard_speed.py --db postgres --bin-dir target/release
  .venv/bin/python scripts/bench/dashboard_speed.py --mlflow   # needs target/bench-venv with mlflow
  .venv/bin/python scripts/bench/dashboard_speed.py --keep /work/dash-sqlite   # seed once,
  .venv/bin/python scripts/bench/dashboard_speed.py --keep /work/dash-sqlite   # then only measure

Binaries: `ferry` and `ferry-seed-dashboard` from --bin-dir (release:
`cargo build --release -p ferry --bin ferry` and
`cargo build --release -p ferry-e2e --bin ferry-seed-dashboard`).
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchproc import ADMIN, ROOT, Proc, ferry_bin, sh  # noqa: E402

MODEL = os.path.join(ROOT, "tests", "fixtures", "models", "bc_logreg.onnx")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def seed_models(ferry, work, url, models, versions):
    """Keys, the trust root, then `models` x `versions` signed bundles
    built and pushed through the CLI, four at a time."""
    for name in ["root", "pub"]:
        sh(ferry, "key", "generate", "--out", f"{work}/keys", "--name", name)
    sh(ferry, "trust", "init", "--root-key", f"{work}/keys/root.key", "--publisher",
       f"{work}/keys/pub.pub", "--tenant", "default", "--out", f"{work}/trust.root")
    env = dict(os.environ, FERRY_SERVER=url, FERRY_TOKEN=ADMIN)
    sh(ferry, "trust", "push", f"{work}/trust.root", env=env)
    os.makedirs(f"{work}/bundles", exist_ok=True)

    def one(mv):
        m, v = mv
        name = f"model-{m:04d}"
        out = f"{work}/bundles/{name}-{v}.ferry"
        team = ["risk", "growth", "ops", "search"][m % 4]
        auc = 0.80 + 0.15 * ((m * 7 + v * 13) % 100) / 100
        sh(ferry, "bundle", "build", MODEL, "--name", name, "--version", str(v),
           "--sign-with", f"{work}/keys/pub.key", "--metric", f"auc={auc:.4f}",
           "--tag", f"team={team}", "--out", out)
        sh(ferry, "model", "push", out, env=env)
        os.remove(out)

    # Versions of one model in order; models in parallel.
    def model(m):
        for v in range(1, versions + 1):
            one((m, v))

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(model, range(models)))


def sign_in(host, port):
    c = http.client.HTTPConnection(host, port, timeout=60)
    body = urllib.parse.urlencode({"token": ADMIN, "next": "/models"})
    c.request("POST", "/ui/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{host}:{port}"})
    r = c.getresponse()
    r.read()
    cookie = r.getheader("Set-Cookie", "").split(";")[0]
    if r.status != 303 or not cookie:
        sys.exit(f"sign-in failed: {r.status}")
    return cookie


def after_device_change(host, port, cookie, dev, n):
    """(p50, p95) ms of `/deployments` each time right after a label change
    of `dev` through the API: the page's device snapshot is read again
    whenever the tenant's devices or labels changed. The labels are put
    back as they were at the end."""
    c = http.client.HTTPConnection(host, port, timeout=120)
    auth = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    c.request("GET", f"/api/v1/fleet/devices/{dev}", headers=auth)
    r = c.getresponse()
    labels = json.loads(r.read()).get("labels", {})
    times = []
    for i in range(n):
        body = json.dumps({"labels": dict(labels, bench=str(i))})
        c.request("PUT", f"/api/v1/fleet/devices/{dev}/labels", body=body, headers=auth)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"label change: {r.status}")
        t = time.perf_counter()
        c.request("GET", "/deployments", headers={"Cookie": cookie})
        r = c.getresponse()
        r.read()
        times.append((time.perf_counter() - t) * 1000)
    c.request("PUT", f"/api/v1/fleet/devices/{dev}/labels", body=json.dumps({"labels": labels}),
              headers=auth)
    c.getresponse().read()
    return (pct(times, 0.5), pct(times, 0.95))


def timed(host, port, paths, headers, n):
    """{path: (status, p50 ms, p95 ms, bytes)} over one keep-alive connection."""
    out = {}
    c = http.client.HTTPConnection(host, port, timeout=120)
    for path in paths:
        status, size, times = 0, 0, []
        for i in range(5 + n):
            t = time.perf_counter()
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            body = r.read()
            dt = (time.perf_counter() - t) * 1000
            status, size = r.status, len(body)
            if i >= 5:
                times.append(dt)
        out[path] = (status, statistics.median(times), pct(times, 0.95), size)
        print(f"  {path:70s} {status}  p50 {out[path][1]:7.1f} ms  p95 {out[path][2]:7.1f} ms  {size:>8} B",
              flush=True)
    return out


def assets_gz(host, port, cookie, path):
    """Bytes of JavaScript + CSS a page loads, as served gzipped."""
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("GET", path, headers={"Cookie": cookie})
    page = c.getresponse().read().decode()
    total = {}
    for a in sorted(set(re.findall(r'(/ui/assets/[0-9a-f]+/[\w.]+)', page))):
        c.request("GET", a, headers={"Accept-Encoding": "gzip"})
        r = c.getresponse()
        total[a.rsplit("/", 1)[1]] = len(r.read())
    return total


def fcp(base, token, paths, mlflow=False):
    args = ["node", os.path.join(ROOT, "tests", "browser", "fcp.mjs"), base] + paths
    env = dict(os.environ, FERRY_TOKEN=token or "", FCP_NO_LOGIN="1" if mlflow else "")
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        print(r.stdout + r.stderr)
        return {}
    return json.loads(r.stdout.strip().splitlines()[-1])


def ferry_run(a, work):
    ferry = ferry_bin(a.bin_dir)
    seeder = os.path.join(a.bin_dir, "ferry-seed-dashboard")
    db = f"sqlite://{work}/server/ferry.db?mode=rwc"
    db_args = []
    created_pg = None
    # With --keep, a second run finds the seeded database and only measures.
    seeded = os.path.exists(f"{work}/seeded")
    if a.db == "postgres":
        name_file = f"{work}/pg-database"
        if seeded:
            with open(name_file) as fh:
                name = fh.read().strip()
        else:
            name = f"ferry_dash_{os.getpid()}"
            sh("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c", f"CREATE DATABASE {name}")
            with open(name_file, "w") as fh:
                fh.write(name)
        if not a.keep:
            created_pg = name
        db = f"postgres://postgres@127.0.0.1:5432/{name}"
        db_args = ["--database", db]
    os.makedirs(f"{work}/server", exist_ok=True)
    env = dict(os.environ, FERRY_BOOTSTRAP_TOKEN=ADMIN, FERRY_LOG="warn")
    server = Proc([ferry, "server", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0",
                   "--mqtt-listen", "127.0.0.1:0", "--data", f"{work}/server"] + db_args,
                  env=env, log=f"{work}/server.log")
    try:
        url = server.wait_line("ferry server listening on ").split()[0]
        host, port = urllib.parse.urlparse(url).hostname, urllib.parse.urlparse(url).port
        if seeded:
            print(f"measuring the database seeded earlier in {work}", flush=True)
        else:
            t = time.time()
            seed_models(ferry, work, url, a.models, a.versions)
            print(f"models: {a.models} x {a.versions} pushed in {time.time() - t:.0f} s", flush=True)
            t = time.time()
            out = sh(seeder, "--database", db, "--devices", str(a.devices), "--telemetry-devices",
                     str(a.telemetry_devices), "--days", str(a.days), "--model", "model-0000",
                     "--versions", f"{a.versions - 1},{a.versions}")
            print(out.strip())
            print(f"fleet and telemetry seeded in {time.time() - t:.0f} s", flush=True)
            # Two live deployments over the 10,000 devices, so that
            # /deployments counts states as an operator's would.
            env = dict(os.environ, FERRY_SERVER=url, FERRY_TOKEN=ADMIN)
            sh(ferry, "deploy", "model-0000", "--version", str(a.versions - 1),
               "--selector", "hw=rpi4", env=env)
            sh(ferry, "deploy", "model-0000", "--version", str(a.versions),
               "--selector", "site=site-07", env=env)
        cookie = sign_in(host, port)
        # The server rolls the last day's windows up: wait until it did.
        t = time.time()
        while True:
            c = http.client.HTTPConnection(host, port, timeout=60)
            c.request("GET", "/api/v1/models/model-0000/monitoring?range=24h",
                      headers={"Authorization": f"Bearer {ADMIN}"})
            m = json.loads(c.getresponse().read())
            w = sum(s["totals"]["windows"] for s in m.get("series", []))
            # A database seeded earlier was rolled up then (its last day
            # slides out of the range since).
            if seeded or w >= a.telemetry_devices * 24 * 60 * 0.98 or time.time() - t > 900:
                break
            time.sleep(2)
        print(f"last day rolled up by the server in {time.time() - t:.0f} s ({w} windows)", flush=True)
        open(f"{work}/seeded", "w").close()
        if a.seed_only:
            return {}
        dev = "dev_00000000"
        pages = [
            "/models", "/models?page=20", "/models?q=model-09", "/models?tag=team%3Arisk",
            "/models?metric=auc&min=0.9&max=0.95", "/models?sort=updated",
            "/models/model-0000", "/models/model-0000?version=3",
            "/models/model-0000/compare?v=1&v=5",
            "/models/model-0000/monitoring?range=1h", "/models/model-0000/monitoring?range=24h",
            "/models/model-0000/monitoring?range=7d", "/models/model-0000/monitoring?range=30d",
            f"/models/model-0000/monitoring?range=24h&device={dev}",
            f"/models/model-0000/monitoring?range=30d&device={dev}",
            "/fleet", "/fleet?page=100", "/fleet?label=site%3Dsite-07", "/fleet?sort=last_seen",
            "/fleet?state=disconnected", "/fleet?model=model-0000", f"/fleet/{dev}",
            "/deployments", "/rollouts", "/alerts", "/audit",
        ]
        data = [
            "/alerts/list",
            "/api/v1/models/model-0000/monitoring?range=24h",
            "/api/v1/models/model-0000/monitoring?range=30d",
            f"/api/v1/models/model-0000/monitoring?range=30d&device={dev}",
            "/api/v1/models?limit=25",
            "/api/v1/models/model-0000/versions",
        ]
        print(f"server time, {a.db}, {a.requests} requests each after 5 warm-ups:")
        res = timed(host, port, pages + data, {"Cookie": cookie}, a.requests)
        cold = after_device_change(host, port, cookie, dev, a.requests)
        print(f"  /deployments right after a label change (the changed devices read again): "
              f"p50 {cold[0]:8.1f} ms  p95 {cold[1]:8.1f} ms")
        gz = assets_gz(host, port, cookie, "/models/model-0000/monitoring?range=24h")
        print(f"JavaScript + CSS of the monitoring page, gzipped: {sum(gz.values())} B {gz}")
        f = fcp(url, ADMIN, ["/models", "/models/model-0000", "/models/model-0000/monitoring?range=30d",
                             "/fleet", "/alerts"])
        print(f"first contentful paint (Chromium): {json.dumps(f)}")
        return {"server": {p: r for p, r in res.items()}, "deployments_after_change": cold,
                "assets_gz": gz, "fcp": f}
    finally:
        server.stop()
        if created_pg:
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                            f"DROP DATABASE IF EXISTS {created_pg}"], capture_output=True)


def mlflow_run(a, work):
    venv = os.environ.get("BENCH_VENV", os.path.join(ROOT, "target", "bench-venv"))
    mlflow = os.path.join(venv, "bin", "mlflow")
    if not os.path.exists(mlflow):
        sys.exit(f"{mlflow} missing: python3 -m venv {venv} && {venv}/bin/pip install mlflow")
    port = 18571
    p = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{work}/mlflow.db",
                          "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                         stdout=subprocess.DEVNULL, stderr=open(f"{work}/mlflow.log", "w"),
                         start_new_session=True)
    try:
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(1)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def post(path, body):
            c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            answer = r.read()
            if r.status != 200:
                sys.exit(f"mlflow {path}: {r.status} {answer[:300]!r}")

        t = time.time()
        for m in range(a.models):
            name = f"model-{m:04d}"
            post("/api/2.0/mlflow/registered-models/create",
                 {"name": name, "tags": [{"key": "team", "value": ["risk", "growth", "ops", "search"][m % 4]}]})
            for v in range(1, a.versions + 1):
                post("/api/2.0/mlflow/model-versions/create", {"name": name, "source": f"s3://bench/{name}/{v}"})
        print(f"mlflow: {a.models} x {a.versions} registered in {time.time() - t:.0f} s", flush=True)
        paths = [
            "/",
            "/ajax-api/2.0/mlflow/registered-models/search?max_results=25&order_by=name%20ASC",
            "/ajax-api/2.0/mlflow/registered-models/search?max_results=25&filter=name%20ilike%20%27%25model-09%25%27",
            "/ajax-api/2.0/mlflow/registered-models/get?name=model-0000",
            "/ajax-api/2.0/mlflow/model-versions/search?filter=name%3D%27model-0000%27",
            "/ajax-api/2.0/mlflow/model-versions/get?name=model-0000&version=3",
        ]
        print(f"server time, MLflow UI data, {a.requests} requests each after 5 warm-ups:")
        res = timed("127.0.0.1", port, paths, {}, a.requests)
        f = fcp(f"http://127.0.0.1:{port}", None, ["/#/models", "/#/models/model-0000/versions/3"], mlflow=True)
        print(f"first contentful paint (Chromium): {json.dumps(f)}")
        return {"server": res, "fcp": f}
    finally:
        os.killpg(p.pid, 15)
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--models", type=int, default=1_000)
    ap.add_argument("--versions", type=int, default=5)
    ap.add_argument("--telemetry-devices", type=int, default=200)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--mlflow", action="store_true", help="measure MLflow's UI instead")
    ap.add_argument("--keep", metavar="DIR",
                    help="seed into DIR and keep it; a later run with the same DIR only measures")
    ap.add_argument("--seed-only", action="store_true", help="with --keep: seed, do not measure")
    a = ap.parse_args()
    if a.seed_only and not a.keep:
        ap.error("--seed-only needs --keep")
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
    work = a.keep or tempfile.mkdtemp(prefix="ferry-dash-")
    try:
        out = mlflow_run(a, work) if a.mlflow else ferry_run(a, work)
        with open(os.path.join(work, "..", f"dashboard-speed-{'mlflow' if a.mlflow else a.db}.json"), "w") as fh:
            json.dump(out, fh, indent=2)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
