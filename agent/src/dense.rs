//! A fused dense layer (`relu?(x · W + b)`) for the narrow matrix products
//! of tabular models.
//!
//! A tabular network multiplies each row (tens of features) by a small
//! constant matrix (tens of columns). tract packs every block's activations
//! into its kernel's panel layout before multiplying: on the digits MLP the
//! packing cost as much as the products themselves. onnxruntime packs only
//! the weights, once. So does [`Dense`]: the weight matrix is laid out at
//! load, its columns padded to whole vectors, and each feature of a row is
//! broadcast straight from the input, so a call packs nothing. It stays in
//! L1: 64 × 32 weights are 8 KiB.
//!
//! The kernel is written once over [`pulp::Simd`] and dispatched at run time
//! to AVX-512, AVX2 + FMA, NEON or plain scalar code: one binary serves every
//! x86 host of a fleet, and this crate stays free of `unsafe`.

use std::sync::Arc;

use pulp::{Arch, Simd, WithSimd};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;

use crate::rowops::const_row;

/// Columns are padded to a multiple of the widest vector dispatched to
/// (AVX-512: 16 × f32), so every narrower width divides it too.
const PAD: usize = 16;

/// `relu?(x · W + b)` for row-major `x` (rows × k) and a constant `W` (k × n).
#[derive(Debug, Clone)]
pub struct Dense {
    k: usize,
    n: usize,
    /// Padded width: `n` rounded up to [`PAD`].
    np: usize,
    /// `W`, k rows of `np` columns, the padding zero.
    w: Arc<Vec<f32>>,
    /// The bias, `np` long, the padding zero.
    bias: Arc<Vec<f32>>,
    relu: bool,
}

/// Why a layer could not be built from the weights given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DenseError {
    #[error("dense layer: {got} weights for a {k}×{n} matrix")]
    Weights { got: usize, k: usize, n: usize },
    #[error("dense layer: a bias of {got} for {n} columns")]
    Bias { got: usize, n: usize },
    #[error("dense layer: input of {got} values is not whole rows of {k}")]
    Input { got: usize, k: usize },
    #[error("dense layer: output of {got} values for {rows} rows of {n}")]
    Output { got: usize, rows: usize, n: usize },
}

impl Dense {
    /// `weights` is `W` row-major (k × n), or its transpose (n × k) when
    /// `transposed` (ONNX Gemm's `transB`). `bias` is one value per column.
    pub fn new(
        weights: &[f32],
        k: usize,
        n: usize,
        transposed: bool,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Result<Self, DenseError> {
        if weights.len() != k * n {
            return Err(DenseError::Weights {
                got: weights.len(),
                k,
                n,
            });
        }
        let np = n.div_ceil(PAD).max(1) * PAD;
        let mut w = vec![0.0f32; k * np];
        for (i, row) in w.chunks_exact_mut(np).enumerate() {
            for (j, v) in row[..n].iter_mut().enumerate() {
                *v = if transposed {
                    weights[j * k + i]
                } else {
                    weights[i * n + j]
                };
            }
        }
        let mut b = vec![0.0f32; np];
        if let Some(bias) = bias {
            if bias.len() != n {
                return Err(DenseError::Bias { got: bias.len(), n });
            }
            b[..n].copy_from_slice(bias);
        }
        Ok(Self {
            k,
            n,
            np,
            w: Arc::new(w),
            bias: Arc::new(b),
            relu,
        })
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    pub fn relu(&self) -> bool {
        self.relu
    }

    /// Writes `relu?(x · W + b)` for every row of `x` into `out` (rows × n).
    pub fn apply(&self, x: &[f32], out: &mut [f32]) -> Result<(), DenseError> {
        if self.k == 0 || !x.len().is_multiple_of(self.k) {
            return Err(DenseError::Input {
                got: x.len(),
                k: self.k,
            });
        }
        let rows = x.len() / self.k;
        if out.len() != rows * self.n {
            return Err(DenseError::Output {
                got: out.len(),
                rows,
                n: self.n,
            });
        }
        Arch::new().dispatch(Kernel {
            layer: self,
            x,
            out,
        });
        Ok(())
    }
}

struct Kernel<'a> {
    layer: &'a Dense,
    x: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for Kernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // Rows per tile: as many accumulators as the registers hold with two
        // weight vectors and a broadcast beside them (32 registers on
        // AVX-512 and NEON, 16 on AVX2).
        match S::F32_LANES {
            16 | 4 => rows_in_tiles::<S, 8>(simd, self),
            8 => rows_in_tiles::<S, 6>(simd, self),
            _ => rows_in_tiles::<S, 4>(simd, self),
        }
    }
}

