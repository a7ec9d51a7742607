//! Input tensors as the kernels read them.

use std::borrow::Cow;

use tract_onnx::prelude::*;

use super::MlError;

pub(crate) fn input_err(op: &'static str, reason: impl Into<String>) -> TractError {
    MlError::Input {
        op,
        reason: reason.into(),
    }
    .into()
}

/// The input at `ix`, or an error naming the operator.
pub(crate) fn arg<'t>(
    op: &'static str,
    inputs: &'t [TValue],
    ix: usize,
) -> TractResult<&'t Tensor> {
    inputs
        .get(ix)
        .map(|t| &**t)
        .ok_or_else(|| input_err(op, format!("input {ix} is missing")))
}

/// True for the element types the numeric ONNX-ML operators take.
pub(crate) fn is_numeric(dt: DatumType) -> bool {
    matches!(
        dt,
        DatumType::F32 | DatumType::F64 | DatumType::I32 | DatumType::I64 | DatumType::TDim
    )
}

/// A numeric tensor's values as float32 (as onnxruntime casts them).
pub(crate) fn as_f32<'t>(op: &'static str, t: &'t Tensor) -> TractResult<Cow<'t, [f32]>> {
    let dt = t.datum_type();
    if dt == DatumType::F32 {
        return Ok(Cow::Borrowed(t.try_as_plain_ram()?.as_slice::<f32>()?));
    }
    if !is_numeric(dt) {
        return Err(input_err(
            op,
            format!("element type {dt:?}; float, double, int32 or int64 expected"),
        ));
    }
    // tract may carry int64 as TDim.
    let t = if dt == DatumType::TDim {
        t.cast_to::<i64>()?.into_owned()
    } else {
        t.clone()
    };
    let c = t.cast_to::<f32>()?;
    Ok(Cow::Owned(
        c.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
    ))
}

/// A tensor's values as int64 (TDim constants included).
pub(crate) fn as_i64(op: &'static str, t: &Tensor) -> TractResult<Vec<i64>> {
    match t.datum_type() {
        DatumType::I64 => Ok(t.try_as_plain_ram()?.as_slice::<i64>()?.to_vec()),
        DatumType::I32 | DatumType::TDim => {
            let c = t.cast_to::<i64>()?;
            Ok(c.try_as_plain_ram()?.as_slice::<i64>()?.to_vec())
        }
        dt => Err(input_err(
            op,
            format!("element type {dt:?}; int64 expected"),
        )),
    }
}

/// `(rows, width)` the way onnxruntime's ML kernels read a `[N, C]` or `[C]`
/// tensor; higher ranks are refused.
pub(crate) fn rows_width(op: &'static str, shape: &[usize]) -> TractResult<(usize, usize)> {
    match shape {
        [c] => Ok((1, *c)),
        [n, c] => Ok((*n, *c)),
        _ => Err(input_err(
            op,
            format!("shape {shape:?}; [N, C] or [C] expected"),
        )),
    }
}

/// The row count a `[N, C]` or `[C]` input gives the outputs (typed facts).
pub(crate) fn rows_dim(op: &'static str, fact: &TypedFact) -> TractResult<TDim> {
    match fact.rank() {
        1 => Ok(1.into()),
        2 => Ok(fact.shape[0].clone()),
        r => Err(input_err(op, format!("rank {r}; [N, C] or [C] expected"))),
    }
}

/// The feature count of a `[N, C]` or `[C]` input (typed facts).
pub(crate) fn width_dim(op: &'static str, fact: &TypedFact) -> TractResult<TDim> {
    match fact.rank() {
        1 => Ok(fact.shape[0].clone()),
        2 => Ok(fact.shape[1].clone()),
        r => Err(input_err(op, format!("rank {r}; [N, C] or [C] expected"))),
    }
}
