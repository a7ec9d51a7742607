//! `SVMRegressor`: a libsvm-style expansion over support vectors, or a
//! liblinear-style weight vector, as onnxruntime computes it.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::check_input_arity;

use super::attrs::Attrs;
use super::node::Kernel;
use super::post::PostTransform;
use super::svm::{check_features, KernelType, SvmKernel};
use super::values::{arg, as_f32, rows_dim, rows_width};
use super::MlError;

/// `[N, 1]`: the kernel expansion over the support vectors plus `rho[0]`
/// (or a linear model when `n_supports` is 0); ±1 for one-class models.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SvmRegressor {
    kernel: SvmKernel,
    support_vectors: Vec<f32>,
    n_vectors: usize,
    features: usize,
    coefficients: Vec<f32>,
    rho: f32,
    one_class: bool,
}

impl SvmRegressor {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("SVMRegressor", node);
        let mut kernel = SvmKernel::parse(&a)?;
        let coefficients = a.floats("coefficients");
        if coefficients.is_empty() {
            return Err(a.err("coefficients", "is missing or empty"));
        }
        let rho = *a
            .floats("rho")
            .first()
            .ok_or_else(|| a.err("rho", "is missing"))?;
        if a.post_transform()? != PostTransform::None {
            // onnxruntime ignores it; the spec applies it. Neither is guessed.
            return Err(a.err("post_transform", "other than NONE is not supported"));
        }
        let n_vectors = usize::try_from(a.int("n_supports").unwrap_or(0))
            .map_err(|_| a.err("n_supports", "is negative"))?;
        let support_vectors = a.floats("support_vectors");
        let features = if n_vectors > 0 {
            if support_vectors.is_empty() || !support_vectors.len().is_multiple_of(n_vectors) {
                return Err(a.err(
                    "support_vectors",
                    format!(
                        "has {} values for {n_vectors} vectors",
                        support_vectors.len()
                    ),
                ));
            }
            if coefficients.len() < n_vectors {
                return Err(a.err("coefficients", format!("needs {n_vectors} values")));
            }
            support_vectors.len() / n_vectors
        } else {
            kernel.kind = KernelType::Linear;
            coefficients.len()
        };
        Ok(Self {
            kernel,
            support_vectors,
            n_vectors,
            features,
            coefficients,
            rho,
            one_class: a.int("one_class").unwrap_or(0) != 0,
        })
    }

    fn row(&self, x: &[f32]) -> f32 {
        let y = if self.n_vectors > 0 {
            let sum: f64 = self
                .support_vectors
                .chunks(self.features)
                .zip(&self.coefficients)
                .map(|(v, c)| f64::from(c * self.kernel.eval(x, v, 0.0)))
                .sum();
            (sum + f64::from(self.rho)) as f32
        } else {
            self.kernel.eval(x, &self.coefficients, self.rho)
        };
        if self.one_class {
            if y > 0.0 {
                1.0
            } else {
                -1.0
            }
        } else {
            y
        }
    }
}

impl Kernel for SvmRegressor {
    fn name(&self) -> &'static str {
        "SVMRegressor"
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
        s.equals(&outputs[0].shape[1], 1.to_dim())?;
        s.given(&inputs[0].rank, move |s, rank| {
            if rank == 1 {
                s.equals(&outputs[0].shape[0], 1.to_dim())
            } else {
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])
            }
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = rows_dim("SVMRegressor", inputs[0])?;
        Ok(tvec!(f32::fact([n, 1.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "SVMRegressor";
        let x = arg(OP, &inputs, 0)?;
        let (rows, features) = rows_width(OP, x.shape())?;
        check_features(OP, features, self.features)?;
        let x = as_f32(OP, x)?;
        let y: Vec<f32> = x
            .chunks(features.max(1))
            .take(rows)
            .map(|r| self.row(r))
            .collect();
        Ok(tvec!(Tensor::from_shape(&[rows, 1], &y)?.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regressor_one_class_gives_signs() {
        let k = SvmRegressor {
            kernel: SvmKernel {
                kind: KernelType::Linear,
                gamma: 0.0,
                coef0: 0.0,
                degree: 0.0,
            },
            support_vectors: vec![],
            n_vectors: 0,
            features: 2,
            coefficients: vec![1.0, -1.0],
            rho: 0.5,
            one_class: true,
        };
        let y = k
            .eval(tvec!(tensor2(&[[1.0f32, 0.0], [0.0, 1.0]]).into_tvalue()))
            .unwrap();
        assert_eq!(*y[0], tensor2(&[[1.0f32], [-1.0]]));
    }
}