#[inline(always)]
fn rows_in_tiles<S: Simd, const MR: usize>(simd: S, kernel: Kernel<'_>) {
    let Kernel { layer, x, out } = kernel;
    let (k, n) = (layer.k, layer.n);
    let (w, _) = S::as_simd_f32s(&layer.w);
    let (bias, _) = S::as_simd_f32s(&layer.bias);
    let per_row = layer.np / S::F32_LANES;
    let mut xs = x.chunks_exact(MR * k);
    let mut outs = out.chunks_exact_mut(MR * n);
    for (x, out) in (&mut xs).zip(&mut outs) {
        tile::<S, MR>(simd, layer, x, w, bias, per_row, out);
    }
    let tail = xs.remainder().chunks_exact(k);
    for (x, out) in tail.zip(outs.into_remainder().chunks_exact_mut(n)) {
        tile::<S, 1>(simd, layer, x, w, bias, per_row, out);
    }
}

/// `MR` rows, all columns, two vectors of columns at a time.
#[inline(always)]
fn tile<S: Simd, const MR: usize>(
    simd: S,
    layer: &Dense,
    x: &[f32],
    w: &[S::f32s],
    bias: &[S::f32s],
    per_row: usize,
    out: &mut [f32],
) {
    let mut c0 = 0;
    while c0 < per_row {
        if c0 + 2 <= per_row {
            columns::<S, MR, 2>(simd, layer, x, w, bias, per_row, c0, out);
            c0 += 2;
        } else {
            columns::<S, MR, 1>(simd, layer, x, w, bias, per_row, c0, out);
            c0 += 1;
        }
    }
}

/// `MR` rows × `C` vectors of columns starting at vector `c0`, kept in
/// registers across the whole `k` loop.
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
#[inline(always)]
fn columns<S: Simd, const MR: usize, const C: usize>(
    simd: S,
    layer: &Dense,
    x: &[f32],
    w: &[S::f32s],
    bias: &[S::f32s],
    per_row: usize,
    c0: usize,
    out: &mut [f32],
) {
    let (k, n) = (layer.k, layer.n);
    let lanes = S::F32_LANES;
    let rows: [&[f32]; MR] = std::array::from_fn(|r| &x[r * k..][..k]);
    // Fixed-size arrays indexed by constant ranges: LLVM unrolls both loops
    // and keeps every accumulator in a register. Iterators over slices here
    // left it storing them to the stack on each step.
    let mut acc: [[S::f32s; C]; MR] = [std::array::from_fn(|c| bias[c0 + c]); MR];
    for i in 0..k {
        let at = i * per_row + c0;
        let wv: [S::f32s; C] = std::array::from_fn(|c| w[at + c]);
        for r in 0..MR {
            let xv = simd.splat_f32s(rows[r][i]);
            for c in 0..C {
                acc[r][c] = simd.mul_add_e_f32s(xv, wv[c], acc[r][c]);
            }
        }
    }
    if layer.relu {
        let zero = simd.splat_f32s(0.0);
        for r in 0..MR {
            for c in 0..C {
                acc[r][c] = simd.max_f32s(acc[r][c], zero);
            }
        }
    }
    for r in 0..MR {
        let out_row = &mut out[r * n..][..n];
        for c in 0..C {
            let start = (c0 + c) * lanes;
            if start < n {
                let end = (start + lanes).min(n);
                simd.partial_store_f32s(&mut out_row[start..end], acc[r][c]);
            }
        }
    }
}

