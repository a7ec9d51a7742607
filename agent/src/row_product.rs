//! Rows times a constant matrix too large for the caches: a sequence
//! model's classifier (`ddddocr-common`'s: 16 time steps × 1,024 features
//! → 8,210 classes, 33.6 MB of weights).
//!
//! Such a product is bound by reading the weights from memory. tract's
//! kernel walks them once per panel of eight rows, two passes for 16 rows,
//! each along the matrix's rows (32 KiB apart); with the two halves of a
//! bidirectional LSTM's output multiplied separately and added, it read
//! the 33.6 MB four times per request. Here the weights are laid out once,
//! when the plan is built, as panels of 16 columns with each input
//! feature's 32 weights side by side, and every panel is read from memory
//! once and kept in cache while each group of rows is summed over it in
//! registers; bias and ReLU are applied before the one store. Parts of the
//! features multiplied separately and added are multiplied as one.

use pulp::{Arch, Simd, WithSimd};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;

use crate::rowops::const_row;

/// Columns per panel of laid-out weights: one AVX-512 vector, so that
/// every value read from memory is used by all the rows at once.
const PANEL: usize = 16;

/// Weights (values) from which a product is ours: 4 MiB, past the L2 of
/// every core measured. Smaller ones stay in cache and tract's kernel,
/// or `crate::dense`'s, does as well.
const MIN_WEIGHTS: usize = 1 << 20;

/// `relu?(x · W + b)` for rows `x` (`k` features each) and constant `W`.
#[derive(Debug, Clone)]
pub struct RowProduct {
    k: usize,
    n: usize,
    /// `W` as `n / PANEL` (rounded up) panels of `k` rows of [`PANEL`]
    /// values, the last panel's missing columns zero.
    w: Arc<Vec<f32>>,
    /// The bias, padded like `W`'s columns.
    bias: Arc<Vec<f32>>,
    relu: bool,
}

impl RowProduct {
    /// From `W` as `k` rows of `n` (`w_kn`).
    fn new(w_kn: &[f32], k: usize, n: usize, bias: Option<Vec<f32>>, relu: bool) -> RowProduct {
        let panels = n.div_ceil(PANEL);
        let mut w = vec![0.0f32; panels * k * PANEL];
        for (i, row) in w_kn.chunks_exact(n).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                w[(j / PANEL * k + i) * PANEL + j % PANEL] = v;
            }
        }
        let mut padded = bias.unwrap_or_else(|| vec![0.0; n]);
        padded.resize(panels * PANEL, 0.0);
        RowProduct {
            k,
            n,
            w: Arc::new(w),
            bias: Arc::new(padded),
            relu,
        }
    }

    /// `out` (rows of `n`) from `x` (rows of `k`).
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        Arch::new().dispatch(Kernel {
            layer: self,
            x,
            out,
        });
    }
}

struct Kernel<'a> {
    layer: &'a RowProduct,
    x: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for Kernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // A panel's columns (one vector on AVX-512, two elsewhere) × as
        // many rows as the registers hold accumulators for beside them and
        // a broadcast: 32 registers on AVX-512 and NEON, 16 on AVX2.
        match S::F32_LANES {
            16 => panels::<S, 16, 1>(simd, self),
            8 => panels::<S, 6, 2>(simd, self),
            4 => panels::<S, 8, 2>(simd, self),
            _ => panels::<S, 1, 2>(simd, self),
        }
    }
}

/// Every panel once, from memory; each group of `MR` rows over it, summed
/// over `C` vectors of its columns at a time.
#[inline(always)]
fn panels<S: Simd, const MR: usize, const C: usize>(simd: S, kernel: Kernel<'_>) {
    let Kernel { layer, x, out } = kernel;
    let (k, n) = (layer.k, layer.n);
    let step = C * S::F32_LANES;
    let rows = x.len() / k.max(1);
    // The rows' features by group, each feature's `MR` values side by
    // side (the last group's missing rows zero): a tile broadcasts them
    // from one pointer. Read from `MR` separate rows, the row pointers
    // alone took more registers than x86 has.
    let groups = rows.div_ceil(MR);
    let mut by_feature = vec![0.0f32; groups * k * MR];
    for (row, values) in x.chunks_exact(k.max(1)).enumerate() {
        let group = &mut by_feature[row / MR * k * MR..][..k * MR];
        for (i, &v) in values.iter().enumerate() {
            group[i * MR + row % MR] = v;
        }
    }
    for (p, panel) in layer.w.chunks_exact(k * PANEL).enumerate() {
        let mut c = 0;
        while c < PANEL {
            for (g, xs) in by_feature.chunks_exact(k * MR).enumerate() {
                let tile = Tile {
                    layer,
                    panel,
                    xs,
                    first: g * MR,
                    rows,
                    col: p * PANEL + c,
                    c,
                };
                tile.run::<S, MR, C>(simd, out);
            }
            c += step;
        }
    }
    debug_assert_eq!(out.len(), rows * n);
}

