//! Row-wise ops over a short last axis, evaluated by our own loops.
//!
//! Tabular models end in a softmax and an argmax over a handful of classes.
//! tract runs those once per row: its softmax calls three linalg kernels per
//! 10-wide row (each fetching scratch space), and its reductions build an
//! ndarray slice per output element. On a 100k-row batch that tail cost more
//! than the matrix products. [`substitute`] swaps such nodes, after
//! decluttering and before tract optimises the plan, for ops that walk the
//! contiguous rows directly: the exponentials run over the whole block in
//! one loop the compiler vectorises. Results follow onnxruntime's float32
//! semantics (first index wins ties; NaN propagates through softmax).
//!
//! Binary ops between a tensor and a constant row (a scaler's means and
//! scales) are swapped too: tract evaluates those through ndarray's generic
//! broadcast, one closure call per element.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_hir::tract_core::ops::cast::{cast, Cast};
use tract_onnx::tract_hir::tract_core::ops::nn::{Reduce, Reducer, Softmax, SoftmaxKind};
use tract_onnx::tract_hir::tract_ndarray::Array1;

/// Replaces eligible softmax and reduction nodes of `model`; returns how many.
///
/// Eligible: float32 input, the op works on the last axis only. Anything else
/// stays with tract.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut swaps: Vec<(usize, Box<dyn TypedOp>)> = Vec::new();
    for node in model.nodes() {
        let Some(&input) = node.inputs.first() else {
            continue;
        };
        let fact = model.outlet_fact(input)?;
        if fact.datum_type != DatumType::F32 || fact.rank() == 0 {
            continue;
        }
        let last = fact.rank() - 1;
        if let Some(op) = node.op_as::<Softmax>() {
            if op.kind == SoftmaxKind::Softmax
                && op.quant_output_dt.is_none()
                && op.axes.as_slice() == [last]
            {
                swaps.push((node.id, Box::new(RowSoftmax)));
            }
        } else if let Some(op) = node.op_as::<Reduce>() {
            let kind = match op.reducer {
                Reducer::ArgMax(take_last) => RowReducer::ArgMax { take_last },
                Reducer::ArgMin(take_last) => RowReducer::ArgMin { take_last },
                Reducer::Sum => RowReducer::Sum,
                Reducer::Max => RowReducer::Max,
                Reducer::Min => RowReducer::Min,
                _ => continue,
            };
            if op.axes.as_slice() == [last] {
                swaps.push((node.id, Box::new(RowReduce { kind })));
            }
        }
    }
    let mut n = swaps.len();
    for (id, op) in swaps {
        // Same inputs, same output facts: the node keeps its wiring.
        model.node_mut(id).op = op;
    }
    n += integer_label_casts(model)?;
    // Binary ops with a constant row lose an input: rewire through patches.
    // A patch only appends nodes, so the ids collected here stay valid.
    let binops: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<TypedBinOp>())
        .map(|n| n.id)
        .collect();
    for id in binops {
        let node = model.node(id);
        if let Some((x, op)) = row_broadcast(model, node)? {
            let patch = TypedModelPatch::replace_single_op(model, node, &[x], op)?;
            patch.apply(model)?;
            n += 1;
        } else if let Some(op) = column_broadcast(model, node)? {
            model.node_mut(id).op = Box::new(op);
            n += 1;
        }
    }
    if n > 0 {
        model.compact()?;
    }
    Ok(n)
}

/// tract reads ONNX's `Cast(to=INT64)` as a cast to `TDim`, its symbolic
/// integer: a classifier's label output then becomes one heap-allocated
/// expression per row, cast back to int64 when the engine hands it out.
/// Where such a cast of integers feeds nothing but model outputs, it casts
/// to int64 directly; returns how many.
fn integer_label_casts(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = Vec::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<Cast>() else {
            continue;
        };
        let [input] = node.inputs[..] else { continue };
        let from = model.outlet_fact(input)?.datum_type;
        let out = OutletId::new(node.id, 0);
        if op.to == DatumType::TDim
            && matches!(from, DatumType::I32 | DatumType::I64)
            && node.outputs.len() == 1
            && model.outlet_successors(out).is_empty()
            && model.outputs.contains(&out)
        {
            found.push(node.id);
        }
    }
    for &id in &found {
        let node = model.node_mut(id);
        node.op = Box::new(cast(DatumType::I64));
        let shape = node.outputs[0].fact.shape.clone();
        node.outputs[0].fact = DatumType::I64.fact(shape);
    }
    Ok(found.len())
}