/// Replaces each `x · W` of a float32 row matrix by a constant matrix, with
/// the bias added after it and a ReLU after that when present, by one
/// [`DenseOp`]; returns how many. Anything else stays with tract.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    let products: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<EinSum>())
        .map(|n| n.id)
        .collect();
    let mut fused = 0;
    for id in products {
        let Some(Fusion { layer, input, last }) = fusion_at(model, id)? else {
            continue;
        };
        let node = model.node(id);
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, input)?;
        let out = patch.wire_node(format!("{}.ferry_dense", node.name), DenseOp(layer), &[x])?;
        patch.shunt_outside(model, OutletId::new(last, 0), out[0])?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
        fused += 1;
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

/// A layer to wire in place of the nodes from a product to `last`.
struct Fusion {
    layer: Dense,
    /// What the layer reads: the product's input, or the raw input in front
    /// of a scaler folded into the weights.
    input: OutletId,
    last: usize,
}

/// The layer the product at node `id` starts.
fn fusion_at(model: &TypedModel, id: usize) -> TractResult<Option<Fusion>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if op.q_params.is_some() || op.operating_dt != DatumType::F32 || node.inputs.len() != 2 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let Some(w) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
        return Ok(None);
    };
    if x.datum_type != DatumType::F32
        || x.konst.is_some()
        || x.rank() != 2
        || w.datum_type() != DatumType::F32
        || w.rank() != 2
    {
        return Ok(None);
    }
    // Only the plain row-times-matrix product: `mk,kn->mn` or `mk,nk->mn`.
    let (ins, outs) = op.axes.to_strs();
    let axes = |s: &str| -> Vec<char> { s.chars().collect() };
    let (a, b, o) = match (ins.first(), ins.get(1), outs.first()) {
        (Some(a), Some(b), Some(o)) => (axes(a), axes(b), axes(o)),
        _ => return Ok(None),
    };
    let [m, kc] = a[..] else { return Ok(None) };
    let [om, nc] = o[..] else { return Ok(None) };
    if om != m || m == kc || nc == kc || nc == m {
        return Ok(None);
    }
    let transposed = if b == [kc, nc] {
        false
    } else if b == [nc, kc] {
        true
    } else {
        return Ok(None);
    };
    let (k, n) = if transposed {
        (w.shape()[1], w.shape()[0])
    } else {
        (w.shape()[0], w.shape()[1])
    };
    if x.shape[1] != k.to_dim() || k == 0 || n == 0 {
        return Ok(None);
    }
    let mut last = id;
    let bias = follower(model, last, "Add", n)?;
    if let Some((next, _)) = &bias {
        last = *next;
    }
    let mut relu = false;
    if let Some((next, zeros)) = follower(model, last, "Max", n)? {
        if zeros.iter().all(|&v| v == 0.0) {
            relu = true;
            last = next;
        }
    }
    let plain = w.try_as_plain_ram()?;
    let given = plain.as_slice::<f32>()?;
    if given.len() != k * n {
        return Ok(None);
    }
    // W as k rows of n.
    let mut weights: Vec<f32> = (0..k * n)
        .map(|at| {
            let (i, j) = (at / n, at % n);
            if transposed {
                given[j * k + i]
            } else {
                given[at]
            }
        })
        .collect();
    let mut bias = bias.map(|(_, b)| b).unwrap_or_else(|| vec![0.0; n]);
    let mut input = node.inputs[0];
    // ((x − m) × s)·W + b = x·(s ⊙ W) + (b − (m × s)·W)
    if let Some(Scaler { raw, mean, scale }) = scaler_before(model, input, k)? {
        let mut shifted: Vec<f64> = bias.iter().map(|&b| f64::from(b)).collect();
        for (i, row) in weights.chunks_exact_mut(n).enumerate() {
            let shift = f64::from(mean[i]) * f64::from(scale[i]);
            for (sj, wij) in shifted.iter_mut().zip(row.iter_mut()) {
                *sj -= shift * f64::from(*wij);
                *wij *= scale[i];
            }
        }
        bias = shifted.iter().map(|&b| b as f32).collect();
        input = raw;
    }
    let layer = Dense::new(&weights, k, n, false, Some(&bias), relu)
        .map_err(|e| TractError::msg(e.to_string()))?;
    Ok(Some(Fusion { layer, input, last }))
}