/// Rows `first..first + MR` (those below `rows`) × `C` (one or two)
/// vectors of columns from `col` (`c` within the panel).
struct Tile<'a> {
    layer: &'a RowProduct,
    panel: &'a [f32],
    /// The group's features, `MR` values each.
    xs: &'a [f32],
    first: usize,
    rows: usize,
    col: usize,
    c: usize,
}

impl Tile<'_> {
    /// Sums over every feature in registers; bias and ReLU, then stores.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const C: usize>(self, simd: S, out: &mut [f32]) {
        let Tile {
            layer,
            panel,
            xs,
            first,
            rows,
            col,
            c,
        } = self;
        let (k, n) = (layer.k, layer.n);
        let lanes = S::F32_LANES;
        if col >= n {
            return;
        }
        let load = |v: &[f32]| S::as_simd_f32s(&v[..lanes]).0[0];
        let second = C == 2;
        // Flat arrays, constant indices: LLVM keeps them in registers.
        let mut a0: [S::f32s; MR] = [load(&layer.bias[col..]); MR];
        let mut a1: [S::f32s; MR] = [if second {
            load(&layer.bias[col + lanes..])
        } else {
            simd.splat_f32s(0.0)
        }; MR];
        let (panel, xs) = (&panel[..k * PANEL], &xs[..k * MR]);
        for i in 0..k {
            let w = &panel[i * PANEL + c..];
            let w0 = load(w);
            let w1 = if second { load(&w[lanes..]) } else { w0 };
            let x: &[f32; MR] = match xs[i * MR..][..MR].try_into() {
                Ok(x) => x,
                Err(_) => return,
            };
            for m in 0..MR {
                let xv = simd.splat_f32s(x[m]);
                a0[m] = simd.mul_add_e_f32s(xv, w0, a0[m]);
                if second {
                    a1[m] = simd.mul_add_e_f32s(xv, w1, a1[m]);
                }
            }
        }
        let zero = simd.splat_f32s(0.0);
        for m in 0..MR.min(rows.saturating_sub(first)) {
            let row = &mut out[(first + m) * n..][..n];
            for (v, acc) in [(0, a0[m]), (1, a1[m])] {
                let start = col + v * lanes;
                if v >= C || start >= n {
                    continue;
                }
                let acc = if layer.relu {
                    simd.max_f32s(acc, zero)
                } else {
                    acc
                };
                let end = (start + lanes).min(n);
                simd.partial_store_f32s(&mut row[start..end], acc);
            }
        }
    }
}

/// Replaces every float32 product of rows by a constant matrix of
/// [`MIN_WEIGHTS`] or more (or a sum of such products over parts of the
/// features), with the bias added after it and a ReLU after that when
/// present, by one [`RowProductOp`]; returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    substitute_from(model, MIN_WEIGHTS)
}

/// [`substitute`] for products of `min_weights` or more.
fn substitute_from(model: &mut TypedModel, min_weights: usize) -> TractResult<usize> {
    let adds: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| {
            n.op_is::<EinSum>() || n.op_as::<TypedBinOp>().is_some_and(|b| b.0.name() == "Add")
        })
        .map(|n| n.id)
        .collect();
    let mut swapped = 0;
    for id in adds {
        if !live(model, model.node(id)) {
            continue;
        }
        let Some(parts) = parts_at(model, id)? else {
            continue;
        };
        let k: usize = parts.iter().map(|p| p.k).sum();
        let n = parts[0].n;
        if k * n < min_weights {
            continue;
        }
        let mut w_kn = Vec::with_capacity(k * n);
        for p in &parts {
            p.append_rows(&mut w_kn)?;
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
        let op = RowProductOp {
            layer: RowProduct::new(&w_kn, k, n, bias.map(|(_, b)| b), relu),
            parts: parts.iter().map(|p| p.k).collect(),
        };
        let name = model.node(id).name.clone();
        let mut patch = TypedModelPatch::default();
        let xs = parts
            .iter()
            .map(|p| patch.tap_model(model, p.x))
            .collect::<TractResult<TVec<_>>>()?;
        let y = patch.wire_node(format!("{name}.row_product"), op, &xs)?;
        patch.shunt_outside(model, OutletId::new(last, 0), y[0])?;
        patch.apply(model)?;
        swapped += 1;
    }
    if swapped > 0 {
        model.compact()?;
    }
    Ok(swapped)
}

