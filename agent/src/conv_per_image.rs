//! Convolutions over a small batch of known size, run one image at a time.
//!
//! For a single image tract picks its fast convolution kernels (lazy
//! im2col, direct spatial); their offset tables are built for one image,
//! so over a batch it falls back to an eager im2col that copies every
//! patch of every image first. On `ocr-det-ppocrv4` at a batch of 8 that
//! copy was 45 % of the run, and each image cost three times its single
//! run. Here such a convolution is written as one per image (a slice, the
//! convolution in tract's batch-of-one form, a concat): the copies in and
//! out are one pass over the activations, the im2col was one per tap.
//! Only for a concrete batch of at most [`MAX_IMAGES`]: a plan specialised
//! to a request's shapes, or to the engine's block size.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::ops::array::{Slice, TypedConcat};
use tract_onnx::tract_hir::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_hir::tract_core::ops::cnn::Conv;
use tract_onnx::tract_hir::tract_core::ops::nn::DataFormat;

/// Batches above this keep tract's batched convolution (the graph grows by
/// a few nodes per image).
pub const MAX_IMAGES: usize = 16;

/// Splits every eligible convolution of `model` by image; returns how many.
pub fn split(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = Vec::new();
    for node in model.nodes() {
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let x = model.outlet_fact(node.inputs[0])?;
        let images = x.shape.as_concrete().and_then(|s| s.first().copied());
        if conv.q_params.is_none()
            && conv.pool_spec.data_format == DataFormat::NCHW
            && x.datum_type == f32::datum_type()
            && x.rank() == 4
            && images.is_some_and(|n| (2..=MAX_IMAGES).contains(&n))
        {
            found.push((node.id, images.unwrap_or(1)));
        }
    }
    for &(id, images) in &found {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let mut one = conv.clone();
        one.pool_spec.data_format = DataFormat::CHW;
        let mut patch = TypedModelPatch::default();
        let taps = patch.taps(model, &node.inputs)?;
        let mut outs = TVec::new();
        for i in 0..images {
            let name = format!("{}.image{i}", node.name);
            let x =
                patch.wire_node(format!("{name}.slice"), Slice::new(0, i, i + 1), &[taps[0]])?;
            let x = patch.wire_node(format!("{name}.chw"), AxisOp::Rm(0), &x)?;
            let mut inputs = tvec![x[0]];
            inputs.extend(taps[1..].iter().copied());
            let y = patch.wire_node(&name, one.clone(), &inputs)?;
            outs.push(patch.wire_node(format!("{name}.nchw"), AxisOp::Add(0), &y)?[0]);
        }
        let y = patch.wire_node(
            format!("{}.images", node.name),
            TypedConcat { axis: 0 },
            &outs,
        )?;
        patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::fixture;
    use tract_onnx::tract_hir::tract_core::internal::Approximation;

    #[test]
    fn a_small_batch_is_convolved_one_image_at_a_time_with_the_same_answers() -> TractResult<()> {
        for (n, splits) in [(1, 0), (3, 1), (MAX_IMAGES, 1), (MAX_IMAGES + 1, 0)] {
            let shape = [n, 4, 6, 9];
            // A 3×3 conv in two groups (tract's), then a 1×1 conv.
            let typed = fixture("grouped_conv_dynamic", &shape)?;
            assert_eq!(split(&mut typed.clone())?, splits, "batch {n}");
            let len: usize = shape.iter().product();
            let v: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 29) as f32 / 7.0) - 2.0)
                .collect();
            let x = Tensor::from_shape(&shape, &v)?.into_tvalue();
            let want = typed
                .clone()
                .into_optimized()?
                .into_runnable()?
                .run(tvec![x.clone()])?;
            let got = crate::engine::optimise(typed)?.run(tvec![x])?;
            want[0].close_enough(&got[0], Approximation::Close)?;
        }
        Ok(())
    }
}
