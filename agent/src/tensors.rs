//! Conversions between the protocol's tensors and tract's, and the errors
//! of a run: what [`crate::engine`] feeds a plan and returns from it.

use ferry_protocol::{DType, TensorData};
use tract_onnx::prelude::*;

/// A failure while running a validated request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("input {name:?}: {reason}")]
    Input { name: String, reason: String },
    #[error("model execution failed: {0}")]
    Exec(String),
    /// The graph could not be compiled for these shapes (tract's reason is
    /// logged, not returned).
    #[error("the model cannot run on input shapes {0}")]
    Shapes(String),
    #[error("output {name:?} has element type {dtype}, which cannot be returned")]
    OutputType { name: String, dtype: String },
}

/// One validated input, in schema order.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// One output as the runtime produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

pub fn datum_type(d: DType) -> Option<DatumType> {
    Some(match d {
        DType::Bool => DatumType::Bool,
        DType::U8 => DatumType::U8,
        DType::U16 => DatumType::U16,
        DType::U32 => DatumType::U32,
        DType::U64 => DatumType::U64,
        DType::I8 => DatumType::I8,
        DType::I16 => DatumType::I16,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::F16 => DatumType::F16,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::Bytes => return None,
    })
}

/// A request's value for a fixed input must be the publisher's.
pub fn check_fixed(name: &str, want: &ferry_protocol::Tensor, got: &Input) -> Result<(), RunError> {
    let same_shape = got
        .shape
        .iter()
        .map(|d| *d as u64)
        .eq(want.shape.iter().copied());
    if same_shape && got.data.as_f64().is_some() && got.data.as_f64() == want.data.as_f64() {
        return Ok(());
    }
    let show = |d: &TensorData| match d.as_f64() {
        Some(v) if v.len() == 1 => v[0].to_string(),
        Some(v) => format!("{v:?}"),
        None => "(bytes)".to_string(),
    };
    Err(input_err(
        name,
        format!(
            "this deployment fixes it to {} (the bundle's --const-input); the request sent {}",
            show(&want.data),
            show(&got.data)
        ),
    ))
}

pub fn input_err(name: &str, reason: impl std::fmt::Display) -> RunError {
    RunError::Input {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

pub fn to_tract(name: &str, dtype: DType, input: Input) -> Result<Tensor, RunError> {
    let shape = &input.shape;
    let t = match input.data {
        TensorData::F32(v) => Tensor::from_shape(shape, &v),
        TensorData::F64(v) => Tensor::from_shape(shape, &v),
        TensorData::I64(v) => Tensor::from_shape(shape, &v),
        TensorData::I32(v) => Tensor::from_shape(shape, &v),
        TensorData::Bool(v) => Tensor::from_shape(shape, &v),
        TensorData::Bytes(_) => return Err(input_err(name, "BYTES inputs are not supported")),
    }
    .map_err(|e| input_err(name, e))?;
    let dt = datum_type(dtype).ok_or_else(|| input_err(name, "unsupported type"))?;
    if t.datum_type() == dt {
        Ok(t)
    } else {
        t.cast_to_dt(dt)
            .map(|c| c.into_owned())
            .map_err(|e| input_err(name, e))
    }
}

fn plain<D: Datum + Copy>(t: &Tensor) -> Option<Vec<D>> {
    let view = t.to_plain_array_view::<D>().ok()?;
    // A contiguous tensor (every plan output here) is one copy, not an
    // element-by-element walk.
    Some(match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    })
}

pub fn from_tract(name: &str, t: &Tensor) -> Result<Output, RunError> {
    let shape = t.shape().to_vec();
    let bad = || RunError::OutputType {
        name: name.to_string(),
        dtype: format!("{:?}", t.datum_type()),
    };
    let data = match t.datum_type() {
        DatumType::F32 => TensorData::F32(plain(t).ok_or_else(bad)?),
        DatumType::F64 => TensorData::F64(plain(t).ok_or_else(bad)?),
        DatumType::I64 => TensorData::I64(plain(t).ok_or_else(bad)?),
        DatumType::I32 => TensorData::I32(plain(t).ok_or_else(bad)?),
        DatumType::Bool => TensorData::Bool(plain(t).ok_or_else(bad)?),
        DatumType::F16 => {
            let c = t.cast_to::<f32>().map_err(|_| bad())?;
            TensorData::F32(plain(&c).ok_or_else(bad)?)
        }
        DatumType::U8 | DatumType::U16 | DatumType::U32 | DatumType::I8 | DatumType::I16 => {
            let c = t.cast_to::<i64>().map_err(|_| bad())?;
            TensorData::I64(plain(&c).ok_or_else(bad)?)
        }
        _ => return Err(bad()),
    };
    Ok(Output {
        name: name.to_string(),
        shape,
        data,
    })
}