/// The only consumer of `from`'s output, when it is the binary op `name`
/// with a constant row of `n` values (or one value for all) as its other
/// operand: its id and that row. `from`'s output must not be a model output.
fn follower(
    model: &TypedModel,
    from: usize,
    name: &str,
    n: usize,
) -> TractResult<Option<(usize, Vec<f32>)>> {
    let Some(f) = crate::const_operand::follower(model, OutletId::new(from, 0))? else {
        return Ok(None);
    };
    if f.op != name || f.konst.rank() > 2 {
        return Ok(None);
    }
    Ok(const_row(&f.konst, n)?.map(|row| (f.node, row)))
}

/// `x` when `outlet` is `x ∘ row` (or `row ∘ x` when `either_order`) for the
/// binary op `name` and a constant row of `k`, used by nothing else.
fn row_operand(
    model: &TypedModel,
    outlet: OutletId,
    name: &str,
    k: usize,
    either_order: bool,
) -> TractResult<Option<(OutletId, Vec<f32>)>> {
    if model.outputs.contains(&outlet) || model.outlet_successors(outlet).len() != 1 {
        return Ok(None);
    }
    let node = model.node(outlet.node);
    let Some(op) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if op.0.name() != name || op.1.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let out = model.outlet_fact(outlet)?;
    for (xi, ci) in [(0, 1), (1, 0)] {
        if ci == 0 && !either_order {
            continue;
        }
        let (x, c) = (
            model.outlet_fact(node.inputs[xi])?,
            model.outlet_fact(node.inputs[ci])?,
        );
        let Some(konst) = &c.konst else { continue };
        if x.konst.is_some() || x.shape != out.shape || konst.rank() > 2 {
            continue;
        }
        if let Some(row) = const_row(konst, k)? {
            return Ok(Some((node.inputs[xi], row)));
        }
    }
    Ok(None)
}

/// `(raw − mean) × scale`, per feature.
struct Scaler {
    raw: OutletId,
    mean: Vec<f32>,
    scale: Vec<f32>,
}

/// A standard scaler in front of a layer, `(x − mean) × scale`: the raw
/// input and the two rows. Folded into the layer's weights, it saves two
/// passes over every row. Only when `mean × scale` is modest, so the
/// folded form (`x·scale·W − mean·scale·W`) cancels no more precision than
/// float32 rounding of the product itself.
fn scaler_before(model: &TypedModel, x: OutletId, k: usize) -> TractResult<Option<Scaler>> {
    let Some((centred, scale)) = row_operand(model, x, "Mul", k, true)? else {
        return Ok(None);
    };
    let (raw, mean) = if let Some((raw, mean)) = row_operand(model, centred, "Sub", k, false)? {
        (raw, mean)
    } else if let Some((raw, shift)) = row_operand(model, centred, "Add", k, true)? {
        (raw, shift.iter().map(|v| -v).collect())
    } else {
        (centred, vec![0.0; k])
    };
    let modest = mean
        .iter()
        .zip(&scale)
        .all(|(m, s)| (m * s).is_finite() && (m * s).abs() <= MAX_FOLDED_SHIFT && s.is_finite());
    Ok(modest.then_some(Scaler { raw, mean, scale }))
}

/// Largest `|mean × scale|` folded into a layer: a feature centred this far
/// from its raw value loses at most about 6 bits of its float32 mantissa.
const MAX_FOLDED_SHIFT: f32 = 64.0;

/// A [`Dense`] layer as a node of tract's graph.
#[derive(Debug, Clone)]
pub struct DenseOp(pub Dense);

// Bit patterns, so NaN weights compare equal to themselves.
impl PartialEq for DenseOp {
    fn eq(&self, other: &Self) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (a, b) = (&self.0, &other.0);
        (a.k, a.n, a.relu) == (b.k, b.n, b.relu)
            && bits(&a.w) == bits(&b.w)
            && bits(&a.bias) == bits(&b.bias)
    }
}
impl Eq for DenseOp {}
impl std::hash::Hash for DenseOp {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let d = &self.0;
        (d.k, d.n, d.relu).hash(h);
        d.w.iter()
            .chain(d.bias.iter())
            .for_each(|v| v.to_bits().hash(h));
    }
}

