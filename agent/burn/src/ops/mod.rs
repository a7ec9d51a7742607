//! The operators: a closed enum built from onnx-ir's typed nodes at load,
//! and their evaluation on burn tensors at run time.

mod elementwise;
mod layout;
mod nn;

use crate::value::Value;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::Device;
use onnx_ir::node::padding::{PaddingConfig1d, PaddingConfig2d};
use onnx_ir::Node;

pub use elementwise::{Binary, Unary};
pub use layout::{Param, SliceParams};
pub use nn::{Pool, Reduce, ResizeOp};

/// One lowered operator with its static configuration. Inputs given at
/// run time (a shape, slice bounds) are [`Param::Input`]s: the index of the
/// node input to read them from.
#[derive(Clone, Debug)]
pub enum Op {
    Identity,
    Unary(Unary),
    Binary(Binary),
    Clip {
        min: Param<f64>,
        max: Param<f64>,
    },
    Softmax {
        axis: usize,
    },
    /// `x · W (+ b)`; `transposed` when W is stored `[out, in]` (Gemm).
    Linear {
        transposed: bool,
    },
    MatMul,
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    Conv1d(ConvOptions<1>),
    Conv2d(ConvOptions<2>),
    ConvTranspose2d(ConvTransposeOptions<2>),
    BatchNorm {
        epsilon: f64,
    },
    /// `x · k + shift` with `k` and `shift` per channel (axis 1): a
    /// BatchNormalization folded at load.
    ChannelAffine,
    Pool(Pool),
    GlobalAveragePool,
    Resize(ResizeOp),
    Reduce {
        kind: Reduce,
        axes: Param<Vec<i64>>,
        keepdims: bool,
        noop_empty: bool,
    },
    ArgMax {
        axis: usize,
        keepdims: bool,
    },
    Cast {
        to: burn::tensor::DType,
    },
    Flatten {
        axis: usize,
    },
    Reshape {
        shape: Param<Vec<i64>>,
    },
    Transpose {
        perm: Vec<i64>,
    },
    Concat {
        axis: usize,
    },
    Slice(SliceParams),
    Gather {
        axis: usize,
    },
    Unsqueeze {
        axes: Param<Vec<i64>>,
    },
    Squeeze {
        axes: Option<Param<Vec<i64>>>,
    },
    Pad {
        pads: Param<Vec<(usize, usize)>>,
        value: Param<f64>,
        axes: Option<Param<Vec<i64>>>,
    },
    Shape {
        start: usize,
        end: usize,
    },
}

/// ONNX's (top, left, bottom, right) as burn's per-axis (begin, end).
fn pads2(p: &PaddingConfig2d) -> [(usize, usize); 2] {
    let (top, left, bottom, right) = p.as_tuple();
    [(top, bottom), (left, right)]
}

fn pads1(p: &PaddingConfig1d) -> [(usize, usize); 1] {
    match p {
        PaddingConfig1d::Valid => [(0, 0)],
        PaddingConfig1d::Explicit(l, r) => [(*l, *r)],
    }
}

