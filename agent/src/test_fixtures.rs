//! The small ONNX fixtures of `tests/fixtures/make_shape_fixtures.py`,
//! loaded as the graph rewrites' unit tests need them.

use tract_onnx::prelude::*;

/// A fixture of `tests/fixtures/make_shape_fixtures.py` typed for
/// `shape`, decluttered.
pub(crate) fn fixture(name: &str, shape: &[usize]) -> TractResult<TypedModel> {
    let path = format!(
        "{}/../tests/fixtures/models/{name}.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    crate::front_end::onnx()
        .model_for_path(path)?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_typed()?
        .into_decluttered()
}

pub(crate) fn input(shape: &[usize]) -> TractResult<TValue> {
    let len: usize = shape.iter().product();
    let v: Vec<f32> = (0..len)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Ok(Tensor::from_shape(shape, &v)?.into_tvalue())
}

/// Fails unless `got` equals `want` within tract's `Approximate` tolerance:
/// a rewrite must answer as the plan it replaced.
pub(crate) fn same_answers(want: &TValue, got: &TValue) -> TractResult<()> {
    want.close_enough(
        got,
        tract_onnx::tract_hir::tract_core::internal::Approximation::Approximate,
    )
}

/// Pseudo-random values in [-1, 1), the same for the same seed.
pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A 2-D convolution's shapes, for [`textbook_conv`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    /// Input channels, height, width.
    pub chw: (usize, usize, usize),
    /// Output channels.
    pub o: usize,
    pub group: usize,
    pub kernel: (usize, usize),
    pub strides: (usize, usize),
    pub dilations: (usize, usize),
    /// Top, left, bottom, right.
    pub pads: (usize, usize, usize, usize),
}

/// The textbook loop, in f64, over an explicitly padded NCHW input:
/// filters `[o, c / group, kh, kw]`, one bias per output channel or one
/// for all. Returns the output and its height and width.
pub(crate) fn textbook_conv(
    x: &[f32],
    k: &[f32],
    b: &[f32],
    shape: &ConvShape,
) -> (Vec<f32>, usize, usize) {
    let ((c, h, w), o, group) = (shape.chw, shape.o, shape.group);
    let ((kh, kw), (sh, sw), (dh, dw)) = (shape.kernel, shape.strides, shape.dilations);
    let (pt, pl, pb, pr) = shape.pads;
    let oh = (h + pt + pb - ((kh - 1) * dh + 1)) / sh + 1;
    let ow = (w + pl + pr - ((kw - 1) * dw + 1)) / sw + 1;
    let (n, cg, og) = (x.len() / (c * h * w), c / group, o / group);
    let mut out = vec![0.0f32; n * o * oh * ow];
    for img in 0..n {
        for oc in 0..o {
            let first = oc / og * cg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = f64::from(b[if b.len() == 1 { 0 } else { oc }]);
                    for ic in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky * dh) as isize - pt as isize;
                                let ix = (ox * sw + kx * dw) as isize - pl as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                    continue;
                                }
                                let xi =
                                    ((img * c + first + ic) * h + iy as usize) * w + ix as usize;
                                let ki = ((oc * cg + ic) * kh + ky) * kw + kx;
                                s += f64::from(x[xi]) * f64::from(k[ki]);
                            }
                        }
                    }
                    out[((img * o + oc) * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
    }
    (out, oh, ow)
}
