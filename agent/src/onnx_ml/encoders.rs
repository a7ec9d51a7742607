//! Category encoders: `OneHotEncoder` and `CategoryMapper` (`LabelEncoder`
//! has its own file).

use std::collections::HashMap;

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::check_input_arity;
use tract_onnx::tract_hir::tract_ndarray::ArrayD;

use super::attrs::Attrs;
use super::node::Kernel;
use super::values::{arg, as_f32, as_i64, input_err};
use super::MlError;

pub(crate) fn strings<'t>(op: &'static str, t: &'t Tensor) -> TractResult<&'t [String]> {
    if t.datum_type() != DatumType::String {
        return Err(input_err(
            op,
            format!("element type {:?}; string expected", t.datum_type()),
        ));
    }
    t.try_as_plain_ram()?.as_slice::<String>()
}

/// Int64 values of a numeric input, floats truncated toward zero (as
/// onnxruntime's cast does); NaN has no category.
fn int_keys(op: &'static str, t: &Tensor) -> TractResult<Vec<Option<i64>>> {
    match t.datum_type() {
        DatumType::F32 | DatumType::F64 => Ok(as_f32(op, t)?
            .iter()
            .map(|v| (!v.is_nan()).then_some(*v as i64))
            .collect()),
        _ => Ok(as_i64(op, t)?.into_iter().map(Some).collect()),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Cats {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

/// One float32 column per category after the input's dimensions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OneHotEncoder {
    cats: Cats,
    zeros: bool,
}

impl OneHotEncoder {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("OneHotEncoder", node);
        let ints = a.ints("cats_int64s");
        let strs = a.strings("cats_strings")?;
        let cats = match (ints.is_empty(), strs.is_empty()) {
            (false, true) => Cats::Ints(ints),
            (true, false) => Cats::Strings(strs),
            _ => {
                return Err(a.err(
                    "cats_int64s",
                    "or cats_strings: exactly one must be given, not empty",
                ))
            }
        };
        Ok(Self {
            cats,
            zeros: a.int("zeros").unwrap_or(1) != 0,
        })
    }

    fn n(&self) -> usize {
        match &self.cats {
            Cats::Ints(c) => c.len(),
            Cats::Strings(c) => c.len(),
        }
    }
}

impl Kernel for OneHotEncoder {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        let n = self.n().to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            s.equals(&outputs[0].rank, rank + 1)?;
            let rank = rank as usize;
            for d in 0..rank {
                s.equals(&outputs[0].shape[d], &inputs[0].shape[d])?;
            }
            s.equals(&outputs[0].shape[rank], n.clone())
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        shape.push(self.n().to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "OneHotEncoder";
        let x = arg(OP, &inputs, 0)?;
        if x.rank() > 2 {
            return Err(input_err(
                OP,
                format!("shape {:?}; rank 1 or 2 expected", x.shape()),
            ));
        }
        let n = self.n();
        // Index of each element's category, None when it has none.
        let hits: Vec<Option<usize>> = match (&self.cats, x.datum_type()) {
            (Cats::Strings(cats), DatumType::String) => {
                let index: HashMap<&str, usize> = cats
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.as_str(), i))
                    .collect();
                strings(OP, x)?
                    .iter()
                    .map(|s| index.get(s.as_str()).copied())
                    .collect()
            }
            (Cats::Ints(cats), dt) if dt != DatumType::String => {
                let index: HashMap<i64, usize> =
                    cats.iter().enumerate().map(|(i, c)| (*c, i)).collect();
                int_keys(OP, x)?
                    .iter()
                    .map(|k| k.and_then(|k| index.get(&k).copied()))
                    .collect()
            }
            // Categories of the other kind: nothing matches.
            _ => vec![None; x.len()],
        };
        let mut y = vec![0.0f32; x.len() * n];
        for (i, hit) in hits.iter().enumerate() {
            match hit {
                Some(c) => y[i * n + c] = 1.0,
                None if !self.zeros => {
                    return Err(input_err(
                        OP,
                        format!("element {i} is not a known category (zeros=0)"),
                    ))
                }
                None => {}
            }
        }
        let mut shape = x.shape().to_vec();
        shape.push(n);
        Ok(tvec!(Tensor::from_shape(&shape, &y)?.into_tvalue()))
    }
}