/// Builds the operator for `node`, or says why this engine cannot run it.
pub fn lower(node: &Node) -> Result<Op, String> {
    use elementwise::{Binary as B, Unary as U};
    Ok(match node {
        Node::Identity(_) | Node::Dropout(_) => Op::Identity,
        Node::Relu(_) => Op::Unary(U::Relu),
        Node::Sigmoid(_) => Op::Unary(U::Sigmoid),
        Node::Tanh(_) => Op::Unary(U::Tanh),
        Node::Exp(_) => Op::Unary(U::Exp),
        Node::Log(_) => Op::Unary(U::Log),
        Node::Sqrt(_) => Op::Unary(U::Sqrt),
        Node::Neg(_) => Op::Unary(U::Neg),
        Node::Erf(_) => Op::Unary(U::Erf),
        Node::HardSwish(_) => Op::Unary(U::HardSwish),
        Node::LeakyRelu(n) => Op::Unary(U::LeakyRelu(n.config.alpha)),
        Node::HardSigmoid(n) => Op::Unary(U::HardSigmoid(n.config.alpha, n.config.beta)),
        Node::Add(_) => Op::Binary(B::Add),
        Node::Sub(_) => Op::Binary(B::Sub),
        Node::Mul(_) => Op::Binary(B::Mul),
        Node::Div(_) => Op::Binary(B::Div),
        Node::Pow(_) => Op::Binary(B::Pow),
        Node::Clip(n) => Op::Clip {
            min: layout::clip_param(&n.config.min, f64::NEG_INFINITY),
            max: layout::clip_param(&n.config.max, f64::INFINITY),
        },
        Node::Softmax(n) => Op::Softmax {
            axis: n.config.axis,
        },
        Node::Linear(n) => Op::Linear {
            transposed: n.config.transpose_weight,
        },
        Node::MatMul(_) => Op::MatMul,
        Node::Gemm(n) => Op::Gemm {
            alpha: n.config.alpha,
            beta: n.config.beta,
            trans_a: n.config.trans_a != 0,
            trans_b: n.config.trans_b != 0,
        },
        Node::Conv1d(n) => {
            let c = &n.config;
            Op::Conv1d(ConvOptions::new_with_padding(
                [c.stride],
                pads1(&c.padding),
                [c.dilation],
                c.groups,
            ))
        }
        Node::Conv2d(n) => {
            let c = &n.config;
            Op::Conv2d(ConvOptions::new_with_padding(
                c.stride,
                pads2(&c.padding),
                c.dilation,
                c.groups,
            ))
        }
        Node::ConvTranspose2d(n) => {
            let c = &n.config;
            if c.output_shape.is_some() {
                return Err("ConvTranspose with output_shape is not supported".into());
            }
            Op::ConvTranspose2d(ConvTransposeOptions::new(
                c.stride,
                c.padding,
                c.padding_out,
                c.dilation,
                c.groups,
            ))
        }
        Node::BatchNormalization(n) => match &n.config {
            onnx_ir::node::batch_norm::BatchNormConfig::Static(c) => {
                Op::BatchNorm { epsilon: c.epsilon }
            }
            onnx_ir::node::batch_norm::BatchNormConfig::Runtime(c) => {
                Op::BatchNorm { epsilon: c.epsilon }
            }
        },
        Node::MaxPool2d(n) => Op::Pool(Pool::max2d(&n.config)?),
        Node::AveragePool2d(n) => Op::Pool(Pool::avg2d(&n.config)?),
        Node::GlobalAveragePool(_) => Op::GlobalAveragePool,
        Node::Resize(n) => Op::Resize(ResizeOp::new(&n.config)?),
        Node::ReduceMean(n) => nn::reduce(Reduce::Mean, &n.config),
        Node::ReduceSum(n) => nn::reduce(Reduce::Sum, &n.config),
        Node::ReduceMax(n) => nn::reduce(Reduce::Max, &n.config),
        Node::ArgMax(n) => {
            if n.config.select_last_index {
                return Err("ArgMax with select_last_index=1 is not supported".into());
            }
            Op::ArgMax {
                axis: n.config.axis,
                keepdims: n.config.keepdims,
            }
        }
        Node::Cast(n) => Op::Cast { to: n.config.to },
        Node::Flatten(n) => Op::Flatten {
            axis: n.config.axis,
        },
        Node::Reshape(n) => Op::Reshape {
            shape: layout::reshape_param(&n.config.shape),
        },
        Node::Transpose(n) => Op::Transpose {
            perm: n.config.perm.clone(),
        },
        Node::Concat(n) => Op::Concat {
            axis: n.config.axis,
        },
        Node::Slice(n) => Op::Slice(SliceParams::new(&n.config)),
        Node::Gather(n) => Op::Gather {
            axis: n.config.axis,
        },
        Node::Unsqueeze(n) => Op::Unsqueeze {
            axes: layout::unsqueeze_param(&n.config),
        },
        Node::Squeeze(n) => Op::Squeeze {
            axes: n.config.axes.as_ref().map(layout::squeeze_param),
        },
        Node::Pad(n) => layout::pad(&n.config)?,
        Node::Shape(n) => Op::Shape {
            start: n.config.start,
            end: n.config.end,
        },
        other => {
            return Err(format!(
                "operator {} is not supported by the burn engine",
                other.node_type()
            ))
        }
    })
}

