//! Reference distributions and the drift statistic Ferry computes: quantile
//! PSI.
//!
//! Bin edges are fixed when a bundle is built, from the reference data the
//! operator has; the device streams rows and only ever counts them into those
//! bins, so it never needs the reference data itself.
//!
//! Convention (matched to 1e-9 against `tests/fixtures/psi/psi_reference.json`):
//! - edges `e_k = quantile(reference, k/10)`, `k = 1..9`, Hyndman–Fan type 7
//!   (numpy's default linear interpolation);
//! - `bin(x)` = the number of edges `<= x`, so 10 bins, the outer two
//!   open-ended, always 10 even when tied edges leave some empty;
//! - `p_i = max(ref_i / n_ref, 1e-4)`, `q_i = max(cur_i / n_cur, 1e-4)`;
//! - `PSI = Σ (q_i − p_i) · ln(q_i / p_i)`.
//!
//! Evidently computes PSI differently (equal-width bins over reference and
//! current data combined), which cannot be done on a device and reads higher
//! on undrifted data; see `docs/drift.md`.

use serde::{Deserialize, Serialize};

/// Bins per numeric feature unless the builder says otherwise.
pub const DEFAULT_BINS: usize = 10;
/// Floor on every fraction, so empty bins do not make PSI infinite.
pub const PSI_EPS: f64 = 1e-4;
/// Bin index reported for a missing (NaN) or unparseable value.
pub const MISSING_BIN: u8 = u8::MAX;
/// Most bins a feature may have (indices must fit below [`MISSING_BIN`]).
pub const MAX_BINS: usize = 254;

