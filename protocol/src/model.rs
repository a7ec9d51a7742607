//! Model identity and tensor types shared by manifests, the inference API and
//! test vectors.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Monotonically increasing model version. Agents refuse to go backwards
/// unless an operator asks for a rollback explicitly.
pub type Version = u64;

/// A validated model name. Names become path components on devices, so the
/// alphabet is restricted: ASCII letters, digits, `.`, `_`, `-`; 1 to 128
/// characters; not starting with `.` or `-`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model name {0:?}: use 1-128 of [A-Za-z0-9._-], not starting with '.' or '-'")]
pub struct InvalidName(pub String);

impl ModelName {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        if is_safe_name(&name) {
            Ok(Self(name))
        } else {
            Err(InvalidName(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `s` can be used as a single path component on any platform we
/// ship to. Shared by model names and artifact names.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TryFrom<String> for ModelName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<ModelName> for String {
    fn from(n: ModelName) -> Self {
        n.0
    }
}

impl FromStr for ModelName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Element types, named as the Open Inference Protocol names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    U8,
    #[serde(rename = "UINT16")]
    U16,
    #[serde(rename = "UINT32")]
    U32,
    #[serde(rename = "UINT64")]
    U64,
    #[serde(rename = "INT8")]
    I8,
    #[serde(rename = "INT16")]
    I16,
    #[serde(rename = "INT32")]
    I32,
    #[serde(rename = "INT64")]
    I64,
    #[serde(rename = "FP16")]
    F16,
    #[serde(rename = "FP32")]
    F32,
    #[serde(rename = "FP64")]
    F64,
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DType {
    pub const ALL: [DType; 13] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::Bytes,
    ];

    /// The Open Inference Protocol's name for this type (`FP32`, `INT64`, …).
    pub fn oip_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::Bytes => "BYTES",
        }
    }

    pub fn from_oip_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.oip_name() == s)
    }

    /// Maps ONNX `TensorProto.DataType` codes. Returns `None` for types Ferry
    /// does not serve (complex, bfloat16, float8).
    pub fn from_onnx(code: i32) -> Option<Self> {
        Some(match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            4 => DType::U16,
            5 => DType::I16,
            6 => DType::I32,
            7 => DType::I64,
            8 => DType::Bytes,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            12 => DType::U32,
            13 => DType::U64,
            _ => return None,
        })
    }

    /// Size of one element in bytes; `None` for variable-length `BYTES`.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.oip_name())
    }
}

/// One dimension of a tensor shape: fixed, or symbolic (`N`, `batch`), which
/// any size satisfies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    Fixed(u64),
    Symbolic(String),
}

impl Dim {
    pub fn accepts(&self, n: u64) -> bool {
        match self {
            Dim::Fixed(d) => *d == n,
            Dim::Symbolic(_) => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// Name, element type and shape of one model input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// Whether a concrete shape fits this spec (same rank, fixed dims equal).
    pub fn accepts_shape(&self, shape: &[u64]) -> bool {
        shape.len() == self.shape.len() && self.shape.iter().zip(shape).all(|(d, n)| d.accepts(*n))
    }

    /// The width of a `[batch, features]` input: the last dimension when fixed.
    pub fn feature_width(&self) -> Option<u64> {
        match self.shape.last() {
            Some(Dim::Fixed(n)) if self.shape.len() == 2 => Some(*n),
            _ => None,
        }
    }

    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(ToString::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// A model's interface: what a request must carry and what comes back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Schema {
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }
    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// Tensor contents, flattened in row-major order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TensorData {
    Bool(Vec<bool>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::Bool(_) => DType::Bool,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::Bytes(_) => DType::Bytes,
        }
    }
    /// Whether these values can feed an input of element type `d`: the same
    /// type, or numbers for a numeric input (OIP JSON widens integers).
    pub fn fits(&self, d: DType) -> bool {
        match self {
            TensorData::Bytes(_) => d == DType::Bytes,
            TensorData::Bool(_) => d == DType::Bool,
            TensorData::F32(_) | TensorData::F64(_) => {
                matches!(d, DType::F16 | DType::F32 | DType::F64)
            }
            TensorData::I32(_) | TensorData::I64(_) => !matches!(d, DType::Bytes | DType::Bool),
        }
    }

    /// Numeric contents widened to f64 (for comparisons with a tolerance).
    pub fn as_f64(&self) -> Option<Vec<f64>> {
        Some(match self {
            TensorData::Bool(v) => v.iter().map(|b| f64::from(u8::from(*b))).collect(),
            TensorData::I32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::I64(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::Bytes(_) => return None,
        })
    }
}

/// A named, shaped tensor value (used by test vectors and frames).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub data: TensorData,
}

impl Tensor {
    /// Whether the element count matches the shape.
    pub fn is_consistent(&self) -> bool {
        let expected = self
            .shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d));
        expected == Some(self.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_path_tricks() {
        for bad in ["", "../x", "a/b", ".hidden", "-flag", "a b", "é"] {
            assert!(ModelName::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["fraud", "fraud-v2", "churn_model.x", "A1"] {
            assert!(ModelName::new(good).is_ok(), "{good:?} refused");
        }
        assert!(ModelName::new("x".repeat(129)).is_err());
    }

    #[test]
    fn oip_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_oip_name(d.oip_name()), Some(d));
        }
        assert_eq!(DType::from_oip_name("FLOAT"), None);
    }

    #[test]
    fn shape_acceptance() {
        let spec = TensorSpec {
            name: "input".into(),
            dtype: DType::F32,
            shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(30)],
        };
        assert!(spec.accepts_shape(&[1, 30]));
        assert!(spec.accepts_shape(&[1000, 30]));
        assert!(!spec.accepts_shape(&[1, 29]));
        assert!(!spec.accepts_shape(&[30]));
        assert_eq!(spec.feature_width(), Some(30));
    }
}