/// Runs `op` on its inputs (`None` for omitted optional ones).
pub fn exec(op: &Op, inputs: Vec<Option<Value>>, device: &Device) -> Result<Vec<Value>, String> {
    let mut ins = Inputs(inputs);
    let one = |v: Value| Ok(vec![v]);
    match op {
        Op::Identity => one(ins.take(0)?),
        Op::Unary(u) => one(elementwise::unary(*u, ins.take(0)?, device)?),
        Op::Binary(b) => one(elementwise::binary(*b, ins.take(0)?, ins.take(1)?, device)?),
        Op::Clip { min, max } => {
            let lo = min.resolve_f64(&mut ins)?;
            let hi = max.resolve_f64(&mut ins)?;
            one(elementwise::clip(ins.take(0)?, lo, hi, device)?)
        }
        Op::Softmax { axis } => one(nn::softmax(ins.take(0)?, *axis, device)?),
        Op::Linear { transposed } => {
            let (x, w, bias) = ins.weighted()?;
            one(nn::linear(x, w, bias, *transposed, device)?)
        }
        Op::MatMul => one(nn::matmul(ins.take(0)?, ins.take(1)?, device)?),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let (a, b, c) = ins.weighted()?;
            one(nn::gemm(
                a,
                b,
                c,
                (*alpha, *beta, *trans_a, *trans_b),
                device,
            )?)
        }
        Op::Conv1d(o) => {
            let (x, w, bias) = ins.weighted()?;
            one(nn::conv1d(x, w, bias, o.clone(), device)?)
        }
        Op::Conv2d(o) => {
            let (x, w, bias) = ins.weighted()?;
            one(nn::conv2d(x, w, bias, o.clone(), device)?)
        }
        Op::ConvTranspose2d(o) => {
            let (x, w, bias) = ins.weighted()?;
            one(nn::conv_transpose2d(x, w, bias, o.clone(), device)?)
        }
        Op::BatchNorm { epsilon } => {
            let params = [ins.take(1)?, ins.take(2)?, ins.take(3)?, ins.take(4)?];
            one(nn::batch_norm(ins.take(0)?, params, *epsilon, device)?)
        }
        Op::ChannelAffine => {
            let (k, shift) = (ins.take(1)?, ins.take(2)?);
            one(nn::channel_affine(ins.take(0)?, k, shift, device)?)
        }
        Op::Pool(p) => one(p.run(ins.take(0)?, device)?),
        Op::GlobalAveragePool => one(nn::global_average_pool(ins.take(0)?, device)?),
        Op::Resize(r) => {
            let x = ins.take(0)?;
            one(r.run(x, &mut ins, device)?)
        }
        Op::Reduce {
            kind,
            axes,
            keepdims,
            noop_empty,
        } => {
            let axes = axes.resolve_ints(&mut ins)?;
            one(nn::reduce_run(
                *kind,
                ins.take(0)?,
                &axes,
                *keepdims,
                *noop_empty,
                device,
            )?)
        }
        Op::ArgMax { axis, keepdims } => one(nn::argmax(ins.take(0)?, *axis, *keepdims, device)?),
        Op::Cast { to } => one(layout::cast(ins.take(0)?, *to, device)?),
        Op::Flatten { axis } => one(layout::flatten(ins.take(0)?, *axis)?),
        Op::Reshape { shape } => {
            let shape = shape.resolve_ints(&mut ins)?;
            one(layout::reshape(ins.take(0)?, &shape)?)
        }
        Op::Transpose { perm } => one(layout::transpose(ins.take(0)?, perm)?),
        Op::Concat { axis } => {
            let all = ins.all()?;
            one(layout::concat(all, *axis, device)?)
        }
        Op::Slice(s) => {
            let (starts, ends, axes, steps) = s.resolve(&mut ins)?;
            one(layout::slice(ins.take(0)?, &starts, &ends, axes, steps)?)
        }
        Op::Gather { axis } => one(layout::gather(ins.take(0)?, ins.take(1)?, *axis, device)?),
        Op::Unsqueeze { axes } => {
            let axes = axes.resolve_ints(&mut ins)?;
            one(layout::unsqueeze(ins.take(0)?, &axes)?)
        }
        Op::Squeeze { axes } => {
            let axes = match axes {
                Some(a) => Some(a.resolve_ints(&mut ins)?),
                None => None,
            };
            one(layout::squeeze(ins.take(0)?, axes.as_deref())?)
        }
        Op::Pad { pads, value, axes } => {
            let value = value.resolve_f64(&mut ins)?;
            let axes = match axes {
                Some(a) => Some(a.resolve_ints(&mut ins)?),
                None => None,
            };
            let pads = match pads {
                Param::Static(p) => p.clone(),
                Param::Input(i) => layout::onnx_pads(&ins.host(*i)?.data)?,
            };
            one(layout::pad_run(
                ins.take(0)?,
                pads,
                axes,
                value as f32,
                device,
            )?)
        }
        Op::Shape { start, end } => one(layout::shape(&ins.take(0)?, *start, *end)),
    }
}

/// A step's inputs, taken out one by one.
pub struct Inputs(Vec<Option<Value>>);

impl Inputs {
    pub fn take(&mut self, i: usize) -> Result<Value, String> {
        self.0
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| format!("input {i} is missing"))
    }

    pub fn opt(&mut self, i: usize) -> Option<Value> {
        self.0.get_mut(i).and_then(Option::take)
    }

    /// The operands of a Gemm or a convolution: input, weights and the
    /// optional bias (input 2).
    pub fn weighted(&mut self) -> Result<(Value, Value, Option<Value>), String> {
        Ok((self.take(0)?, self.take(1)?, self.opt(2)))
    }

    /// Input `i` read as host integers (a shape, axes, bounds).
    pub fn host(&mut self, i: usize) -> Result<crate::value::HostInts, String> {
        self.take(i)?.host()
    }

    pub fn all(&mut self) -> Result<Vec<Value>, String> {
        self.0
            .iter_mut()
            .map(|v| v.take().ok_or_else(|| "an input is missing".to_string()))
            .collect()
    }
}
