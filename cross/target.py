#!/usr/bin/env python3
"""Build ferry-agent for a firmware target and check its budgets.

    cross/target.py list
    cross/target.py build NAME            # build, strip, check the size budget
    cross/target.py path NAME             # print the built binary's path
    cross/target.py runner NAME           # print the qemu-user command that runs it
    cross/target.py cargo NAME CMD ARGS   # run `cargo CMD --target TRIPLE ARGS` with
                                          # the target's toolchain (and qemu as runner)

A target is a TOML file in firmware-targets/ naming the triple, cargo
features, release profile and budgets. Cross targets build with Debian's
rustc-web (cross/setup.sh installs it) into target/cross/, so they never
disturb the host toolchain's build cache.

`build_std` in a target file: the target's standard library is built from
source (`cargo -Zbuild-std`, the rust-web-src package's sources for the same
rustc) instead of linking Debian's prebuilt multiarch one. "auto" does so
only when the prebuilt std for the triple is not installed (armv7: the
mirror's armhf index often cannot deliver libstd-rust-web-dev:armhf 1.96).
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


DEBIAN_RUSTC = "/usr/bin/rustc"
# Per architecture: qemu-user binary, the dynamic loader the binaries ask for,
# and the Debian cross package's sysroot holding a matching loader and libc.
EMULATION = {
    "aarch64": ("qemu-aarch64-static", "/lib/ld-linux-aarch64.so.1", "/usr/aarch64-linux-gnu"),
    "armv7": ("qemu-arm-static", "/lib/ld-linux-armhf.so.3", "/usr/arm-linux-gnueabihf"),
}


def rustc(*args):
    return subprocess.run([DEBIAN_RUSTC, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def prebuilt_std(triple):
    libdir = Path(rustc("--print", "target-libdir", "--target", triple))
    return any(libdir.glob("libstd-*.rlib"))


def std_sources():
    return Path(rustc("--print", "sysroot")) / "lib/rustlib/src/rust/library"


def uses_build_std(t):
    """Whether the target's std is built from source (see the module doc)."""
    mode = t.get("build_std", False)
    if t["toolchain"] != "debian-rustc-web" or mode is False:
        return False
    if mode == "auto" and prebuilt_std(t["triple"]):
        return False
    if mode not in (True, "auto"):
        sys.exit(f"{t['name']}: build_std must be true, false or \"auto\"")
    if not (std_sources() / "Cargo.lock").exists():
        sys.exit(f"{t['name']}: no prebuilt std for {t['triple']} and no std sources at "
                 f"{std_sources()}: run cross/setup.sh (it installs rust-web-src)")
    return True


def runner(t):
    """The qemu-user command line for the target's binaries ("" on the host).

    The loader and libc must come from one glibc build: the multiarch one
    (libc6:arm64 / libc6:armhf, which the prebuilt std packages pull in) when
    it is installed, else the cross package's sysroot, never a mix of the two
    (see .cargo/config.toml: a mismatched pair hangs in pthread_create)."""
    arch = t["triple"].split("-")[0]
    if t["toolchain"] == "host" or arch not in EMULATION:
        return ""
    qemu, loader, cross_sysroot = EMULATION[arch]
    if Path(loader).exists():
        return f"{qemu} -L /"
    if Path(cross_sysroot + loader).exists():
        return f"{qemu} -L {cross_sysroot}"
    sys.exit(f"{t['name']}: no {loader} (multiarch libc) nor {cross_sysroot}{loader} "
             "(cross libc): run cross/setup.sh")


def cargo_env(t):
    """Environment and extra cargo arguments for building for the target."""
    env = dict(os.environ)
    args = ["--target", t["triple"]]
    env["CARGO_TARGET_DIR"] = str(target_dir(t))
    if t["toolchain"] == "debian-rustc-web":
        if not Path(DEBIAN_RUSTC).exists():
            sys.exit("Debian's rustc-web is missing: run cross/setup.sh first")
        env["RUSTC"] = DEBIAN_RUSTC
        run = runner(t)
        if run:
            triple_env = t["triple"].upper().replace("-", "_")
            env[f"CARGO_TARGET_{triple_env}_RUNNER"] = run
        if uses_build_std(t):
            # -Z flags on the stable cargo and rustc, for this build only.
            env["RUSTC_BOOTSTRAP"] = "1"
            args.append("-Zbuild-std=std,panic_unwind")
    return env, args


def build(t):
    env, target_args = cargo_env(t)
    prof = t.get("profile", {})
    # A custom profile, configured from the target file through cargo's env.
    env["CARGO_PROFILE_EDGE_INHERITS"] = "release"
    for key, value in prof.items():
        env_key = "CARGO_PROFILE_EDGE_" + key.upper().replace("-", "_")
        env[env_key] = str(value).lower() if isinstance(value, bool) else str(value)
    cmd = ["cargo", "build", "--locked", "-p", "ferry-agent", "--bin", "ferry-agent",
           "--profile", "edge", *target_args]
    if t.get("default_features") is False:
        cmd.append("--no-default-features")
    if t.get("features"):
        cmd += ["--features", ",".join(t["features"])]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def cargo(t, argv):
    env, target_args = cargo_env(t)
    cmd = ["cargo", argv[0], *target_args, *argv[1:]]
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def check(t):
    b = binary(t)
    size = b.stat().st_size
    budget = t["budget"]["binary_bytes"]
    report = {"target": t["name"], "triple": t["triple"], "binary": str(b),
              "binary_bytes": size, "budget_bytes": budget, "within_budget": size <= budget,
              "std": "built from source" if uses_build_std(t) else
                     ("prebuilt" if t["toolchain"] != "host" else "host toolchain")}
    print(json.dumps(report, indent=2))
    return size <= budget


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("list", "build", "path", "runner", "cargo"):
        sys.exit(__doc__)
    if sys.argv[1] == "list":
        for n in names():
            t = load(n)
            print(f"{n:16} {t['triple']:36} budget {t['budget']['binary_bytes'] / 1e6:.1f} MB")
        return
    if sys.argv[1] == "cargo":
        if len(sys.argv) < 4:
            sys.exit(__doc__)
        sys.exit(cargo(load(sys.argv[2]), sys.argv[3:]))
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    t = load(sys.argv[2])
    if sys.argv[1] == "path":
        print(binary(t))
        return
    if sys.argv[1] == "runner":
        print(runner(t))
        return
    build(t)
    if not check(t):
        sys.exit(f"{t['name']}: binary over its size budget")


if __name__ == "__main__":
    main()