/// Whether `node` still feeds something: a patch applied earlier in the
/// same pass leaves the nodes it replaced without outputs or consumers.
fn live(model: &TypedModel, node: &TypedNode) -> bool {
    node.outputs.first().is_some_and(|o| {
        !o.successors.is_empty() || model.outputs.contains(&OutletId::new(node.id, 0))
    })
}

/// One product of rows by a constant matrix.
struct Part {
    x: OutletId,
    k: usize,
    n: usize,
    /// The matrix as the graph holds it, `k × n` or, when `transposed`,
    /// `n × k`: laid out only once the product is taken.
    w: Arc<Tensor>,
    transposed: bool,
}

impl Part {
    /// Appends `W`'s `k` rows of `n` to `w_kn`.
    fn append_rows(&self, w_kn: &mut Vec<f32>) -> TractResult<()> {
        let (k, n) = (self.k, self.n);
        let plain = self.w.try_as_plain_ram()?;
        let given = plain.as_slice::<f32>()?;
        if self.transposed {
            w_kn.extend((0..k * n).map(|at| given[(at % n) * k + at / n]));
        } else {
            w_kn.extend_from_slice(given);
        }
        Ok(())
    }
}

/// The products node `id` sums: itself when a product, or both operands
/// of an `Add` of two products (each used by nothing else) over rows of the
/// same shape.
fn parts_at(model: &TypedModel, id: usize) -> TractResult<Option<Vec<Part>>> {
    let node = model.node(id);
    if !live(model, node) {
        return Ok(None);
    }
    if node.op_is::<EinSum>() {
        // A product an `Add` takes is taken with it.
        let [inlet] = model.outlet_successors(OutletId::new(id, 0)) else {
            return Ok(product(model, id)?.map(|p| vec![p]));
        };
        let adds_another = parts_at(model, inlet.node)?.is_some_and(|p| p.len() == 2);
        return Ok(if adds_another {
            None
        } else {
            product(model, id)?.map(|p| vec![p])
        });
    }
    let [a, b] = node.inputs[..] else {
        return Ok(None);
    };
    let single_use =
        |o: OutletId| !model.outputs.contains(&o) && model.outlet_successors(o).len() == 1;
    if !single_use(a) || !single_use(b) || a.node == b.node {
        return Ok(None);
    }
    let (Some(pa), Some(pb)) = (product(model, a.node)?, product(model, b.node)?) else {
        return Ok(None);
    };
    let (fa, fb) = (model.outlet_fact(pa.x)?, model.outlet_fact(pb.x)?);
    let rows = |f: &TypedFact| f.shape.dims()[..f.rank() - 1].to_vec();
    if pa.n != pb.n || fa.rank() != fb.rank() || rows(fa) != rows(fb) {
        return Ok(None);
    }
    Ok(Some(vec![pa, pb]))
}

