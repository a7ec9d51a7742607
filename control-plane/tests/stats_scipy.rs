//! The rollout statistics checked live against scipy: the same counts go to
//! `scripts/rollout-stats-scipy.py` (scipy's chi-square test of a 2×2
//! table, `binomtest(...).proportion_ci("wilson")`, `rel_entr`,
//! `jensenshannon`) and to `ferry::rollout::stats`; p-values, z statistics,
//! intervals, PSI and Jensen–Shannon agree to 1e-6. Needs a Python with
//! scipy (FERRY_PYTHON, the repository's .venv from scripts/python-env.sh,
//! or python3): missing, the test fails under CI=true and skips otherwise.
#![allow(clippy::unwrap_used)]

use ferry::rollout::stats;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TOLERANCE: f64 = 1e-6;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Python that imports scipy, or `None` after the harness's skip (or
/// failure under CI).
fn python_with_scipy() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("FERRY_PYTHON").map(PathBuf::from),
        Some(repo().join(".venv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", "import scipy, numpy"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            ferry_test_harness::used_service(&format!("Python scipy ({})", p.display()));
            return Some(p);
        }
    }
    ferry_test_harness::skip_or_fail(
        "a Python with scipy (FERRY_PYTHON, or .venv from scripts/python-env.sh)",
    );
    None
}

fn classes(counts: &[u64]) -> BTreeMap<String, u64> {
    counts
        .iter()
        .enumerate()
        .map(|(i, c)| (i.to_string(), *c))
        .collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{what}: Rust {got:.12}, scipy {want:.12}"
    );
}

fn pair(v: &Value) -> (f64, f64) {
    (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
}

#[test]
fn proportion_tests_intervals_and_distances_agree_with_scipy() {
    let Some(python) = python_with_scipy() else {
        return;
    };
    // Hand-picked edges (tiny and huge samples, proportions at 0 and 1,
    // p-values near 0 and 1) plus seeded random counts.
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut two: Vec<[u64; 4]> = vec![
        [160, 200, 180, 200],
        [850, 1000, 900, 1000],
        [70, 100, 65, 90],
        [0, 50, 5, 50],
        [50, 50, 45, 50],
        [1, 3, 2, 3],
        [9_990, 10_000, 9_900, 10_000],
        [400_000, 1_000_000, 401_000, 1_000_000],
    ];
    while two.len() < 200 {
        let (n1, n2) = (rng.gen_range(1..5000u64), rng.gen_range(1..5000u64));
        let (x1, x2) = (rng.gen_range(0..=n1), rng.gen_range(0..=n2));
        // Both sides all successes or all failures: the chi-square table
        // has an empty column and scipy refuses it (Rust says z = 0, p = 0.5,
        // checked in the unit tests).
        if x1 + x2 == 0 || x1 + x2 == n1 + n2 {
            continue;
        }
        two.push([x1, n1, x2, n2]);
    }
    let mut one: Vec<(u64, u64, f64)> = vec![(80, 100, 0.85), (930, 1000, 0.9), (0, 10, 0.5)];
    while one.len() < 100 {
        let n = rng.gen_range(1..5000u64);
        one.push((rng.gen_range(0..=n), n, rng.gen_range(0.01..0.99)));
    }
    let mut wilson: Vec<[u64; 2]> = vec![
        [0, 1],
        [1, 1],
        [0, 200],
        [200, 200],
        [7, 10],
        [1, 1_000_000],
    ];
    while wilson.len() < 200 {
        let n = rng.gen_range(1..100_000u64);
        wilson.push([rng.gen_range(0..=n), n]);
    }
    let mut dist: Vec<(Vec<u64>, Vec<u64>)> = vec![
        (vec![500, 300, 200], vec![400, 350, 250]),
        (vec![900, 100], vec![500, 500]),
        (vec![10, 0, 90], vec![0, 20, 80]),
        (vec![5, 0], vec![0, 5]),
    ];
    while dist.len() < 100 {
        let k = rng.gen_range(2..8);
        let counts = |rng: &mut rand::rngs::StdRng| -> Vec<u64> {
            loop {
                let c: Vec<u64> = (0..k).map(|_| rng.gen_range(0..1000)).collect();
                if c.iter().sum::<u64>() > 0 {
                    return c;
                }
            }
        };
        let (p, q) = (counts(&mut rng), counts(&mut rng));
        dist.push((p, q));
    }

    let input = json!({"two": two, "one": one, "wilson": wilson, "dist": dist});
    let mut child = Command::new(&python)
        .arg(repo().join("scripts/rollout-stats-scipy.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scipy script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();

    for (c, w) in two.iter().zip(want["two"].as_array().unwrap()) {
        let t = stats::two_proportion_smaller(c[0], c[1], c[2], c[3]).unwrap();
        let (z, p) = pair(w);
        close(t.z, z, &format!("two-proportion z {c:?}"));
        close(t.p_value, p, &format!("two-proportion p {c:?}"));
    }
    for (c, w) in one.iter().zip(want["one"].as_array().unwrap()) {
        let t = stats::one_proportion_smaller(c.0, c.1, c.2).unwrap();
        let (z, p) = pair(w);
        close(t.z, z, &format!("one-proportion z {c:?}"));
        close(t.p_value, p, &format!("one-proportion p {c:?}"));
    }
    for (c, w) in wilson.iter().zip(want["wilson"].as_array().unwrap()) {
        let (lo, hi) = stats::wilson_interval(c[0], c[1], stats::Z_95).unwrap();
        let (want_lo, want_hi) = pair(w);
        close(lo, want_lo, &format!("wilson low {c:?}"));
        close(hi, want_hi, &format!("wilson high {c:?}"));
    }
    for ((p, q), w) in dist.iter().zip(want["dist"].as_array().unwrap()) {
        let (p, q) = (classes(p), classes(q));
        let (psi, js) = pair(w);
        close(
            stats::class_psi(&p, &q).unwrap(),
            psi,
            &format!("psi {p:?} {q:?}"),
        );
        close(
            stats::jensen_shannon(&p, &q).unwrap(),
            js,
            &format!("js {p:?} {q:?}"),
        );
    }
}
