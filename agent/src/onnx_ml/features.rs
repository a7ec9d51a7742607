//! Feature assembly: `FeatureVectorizer` (inputs side by side) and
//! `ArrayFeatureExtractor` (columns by index).

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::check_input_arity;

use super::attrs::Attrs;
use super::node::Kernel;
use super::values::{arg, as_f32, as_i64, input_err};
use super::MlError;

/// Concatenates its inputs' rows into one float32 `[N, sum(inputdimensions)]`
/// tensor: each input contributes its first `inputdimensions[i]` values per
/// row, zero-padded when it has fewer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FeatureVectorizer {
    dims: Vec<usize>,
}

impl FeatureVectorizer {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("FeatureVectorizer", node);
        let dims = a
            .ints("inputdimensions")
            .iter()
            .map(|d| usize::try_from(*d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| a.err("inputdimensions", "has a negative value"))?;
        if dims.len() != node.input.len() {
            return Err(a.err(
                "inputdimensions",
                format!("has {} values for {} inputs", dims.len(), node.input.len()),
            ));
        }
        Ok(Self { dims })
    }

    fn total(&self) -> usize {
        self.dims.iter().sum()
    }
}

impl Kernel for FeatureVectorizer {
    fn name(&self) -> &'static str {
        "FeatureVectorizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.dims.len())?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[1], self.total().to_dim())?;
        s.given(&inputs[0].rank, move |s, rank| {
            if rank == 1 {
                s.equals(&outputs[0].shape[0], 1.to_dim())
            } else {
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])
            }
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let first = inputs
            .first()
            .ok_or_else(|| input_err("FeatureVectorizer", "no inputs"))?;
        let n = if first.rank() == 1 {
            1.to_dim()
        } else {
            first.shape[0].clone()
        };
        Ok(tvec!(f32::fact([n, self.total().to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "FeatureVectorizer";
        let first = arg(OP, &inputs, 0)?;
        let n = if first.rank() == 1 {
            1
        } else {
            first.shape()[0]
        };
        let total = self.total();
        let mut y = vec![0.0f32; n * total];
        let mut offset = 0;
        for (ix, want) in self.dims.iter().enumerate() {
            let x = arg(OP, &inputs, ix)?;
            let (rows, width) = match x.shape() {
                [c] => (1, *c),
                [r, rest @ ..] => (*r, rest.iter().product()),
                [] => return Err(input_err(OP, format!("input {ix} is a scalar"))),
            };
            if rows != n {
                return Err(input_err(
                    OP,
                    format!("input {ix} has {rows} rows, input 0 has {n}"),
                ));
            }
            let v = as_f32(OP, x)?;
            let take = width.min(*want);
            for r in 0..n {
                let src = &v[r * width..r * width + take];
                y[r * total + offset..r * total + offset + take].copy_from_slice(src);
            }
            offset += want;
        }
        Ok(tvec!(Tensor::from_shape(&[n, total], &y)?.into_tvalue()))
    }
}

/// Picks columns of the last axis by index (`[C]` inputs give `[1, k]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ArrayFeatureExtractor;

impl ArrayFeatureExtractor {
    pub fn parse(_node: &NodeProto) -> Result<Self, MlError> {
        Ok(Self)
    }
}

/// The number of indices in a typed `Y` fact.
fn n_indices(fact: &TypedFact) -> TDim {
    fact.shape.iter().product()
}

impl Kernel for ArrayFeatureExtractor {
    fn name(&self) -> &'static str {
        "ArrayFeatureExtractor"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            s.equals(&outputs[0].rank, rank.max(2) as i64)?;
            if rank >= 2 {
                for d in 0..rank - 1 {
                    s.equals(&outputs[0].shape[d], &inputs[0].shape[d])?;
                }
            } else {
                s.equals(&outputs[0].shape[0], 1.to_dim())?;
            }
            let last = rank.max(2) - 1;
            s.given(&inputs[1].shape, move |s, yshape| {
                let k: TDim = yshape.iter().product();
                s.equals(&outputs[0].shape[last], k)
            })
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let k = n_indices(inputs[1]);
        let shape: TVec<TDim> = if x.rank() <= 1 {
            tvec![1.to_dim(), k]
        } else {
            let mut s: TVec<TDim> = x.shape.iter().cloned().collect();
            let last = s.len() - 1;
            s[last] = k;
            s
        };
        Ok(tvec!(TypedFact::dt_shape(x.datum_type, shape)))
    }

    /// Constant in-range indices into the last axis of a `[.., C]` input
    /// (what exporters emit) are tract's `Gather`, which the optimiser can
    /// fold and fuse; anything else runs the kernel.
    fn wire_native(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<Option<TVec<OutletId>>> {
        let x = model.outlet_fact(inputs[0])?.clone();
        let y = model.outlet_fact(inputs[1])?.clone();
        let (Some(stride), Some(idx)) = (x.shape.last().and_then(|d| d.as_i64()), y.konst.as_ref())
        else {
            return Ok(None);
        };
        let in_range = idx.rank() == 1
            && idx.len() > 0
            && as_i64("ArrayFeatureExtractor", idx)
                .is_ok_and(|v| v.iter().all(|i| (0..stride).contains(i)));
        if x.rank() < 2 || !in_range {
            return Ok(None);
        }
        let gather = tract_onnx::tract_hir::tract_core::ops::array::Gather::new(x.rank() - 1);
        Ok(Some(model.wire_node(prefix, gather, inputs)?))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "ArrayFeatureExtractor";
        let x = arg(OP, &inputs, 0)?;
        let idx = as_i64(OP, arg(OP, &inputs, 1)?)?;
        let Some(&stride) = x.shape().last() else {
            return Err(input_err(OP, "X is a scalar"));
        };
        if idx.is_empty() {
            return Err(input_err(OP, "no indices"));
        }
        let cols: Vec<usize> = idx
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .filter(|i| *i < stride)
                    .ok_or_else(|| input_err(OP, format!("index {i} is outside 0..{stride}")))
            })
            .collect::<TractResult<_>>()?;
        let outer = x.len() / stride.max(1);
        let shape: Vec<usize> = if x.rank() == 1 {
            vec![1, cols.len()]
        } else {
            let mut s = x.shape().to_vec();
            let last = s.len() - 1;
            s[last] = cols.len();
            s
        };
        // Gather along the last axis, in the element type of X. Plain
        // numbers are copied element by element: the indices are often one
        // per row (a label looked up from an argmax), and a tensor slice per
        // index made that lookup cost more than the model.
        let dt = x.datum_type();
        if dt.is_copy() {
            let size = dt.size_of();
            let src = x.as_bytes();
            let mut y = Tensor::zero_dt(dt, &shape)?;
            let dst = y.as_bytes_mut();
            let mut at = 0;
            for row in 0..outer {
                for &c in &cols {
                    let from = (row * stride + c) * size;
                    dst[at..at + size].copy_from_slice(&src[from..from + size]);
                    at += size;
                }
            }
            return Ok(tvec!(y.into_tvalue()));
        }
        let flat = x.clone().into_shape(&[outer, stride])?;
        let picked: Vec<Tensor> = cols
            .iter()
            .map(|&c| flat.slice(1, c, c + 1))
            .collect::<TractResult<_>>()?;
        let y = Tensor::stack_tensors(1, &picked)?.into_shape(&shape)?;
        Ok(tvec!(y.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_vectorizer_pads_and_truncates() {
        let k = FeatureVectorizer { dims: vec![3, 1] };
        let y = k
            .eval(tvec!(
                tensor2(&[[1.0f32, 2.0], [3.0, 4.0]]).into_tvalue(),
                tensor2(&[[5i64, 6], [7, 8]]).into_tvalue()
            ))
            .unwrap();
        assert_eq!(
            *y[0],
            tensor2(&[[1.0f32, 2.0, 0.0, 5.0], [3.0, 4.0, 0.0, 7.0]])
        );
    }

    #[test]
    fn array_feature_extractor_picks_columns_and_refuses_out_of_range() {
        let k = ArrayFeatureExtractor;
        let x = tensor2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        let y = k
            .eval(tvec!(
                x.clone().into_tvalue(),
                tensor1(&[2i64, 0]).into_tvalue()
            ))
            .unwrap();
        assert_eq!(*y[0], tensor2(&[[3.0f32, 1.0], [6.0, 4.0]]));
        // A 1-D input gives [1, k].
        let y = k
            .eval(tvec!(
                tensor1(&[7i64, 8]).into_tvalue(),
                tensor0(1i64).into_tvalue()
            ))
            .unwrap();
        assert_eq!(*y[0], tensor2(&[[8i64]]));
        let err = k
            .eval(tvec!(x.into_tvalue(), tensor1(&[3i64]).into_tvalue()))
            .unwrap_err();
        assert!(err.to_string().contains("outside 0..3"), "{err}");
    }
}
