//! Operators that move elements without computing on them: shapes,
//! reshapes, slices, gathers, concatenation, padding, casts. Each runs on
//! the host when its input is a host shape, on the device otherwise.

use super::{Inputs, Op};
use crate::value::{at, axis, HostInts, Value, RANK};
use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Device, Int, Slice, Tensor, TensorData};
use onnx_ir::node::clip::ClipInput;
use onnx_ir::node::pad::{ConstantValueInput, PadConfig, PadInput, PadMode as OnnxPad};
use onnx_ir::node::reshape::ReshapeInput;
use onnx_ir::node::slice::{SliceConfig, SliceInput};
use onnx_ir::node::squeeze::SqueezeInput;
use onnx_ir::node::unsqueeze::UnsqueezeConfig;

/// A parameter known at load, or read at run time from node input `Input`.
#[derive(Clone, Debug)]
pub enum Param<T> {
    Static(T),
    Input(usize),
}

impl Param<Vec<i64>> {
    pub fn resolve_ints(&self, ins: &mut Inputs) -> Result<Vec<i64>, String> {
        match self {
            Param::Static(v) => Ok(v.clone()),
            Param::Input(i) => Ok(ins.host(*i)?.data),
        }
    }
}

impl Param<f64> {
    pub fn resolve_f64(&self, ins: &mut Inputs) -> Result<f64, String> {
        match self {
            Param::Static(v) => Ok(*v),
            Param::Input(i) => match ins.opt(*i) {
                None => Err(format!("input {i} is missing")),
                Some(Value::Float(t, _)) => {
                    let d = t.into_data().convert::<f32>();
                    let v = d.try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
                    v.first()
                        .map(|x| *x as f64)
                        .ok_or_else(|| format!("input {i} is empty"))
                }
                Some(other) => other
                    .host()?
                    .data
                    .first()
                    .map(|x| *x as f64)
                    .ok_or_else(|| format!("input {i} is empty")),
            },
        }
    }
}

pub fn clip_param(c: &Option<ClipInput>, absent: f64) -> Param<f64> {
    match c {
        None => Param::Static(absent),
        Some(ClipInput::Static(v)) => Param::Static(*v),
        Some(ClipInput::Runtime(r)) => Param::Input(r.input_index),
    }
}

pub fn reshape_param(c: &ReshapeInput) -> Param<Vec<i64>> {
    match c {
        ReshapeInput::Static(v) => Param::Static(v.clone()),
        ReshapeInput::Runtime(r) => Param::Input(r.input_index),
    }
}

pub fn unsqueeze_param(c: &UnsqueezeConfig) -> Param<Vec<i64>> {
    match c {
        UnsqueezeConfig::Static(v) => Param::Static(v.clone()),
        UnsqueezeConfig::Runtime(r) => Param::Input(r.input_index),
    }
}

pub fn squeeze_param(c: &SqueezeInput) -> Param<Vec<i64>> {
    match c {
        SqueezeInput::Static(v) => Param::Static(v.clone()),
        SqueezeInput::Runtime(r) => Param::Input(r.input_index),
    }
}

fn slice_param(c: &SliceInput) -> Param<Vec<i64>> {
    match c {
        SliceInput::Static(v) => Param::Static(v.clone()),
        SliceInput::Runtime(r) => Param::Input(r.input_index),
    }
}

#[derive(Clone, Debug)]
pub struct SliceParams {
    starts: Param<Vec<i64>>,
    ends: Param<Vec<i64>>,
    axes: Option<Param<Vec<i64>>>,
    steps: Option<Param<Vec<i64>>>,
}

type Resolved = (Vec<i64>, Vec<i64>, Option<Vec<i64>>, Option<Vec<i64>>);

impl SliceParams {
    pub fn new(c: &SliceConfig) -> Self {
        SliceParams {
            starts: slice_param(&c.starts),
            ends: slice_param(&c.ends),
            axes: c.axes.as_ref().map(slice_param),
            steps: c.steps.as_ref().map(slice_param),
        }
    }

