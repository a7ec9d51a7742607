//! An embedding written as a one-hot product: `Cast(x == values) · W`,
//! each input code compared with every entry of a constant row, the
//! booleans cast to floats and multiplied by a constant matrix. jax2tf
//! exports `jax.nn.one_hot(x) @ W` this way (`magika`'s byte embedding:
//! 2,048 codes against 257 values, times 257 × 64).
//!
//! Profiled on `magika-standard-v3-3`, tract spent 2.6 ms of a 15 ms run
//! there: the comparison and the cast each wrote 2,048 × 257 values, then
//! its product packed and multiplied them. The product only ever adds the
//! rows of `W` whose value equals the code, so here each code's row of the
//! output is that sum, looked up: the rows of `W` that share a value are
//! summed once, when the plan is built, and a code equal to no value gives
//! zeros, as the product would.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_hir::tract_core::ops::cast::Cast;
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;

/// Replaces every one-hot product of `model` by a [`OneHotRows`]; returns
/// how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let products: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<EinSum>())
        .map(|n| n.id)
        .collect();
    let mut swapped = 0;
    for id in products {
        let Some((codes, op)) = one_hot_product(model, id)? else {
            continue;
        };
        let name = model.node(id).name.clone();
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, codes)?;
        let y = patch.wire_node(format!("{name}.one_hot_rows"), op, &[x])?;
        patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
        swapped += 1;
    }
    if swapped > 0 {
        model.compact()?;
    }
    Ok(swapped)
}

/// The codes and the op computing the product at node `id`, when it is
/// `Cast<f32>(codes == values) · W` with `codes` integers of any shape
/// ending in 1, `values` a constant row and `W` a constant matrix, the
/// comparison and the cast used by nothing else.
fn one_hot_product(model: &TypedModel, id: usize) -> TractResult<Option<(OutletId, OneHotRows)>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    let [hot, w] = node.inputs[..] else {
        return Ok(None);
    };
    let Some(w) = model.outlet_fact(w)?.konst.clone() else {
        return Ok(None);
    };
    if op.q_params.is_some()
        || op.operating_dt != DatumType::F32
        || w.datum_type() != DatumType::F32
        || w.rank() != 2
    {
        return Ok(None);
    }
    // `…k,kn->…n` or `…k,nk->…n`: every axis of the one-hot operand but
    // its last kept in order, the last summed against one axis of `W`.
    let (ins, outs) = op.axes.to_strs();
    let (Some(a), Some(b), Some(o)) = (ins.first(), ins.get(1), outs.first()) else {
        return Ok(None);
    };
    let (a, b, o): (Vec<char>, Vec<char>, Vec<char>) = (
        a.chars().collect(),
        b.chars().collect(),
        o.chars().collect(),
    );
    let (Some((&k, rows)), Some((&n, out_rows))) = (a.split_last(), o.split_last()) else {
        return Ok(None);
    };
    if rows != out_rows || rows.contains(&n) || k == n || rows.contains(&k) {
        return Ok(None);
    }
    let transposed = if b == [k, n] {
        false
    } else if b == [n, k] {
        true
    } else {
        return Ok(None);
    };
    let Some(cast) = sole_producer(model, hot)? else {
        return Ok(None);
    };
    if cast.op_as::<Cast>().is_none_or(|c| c.to != DatumType::F32) {
        return Ok(None);
    }
    let Some(eq) = sole_producer(model, cast.inputs[0])? else {
        return Ok(None);
    };
    let Some(cmp) = eq.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if cmp.0.name() != "Eq" || cmp.1.is_some() || eq.inputs.len() != 2 {
        return Ok(None);
    }
    let hot_shape = &model.outlet_fact(hot)?.shape;
    for (codes, values) in [(eq.inputs[0], eq.inputs[1]), (eq.inputs[1], eq.inputs[0])] {
        let (cf, vf) = (model.outlet_fact(codes)?, model.outlet_fact(values)?);
        let Some(values) = vf.konst.clone() else {
            continue;
        };
        let kinds = values.len();
        let code_dims = cf.shape.dims();
        let row_shaped = values.shape().split_last().is_some_and(|(&last, rest)| {
            last == kinds && rest.iter().all(|&d| d == 1) && rest.len() + 1 == code_dims.len()
        });
        if cf.konst.is_some()
            || !is_integer(cf.datum_type)
            || !is_integer(values.datum_type())
            || !row_shaped
            || code_dims.last() != Some(&1.to_dim())
            || hot_shape.dims().last() != Some(&kinds.to_dim())
            || hot_shape.dims()[..code_dims.len() - 1] != code_dims[..code_dims.len() - 1]
        {
            continue;
        }
        let width = w.shape()[if transposed { 0 } else { 1 }];
        if w.shape()[if transposed { 1 } else { 0 }] != kinds {
            return Ok(None);
        }
        let values = values.cast_to::<i64>()?;
        let plain = w.try_as_plain_ram()?;
        let table = Table::new(
            values.try_as_plain_ram()?.as_slice::<i64>()?,
            plain.as_slice::<f32>()?,
            width,
            transposed,
        );
        return Ok(Some((codes, OneHotRows(table))));
    }
    Ok(None)
}