/// The arithmetic of a two-input `+ − × ÷` node of tract's that keeps its
/// input type (no quantised output).
pub(crate) fn plain_arith(node: &TypedNode) -> Option<Arith> {
    let op = node.op_as::<TypedBinOp>()?;
    if op.1.is_some() || node.inputs.len() != 2 {
        return None;
    }
    match op.0.name() {
        "Add" => Some(Arith::Add),
        "Sub" => Some(Arith::Sub),
        "Mul" => Some(Arith::Mul),
        "Div" => Some(Arith::Div),
        _ => None,
    }
}

/// `x ∘ c` or `c ∘ x` for `∘` in + − × ÷, where `x` is float32 with a
/// concrete last axis of width W and `c` a constant that only varies along
/// that axis (a scaler's means and scales, a layer's bias). tract takes its
/// generic ndarray broadcast path for these, one closure call per element.
fn row_broadcast(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(OutletId, RowBroadcast)>> {
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
            || x.rank() == 0
            || &x.shape != out
        {
            continue;
        }
        // A bias after a matrix product stays with tract, which fuses it
        // (and a following ReLU) into the product's kernel.
        if model.node(node.inputs[xi].node).op.name() == "EinSum" {
            continue;
        }
        let Some(width) = x.shape[x.rank() - 1].as_i64().map(|w| w as usize) else {
            continue;
        };
        if konst.rank() > x.rank() {
            continue;
        }
        let Some(row) = const_row(konst, width)? else {
            continue;
        };
        return Ok(Some((
            node.inputs[xi],
            RowBroadcast {
                arith,
                row: Arc::new(row),
                const_first: ci == 0,
            },
        )));
    }
    Ok(None)
}

/// A float32 constant that only varies along its last axis, as a row of
/// `width` values: one value or `width` of them, every other axis 1.
pub(crate) fn const_row(konst: &Tensor, width: usize) -> TractResult<Option<Vec<f32>>> {
    if konst.datum_type() != DatumType::F32 {
        return Ok(None);
    }
    let shape = konst.shape();
    if !shape.iter().rev().skip(1).all(|&d| d == 1) {
        return Ok(None);
    }
    let plain = konst.try_as_plain_ram()?;
    Ok(match (shape.last().copied(), plain.as_slice::<f32>()?) {
        (None | Some(1), &[v]) => Some(vec![v; width]),
        (Some(w), v) if w == width && v.len() == width => Some(v.to_vec()),
        _ => None,
    })
}

/// `exp(x)` for float32, branch-free so a loop over a slice vectorises.
///
/// Cephes' `expf`: `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-6 polynomial
/// for `e^r`, `2^n` built from the exponent bits. Relative error below
/// 2e-7 over the clamped range; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -87.0;
    const HI: f32 = 88.0;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // Comparisons, not min/max, so a NaN input falls through unchanged.
    let x = if x < LO { LO } else { x };
    let x = if x > HI { HI } else { x };
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * z + r + 1.0;
    // n is in [-126, 127] after the clamp; NaN casts to 0.
    let bits = ((n as i32 + 127) as u32) << 23;
    e * f32::from_bits(bits)
}

/// Softmax over each contiguous row of `data` (row length `width`), in place.
pub fn softmax_rows(data: &mut [f32], width: usize) {
    // Compiled again for the widest vectors the CPU has (AVX-512 here, NEON
    // on ARM), chosen at run time: the exp loop below is most of the work.
    pulp::Arch::new().dispatch(SoftmaxKernel { data, width });
}

struct SoftmaxKernel<'a> {
    data: &'a mut [f32],
    width: usize,
}

impl pulp::WithSimd for SoftmaxKernel<'_> {
    type Output = ();

    // Inlined into pulp's per-CPU entry points, so LLVM vectorises the
    // loops below with that CPU's instructions.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        if (2..=S::F32_LANES.min(IOTA.len())).contains(&self.width) {
            softmax_short_rows(simd, self.data, self.width);
        } else {
            softmax_rows_simd(self.data, self.width);
        }
    }
}

