//! The compact tree layout and the batch evaluator.
//!
//! Every tree lives in one shared `Vec<Node>` of 16-byte nodes in level order.
//! A leaf points to itself on both sides, so a walk of exactly `depth` steps
//! lands on the leaf whatever path it took: the walk has no data-dependent
//! branch, and several walks (rows of a block, or trees for a single row) run
//! interleaved so their memory loads overlap.
//!
//! Arithmetic follows onnxruntime's float32 kernels (`TreeEnsembleCommon` with
//! float thresholds): scores are summed in float32 in tree order, the binary
//! and post-transform rules are the same, so labels match exactly and scores
//! to the last bits.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::complete::Complete;
pub use super::node::Mode;
use super::node::{goes_true, Node, FEATURE_MASK, MISSING_TRUE, MIXED, MODE_SHIFT};
use super::TreeError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

/// What the ensemble predicts, with the output-shaping rules of each kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Classifier {
        /// `classlabels_int64s`, or 0..n when the labels are strings.
        labels: Vec<i64>,
        strings: Option<Vec<String>>,
        /// onnxruntime's `binary_case_`: two classes, weights on one of them only.
        binary_single_column: bool,
        weights_all_positive: bool,
    },
    Regressor {
        aggregate: Aggregate,
    },
}

/// A parsed, validated tree ensemble ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct Ensemble {
    pub(crate) nodes: Vec<Node>,
    /// Per tree: root index in `nodes`, and the longest root-to-leaf path.
    pub(crate) roots: Vec<u32>,
    pub(crate) depths: Vec<u32>,
    /// Per group of `LANES` consecutive trees: their largest depth.
    pub(crate) group_depths: Vec<u32>,
    /// Leaf `i` owns `weights[leaf_start[i]..leaf_start[i + 1]]`.
    pub(crate) leaf_start: Vec<u32>,
    pub(crate) weights: Vec<(u32, f32)>,
    /// The single-target value of each leaf (onnxruntime's `value_or_unique_weight`).
    pub(crate) leaf_first: Vec<f32>,
    pub(crate) n_outputs: usize,
    pub(crate) n_features: usize,
    pub(crate) base_values: Vec<f32>,
    pub(crate) post_transform: PostTransform,
    pub(crate) kind: Kind,
    /// The mode shared by all branches, or `MIXED`.
    pub(crate) same_mode: u32,
    pub(crate) has_missing: bool,
    /// The padded layout, when the trees are shallow enough for it.
    pub(crate) complete: Option<Complete>,
}

/// Rows interleaved in one walk.
const LANES: usize = 8;
/// Rows scored together: every tree is walked over the whole block before the
/// next tree, so a tree's nodes stay in cache for the block.
const BLOCK: usize = 256;
/// Below this many (rows × trees) one thread does it all: spawning costs more.
const PARALLEL_MIN_WORK: usize = 1 << 17;

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Set how many threads a large batch is split over (default 1; 0 means 1).
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

/// The thread count set by [`set_threads`].
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Raw per-row accumulators before the output rules run.
struct Scores {
    values: Vec<f32>,
    has: Vec<bool>,
}

