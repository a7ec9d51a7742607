//! Which of tract's nodes Ferry's own kernels replace, and in what order:
//! the one list every plan the agent builds goes through
//! (`crate::engine::optimise`, `crate::engine::symbolic_typed`).

use tract_onnx::prelude::*;

/// Swaps the nodes our own kernels run faster than tract's, after
/// decluttering (Conv + BatchNorm folded) and before tract optimises.
pub(crate) fn swap_in(typed: &mut TypedModel) -> TractResult<()> {
    // An embedding written as a one-hot product: a row lookup.
    crate::one_hot::substitute(typed)?;
    // Rows times a matrix too large for the caches (a classifier over
    // 8,000 classes): its weights read once per request.
    crate::row_product::substitute(typed)?;
    // Narrow matrix products with their bias and ReLU: one fused layer
    // each, with weights packed once here instead of per call.
    crate::dense::fuse(typed)?;
    // Reductions over an axis before the last (a max pool over time).
    crate::axis_reduce::substitute(typed)?;
    // A softmax over an inner axis (YOLO's box bins).
    crate::axis_softmax::substitute(typed)?;
    // One filter per channel: MobileNet's depth-wise convolutions.
    crate::depthwise::substitute(typed)?;
    // Channels-last convolutions (jax2tf's 1-D ones) turned channels-first
    // for the next.
    crate::channels_last::substitute(typed)?;
    // Single-group convolutions with wider filters (3×3 and up).
    crate::direct_conv::substitute(typed)?;
    // 1×1 convolutions over large planes, one product per image.
    crate::pointwise::substitute(typed)?;
    // The BatchNorms and activations after both: tract folds a BatchNorm
    // only into its own single-group convolutions.
    crate::channel_affine::fold(typed)?;
    // Their filters, folded, packed for the product's tiles.
    crate::channel_product::pack_filters::<crate::pointwise::PointwiseConv>(typed)?;
    crate::channel_product::pack_filters::<crate::direct_conv::DirectConv>(typed)?;
    // Softmax/argmax tails over a few classes: our row loops, not tract's.
    // After the folds: its binary ops with a constant row would hide a
    // scalar step (the exporters' HardSwish is `x + 3`, ..., `· 1/6`) from
    // them.
    crate::rowops::substitute(typed)?;
    // The rest of a batch's 1×1 convolutions (small planes): tract's
    // product per image, no transposes.
    crate::pointwise_batch::substitute(typed)?;
    // Per-channel constants against a batch of images that none of the
    // above folded (a BatchNorm after a transposed convolution).
    crate::channel_broadcast::substitute(typed)?;
    Ok(())
}
