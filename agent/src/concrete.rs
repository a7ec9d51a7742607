//! What only a plan compiled for concrete input shapes gets (a plan
//! specialised to a request's shapes, to the engine's block size, or to a
//! graph typed per shape): a small batch's convolutions one image at a
//! time, and a single image's 1×1 convolutions as one product each.

use crate::plan_cache::Plan;
use std::collections::HashMap;
use tract_onnx::prelude::*;

/// `typed`, its symbols already replaced by values, rewritten.
pub fn rewrite(mut typed: TypedModel) -> TractResult<TypedModel> {
    crate::conv_per_image::split(&mut typed)?;
    if crate::pointwise_batch::unwrap_single_images(&mut typed)? > 0 {
        // Decluttered, a single image's 1×1 convolutions take the form
        // `crate::pointwise` runs, BatchNorm and activation after them.
        typed = typed.into_decluttered()?;
    }
    // A batch of one split per image (`ncak,oc->noak`) is one too.
    crate::pointwise::substitute(&mut typed)?;
    crate::channel_affine::fold(&mut typed)?;
    crate::channel_product::pack_filters::<crate::pointwise::PointwiseConv>(&mut typed)?;
    Ok(typed)
}

/// The plan of a symbolic graph (`crate::engine::symbolic_typed`) with
/// `symbol` set to `value`: the agent's plan for a block of `value` rows.
pub fn symbol_set_plan(typed: &TypedModel, symbol: Symbol, value: usize) -> TractResult<Plan> {
    let mut subs = HashMap::new();
    subs.insert(symbol, TDim::Val(value as i64));
    rewrite(typed.set_symbols(&subs)?)?
        .into_optimized()?
        .into_runnable()
}