/// Lane numbers, to mask the lanes past a short row.
const IOTA: [f32; 16] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
];

/// Softmax over rows that fit in one vector (a classifier's ten classes on
/// AVX-512): each row's max and sum are one vector reduction instead of a
/// chain of scalar compares and adds.
#[inline(always)]
fn softmax_short_rows<S: pulp::Simd>(simd: S, data: &mut [f32], width: usize) {
    let lanes = simd.partial_load_f32s(&IOTA[..S::F32_LANES.min(IOTA.len())]);
    let in_row = simd.less_than_f32s(lanes, simd.splat_f32s(width as f32));
    let below_all = simd.splat_f32s(f32::NEG_INFINITY);
    for row in data.chunks_exact_mut(width) {
        // Lanes past the row read as −∞, so they never win the max. A NaN
        // in the row makes the whole row NaN below, whatever the max says.
        let v = simd.select_f32s(in_row, simd.partial_load_f32s(row), below_all);
        let max = simd.reduce_max_f32s(v);
        simd.partial_store_f32s(row, simd.sub_f32s(v, simd.splat_f32s(max)));
    }
    for x in data.iter_mut() {
        *x = exp_f32(*x);
    }
    for row in data.chunks_exact_mut(width) {
        // Lanes past the row load as 0 and add nothing.
        let v = simd.partial_load_f32s(row);
        let inv = 1.0 / simd.reduce_sum_f32s(v);
        simd.partial_store_f32s(row, simd.mul_f32s(v, simd.splat_f32s(inv)));
    }
}

/// Calls `$f::<W>(args)` with the width `W` fixed for short rows (2 to 16
/// values), `$f::<0>` (width read at run time) otherwise. With the width a
/// constant, the per-row loops unroll: no loop branch per value, and the
/// CPU overlaps several rows.
macro_rules! by_width {
    ($width:expr, $f:ident ( $($arg:expr),* )) => {
        match $width {
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            13 => $f::<13>($($arg),*),
            14 => $f::<14>($($arg),*),
            15 => $f::<15>($($arg),*),
            16 => $f::<16>($($arg),*),
            _ => $f::<0>($($arg),*),
        }
    };
}

#[inline(always)]
fn softmax_rows_simd(data: &mut [f32], width: usize) {
    by_width!(width, softmax_passes(data, width))
}

/// `W` is the row width when not 0; `width` otherwise.
#[inline(always)]
fn softmax_passes<const W: usize>(data: &mut [f32], width: usize) {
    let width = if W == 0 { width } else { W };
    if width == 0 {
        return;
    }
    for row in data.chunks_exact_mut(width) {
        let mut max = f32::NEG_INFINITY;
        for &x in row.iter() {
            // A select, not a branch; NaN never wins, and then spreads
            // through the subtraction below.
            max = if x > max { x } else { max };
        }
        for x in row.iter_mut() {
            *x -= max;
        }
    }
    // One long loop over the block: this is the part that vectorises.
    for x in data.iter_mut() {
        *x = exp_f32(*x);
    }
    for row in data.chunks_exact_mut(width) {
        let sum: f32 = row.iter().sum();
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// ONNX `Softmax` (opset 13 semantics) over the last axis of a float32 tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowSoftmax;

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "FerryRowSoftmax".into()
    }
    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| TractError::msg("softmax: no input"))?;
        let mut t = input.into_tensor();
        let width = t.shape().last().copied().unwrap_or(1);
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            softmax_rows(plain.as_slice_mut::<f32>()?, width);
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let f = inputs
            .first()
            .ok_or_else(|| TractError::msg("softmax: no input"))?;
        Ok(tvec!(f.without_value()))
    }
    as_op!();
}

