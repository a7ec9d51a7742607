//! The values an ONNX graph passes between nodes, as the interpreter holds
//! them.
//!
//! Every device tensor is kept at one rank, [`RANK`], with its logical
//! dimensions right-aligned and leading ones in front. That is exactly
//! ONNX's (numpy's) broadcasting rule, so element-wise operators broadcast
//! through burn with no shape arithmetic, and one Rust type serves a graph
//! whose tensors have any rank up to [`RANK`]. Shapes and indices computed
//! from shapes stay on the host ([`Value::Host`]): a `Shape → Gather →
//! Concat → Reshape` chain never round-trips through the GPU.

use burn::tensor::{Device, Int, Tensor, TensorData};

/// The one rank every device tensor is held at.
pub const RANK: usize = 6;

#[derive(Clone, Debug)]
pub enum Value {
    /// A float tensor and its logical rank.
    Float(Tensor<RANK>, usize),
    /// An integer tensor and its logical rank.
    Int(Tensor<RANK, Int>, usize),
    /// A small integer tensor on the host: shapes, indices, axes.
    Host(HostInts),
}

/// An integer tensor on the host (rank 0 or more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInts {
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
}

impl HostInts {
    pub fn vector(data: Vec<i64>) -> Self {
        HostInts {
            shape: vec![data.len()],
            data,
        }
    }
}

/// `dims` right-aligned into [`RANK`] dimensions.
pub fn padded(dims: &[usize]) -> Result<[usize; RANK], String> {
    if dims.len() > RANK {
        return Err(format!(
            "a tensor of rank {} (this engine holds up to rank {RANK})",
            dims.len()
        ));
    }
    let mut out = [1usize; RANK];
    out[RANK - dims.len()..].copy_from_slice(dims);
    Ok(out)
}

/// The position of logical `axis` of a rank-`rank` tensor in the padded
/// tensor.
pub fn at(rank: usize, axis: usize) -> usize {
    RANK - rank + axis
}

/// A possibly negative ONNX axis, resolved against `rank`.
pub fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r.max(1)).contains(&v) {
        Ok(v as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

impl Value {
    pub fn rank(&self) -> usize {
        match self {
            Value::Float(_, r) | Value::Int(_, r) => *r,
            Value::Host(h) => h.shape.len(),
        }
    }

    /// The logical dimensions.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Value::Float(t, r) => t.dims()[RANK - r..].to_vec(),
            Value::Int(t, r) => t.dims()[RANK - r..].to_vec(),
            Value::Host(h) => h.shape.clone(),
        }
    }

    /// The value as a float tensor on `device` (integers converted).
    pub fn float(self, device: &Device) -> Result<(Tensor<RANK>, usize), String> {
        Ok(match self {
            Value::Float(t, r) => (t, r),
            Value::Int(t, r) => (t.float(), r),
            Value::Host(h) => {
                let r = h.shape.len();
                (Value::Host(h).int(device)?.0.float(), r)
            }
        })
    }

    /// The value as an integer tensor on `device`.
    pub fn int(self, device: &Device) -> Result<(Tensor<RANK, Int>, usize), String> {
        Ok(match self {
            Value::Int(t, r) => (t, r),
            Value::Float(t, r) => (t.int(), r),
            Value::Host(h) => {
                let shape = padded(&h.shape)?;
                let r = h.shape.len();
                let data = TensorData::new(h.data, shape);
                (Tensor::from_data(data, device), r)
            }
        })
    }

    /// The value as host integers (read back from the device if it is
    /// there: only for the small tensors shapes are made of).
    pub fn host(self) -> Result<HostInts, String> {
        let shape = self.dims();
        let data = match self {
            Value::Host(h) => return Ok(h),
            Value::Int(t, _) => t.into_data(),
            Value::Float(t, _) => t.into_data(),
        };
        let data = data
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| format!("reading a tensor back: {e:?}"))?;
        Ok(HostInts { shape, data })
    }

    /// Whether the value is on the host.
    pub fn is_host(&self) -> bool {
        matches!(self, Value::Host(_))
    }

    /// The same elements with new logical dimensions.
    pub fn reshaped(self, dims: &[usize]) -> Result<Value, String> {
        let have: usize = self.dims().iter().product();
        let want: usize = dims.iter().product();
        if have != want {
            return Err(format!(
                "cannot reshape {:?} ({have} elements) to {dims:?} ({want} elements)",
                self.dims()
            ));
        }
        let p = padded(dims)?;
        Ok(match self {
            Value::Float(t, _) => Value::Float(t.reshape(p), dims.len()),
            Value::Int(t, _) => Value::Int(t.reshape(p), dims.len()),
            Value::Host(h) => Value::Host(HostInts {
                shape: dims.to_vec(),
                data: h.data,
            }),
        })
    }
}
