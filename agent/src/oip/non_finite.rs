//! NaN and infinity in a request: where the first one is and what it was,
//! found while decoding; refused by the route unless its manifest accepts
//! them ([`ferry_protocol::Manifest::accepts_non_finite`]).

use super::{Decoded, RequestError};
use ferry_protocol::{DType, TensorData};

/// The first NaN or infinite value of a request, as its input's type holds
/// it (`1e40` is finite JSON but infinite as FP32). Decoding records it;
/// the route it runs on refuses it unless its manifest accepts non-finite
/// inputs ([`ferry_protocol::Manifest::accepts_non_finite`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    pub name: String,
    /// Where, as the request indexes it: `data[1][3]`.
    pub at: String,
    /// The value as sent: `NaN`, `inf`, `1e40 (beyond FP32's range)`.
    pub value: String,
    pub dtype: DType,
}

impl Decoded {
    /// Refuses the request when it carries a non-finite value and the model
    /// does not accept them.
    pub fn check_finite(&self, accepts_non_finite: bool) -> Result<(), RequestError> {
        match &self.non_finite {
            Some(nf) if !accepts_non_finite => Err(RequestError::NonFinite(nf.clone())),
            _ => Ok(()),
        }
    }
}

/// `data[i][j]…`: the row-major element `flat` of a tensor of `shape`.
pub(super) fn index_of(shape: &[u64], flat: usize) -> String {
    let mut rest = flat as u64;
    let mut idx = vec![0u64; shape.len()];
    for (slot, d) in idx.iter_mut().zip(shape).rev() {
        if *d > 0 {
            *slot = rest % d;
            rest /= d;
        }
    }
    let parts: String = idx.iter().map(|i| format!("[{i}]")).collect();
    format!("data{parts}")
}

fn describe(x: f64) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}

/// The first non-finite element of float data: its index and how to name
/// the value.
pub(super) fn first_non_finite(data: &TensorData) -> Option<(usize, String)> {
    match data {
        TensorData::F32(v) => v
            .iter()
            .position(|x| !x.is_finite())
            .map(|i| (i, describe(f64::from(v[i])).to_string())),
        TensorData::F64(v) => v
            .iter()
            .position(|x| !x.is_finite())
            .map(|i| (i, describe(v[i]).to_string())),
        _ => None,
    }
}
