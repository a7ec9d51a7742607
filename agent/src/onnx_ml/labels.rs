//! Class labels of a classifier (`classlabels_ints` / `classlabels_strings`)
//! and the label tensor a classifier outputs.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_ndarray::Array1;

use super::attrs::Attrs;
use super::MlError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl Labels {
    /// Reads the labels from `ints_attr` or `classlabels_strings`; exactly
    /// one must be given.
    pub fn parse(a: &Attrs, ints_attr: &str) -> Result<Self, MlError> {
        let ints = a.ints(ints_attr);
        let strs = a.strings("classlabels_strings")?;
        match (ints.is_empty(), strs.is_empty()) {
            (false, true) => Ok(Labels::Ints(ints)),
            (true, false) => Ok(Labels::Strings(strs)),
            _ => Err(a.err(
                ints_attr,
                "or classlabels_strings: exactly one must be given, not empty",
            )),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
        }
    }

    pub fn datum_type(&self) -> DatumType {
        match self {
            Labels::Ints(_) => DatumType::I64,
            Labels::Strings(_) => DatumType::String,
        }
    }

    /// The label tensor for `picks`: an index into the labels, or for
    /// single-score binary models without two labels, onnxruntime's
    /// fallback classes `1` / `0` (`"1"` / `"0"`).
    pub fn tensor(&self, picks: &[Pick]) -> Tensor {
        match self {
            Labels::Ints(v) => {
                let d: Vec<i64> = picks
                    .iter()
                    .map(|p| match p {
                        Pick::Class(i) => v[*i],
                        Pick::Positive => 1,
                        Pick::Negative => 0,
                    })
                    .collect();
                Array1::from_vec(d).into_tensor()
            }
            Labels::Strings(v) => {
                let d: Vec<String> = picks
                    .iter()
                    .map(|p| match p {
                        Pick::Class(i) => v[*i].clone(),
                        Pick::Positive => "1".into(),
                        Pick::Negative => "0".into(),
                    })
                    .collect();
                Array1::from_vec(d).into_tensor()
            }
        }
    }
}

/// The class a row was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    Class(usize),
    Positive,
    Negative,
}

/// The first index of the largest value (onnxruntime's tie rule).
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate().skip(1) {
        if *v > row[best] {
            best = i;
        }
    }
    best
}
