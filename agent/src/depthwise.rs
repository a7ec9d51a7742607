//! Depth-wise convolutions (one 2-D filter per channel, MobileNet's and
//! PP-LCNet's building block) on our own kernel.
//!
//! Profiled on the corpus, tract's `DepthWise` was 44–58 % of the mobile
//! classifiers' time: it walks the output one point at a time through its
//! patch scanner. Here every channel's plane is copied once into a padded
//! scratch, split by column phase when the stride is above one, so that
//! each filter tap becomes a contiguous row read. Each output row is then
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
        || spec.data_format != DataFormat::NCHW
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
    Ok(x.datum_type == DatumType::F32
        && x.rank() == 4
        && kernel.datum_type == DatumType::F32
        && bias.datum_type == DatumType::F32
        && kernel.konst.as_ref().is_some_and(|k| k.len() == c * taps)
        && bias
            .konst
            .as_ref()
            .is_some_and(|b| b.len() == c || b.len() == 1))
}

/// tract's depth-wise `Conv` with the same pooling spec, on [`plane`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DepthwiseConv {
    pool_spec: PoolSpec,
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
        let &[n, c, h, w] = x.shape() else {
            bail!("depth-wise conv: NCHW input expected, got {:?}", x.shape());
        };
        let geo = Geometry::new(&self.pool_spec, h, w)?;
        let mut out = Tensor::zero::<f32>(&[n, c, geo.oh, geo.ow])?;
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
            let mut scratch = vec![0.0f32; geo.scratch_len()];
            for (i, out_plane) in chunk.chunks_exact_mut(plane_out).enumerate() {
                let plane_index = first + i;
                let ch = plane_index % c;
                let input = &xs[plane_index * h * w..][..h * w];
                let bias = if bs.len() == 1 { bs[0] } else { bs[ch] };
                geo.fill(&mut scratch, input);
                plane(&geo, &scratch, &ks[ch * taps..][..taps], bias, out_plane);
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

/// One call's shapes: filter, strides, dilations, padding, the output, and
/// the padded scratch every channel is copied into.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pad_top: usize,
    pad_left: usize,
    oh: usize,
    ow: usize,
    /// Rows of the scratch: every row a tap reads, padding included.
    rows: usize,
    /// Values per row of each column phase.
    phase_width: usize,
}

impl Geometry {
    fn new(spec: &PoolSpec, h: usize, w: usize) -> TractResult<Geometry> {
        let padding = spec.computed_padding(&[h, w]);
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let (sh, sw) = (spec.stride(0).max(1), spec.stride(1).max(1));
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
        let last_tap = (kw - 1) * dw;
        let phase_width = (last_tap / sw + ow).max((pw.pad_before + w).div_ceil(sw));
        Ok(Geometry {
            h,
            w,
            kh,
            kw,
            sh,
            sw,
            dh,
            dw,
            pad_top: ph.pad_before,
            pad_left: pw.pad_before,
            oh,
            ow,
            rows,
            phase_width,
        })
    }

    fn scratch_len(&self) -> usize {
        self.sw * self.rows * self.phase_width
    }

    /// Where padded column `j` lives: its phase and its place in the row.
    fn column(&self, j: usize) -> (usize, usize) {
        (j % self.sw, j / self.sw)
    }

    /// Copies one input plane into the scratch. Padding positions are the
    /// same for every plane and are never written, so they stay zero.
    fn fill(&self, scratch: &mut [f32], input: &[f32]) {
        let rows = self.rows.min(self.pad_top + self.h);
        for r in self.pad_top..rows {
            let src = &input[(r - self.pad_top) * self.w..][..self.w];
            if self.sw == 1 {
                let start = r * self.phase_width + self.pad_left;
                let len = self.w.min(self.phase_width.saturating_sub(self.pad_left));
                scratch[start..start + len].copy_from_slice(&src[..len]);
            } else {
                for (ix, &v) in src.iter().enumerate() {
                    let (p, q) = self.column(ix + self.pad_left);
                    if q < self.phase_width {
                        scratch[(p * self.rows + r) * self.phase_width + q] = v;
                    }
                }
            }
        }
    }
}

/// One channel: `out[oy][ox] = bias + Σ w[ky][kx] · padded[oy·sh + ky·dh][ox·sw + kx·dw]`.
fn plane(geo: &Geometry, scratch: &[f32], filter: &[f32], bias: f32, out: &mut [f32]) {
    pulp::Arch::new().dispatch(PlaneKernel {
        geo,
        scratch,
        filter,
        bias,
        out,
    });
}

struct PlaneKernel<'a> {
    geo: &'a Geometry,
    scratch: &'a [f32],
    filter: &'a [f32],
    bias: f32,
    out: &'a mut [f32],
}

