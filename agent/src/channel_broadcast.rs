//! `x ∘ c` for `∘` in + − × ÷, where `x` is a batch of images
//! (`[N, C, …]`, N more than one or not known) and `c` a constant with one
//! value per channel (`[1, C, 1, …]`): a BatchNorm or bias after an op that
//! is not a convolution of ours (`crate::channel_affine` folds those into
//! their filters), such as PP-OCR's detector head after its transposed
//! convolution.
//!
//! With one image tract fuses such ops into a single pass (`OptBinChain`),
//! but the constant's batch axis of 1 against N images sends it down its
//! generic broadcasting path, one closure call per value: 2.6 ms for each
//! of the three after `ocr-det-ppocrv4`'s transposed convolution at batch
//! 8, against 0.07 ms for the three fused at batch 1. Here each image's
//! channel plane is one loop with one scalar, which vectorises.

use crate::pointwise_batch::PerImage;
use crate::rowops::{plain_arith, Arith};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_hir::tract_core::ops::cnn::Conv;
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;

/// Replaces every binary op of `model` between a batch of images and a
/// per-channel constant; returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let arithmetic: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| plain_arith(n).is_some())
        .map(|n| n.id)
        .collect();
    let mut swapped = 0;
    for id in arithmetic {
        // Looked at after the swaps before it: a chain's earlier swap
        // rewired this node's input.
        let node = model.node(id);
        let Some((x, op)) = per_channel(model, node)? else {
            continue;
        };
        let patch = TypedModelPatch::replace_single_op(model, node, &[x], op)?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
        swapped += 1;
    }
    if swapped > 0 {
        model.compact()?;
    }
    Ok(swapped)
}

/// The image input and the op replacing `node`, when it is `x ∘ c` or
/// `c ∘ x` with `x` float32 `[N, C, …]` (N not 1) and `c` a float32
/// constant of the same rank, `C` values along axis 1 and 1 elsewhere.
fn per_channel(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(OutletId, ChannelBroadcast)>> {
    let Some(arith) = plain_arith(node) else {
        return Ok(None);
    };
    let out = &model.node_output_facts(node.id)?[0].shape;
    for (xi, ci) in [(0, 1), (1, 0)] {
        let x = model.outlet_fact(node.inputs[xi])?;
        let c = model.outlet_fact(node.inputs[ci])?;
        let Some(konst) = c.konst.as_ref() else {
            continue;
        };
        if x.datum_type != DatumType::F32
            || konst.datum_type() != DatumType::F32
            || x.konst.is_some()
            || x.rank() < 3
            || konst.rank() != x.rank()
            || &x.shape != out
            // One image: tract's own fused chain is as fast.
            || x.shape[0] == 1.to_dim()
        {
            continue;
        }
        let Some(channels) = x.shape[1].as_i64().map(|c| c as usize) else {
            continue;
        };
        let shape = konst.shape();
        if channels < 2
            || shape[1] != channels
            || shape.iter().enumerate().any(|(i, &d)| i != 1 && d != 1)
            || after_product(model, node.inputs[xi])?
        {
            continue;
        }
        let values = konst.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        return Ok(Some((
            node.inputs[xi],
            ChannelBroadcast {
                arith,
                per_channel: Arc::new(values),
                const_first: ci == 0,
            },
        )));
    }
    Ok(None)
}

/// Whether `outlet` is a matrix product or convolution of tract's, or a
/// chain of reshapes and per-channel constant ops after one: tract fuses
/// those into the product's kernel at codegen (a 1×1 convolution's
/// BatchNorm over a batch), which this op would prevent.
fn after_product(model: &TypedModel, mut outlet: OutletId) -> TractResult<bool> {
    loop {
        let node = model.node(outlet.node);
        if node.op_is::<EinSum>() || node.op_is::<PerImage>() || node.op_is::<Conv>() {
            return Ok(true);
        }
        // A product over flattened planes is reshaped back to images.
        if node.op_is::<AxisOp>() {
            outlet = node.inputs[0];
            continue;
        }
        if plain_arith(node).is_none() {
            return Ok(false);
        }
        // Follow the operand that is not a constant, when the other is.
        let konst = |i: usize| -> TractResult<bool> {
            Ok(model.outlet_fact(node.inputs[i])?.konst.is_some())
        };
        outlet = match (konst(0)?, konst(1)?) {
            (false, true) => node.inputs[0],
            (true, false) => node.inputs[1],
            _ => return Ok(false),
        };
    }
}

/// `x ∘ c[channel]` (or `c[channel] ∘ x`) over `[N, C, …]`, axis 1 the
/// channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelBroadcast {
    pub arith: Arith,
    pub per_channel: Arc<Vec<f32>>,
    /// The constant is the left operand (`c − x`, `c ÷ x`).
    pub const_first: bool,
}