/// `x ∘ y` where `y` has `x`'s shape but a last axis of 1 (a probability
/// normalised by its row sum). Same two inputs as tract's op.
fn column_broadcast(model: &TypedModel, node: &TypedNode) -> TractResult<Option<ColumnBroadcast>> {
    let Some(arith) = plain_arith(node) else {
        return Ok(None);
    };
    let (a, b) = (
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    );
    if a.datum_type != DatumType::F32
        || b.datum_type != DatumType::F32
        || a.rank() != b.rank()
        || a.rank() == 0
    {
        return Ok(None);
    }
    let r = a.rank() - 1;
    let column_of = |full: &TypedFact, col: &TypedFact| {
        full.shape[..r] == col.shape[..r]
            && col.shape[r] == 1.to_dim()
            && full.shape[r] != 1.to_dim()
    };
    let column_first = if column_of(b, a) {
        true
    } else if column_of(a, b) {
        false
    } else {
        return Ok(None);
    };
    Ok(Some(ColumnBroadcast {
        arith,
        column_first,
    }))
}

/// `x ∘ col` (or `col ∘ x`): each row of `x` against its own scalar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnBroadcast {
    pub arith: Arith,
    /// Input 0 is the column, input 1 the full tensor.
    pub column_first: bool,
}

impl Op for ColumnBroadcast {
    fn name(&self) -> StaticName {
        format!("FerryColumnBroadcast<{:?}>", self.arith).into()
    }
    op_as_typed_op!();
}

impl EvalOp for ColumnBroadcast {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut it = inputs.into_iter();
        let (a, b) = match (it.next(), it.next()) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(TractError::msg("column broadcast: two inputs expected")),
        };
        let (col, full) = if self.column_first { (a, b) } else { (b, a) };
        let width = full.shape().last().copied().unwrap_or(1);
        let col_plain = col.try_as_plain_ram()?;
        let col = col_plain.as_slice::<f32>()?;
        let mut t = full.into_tensor();
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            let data = plain.as_slice_mut::<f32>()?;
            if width == 0 || data.len() != col.len() * width {
                return Err(TractError::msg("column broadcast: shapes do not match"));
            }
            let rows = data.chunks_exact_mut(width).zip(col);
            match (self.arith, self.column_first) {
                (Arith::Add, _) => rows.for_each(|(r, &c)| r.iter_mut().for_each(|x| *x += c)),
                (Arith::Mul, _) => rows.for_each(|(r, &c)| r.iter_mut().for_each(|x| *x *= c)),
                (Arith::Sub, false) => rows.for_each(|(r, &c)| r.iter_mut().for_each(|x| *x -= c)),
                (Arith::Sub, true) => {
                    rows.for_each(|(r, &c)| r.iter_mut().for_each(|x| *x = c - *x))
                }
                (Arith::Div, false) => rows.for_each(|(r, &c)| r.iter_mut().for_each(|x| *x /= c)),
                (Arith::Div, true) => {
                    rows.for_each(|(r, &c)| r.iter_mut().for_each(|x| *x = c / *x))
                }
            }
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for ColumnBroadcast {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let full = inputs
            .get(if self.column_first { 1 } else { 0 })
            .ok_or_else(|| TractError::msg("column broadcast: two inputs expected"))?;
        Ok(tvec!(full.without_value()))
    }
    as_op!();
}

/// The arithmetic of a [`RowBroadcast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// `x ∘ row` (or `row ∘ x`) with `row` repeated along every leading axis.
#[derive(Debug, Clone, PartialEq)]
pub struct RowBroadcast {
    pub arith: Arith,
    pub row: Arc<Vec<f32>>,
    /// The constant is the left operand (`row − x`, `row ÷ x`).
    pub const_first: bool,
}

// Bit patterns, so NaN constants compare equal to themselves.
impl Eq for RowBroadcast {}
impl std::hash::Hash for RowBroadcast {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.arith.hash(h);
        self.const_first.hash(h);
        self.row.iter().for_each(|v| v.to_bits().hash(h));
    }
}

