//! Support vector machines: the kernels they share and `SVMClassifier`
//! (`SVMRegressor` is in `svm_regressor`), as
//! libsvm-style models (support vectors, one-vs-one pairs, Platt
//! probabilities with pairwise coupling) or liblinear-style ones
//! (coefficients only), computed the way onnxruntime's kernels do.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::check_input_arity;

use super::attrs::Attrs;
use super::labels::{argmax, Labels, Pick};
use super::node::Kernel;
use super::post::{logistic, widen, PostTransform};
use super::values::{arg, as_f32, input_err, rows_dim, rows_width};
use super::MlError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum KernelType {
    Linear,
    Poly,
    Rbf,
    Sigmoid,
}

/// The kernel and its parameters (`kernel_params`: gamma, coef0, degree).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SvmKernel {
    pub kind: KernelType,
    pub gamma: f32,
    pub coef0: f32,
    pub degree: f32,
}

impl SvmKernel {
    pub fn parse(a: &Attrs) -> Result<Self, MlError> {
        let kind = match a.string("kernel_type")?.as_deref().unwrap_or("LINEAR") {
            "LINEAR" => KernelType::Linear,
            "POLY" => KernelType::Poly,
            "RBF" => KernelType::Rbf,
            "SIGMOID" => KernelType::Sigmoid,
            other => {
                return Err(a.err(
                    "kernel_type",
                    format!("is {other:?}; LINEAR, POLY, RBF or SIGMOID expected"),
                ))
            }
        };
        let p = a.floats("kernel_params");
        let (gamma, coef0, degree) = match p[..] {
            [] => (0.0, 0.0, 0.0),
            [g, c, d, ..] => (g, c, d),
            _ => return Err(a.err("kernel_params", "needs gamma, coef0 and degree")),
        };
        Ok(Self {
            kind,
            gamma,
            coef0,
            degree,
        })
    }

    /// K(x, v), with `c` added to a LINEAR kernel's dot product.
    pub fn eval(&self, x: &[f32], v: &[f32], c: f32) -> f32 {
        let dot = || x.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        match self.kind {
            KernelType::Rbf => {
                let d: f32 = x.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum();
                (-self.gamma * d).exp()
            }
            KernelType::Linear => dot() + c,
            KernelType::Poly => {
                let b = self.gamma * dot() + self.coef0;
                if self.degree == 2.0 {
                    b * b
                } else if self.degree == 3.0 {
                    b * b * b
                } else {
                    b.powf(self.degree)
                }
            }
            KernelType::Sigmoid => (self.gamma * dot() + self.coef0).tanh(),
        }
    }
}