/// int64 -> string or string -> int64 through two parallel lists.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CategoryMapper {
    ints: Vec<i64>,
    strings: Vec<String>,
    default_int: i64,
    default_string: String,
}

impl CategoryMapper {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("CategoryMapper", node);
        let ints = a.ints("cats_int64s");
        let strings = a.strings("cats_strings")?;
        if ints.len() != strings.len() || ints.is_empty() {
            return Err(a.err(
                "cats_int64s",
                format!(
                    "has {} entries and cats_strings {}: both non-empty and the same length",
                    ints.len(),
                    strings.len()
                ),
            ));
        }
        Ok(Self {
            ints,
            strings,
            default_int: a.int("default_int64").unwrap_or(-1),
            default_string: a
                .string("default_string")?
                .unwrap_or_else(|| "_Unused".into()),
        })
    }
}

impl Kernel for CategoryMapper {
    fn name(&self) -> &'static str {
        "CategoryMapper"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        s.given(&inputs[0].datum_type, move |s, dt| {
            let out = if dt == DatumType::String {
                DatumType::I64
            } else {
                DatumType::String
            };
            s.equals(&outputs[0].datum_type, out)
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let out = if inputs[0].datum_type == DatumType::String {
            DatumType::I64
        } else {
            DatumType::String
        };
        Ok(tvec!(TypedFact::dt_shape(out, inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "CategoryMapper";
        let x = arg(OP, &inputs, 0)?;
        let shape = x.shape();
        let y = if x.datum_type() == DatumType::String {
            let index: HashMap<&str, i64> = self
                .strings
                .iter()
                .zip(&self.ints)
                .map(|(s, i)| (s.as_str(), *i))
                .collect();
            let d: Vec<i64> = strings(OP, x)?
                .iter()
                .map(|s| index.get(s.as_str()).copied().unwrap_or(self.default_int))
                .collect();
            Tensor::from_shape(shape, &d)?
        } else {
            let index: HashMap<i64, &str> = self
                .ints
                .iter()
                .zip(&self.strings)
                .map(|(i, s)| (*i, s.as_str()))
                .collect();
            let d: Vec<String> = as_i64(OP, x)?
                .iter()
                .map(|i| {
                    index
                        .get(i)
                        .copied()
                        .unwrap_or(&self.default_string)
                        .to_string()
                })
                .collect();
            ArrayD::from_shape_vec(shape, d)?.into_tensor()
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<K: Kernel>(k: &K, t: Tensor) -> Tensor {
        k.eval(tvec!(t.into_tvalue()))
            .unwrap()
            .remove(0)
            .into_tensor()
    }

    fn strs(v: &[&str]) -> Tensor {
        tensor1(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn one_hot_appends_a_category_axis_and_honours_zeros() {
        let k = OneHotEncoder {
            cats: Cats::Ints(vec![3, 5]),
            zeros: true,
        };
        let y = run(&k, tensor2(&[[5i64], [4]]));
        assert_eq!(y.shape(), &[2, 1, 2]);
        assert_eq!(
            y.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
            &[0.0, 1.0, 0.0, 0.0]
        );
        // Floats are truncated to int64 first.
        let y = run(&k, tensor1(&[3.7f32]));
        assert_eq!(y, tensor2(&[[1.0f32, 0.0]]));
        let strict = OneHotEncoder { zeros: false, ..k };
        let err = strict
            .eval(tvec!(tensor1(&[4i64]).into_tvalue()))
            .unwrap_err();
        assert!(err.to_string().contains("zeros=0"), "{err}");
    }

    #[test]
    fn category_mapper_goes_both_ways() {
        let k = CategoryMapper {
            ints: vec![1, 2],
            strings: vec!["one".into(), "two".into()],
            default_int: -1,
            default_string: "_Unused".into(),
        };
        assert_eq!(run(&k, tensor1(&[2i64, 9])), strs(&["two", "_Unused"]));
        assert_eq!(run(&k, strs(&["one", "x"])), tensor1(&[1i64, -1]));
    }
}