    pub fn resolve(&self, ins: &mut Inputs) -> Result<Resolved, String> {
        let opt = |p: &Option<Param<Vec<i64>>>, ins: &mut Inputs| match p {
            Some(p) => p.resolve_ints(ins).map(Some),
            None => Ok(None),
        };
        Ok((
            self.starts.resolve_ints(ins)?,
            self.ends.resolve_ints(ins)?,
            opt(&self.axes, ins)?,
            opt(&self.steps, ins)?,
        ))
    }
}

pub fn pad(c: &PadConfig) -> Result<Op, String> {
    if !matches!(c.mode, OnnxPad::Constant) {
        return Err(format!("Pad mode {:?} is not supported", c.mode));
    }
    let (pads, axes) = match &c.pads {
        PadInput::Static(p) => (Param::Static(p.clone()), None),
        PadInput::Runtime { input, axes } => (
            Param::Input(input.input_index),
            match axes {
                None => None,
                Some(onnx_ir::node::pad::AxesInput::Static(a)) => {
                    Some(Param::Static(a.iter().map(|x| *x as i64).collect()))
                }
                Some(onnx_ir::node::pad::AxesInput::Runtime(r)) => {
                    Some(Param::Input(r.input_index))
                }
            },
        ),
    };
    let value = match &c.constant_value {
        ConstantValueInput::Static(v) => Param::Static(*v as f64),
        ConstantValueInput::Runtime(r) => Param::Input(r.input_index),
    };
    Ok(Op::Pad { pads, value, axes })
}

/// ONNX's flat `[b1, b2, …, e1, e2, …]` pads as `(before, after)` pairs.
pub fn onnx_pads(flat: &[i64]) -> Result<Vec<(usize, usize)>, String> {
    if !flat.len().is_multiple_of(2) || flat.iter().any(|p| *p < 0) {
        return Err(format!(
            "pads {flat:?} must be an even number of non-negative values"
        ));
    }
    let n = flat.len() / 2;
    Ok((0..n)
        .map(|i| (flat[i] as usize, flat[n + i] as usize))
        .collect())
}

pub fn pad_run(
    x: Value,
    pads: Vec<(usize, usize)>,
    axes: Option<Vec<i64>>,
    value: f32,
    device: &Device,
) -> Result<Value, String> {
    let r = x.rank();
    let mut full = vec![(0usize, 0usize); RANK];
    match axes {
        None => {
            if pads.len() != r {
                return Err(format!("{} pad pairs for a rank-{r} tensor", pads.len()));
            }
            for (i, p) in pads.into_iter().enumerate() {
                full[at(r, i)] = p;
            }
        }
        Some(axes) => {
            if axes.len() != pads.len() {
                return Err("pads and axes differ in length".into());
            }
            for (a, p) in axes.iter().zip(pads) {
                full[at(r, axis(*a, r)?)] = p;
            }
        }
    }
    let (t, r) = x.float(device)?;
    Ok(Value::Float(
        t.pad(full.as_slice(), PadMode::Constant(value)),
        r,
    ))
}

pub fn cast(x: Value, to: DType, device: &Device) -> Result<Value, String> {
    let float = matches!(to, DType::F64 | DType::F32 | DType::F16 | DType::BF16);
    Ok(match (x, float) {
        (Value::Host(h), false) => Value::Host(h),
        (x, true) => {
            let (t, r) = x.float(device)?;
            Value::Float(t, r)
        }
        (x, false) => {
            let (t, r) = x.int(device)?;
            if matches!(to, DType::Bool(_)) {
                Value::Int(t.bool().int(), r)
            } else {
                Value::Int(t, r)
            }
        }
    })
}

pub fn flatten(x: Value, axis: usize) -> Result<Value, String> {
    let d = x.dims();
    let a = axis.min(d.len());
    let outer: usize = d[..a].iter().product();
    let inner: usize = d[a..].iter().product();
    x.reshaped(&[outer, inner])
}

/// ONNX Reshape: 0 copies the input's dimension, -1 is inferred.
pub fn reshape(x: Value, shape: &[i64]) -> Result<Value, String> {
    let d = x.dims();
    let total: usize = d.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, s) in shape.iter().enumerate() {
        match *s {
            0 => out.push(
                *d.get(i)
                    .ok_or("Reshape copies a dimension the input lacks")?,
            ),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            s if s > 0 => out.push(s as usize),
            s => return Err(format!("Reshape to {shape:?}: bad dimension {s}")),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {d:?} to {shape:?}"));
        }
        out[i] = total / known;
    }
    x.reshaped(&out)
}