impl Op for DenseOp {
    fn name(&self) -> StaticName {
        "FerryDense".into()
    }
    op_as_typed_op!();
}

impl EvalOp for DenseOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs
            .into_iter()
            .next()
            .ok_or_else(|| TractError::msg("dense: no input"))?;
        let mut shape: TVec<usize> = x.shape().into();
        match shape.last_mut() {
            Some(last) if *last == self.0.k => *last = self.0.n,
            _ => {
                return Err(TractError::msg(format!(
                    "dense: input shape {:?}, {} features expected",
                    x.shape(),
                    self.0.k
                )))
            }
        }
        let mut out = Tensor::zero::<f32>(&shape)?;
        {
            let xs = x.try_as_plain_ram()?;
            let mut ys = out.try_as_plain_ram_mut()?;
            self.0
                .apply(xs.as_slice::<f32>()?, ys.as_slice_mut::<f32>()?)
                .map_err(|e| TractError::msg(e.to_string()))?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DenseOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| TractError::msg("dense: no input"))?;
        let mut shape: TVec<TDim> = x.shape.iter().cloned().collect();
        if let Some(last) = shape.last_mut() {
            *last = self.0.n.to_dim();
        }
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook triple loop, in f64.
    fn reference(x: &[f32], w: &[f32], b: &[f32], k: usize, n: usize, relu: bool) -> Vec<f32> {
        let rows = x.len() / k;
        let mut out = vec![0.0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut s = f64::from(b[j]);
                for i in 0..k {
                    s += f64::from(x[r * k + i]) * f64::from(w[i * n + j]);
                }
                out[r * n + j] = if relu { s.max(0.0) as f32 } else { s as f32 };
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic, signed, not all equal.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_triple_loop_on_odd_shapes() {
        // Widths below, at and across the vector widths; row counts that
        // leave tails after every tile height.
        for (k, n) in [
            (1, 1),
            (3, 2),
            (30, 1),
            (30, 2),
            (64, 32),
            (32, 10),
            (7, 17),
            (5, 48),
        ] {
            for rows in [1, 5, 8, 13, 31] {
                for relu in [false, true] {
                    let x = values(rows * k, (k * 31 + n) as u32);
                    let w = values(k * n, (n * 7 + k) as u32);
                    let b = values(n, 3);
                    let layer = Dense::new(&w, k, n, false, Some(&b), relu).expect("layer");
                    let mut got = vec![f32::NAN; rows * n];
                    layer.apply(&x, &mut got).expect("apply");
                    let want = reference(&x, &w, &b, k, n, relu);
                    for (g, e) in got.iter().zip(&want) {
                        assert!(
                            (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                            "k={k} n={n} rows={rows} relu={relu}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_transposed_weight_matrix_gives_the_same_layer() {
        let (k, n) = (6, 5);
        let w = values(k * n, 9);
        let mut wt = vec![0.0; k * n];
        for i in 0..k {
            for j in 0..n {
                wt[j * k + i] = w[i * n + j];
            }
        }
        let x = values(4 * k, 1);
        let a = Dense::new(&w, k, n, false, None, false).expect("layer");
        let b = Dense::new(&wt, k, n, true, None, false).expect("layer");
        let (mut ya, mut yb) = (vec![0.0; 4 * n], vec![0.0; 4 * n]);
        a.apply(&x, &mut ya).expect("apply");
        b.apply(&x, &mut yb).expect("apply");
        assert_eq!(ya, yb);
    }

    #[test]
    fn mismatched_buffers_are_refused_not_read_past() {
        let layer = Dense::new(&[1.0; 6], 3, 2, false, None, false).expect("layer");
        let mut out = vec![0.0; 2];
        assert_eq!(
            layer.apply(&[1.0; 4], &mut out),
            Err(DenseError::Input { got: 4, k: 3 })
        );
        assert_eq!(
            layer.apply(&[1.0; 6], &mut out),
            Err(DenseError::Output {
                got: 2,
                rows: 2,
                n: 2
            })
        );
        assert!(matches!(
            Dense::new(&[1.0; 5], 3, 2, false, None, false),
            Err(DenseError::Weights { .. })
        ));
        assert!(matches!(
            Dense::new(&[1.0; 6], 3, 2, false, Some(&[0.0; 3]), false),
            Err(DenseError::Bias { .. })
        ));
    }

    fn decluttered_fixture(model: &str, width: usize) -> TractResult<TypedModel> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
        let mut m = crate::trees::onnx().model_for_path(dir.join(format!("{model}.onnx")))?;
        let rows = m.sym("N");
        m.set_input_fact(
            0,
            InferenceFact::dt_shape(DatumType::F32, tvec![TDim::Sym(rows), width.to_dim()]),
        )?;
        m.into_typed()?.into_decluttered()
    }

    fn op_names(m: &TypedModel) -> Vec<String> {
        m.nodes().iter().map(|n| n.op.name().to_string()).collect()
    }

    /// The fixtures' layers are what this exists for: if a tract upgrade
    /// changes how it represents them, this says so.
    #[test]
    fn fixture_layers_are_fused_with_their_bias_and_relu() -> TractResult<()> {
        for (model, width, layers, relus) in [("bc_logreg", 30, 1, 0), ("digits_mlp", 64, 2, 1)] {
            let mut m = decluttered_fixture(model, width)?;
            assert_eq!(fuse(&mut m)?, layers, "{model}");
            let dense: Vec<&DenseOp> = m
                .nodes()
                .iter()
                .filter_map(|n| n.op_as::<DenseOp>())
                .collect();
            assert_eq!(dense.len(), layers, "{model}");
            assert_eq!(
                dense.iter().filter(|d| d.0.relu()).count(),
                relus,
                "{model}"
            );
            let names = op_names(&m);
            // bc_logreg's scaler is folded into its layer's weights.
            assert!(
                !names
                    .iter()
                    .any(|n| n == "EinSum" || n == "Add" || n == "Max" || n == "Sub"),
                "{model}: {names:?}"
            );
        }
        Ok(())
    }

    /// A product whose raw output is also a model output keeps its bias and
    /// ReLU outside, and the graph computes the same values either way.
    #[test]
    fn an_intermediate_the_graph_exposes_is_not_fused_away() -> TractResult<()> {
        let mut m = decluttered_fixture("digits_mlp", 64)?;
        let first = m
            .nodes()
            .iter()
            .find(|n| n.op_is::<EinSum>())
            .map(|n| n.id)
            .ok_or_else(|| TractError::msg("no product"))?;
        m.outputs.push(OutletId::new(first, 0));
        let plain = m.clone().into_runnable()?;
        assert_eq!(fuse(&mut m)?, 2);
        let names = op_names(&m);
        assert!(names.iter().any(|n| n == "Add"), "{names:?}");
        assert!(names.iter().any(|n| n == "Max"), "{names:?}");
        let fused = m.into_runnable()?;
        let x = tract_ndarray::Array2::from_shape_vec(
            (3, 64),
            values(3 * 64, 5).iter().map(|v| (v + 1.0) * 8.0).collect(),
        )
        .map_err(|e| TractError::msg(e.to_string()))?
        .into_tensor();
        let a = plain.run(tvec![x.clone().into_tvalue()])?;
        let b = fused.run(tvec![x.into_tvalue()])?;
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            if a.datum_type() != DatumType::F32 {
                continue;
            }
            let (a, b) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
            for (x, y) in a.as_slice::<f32>()?.iter().zip(b.as_slice::<f32>()?) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
        Ok(())
    }

    fn baseline_rows(model: &str) -> TractResult<(usize, Vec<f32>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
        let text = std::fs::read_to_string(dir.join(format!("{model}.baseline.csv")))?;
        let mut rows = 0;
        let mut data = Vec::new();
        for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            for v in line.split(',') {
                data.push(
                    v.trim()
                        .parse::<f32>()
                        .map_err(|e| TractError::msg(e.to_string()))?,
                );
            }
            rows += 1;
        }
        Ok((rows, data))
    }

    fn assert_same_outputs(a: &TVec<TValue>, b: &TVec<TValue>, what: &str) -> TractResult<()> {
        assert_eq!(a.len(), b.len(), "{what}");
        for (a, b) in a.iter().zip(b) {
            let (a, b) = (a.cast_to::<f64>()?, b.cast_to::<f64>()?);
            let (a, b) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
            for (x, y) in a.as_slice::<f64>()?.iter().zip(b.as_slice::<f64>()?) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                    "{what}: {x} vs {y}"
                );
            }
        }
        Ok(())
    }

    /// Folding bc_logreg's scaler into its weights moves no prediction and
    /// no probability beyond float32 rounding, on every baseline row.
    #[test]
    fn fused_fixtures_score_their_baselines_as_tract_does() -> TractResult<()> {
        for (model, width) in [("bc_logreg", 30), ("digits_mlp", 64)] {
            let mut m = decluttered_fixture(model, width)?;
            let plain = m.clone().into_optimized()?.into_runnable()?;
            fuse(&mut m)?;
            let fused = m.into_optimized()?.into_runnable()?;
            let (rows, data) = baseline_rows(model)?;
            let x = Tensor::from_shape(&[rows, width], &data)?;
            let a = plain.run(tvec![x.clone().into_tvalue()])?;
            let b = fused.run(tvec![x.into_tvalue()])?;
            assert_same_outputs(&a, &b, model)?;
        }
        Ok(())
    }

    /// `(x − mean) × scale · W` by hand, for a given mean.
    fn scaled_product(mean: f32) -> TractResult<TypedModel> {
        use tract_onnx::tract_hir::tract_core::ops::math;
        let mut m = TypedModel::default();
        let rows = m.sym("N");
        let x = m.add_source("x", f32::fact(tvec![TDim::Sym(rows), 2.to_dim()]))?;
        let mean = m.add_const("mean", tensor2(&[[mean, 0.5]]))?;
        let scale = m.add_const("scale", tensor2(&[[0.5f32, 2.0]]))?;
        let w = m.add_const("w", tensor2(&[[1.0f32, -1.0, 0.5], [2.0, 0.25, -3.0]]))?;
        let c = m.wire_node("sub", math::sub(), &[x, mean])?;
        let s = m.wire_node("mul", math::mul(), &[c[0], scale])?;
        let axes = "mk,kn->mn".parse()?;
        let y = m.wire_node("mm", EinSum::new(axes, DatumType::F32), &[s[0], w])?;
        m.select_output_outlets(&y)?;
        Ok(m)
    }

    /// A scaler that shifts a feature far (here by 2000 × 0.5) would cancel
    /// precision if folded: it stays in the graph, ahead of the layer.
    #[test]
    fn a_far_shifting_scaler_is_not_folded() -> TractResult<()> {
        for (mean, folded) in [(3.0f32, true), (2000.0, false)] {
            let mut m = scaled_product(mean)?;
            let plain = m.clone().into_runnable()?;
            assert_eq!(fuse(&mut m)?, 1);
            let names = op_names(&m);
            assert_eq!(
                !names.iter().any(|n| n == "Sub"),
                folded,
                "{mean}: {names:?}"
            );
            let x = tensor2(&[[2001.0f32, 1.0], [1999.5, -3.0], [0.0, 0.0]]);
            let a = plain.run(tvec![x.clone().into_tvalue()])?;
            let b = m.into_runnable()?.run(tvec![x.into_tvalue()])?;
            assert_same_outputs(&a, &b, "scaled product")?;
        }
        Ok(())
    }

    #[test]
    fn nan_in_a_row_stays_in_that_row() {
        let layer = Dense::new(&[1.0, 2.0], 1, 2, false, None, false).expect("layer");
        let mut out = vec![0.0; 4];
        layer.apply(&[f32::NAN, 1.0], &mut out).expect("apply");
        assert!(out[0].is_nan() && out[1].is_nan());
        assert_eq!(&out[2..], &[1.0, 2.0]);
    }
}
