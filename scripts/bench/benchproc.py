"""Process helpers shared by the benchmark scripts in this folder."""

import os
import subprocess
import sys
import threading
import time


def sh(*args, env=None):
    r = subprocess.run(list(args), capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADMIN = "fy_" + "0" * 62 + "c9"


def ferry_bin(bin_dir):
    """`ferry` from bin_dir, or the tests' `e2e-ferry` when only that was built."""
    ferry = os.path.join(bin_dir, "ferry")
    return ferry if os.path.exists(ferry) else os.path.join(bin_dir, "e2e-ferry")


def signed_versions(ferry, work, versions):
    """Keys, a trust root for tenant `default` (work/trust.root) and model
    `m` at each of `versions` (the fixture logistic regression), signed, as
    work/m{v}.ferry."""
    for name in ["root", "pub"]:
        sh(ferry, "key", "generate", "--out", f"{work}/keys", "--name", name)
    sh(ferry, "trust", "init", "--root-key", f"{work}/keys/root.key", "--publisher",
       f"{work}/keys/pub.pub", "--tenant", "default", "--out", f"{work}/trust.root")
    model = os.path.join(ROOT, "tests", "fixtures", "models", "bc_logreg.onnx")
    for v in versions:
        sh(ferry, "bundle", "build", model, "--name", "m", "--version", str(v),
           "--sign-with", f"{work}/keys/pub.key", "--out", f"{work}/m{v}.ferry")


def start_server(ferry, work, env):
    """`ferry server` with QUIC and its embedded broker on free ports;
    (process, REST URL, QUIC address)."""
    server = Proc([ferry, "server", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0",
                   "--mqtt-listen", "127.0.0.1:0", "--data", f"{work}/server"],
                  env=env, log=f"{work}/server.log")
    url = server.wait_line("ferry server listening on ").split()[0]
    quic = server.wait_line("ferry fleet listening on quic://")
    return server, url, quic


def cpu_seconds(pid):
    """User plus system CPU seconds of a live process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    """Peak resident set (VmHWM) of a live process, MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid):
    """Current resident set (VmRSS) of a live process, MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Proc:
    """A child whose stdout lines are collected in the background."""

    def __init__(self, args, env=None, log=None):
        err = open(log, "w") if log else subprocess.DEVNULL
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()

    def wait_line(self, prefix, timeout=600):
        until = time.time() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line[len(prefix):].strip()
                if self.p.poll() is not None and not any(l.startswith(prefix) for l in self.lines):
                    sys.exit(f"{self.p.args[0]} exited ({self.p.returncode}) before {prefix!r}: {self.lines[-5:]}")
                left = until - time.time()
                if left <= 0:
                    sys.exit(f"timed out waiting for {prefix!r}")
                self.cv.wait(min(left, 1.0))

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
