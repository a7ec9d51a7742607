//! Linear models: `LinearClassifier` and `LinearRegressor`.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::check_input_arity;

use super::attrs::Attrs;
use super::labels::{argmax, Labels, Pick};
use super::node::Kernel;
use super::post::{widen, PostTransform};
use super::values::{arg, as_f32, input_err, rows_dim, rows_width, width_dim};
use super::MlError;

/// `scores[r, t] = x[r] · coefficients[t] + intercepts[t]` for every row.
fn affine(x: &[f32], rows: usize, features: usize, coef: &[f32], bias: &[f32]) -> Vec<f32> {
    let targets = bias.len();
    let mut out = Vec::with_capacity(rows * targets);
    for r in 0..rows {
        let xr = &x[r * features..(r + 1) * features];
        for (t, b) in bias.iter().enumerate() {
            let w = &coef[t * features..(t + 1) * features];
            out.push(xr.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + b);
        }
    }
    out
}

/// The number of targets a model has for `features` inputs, from its
/// intercepts, or from its coefficient count when it has none.
fn targets_for(
    op: &'static str,
    coef: usize,
    intercepts: Option<usize>,
    features: usize,
) -> TractResult<usize> {
    let targets = match intercepts {
        Some(t) => t,
        None if features > 0 && coef.is_multiple_of(features) => coef / features,
        None => {
            return Err(input_err(
                op,
                format!("{features} features do not divide the {coef} coefficients"),
            ))
        }
    };
    if targets * features != coef {
        return Err(input_err(
            op,
            format!("{features} features; the model has {coef} coefficients for {targets} targets"),
        ));
    }
    Ok(targets)
}

/// Labels and scores per onnxruntime's `LinearClassifier`: a single score
/// column with two labels is widened to `[1 - p, p]` ([`widen`]), otherwise
/// the post-transform applies to each row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LinearClassifier {
    coefficients: Vec<f32>,
    intercepts: Option<Vec<f32>>,
    labels: Labels,
    post: PostTransform,
}

impl LinearClassifier {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("LinearClassifier", node);
        let coefficients = a.floats("coefficients");
        if coefficients.is_empty() {
            return Err(a.err("coefficients", "is missing or empty"));
        }
        let intercepts = Some(a.floats("intercepts")).filter(|v| !v.is_empty());
        let labels = Labels::parse(&a, "classlabels_ints")?;
        let post = a.post_transform()?;
        if let Some(b) = &intercepts {
            if !coefficients.len().is_multiple_of(b.len()) {
                return Err(a.err(
                    "coefficients",
                    format!(
                        "has {} values, not a multiple of {} intercepts",
                        coefficients.len(),
                        b.len()
                    ),
                ));
            }
            if b.len() > 1 && b.len() != labels.len() {
                return Err(a.err(
                    "intercepts",
                    format!("has {} values for {} class labels", b.len(), labels.len()),
                ));
            }
            if b.len() == 1 && labels.len() == 2 && post == PostTransform::Probit {
                // onnxruntime writes only half of the two-column output here.
                return Err(a.err(
                    "post_transform",
                    "PROBIT with one score column and two labels has no defined output",
                ));
            }
        }
        Ok(Self {
            coefficients,
            intercepts,
            labels,
            post,
        })
    }

    /// Score columns for `targets` targets.
    fn width(&self, targets: usize) -> usize {
        if targets == 1 && self.labels.len() == 2 {
            2
        } else {
            targets
        }
    }
}

