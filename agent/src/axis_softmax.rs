//! Softmax over an inner axis of a float32 tensor, on our own loops.
//!
//! YOLOv8's box head takes a softmax over 16 distance bins that sit before
//! the 8,400 anchors (`[1, 4, 16, 8400]`, axis 2). tract walks that axis
//! one strided lane at a time; on `nudenet-320n` the one node was 21 % of
//! the run. Laid out as `[outer, n, inner]`, the same softmax is `n`
//! contiguous rows of `inner` values per block, combined element-wise: the
//! running maximum, the exponentials and the sums are all straight loops
//! over rows, which the compiler vectorises. The last axis stays with
//! [`crate::rowops`].

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::ensure;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::nn::{Softmax, SoftmaxKind};

use crate::rowops::exp_f32;

/// Replaces every float32 softmax over one axis that is not the last;
/// returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut swaps = Vec::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<Softmax>() else {
            continue;
        };
        let Some(&input) = node.inputs.first() else {
            continue;
        };
        let fact = model.outlet_fact(input)?;
        if fact.datum_type != DatumType::F32 || fact.rank() < 2 {
            continue;
        }
        if let &[axis] = op.axes.as_slice() {
            if op.kind == SoftmaxKind::Softmax
                && op.quant_output_dt.is_none()
                && axis + 1 < fact.rank()
            {
                swaps.push((node.id, AxisSoftmax { axis }));
            }
        }
    }
    let n = swaps.len();
    for (id, op) in swaps {
        model.node_mut(id).op = Box::new(op);
    }
    Ok(n)
}

/// ONNX `Softmax` (opset 13 semantics) over `axis`, which is not the last.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AxisSoftmax {
    axis: usize,
}

impl Op for AxisSoftmax {
    fn name(&self) -> StaticName {
        "FerryAxisSoftmax".into()
    }
    op_as_typed_op!();
}

impl EvalOp for AxisSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| TractError::msg("softmax: no input"))?;
        let mut t = input.into_tensor();
        let shape = t.shape();
        ensure!(
            self.axis < shape.len(),
            "softmax: axis {} of {:?}",
            self.axis,
            shape
        );
        let n = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            softmax_axis(plain.as_slice_mut::<f32>()?, n, inner);
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for AxisSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let f = inputs
            .first()
            .ok_or_else(|| TractError::msg("softmax: no input"))?;
        Ok(tvec!(f.without_value()))
    }
    as_op!();
}

/// Softmax over the middle axis of `data` laid out as `[outer, n, inner]`.
pub fn softmax_axis(data: &mut [f32], n: usize, inner: usize) {
    if n == 0 || inner == 0 {
        return;
    }
    // Compiled again for the widest vectors the CPU has, chosen at run time.
    pulp::Arch::new().dispatch(|| {
        let mut max = vec![0.0f32; inner];
        let mut sum = vec![0.0f32; inner];
        for block in data.chunks_exact_mut(n * inner) {
            softmax_block(block, inner, &mut max, &mut sum);
        }
    });
}

#[inline(always)]
fn softmax_block(block: &mut [f32], inner: usize, max: &mut [f32], sum: &mut [f32]) {
    max.copy_from_slice(&block[..inner]);
    for row in block.chunks_exact(inner).skip(1) {
        for (m, &x) in max.iter_mut().zip(row) {
            // A select: NaN never wins here, and spreads through the
            // subtraction below, as in onnxruntime.
            *m = if x > *m { x } else { *m };
        }
    }
    sum.fill(0.0);
    for row in block.chunks_exact_mut(inner) {
        for ((x, &m), s) in row.iter_mut().zip(max.iter()).zip(sum.iter_mut()) {
            *x = exp_f32(*x - m);
            *s += *x;
        }
    }
    for s in sum.iter_mut() {
        *s = 1.0 / *s;
    }
    for row in block.chunks_exact_mut(inner) {
        for (x, &inv) in row.iter_mut().zip(sum.iter()) {
            *x *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inner_axis_softmax_matches_tracts_and_is_substituted() -> TractResult<()> {
        // YOLOv8's head shape, shrunk, plus an axis with a single value
        // and a 4-D tensor with the axis first.
        for (shape, axis) in [
            (vec![1usize, 4, 16, 37], 2usize),
            (vec![2, 3, 1, 5], 2),
            (vec![5, 7, 3], 0),
            (vec![2, 6, 9, 4], 1),
        ] {
            let len: usize = shape.iter().product();
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let input = tensor1(&x).into_shape(&shape)?;
            let mut model = TypedModel::default();
            let src = model.add_source("x", f32::fact(&shape))?;
            let op = Softmax::new(tvec![axis], None, SoftmaxKind::Softmax);
            let y = model.wire_node("softmax", op, &[src])?;
            model.select_output_outlets(&y)?;
            let tract_plan = model.clone().into_optimized()?.into_runnable()?;
            assert_eq!(substitute(&mut model)?, 1, "{shape:?} axis {axis}");
            let ours = model.into_optimized()?.into_runnable()?;
            let want = tract_plan
                .run(tvec![input.clone().into_tvalue()])?
                .remove(0);
            let got = ours.run(tvec![input.into_tvalue()])?.remove(0);
            let (want, got) = (want.try_as_plain_ram()?, got.try_as_plain_ram()?);
            let (want, got) = (want.as_slice::<f32>()?, got.as_slice::<f32>()?);
            for (g, e) in got.iter().zip(want) {
                assert!(
                    (g - e).abs() <= 1e-6 + 1e-5 * e.abs(),
                    "{shape:?}: {g} vs {e}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn the_last_axis_is_left_to_the_row_softmax() -> TractResult<()> {
        let mut model = TypedModel::default();
        let src = model.add_source("x", f32::fact([3, 10]))?;
        let op = Softmax::new(tvec![1], None, SoftmaxKind::Softmax);
        let y = model.wire_node("softmax", op, &[src])?;
        model.select_output_outlets(&y)?;
        assert_eq!(substitute(&mut model)?, 0);
        Ok(())
    }
}
