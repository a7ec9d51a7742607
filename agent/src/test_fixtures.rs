//! The small ONNX fixtures of `tests/fixtures/make_shape_fixtures.py`,
//! loaded as the graph rewrites' unit tests need them.

use tract_onnx::prelude::*;

/// A fixture of `tests/fixtures/make_shape_fixtures.py` typed for
/// `shape`, decluttered.
pub(crate) fn fixture(name: &str, shape: &[usize]) -> TractResult<TypedModel> {
    let path = format!(
        "{}/../tests/fixtures/models/{name}.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    crate::front_end::onnx()
        .model_for_path(path)?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_typed()?
        .into_decluttered()
}

pub(crate) fn input(shape: &[usize]) -> TractResult<TValue> {
    let len: usize = shape.iter().product();
    let v: Vec<f32> = (0..len)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Ok(Tensor::from_shape(shape, &v)?.into_tvalue())
}

/// Fails unless `got` equals `want` within tract's `Approximate` tolerance:
/// a rewrite must answer as the plan it replaced.
pub(crate) fn same_answers(want: &TValue, got: &TValue) -> TractResult<()> {
    want.close_enough(
        got,
        tract_onnx::tract_hir::tract_core::internal::Approximation::Approximate,
    )
}