// Bit patterns, so NaN constants compare equal to themselves.
impl Eq for ChannelBroadcast {}
impl std::hash::Hash for ChannelBroadcast {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.arith.hash(h);
        self.const_first.hash(h);
        self.per_channel.iter().for_each(|v| v.to_bits().hash(h));
    }
}

/// Applies `arith` between each `plane`-long run of `data` and its
/// channel's value, the runs cycling through `per_channel`.
fn broadcast_planes(
    data: &mut [f32],
    plane: usize,
    per_channel: &[f32],
    arith: Arith,
    const_first: bool,
) {
    if plane == 0 || per_channel.is_empty() {
        return;
    }
    // One monomorphic loop per case so each vectorises.
    macro_rules! each {
        (|$x:ident, $c:ident| $e:expr) => {
            for (run, &$c) in data.chunks_exact_mut(plane).zip(per_channel.iter().cycle()) {
                for $x in run.iter_mut() {
                    *$x = $e;
                }
            }
        };
    }
    match (arith, const_first) {
        (Arith::Add, _) => each!(|x, c| *x + c),
        (Arith::Mul, _) => each!(|x, c| *x * c),
        (Arith::Sub, false) => each!(|x, c| *x - c),
        (Arith::Sub, true) => each!(|x, c| c - *x),
        (Arith::Div, false) => each!(|x, c| *x / c),
        (Arith::Div, true) => each!(|x, c| c / *x),
    }
}

impl Op for ChannelBroadcast {
    fn name(&self) -> StaticName {
        format!("FerryChannelBroadcast<{:?}>", self.arith).into()
    }
    op_as_typed_op!();
}

