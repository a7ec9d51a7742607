//! Element-wise feature preprocessing: `Scaler`, `Normalizer`, `Imputer`,
//! `Binarizer`.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::check_input_arity;

use super::attrs::Attrs;
use super::node::Kernel;
use super::values::{arg, as_f32, input_err, is_numeric};
use super::MlError;

/// Rules for an operator whose output has its input's shape.
fn same_shape<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    dt: Option<DatumType>,
) -> InferenceResult {
    check_input_arity(inputs, 1)?;
    s.equals(&outputs[0].shape, &inputs[0].shape)?;
    match dt {
        Some(dt) => s.equals(&outputs[0].datum_type, dt),
        None => s.equals(&outputs[0].datum_type, &inputs[0].datum_type),
    }
}

/// The feature stride onnxruntime uses: `C` of `[C]`, `dims[1]` otherwise.
fn stride(op: &'static str, shape: &[usize]) -> TractResult<usize> {
    match shape {
        [] => Err(input_err(op, "a scalar; at least one dimension expected")),
        [c] => Ok(*c),
        [_, c, ..] => Ok(*c),
    }
}

/// Per-feature (or one shared) values, checked against the input's stride.
fn per_feature<'v, T>(
    op: &'static str,
    attr: &str,
    v: &'v [T],
    stride: usize,
) -> TractResult<&'v [T]> {
    if v.len() == stride || v.len() == 1 {
        Ok(v)
    } else {
        Err(input_err(
            op,
            format!(
                "{attr} has {} values; 1 or the input's {stride} features expected",
                v.len()
            ),
        ))
    }
}

/// One value per feature: per-feature values as they are, a shared one
/// repeated. Element `i` of the input belongs to feature `i % stride`, so
/// rows of `stride` elements zip with this.
fn expand<T: Copy>(v: &[T], stride: usize) -> Vec<T> {
    if v.len() == 1 {
        vec![v[0]; stride]
    } else {
        v.to_vec()
    }
}

/// `Y = (X - offset) * scale`, float32 out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Scaler {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("Scaler", node);
        let scale = a.floats("scale");
        let offset = a.floats("offset");
        if scale.is_empty() {
            return Err(a.err("scale", "is missing or empty"));
        }
        if offset.len() != scale.len() {
            return Err(a.err(
                "offset",
                format!(
                    "has {} values, scale {}: they must match",
                    offset.len(),
                    scale.len()
                ),
            ));
        }
        Ok(Self { offset, scale })
    }
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        same_shape(s, inputs, outputs, Some(DatumType::F32))
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = arg("Scaler", &inputs, 0)?;
        let st = stride("Scaler", x.shape())?;
        let offset = per_feature("Scaler", "offset", &self.offset, st)?;
        let scale = per_feature("Scaler", "scale", &self.scale, st)?;
        let (offset, scale) = (expand(offset, st), expand(scale, st));
        let mut out: Vec<f32> = Vec::with_capacity(x.len());
        if st > 0 && x.datum_type() == DatumType::F64 {
            for row in x.try_as_plain_ram()?.as_slice::<f64>()?.chunks(st) {
                out.extend(
                    row.iter()
                        .zip(&offset)
                        .zip(&scale)
                        .map(|((x, o), s)| ((x - f64::from(*o)) * f64::from(*s)) as f32),
                );
            }
        } else if st > 0 {
            for row in as_f32("Scaler", x)?.chunks(st) {
                out.extend(
                    row.iter()
                        .zip(&offset)
                        .zip(&scale)
                        .map(|((x, o), s)| (x - o) * s),
                );
            }
        }
        Ok(tvec!(Tensor::from_shape(x.shape(), &out)?.into_tvalue()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Norm {
    Max,
    L1,
    L2,
}

/// Each row divided by its max, L1 or L2 norm (rows whose norm is 0 are
/// copied), float32 out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Normalizer {
    norm: Norm,
}

impl Normalizer {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("Normalizer", node);
        let norm = match a.string("norm")?.as_deref().unwrap_or("MAX") {
            "MAX" => Norm::Max,
            "L1" => Norm::L1,
            "L2" => Norm::L2,
            other => return Err(a.err("norm", format!("is {other:?}; MAX, L1 or L2 expected"))),
        };
        Ok(Self { norm })
    }
}

impl Kernel for Normalizer {
    fn name(&self) -> &'static str {
        "Normalizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        same_shape(s, inputs, outputs, Some(DatumType::F32))
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = arg("Normalizer", &inputs, 0)?;
        let (_, width) = super::values::rows_width("Normalizer", x.shape())?;
        let mut out = as_f32("Normalizer", x)?.into_owned();
        if width > 0 {
            out.chunks_mut(width)
                .for_each(|row| normalize(self.norm, row));
        }
        Ok(tvec!(Tensor::from_shape(x.shape(), &out)?.into_tvalue()))
    }
}

