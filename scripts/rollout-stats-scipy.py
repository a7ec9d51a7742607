#!/usr/bin/env python3
"""The rollout statistics computed by scipy, for the live check in
control-plane/tests/stats_scipy.rs (which runs this with the counts it
chose and compares with the Rust functions in rollout/stats.rs to 1e-6).

Reads one JSON object on stdin:
  {"two": [[x1, n1, x2, n2], ...], "one": [[x, n, p0], ...],
   "wilson": [[x, n], ...], "dist": [[[counts], [counts]], ...]}
and prints the same keys with scipy's answers:
  two:    [z, p] of the pooled two-proportion test of H1 x1/n1 < x2/n2, from
          scipy.stats.chi2_contingency(correction=False) (chi2 = z**2; the
          one-sided p is half the two-sided one on z's side), not from the
          formula the Rust code uses;
  one:    [z, p] of the one-sample z test of H1 x/n < p0 (scipy.stats.norm);
  wilson: [low, high] of binomtest(x, n).proportion_ci(0.95, "wilson");
  dist:   [psi, js]: PSI with fractions floored at 1e-4 (rel_entr both
          ways), Jensen-Shannon divergence in bits (jensenshannon ** 2).
"""
import json
import sys

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import binomtest, chi2_contingency, norm

PSI_EPS = 1e-4


def two(x1, n1, x2, n2):
    table = np.array([[x1, n1 - x1], [x2, n2 - x2]], dtype=float)
    chi2, p_two, _, _ = chi2_contingency(table, correction=False)
    z = float(np.sqrt(chi2)) * (-1.0 if x1 / n1 < x2 / n2 else 1.0)
    p = p_two / 2 if z < 0 else 1 - p_two / 2
    return [z, float(p)]


def one(x, n, p0):
    z = (x / n - p0) / np.sqrt(p0 * (1 - p0) / n)
    return [float(z), float(norm.cdf(z))]


def wilson(x, n):
    ci = binomtest(x, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def dist(p, q):
    pf = np.maximum(np.asarray(p, float) / sum(p), PSI_EPS)
    qf = np.maximum(np.asarray(q, float) / sum(q), PSI_EPS)
    psi = float(np.sum(rel_entr(qf, pf) + rel_entr(pf, qf)))
    js = float(jensenshannon(p, q, base=2) ** 2)
    return [psi, js]


cases = json.load(sys.stdin)
print(json.dumps({
    "two": [two(*c) for c in cases["two"]],
    "one": [one(*c) for c in cases["one"]],
    "wilson": [wilson(*c) for c in cases["wilson"]],
    "dist": [dist(*c) for c in cases["dist"]],
}))