/// The product at node `id` when it is `x · W`: `x` float32 rows (every
/// axis but the last kept, in order, axes of one aside), `W` a constant
/// `k × n` or `n × k`.
fn product(model: &TypedModel, id: usize) -> TractResult<Option<Part>> {
    let node = model.node(id);
    if !live(model, node) {
        return Ok(None);
    }
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    let [x, w] = node.inputs[..] else {
        return Ok(None);
    };
    let (xf, out) = (
        model.outlet_fact(x)?,
        model.outlet_fact(OutletId::new(id, 0))?,
    );
    let Some(w) = model.outlet_fact(w)?.konst.clone() else {
        return Ok(None);
    };
    if op.q_params.is_some()
        || op.operating_dt != DatumType::F32
        || xf.datum_type != DatumType::F32
        || xf.konst.is_some()
        || w.datum_type() != DatumType::F32
        || w.rank() != 2
        || xf.rank() != out.rank()
        || xf.shape.dims()[..xf.rank() - 1] != out.shape.dims()[..out.rank() - 1]
    {
        return Ok(None);
    }
    let (ins, outs) = op.axes.to_strs();
    let (Some(a), Some(b), Some(o)) = (ins.first(), ins.get(1), outs.first()) else {
        return Ok(None);
    };
    let chars = |s: &str| -> Vec<char> { s.chars().collect() };
    let (a, b, o) = (chars(a), chars(b), chars(o));
    let (Some((&kc, xrows)), Some((&nc, orows))) = (a.split_last(), o.split_last()) else {
        return Ok(None);
    };
    // The row axes that are not of size one, in order, on both sides.
    let long = |axes: &[char], f: &TypedFact| -> Vec<char> {
        axes.iter()
            .zip(f.shape.dims())
            .filter(|(_, d)| **d != 1.to_dim())
            .map(|(c, _)| *c)
            .collect()
    };
    if long(xrows, xf) != long(orows, out) || xrows.contains(&nc) || orows.contains(&kc) {
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
    if xf.shape.last() != Some(&k.to_dim()) || k == 0 || n == 0 {
        return Ok(None);
    }
    Ok(Some(Part {
        x,
        k,
        n,
        w,
        transposed,
    }))
}

/// The only consumer of `from`'s output when it is the binary op `name`
/// with a constant row of `n` (or one value) as its other operand.
fn follower(
    model: &TypedModel,
    from: usize,
    name: &str,
    n: usize,
) -> TractResult<Option<(usize, Vec<f32>)>> {
    let Some(f) = crate::const_operand::follower(model, OutletId::new(from, 0))? else {
        return Ok(None);
    };
    if f.op != name {
        return Ok(None);
    }
    let out = model.outlet_fact(OutletId::new(f.node, 0))?;
    let before = model.outlet_fact(OutletId::new(from, 0))?;
    if out.shape != before.shape {
        return Ok(None);
    }
    Ok(const_row(&f.konst, n)?.map(|row| (f.node, row)))
}

/// A [`RowProduct`] as a node of tract's graph: its inputs are the parts
/// of each row's features (`parts[i]` each), in order.
#[derive(Debug, Clone)]
pub struct RowProductOp {
    layer: RowProduct,
    parts: TVec<usize>,
}

// Bit patterns, so NaN weights compare equal to themselves.
impl PartialEq for RowProductOp {
    fn eq(&self, other: &Self) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (a, b) = (&self.layer, &other.layer);
        (a.k, a.n, a.relu, &self.parts) == (b.k, b.n, b.relu, &other.parts)
            && bits(&a.w) == bits(&b.w)
            && bits(&a.bias) == bits(&b.bias)
    }
}
impl Eq for RowProductOp {}
impl std::hash::Hash for RowProductOp {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let l = &self.layer;
        (l.k, l.n, l.relu, &self.parts).hash(h);
        l.w.iter()
            .chain(l.bias.iter())
            .for_each(|v| v.to_bits().hash(h));
    }
}

impl Op for RowProductOp {
    fn name(&self) -> StaticName {
        "FerryRowProduct".into()
    }
    op_as_typed_op!();
}

