//! `LabelEncoder`: each element mapped through a key -> value table, in all
//! three of its forms: opset 1 (`classes_strings`: string -> index, int64 ->
//! string), opset 2 (`keys_*` / `values_*` lists) and opset 4
//! (`keys_tensor` / `values_tensor` / `default_tensor`).

use std::collections::HashMap;

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::check_input_arity;
use tract_onnx::tract_hir::tract_ndarray::ArrayD;

use super::attrs::Attrs;
use super::encoders::strings;
use super::node::Kernel;
use super::values::{arg, as_f32, as_i64, input_err};
use super::MlError;

const OP: &str = "LabelEncoder";

/// Keys or values, by type.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Strings(Vec<String>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Ints(v) => v.len(),
            Column::Floats(v) => v.len(),
            Column::Strings(v) => v.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Column::Ints(_) => DatumType::I64,
            Column::Floats(_) => DatumType::F32,
            Column::Strings(_) => DatumType::String,
        }
    }

    /// A tensor attribute's values (int64, int32, int16, float or string).
    fn from_tensor(a: &Attrs, attr: &str, t: &Tensor) -> Result<Self, MlError> {
        let bad = |e: TractError| a.err(attr, format!("cannot be read: {e}"));
        Ok(match t.datum_type() {
            DatumType::I64 | DatumType::I32 | DatumType::I16 => {
                Column::Ints(as_i64(OP, t).map_err(bad)?)
            }
            DatumType::F32 => Column::Floats(as_f32(OP, t).map_err(bad)?.into_owned()),
            DatumType::String => Column::Strings(strings(OP, t).map_err(bad)?.to_vec()),
            dt => {
                return Err(a.err(
                    attr,
                    format!(
                        "has element type {dt:?}; int64, int32, int16, float or string supported"
                    ),
                ))
            }
        })
    }
}

/// A float key that hashes: -0 and 0 are one key, every NaN is one key.
fn float_key(v: f32) -> u32 {
    if v.is_nan() {
        f32::NAN.to_bits()
    } else if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Mapping {
    /// Opset 1: a string's index in the classes, or an index's class.
    Classes(Vec<String>),
    /// Opset 2 and later: keys to values.
    Pairs { keys: Column, values: Column },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LabelEncoder {
    mapping: Mapping,
    default_int: i64,
    default_float: f32,
    default_string: String,
}

impl LabelEncoder {
    /// `load` turns a tensor attribute into a tensor (the parser's loader).
    pub fn parse(
        node: &NodeProto,
        load: impl Fn(&tract_onnx::pb::TensorProto) -> TractResult<Tensor>,
    ) -> Result<Self, MlError> {
        let a = Attrs::new(OP, node);
        let mut default_int = a.int("default_int64").unwrap_or(-1);
        let mut default_float = a.float("default_float").unwrap_or(-0.0);
        let mut default_string = a
            .string("default_string")?
            .unwrap_or_else(|| "_Unused".into());
        let classes = a.strings("classes_strings")?;
        if !classes.is_empty() {
            return Ok(Self {
                mapping: Mapping::Classes(classes),
                default_int,
                default_float,
                default_string,
            });
        }
        let column = |prefix: &str| -> Result<Column, MlError> {
            let tensor_attr = format!("{prefix}_tensor");
            if let Some(t) = a.tensor(&tensor_attr) {
                let t = load(t).map_err(|e| a.err(&tensor_attr, format!("cannot be read: {e}")))?;
                return Column::from_tensor(&a, &tensor_attr, &t);
            }
            let ints = a.ints(&format!("{prefix}_int64s"));
            let floats = a.floats(&format!("{prefix}_floats"));
            let strs = a.strings(&format!("{prefix}_strings"))?;
            match [!ints.is_empty(), !floats.is_empty(), !strs.is_empty()] {
                [true, false, false] => Ok(Column::Ints(ints)),
                [false, true, false] => Ok(Column::Floats(floats)),
                [false, false, true] => Ok(Column::Strings(strs)),
                _ => Err(a.err(
                    &format!("{prefix}_*"),
                    "must be exactly one non-empty list of int64s, floats or strings, or a tensor",
                )),
            }
        };
        let keys = column("keys")?;
        let values = column("values")?;
        if keys.len() != values.len() {
            return Err(a.err(
                "values_*",
                format!("has {} entries for {} keys", values.len(), keys.len()),
            ));
        }
        if let Some(t) = a.tensor("default_tensor") {
            let t = load(t).map_err(|e| a.err("default_tensor", format!("cannot be read: {e}")))?;
            match Column::from_tensor(&a, "default_tensor", &t)? {
                Column::Ints(v) if v.len() == 1 => default_int = v[0],
                Column::Floats(v) if v.len() == 1 => default_float = v[0],
                Column::Strings(v) if v.len() == 1 => default_string = v[0].clone(),
                _ => return Err(a.err("default_tensor", "must hold exactly one value")),
            }
        }
        Ok(Self {
            mapping: Mapping::Pairs { keys, values },
            default_int,
            default_float,
            default_string,
        })
    }

    fn output_type(&self, input: DatumType) -> DatumType {
        match &self.mapping {
            Mapping::Pairs { values, .. } => values.datum_type(),
            Mapping::Classes(_) if input == DatumType::String => DatumType::I64,
            Mapping::Classes(_) => DatumType::String,
        }
    }

    /// The index of each element's key, None for the default.
    fn lookup(keys: &Column, x: &Tensor) -> TractResult<Vec<Option<usize>>> {
        Ok(match keys {
            Column::Strings(keys) => {
                let index: HashMap<&str, usize> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.as_str(), i))
                    .collect();
                strings(OP, x)?
                    .iter()
                    .map(|s| index.get(s.as_str()).copied())
                    .collect()
            }
            Column::Ints(keys) => {
                let index: HashMap<i64, usize> =
                    keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
                as_i64(OP, x)?
                    .iter()
                    .map(|k| index.get(k).copied())
                    .collect()
            }
            Column::Floats(keys) => {
                if !matches!(x.datum_type(), DatumType::F32 | DatumType::F64) {
                    return Err(input_err(
                        OP,
                        format!("element type {:?}; float keys expected", x.datum_type()),
                    ));
                }
                let index: HashMap<u32, usize> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (float_key(*k), i))
                    .collect();
                as_f32(OP, x)?
                    .iter()
                    .map(|k| index.get(&float_key(*k)).copied())
                    .collect()
            }
        })
    }

    fn gather(
        &self,
        values: &Column,
        hits: &[Option<usize>],
        shape: &[usize],
    ) -> TractResult<Tensor> {
        Ok(match values {
            Column::Ints(v) => {
                let d: Vec<i64> = hits
                    .iter()
                    .map(|h| h.map_or(self.default_int, |i| v[i]))
                    .collect();
                Tensor::from_shape(shape, &d)?
            }
            Column::Floats(v) => {
                let d: Vec<f32> = hits
                    .iter()
                    .map(|h| h.map_or(self.default_float, |i| v[i]))
                    .collect();
                Tensor::from_shape(shape, &d)?
            }
            Column::Strings(v) => {
                let d: Vec<String> = hits
                    .iter()
                    .map(|h| h.map_or_else(|| self.default_string.clone(), |i| v[i].clone()))
                    .collect();
                ArrayD::from_shape_vec(shape, d)?.into_tensor()
            }
        })
    }
}