/// How the model scores: libsvm's support vectors or liblinear's weights.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Linear,
    Svc {
        vectors_per_class: Vec<usize>,
        starts: Vec<usize>,
        n_vectors: usize,
        support_vectors: Vec<f32>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SvmClassifier {
    kernel: SvmKernel,
    mode: Mode,
    features: usize,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    prob_a: Vec<f32>,
    prob_b: Vec<f32>,
    labels: Labels,
    post: PostTransform,
    all_positive: bool,
}

fn pairs(classes: usize) -> usize {
    classes * classes.saturating_sub(1) / 2
}

impl SvmClassifier {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("SVMClassifier", node);
        let mut kernel = SvmKernel::parse(&a)?;
        let coefficients = a.floats("coefficients");
        if coefficients.is_empty() {
            return Err(a.err("coefficients", "is missing or empty"));
        }
        let rho = a.floats("rho");
        let prob_a = a.floats("prob_a");
        let prob_b = a.floats("prob_b");
        if prob_a.len() != prob_b.len() {
            return Err(a.err("prob_b", "must have as many values as prob_a"));
        }
        let labels = Labels::parse(&a, "classlabels_ints")?;
        let classes = labels.len();
        let vectors_per_class = a
            .ints("vectors_per_class")
            .iter()
            .map(|v| usize::try_from(*v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| a.err("vectors_per_class", "has a negative count"))?;
        let n_vectors: usize = vectors_per_class.iter().sum();
        let support_vectors = a.floats("support_vectors");
        let post = a.post_transform()?;
        let (mode, features) = if n_vectors > 0 {
            if vectors_per_class.len() != classes {
                return Err(a.err(
                    "vectors_per_class",
                    format!(
                        "has {} counts for {classes} classes",
                        vectors_per_class.len()
                    ),
                ));
            }
            if classes < 2 {
                return Err(a.err("classlabels_ints", "needs at least two classes"));
            }
            if support_vectors.is_empty() || !support_vectors.len().is_multiple_of(n_vectors) {
                return Err(a.err(
                    "support_vectors",
                    format!(
                        "has {} values for {n_vectors} vectors",
                        support_vectors.len()
                    ),
                ));
            }
            if coefficients.len() < (classes - 1) * n_vectors {
                return Err(a.err(
                    "coefficients",
                    format!(
                        "has {} values; {} needed for {classes} classes and {n_vectors} vectors",
                        coefficients.len(),
                        (classes - 1) * n_vectors
                    ),
                ));
            }
            if rho.len() < pairs(classes) {
                return Err(a.err("rho", format!("needs {} values", pairs(classes))));
            }
            if !prob_a.is_empty() && prob_a.len() < pairs(classes) {
                return Err(a.err("prob_a", format!("needs {} values", pairs(classes))));
            }
            if prob_a.is_empty() && classes == 2 && post == PostTransform::Probit {
                // onnxruntime writes only half of the two-column output here.
                return Err(a.err(
                    "post_transform",
                    "PROBIT on a binary SVM without probabilities has no defined output",
                ));
            }
            let features = support_vectors.len() / n_vectors;
            let starts = vectors_per_class
                .iter()
                .scan(0, |acc, n| {
                    let s = *acc;
                    *acc += n;
                    Some(s)
                })
                .collect();
            let mode = Mode::Svc {
                vectors_per_class,
                starts,
                n_vectors,
                support_vectors,
            };
            (mode, features)
        } else {
            if !coefficients.len().is_multiple_of(classes) {
                return Err(a.err(
                    "coefficients",
                    format!("has {} values for {classes} classes", coefficients.len()),
                ));
            }
            if rho.is_empty() {
                return Err(a.err("rho", "is missing"));
            }
            kernel.kind = KernelType::Linear;
            (Mode::Linear, coefficients.len() / classes)
        };
        let all_positive = coefficients.iter().all(|c| *c >= 0.0);
        Ok(Self {
            kernel,
            mode,
            features,
            coefficients,
            rho,
            prob_a,
            prob_b,
            labels,
            post,
            all_positive,
        })
    }

    fn width(&self) -> usize {
        let classes = self.labels.len();
        match self.mode {
            Mode::Svc { .. } if self.prob_a.is_empty() => {
                if classes > 2 {
                    pairs(classes)
                } else {
                    2
                }
            }
            _ => classes,
        }
    }

    /// One row: its label and its scores.
    fn row(&self, x: &[f32], kernels: &mut Vec<f32>) -> (Pick, Vec<f32>) {
        let classes = self.labels.len();
        let Mode::Svc {
            vectors_per_class,
            starts,
            n_vectors,
            support_vectors,
        } = &self.mode
        else {
            let mut scores: Vec<f32> = self
                .coefficients
                .chunks(self.features)
                .map(|w| self.kernel.eval(x, w, self.rho[0]))
                .collect();
            let best = argmax(&scores);
            let max = scores[best];
            let pick = if classes == 2 && self.prob_a.is_empty() {
                // onnxruntime's binary rule for liblinear models.
                if (self.all_positive && max >= 0.5) || (max > 0.0 && !self.all_positive) {
                    Pick::Class(1)
                } else {
                    Pick::Class(best)
                }
            } else {
                Pick::Class(best)
            };
            self.post.apply_rows(&mut scores, classes);
            return (pick, scores);
        };
        kernels.clear();
        kernels.extend(
            support_vectors
                .chunks(self.features)
                .map(|v| self.kernel.eval(x, v, 0.0)),
        );
        let v = *n_vectors;
        let mut votes = vec![0u32; classes];
        let mut pair_scores = Vec::with_capacity(pairs(classes));
        let mut k = 0;
        for i in 0..classes - 1 {
            for j in i + 1..classes {
                let mut sum = 0.0f64;
                let (si, ni) = (starts[i], vectors_per_class[i]);
                let (sj, nj) = (starts[j], vectors_per_class[j]);
                for m in 0..ni {
                    sum += f64::from(self.coefficients[(j - 1) * v + si + m] * kernels[si + m]);
                }
                for m in 0..nj {
                    sum += f64::from(self.coefficients[i * v + sj + m] * kernels[sj + m]);
                }
                sum += f64::from(self.rho[k]);
                k += 1;
                pair_scores.push(sum as f32);
                votes[if sum > 0.0 { i } else { j }] += 1;
            }
        }
        // First class with the most votes.
        let mut best = 0;
        for (c, n) in votes.iter().enumerate() {
            if *n > votes[best] {
                best = c;
            }
        }
        let pick = Pick::Class(best);
        if !self.prob_a.is_empty() {
            let mut pairwise = vec![0.0f32; classes * classes];
            let mut k = 0;
            for i in 0..classes - 1 {
                for j in i + 1..classes {
                    let p = 1.0 - logistic(pair_scores[k] * self.prob_a[k] + self.prob_b[k]);
                    let p = p.clamp(1.0e-7, 1.0 - 1.0e-7);
                    pairwise[i * classes + j] = p;
                    pairwise[j * classes + i] = 1.0 - p;
                    k += 1;
                }
            }
            let mut probs = coupled_probabilities(classes, &pairwise);
            self.post.apply_rows(&mut probs, classes);
            return (pick, probs);
        }
        if classes == 2 {
            let s = pair_scores[0];
            let scores = if self.post == PostTransform::None {
                vec![-s, s]
            } else {
                widen(self.post, s).to_vec()
            };
            return (pick, scores);
        }
        let n = pair_scores.len();
        self.post.apply_rows(&mut pair_scores, n);
        (pick, pair_scores)
    }
}

/// Multi-class probabilities from pairwise ones (Wu, Lin and Weng 2004,
/// method 2, as libsvm and onnxruntime run it in float32).
fn coupled_probabilities(k: usize, r: &[f32]) -> Vec<f32> {
    let mut q = vec![0.0f32; k * k];
    let mut qp = vec![0.0f32; k];
    let mut p = vec![1.0 / k as f32; k];
    let eps = 0.005 / k as f32;
    for i in 0..k {
        for j in 0..i {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = q[j * k + i];
        }
        for j in i + 1..k {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = -r[j * k + i] * r[i * k + j];
        }
    }
    for _ in 0..100 {
        let mut pqp = 0.0f32;
        for i in 0..k {
            qp[i] = 0.0;
            for j in 0..k {
                qp[i] += q[i * k + j] * p[j];
            }
            pqp += p[i] * qp[i];
        }
        let max_error = qp.iter().map(|v| (v - pqp).abs()).fold(0.0f32, f32::max);
        if max_error < eps {
            break;
        }
        for i in 0..k {
            let diff = (-qp[i] + pqp) / q[i * k + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * k + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[i * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
    p
}

pub(crate) fn check_features(op: &'static str, got: usize, want: usize) -> TractResult<()> {
    if got == want {
        Ok(())
    } else {
        Err(input_err(
            op,
            format!("{got} features; the model was trained on {want}"),
        ))
    }
}

impl Kernel for SvmClassifier {
    fn name(&self) -> &'static str {
        "SVMClassifier"
    }

    fn n_outputs(&self) -> usize {
        2
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        s.equals(&outputs[0].datum_type, self.labels.datum_type())?;
        s.equals(&outputs[1].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[0].shape[0], &outputs[1].shape[0])?;
        s.equals(&outputs[1].shape[1], self.width().to_dim())?;
        s.given(&inputs[0].rank, move |s, rank| {
            if rank == 1 {
                s.equals(&outputs[0].shape[0], 1.to_dim())
            } else {
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])
            }
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = rows_dim("SVMClassifier", inputs[0])?;
        Ok(tvec!(
            TypedFact::dt_shape(self.labels.datum_type(), [n.clone()]),
            f32::fact([n, self.width().to_dim()])
        ))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "SVMClassifier";
        let x = arg(OP, &inputs, 0)?;
        let (rows, features) = rows_width(OP, x.shape())?;
        check_features(OP, features, self.features)?;
        let x = as_f32(OP, x)?;
        let width = self.width();
        let mut picks = Vec::with_capacity(rows);
        let mut scores = Vec::with_capacity(rows * width);
        let mut kernels = Vec::new();
        for r in 0..rows {
            let (pick, s) = self.row(&x[r * features..(r + 1) * features], &mut kernels);
            picks.push(pick);
            scores.extend(s);
        }
        Ok(tvec!(
            self.labels.tensor(&picks).into_tvalue(),
            Tensor::from_shape(&[rows, width], &scores)?.into_tvalue()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_kernel() -> SvmKernel {
        SvmKernel {
            kind: KernelType::Linear,
            gamma: 0.0,
            coef0: 0.0,
            degree: 0.0,
        }
    }

    /// Two classes, one support vector each, identity-like geometry.
    fn binary(prob: bool, post: PostTransform) -> SvmClassifier {
        SvmClassifier {
            kernel: linear_kernel(),
            mode: Mode::Svc {
                vectors_per_class: vec![1, 1],
                starts: vec![0, 1],
                n_vectors: 2,
                support_vectors: vec![1.0, 0.0, 0.0, 1.0],
            },
            features: 2,
            coefficients: vec![1.0, -1.0],
            rho: vec![0.0],
            prob_a: if prob { vec![-2.0] } else { vec![] },
            prob_b: if prob { vec![0.0] } else { vec![] },
            labels: Labels::Ints(vec![4, 9]),
            post,
            all_positive: false,
        }
    }

    fn run(k: &SvmClassifier, x: Tensor) -> (Tensor, Vec<f32>) {
        let mut out = k.eval(tvec!(x.into_tvalue())).unwrap();
        let s = out.remove(1);
        let s = s
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        (out.remove(0).into_tensor(), s)
    }

    #[test]
    fn binary_votes_pick_the_label_and_scores_are_signed() {
        let k = binary(false, PostTransform::None);
        // Decision 1*K(x,sv0) - 1*K(x,sv1) = x0 - x1: positive votes class 0.
        let (labels, scores) = run(&k, tensor2(&[[2.0f32, 1.0], [0.0, 3.0]]));
        assert_eq!(labels, tensor1(&[4i64, 9]));
        assert_eq!(scores, vec![-1.0, 1.0, 3.0, -3.0]);
        let softmax = binary(false, PostTransform::Softmax);
        let (_, scores) = run(&softmax, tensor2(&[[2.0f32, 1.0]]));
        assert_eq!(scores, vec![0.0, 1.0]);
    }

    #[test]
    fn binary_probabilities_sum_to_one() {
        let k = binary(true, PostTransform::None);
        let (labels, scores) = run(&k, tensor2(&[[2.0f32, 1.0]]));
        assert_eq!(labels, tensor1(&[4i64]));
        assert!((scores[0] + scores[1] - 1.0).abs() < 1e-5, "{scores:?}");
        assert!(scores[0] > scores[1], "{scores:?}");
    }

    #[test]
    fn a_wrong_feature_count_is_an_input_error() {
        let k = binary(false, PostTransform::None);
        let err = k
            .eval(tvec!(tensor2(&[[1.0f32]]).into_tvalue()))
            .unwrap_err();
        assert!(err.to_string().contains("trained on 2"), "{err}");
    }

    #[test]
    fn coupling_of_consistent_pairs_recovers_the_distribution() {
        // True p = (0.5, 0.3, 0.2); r_ij = p_i / (p_i + p_j).
        let p = [0.5f32, 0.3, 0.2];
        let mut r = vec![0.0; 9];
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    r[i * 3 + j] = p[i] / (p[i] + p[j]);
                }
            }
        }
        let got = coupled_probabilities(3, &r);
        for (g, w) in got.iter().zip(p) {
            assert!((g - w).abs() < 1e-2, "{got:?}");
        }
    }
}