pub fn transpose(x: Value, perm: &[i64]) -> Result<Value, String> {
    let r = x.rank();
    let perm: Vec<usize> = if perm.is_empty() {
        (0..r).rev().collect()
    } else {
        perm.iter().map(|p| axis(*p, r)).collect::<Result<_, _>>()?
    };
    if perm.len() != r {
        return Err(format!("perm {perm:?} for a rank-{r} tensor"));
    }
    let mut full = [0usize; RANK];
    for (i, f) in full.iter_mut().enumerate() {
        *f = i;
    }
    for (i, p) in perm.iter().enumerate() {
        full[at(r, i)] = at(r, *p);
    }
    Ok(match x {
        Value::Float(t, r) => Value::Float(t.permute(full), r),
        Value::Int(t, r) => Value::Int(t.permute(full), r),
        // A host tensor is a shape (rank 0 or 1): transposing it is a no-op.
        Value::Host(h) if r <= 1 => Value::Host(h),
        Value::Host(_) => return Err("transposing a host tensor of rank > 1".into()),
    })
}

pub fn concat(xs: Vec<Value>, axis_: usize, device: &Device) -> Result<Value, String> {
    let r = xs.first().map(Value::rank).ok_or("Concat of nothing")?;
    if xs.iter().all(Value::is_host) && r <= 1 {
        let mut data = Vec::new();
        for x in xs {
            data.extend(x.host()?.data);
        }
        return Ok(Value::Host(HostInts::vector(data)));
    }
    if xs.iter().any(|x| x.rank() != r) {
        return Err("Concat of tensors of different ranks".into());
    }
    let dim = at(r, axis_);
    if xs.iter().any(|x| matches!(x, Value::Float(..))) {
        let ts = xs
            .into_iter()
            .map(|x| x.float(device).map(|v| v.0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Value::Float(Tensor::cat(ts, dim), r))
    } else {
        let ts = xs
            .into_iter()
            .map(|x| x.int(device).map(|v| v.0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Value::Int(Tensor::cat(ts, dim), r))
    }
}

/// Clamps an ONNX slice bound into `0..=len` (or `-1..len` going backwards).
fn bound(v: i64, len: i64, step: i64) -> i64 {
    let v = if v < 0 { v + len } else { v };
    if step > 0 {
        v.clamp(0, len)
    } else {
        v.clamp(-1, len - 1)
    }
}

pub fn slice(
    x: Value,
    starts: &[i64],
    ends: &[i64],
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
) -> Result<Value, String> {
    let d = x.dims();
    let r = d.len();
    let axes = match axes {
        Some(a) => a
            .iter()
            .map(|a| axis(*a, r))
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("Slice starts, ends, axes and steps differ in length".into());
    }
    let mut ranges: Vec<(i64, i64, i64)> = d.iter().map(|n| (0, *n as i64, 1)).collect();
    for k in 0..starts.len() {
        let len = d[axes[k]] as i64;
        let step = steps[k];
        if step == 0 {
            return Err("Slice step 0".into());
        }
        ranges[axes[k]] = (bound(starts[k], len, step), bound(ends[k], len, step), step);
    }
    if let Value::Host(h) = &x {
        if r == 1 {
            let (s, e, st) = ranges[0];
            let mut out = Vec::new();
            let mut i = s;
            while (st > 0 && i < e) || (st < 0 && i > e) {
                out.push(h.data[i as usize]);
                i += st;
            }
            return Ok(Value::Host(HostInts::vector(out)));
        }
    }
    let mut sl: Vec<Slice> = vec![Slice::new(0, None, 1); RANK];
    for (i, (s, e, st)) in ranges.into_iter().enumerate() {
        if st > 0 && e <= s {
            return Err("Slice selects no elements (empty tensors are not supported)".into());
        }
        let end = if e < 0 { None } else { Some(e as isize) };
        sl[at(r, i)] = if st > 0 {
            Slice::new(s as isize, end, st as isize)
        } else {
            // burn walks a negative step from the end of the range back.
            Slice::new((e + 1) as isize, Some((s + 1) as isize), st as isize)
        };
    }
    let arr: [Slice; RANK] = sl.try_into().map_err(|_| "slice rank")?;
    Ok(match x {
        Value::Float(t, r) => Value::Float(t.slice(arr), r),
        Value::Int(t, r) => Value::Int(t.slice(arr), r),
        Value::Host(_) => return Err("slicing a host tensor of rank > 1".into()),
    })
}

/// ONNX Gather: `out = data[..axis] ++ indices.shape ++ data[axis+1..]`.
pub fn gather(data: Value, indices: Value, axis_: usize, device: &Device) -> Result<Value, String> {
    let d = data.dims();
    let r = d.len();
    if axis_ >= r {
        return Err(format!("Gather axis {axis_} of a rank-{r} tensor"));
    }
    let n = d[axis_] as i64;
    let idx_dims = indices.dims();
    if let (Value::Host(h), Value::Host(i)) = (&data, &indices) {
        if r == 1 {
            let vals = i
                .data
                .iter()
                .map(|k| {
                    let k = if *k < 0 { k + n } else { *k };
                    h.data
                        .get(k as usize)
                        .copied()
                        .ok_or_else(|| format!("Gather index {k} out of range"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Value::Host(HostInts {
                shape: i.shape.clone(),
                data: vals,
            }));
        }
    }
    // Indices as a flat list (negatives resolved on the host when they
    // are there, on the device otherwise).
    let flat_n: usize = idx_dims.iter().product();
    let idx: Tensor<1, Int> = match indices {
        Value::Host(h) => {
            let v = h
                .data
                .iter()
                .map(|k| if *k < 0 { k + n } else { *k })
                .collect::<Vec<_>>();
            if v.iter().any(|k| *k < 0 || *k >= n) {
                return Err(format!("Gather indices {:?} out of range 0..{n}", h.data));
            }
            Tensor::from_data(TensorData::new(v, [flat_n]), device)
        }
        other => {
            let (t, _) = other.int(device)?;
            let t: Tensor<1, Int> = t.reshape([flat_n]);
            // Negative indices count from the end.
            let neg = t.clone().lower_elem(0).int().mul_scalar(n);
            t.add(neg)
        }
    };
    let mut out_dims: Vec<usize> = d[..axis_].to_vec();
    out_dims.extend(&idx_dims);
    out_dims.extend(&d[axis_ + 1..]);
    let dim = at(r, axis_);
    let picked = match data {
        Value::Float(t, r) => Value::Float(t.select(dim, idx), r),
        Value::Int(t, r) => Value::Int(t.select(dim, idx), r),
        Value::Host(h) => {
            let (t, r) = Value::Host(h).int(device)?;
            Value::Int(t.select(dim, idx), r)
        }
    };
    picked.reshaped(&out_dims)
}

pub fn unsqueeze(x: Value, axes: &[i64]) -> Result<Value, String> {
    let d = x.dims();
    let out_r = d.len() + axes.len();
    let mut set = axes
        .iter()
        .map(|a| axis(*a, out_r))
        .collect::<Result<Vec<_>, _>>()?;
    set.sort_unstable();
    let mut out = Vec::with_capacity(out_r);
    let mut src = d.into_iter();
    for i in 0..out_r {
        if set.binary_search(&i).is_ok() {
            out.push(1);
        } else {
            out.push(src.next().ok_or("Unsqueeze axes out of range")?);
        }
    }
    x.reshaped(&out)
}

pub fn squeeze(x: Value, axes: Option<&[i64]>) -> Result<Value, String> {
    let d = x.dims();
    let r = d.len();
    let drop: Vec<usize> = match axes {
        Some(a) => a.iter().map(|a| axis(*a, r)).collect::<Result<_, _>>()?,
        None => (0..r).filter(|i| d[*i] == 1).collect(),
    };
    if drop.iter().any(|i| d[*i] != 1) {
        return Err(format!("Squeeze of a dimension that is not 1 in {d:?}"));
    }
    let out: Vec<usize> = (0..r).filter(|i| !drop.contains(i)).map(|i| d[i]).collect();
    x.reshaped(&out)
}

pub fn shape(x: &Value, start: usize, end: usize) -> Value {
    let d = x.dims();
    let end = end.min(d.len());
    let start = start.min(end);
    Value::Host(HostInts::vector(
        d[start..end].iter().map(|v| *v as i64).collect(),
    ))
}