impl Ensemble {
    pub(crate) fn finish(mut self) -> Self {
        self.group_depths = self
            .depths
            .chunks(LANES)
            .map(|c| c.iter().copied().max().unwrap_or(0))
            .collect();
        let mut mode = None;
        self.has_missing = false;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.on_true as usize == i {
                continue; // leaf
            }
            let m = n.feature >> MODE_SHIFT;
            self.has_missing |= n.feature & MISSING_TRUE != 0;
            mode = match mode {
                None => Some(m),
                Some(prev) if prev == m => Some(m),
                Some(_) => Some(MIXED),
            };
        }
        self.same_mode = mode.unwrap_or(Mode::Leq as u32);
        self.complete = Complete::build(&self.nodes, &self.roots, &self.depths);
        self
    }

    pub(crate) fn pack_feature(feature: u32, mode: Mode, missing_true: bool) -> u32 {
        feature | ((mode as u32) << MODE_SHIFT) | if missing_true { MISSING_TRUE } else { 0 }
    }

    /// Drop the padded complete-tree layout and walk child pointers instead
    /// (what trees deeper than 10 levels always use); for tests and benchmarks.
    pub fn pointer_layout_only(mut self) -> Self {
        self.complete = None;
        self
    }

    /// Whether the padded complete-tree layout is in use.
    pub fn uses_complete_layout(&self) -> bool {
        self.complete.is_some()
    }

    /// Longest root-to-leaf path over all trees.
    pub fn max_depth(&self) -> u32 {
        self.depths.iter().copied().max().unwrap_or(0)
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Columns of the score output: classes, or regression targets.
    pub fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    /// Features a row must have at least (largest feature id + 1).
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn is_classifier(&self) -> bool {
        matches!(self.kind, Kind::Classifier { .. })
    }

    pub fn has_string_labels(&self) -> bool {
        matches!(
            self.kind,
            Kind::Classifier {
                strings: Some(_),
                ..
            }
        )
    }

    /// Score `rows` rows of `stride` features each (row-major in `x`).
    /// Returns (label indices or values, scores `rows × n_outputs`); labels are
    /// empty for a regressor.
    pub fn eval(&self, x: &[f32], rows: usize, stride: usize) -> Result<Prediction, TreeError> {
        if stride < self.n_features {
            return Err(TreeError::Input(format!(
                "the model reads feature {} but rows have {stride} features",
                self.n_features.saturating_sub(1)
            )));
        }
        if x.len() != rows * stride {
            return Err(TreeError::Input(format!(
                "{} values do not make {rows} rows of {stride} features",
                x.len()
            )));
        }
        let k = self.n_outputs;
        let mut out = vec![0f32; rows * k];
        let mut labels = if self.is_classifier() {
            vec![0i64; rows]
        } else {
            vec![]
        };
        let threads = threads().min(rows.max(1));
        if threads <= 1 || rows * self.n_trees() < PARALLEL_MIN_WORK {
            self.eval_range(x, stride, &mut out, &mut labels);
        } else {
            let per = rows.div_ceil(threads);
            std::thread::scope(|s| {
                let label_chunks: Vec<&mut [i64]> = if labels.is_empty() {
                    (0..threads).map(|_| &mut [][..]).collect()
                } else {
                    labels.chunks_mut(per).collect()
                };
                for ((xs, os), ls) in x
                    .chunks(per * stride)
                    .zip(out.chunks_mut(per * k))
                    .zip(label_chunks)
                {
                    s.spawn(move || self.eval_range(xs, stride, os, ls));
                }
            });
        }
        Ok(Prediction {
            labels,
            scores: out,
        })
    }

    fn eval_range(&self, x: &[f32], stride: usize, out: &mut [f32], labels: &mut [i64]) {
        let rows = x.len().checked_div(stride).unwrap_or(0);
        let k = self.n_outputs;
        let mut scores = Scores {
            values: vec![0f32; BLOCK.min(rows) * k],
            has: vec![false; BLOCK.min(rows) * k],
        };
        let mut start = 0;
        while start < rows {
            let end = (start + BLOCK).min(rows);
            let n = end - start;
            scores.values[..n * k].fill(0.0);
            scores.has[..n * k].fill(false);
            self.accumulate(&x[start * stride..end * stride], n, stride, &mut scores);
            for r in 0..n {
                let row = start + r;
                let label = self.finalize(
                    &mut scores.values[r * k..(r + 1) * k],
                    &scores.has[r * k..(r + 1) * k],
                    &mut out[row * k..(row + 1) * k],
                );
                if let Some(l) = labels.get_mut(row) {
                    *l = label;
                }
            }
            start = end;
        }
    }

    fn accumulate(&self, x: &[f32], rows: usize, stride: usize, scores: &mut Scores) {
        match (self.same_mode, self.has_missing) {
            (0, false) => self.accumulate_mode::<0, false>(x, rows, stride, scores),
            (0, true) => self.accumulate_mode::<0, true>(x, rows, stride, scores),
            (1, false) => self.accumulate_mode::<1, false>(x, rows, stride, scores),
            (1, true) => self.accumulate_mode::<1, true>(x, rows, stride, scores),
            (_, false) => self.accumulate_mode::<MIXED, false>(x, rows, stride, scores),
            (_, true) => self.accumulate_mode::<MIXED, true>(x, rows, stride, scores),
        }
    }

    fn accumulate_mode<const MODE: u32, const MISSING: bool>(
        &self,
        x: &[f32],
        rows: usize,
        stride: usize,
        scores: &mut Scores,
    ) {
        if let Some(c) = &self.complete {
            return self.accumulate_complete::<MODE, MISSING>(c, x, rows, stride, scores);
        }
        let nodes = &self.nodes[..];
        if rows < LANES {
            // Few rows: interleave trees instead of rows; leaves are added in
            // tree order so float sums match a sequential pass.
            for r in 0..rows {
                let row = &x[r * stride..(r + 1) * stride];
                for (g, roots) in self.roots.chunks(LANES).enumerate() {
                    let mut idx = [0u32; LANES];
                    idx[..roots.len()].copy_from_slice(roots);
                    let depth = self.group_depths.get(g).copied().unwrap_or(0);
                    for _ in 0..depth {
                        for i in idx.iter_mut() {
                            let n = &nodes[*i as usize];
                            let v = row[(n.feature & FEATURE_MASK) as usize];
                            *i = if goes_true::<MODE, MISSING>(v, n.feature, n.threshold) {
                                n.on_true
                            } else {
                                n.on_false
                            };
                        }
                    }
                    for &i in &idx[..roots.len()] {
                        self.add_leaf(nodes[i as usize].threshold.to_bits(), r, scores);
                    }
                }
            }
            return;
        }
        for (t, &root) in self.roots.iter().enumerate() {
            let depth = self.depths[t];
            let mut r0 = 0;
            while r0 < rows {
                // The last group repeats its final row to fill the lanes.
                let mut offs = [0usize; LANES];
                for (l, o) in offs.iter_mut().enumerate() {
                    *o = (r0 + l).min(rows - 1) * stride;
                }
                let mut idx = [root; LANES];
                for _ in 0..depth {
                    for l in 0..LANES {
                        let n = &nodes[idx[l] as usize];
                        let v = x[offs[l] + (n.feature & FEATURE_MASK) as usize];
                        idx[l] = if goes_true::<MODE, MISSING>(v, n.feature, n.threshold) {
                            n.on_true
                        } else {
                            n.on_false
                        };
                    }
                }
                for (l, &i) in idx.iter().enumerate().take(rows - r0) {
                    self.add_leaf(nodes[i as usize].threshold.to_bits(), r0 + l, scores);
                }
                r0 += LANES;
            }
        }
    }

    fn accumulate_complete<const MODE: u32, const MISSING: bool>(
        &self,
        c: &Complete,
        x: &[f32],
        rows: usize,
        stride: usize,
        scores: &mut Scores,
    ) {
        let n_trees = self.n_trees();
        if rows < LANES {
            // Few rows: interleave trees; leaves are added in tree order.
            for r in 0..rows {
                let mut t0 = 0;
                while t0 < n_trees {
                    let mut trees = [0usize; LANES];
                    for (l, t) in trees.iter_mut().enumerate() {
                        *t = (t0 + l).min(n_trees - 1);
                    }
                    let leaves = c.walk::<MODE, MISSING, LANES>(trees, x, [r * stride; LANES]);
                    for &leaf in leaves.iter().take(n_trees - t0) {
                        self.add_leaf(leaf, r, scores);
                    }
                    t0 += LANES;
                }
            }
            return;
        }
        for t in 0..n_trees {
            let mut r0 = 0;
            while r0 < rows {
                // The last group repeats its final row to fill the lanes.
                let mut offs = [0usize; LANES];
                for (l, o) in offs.iter_mut().enumerate() {
                    *o = (r0 + l).min(rows - 1) * stride;
                }
                let leaves = c.walk::<MODE, MISSING, LANES>([t; LANES], x, offs);
                for (l, &leaf) in leaves.iter().enumerate().take(rows - r0) {
                    self.add_leaf(leaf, r0 + l, scores);
                }
                r0 += LANES;
            }
        }
    }

    #[inline(always)]
    fn add_leaf(&self, leaf: u32, row: usize, scores: &mut Scores) {
        let leaf = leaf as usize;
        let k = self.n_outputs;
        let agg = match self.kind {
            Kind::Classifier { .. } => Aggregate::Sum,
            Kind::Regressor { aggregate } => aggregate,
        };
        if k == 1 && !self.is_classifier() {
            // onnxruntime's single-target path: one value per leaf, and the
            // leaf counts as scored even without a weight.
            let v = self.leaf_first[leaf];
            let s = &mut scores.values[row];
            let h = &mut scores.has[row];
            match agg {
                Aggregate::Sum | Aggregate::Average => *s += v,
                Aggregate::Min => *s = if !*h || v < *s { v } else { *s },
                Aggregate::Max => *s = if !*h || v > *s { v } else { *s },
            }
            *h = true;
            return;
        }
        let (a, b) = (
            self.leaf_start[leaf] as usize,
            self.leaf_start[leaf + 1] as usize,
        );
        let base = row * k;
        for &(target, w) in &self.weights[a..b] {
            let j = base + target as usize;
            let (s, h) = (&mut scores.values[j], &mut scores.has[j]);
            match agg {
                Aggregate::Sum | Aggregate::Average => *s += w,
                Aggregate::Min => *s = if !*h || w < *s { w } else { *s },
                Aggregate::Max => *s = if !*h || w > *s { w } else { *s },
            }
            *h = true;
        }
    }

    /// Turn one row's accumulators into its outputs; returns the label.
    fn finalize(&self, s: &mut [f32], has: &[bool], out: &mut [f32]) -> i64 {
        match &self.kind {
            Kind::Regressor { aggregate } => {
                self.finalize_regressor(*aggregate, s, has, out);
                0
            }
            Kind::Classifier {
                labels,
                binary_single_column,
                weights_all_positive,
                ..
            } => self.finalize_classifier(
                labels,
                *binary_single_column,
                *weights_all_positive,
                s,
                has,
                out,
            ),
        }
    }

    fn finalize_regressor(&self, agg: Aggregate, s: &mut [f32], has: &[bool], out: &mut [f32]) {
        let n_trees = self.n_trees() as f32;
        if s.len() == 1 {
            let origin = if self.base_values.len() == 1 {
                self.base_values[0]
            } else {
                0.0
            };
            let v = match agg {
                Aggregate::Sum => s[0] + origin,
                Aggregate::Average => s[0] / n_trees + origin,
                Aggregate::Min | Aggregate::Max => {
                    if has[0] {
                        s[0] + origin
                    } else {
                        origin
                    }
                }
            };
            // onnxruntime applies only PROBIT to a single target.
            out[0] = if self.post_transform == PostTransform::Probit {
                probit(v)
            } else {
                v
            };
            return;
        }
        let use_base = self.base_values.len() == s.len();
        for (j, v) in s.iter_mut().enumerate() {
            let b = if use_base { self.base_values[j] } else { 0.0 };
            *v = match agg {
                Aggregate::Sum => {
                    if use_base {
                        *v + b
                    } else {
                        *v
                    }
                }
                Aggregate::Average => {
                    if use_base {
                        *v / n_trees + b
                    } else {
                        *v / n_trees
                    }
                }
                Aggregate::Min | Aggregate::Max => b + if has[j] { *v } else { 0.0 },
            };
        }
        mask_unscored(s, has);
        write_scores(s, self.post_transform, None, out);
    }

    fn finalize_classifier(
        &self,
        labels: &[i64],
        binary_single_column: bool,
        weights_all_positive: bool,
        s: &mut [f32],
        has: &[bool],
        out: &mut [f32],
    ) -> i64 {
        let base = &self.base_values;
        if s.len() > 2 {
            for (k, b) in base.iter().enumerate().take(s.len()) {
                s[k] = if has[k] { s[k] + b } else { *b };
            }
            let mut best: Option<(usize, f32)> = None;
            for (k, &v) in s.iter().enumerate() {
                let scored = has[k] || k < base.len();
                if scored && best.is_none_or(|(_, m)| v > m) {
                    best = Some((k, v));
                }
            }
            for (k, v) in s.iter_mut().enumerate() {
                if !(has[k] || k < base.len()) {
                    *v = 0.0;
                }
            }
            write_scores(s, self.post_transform, None, out);
            return labels[best.map_or(0, |(k, _)| k)];
        }
        // Two classes: onnxruntime's binary rules.
        let has = [has[0], has.get(1).copied().unwrap_or(false)];
        let mut add_second: Option<u8> = None;
        let mut len = 2;
        match base.len() {
            2 => {
                if has[1] {
                    s[1] = base[1] + s[0];
                    s[0] = -s[1];
                } else {
                    s[1] += base[1];
                    s[0] += base[0];
                }
            }
            1 => {
                s[0] += base[0];
                if !has[1] {
                    len = 1;
                }
            }
            _ => {
                add_second = Some(3);
                if !has[1] {
                    len = 1;
                }
            }
        }
        let pos = if len == 2 && has[1] {
            s[1]
        } else if has[0] {
            s[0]
        } else {
            0.0
        };
        let label = if binary_single_column {
            let (code, positive) = if weights_all_positive {
                if pos > 0.5 {
                    (0, true)
                } else {
                    (1, false)
                }
            } else if pos > 0.0 {
                (2, true)
            } else {
                (3, false)
            };
            add_second = Some(code);
            labels[usize::from(positive)]
        } else {
            // onnxruntime's literal positive/negative labels 1 and 0.
            i64::from(pos > 0.0)
        };
        mask_unscored(&mut s[..len], &has[..len]);
        write_scores(&mut s[..len], self.post_transform, add_second, out);
        label
    }
}

