#!/usr/bin/env python3
"""Lists the `crate::`/`super::` edges between the modules of every crate in
the workspace and fails when they form a cycle.

A node is a module file (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). An
edge A -> B means code in A names an item of B (`use crate::b::X`,
`crate::b::f()`, `super::b::X`). A path that names an item a parent module
re-exports (`pub use child::X`) is followed to the child that defines it.
Edges between a module and its own ancestors are not counted: a parent
declares and re-exports its children, a child uses its parent's types, and
neither makes the two separable anyway. `#[cfg(test)]` blocks at the end of
a file are left out (tests may look anywhere).

Usage: scripts/module-cycles.py [--edges] [CRATE_DIR ...]
Exit status 1 when a cycle exists, with each cycle's modules printed.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["protocol", "mqtt", "agent", "control-plane", "tests"]

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_RE = re.compile(r"\b(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.S)
PUB_USE_RE = re.compile(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", re.S)
COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
STRING_RE = re.compile(r'"(?:\\.|[^"\\])*"')


def module_files(src):
    """Maps module path tuples to file paths for one crate's src/."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            elif len(parts) == 1 and parts[0] != "lib" and dirpath == src and f == "main.rs":
                parts = []
            mods[tuple(parts)] = os.path.join(dirpath, f)
    return mods


def strip(text):
    text = COMMENT_RE.sub("", text)
    text = STRING_RE.sub('""', text)
    m = re.search(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*\{", text)
    if m:
        text = text[: m.start()]
    return text


def expand_use_tree(tree):
    """`a::{self, b, c::{d, e as f}}` -> [a, a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+as\s+", "@", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, t):
        depth, start = 0, 0
        parts = []
        for i, ch in enumerate(t):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(t[start:i])
                start = i + 1
        parts.append(t[start:])
        for p in parts:
            if not p:
                continue
            brace = p.find("{")
            if brace >= 0 and p.endswith("}"):
                head = [s for s in p[:brace].split("::") if s]
                walk(prefix + head, p[brace + 1 : -1])
            else:
                segs = [s for s in p.split("@")[0].split("::") if s]
                if segs == ["self"]:
                    segs = []
                out.append(prefix + segs)

    walk([], tree)
    return out


def absolute(mod, segs):
    """Resolves `crate::`, `super::`, `self::` prefixes against module `mod`."""
    if not segs:
        return None
    head = segs[0]
    if head == "crate":
        return list(segs[1:])
    base = list(mod)
    rest = list(segs)
    while rest and rest[0] in ("super", "self"):
        if rest[0] == "super":
            if not base:
                return None
            base = base[:-1]
        rest = rest[1:]
    return base + rest


def crate_graph(crate_dir):
    src = os.path.join(ROOT, crate_dir, "src")
    if not os.path.isdir(src):
        return {}, {}
    mods = module_files(src)
    texts = {m: strip(open(p, encoding="utf-8").read()) for m, p in mods.items()}

    # name -> module that defines it, per module, from `pub use` re-exports.
    reexports = {m: {} for m in mods}
    for m, text in texts.items():
        for tree in PUB_USE_RE.findall(text):
            for segs in expand_use_tree(tree):
                if not segs:
                    continue
                if segs[0] in ("crate", "super", "self"):
                    target = absolute(m, segs)
                elif tuple(list(m) + [segs[0]]) in mods:
                    target = list(m) + segs
                else:
                    continue
                if target:
                    reexports[m][segs[-1]] = target

    def resolve(path, depth=0):
        """Longest module prefix of `path`, following re-exports."""
        for i in range(len(path), -1, -1):
            prefix = tuple(path[:i])
            if prefix in mods:
                if i < len(path) and depth < 8:
                    target = reexports[prefix].get(path[i])
                    if target and tuple(target) != tuple(path):
                        return resolve(target, depth + 1)
                return prefix
        return ()

    edges = {m: set() for m in mods}
    for m, text in texts.items():
        paths = []
        for tree in USE_RE.findall(text):
            for segs in expand_use_tree(tree):
                if segs and segs[0] in ("crate", "super", "self"):
                    paths.append(absolute(m, segs))
                elif segs and tuple(list(m) + [segs[0]]) in mods:
                    paths.append(list(m) + segs)
        for head, tail in PATH_RE.findall(re.sub(r"\buse\s+[^;]+;", "", text)):
            paths.append(absolute(m, [head] + [s for s in tail.split("::") if s]))
        for p in paths:
            if p is None:
                continue
            target = resolve(p)
            if target == m:
                continue
            # A module and its ancestors are not separable: skip those edges.
            if target == m[: len(target)] or m == target[: len(m)]:
                continue
            edges[m].add(target)
    return mods, edges


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) if m else "crate"


def main(argv):
    show_edges = "--edges" in argv
    crates = [a for a in argv if not a.startswith("--")] or CRATES
    cycles = 0
    for c in crates:
        _, edges = crate_graph(c)
        if show_edges:
            for m in sorted(edges):
                for t in sorted(edges[m]):
                    print(f"{c}: {name(m)} -> {name(t)}")
        for comp in sccs(edges):
            cycles += 1
            print(f"{c}: import cycle between " + ", ".join(name(m) for m in comp))
            for m in comp:
                for t in sorted(edges[m]):
                    if t in comp:
                        print(f"    {name(m)} -> {name(t)}")
    if cycles:
        print(f"{cycles} module cycle(s)")
        return 1
    print(f"no module cycles in {', '.join(crates)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
