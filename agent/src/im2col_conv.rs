//! Single-group convolutions with a filter wider than one value (YOLO's
//! and the OCR models' 3×3 layers) as matrix products over blocks of
//! output rows: each block's patches are copied out once (im2col) into a
//! buffer sized to stay in cache, then multiplied by the filters on
//! `matrixmultiply`, bias and activation applied while the block is hot.
//!
//! Profiled on `nudenet-320n` (YOLOv8n) on an AVX-512 core, tract runs
//! these through its lazy im2col, which gathers patches inside its product
//! (64 × 64 × 3×3 over 40×40: 1.3–1.5 ms, onnxruntime 0.67 ms), plus a
//! `Pad` pass before each padded layer. `matrixmultiply` runs the bare
//! product at 130–140 GFLOPS; with the patches copied and the output
//! finished, a layer here is 0.7× tract's time on few channels over large
//! planes (16 × 16 over 80×80), 0.93–1× on the others it takes, and has no
//! `Pad` pass: padding is the zeros of the copy. Strided layers, small
//! planes and shallow patches ran as fast or faster on tract's and stay
//! there.
//!
//! [`substitute`] swaps tract's `Conv` for [`Im2colConv`] after
//! decluttering (Conv + BatchNorm are folded by then); `crate::channel_affine`
//! then fuses a ReLU or HardSwish after it. Only float32 NCHW or CHW
//! convolutions with one group and constant weights qualify; the rest stay
//! with tract. Spatial sizes may be symbolic: the geometry is worked out per
//! call from the input's shape, with tract's own padding rules.

use crate::depthwise::Activation;
use crate::pointwise::activate;
use tract_linalg::multithread::par_chunks_mut;
use tract_onnx::prelude::tract_ndarray::linalg::general_mat_mul;
use tract_onnx::prelude::tract_ndarray::{ArrayView2, ArrayViewMut2, Axis as ArrayAxis};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, bail, ensure, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName,
    TypedOp,
};
use tract_onnx::tract_hir::tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};
use tract_onnx::tract_hir::tract_core::ops::nn::DataFormat;

/// Values of patches per block: 512 KiB, a quarter of this machine's L2,
/// so the block is still cached when the product packs it (1 and 2 MiB
/// blocks measured 5–15 % slower on `nudenet-320n`, 128 and 256 KiB the
/// same).
const BLOCK_VALUES: usize = 128 * 1024;

/// Output planes smaller than this (in values) stay with tract: on a Zen 4
/// core, `nudenet-320n`'s 64-filter layers over 20×20 ran 0.40 ms here
/// against tract's 0.35, and `ddddocr-common`'s 8×16 planes the same,
/// while 16×32 (`ddddocr-common`, 192 filters: 1.0 against 1.16 ms) and
/// 24×32 (`ocr-det-ppocrv4`, 24 filters: 0.60 against 0.77 ms) ran faster.
const MIN_PLANE: usize = 500;

/// Patches shallower than this (channels × taps) stay with tract.
const MIN_DEPTH: usize = 32;

