#!/usr/bin/env python3
"""Fails when a source file outgrows LIMIT lines without a reason on record.

Counts the lines of every tracked `src/**/*.rs` file up to its first
`#[cfg(test)]` (unit tests at the end of a file do not count; integration
tests, benches and examples are not under `src/`). A file over the limit
must be named, in backticks, in the "Large files" section of
ARCHITECTURE.md, with the reason it stays whole.
"""
import os
import re
import subprocess
import sys

LIMIT = 700
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_lines(path):
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#[cfg(test)]"):
                break
            n += 1
    return n


def allowed():
    text = open(os.path.join(ROOT, "ARCHITECTURE.md"), encoding="utf-8").read()
    m = re.search(r"^## Large files\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return set(re.findall(r"`([^`]+\.rs)`", m.group(1))) if m else set()


def main():
    files = subprocess.run(
        ["git", "ls-files", "*.rs"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    ok = allowed()
    over = []
    for f in files:
        if "/src/" not in f or not os.path.exists(os.path.join(ROOT, f)):
            continue
        n = code_lines(os.path.join(ROOT, f))
        if n > LIMIT:
            over.append((n, f, f in ok))
    bad = [(n, f) for n, f, listed in over if not listed]
    for n, f, listed in sorted(over, reverse=True):
        print(f"{n:6} {f}{'  (ARCHITECTURE.md says why)' if listed else '  OVER LIMIT'}")
    for f in sorted(ok - {f for _, f, _ in over}):
        print(f"note: {f} is listed under 'Large files' but is within {LIMIT} lines")
    if bad:
        print(f"{len(bad)} file(s) over {LIMIT} lines without a reason in ARCHITECTURE.md")
        return 1
    print(f"every src file is within {LIMIT} lines or has a reason on record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
