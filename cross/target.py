#!/usr/bin/env python3
"""Build ferry-agent for a firmware target and check its budgets.

    cross/target.py list
    cross/target.py build NAME            # build, strip, check the size budget
    cross/target.py path NAME             # print the built binary's path

A target is a TOML file in firmware-targets/ naming the triple, cargo
features, release profile and budgets. Cross targets build with Debian's
rustc-web (cross/setup.sh installs it) into target/cross/, so they never
disturb the host toolchain's build cache.
"""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "firmware-targets"


def load(name):
    path = TARGETS / f"{name}.toml"
    if not path.exists():
        sys.exit(f"unknown target {name!r}; known: {', '.join(names())}")
    with open(path, "rb") as f:
        return tomllib.load(f)


def names():
    return sorted(p.stem for p in TARGETS.glob("*.toml"))


def target_dir(t):
    return ROOT / "target" / ("cross" if t["toolchain"] != "host" else "edge")


def binary(t):
    return target_dir(t) / t["triple"] / "edge" / "ferry-agent"


def build(t):
    env = dict(os.environ)
    prof = t.get("profile", {})
    # A custom profile, configured from the target file through cargo's env.
    env["CARGO_PROFILE_EDGE_INHERITS"] = "release"
    for key, value in prof.items():
        env_key = "CARGO_PROFILE_EDGE_" + key.upper().replace("-", "_")
        env[env_key] = str(value).lower() if isinstance(value, bool) else str(value)
    env["CARGO_TARGET_DIR"] = str(target_dir(t))
    if t["toolchain"] == "debian-rustc-web":
        if not Path("/usr/bin/rustc").exists():
            sys.exit("Debian's rustc-web is missing: run cross/setup.sh first")
        env["RUSTC"] = "/usr/bin/rustc"
    cmd = ["cargo", "build", "--locked", "-p", "ferry-agent", "--bin", "ferry-agent",
           "--profile", "edge", "--target", t["triple"]]
    if t.get("features"):
        cmd += ["--features", ",".join(t["features"])]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def check(t):
    b = binary(t)
    size = b.stat().st_size
    budget = t["budget"]["binary_bytes"]
    report = {"target": t["name"], "triple": t["triple"], "binary": str(b),
              "binary_bytes": size, "budget_bytes": budget, "within_budget": size <= budget}
    print(json.dumps(report, indent=2))
    return size <= budget


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("list", "build", "path"):
        sys.exit(__doc__)
    if sys.argv[1] == "list":
        for n in names():
            t = load(n)
            print(f"{n:16} {t['triple']:36} budget {t['budget']['binary_bytes'] / 1e6:.1f} MB")
        return
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    t = load(sys.argv[2])
    if sys.argv[1] == "path":
        print(binary(t))
        return
    build(t)
    if not check(t):
        sys.exit(f"{t['name']}: binary over its size budget")


if __name__ == "__main__":
    main()