/// Output positions per block at least, whatever the depth: the filters
/// are packed again for every block, and a narrow product runs slowly.
const MIN_WIDTH: usize = 256;

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
                Im2colConv {
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

/// Whether [`Im2colConv`] computes `conv`.
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

/// Whether [`Im2colConv`] beats tract's own on `conv`: not on strided
/// layers, small planes or shallow patches (an RGB input's first layer,
/// which tract runs directly), measured per layer on `nudenet-320n`. A
/// plane of symbolic size is taken: the images it serves are large.
fn faster(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<bool> {
    let spec = &conv.pool_spec;
    let x = model.outlet_fact(node.inputs[0])?;
    let strided = (0..2).any(|axis| spec.stride(axis) > 1);
    let plane: TDim = spec.output_shape(&x.shape)?.hw_dims().iter().product();
    let small = plane.as_i64().is_some_and(|p| (p as usize) < MIN_PLANE);
    let depth = conv.input_channels() * spec.kernel_shape.iter().product::<usize>();
    Ok(!strided && !small && depth >= MIN_DEPTH)
}

/// tract's single-group `Conv` with the same pooling spec, as blocked
/// im2col products, followed by `activation`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Im2colConv {
    pool_spec: PoolSpec,
    pub(crate) activation: Activation,
}

impl Op for Im2colConv {
    fn name(&self) -> StaticName {
        "FerryIm2colConv".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Im2colConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [x, kernel, bias] = inputs.as_slice() else {
            bail!("im2col conv: three inputs expected, got {}", inputs.len());
        };
        let (n, c, h, w, batched) = match *x.shape() {
            [n, c, h, w] => (n, c, h, w, true),
            [c, h, w] => (1, c, h, w, false),
            _ => bail!(
                "im2col conv: NCHW or CHW input expected, got {:?}",
                x.shape()
            ),
        };
        let geo = Geometry::new(&self.pool_spec, c, h, w)?;
        let o = kernel.shape().first().copied().unwrap_or(0);
        let k = geo.depth();
        ensure!(
            kernel.len() == o * k && o > 0,
            "im2col conv: filters {:?} for {c} channels",
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
        ensure!(xs.len() == n * c * h * w, "im2col conv: input size");
        let ks = kernel.try_as_plain_ram()?;
        let ks = ArrayView2::from_shape((o, k), ks.as_slice::<f32>()?)?;
        let bs = bias.try_as_plain_ram()?;
        let bs = bs.as_slice::<f32>()?;
        ensure!(bs.len() == o || bs.len() == 1, "im2col conv: bias size");
        let product = Product {
            geo: &geo,
            filters: ks,
            bias: bs,
            activation: self.activation,
        };
        let work = n * o * k * plane;
        let mut ys = out.try_as_plain_ram_mut()?;
        // Output planes, image after image, are independent; tract's
        // executor splits them over the kernel threads when there are any.
        // Each thread copies the patches it needs itself.
        par_chunks_mut(ys.as_slice_mut::<f32>()?, plane, work, |first, chunk| {
            let mut scratch = Scratch::new(&geo, o);
            let mut at = first;
            let mut rest = chunk;
            while !rest.is_empty() {
                let (image, channel) = (at / o, at % o);
                let count = (o - channel).min(rest.len() / plane);
                let (now, later) = rest.split_at_mut(count * plane);
                let input = &xs[image * c * h * w..][..c * h * w];
                product.channels(input, channel, now, &mut scratch)?;
                rest = later;
                at += count;
            }
            Ok(())
        })?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Im2colConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| TractError::msg("im2col conv: no input"))?;
        let shape = self.pool_spec.output_shape(&x.shape)?;
        Ok(tvec!(f32::fact(shape.shape)))
    }
    as_op!();
}

/// One call's shapes: input, filter, strides, dilations, padding, output,
/// and the zero-padded copy of an image that patches are cut from.
///
/// The copy holds each channel's plane split by column phase (one phase
/// with a column stride of one), as `crate::depthwise` does, so that any
/// filter column's reads for an output row are `ow` consecutive values of
/// one phase. With both strides one, a block's rows are also consecutive:
/// each patch row of a block is then a single slice of the copy, its
/// rows `phase_width` wide, the last `phase_width - ow` values of each
/// computed and dropped.
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
    /// Values per row of each column phase: `ow` plus the filter's reach.
    phase_width: usize,
    /// Rows of the padded copy: every row a filter row reads.
    rows: usize,
}

