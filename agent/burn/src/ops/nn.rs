//! Neural-network operators: matrix products, convolutions, pooling,
//! normalisation, resizing, reductions.

use super::{pads2, Inputs, Op, Param};
use crate::value::{at, axis, padded, Value, RANK};
use burn::tensor::activation;
use burn::tensor::module;
use burn::tensor::ops::{
    AvgPoolOptions, ConvOptions, ConvTransposeOptions, InterpolateMode, InterpolateOptions,
    MaxPoolOptions,
};
use burn::tensor::{Device, Tensor};
use onnx_ir::node::avg_pool2d::AvgPool2dConfig;
use onnx_ir::node::max_pool2d::MaxPool2dConfig;
use onnx_ir::node::reduce::{ReduceAxes, ReduceConfig};
use onnx_ir::node::resize::{
    CoordinateTransformMode, NearestMode, ResizeConfig, ResizeMode, ResizeScales, ResizeSizes,
};

/// A float tensor of logical rank 4 as burn's `Tensor<4>`.
fn as4(x: Value, device: &Device, what: &str) -> Result<Tensor<4>, String> {
    let d = x.dims();
    let [n, c, h, w] = d[..] else {
        return Err(format!(
            "{what} needs a rank-4 (N, C, H, W) input, got {d:?}"
        ));
    };
    Ok(x.float(device)?.0.reshape([n, c, h, w]))
}

fn from4(y: Tensor<4>) -> Result<Value, String> {
    let p = padded(&y.dims())?;
    Ok(Value::Float(y.reshape(p), 4))
}

fn as1(x: Value, device: &Device) -> Result<Tensor<1>, String> {
    let n: usize = x.dims().iter().product();
    Ok(x.float(device)?.0.reshape([n]))
}

#[derive(Clone, Debug)]
pub enum Pool {
    Max(MaxPoolOptions<2>),
    Avg(AvgPoolOptions<2>),
}

impl Pool {
    pub fn max2d(c: &MaxPool2dConfig) -> Result<Self, String> {
        Ok(Pool::Max(
            MaxPoolOptions::new(c.kernel_size)
                .with_stride(c.strides)
                .with_padding_pairs(pads2(&c.padding))
                .with_dilation(c.dilation)
                .with_ceil_mode(c.ceil_mode),
        ))
    }

    pub fn avg2d(c: &AvgPool2dConfig) -> Result<Self, String> {
        if c.dilation != [1, 1] {
            return Err("AveragePool with dilations is not supported".into());
        }
        Ok(Pool::Avg(AvgPoolOptions {
            kernel_size: c.kernel_size,
            stride: c.strides,
            padding: pads2(&c.padding),
            count_include_pad: c.count_include_pad,
            ceil_mode: c.ceil_mode,
        }))
    }