impl Kernel for LinearClassifier {
    fn name(&self) -> &'static str {
        "LinearClassifier"
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
        s.given(&inputs[0].rank, move |s, rank| {
            if rank == 1 {
                s.equals(&outputs[0].shape[0], 1.to_dim())
            } else {
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])
            }
        })?;
        if let Some(b) = &self.intercepts {
            s.equals(&outputs[1].shape[1], self.width(b.len()).to_dim())?;
        }
        Ok(())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        const OP: &str = "LinearClassifier";
        let n = rows_dim(OP, inputs[0])?;
        let targets = match &self.intercepts {
            Some(b) => b.len(),
            None => {
                let f = width_dim(OP, inputs[0])?
                    .as_i64()
                    .and_then(|f| usize::try_from(f).ok())
                    .ok_or_else(|| {
                        input_err(OP, "without intercepts the feature count must be fixed")
                    })?;
                targets_for(OP, self.coefficients.len(), None, f)?
            }
        };
        Ok(tvec!(
            TypedFact::dt_shape(self.labels.datum_type(), [n.clone()]),
            f32::fact([n, self.width(targets).to_dim()])
        ))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "LinearClassifier";
        let x = arg(OP, &inputs, 0)?;
        let (rows, features) = rows_width(OP, x.shape())?;
        let targets = targets_for(
            OP,
            self.coefficients.len(),
            self.intercepts.as_ref().map(Vec::len),
            features,
        )?;
        let zeros;
        let bias = match &self.intercepts {
            Some(b) => b,
            None => {
                zeros = vec![0.0; targets];
                &zeros
            }
        };
        if targets > 1 && targets != self.labels.len() {
            return Err(input_err(
                OP,
                format!("{targets} score columns for {} labels", self.labels.len()),
            ));
        }
        let x = as_f32(OP, x)?;
        let mut scores = affine(&x, rows, features, &self.coefficients, bias);
        let two_labels = self.labels.len() == 2;
        let picks: Vec<Pick> = if targets == 1 {
            scores
                .iter()
                .map(|s| match (*s > 0.0, two_labels) {
                    (true, true) => Pick::Class(1),
                    (false, true) => Pick::Class(0),
                    (true, false) => Pick::Positive,
                    (false, false) => Pick::Negative,
                })
                .collect()
        } else {
            scores
                .chunks(targets)
                .map(|r| Pick::Class(argmax(r)))
                .collect()
        };
        let width = self.width(targets);
        if targets == 1 && two_labels {
            scores = scores.iter().flat_map(|s| widen(self.post, *s)).collect();
        } else {
            self.post.apply_rows(&mut scores, targets);
        }
        Ok(tvec!(
            self.labels.tensor(&picks).into_tvalue(),
            Tensor::from_shape(&[rows, width], &scores)?.into_tvalue()
        ))
    }
}

/// `[N, targets]` affine outputs, post-transformed per row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LinearRegressor {
    coefficients: Vec<f32>,
    intercepts: Option<Vec<f32>>,
    targets: usize,
    post: PostTransform,
}

impl LinearRegressor {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("LinearRegressor", node);
        let coefficients = a.floats("coefficients");
        if coefficients.is_empty() {
            return Err(a.err("coefficients", "is missing or empty"));
        }
        let targets = usize::try_from(a.int("targets").unwrap_or(1))
            .ok()
            .filter(|t| *t > 0 && coefficients.len().is_multiple_of(*t))
            .ok_or_else(|| {
                a.err(
                    "targets",
                    format!(
                        "must be positive and divide the {} coefficients",
                        coefficients.len()
                    ),
                )
            })?;
        let intercepts = a.floats("intercepts");
        // onnxruntime uses intercepts only when there is one per target.
        let intercepts = (intercepts.len() == targets).then_some(intercepts);
        Ok(Self {
            coefficients,
            intercepts,
            targets,
            post: a.post_transform()?,
        })
    }
}