/// Per-feature reference distributions for one model input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Rows the reference was computed from.
    pub rows: u64,
    pub features: Vec<FeatureBaseline>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureBaseline {
    pub name: String,
    pub kind: FeatureKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeatureKind {
    /// `edges.len() + 1` bins; `expected[i]` is the reference fraction in bin
    /// `i` (unfloored). `min`/`max` bound the reference, for out-of-range
    /// counts.
    Numeric {
        edges: Vec<f64>,
        expected: Vec<f64>,
        min: f64,
        max: f64,
    },
    /// One bin per category seen in the reference, plus a last bin for
    /// anything else.
    Categorical {
        categories: Vec<String>,
        expected: Vec<f64>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BaselineError {
    #[error("feature {feature:?} has no reference values")]
    NoValues { feature: String },
    #[error("feature {feature:?}: {bins} bins requested, 2..={MAX_BINS} allowed")]
    BinCount { feature: String, bins: usize },
    #[error("feature {feature:?}: {categories} categories, at most {} allowed", MAX_BINS - 1)]
    TooManyCategories { feature: String, categories: usize },
    #[error("observed counts have {got} bins, the baseline has {expected}")]
    BinMismatch { expected: usize, got: usize },
    #[error("observed counts for {got} features, the baseline has {expected}")]
    FeatureMismatch { expected: usize, got: usize },
    #[error("no observed rows")]
    EmptyWindow,
}

/// One reference column, as the bundle builder reads it.
#[derive(Clone, Debug)]
pub enum Column {
    Numeric(Vec<f64>),
    Categorical(Vec<String>),
}

/// Type-7 quantile of sorted, NaN-free data (numpy's default `linear`).
///
/// Interpolates the way numpy does (`b − (b−a)(1−t)` when `t ≥ 0.5`) so the
/// edges are bit-identical to the reference implementation.
pub fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let h = (n - 1) as f64 * p;
    let lo = (h.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let t = h - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// `bins - 1` quantile edges of `values` (NaNs ignored).
pub fn quantile_edges(values: &[f64], bins: usize) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    (1..bins)
        .map(|k| quantile_sorted(&sorted, k as f64 / bins as f64))
        .collect()
}

/// The number of edges `<= x`: numpy's `searchsorted(edges, x, side='right')`.
pub fn numeric_bin(edges: &[f64], x: f64) -> usize {
    edges.partition_point(|e| *e <= x)
}

/// Population Stability Index of observed counts against expected fractions.
pub fn psi_from_fractions(expected: &[f64], observed: &[u64]) -> Result<f64, BaselineError> {
    if expected.len() != observed.len() {
        return Err(BaselineError::BinMismatch {
            expected: expected.len(),
            got: observed.len(),
        });
    }
    let n: u64 = observed.iter().sum();
    if n == 0 {
        return Err(BaselineError::EmptyWindow);
    }
    let n = n as f64;
    Ok(expected
        .iter()
        .zip(observed)
        .map(|(&p, &c)| {
            let p = p.max(PSI_EPS);
            let q = (c as f64 / n).max(PSI_EPS);
            (q - p) * (q / p).ln()
        })
        .sum())
}

/// PSI per feature of a window's bin counts against `baseline`.
///
/// `observed[f]` holds the counts for feature `f`, one per bin (missing values
/// are not part of PSI; they are reported separately).
pub fn psi(baseline: &Baseline, observed: &[Vec<u64>]) -> Result<Vec<f64>, BaselineError> {
    if observed.len() != baseline.features.len() {
        return Err(BaselineError::FeatureMismatch {
            expected: baseline.features.len(),
            got: observed.len(),
        });
    }
    baseline
        .features
        .iter()
        .zip(observed)
        .map(|(f, counts)| psi_from_fractions(f.expected(), counts))
        .collect()
}

impl FeatureBaseline {
    /// Builds a numeric feature's edges and expected fractions.
    pub fn numeric(name: &str, values: &[f64], bins: usize) -> Result<Self, BaselineError> {
        if !(2..=MAX_BINS).contains(&bins) {
            return Err(BaselineError::BinCount {
                feature: name.into(),
                bins,
            });
        }
        let present: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        if present.is_empty() {
            return Err(BaselineError::NoValues {
                feature: name.into(),
            });
        }
        let edges = quantile_edges(&present, bins);
        let mut counts = vec![0u64; bins];
        for &v in &present {
            counts[numeric_bin(&edges, v)] += 1;
        }
        let n = present.len() as f64;
        let min = present.iter().copied().fold(f64::INFINITY, f64::min);
        let max = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Ok(Self {
            name: name.into(),
            kind: FeatureKind::Numeric {
                edges,
                expected: counts.iter().map(|&c| c as f64 / n).collect(),
                min,
                max,
            },
        })
    }

    /// Builds a categorical feature's category list (sorted) and frequencies.
    pub fn categorical(name: &str, values: &[String]) -> Result<Self, BaselineError> {
        if values.is_empty() {
            return Err(BaselineError::NoValues {
                feature: name.into(),
            });
        }
        let mut freq = std::collections::BTreeMap::<&str, u64>::new();
        for v in values {
            *freq.entry(v.as_str()).or_default() += 1;
        }
        if freq.len() > MAX_BINS - 1 {
            return Err(BaselineError::TooManyCategories {
                feature: name.into(),
                categories: freq.len(),
            });
        }
        let n = values.len() as f64;
        let categories: Vec<String> = freq.keys().map(|s| (*s).to_string()).collect();
        let mut expected: Vec<f64> = freq.values().map(|&c| c as f64 / n).collect();
        expected.push(0.0); // "other"
        Ok(Self {
            name: name.into(),
            kind: FeatureKind::Categorical {
                categories,
                expected,
            },
        })
    }

    /// Number of bins (PSI terms) for this feature.
    pub fn bins(&self) -> usize {
        self.expected().len()
    }

    pub fn expected(&self) -> &[f64] {
        match &self.kind {
            FeatureKind::Numeric { expected, .. } | FeatureKind::Categorical { expected, .. } => {
                expected
            }
        }
    }

    /// The bin a numeric value falls in; [`MISSING_BIN`] for NaN. For a
    /// categorical feature a number is looked up by its decimal text.
    pub fn bin_f64(&self, x: f64) -> u8 {
        if x.is_nan() {
            return MISSING_BIN;
        }
        match &self.kind {
            FeatureKind::Numeric { edges, .. } => numeric_bin(edges, x) as u8,
            FeatureKind::Categorical { .. } => self.bin_str(&format_number(x)),
        }
    }

    /// The bin a category falls in (the last bin for unseen categories).
    pub fn bin_str(&self, s: &str) -> u8 {
        match &self.kind {
            FeatureKind::Categorical { categories, .. } => categories
                .binary_search_by(|c| c.as_str().cmp(s))
                .unwrap_or(categories.len())
                as u8,
            FeatureKind::Numeric { edges, .. } => match s.trim().parse::<f64>() {
                Ok(x) if !x.is_nan() => numeric_bin(edges, x) as u8,
                _ => MISSING_BIN,
            },
        }
    }

    /// Whether a numeric value lies outside the reference range.
    pub fn out_of_range(&self, x: f64) -> bool {
        match &self.kind {
            FeatureKind::Numeric { min, max, .. } => x < *min || x > *max,
            FeatureKind::Categorical { .. } => false,
        }
    }
}

/// Integers print without a fractional part so `3.0` finds category `"3"`.
fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

impl Baseline {
    /// Builds a baseline from named reference columns.
    pub fn from_columns(columns: &[(String, Column)], bins: usize) -> Result<Self, BaselineError> {
        let rows = columns
            .first()
            .map(|(_, c)| match c {
                Column::Numeric(v) => v.len(),
                Column::Categorical(v) => v.len(),
            })
            .unwrap_or(0) as u64;
        let features = columns
            .iter()
            .map(|(name, col)| match col {
                Column::Numeric(v) => FeatureBaseline::numeric(name, v, bins),
                Column::Categorical(v) => FeatureBaseline::categorical(name, v),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rows, features })
    }

    /// Bins one row of numeric features into `out` (one index per feature).
    pub fn bin_row(&self, row: &[f64], out: &mut Vec<u8>) {
        out.clear();
        out.extend(self.features.iter().zip(row).map(|(f, &x)| f.bin_f64(x)));
    }

    /// Counts rows into per-feature bins; missing values are skipped.
    pub fn count_rows<'a>(&self, rows: impl IntoIterator<Item = &'a [f64]>) -> Vec<Vec<u64>> {
        let mut counts: Vec<Vec<u64>> = self.features.iter().map(|f| vec![0; f.bins()]).collect();
        for row in rows {
            for ((f, c), &x) in self.features.iter().zip(counts.iter_mut()).zip(row) {
                let b = f.bin_f64(x);
                if let Some(slot) = c.get_mut(usize::from(b)) {
                    *slot += 1;
                }
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.quantile([1,2,3,4], [0.1, 0.5, 0.9]) = [1.3, 2.5, 3.7]
        let s = v.to_vec();
        assert!((quantile_sorted(&s, 0.1) - 1.3).abs() < 1e-12);
        assert!((quantile_sorted(&s, 0.5) - 2.5).abs() < 1e-12);
        assert!((quantile_sorted(&s, 0.9) - 3.7).abs() < 1e-12);
    }

    #[test]
    fn bins_are_right_closed_like_searchsorted_right() {
        let edges = [1.0, 2.0, 2.0, 3.0];
        assert_eq!(numeric_bin(&edges, 0.5), 0);
        assert_eq!(numeric_bin(&edges, 1.0), 1);
        assert_eq!(numeric_bin(&edges, 2.0), 3);
        assert_eq!(numeric_bin(&edges, 3.5), 4);
    }

    #[test]
    fn identical_distribution_has_zero_psi() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let f = FeatureBaseline::numeric("x", &values, 10).unwrap();
        let b = Baseline {
            rows: 1000,
            features: vec![f],
        };
        let rows: Vec<[f64; 1]> = values.iter().map(|v| [*v]).collect();
        let counts = b.count_rows(rows.iter().map(|r| &r[..]));
        assert!(psi(&b, &counts).unwrap()[0].abs() < 1e-12);
    }

    #[test]
    fn categorical_bins_and_other() {
        let vals: Vec<String> = ["a", "b", "a", "c"].iter().map(|s| s.to_string()).collect();
        let f = FeatureBaseline::categorical("cat", &vals).unwrap();
        assert_eq!(f.bins(), 4);
        assert_eq!(f.bin_str("a"), 0);
        assert_eq!(f.bin_str("c"), 2);
        assert_eq!(f.bin_str("zzz"), 3);
        assert_eq!(f.expected(), &[0.5, 0.25, 0.25, 0.0]);
    }

    #[test]
    fn nan_is_missing_and_empty_window_is_an_error() {
        let f = FeatureBaseline::numeric("x", &[1.0, 2.0, f64::NAN], 10).unwrap();
        assert_eq!(f.bin_f64(f64::NAN), MISSING_BIN);
        assert_eq!(
            psi_from_fractions(f.expected(), &[0; 10]),
            Err(BaselineError::EmptyWindow)
        );
        assert!(FeatureBaseline::numeric("y", &[f64::NAN], 10).is_err());
    }
}
