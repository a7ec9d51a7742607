//! The one consumer of an outlet, when it is a binary op with a constant
//! as its other operand: what the graph rewrites (`dense`,
//! `channel_affine`) look for after a product or a convolution to fold
//! into it.

use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;

/// A binary op applied to an outlet and a constant.
pub struct ConstOperand {
    /// The op's node.
    pub node: usize,
    /// The op's name (`Mul`, `Add`, …).
    pub op: String,
    pub konst: Arc<Tensor>,
}

/// The only consumer of `outlet`, when it is a binary op (keeping its input
/// type) whose other operand is a constant. `outlet` must not be a model
/// output: folding would lose it.
pub fn follower(model: &TypedModel, outlet: OutletId) -> TractResult<Option<ConstOperand>> {
    if model.outputs.contains(&outlet) {
        return Ok(None);
    }
    let [inlet] = model.outlet_successors(outlet) else {
        return Ok(None);
    };
    let node = model.node(inlet.node);
    let Some(op) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if op.1.is_some() || node.inputs.len() != 2 || inlet.slot > 1 {
        return Ok(None);
    }
    let Some(konst) = model
        .outlet_fact(node.inputs[1 - inlet.slot])?
        .konst
        .clone()
    else {
        return Ok(None);
    };
    Ok(Some(ConstOperand {
        node: node.id,
        op: op.0.name().to_string(),
        konst,
    }))
}