impl Kernel for LinearRegressor {
    fn name(&self) -> &'static str {
        "LinearRegressor"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[1], self.targets.to_dim())?;
        s.given(&inputs[0].rank, move |s, rank| {
            if rank == 1 {
                s.equals(&outputs[0].shape[0], 1.to_dim())
            } else {
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])
            }
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = rows_dim("LinearRegressor", inputs[0])?;
        Ok(tvec!(f32::fact([n, self.targets.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "LinearRegressor";
        let x = arg(OP, &inputs, 0)?;
        let (rows, features) = rows_width(OP, x.shape())?;
        targets_for(OP, self.coefficients.len(), Some(self.targets), features)?;
        let zeros = vec![0.0; self.targets];
        let bias = self.intercepts.as_ref().unwrap_or(&zeros);
        let x = as_f32(OP, x)?;
        let mut y = affine(&x, rows, features, &self.coefficients, bias);
        self.post.apply_rows(&mut y, self.targets);
        Ok(tvec!(
            Tensor::from_shape(&[rows, self.targets], &y)?.into_tvalue()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clf(coef: Vec<f32>, b: Vec<f32>, labels: Vec<i64>, post: PostTransform) -> LinearClassifier {
        LinearClassifier {
            coefficients: coef,
            intercepts: Some(b),
            labels: Labels::Ints(labels),
            post,
        }
    }

    fn run(k: &LinearClassifier, x: Tensor) -> (Tensor, Tensor) {
        let mut out = k.eval(tvec!(x.into_tvalue())).unwrap();
        let scores = out.remove(1).into_tensor();
        (out.remove(0).into_tensor(), scores)
    }

    #[test]
    fn one_score_column_with_two_labels_widens() {
        // SOFTMAX is not applied to one column: [1 - s, s].
        let k = clf(
            vec![1.0, 1.0],
            vec![0.0],
            vec![3, 7],
            PostTransform::Softmax,
        );
        let (labels, scores) = run(&k, tensor2(&[[0.25f32, 0.5], [-1.0, 0.0]]));
        assert_eq!(labels, tensor1(&[7i64, 3]));
        assert_eq!(scores, tensor2(&[[0.25f32, 0.75], [2.0, -1.0]]));
        // LOGISTIC is: [1 - σ(s), σ(s)].
        let k = clf(
            vec![1.0, 1.0],
            vec![0.0],
            vec![3, 7],
            PostTransform::Logistic,
        );
        let (_, scores) = run(&k, tensor2(&[[0.0f32, 0.0]]));
        assert_eq!(scores, tensor2(&[[0.5f32, 0.5]]));
    }

    #[test]
    fn one_score_column_without_two_labels_falls_back_to_one_and_zero() {
        let k = clf(vec![1.0], vec![0.0], vec![5], PostTransform::None);
        let (labels, scores) = run(&k, tensor2(&[[2.0f32], [-2.0]]));
        assert_eq!(labels, tensor1(&[1i64, 0]));
        assert_eq!(scores.shape(), &[2, 1]);
    }

    #[test]
    fn multiclass_labels_come_from_raw_scores_then_softmax() {
        let k = clf(
            vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
            vec![0.0; 3],
            vec![10, 20, 30],
            PostTransform::Softmax,
        );
        let (labels, scores) = run(&k, tensor1(&[0.0f32, 2.0]));
        assert_eq!(labels, tensor1(&[20i64]));
        let s = scores
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        assert_eq!(scores.shape(), &[1, 3]);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[1] > s[0] && s[0] > s[2]);
    }

    #[test]
    fn a_wrong_feature_count_is_an_input_error() {
        let k = clf(vec![1.0, 1.0], vec![0.0], vec![0, 1], PostTransform::None);
        let err = k
            .eval(tvec!(tensor2(&[[1.0f32, 2.0, 3.0]]).into_tvalue()))
            .unwrap_err();
        assert!(err.to_string().contains("3 features"), "{err}");
    }

    #[test]
    fn regressor_ignores_intercepts_of_the_wrong_length() {
        let k = LinearRegressor {
            coefficients: vec![1.0, 2.0],
            intercepts: None,
            targets: 1,
            post: PostTransform::None,
        };
        let y = k
            .eval(tvec!(tensor2(&[[1.0f32, 1.0]]).into_tvalue()))
            .unwrap();
        assert_eq!(*y[0], tensor2(&[[3.0f32]]));
    }
}
