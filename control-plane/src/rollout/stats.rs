//! The statistics rollout gates rest on: one-sided proportion tests (is the
//! new version's accuracy worse?) and distances between two predicted-class
//! distributions (PSI, Jensen–Shannon). Pure functions; the reference values
//! in the tests come from `scripts/rollout-stats-reference.py` (scipy).

use std::collections::BTreeMap;

use ferry_protocol::baseline::PSI_EPS;

/// Standard normal cumulative distribution function.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// A one-sided z test that the first proportion is smaller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZTest {
    /// The statistic; negative when the first proportion is the smaller.
    pub z: f64,
    /// P(Z ≤ z): small when the first proportion is significantly smaller.
    pub p_value: f64,
}

/// Pooled two-proportion z test of H1: `x1/n1 < x2/n2` (as statsmodels'
/// `proportions_ztest(alternative="smaller")`). `None` when a side has no
/// rows. When both sides are all successes or all failures the proportions
/// are equal and the test says nothing: z = 0, p = 0.5.
pub fn two_proportion_smaller(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<ZTest> {
    if n1 == 0 || n2 == 0 || x1 > n1 || x2 > n2 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (x1 as f64 / n1f, x2 as f64 / n2f);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    let z = if se > 0.0 { (p1 - p2) / se } else { 0.0 };
    Some(ZTest {
        z,
        p_value: normal_cdf(z),
    })
}

/// One-sample z test of H1: `x/n < p0`, with the standard error under the
/// null hypothesis. `None` when there are no rows or `p0` is not in (0, 1).
pub fn one_proportion_smaller(x: u64, n: u64, p0: f64) -> Option<ZTest> {
    if n == 0 || x > n || !(p0 > 0.0 && p0 < 1.0) {
        return None;
    }
    let nf = n as f64;
    let z = (x as f64 / nf - p0) / (p0 * (1.0 - p0) / nf).sqrt();
    Some(ZTest {
        z,
        p_value: normal_cdf(z),
    })
}

/// The standard normal quantile of 0.975 (scipy's `norm.ppf(0.975)`): the
/// z of a two-sided 95 % interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for `x` successes in `n` trials at normal quantile
/// `z` (scipy's `binomtest(x, n).proportion_ci(method="wilson")` at
/// `z = norm.ppf(1 - (1 - confidence) / 2)`). Unlike the Wald interval it
/// stays inside [0, 1] and is not empty at 0 or `n` successes. `None`
/// without trials.
pub fn wilson_interval(x: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 || x > n {
        return None;
    }
    let nf = n as f64;
    let p = x as f64 / nf;
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let centre = (p + z2 / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt() / denom;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// The two distributions as fractions over the union of their classes.
/// `None` when either has no counts.
fn aligned(p: &BTreeMap<String, u64>, q: &BTreeMap<String, u64>) -> Option<Vec<(f64, f64)>> {
    let (np, nq) = (p.values().sum::<u64>(), q.values().sum::<u64>());
    if np == 0 || nq == 0 {
        return None;
    }
    let mut keys: Vec<&String> = p.keys().chain(q.keys()).collect();
    keys.sort();
    keys.dedup();
    Some(
        keys.into_iter()
            .map(|k| {
                let f = |m: &BTreeMap<String, u64>, n: u64| {
                    m.get(k).copied().unwrap_or(0) as f64 / n as f64
                };
                (f(p, np), f(q, nq))
            })
            .collect(),
    )
}

/// PSI between class counts `reference` and `observed`, with each fraction
/// floored at [`PSI_EPS`] as the drift PSI does.
pub fn class_psi(
    reference: &BTreeMap<String, u64>,
    observed: &BTreeMap<String, u64>,
) -> Option<f64> {
    let pairs = aligned(reference, observed)?;
    Some(
        pairs
            .into_iter()
            .map(|(p, q)| {
                let (p, q) = (p.max(PSI_EPS), q.max(PSI_EPS));
                (q - p) * (q / p).ln()
            })
            .sum(),
    )
}

/// Jensen–Shannon divergence in bits (0: same distribution, 1: disjoint)
/// between class counts; scipy's `jensenshannon(p, q, base=2) ** 2`.
pub fn jensen_shannon(p: &BTreeMap<String, u64>, q: &BTreeMap<String, u64>) -> Option<f64> {
    let pairs = aligned(p, q)?;
    let kl = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
    let js: f64 = pairs
        .into_iter()
        .map(|(a, b)| {
            let m = 0.5 * (a + b);
            0.5 * kl(a, m) + 0.5 * kl(b, m)
        })
        .sum();
    Some(js.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(counts: &[u64]) -> BTreeMap<String, u64> {
        counts
            .iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), *c))
            .collect()
    }

    fn close(got: f64, want: f64, what: &str) {
        assert!(
            (got - want).abs() <= 1e-9,
            "{what}: got {got:.15}, scipy says {want:.15}"
        );
    }

    // Reference values: `python3 scripts/rollout-stats-reference.py` (scipy
    // 1.17). Columns: inputs, z, p-value.
    const TWO_PROPORTION: [(u64, u64, u64, u64, f64, f64); 5] = [
        (160, 200, 180, 200, -2.800560168056019, 0.002550699823002496),
        (
            850,
            1000,
            900,
            1000,
            -3.3806170189140694,
            0.0003616163582150922,
        ),
        (45, 50, 90, 100, 0.0, 0.5),
        (70, 100, 65, 90, -0.33723862695081297, 0.36796851046303225),
        (
            300,
            400,
            250,
            300,
            -2.6590801173915533,
            0.003917716401625473,
        ),
    ];
    const ONE_PROPORTION: [(u64, u64, f64, f64, f64); 3] = [
        (80, 100, 0.85, -1.4002800840280079, 0.08071473118354189),
        (930, 1000, 0.9, 3.1622776601683826, 0.9992172988709987),
        (170, 200, 0.9, -2.3570226039551607, 0.009211062727049439),
    ];
    const DISTANCES: [(&[u64], &[u64], f64, f64); 3] = [
        (
            &[500, 300, 200],
            &[400, 350, 250],
            0.04117906668849436,
            0.007412237681599263,
        ),
        (
            &[900, 100],
            &[500, 500],
            0.8788898309344877,
            0.14679310243605215,
        ),
        (
            &[10, 0, 90],
            &[0, 20, 80],
            2.221283457598416,
            0.15212283558625198,
        ),
    ];

    #[test]
    fn two_proportion_test_matches_scipy() {
        for (x1, n1, x2, n2, z, p) in TWO_PROPORTION {
            let t = two_proportion_smaller(x1, n1, x2, n2).unwrap();
            close(t.z, z, "z");
            close(t.p_value, p, "p");
        }
        assert_eq!(two_proportion_smaller(1, 0, 1, 2), None);
        let same = two_proportion_smaller(10, 10, 20, 20).unwrap();
        assert_eq!((same.z, same.p_value), (0.0, 0.5));
    }

    #[test]
    fn one_proportion_test_matches_scipy() {
        for (x, n, p0, z, p) in ONE_PROPORTION {
            let t = one_proportion_smaller(x, n, p0).unwrap();
            close(t.z, z, "z");
            close(t.p_value, p, "p");
        }
        assert_eq!(one_proportion_smaller(1, 2, 1.0), None);
    }

    #[test]
    fn class_distances_match_scipy() {
        for (p, q, psi, js) in DISTANCES {
            let (p, q) = (classes(p), classes(q));
            close(class_psi(&p, &q).unwrap(), psi, "psi");
            close(jensen_shannon(&p, &q).unwrap(), js, "js");
        }
        let a = classes(&[1, 2, 3]);
        assert_eq!(jensen_shannon(&a, &a), Some(0.0));
        assert_eq!(jensen_shannon(&a, &BTreeMap::new()), None);
        let disjoint = jensen_shannon(&classes(&[5, 0]), &classes(&[0, 5])).unwrap();
        close(disjoint, 1.0, "disjoint js");
    }
}
