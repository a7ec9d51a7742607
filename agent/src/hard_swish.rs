//! HardSwish as exporters without the operator write it, `x · clip(x + 3,
//! 0, 6) / 6`: five element-wise passes over the activations (PaddleOCR's
//! models have one after most convolutions). `crate::channel_affine` folds
//! it into the convolution before it, as it does ONNX's `HardSwish`, when
//! [`after`] finds it.
//!
//! Decluttered, the division is a product by 1/6 and the clip a `Max`
//! with 0 and a `Min` with 6 (either first):
//!
//! ```text
//! x ─┬─ Add 3 ── Max 0 ── Min 6 ──┐
//!    └──────────────────────────── Mul ── Mul c
//! ```
//!
//! `c` is 1/6, or 1/6 times a scale that followed (tract merges PP-LCNetV3's
//! learnable scale after the activation into it): then one product by `6c`
//! is left after the kernel's HardSwish.

use crate::const_operand::follower;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;

/// The last node of a decomposed HardSwish of `outlet` and what it scales
/// ONNX's HardSwish by (`6c`, 1 for a plain one), when `outlet` is used by
/// nothing else, none of its nodes is used outside it, and none changes
/// the shape.
pub fn after(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(usize, f32)>> {
    if model.outputs.contains(&outlet) {
        return Ok(None);
    }
    let shape = &model.outlet_fact(outlet)?.shape;
    let same_shape = |node: usize| -> TractResult<bool> {
        Ok(&model.outlet_fact(OutletId::new(node, 0))?.shape == shape)
    };
    let successors = model.outlet_successors(outlet);
    let [first, second] = successors else {
        return Ok(None);
    };
    for (add_at, mul_at) in [(*first, *second), (*second, *first)] {
        // `x + 3`: the Add must be `outlet`'s follower through `add_at`.
        let add = model.node(add_at.node);
        if !is_bin(add, "Add") || !const_other(model, add, add_at.slot, 3.0)? {
            continue;
        }
        if !same_shape(add.id)? {
            continue;
        }
        // `clip(·, 0, 6)`: a Max with 0 and a Min with 6, in either order.
        let mut at = OutletId::new(add.id, 0);
        let (mut low, mut high) = (false, false);
        while let Some(f) = follower(model, at)? {
            let all = |v: f32| all_equal(&f.konst, v);
            match f.op.as_str() {
                "Max" if !low && all(0.0)? => low = true,
                "Min" if !high && all(6.0)? => high = true,
                _ => break,
            }
            if !same_shape(f.node)? {
                return Ok(None);
            }
            at = OutletId::new(f.node, 0);
            if low && high {
                break;
            }
        }
        if !(low && high) || model.outputs.contains(&at) {
            continue;
        }
        // `x · clip`: the clip's only user is the other successor of `x`.
        let [gate_user] = model.outlet_successors(at) else {
            continue;
        };
        let mul = model.node(mul_at.node);
        if gate_user.node != mul.id
            || !is_bin(mul, "Mul")
            || mul.inputs.len() != 2
            || mul.inputs[1 - mul_at.slot] != at
            || !same_shape(mul.id)?
        {
            continue;
        }
        // `· c`.
        let Some(scale) = follower(model, OutletId::new(mul.id, 0))? else {
            continue;
        };
        if scale.op != "Mul" || !same_shape(scale.node)? {
            continue;
        }
        if let Some(c) = uniform(&scale.konst)? {
            let factor = if all_equal(&scale.konst, 1.0 / 6.0)? {
                1.0
            } else {
                6.0 * c
            };
            return Ok(Some((scale.node, factor)));
        }
    }
    Ok(None)
}

fn is_bin(node: &TypedNode, name: &str) -> bool {
    node.op_as::<TypedBinOp>()
        .is_some_and(|op| op.1.is_none() && op.0.name() == name)
}

/// Whether the operand of `node` other than `slot` is a constant of `v`s.
fn const_other(model: &TypedModel, node: &TypedNode, slot: usize, v: f32) -> TractResult<bool> {
    if node.inputs.len() != 2 || slot > 1 {
        return Ok(false);
    }
    match &model.outlet_fact(node.inputs[1 - slot])?.konst {
        Some(k) => all_equal(k, v),
        None => Ok(false),
    }
}

/// The one value of a float constant whose values are all the same.
fn uniform(t: &Tensor) -> TractResult<Option<f32>> {
    if t.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let values = t.try_as_plain_ram()?;
    let values = values.as_slice::<f32>()?;
    Ok(match values.first() {
        Some(&v) if values.iter().all(|x| *x == v) => Some(v),
        _ => None,
    })
}

/// Whether `t` is float and every value of it is `v` (to f32 rounding).
fn all_equal(t: &Tensor, v: f32) -> TractResult<bool> {
    if t.datum_type() != f32::datum_type() {
        return Ok(false);
    }
    let values = t.try_as_plain_ram()?;
    Ok(values
        .as_slice::<f32>()?
        .iter()
        .all(|x| (x - v).abs() <= f32::EPSILON * v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{input, same_answers};
    use tract_onnx::tract_hir::tract_core::ops::math;

    /// `x` (a 1×1 conv's output) through the exporters' HardSwish, its
    /// last product by `c`, then `shift` added if any; `min_first` puts the
    /// clip's Min before its Max, `extra_use` makes the clip an output too.
    fn decomposed(
        min_first: bool,
        extra_use: bool,
        c: f32,
        shift: Option<f32>,
    ) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 8, 12, 16]))?;
        let w: Vec<f32> = (0..8 * 8)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.2)
            .collect();
        let w = model.add_const("w", Tensor::from_shape(&[8, 8], &w)?)?;
        let axes = "nchw,oc->nohw".parse()?;
        let y = model.wire_node(
            "conv",
            tract_onnx::tract_hir::tract_core::ops::einsum::EinSum::new(axes, f32::datum_type()),
            &[x, w],
        )?[0];
        let scalar =
            |model: &mut TypedModel, name: &str, v: f32| model.add_const(name, tensor4(&[[[[v]]]]));
        let three = scalar(&mut model, "three", 3.0)?;
        let zero = scalar(&mut model, "zero", 0.0)?;
        let six = scalar(&mut model, "six", 6.0)?;
        let sixth = scalar(&mut model, "sixth", c)?;
        let shifted = model.wire_node("add", math::add(), &[y, three])?[0];
        let gate = if min_first {
            let g = model.wire_node("min", math::min(), &[shifted, six])?[0];
            model.wire_node("max", math::max(), &[g, zero])?[0]
        } else {
            let g = model.wire_node("max", math::max(), &[zero, shifted])?[0];
            model.wire_node("min", math::min(), &[g, six])?[0]
        };
        let product = model.wire_node("mul", math::mul(), &[gate, y])?[0];
        let mut out = model.wire_node("scale", math::mul(), &[product, sixth])?[0];
        if let Some(d) = shift {
            let d = scalar(&mut model, "shift.value", d)?;
            out = model.wire_node("shift", math::add(), &[out, d])?[0];
        }
        let mut outputs = vec![out];
        if extra_use {
            outputs.push(gate);
        }
        model.select_output_outlets(&outputs)?;
        Ok(model)
    }

    fn activations(plan: &TypedModel) -> Vec<crate::depthwise::Activation> {
        plan.nodes
            .iter()
            .filter_map(|n| n.op_as::<crate::pointwise::PointwiseConv>())
            .map(|op| op.activation)
            .collect()
    }

    #[test]
    fn the_exporters_hard_swish_folds_into_the_conv_before_it() -> TractResult<()> {
        use crate::depthwise::Activation;
        // (clip's Min first, the last factor, a shift after, element-wise
        // passes left in the plan)
        for (min_first, c, shift, left) in [
            (false, 1.0 / 6.0, None, 0),
            (true, 1.0 / 6.0, None, 0),
            // PP-LCNetV3: a learnable scale merged into the 1/6, then a
            // learnable shift: one product (and the sum) left.
            (false, 0.0279, None, 1),
            (true, 0.0279, Some(-0.25), 2),
        ] {
            let model = decomposed(min_first, false, c, shift)?;
            let x = input(&[1, 8, 12, 16])?;
            let want = model.clone().into_runnable()?.run(tvec![x.clone()])?;
            let plan = crate::engine::optimise(model)?;
            assert_eq!(
                activations(plan.model()),
                [Activation::HardSwish],
                "{}",
                plan.model()
            );
            let passes = plan
                .model()
                .nodes
                .iter()
                .filter(|n| n.op_is::<TypedBinOp>() || n.op().name().starts_with("FerryRow"))
                .count();
            assert_eq!(passes, left, "{}", plan.model());
            let got = plan.run(tvec![x])?;
            same_answers(&want[0], &got[0])?;
        }
        Ok(())
    }

    #[test]
    fn a_gate_used_elsewhere_is_left_as_it_is() -> TractResult<()> {
        let model = decomposed(false, true, 1.0 / 6.0, None)?;
        let x = input(&[1, 8, 12, 16])?;
        let want = model.clone().into_runnable()?.run(tvec![x.clone()])?;
        let plan = crate::engine::optimise(model)?;
        assert_eq!(
            activations(plan.model()),
            [crate::depthwise::Activation::None]
        );
        let got = plan.run(tvec![x])?;
        same_answers(&want[0], &got[0])?;
        same_answers(&want[1], &got[1])
    }
}