impl EvalOp for ChannelBroadcast {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| TractError::msg("channel broadcast: no input"))?;
        let mut t = input.into_tensor();
        if t.rank() < 3 || t.shape()[1] != self.per_channel.len() {
            return Err(TractError::msg(format!(
                "channel broadcast: input shape {:?}, {} channels",
                t.shape(),
                self.per_channel.len()
            )));
        }
        let plane = t.shape()[2..].iter().product();
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            broadcast_planes(
                plain.as_slice_mut::<f32>()?,
                plane,
                &self.per_channel,
                self.arith,
                self.const_first,
            );
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for ChannelBroadcast {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let f = inputs
            .first()
            .ok_or_else(|| TractError::msg("channel broadcast: no input"))?;
        Ok(tvec!(f.without_value()))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::values;
    use tract_onnx::tract_hir::tract_core::axes::AxesMapping;
    use tract_onnx::tract_hir::tract_core::ops::math::{add, div, mul, sub};

    /// `x ∘ c` or `c ∘ x` over `x: [batch, 3, 2, 5]` (a symbolic batch
    /// when `None`), `c: [1, 3, 1, 1]`.
    fn graph(
        batch: Option<usize>,
        op: tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp,
        const_first: bool,
    ) -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let batch = match batch {
            Some(n) => n.to_dim(),
            None => TDim::Sym(m.symbols.sym("N")),
        };
        let x = m.add_source("x", f32::fact(&[batch, 3.to_dim(), 2.to_dim(), 5.to_dim()]))?;
        let c = tract_ndarray::Array4::from_shape_vec((1, 3, 1, 1), vec![0.5f32, -2.0, 4.0])?;
        let c = m.add_const("c", c.into_tensor())?;
        let inputs = if const_first { [c, x] } else { [x, c] };
        let y = m.wire_node("y", op, &inputs)?;
        m.select_output_outlets(&y)?;
        Ok(m)
    }

    #[test]
    fn a_batch_against_per_channel_constants_matches_tract_in_either_order() -> TractResult<()> {
        let ops = [add, sub, mul, div];
        for (k, op) in ops.iter().enumerate() {
            for const_first in [false, true] {
                let reference = graph(None, op(), const_first)?;
                let mut ours = reference.clone();
                assert_eq!(
                    substitute(&mut ours)?,
                    1,
                    "op {k} const_first={const_first}"
                );
                assert!(ours
                    .nodes()
                    .iter()
                    .any(|n| n.op.name().starts_with("FerryChannelBroadcast")));
                let x =
                    tract_ndarray::Array4::from_shape_vec((4, 3, 2, 5), values(120, k as u32 + 7))?
                        .into_tensor();
                let want = reference
                    .into_runnable()?
                    .run(tvec![x.clone().into_tvalue()])?;
                let got = ours.into_runnable()?.run(tvec![x.into_tvalue()])?;
                assert_eq!(
                    got[0].try_as_plain_ram()?.as_slice::<f32>()?,
                    want[0].try_as_plain_ram()?.as_slice::<f32>()?,
                    "op {k} const_first={const_first}"
                );
            }
        }
        Ok(())
    }

    /// A BatchNorm as tract leaves it, `(x + b) · s + t`: each swap rewires
    /// the next op's input.
    #[test]
    fn a_chain_of_per_channel_ops_is_swapped_whole() -> TractResult<()> {
        let mut m = TypedModel::default();
        let n = m.symbols.sym("N");
        let mut y = m.add_source(
            "x",
            f32::fact(&[TDim::Sym(n), 3.to_dim(), 4.to_dim(), 4.to_dim()]),
        )?;
        for (k, op) in [add(), mul(), add()].into_iter().enumerate() {
            let c = tract_ndarray::Array4::from_shape_vec((1, 3, 1, 1), values(3, k as u32))?;
            let c = m.add_const(format!("c{k}"), c.into_tensor())?;
            y = m.wire_node(format!("op{k}"), op, &[y, c])?[0];
        }
        m.select_output_outlets(&[y])?;
        let mut ours = m.clone();
        assert_eq!(substitute(&mut ours)?, 3);
        let x = tract_ndarray::Array4::from_shape_vec((2, 3, 4, 4), values(96, 5))?.into_tensor();
        let want = m.into_runnable()?.run(tvec![x.clone().into_tvalue()])?;
        let got = ours.into_runnable()?.run(tvec![x.into_tvalue()])?;
        assert_eq!(
            got[0].try_as_plain_ram()?.as_slice::<f32>()?,
            want[0].try_as_plain_ram()?.as_slice::<f32>()?
        );
        Ok(())
    }

    /// The mobile block at batch 3: its depth-wise convolution keeps its
    /// BatchNorm as per-channel ops (for `crate::channel_affine`), and tract
    /// fuses those after a product into the product's kernel.
    #[test]
    fn per_channel_ops_after_a_convolution_or_product_are_left_alone() -> TractResult<()> {
        let mut typed = crate::test_fixtures::fixture("mobile_block_dynamic", &[3, 8, 10, 7])?;
        crate::pointwise_batch::substitute(&mut typed)?;
        let per_channel_ops = typed
            .nodes()
            .iter()
            .filter(|n| plain_arith(n).is_some())
            .count();
        assert!(per_channel_ops > 0);
        assert_eq!(substitute(&mut typed)?, 0);
        Ok(())
    }

    /// A batch's 1×1 convolution as `pointwise_batch` leaves it, a product
    /// over flattened planes reshaped back to images, then its BatchNorm.
    #[test]
    fn a_batchnorm_after_a_reshaped_product_is_left_to_tract() -> TractResult<()> {
        let mut m = TypedModel::default();
        let n = m.symbols.sym("N");
        let x = m.add_source("x", f32::fact(&[TDim::Sym(n), 4.to_dim(), 12.to_dim()]))?;
        let w = m.add_const("w", Tensor::from_shape(&[6, 4], &values(24, 1))?)?;
        let axes: AxesMapping = "nck,oc->nok".parse()?;
        let mut y = m.wire_node("pw", EinSum::new(axes, f32::datum_type()), &[x, w])?[0];
        let planes = AxisOp::Reshape(2, tvec![12.to_dim()], tvec![3.to_dim(), 4.to_dim()]);
        y = m.wire_node("unplanes", planes, &[y])?[0];
        for (k, op) in [mul(), add()].into_iter().enumerate() {
            let c = tract_ndarray::Array4::from_shape_vec((1, 6, 1, 1), values(6, k as u32))?;
            let c = m.add_const(format!("c{k}"), c.into_tensor())?;
            y = m.wire_node(format!("bn{k}"), op, &[y, c])?[0];
        }
        m.select_output_outlets(&[y])?;
        assert_eq!(substitute(&mut m)?, 0);
        Ok(())
    }

    #[test]
    fn a_single_image_stays_with_tracts_fused_chain() -> TractResult<()> {
        let mut one = graph(Some(1), add(), false)?;
        assert_eq!(substitute(&mut one)?, 0);
        Ok(())
    }
}