/// The evaluator's result: labels (classifiers) and scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub labels: Vec<i64>,
    pub scores: Vec<f32>,
}

/// onnxruntime writes a score no leaf contributed to as 0, whatever base
/// value was added to it (its `ScoreValue` converts to 0 without `has_score`).
fn mask_unscored(s: &mut [f32], has: &[bool]) {
    for (v, h) in s.iter_mut().zip(has) {
        if !h {
            *v = 0.0;
        }
    }
}

/// onnxruntime's `write_scores` for float scores.
fn write_scores(s: &mut [f32], post: PostTransform, add_second: Option<u8>, out: &mut [f32]) {
    if s.len() >= 2 {
        match post {
            PostTransform::Probit => s.iter_mut().for_each(|v| *v = probit(*v)),
            PostTransform::Logistic => s.iter_mut().for_each(|v| *v = logistic(*v)),
            PostTransform::Softmax => softmax(s),
            PostTransform::SoftmaxZero => softmax_zero(s),
            PostTransform::None => {}
        }
        out[..s.len()].copy_from_slice(s);
        return;
    }
    let v = s[0];
    let pair = match (post, add_second) {
        (PostTransform::Probit, _) => [probit(v), 0.0],
        (_, Some(0 | 1)) => [1.0 - v, v],
        (PostTransform::Logistic, Some(2 | 3)) => [logistic(-v), logistic(v)],
        (_, Some(2 | 3)) => [-v, v],
        _ => [v, 0.0],
    };
    for (o, p) in out.iter_mut().zip(pair) {
        *o = p;
    }
}

fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 {
        1.0 - e
    } else {
        e
    }
}

fn softmax(s: &mut [f32]) {
    let max = s.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    s.iter_mut().for_each(|v| *v /= sum);
}

fn softmax_zero(s: &mut [f32]) {
    let max = s.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let exp_neg_max = (-max).exp();
    let mut sum = 0f32;
    for v in s.iter_mut() {
        if *v > 0.000_000_1 || *v < -0.000_000_1 {
            *v = (*v - max).exp();
            sum += *v;
        } else {
            *v *= exp_neg_max;
        }
    }
    s.iter_mut().for_each(|v| *v /= sum);
}

/// onnxruntime's float approximation of the inverse error function.
fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}
