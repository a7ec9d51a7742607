//! Element-wise operators. Broadcasting is burn's: every tensor is held at
//! one rank with leading ones, which is ONNX's rule.

use crate::value::{HostInts, Value};
use burn::tensor::activation;
use burn::tensor::{Device, Int, Tensor};

type IntTensor = Tensor<{ crate::value::RANK }, Int>;

#[derive(Clone, Copy, Debug)]
pub enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Sqrt,
    Neg,
    Erf,
    HardSwish,
    LeakyRelu(f64),
    /// `max(0, min(1, alpha·x + beta))`
    HardSigmoid(f64, f64),
}

#[derive(Clone, Copy, Debug)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

pub fn unary(op: Unary, x: Value, device: &Device) -> Result<Value, String> {
    if let (Unary::Neg, Value::Host(h)) = (op, &x) {
        return Ok(Value::Host(HostInts {
            shape: h.shape.clone(),
            data: h.data.iter().map(|v| -v).collect(),
        }));
    }
    let (t, r) = x.float(device)?;
    let y = match op {
        Unary::Relu => activation::relu(t),
        Unary::Sigmoid => activation::sigmoid(t),
        Unary::Tanh => t.tanh(),
        Unary::Exp => t.exp(),
        Unary::Log => t.log(),
        Unary::Sqrt => t.sqrt(),
        Unary::Neg => t.neg(),
        Unary::Erf => t.erf(),
        // x · min(max(x + 3, 0), 6) / 6, as ONNX defines it.
        Unary::HardSwish => t
            .clone()
            .mul(t.add_scalar(3.0).clamp(0.0, 6.0))
            .div_scalar(6.0),
        Unary::LeakyRelu(a) => activation::leaky_relu(t, a),
        Unary::HardSigmoid(a, b) => t.mul_scalar(a).add_scalar(b).clamp(0.0, 1.0),
    };
    Ok(Value::Float(y, r))
}

/// Shape arithmetic stays on the host; anything else runs on the device,
/// as integers when both sides are integers.
pub fn binary(op: Binary, a: Value, b: Value, device: &Device) -> Result<Value, String> {
    let rank = a.rank().max(b.rank());
    if let (Value::Host(x), Value::Host(y)) = (&a, &b) {
        if !matches!(op, Binary::Pow) {
            return host_binary(op, x, y);
        }
    }
    let both_int = !matches!(a, Value::Float(..)) && !matches!(b, Value::Float(..));
    // Integer Pow has no integer kernel: it runs in floats below.
    let int_op: Option<fn(IntTensor, IntTensor) -> IntTensor> = match op {
        Binary::Add => Some(IntTensor::add),
        Binary::Sub => Some(IntTensor::sub),
        Binary::Mul => Some(IntTensor::mul),
        Binary::Div => Some(IntTensor::div),
        Binary::Pow => None,
    };
    if let (true, Some(f)) = (both_int, int_op) {
        let (x, _) = a.int(device)?;
        let (y, _) = b.int(device)?;
        return Ok(Value::Int(f(x, y), rank));
    }
    let (x, _) = a.float(device)?;
    let (y, _) = b.float(device)?;
    let z = match op {
        Binary::Add => x.add(y),
        Binary::Sub => x.sub(y),
        Binary::Mul => x.mul(y),
        Binary::Div => x.div(y),
        Binary::Pow => x.powf(y),
    };
    Ok(Value::Float(z, rank))
}

/// Broadcast arithmetic on host integers (shape computations).
fn host_binary(op: Binary, x: &HostInts, y: &HostInts) -> Result<Value, String> {
    let (shape, idx) = broadcast(&x.shape, &y.shape)?;
    let data = idx
        .iter()
        .map(|(i, j)| {
            let (a, b) = (x.data[*i], y.data[*j]);
            match op {
                Binary::Add => Ok(a + b),
                Binary::Sub => Ok(a - b),
                Binary::Mul => Ok(a * b),
                Binary::Div if b == 0 => Err("integer division by zero".to_string()),
                Binary::Div => Ok(a / b),
                Binary::Pow => Err("integer Pow is not supported".to_string()),
            }
        })
        .collect::<Result<Vec<i64>, String>>()?;
    Ok(Value::Host(HostInts { shape, data }))
}

/// The broadcast shape of two host tensors and, for each output element,
/// the element of each side it reads.
type Broadcast = (Vec<usize>, Vec<(usize, usize)>);

fn broadcast(a: &[usize], b: &[usize]) -> Result<Broadcast, String> {
    let r = a.len().max(b.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; r - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(a), pad(b));
    let mut out = Vec::with_capacity(r);
    for (x, y) in pa.iter().zip(&pb) {
        out.push(match (x, y) {
            (x, y) if x == y => *x,
            (1, y) => *y,
            (x, 1) => *x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        });
    }
    let n: usize = out.iter().product();
    let strides = |s: &[usize]| {
        let mut st = vec![0usize; r];
        let mut acc = 1;
        for k in (0..r).rev() {
            st[k] = if s[k] == 1 { 0 } else { acc };
            acc *= s[k];
        }
        st
    };
    let (sa, sb) = (strides(&pa), strides(&pb));
    let mut idx = Vec::with_capacity(n);
    for flat in 0..n {
        let (mut rem, mut i, mut j) = (flat, 0, 0);
        for k in (0..r).rev() {
            let c = rem % out[k];
            rem /= out[k];
            i += c * sa[k];
            j += c * sb[k];
        }
        idx.push((i, j));
    }
    Ok((out, idx))
}

pub fn clip(x: Value, lo: f64, hi: f64, device: &Device) -> Result<Value, String> {
    let (t, r) = x.float(device)?;
    let t = match (lo.is_finite(), hi.is_finite()) {
        (true, true) => t.clamp(lo, hi),
        (true, false) => t.clamp_min(lo),
        (false, true) => t.clamp_max(hi),
        (false, false) => t,
    };
    Ok(Value::Float(t, r))
}