fn is_integer(dt: DatumType) -> bool {
    dt.is_integer() && dt != DatumType::Bool
}

/// The node making `outlet`, when `outlet` feeds nothing else and is not a
/// model output: folding it away loses nothing.
fn sole_producer(model: &TypedModel, outlet: OutletId) -> TractResult<Option<&TypedNode>> {
    if model.outputs.contains(&outlet) || model.outlet_successors(outlet).len() != 1 {
        return Ok(None);
    }
    let node = model.node(outlet.node);
    Ok((node.outputs.len() == 1 && !node.inputs.is_empty()).then_some(node))
}

/// Each distinct compared value with the sum of the rows of `W` it selects.
#[derive(Debug, Clone)]
pub struct Table {
    /// The distinct values, ascending.
    values: Vec<i64>,
    /// `values.len()` rows of `width`: row `i` is what a code equal to
    /// `values[i]` adds.
    rows: Vec<f32>,
    width: usize,
}

impl Table {
    /// From the compared `values` and `W` (`values.len()` rows of `width`,
    /// or its transpose when `transposed`).
    fn new(values: &[i64], w: &[f32], width: usize, transposed: bool) -> Table {
        let mut distinct = values.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut rows = vec![0.0f32; distinct.len() * width];
        for (i, v) in values.iter().enumerate() {
            let Ok(at) = distinct.binary_search(v) else {
                continue;
            };
            let row = &mut rows[at * width..][..width];
            for (j, r) in row.iter_mut().enumerate() {
                *r += if transposed {
                    w[j * values.len() + i]
                } else {
                    w[i * width + j]
                };
            }
        }
        Table {
            values: distinct,
            rows,
            width,
        }
    }

    /// One output row per code.
    fn gather(&self, codes: &[i64], out: &mut [f32]) {
        for (code, row) in codes.iter().zip(out.chunks_exact_mut(self.width.max(1))) {
            match self.values.binary_search(code) {
                Ok(at) => row.copy_from_slice(&self.rows[at * self.width..][..self.width]),
                Err(_) => row.fill(0.0),
            }
        }
    }
}

/// `Cast<f32>(codes == values) · W` for codes shaped `[…, 1]`: `[…, width]`.
#[derive(Debug, Clone)]
pub struct OneHotRows(pub Table);

// Bit patterns, so NaN weights compare equal to themselves.
impl PartialEq for OneHotRows {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        a.width == b.width
            && a.values == b.values
            && a.rows
                .iter()
                .map(|v| v.to_bits())
                .eq(b.rows.iter().map(|v| v.to_bits()))
    }
}
impl Eq for OneHotRows {}
impl std::hash::Hash for OneHotRows {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let t = &self.0;
        (t.width, &t.values).hash(h);
        t.rows.iter().for_each(|v| v.to_bits().hash(h));
    }
}

impl Op for OneHotRows {
    fn name(&self) -> StaticName {
        "FerryOneHotRows".into()
    }
    op_as_typed_op!();
}