    pub fn run(&self, x: Value, device: &Device) -> Result<Value, String> {
        let x = as4(x, device, "pooling")?;
        from4(match self {
            Pool::Max(o) => module::max_pool2d(x, o.clone()),
            Pool::Avg(o) => module::avg_pool2d(x, o.clone()),
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Reduce {
    Mean,
    Sum,
    Max,
}

pub fn reduce(kind: Reduce, c: &ReduceConfig) -> Op {
    Op::Reduce {
        kind,
        axes: match &c.axes {
            ReduceAxes::Static(a) => Param::Static(a.iter().map(|x| *x as i64).collect()),
            ReduceAxes::Runtime(r) => Param::Input(r.input_index),
        },
        keepdims: c.keepdims,
        noop_empty: c.noop_with_empty_axes,
    }
}

pub fn reduce_run(
    kind: Reduce,
    x: Value,
    axes: &[i64],
    keepdims: bool,
    noop_empty: bool,
    device: &Device,
) -> Result<Value, String> {
    let r = x.rank();
    if axes.is_empty() && noop_empty {
        return Ok(x);
    }
    let axes: Vec<usize> = if axes.is_empty() {
        (0..r).collect()
    } else {
        axes.iter().map(|a| axis(*a, r)).collect::<Result<_, _>>()?
    };
    let (mut t, _) = x.float(device)?;
    for a in &axes {
        let d = at(r, *a);
        t = match kind {
            Reduce::Mean => t.mean_dim(d),
            Reduce::Sum => t.sum_dim(d),
            Reduce::Max => t.max_dim(d),
        };
    }
    let kept = Value::Float(t, r);
    if keepdims {
        return Ok(kept);
    }
    let d = kept.dims();
    let out: Vec<usize> = (0..r).filter(|i| !axes.contains(i)).map(|i| d[i]).collect();
    kept.reshaped(&out)
}

pub fn argmax(x: Value, axis_: usize, keepdims: bool, device: &Device) -> Result<Value, String> {
    let r = x.rank();
    let (t, _) = x.float(device)?;
    let kept = Value::Int(t.argmax(at(r, axis_)), r);
    if keepdims {
        return Ok(kept);
    }
    let d = kept.dims();
    let out: Vec<usize> = (0..r).filter(|i| *i != axis_).map(|i| d[i]).collect();
    kept.reshaped(&out)
}

pub fn softmax(x: Value, axis_: usize, device: &Device) -> Result<Value, String> {
    let (t, r) = x.float(device)?;
    Ok(Value::Float(activation::softmax(t, at(r, axis_)), r))
}

/// `x · W (+ b)`, with W stored `[out, in]` when `transposed`.
pub fn linear(
    x: Value,
    w: Value,
    bias: Option<Value>,
    transposed: bool,
    device: &Device,
) -> Result<Value, String> {
    let (xt, r) = x.float(device)?;
    let (mut wt, _) = w.float(device)?;
    if transposed {
        wt = wt.swap_dims(RANK - 2, RANK - 1);
    }
    let mut y = xt.matmul(wt);
    if let Some(b) = bias {
        y = y.add(b.float(device)?.0);
    }
    Ok(Value::Float(y, r.max(1)))
}

/// ONNX MatMul (numpy semantics: a rank-1 side is a row or a column that
/// is dropped from the result).
pub fn matmul(a: Value, b: Value, device: &Device) -> Result<Value, String> {
    let (ra, rb) = (a.rank(), b.rank());
    let a = if ra == 1 {
        let k = a.dims()[0];
        a.reshaped(&[1, k])?
    } else {
        a
    };
    let b = if rb == 1 {
        let k = b.dims()[0];
        b.reshaped(&[k, 1])?
    } else {
        b
    };
    let r = a.rank().max(b.rank());
    let y = Value::Float(a.float(device)?.0.matmul(b.float(device)?.0), r);
    let mut d = y.dims();
    if rb == 1 {
        d.pop();
    }
    if ra == 1 {
        let last = d.pop();
        d.pop();
        d.extend(last);
    }
    y.reshaped(&d)
}

pub fn gemm(
    a: Value,
    b: Value,
    c: Option<Value>,
    (alpha, beta, trans_a, trans_b): (f32, f32, bool, bool),
    device: &Device,
) -> Result<Value, String> {
    let (mut at_, _) = a.float(device)?;
    let (mut bt, _) = b.float(device)?;
    if trans_a {
        at_ = at_.swap_dims(RANK - 2, RANK - 1);
    }
    if trans_b {
        bt = bt.swap_dims(RANK - 2, RANK - 1);
    }
    let mut y = at_.matmul(bt);
    if alpha != 1.0 {
        y = y.mul_scalar(alpha);
    }
    if let Some(c) = c {
        let (ct, _) = c.float(device)?;
        y = y.add(if beta != 1.0 { ct.mul_scalar(beta) } else { ct });
    }
    Ok(Value::Float(y, 2))
}

pub fn conv2d(
    x: Value,
    w: Value,
    bias: Option<Value>,
    o: ConvOptions<2>,
    device: &Device,
) -> Result<Value, String> {
    let x = as4(x, device, "Conv")?;
    let w = as4(w, device, "Conv weights")?;
    let b = bias.map(|b| as1(b, device)).transpose()?;
    from4(module::conv2d(x, w, b, o))
}

pub fn conv1d(
    x: Value,
    w: Value,
    bias: Option<Value>,
    o: ConvOptions<1>,
    device: &Device,
) -> Result<Value, String> {
    let as3 = |v: Value, what: &str| -> Result<Tensor<3>, String> {
        let d = v.dims();
        let [n, c, l] = d[..] else {
            return Err(format!("{what} needs rank 3, got {d:?}"));
        };
        Ok(v.float(device)?.0.reshape([n, c, l]))
    };
    let x = as3(x, "Conv (1-D)")?;
    let w = as3(w, "Conv (1-D) weights")?;
    let b = bias.map(|b| as1(b, device)).transpose()?;
    let y = module::conv1d(x, w, b, o);
    let p = padded(&y.dims())?;
    Ok(Value::Float(y.reshape(p), 3))
}

pub fn conv_transpose2d(
    x: Value,
    w: Value,
    bias: Option<Value>,
    o: ConvTransposeOptions<2>,
    device: &Device,
) -> Result<Value, String> {
    let x = as4(x, device, "ConvTranspose")?;
    let w = as4(w, device, "ConvTranspose weights")?;
    let b = bias.map(|b| as1(b, device)).transpose()?;
    from4(module::conv_transpose2d(x, w, b, o))
}

/// A [C] vector as [C, 1, …, 1] for a rank-`r` input, so it broadcasts
/// over everything after axis 1.
fn per_channel(v: Value, r: usize, device: &Device) -> Result<Tensor<RANK>, String> {
    if r < 2 {
        return Err("a per-channel operand needs a rank ≥ 2 input".into());
    }
    let c: usize = v.dims().iter().product();
    let mut d = vec![c];
    d.resize(r - 1, 1);
    Ok(v.reshaped(&d)?.float(device)?.0)
}

/// Inference batch normalisation over axis 1, its parameters read at run
/// time (constant ones are folded at load into [`channel_affine`]).
pub fn batch_norm(
    x: Value,
    [scale, bias, mean, var]: [Value; 4],
    epsilon: f64,
    device: &Device,
) -> Result<Value, String> {
    let r = x.rank();
    let inv = per_channel(var, r, device)?
        .add_scalar(epsilon)
        .sqrt()
        .recip();
    let k = per_channel(scale, r, device)?.mul(inv);
    let shift = per_channel(bias, r, device)?.sub(per_channel(mean, r, device)?.mul(k.clone()));
    let (xt, _) = x.float(device)?;
    Ok(Value::Float(xt.mul(k).add(shift), r))
}

/// `x · k + shift`, `k` and `shift` of shape [C] broadcast over axis 1.
pub fn channel_affine(x: Value, k: Value, shift: Value, device: &Device) -> Result<Value, String> {
    let r = x.rank();
    let (k, shift) = (per_channel(k, r, device)?, per_channel(shift, r, device)?);
    let (xt, _) = x.float(device)?;
    Ok(Value::Float(xt.mul(k).add(shift), r))
}

pub fn global_average_pool(x: Value, device: &Device) -> Result<Value, String> {
    let (mut t, r) = x.float(device)?;
    for a in 2..r {
        t = t.mean_dim(at(r, a));
    }
    Ok(Value::Float(t, r))
}

/// Resize on (N, C, H, W), in the modes burn's interpolation computes the
/// way ONNX defines them.
#[derive(Clone, Debug)]
pub struct ResizeOp {
    mode: InterpolateMode,
    align_corners: bool,
    scales: Option<Param<Vec<f64>>>,
    sizes: Option<Param<Vec<i64>>>,
}

impl ResizeOp {
    pub fn new(c: &ResizeConfig) -> Result<Self, String> {
        use CoordinateTransformMode as C;
        let (mode, align_corners) = match (&c.mode, &c.coordinate_transformation_mode) {
            (ResizeMode::Nearest, C::Asymmetric) if matches!(c.nearest_mode, NearestMode::Floor) => {
                (InterpolateMode::Nearest, false)
            }
            (ResizeMode::Linear, C::HalfPixel | C::PytorchHalfPixel) => {
                (InterpolateMode::Bilinear, false)
            }
            (ResizeMode::Linear, C::AlignCorners) => (InterpolateMode::Bilinear, true),
            (m, t) => {
                return Err(format!(
                    "Resize mode {m:?} with coordinate_transformation_mode {t:?} (nearest_mode {:?}) is not supported; supported: nearest/asymmetric/floor, linear/half_pixel, linear/pytorch_half_pixel, linear/align_corners",
                    c.nearest_mode
                ))
            }
        };
        Ok(ResizeOp {
            mode,
            align_corners,
            scales: c.scales.as_ref().map(|s| match s {
                ResizeScales::Static(v) => Param::Static(v.iter().map(|x| *x as f64).collect()),
                ResizeScales::Runtime(r) => Param::Input(r.input_index),
            }),
            sizes: c.sizes.as_ref().map(|s| match s {
                ResizeSizes::Static(v) => Param::Static(v.iter().map(|x| *x as i64).collect()),
                ResizeSizes::Runtime(r) => Param::Input(r.input_index),
            }),
        })
    }

    pub fn run(&self, x: Value, ins: &mut Inputs, device: &Device) -> Result<Value, String> {
        let d = x.dims();
        if d.len() != 4 {
            return Err(format!("Resize supports rank-4 inputs, got {d:?}"));
        }
        let out: [usize; 2] = if let Some(sizes) = &self.sizes {
            let s = sizes.resolve_ints(ins)?;
            match s[..] {
                [n, c, h, w] if n as usize == d[0] && c as usize == d[1] => {
                    [h as usize, w as usize]
                }
                [h, w] => [h as usize, w as usize],
                _ => return Err(format!("Resize sizes {s:?} (only H and W may change)")),
            }
        } else if let Some(scales) = &self.scales {
            let s = match scales {
                Param::Static(v) => v.clone(),
                Param::Input(i) => {
                    let v = ins.take(*i)?;
                    let (t, _) = v.float(device)?;
                    t.into_data()
                        .convert::<f32>()
                        .try_to_vec::<f32>()
                        .map_err(|e| format!("{e:?}"))?
                        .into_iter()
                        .map(|x| x as f64)
                        .collect()
                }
            };
            match s[..] {
                [1.0, 1.0, sh, sw] | [sh, sw] => [
                    (d[2] as f64 * sh).floor() as usize,
                    (d[3] as f64 * sw).floor() as usize,
                ],
                _ => return Err(format!("Resize scales {s:?} (only H and W may change)")),
            }
        } else {
            return Err("Resize without scales or sizes".into());
        };
        let x = as4(x, device, "Resize")?;
        let opts = InterpolateOptions {
            mode: self.mode.clone(),
            align_corners: self.align_corners,
            output_size: Some(out),
            scale_factor: None,
        };
        from4(module::interpolate(x, opts))
    }
}