impl Geometry {
    fn new(spec: &PoolSpec, c: usize, h: usize, w: usize) -> TractResult<Geometry> {
        let padding = spec.computed_padding(&[h, w]);
        let [ph, pw] = padding.as_slice() else {
            bail!("im2col conv: two spatial axes expected");
        };
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        ensure!(kh > 0 && kw > 0, "im2col conv: {kh}×{kw} filter");
        let (sh, sw) = (spec.stride(0).max(1), spec.stride(1).max(1));
        let (dh, dw) = (spec.dilation(0).max(1), spec.dilation(1).max(1));
        let (oh, ow) = (ph.convoluted, pw.convoluted);
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
            pad_top: ph.pad_before,
            pad_left: pw.pad_before,
            oh,
            ow,
            phase_width: ow + (kw - 1) * dw / sw,
            rows: if oh == 0 {
                0
            } else {
                (oh - 1) * sh + (kh - 1) * dh + 1
            },
        })
    }

    /// Values per patch: the product's inner dimension.
    fn depth(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Whether a block's patch rows are single slices of the copy.
    fn contiguous(&self) -> bool {
        self.sh == 1 && self.sw == 1
    }

    /// Values a block's output row takes in the patches.
    fn row_width(&self) -> usize {
        if self.contiguous() {
            self.phase_width
        } else {
            self.ow
        }
    }

    /// Output rows per block: enough for a product wide enough to run at
    /// speed ([`MIN_WIDTH`]), else as many as fit [`BLOCK_VALUES`].
    fn block_rows(&self) -> usize {
        let width = self.row_width().max(1);
        let fits = BLOCK_VALUES / (self.depth() * width).max(1);
        fits.max(MIN_WIDTH.div_ceil(width)).clamp(1, self.oh.max(1))
    }

    /// Values per channel of the padded copy, all its phases.
    fn channel_values(&self) -> usize {
        self.sw * self.rows * self.phase_width
    }

    /// Values of the padded copy of one image. The `(kw - 1)·dw` beyond
    /// its planes are read by the last patches' dropped columns.
    fn padded_values(&self) -> usize {
        self.c * self.channel_values() + (self.kw - 1) * self.dw
    }

    /// Copies one image into its padded copy. Padding positions are the
    /// same for every image and never written, so they stay zero.
    fn pad(&self, image: &[f32], padded: &mut [f32]) {
        let rows = self.h.min(self.rows.saturating_sub(self.pad_top));
        for (plane, dst) in image
            .chunks_exact(self.h * self.w)
            .zip(padded.chunks_exact_mut(self.channel_values()))
        {
            for iy in 0..rows {
                let src = &plane[iy * self.w..][..self.w];
                for p in 0..self.sw {
                    // Input column ix is padded column ix + pad_left: phase
                    // (ix + pad_left) % sw, place (ix + pad_left) / sw.
                    let ix = (p + self.sw - self.pad_left % self.sw) % self.sw;
                    if ix >= self.w {
                        continue;
                    }
                    let q = (ix + self.pad_left) / self.sw;
                    if q >= self.phase_width {
                        continue;
                    }
                    let row = (p * self.rows + iy + self.pad_top) * self.phase_width;
                    let dst = &mut dst[row..row + self.phase_width];
                    if self.sw == 1 {
                        let n = self.w.min(self.phase_width.saturating_sub(q));
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

    /// The patches of output rows `y0..y1` cut from the padded copy, one
    /// row per (channel, filter row, filter column).
    fn patches(&self, padded: &[f32], y0: usize, y1: usize, patches: &mut [f32]) {
        let width = (y1 - y0) * self.row_width();
        let mut rows = patches.chunks_exact_mut(width);
        for ci in 0..self.c {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let Some(dst) = rows.next() else {
                        return;
                    };
                    let (p, off) = (kx * self.dw % self.sw, kx * self.dw / self.sw);
                    let phase = ci * self.channel_values() + p * self.rows * self.phase_width;
                    let base = phase + off + ky * self.dh * self.phase_width;
                    if self.contiguous() {
                        let start = base + y0 * self.phase_width;
                        dst.copy_from_slice(&padded[start..start + width]);
                        continue;
                    }
                    for (j, seg) in dst.chunks_exact_mut(self.ow).enumerate() {
                        let at = base + (y0 + j) * self.sh * self.phase_width;
                        seg.copy_from_slice(&padded[at..at + self.ow]);
                    }
                }
            }
        }
    }
}

/// The filters, bias and activation of one call.
struct Product<'a> {
    geo: &'a Geometry,
    /// `[o, c·kh·kw]`, OIHW as stored.
    filters: ArrayView2<'a, f32>,
    bias: &'a [f32],
    activation: Activation,
}

impl Product<'_> {
    /// Output channels `first..` (as many as `out` holds planes) of one
    /// image, block of rows after block of rows.
    fn channels(
        &self,
        image: &[f32],
        first: usize,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> TractResult<()> {
        let geo = self.geo;
        let (depth, plane) = (geo.depth(), geo.oh * geo.ow);
        let count = out.len() / plane;
        let filters = self
            .filters
            .slice_axis(ArrayAxis(0), (first..first + count).into());
        geo.pad(image, &mut scratch.padded);
        let (step, row_width) = (geo.block_rows(), geo.row_width());
        for y0 in (0..geo.oh).step_by(step) {
            let y1 = (y0 + step).min(geo.oh);
            let width = (y1 - y0) * row_width;
            let block = &mut scratch.patches[..depth * width];
            geo.patches(&scratch.padded, y0, y1, block);
            let block = ArrayView2::from_shape((depth, width), &*block)?;
            let product = &mut scratch.product[..count * width];
            let mut y = ArrayViewMut2::from_shape((count, width), &mut *product)?;
            general_mat_mul(1.0, &filters, &block, 0.0, &mut y);
            // Into the output with the bias and activation, while the
            // block is in cache; a padded block's dropped columns stay.
            for (r, (src, dst)) in product
                .chunks_exact(width)
                .zip(out.chunks_exact_mut(plane))
                .enumerate()
            {
                let b = self.bias[if self.bias.len() == 1 { 0 } else { first + r }];
                let dst = &mut dst[y0 * geo.ow..y1 * geo.ow];
                for (d, s) in dst
                    .chunks_exact_mut(geo.ow)
                    .zip(src.chunks_exact(row_width))
                {
                    d.iter_mut().zip(s).for_each(|(d, s)| *d = s + b);
                }
                activate(self.activation, dst);
            }
        }
        Ok(())
    }
}

/// Per-thread buffers, reused across images and blocks.
struct Scratch {
    /// One image's padded copy.
    padded: Vec<f32>,
    /// A block's patches: `depth` rows of `block_rows · row_width`.
    patches: Vec<f32>,
    /// A block's product: up to `o` rows of `block_rows · row_width`.
    product: Vec<f32>,
}

impl Scratch {
    fn new(geo: &Geometry, o: usize) -> Scratch {
        let width = geo.block_rows() * geo.row_width();
        Scratch {
            padded: vec![0.0; geo.padded_values()],
            patches: vec![0.0; geo.depth() * width],
            product: vec![0.0; o * width],
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
        let cases: [Case; 10] = [
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
            // The same with gathered patches and blocks of rows.
            ((48, 30, 99), 5, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
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
            assert_eq!(faster, usize::from(i == 2 || i == 7), "case {i}");
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