impl pulp::WithSimd for PlaneKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let PlaneKernel {
            geo,
            scratch,
            filter,
            bias,
            out,
        } = self;
        let lanes = S::F32_LANES;
        // Each tap's start in the scratch, relative to an output row's first
        // read: its column phase's row block plus its offset in the row.
        let taps: Vec<(usize, f32)> = (0..geo.kh)
            .flat_map(|ky| (0..geo.kw).map(move |kx| (ky, kx)))
            .map(|(ky, kx)| {
                let (p, q) = geo.column(kx * geo.dw);
                let start = (p * geo.rows + ky * geo.dh) * geo.phase_width + q;
                (start, filter[ky * geo.kw + kx])
            })
            .collect();
        for (oy, out_row) in out.chunks_exact_mut(geo.ow).enumerate() {
            let base = oy * geo.sh * geo.phase_width;
            let mut ox = 0;
            while ox + 4 * lanes <= geo.ow {
                vectors::<S, 4>(simd, scratch, &taps, base + ox, bias, &mut out_row[ox..]);
                ox += 4 * lanes;
            }
            while ox + lanes <= geo.ow {
                vectors::<S, 1>(simd, scratch, &taps, base + ox, bias, &mut out_row[ox..]);
                ox += lanes;
            }
            if ox < geo.ow {
                let len = geo.ow - ox;
                let mut acc = simd.splat_f32s(bias);
                for &(start, wt) in &taps {
                    let v = simd.partial_load_f32s(&scratch[start + base + ox..][..len]);
                    acc = simd.mul_add_e_f32s(simd.splat_f32s(wt), v, acc);
                }
                simd.partial_store_f32s(&mut out_row[ox..], acc);
            }
        }
    }
}

/// `U` vectors of one output row, every tap summed in registers.
#[inline(always)]
fn vectors<S: Simd, const U: usize>(
    simd: S,
    scratch: &[f32],
    taps: &[(usize, f32)],
    at: usize,
    bias: f32,
    out: &mut [f32],
) {
    let lanes = S::F32_LANES;
    let mut acc = [simd.splat_f32s(bias); U];
    for &(start, wt) in taps {
        let wv = simd.splat_f32s(wt);
        let (src, _) = S::as_simd_f32s(&scratch[start + at..][..U * lanes]);
        for u in 0..U {
            acc[u] = simd.mul_add_e_f32s(wv, src[u], acc[u]);
        }
    }
    let (dst, _) = S::as_mut_simd_f32s(&mut out[..U * lanes]);
    dst.copy_from_slice(&acc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_hir::tract_core::ops::cnn::PaddingSpec;

    /// The textbook loop, in f64, over an explicitly padded input.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        k: &[f32],
        b: &[f32],
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        (dh, dw): (usize, usize),
        (pt, pl, pb, pr): (usize, usize, usize, usize),
    ) -> (Vec<f32>, usize, usize) {
        let oh = (h + pt + pb - ((kh - 1) * dh + 1)) / sh + 1;
        let ow = (w + pl + pr - ((kw - 1) * dw + 1)) / sw + 1;
        let n = x.len() / (c * h * w);
        let mut out = vec![0.0f32; n * c * oh * ow];
        for img in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = f64::from(b[ch]);
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky * dh) as isize - pt as isize;
                                let ix = (ox * sw + kx * dw) as isize - pl as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    let xi = ((img * c + ch) * h + iy as usize) * w + ix as usize;
                                    s += f64::from(x[xi]) * f64::from(k[(ch * kh + ky) * kw + kx]);
                                }
                            }
                        }
                        out[((img * c + ch) * oh + oy) * ow + ox] = s as f32;
                    }
                }
            }
        }
        (out, oh, ow)
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
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
        let cases: [Case; 7] = [
            ((3, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
            ((4, 40, 37), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
            ((2, 33, 70), (5, 5), (1, 1), (1, 1), (2, 2, 2, 2)),
            ((2, 16, 47), (5, 5), (2, 2), (1, 1), (2, 2, 2, 2)),
            ((3, 12, 19), (3, 3), (1, 2), (2, 1), (0, 1, 2, 0)),
            ((2, 5, 80), (1, 7), (1, 3), (1, 1), (0, 3, 0, 3)),
            ((5, 9, 9), (3, 3), (1, 1), (1, 1), (0, 0, 0, 0)),
        ];
        for (i, &((c, h, w), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr))) in
            cases.iter().enumerate()
        {
            let n = 2;
            let x = values(n * c * h * w, i as u32);
            let k = values(c * kh * kw, 100 + i as u32);
            let b = values(c, 200 + i as u32);
            let (want, oh, ow) = reference(
                &x,
                (c, h, w),
                &k,
                &b,
                (kh, kw),
                (sh, sw),
                (dh, dw),
                (pt, pl, pb, pr),
            );
            let spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![kh, kw],
                padding: PaddingSpec::Explicit(tvec![pt, pl], tvec![pb, pr]),
                dilations: Some(tvec![dh, dw]),
                strides: Some(tvec![sh, sw]),
                input_channels: c,
                output_channels: c,
            };
            let mut model = TypedModel::default();
            let src = model.add_source("x", f32::fact([n, c, h, w]))?;
            let kernel = model.add_const("k", tensor1(&k).into_shape(&[c, 1, kh, kw])?)?;
            let bias = model.add_const("b", tensor1(&b))?;
            let conv = Conv::new(spec, KernelFormat::OIHW, c, None);
            let y = model.wire_node("dw", conv, &[src, kernel, bias])?;
            model.select_output_outlets(&y)?;
            let input = tensor1(&x).into_shape(&[n, c, h, w])?;
            let tract_plan = model.clone().into_optimized()?.into_runnable()?;
            assert_eq!(substitute(&mut model)?, 1, "case {i}");
            assert_eq!(
                model.output_fact(0)?.shape.as_concrete(),
                Some(&[n, c, oh, ow][..])
            );
            let ours = model.into_optimized()?.into_runnable()?;
            for plan in [ours, tract_plan] {
                let got = plan.run(tvec![input.clone().into_tvalue()])?.remove(0);
                assert_eq!(got.shape(), &[n, c, oh, ow], "case {i}");
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