impl EvalOp for RowProductOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let Some(first) = inputs.first() else {
            return Err(TractError::msg("row product: no input"));
        };
        let shape = first.shape();
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        if inputs.len() != self.parts.len()
            || inputs
                .iter()
                .zip(&self.parts)
                .any(|(x, &k)| x.shape().split_last() != Some((&k, &shape[..shape.len() - 1])))
        {
            return Err(TractError::msg(format!(
                "row product: inputs {:?} for parts of {:?} features",
                inputs
                    .iter()
                    .map(|x| x.shape().to_vec())
                    .collect::<Vec<_>>(),
                self.parts
            )));
        }
        let single = match &inputs[..] {
            [only] => Some(only.try_as_plain_ram()?),
            _ => None,
        };
        let joined;
        let x: &[f32] = if let Some(plain) = &single {
            plain.as_slice::<f32>()?
        } else {
            let mut rows_kn = vec![0.0f32; rows * self.layer.k];
            let mut at = 0;
            for (x, &k) in inputs.iter().zip(&self.parts) {
                let plain = x.try_as_plain_ram()?;
                for (dst, src) in rows_kn
                    .chunks_exact_mut(self.layer.k)
                    .zip(plain.as_slice::<f32>()?.chunks_exact(k))
                {
                    dst[at..at + k].copy_from_slice(src);
                }
                at += k;
            }
            joined = rows_kn;
            &joined
        };
        let mut out_shape: TVec<usize> = shape.into();
        if let Some(last) = out_shape.last_mut() {
            *last = self.layer.n;
        }
        let mut out = Tensor::zero::<f32>(&out_shape)?;
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            self.layer.apply(x, plain.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for RowProductOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| TractError::msg("row product: no input"))?;
        let mut shape: TVec<TDim> = x.shape.to_tvec();
        if let Some(last) = shape.last_mut() {
            *last = self.layer.n.to_dim();
        }
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::values;
    use tract_onnx::tract_hir::tract_core::ops::math;

    /// `[rows…, k]` times `W` (`k × n`, or `n × k` as ONNX's `transB`
    /// leaves it when `transposed`), the features split in `parts` each
    /// multiplied separately and the products added (a bidirectional
    /// LSTM's halves), then a bias row and a ReLU.
    fn classifier(
        rows: &[usize],
        parts: &[usize],
        n: usize,
        transposed: bool,
    ) -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let mut sum: Option<OutletId> = None;
        for (i, &k) in parts.iter().enumerate() {
            let mut shape = rows.to_vec();
            shape.push(k);
            let x = m.add_source(format!("x{i}"), f32::fact(&shape))?;
            let wshape = if transposed { [n, k] } else { [k, n] };
            let w = m.add_const(
                format!("w{i}"),
                Tensor::from_shape(&wshape, &values(k * n, 3 + i as u32))?,
            )?;
            let spec = match (rows.len(), transposed) {
                (1, false) => "mk,kn->mn",
                (1, true) => "mk,nk->mn",
                (_, false) => "mak,kn->man",
                (_, true) => "mak,nk->mbn",
            };
            let y = m.wire_node(
                format!("mm{i}"),
                EinSum::new(spec.parse()?, DatumType::F32),
                &[x, w],
            )?[0];
            sum = Some(match sum {
                None => y,
                Some(s) => m.wire_node(format!("add{i}"), math::add(), &[s, y])?[0],
            });
        }
        let Some(sum) = sum else {
            return Err(TractError::msg("no parts"));
        };
        let mut bshape = vec![1; rows.len()];
        bshape.push(n);
        let b = m.add_const("b", Tensor::from_shape(&bshape, &values(n, 9))?)?;
        let y = m.wire_node("bias", math::add(), &[sum, b])?[0];
        let zero = m.add_const(
            "zero",
            Tensor::from_shape(&vec![1; rows.len() + 1], &[0.0f32])?,
        )?;
        let y = m.wire_node("relu", math::max(), &[y, zero])?;
        m.select_output_outlets(&y)?;
        Ok(m)
    }

    fn run_both(
        m: &TypedModel,
        ours: &TypedModel,
        rows: &[usize],
        parts: &[usize],
    ) -> TractResult<()> {
        let inputs: TVec<TValue> = parts
            .iter()
            .map(|&k| {
                let mut shape = rows.to_vec();
                shape.push(k);
                crate::test_fixtures::input(&shape)
            })
            .collect::<TractResult<_>>()?;
        let want = m.clone().into_runnable()?.run(inputs.clone())?;
        let got = ours.clone().into_runnable()?.run(inputs)?;
        assert_eq!(got[0].shape(), want[0].shape());
        crate::test_fixtures::same_answers(&want[0], &got[0])
    }

    /// One product and a split one, with their bias and ReLU, over column
    /// counts that leave a partial panel and partial vectors, row counts
    /// that leave a partial group: tract's answers, and one op left.
    #[test]
    fn a_classifier_and_its_split_features_match_tract() -> TractResult<()> {
        for (rows, parts, n, transposed) in [
            (&[5usize][..], &[40usize][..], 70, false),
            (&[16, 1], &[24, 16], 33, true),
            (&[9, 1], &[8, 8], 64, true),
        ] {
            let m = classifier(rows, parts, n, transposed)?;
            let mut ours = m.clone();
            assert_eq!(substitute_from(&mut ours, 0)?, 1, "{rows:?} {parts:?}");
            let names: Vec<String> = ours.nodes().iter().map(|n| n.op.name().into()).collect();
            assert!(
                names
                    .iter()
                    .all(|n| !matches!(n.as_str(), "EinSum" | "Add" | "Max")),
                "{names:?}"
            );
            run_both(&m, &ours, rows, parts)?;
        }
        Ok(())
    }

    /// Below the size at which memory bounds the product, tract's kernel
    /// keeps it.
    #[test]
    fn a_product_that_fits_in_cache_stays_tracts() -> TractResult<()> {
        let mut m = classifier(&[4], &[32], 64, false)?;
        assert_eq!(substitute(&mut m)?, 0);
        Ok(())
    }
}