impl EvalOp for OneHotRows {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let codes = inputs
            .first()
            .ok_or_else(|| TractError::msg("one-hot rows: no input"))?;
        let mut shape: TVec<usize> = codes.shape().into();
        match shape.last_mut() {
            Some(last) if *last == 1 => *last = self.0.width,
            _ => {
                return Err(TractError::msg(format!(
                    "one-hot rows: codes shaped {:?}, a last axis of 1 expected",
                    codes.shape()
                )))
            }
        }
        let codes = codes.cast_to::<i64>()?;
        let mut out = Tensor::zero::<f32>(&shape)?;
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            self.0.gather(
                codes.try_as_plain_ram()?.as_slice::<i64>()?,
                plain.as_slice_mut::<f32>()?,
            );
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for OneHotRows {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let codes = inputs
            .first()
            .ok_or_else(|| TractError::msg("one-hot rows: no input"))?;
        let mut shape: TVec<TDim> = codes.shape.to_tvec();
        match shape.last_mut() {
            Some(last) => *last = self.0.width.to_dim(),
            None => return Err(TractError::msg("one-hot rows: scalar codes")),
        }
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::values;
    use tract_onnx::tract_hir::tract_core::ops::logic::comp_eq;

    /// `Cast(codes[…, None] == values) · W` as jax2tf writes it, with
    /// `codes` `[2, n, 1]` (`n` symbolic when `None`); `W` given `[k, width]`, or `[width, k]` when
    /// `transposed`; `codes_first` puts the codes on the comparison's left.
    fn one_hot_model(
        n: Option<usize>,
        values_row: &[i32],
        width: usize,
        transposed: bool,
        codes_first: bool,
    ) -> TractResult<TypedModel> {
        let k = values_row.len();
        let mut m = TypedModel::default();
        let n = n.map_or_else(|| TDim::Sym(m.sym("N")), |n| n.to_dim());
        let x = m.add_source("x", i32::fact(tvec![2.to_dim(), n, 1.to_dim()]))?;
        let r = m.add_const("values", Tensor::from_shape(&[1, 1, k], values_row)?)?;
        let eq_inputs = if codes_first { [x, r] } else { [r, x] };
        let eq = m.wire_node("eq", TypedBinOp(comp_eq(), None), &eq_inputs)?;
        let hot = m.wire_node("cast", Cast { to: DatumType::F32 }, &eq)?;
        let shape = if transposed { [width, k] } else { [k, width] };
        let w = m.add_const("w", Tensor::from_shape(&shape, &values(k * width, 5))?)?;
        let axes = if transposed {
            "amk,nk->amn"
        } else {
            "amk,kn->amn"
        }
        .parse()?;
        let y = m.wire_node("mm", EinSum::new(axes, DatumType::F32), &[hot[0], w])?;
        m.select_output_outlets(&y)?;
        Ok(m)
    }

    /// Codes in range, out of range, negative; a value listed twice (its
    /// rows add up), both layouts of `W`, the codes on either side.
    #[test]
    fn a_one_hot_product_is_the_rows_it_selects() -> TractResult<()> {
        let values_row = [0, 1, 2, 3, 4, 2, -7];
        let codes: Vec<i32> = vec![0, 3, 2, 9, -7, 4, 1, -1, 2, 6];
        for transposed in [false, true] {
            for codes_first in [true, false] {
                let m = one_hot_model(Some(5), &values_row, 6, transposed, codes_first)?;
                let mut ours = m.clone();
                assert_eq!(substitute(&mut ours)?, 1);
                let names: Vec<String> = ours.nodes().iter().map(|n| n.op.name().into()).collect();
                assert!(
                    names
                        .iter()
                        .all(|n| n != "Eq" && n != "Cast" && n != "EinSum"),
                    "{names:?}"
                );
                let x = Tensor::from_shape(&[2, 5, 1], &codes)?;
                let want = m.into_runnable()?.run(tvec![x.clone().into_tvalue()])?;
                let got = ours.into_runnable()?.run(tvec![x.into_tvalue()])?;
                crate::test_fixtures::same_answers(&want[0], &got[0])?;
            }
        }
        Ok(())
    }

    /// A symbolic number of codes: the plan is built once and serves any.
    #[test]
    fn a_symbolic_sequence_gets_the_same_rows() -> TractResult<()> {
        let m = one_hot_model(None, &[0, 1, 2, 3], 3, false, true)?;
        let mut ours = m.clone();
        assert_eq!(substitute(&mut ours)?, 1);
        for len in [1usize, 4] {
            let codes: Vec<i32> = (0..2 * len as i32).map(|i| i % 5).collect();
            let x = Tensor::from_shape(&[2, len, 1], &codes)?;
            let want = m
                .clone()
                .into_runnable()?
                .run(tvec![x.clone().into_tvalue()])?;
            let got = ours.clone().into_runnable()?.run(tvec![x.into_tvalue()])?;
            crate::test_fixtures::same_answers(&want[0], &got[0])?;
        }
        Ok(())
    }

    /// A comparison the graph also uses elsewhere (here as an output) must
    /// stay: the product is left to tract.
    #[test]
    fn a_comparison_used_elsewhere_is_left_as_it_is() -> TractResult<()> {
        let mut m = one_hot_model(Some(3), &[0, 1, 2], 2, false, true)?;
        let eq = m.node_by_name("eq")?.id;
        let mut outputs = m.output_outlets()?.to_vec();
        outputs.push(OutletId::new(eq, 0));
        m.select_output_outlets(&outputs)?;
        assert_eq!(substitute(&mut m)?, 0);
        Ok(())
    }
}
