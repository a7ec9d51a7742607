#!/usr/bin/env python3
"""Reference values for control-plane/src/rollout/stats.rs, from scipy.

Run: python3 scripts/rollout-stats-reference.py (needs numpy and scipy).
Prints Rust constant rows; the unit tests embed them and check the Rust
statistics agree to 1e-9.

- two-proportion z test, pooled variance, H1: p1 < p2 (statsmodels'
  proportions_ztest(alternative="smaller")), p-value from scipy.stats.norm;
- one-sample z test with the null's standard error, H1: p < p0;
- PSI between class distributions (fractions floored at 1e-4, as
  ferry_protocol::baseline::PSI_EPS): sum of scipy.special.rel_entr both ways;
- Jensen-Shannon divergence in bits: scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2.
"""
import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import norm

PSI_EPS = 1e-4


def two_proportion(x1, n1, x2, n2):
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (p1 - p2) / se if se > 0 else 0.0
    return float(z), float(norm.cdf(z))


def one_proportion(x, n, p0):
    z = (x / n - p0) / np.sqrt(p0 * (1 - p0) / n)
    return float(z), float(norm.cdf(z))


def psi(p, q):
    p = np.maximum(np.asarray(p, float) / sum(p), PSI_EPS)
    q = np.maximum(np.asarray(q, float) / sum(q), PSI_EPS)
    # sum((q - p) * ln(q / p)) = sum(rel_entr(q, p) + rel_entr(p, q)).
    return float(np.sum(rel_entr(q, p) + rel_entr(p, q)))


def js(p, q):
    return float(jensenshannon(p, q, base=2) ** 2)


TWO = [(160, 200, 180, 200), (850, 1000, 900, 1000), (45, 50, 90, 100), (70, 100, 65, 90), (300, 400, 250, 300)]
ONE = [(80, 100, 0.85), (930, 1000, 0.9), (170, 200, 0.9)]
DIST = [([500, 300, 200], [400, 350, 250]), ([900, 100], [500, 500]), ([10, 0, 90], [0, 20, 80])]

print("const TWO_PROPORTION: [(u64, u64, u64, u64, f64, f64); %d] = [" % len(TWO))
for x1, n1, x2, n2 in TWO:
    z, p = two_proportion(x1, n1, x2, n2)
    print(f"    ({x1}, {n1}, {x2}, {n2}, {z!r}, {p!r}),")
print("];")
print("const ONE_PROPORTION: [(u64, u64, f64, f64, f64); %d] = [" % len(ONE))
for x, n, p0 in ONE:
    z, p = one_proportion(x, n, p0)
    print(f"    ({x}, {n}, {p0!r}, {z!r}, {p!r}),")
print("];")
print("const DISTANCES: [(&[u64], &[u64], f64, f64); %d] = [" % len(DIST))
for p, q in DIST:
    print(f"    (&{p}, &{q}, {psi(p, q)!r}, {js(p, q)!r}),")
print("];")