/// Applies `arith` between each `width`-long row of `data` and `row`.
pub fn broadcast_rows(data: &mut [f32], row: &[f32], arith: Arith, const_first: bool) {
    let width = row.len();
    if width == 0 {
        return;
    }
    // One monomorphic loop per case so each vectorises.
    macro_rules! each {
        (|$x:ident, $c:ident| $e:expr) => {
            for chunk in data.chunks_exact_mut(width) {
                for ($x, &$c) in chunk.iter_mut().zip(row) {
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

impl Op for RowBroadcast {
    fn name(&self) -> StaticName {
        format!("FerryRowBroadcast<{:?}>", self.arith).into()
    }
    op_as_typed_op!();
}

impl EvalOp for RowBroadcast {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| TractError::msg("broadcast: no input"))?;
        let mut t = input.into_tensor();
        if t.shape().last() != Some(&self.row.len()) {
            return Err(TractError::msg(format!(
                "broadcast: input shape {:?}, row of {}",
                t.shape(),
                self.row.len()
            )));
        }
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            broadcast_rows(
                plain.as_slice_mut::<f32>()?,
                &self.row,
                self.arith,
                self.const_first,
            );
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for RowBroadcast {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let f = inputs
            .first()
            .ok_or_else(|| TractError::msg("broadcast: no input"))?;
        Ok(tvec!(f.without_value()))
    }
    as_op!();
}

/// Which reduction a [`RowReduce`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowReducer {
    ArgMax { take_last: bool },
    ArgMin { take_last: bool },
    Sum,
    Max,
    Min,
}

/// A reduction over the last axis, keeping it as a dimension of 1 (as
/// tract's `Reduce` does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowReduce {
    pub kind: RowReducer,
}

/// Index of the first (or last) extreme of `row`, tract's and onnxruntime's
/// tie rule. `better(a, b)`: a beats b strictly.
#[inline(always)]
fn arg_extreme(row: &[f32], start: f32, take_last: bool, better: impl Fn(f32, f32) -> bool) -> i64 {
    let mut best = start;
    let mut at = 0usize;
    for (i, &x) in row.iter().enumerate() {
        // Selects, not a branch: where the winner sits is random from row
        // to row, and a mispredicted jump per row cost more than the row.
        let wins = better(x, best) | (take_last & (x == best));
        best = if wins { x } else { best };
        at = if wins { i } else { at };
    }
    at as i64
}

/// A 1-D tensor of `n` values from `values`, written in place (an ndarray
/// turned into a tensor would be copied once more).
fn collect_tensor<T: Datum + Copy + tract_num_traits::Zero>(
    n: usize,
    values: impl Iterator<Item = T>,
) -> TractResult<Tensor> {
    let mut t = Tensor::zero::<T>(&[n])?;
    {
        let mut plain = t.try_as_plain_ram_mut()?;
        for (slot, v) in plain.as_slice_mut::<T>()?.iter_mut().zip(values) {
            *slot = v;
        }
    }
    Ok(t)
}

/// The index of each row's extreme; `W` is the row width when not 0.
fn arg_rows<const W: usize>(
    x: &[f32],
    width: usize,
    start: f32,
    take_last: bool,
    better: impl Fn(f32, f32) -> bool + Copy,
) -> TractResult<Tensor> {
    let width = if W == 0 { width } else { W };
    let rows = x.chunks_exact(width);
    // The tie rule as a constant in each copy of the loop: the common
    // first-index rule then costs one compare and two selects per value.
    if take_last {
        collect_tensor(
            x.len() / width,
            rows.map(|r| arg_extreme(r, start, true, better)),
        )
    } else {
        collect_tensor(
            x.len() / width,
            rows.map(|r| arg_extreme(r, start, false, better)),
        )
    }
}

impl RowReduce {
    fn reduce(&self, x: &[f32], width: usize) -> TractResult<Tensor> {
        let n = x.len() / width;
        let rows = x.chunks_exact(width);
        match self.kind {
            RowReducer::ArgMax { take_last } => {
                by_width!(width, arg_rows(x, width, f32::MIN, take_last, |a, b| a > b))
            }
            RowReducer::ArgMin { take_last } => {
                by_width!(width, arg_rows(x, width, f32::MAX, take_last, |a, b| a < b))
            }
            RowReducer::Sum => collect_tensor(n, rows.map(|r| r.iter().sum::<f32>())),
            RowReducer::Max => {
                collect_tensor(n, rows.map(|r| r.iter().copied().fold(f32::MIN, f32::max)))
            }
            RowReducer::Min => {
                collect_tensor(n, rows.map(|r| r.iter().copied().fold(f32::MAX, f32::min)))
            }
        }
    }
}

impl Op for RowReduce {
    fn name(&self) -> StaticName {
        format!("FerryRowReduce<{:?}>", self.kind).into()
    }
    op_as_typed_op!();
}

impl EvalOp for RowReduce {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs
            .first()
            .ok_or_else(|| TractError::msg("reduce: no input"))?;
        let mut shape: TVec<usize> = input.shape().into();
        let width = shape.last().copied().unwrap_or(1);
        if let Some(last) = shape.last_mut() {
            *last = 1;
        }
        let out = if width == 0 {
            // An empty axis: tract's identity values (0 index, sum 0, ±MAX).
            let n: usize = shape.iter().product();
            match self.kind {
                RowReducer::ArgMax { .. } | RowReducer::ArgMin { .. } => {
                    Array1::from_vec(vec![0i64; n]).into_tensor()
                }
                RowReducer::Sum => Array1::from_vec(vec![0f32; n]).into_tensor(),
                RowReducer::Max => Array1::from_vec(vec![f32::MIN; n]).into_tensor(),
                RowReducer::Min => Array1::from_vec(vec![f32::MAX; n]).into_tensor(),
            }
        } else {
            self.reduce(input.try_as_plain_ram()?.as_slice::<f32>()?, width)?
        };
        Ok(tvec!(out.into_shape(&shape)?.into_tvalue()))
    }
}

impl TypedOp for RowReduce {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let f = inputs
            .first()
            .ok_or_else(|| TractError::msg("reduce: no input"))?;
        let mut shape: TVec<TDim> = f.shape.to_tvec();
        if let Some(last) = shape.last_mut() {
            *last = 1.to_dim();
        }
        let dt = match self.kind {
            RowReducer::ArgMax { .. } | RowReducer::ArgMin { .. } => DatumType::I64,
            _ => DatumType::F32,
        };
        Ok(tvec!(dt.fact(shape)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_float_rounding() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "exp({x}): {a} vs {b}");
            x += 0.0137;
        }
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-1e30) < 1e-37);
    }

    #[test]
    fn softmax_rows_match_the_textbook_formula() {
        let rows = [
            vec![1.0f32, 2.0, 3.0],
            vec![-1000.0, 0.0, 1000.0],
            vec![0.5, 0.5, 0.5],
        ];
        let mut flat: Vec<f32> = rows.concat();
        softmax_rows(&mut flat, 3);
        for (r, got) in rows.iter().zip(flat.chunks(3)) {
            let m = r.iter().copied().fold(f32::MIN, f32::max);
            let e: Vec<f64> = r.iter().map(|x| f64::from(x - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for (g, e) in got.iter().zip(&e) {
                assert!((f64::from(*g) - e / s).abs() < 1e-6, "{r:?} -> {got:?}");
            }
        }
        let mut nan = vec![1.0, f32::NAN, 0.0];
        softmax_rows(&mut nan, 3);
        assert!(nan.iter().all(|x| x.is_nan()));
    }

    /// Widths with a fixed-width copy of the loops (2–16) and without one
    /// (1, 17, 40) give the same softmax and argmax.
    #[test]
    fn every_width_path_agrees_with_the_textbook() -> TractResult<()> {
        for width in [1usize, 2, 7, 10, 16, 17, 40] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
                .collect();
            let mut got = x.clone();
            softmax_rows(&mut got, width);
            let arg = RowReduce {
                kind: RowReducer::ArgMax { take_last: false },
            }
            .reduce(&x, width)?;
            let arg = arg.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
            for (r, row) in x.chunks(width).enumerate() {
                let m = row.iter().copied().fold(f32::MIN, f32::max);
                let e: Vec<f64> = row.iter().map(|v| f64::from(v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                for (g, e) in got[r * width..(r + 1) * width].iter().zip(&e) {
                    assert!((f64::from(*g) - e / s).abs() < 1e-6, "width {width}");
                }
                let first = row.iter().position(|&v| v == m).map(|i| i as i64);
                assert_eq!(Some(arg[r]), first, "width {width}, row {r}");
            }
        }
        Ok(())
    }

    #[test]
    fn broadcast_rows_applies_the_row_to_every_row_in_either_order() {
        let row = [1.0f32, 2.0, 4.0];
        let x = [8.0f32, 8.0, 8.0, 2.0, 4.0, 8.0];
        let cases: [(Arith, bool, [f32; 6]); 6] = [
            (Arith::Add, false, [9.0, 10.0, 12.0, 3.0, 6.0, 12.0]),
            (Arith::Mul, true, [8.0, 16.0, 32.0, 2.0, 8.0, 32.0]),
            (Arith::Sub, false, [7.0, 6.0, 4.0, 1.0, 2.0, 4.0]),
            (Arith::Sub, true, [-7.0, -6.0, -4.0, -1.0, -2.0, -4.0]),
            (Arith::Div, false, [8.0, 4.0, 2.0, 2.0, 2.0, 2.0]),
            (Arith::Div, true, [0.125, 0.25, 0.5, 0.5, 0.5, 0.5]),
        ];
        for (arith, const_first, want) in cases {
            let mut got = x;
            broadcast_rows(&mut got, &row, arith, const_first);
            assert_eq!(got, want, "{arith:?} const_first={const_first}");
        }
    }

    /// The fixtures' tails are what this module exists for: if a tract
    /// upgrade renames or reshapes these ops, this says so.
    #[test]
    fn fixture_models_get_their_tails_substituted() -> TractResult<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
        for (model, width, want, left) in [
            // scaler Sub and Mul, ArgMax, ReduceSum, the division by the row sum
            // (tract turns it into a reciprocal and a Mul); not the bias after
            // the matrix product
            (
                "bc_logreg",
                30,
                vec![
                    "RowBroadcast<Sub>",
                    "RowBroadcast<Mul>",
                    "ArgMax",
                    "Sum",
                    "ColumnBroadcast<Mul>",
                ],
                vec!["RowBroadcast<Add>"],
            ),
            // Softmax and ArgMax
            (
                "digits_mlp",
                64,
                vec!["RowSoftmax", "ArgMax"],
                vec!["RowBroadcast<Add>"],
            ),
        ] {
            let mut m = crate::trees::onnx().model_for_path(dir.join(format!("{model}.onnx")))?;
            let rows = m.sym("N");
            m.set_input_fact(
                0,
                InferenceFact::dt_shape(DatumType::F32, tvec![TDim::Sym(rows), width.to_dim()]),
            )?;
            let mut m = m.into_typed()?.into_decluttered()?;
            substitute(&mut m)?;
            let names: Vec<String> = m.nodes().iter().map(|n| n.op.name().to_string()).collect();
            for w in want {
                assert!(
                    names
                        .iter()
                        .any(|n| n.starts_with("Ferry") && n.contains(w)),
                    "{model}: no {w} in {names:?}"
                );
            }
            // Biases after a matrix product are left to tract's fusion.
            for w in left {
                assert!(
                    !names.iter().any(|n| n.contains(w)),
                    "{model}: {w} should stay with tract: {names:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn argmax_takes_the_first_of_equal_values_unless_told_otherwise() {
        let r = RowReduce {
            kind: RowReducer::ArgMax { take_last: false },
        };
        let t = r
            .reduce(&[1.0, 3.0, 3.0, 0.0, 5.0, 5.0, 5.0, 1.0], 4)
            .expect("reduce");
        assert_eq!(
            t.try_as_plain_ram()
                .ok()
                .and_then(|p| p.as_slice::<i64>().ok().map(<[i64]>::to_vec))
                .as_deref(),
            Some(&[1i64, 0][..])
        );
        let r = RowReduce {
            kind: RowReducer::ArgMax { take_last: true },
        };
        let t = r
            .reduce(&[1.0, 3.0, 3.0, 0.0, 5.0, 5.0, 5.0, 1.0], 4)
            .expect("reduce");
        assert_eq!(
            t.try_as_plain_ram()
                .ok()
                .and_then(|p| p.as_slice::<i64>().ok().map(<[i64]>::to_vec))
                .as_deref(),
            Some(&[2i64, 2][..])
        );
        let r = RowReduce {
            kind: RowReducer::ArgMin { take_last: false },
        };
        let t = r.reduce(&[1.0, 3.0, 0.0, 0.0], 2).expect("reduce");
        assert_eq!(
            t.try_as_plain_ram()
                .ok()
                .and_then(|p| p.as_slice::<i64>().ok().map(<[i64]>::to_vec))
                .as_deref(),
            Some(&[0i64, 0][..])
        );
    }
}