impl Kernel for LabelEncoder {
    fn name(&self) -> &'static str {
        OP
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
            s.equals(&outputs[0].datum_type, self.output_type(dt))
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(TypedFact::dt_shape(
            self.output_type(inputs[0].datum_type),
            inputs[0].shape.clone()
        )))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = arg(OP, &inputs, 0)?;
        let y = match &self.mapping {
            Mapping::Pairs { keys, values } => {
                self.gather(values, &Self::lookup(keys, x)?, x.shape())?
            }
            Mapping::Classes(classes) if x.datum_type() == DatumType::String => {
                let index = Column::Ints((0..classes.len() as i64).collect());
                let keys = Column::Strings(classes.clone());
                self.gather(&index, &Self::lookup(&keys, x)?, x.shape())?
            }
            Mapping::Classes(classes) => {
                let hits: Vec<Option<usize>> = as_i64(OP, x)?
                    .iter()
                    .map(|i| usize::try_from(*i).ok().filter(|i| *i < classes.len()))
                    .collect();
                self.gather(&Column::Strings(classes.clone()), &hits, x.shape())?
            }
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(k: &LabelEncoder, t: Tensor) -> Tensor {
        k.eval(tvec!(t.into_tvalue()))
            .unwrap()
            .remove(0)
            .into_tensor()
    }

    fn strs(v: &[&str]) -> Tensor {
        tensor1(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn encoder(mapping: Mapping) -> LabelEncoder {
        LabelEncoder {
            mapping,
            default_int: -1,
            default_float: -0.0,
            default_string: "_Unused".into(),
        }
    }

    #[test]
    fn pairs_use_the_default_of_their_value_type() {
        let k = encoder(Mapping::Pairs {
            keys: Column::Strings(vec!["a".into(), "b".into()]),
            values: Column::Floats(vec![1.5, 2.5]),
        });
        assert_eq!(run(&k, strs(&["b", "z"])), tensor1(&[2.5f32, -0.0]));
        let f = encoder(Mapping::Pairs {
            keys: Column::Floats(vec![f32::NAN, 0.0]),
            values: Column::Ints(vec![7, 9]),
        });
        assert_eq!(
            run(&f, tensor1(&[f32::NAN, -0.0, 1.0])),
            tensor1(&[7i64, 9, -1])
        );
    }

    #[test]
    fn opset_1_classes_go_both_ways() {
        let k = encoder(Mapping::Classes(vec!["x".into(), "y".into()]));
        assert_eq!(run(&k, strs(&["y", "q"])), tensor1(&[1i64, -1]));
        assert_eq!(run(&k, tensor1(&[0i64, 5])), strs(&["x", "_Unused"]));
    }
}