fn normalize(norm: Norm, row: &mut [f32]) {
    match norm {
        Norm::Max => {
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            if max != 0.0 {
                row.iter_mut().for_each(|v| *v /= max);
            }
        }
        Norm::L1 => {
            let sum: f32 = row.iter().map(|v| v.abs()).sum();
            if sum != 0.0 {
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        Norm::L2 => {
            let sum: f32 = row.iter().map(|v| v * v).sum();
            if sum != 0.0 {
                row.iter_mut().for_each(|v| {
                    let r = (*v * *v / sum).sqrt();
                    *v = if *v < 0.0 { -r } else { r };
                });
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Imputed {
    Floats { values: Vec<f32>, replaced: f32 },
    Ints { values: Vec<i64>, replaced: i64 },
}

/// Replaces `replaced_value_*` (NaN matches NaN) with the imputed value of
/// the element's feature; same type out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Imputer {
    imputed: Imputed,
}

impl Imputer {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("Imputer", node);
        let floats = a.floats("imputed_value_floats");
        let ints = a.ints("imputed_value_int64s");
        let imputed = match (floats.is_empty(), ints.is_empty()) {
            (false, true) => Imputed::Floats {
                values: floats,
                replaced: a.float("replaced_value_float").unwrap_or(0.0),
            },
            (true, false) => Imputed::Ints {
                values: ints,
                replaced: a.int("replaced_value_int64").unwrap_or(0),
            },
            _ => {
                return Err(a.err(
                    "imputed_value_floats",
                    "or imputed_value_int64s: exactly one of them must be given",
                ))
            }
        };
        Ok(Self { imputed })
    }
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        same_shape(s, inputs, outputs, None)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "Imputer";
        let x = arg(OP, &inputs, 0)?;
        let st = stride(OP, x.shape())?;
        let mut y = x.clone();
        match (&self.imputed, x.datum_type()) {
            (Imputed::Floats { values, replaced }, DatumType::F32) => {
                let values = expand(per_feature(OP, "imputed_value_floats", values, st)?, st);
                let mut plain = y.try_as_plain_ram_mut()?;
                for row in plain.as_slice_mut::<f32>()?.chunks_mut(st.max(1)) {
                    for (v, new) in row.iter_mut().zip(&values) {
                        if (v.is_nan() && replaced.is_nan()) || *v == *replaced {
                            *v = *new;
                        }
                    }
                }
            }
            (Imputed::Floats { values, replaced }, DatumType::F64) => {
                let values = expand(per_feature(OP, "imputed_value_floats", values, st)?, st);
                let mut plain = y.try_as_plain_ram_mut()?;
                for row in plain.as_slice_mut::<f64>()?.chunks_mut(st.max(1)) {
                    for (v, new) in row.iter_mut().zip(&values) {
                        if (v.is_nan() && replaced.is_nan()) || *v == f64::from(*replaced) {
                            *v = f64::from(*new);
                        }
                    }
                }
            }
            (Imputed::Ints { values, replaced }, DatumType::I64) => {
                let values = expand(per_feature(OP, "imputed_value_int64s", values, st)?, st);
                let mut plain = y.try_as_plain_ram_mut()?;
                for row in plain.as_slice_mut::<i64>()?.chunks_mut(st.max(1)) {
                    for (v, new) in row.iter_mut().zip(&values) {
                        if *v == *replaced {
                            *v = *new;
                        }
                    }
                }
            }
            (Imputed::Ints { values, replaced }, DatumType::I32) => {
                let values = expand(per_feature(OP, "imputed_value_int64s", values, st)?, st);
                let mut plain = y.try_as_plain_ram_mut()?;
                for row in plain.as_slice_mut::<i32>()?.chunks_mut(st.max(1)) {
                    for (v, new) in row.iter_mut().zip(&values) {
                        if i64::from(*v) == *replaced {
                            *v = i32::try_from(*new).map_err(|_| {
                                input_err(OP, "an imputed int64 value does not fit the int32 input")
                            })?;
                        }
                    }
                }
            }
            (imputed, dt) => {
                let kind = match imputed {
                    Imputed::Floats { .. } => "imputed_value_floats (float or double input)",
                    Imputed::Ints { .. } => "imputed_value_int64s (int64 or int32 input)",
                };
                return Err(input_err(OP, format!("element type {dt:?} with {kind}")));
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

/// 1 where the element is above `threshold`, else 0; same type out. NaN is
/// refused (as onnxruntime does).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Binarizer {
    threshold: f32,
}

impl Binarizer {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        // The spec's default is 0.0 (onnxruntime uses 1.0 when the attribute
        // is absent; exporters always write it).
        let a = Attrs::new("Binarizer", node);
        Ok(Self {
            threshold: a.float("threshold").unwrap_or(0.0),
        })
    }
}

impl Kernel for Binarizer {
    fn name(&self) -> &'static str {
        "Binarizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        same_shape(s, inputs, outputs, None)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        const OP: &str = "Binarizer";
        let x = arg(OP, &inputs, 0)?;
        if !is_numeric(x.datum_type()) {
            return Err(input_err(OP, format!("element type {:?}", x.datum_type())));
        }
        // Compared in the input's own precision (double stays double).
        let v: Vec<f64> = if x.datum_type() == DatumType::F64 {
            x.try_as_plain_ram()?.as_slice::<f64>()?.to_vec()
        } else {
            as_f32(OP, x)?.iter().map(|v| f64::from(*v)).collect()
        };
        let t = f64::from(self.threshold);
        if let Some(i) = v.iter().position(|x| x.is_nan()) {
            return Err(input_err(OP, format!("element {i} is NaN")));
        }
        let bits: Vec<bool> = v.iter().map(|x| *x > t).collect();
        let ones: Vec<f32> = bits.iter().map(|b| f32::from(u8::from(*b))).collect();
        let y = Tensor::from_shape(x.shape(), &ones)?;
        let dt = x.datum_type();
        let y = if dt == DatumType::TDim {
            y.cast_to::<i64>()?.into_owned()
        } else {
            y.cast_to_dt(dt)?.into_owned()
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

    #[test]
    fn scaler_per_feature_and_shared() {
        let k = Scaler {
            offset: vec![1.0, 2.0],
            scale: vec![2.0, 0.5],
        };
        let y = run(&k, tensor2(&[[1.0f32, 4.0], [3.0, 0.0]]));
        assert_eq!(y, tensor2(&[[0.0f32, 1.0], [4.0, -1.0]]));
        let shared = Scaler {
            offset: vec![1.0],
            scale: vec![3.0],
        };
        let y = run(&shared, tensor2(&[[2i64, 0]]));
        assert_eq!(y, tensor2(&[[3.0f32, -3.0]]));
        let err = k.eval(tvec!(tensor2(&[[1.0f32, 2.0, 3.0]]).into_tvalue()));
        assert!(err.unwrap_err().to_string().contains("offset has 2 values"));
    }

    #[test]
    fn normalizer_zero_rows_are_copied_and_l2_keeps_signs() {
        let l2 = Normalizer { norm: Norm::L2 };
        let y = run(&l2, tensor2(&[[3.0f32, -4.0], [0.0, 0.0]]));
        assert_eq!(y, tensor2(&[[0.6f32, -0.8], [0.0, 0.0]]));
        let max = Normalizer { norm: Norm::Max };
        let y = run(&max, tensor2(&[[-2.0f32, -4.0]]));
        assert_eq!(y, tensor2(&[[1.0f32, 2.0]]));
        let l1 = Normalizer { norm: Norm::L1 };
        let y = run(&l1, tensor1(&[1.0f32, -3.0]));
        assert_eq!(y, tensor1(&[0.25f32, -0.75]));
    }

    #[test]
    fn imputer_replaces_nan_per_feature_and_ints_by_value() {
        let k = Imputer {
            imputed: Imputed::Floats {
                values: vec![10.0, 20.0],
                replaced: f32::NAN,
            },
        };
        let y = run(&k, tensor2(&[[f32::NAN, 1.0], [2.0, f32::NAN]]));
        assert_eq!(y, tensor2(&[[10.0f32, 1.0], [2.0, 20.0]]));
        let ints = Imputer {
            imputed: Imputed::Ints {
                values: vec![7],
                replaced: -1,
            },
        };
        assert_eq!(run(&ints, tensor1(&[-1i64, 3])), tensor1(&[7i64, 3]));
        // Float values for an int input: refused, not cast.
        let err = k.eval(tvec!(tensor1(&[1i64]).into_tvalue())).unwrap_err();
        assert!(err.to_string().contains("imputed_value_floats"), "{err}");
    }

    #[test]
    fn binarizer_keeps_type_and_refuses_nan() {
        let k = Binarizer { threshold: 0.5 };
        assert_eq!(
            run(&k, tensor1(&[0.5f32, 0.6, -1.0])),
            tensor1(&[0.0f32, 1.0, 0.0])
        );
        assert_eq!(run(&k, tensor1(&[0i64, 1])), tensor1(&[0i64, 1]));
        let err = k
            .eval(tvec!(tensor1(&[f32::NAN]).into_tvalue()))
            .unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
    }
}
