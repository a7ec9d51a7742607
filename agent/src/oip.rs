//! Open Inference Protocol v2 (KServe/Triton REST) request and response
//! codec, including Triton's binary tensor extension that `tritonclient`
//! uses by default.
//!
//! Decoding validates against the manifest schema, so the runtime only ever
//! sees inputs of the right name, type, shape and element count.

mod non_finite;

pub use non_finite::NonFinite;
use non_finite::{first_non_finite, index_of};

use crate::engine::{Input, Output};
use ferry_protocol::{DType, Schema, TensorData};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Header carrying the JSON part's length when binary tensors follow it.
pub const HEADER_LEN: &str = "inference-header-content-length";

/// What was wrong with a request. Each becomes a 4xx with this message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unknown input tensor {name:?}; the model expects {expected}")]
    UnknownInput { name: String, expected: String },
    #[error("missing input tensor {0:?}")]
    MissingInput(String),
    #[error("input {0:?} appears more than once")]
    DuplicateInput(String),
    #[error("input {name:?}: datatype {got} does not match the model's {expected}")]
    DType {
        name: String,
        got: String,
        expected: DType,
    },
    #[error("input {name:?}: shape {got:?} does not match the model's {expected}")]
    Shape {
        name: String,
        got: Vec<i64>,
        expected: String,
    },
    #[error("input {name:?}: shape {shape:?} needs {expected} elements, got {got}")]
    ElementCount {
        name: String,
        shape: Vec<u64>,
        expected: u64,
        got: u64,
    },
    #[error("input {name:?}: {reason}")]
    Data { name: String, reason: String },
    #[error("unknown output {name:?}; the model has {expected}")]
    UnknownOutput { name: String, expected: String },
    #[error("binary data: {0}")]
    Binary(String),
    #[error("input {name:?}: {rows} rows, at most {limit} per request for this model")]
    TooManyRows { name: String, rows: u64, limit: u64 },
    #[error(
        "input {:?}: {} is {}, not a finite {} number; this model accepts only finite \
         inputs (its manifest does not tag {}={})",
        .0.name, .0.at, .0.value, .0.dtype,
        ferry_protocol::manifest::NON_FINITE_TAG, ferry_protocol::manifest::NON_FINITE_ACCEPT
    )]
    NonFinite(NonFinite),
}

impl RequestError {
    /// A stable short code for the JSON error body and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Json(_) => "invalid_json",
            RequestError::UnknownInput { .. } => "unknown_input",
            RequestError::MissingInput(_) => "missing_input",
            RequestError::DuplicateInput(_) => "duplicate_input",
            RequestError::DType { .. } => "wrong_datatype",
            RequestError::Shape { .. } => "wrong_shape",
            RequestError::ElementCount { .. } => "wrong_element_count",
            RequestError::Data { .. } => "bad_data",
            RequestError::UnknownOutput { .. } => "unknown_output",
            RequestError::Binary(_) => "bad_binary_data",
            RequestError::TooManyRows { .. } => "too_many_rows",
            RequestError::NonFinite(_) => "non_finite",
        }
    }
}

/// A JSON scalar inside a (possibly nested) `data` array.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    F(f64),
    I(i64),
    U(u64),
    B(bool),
    S(String),
}

/// `data`, flattened in row-major order whatever its nesting.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Flat(pub Vec<Scalar>);

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(&'a mut Vec<Scalar>);
        impl<'de> de::DeserializeSeed<'de> for V<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> Visitor<'de> for V<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, boolean, string or (nested) array of them")
            }
            fn visit_f64<E>(self, v: f64) -> Result<(), E> {
                self.0.push(Scalar::F(v));
                Ok(())
            }
            fn visit_i64<E>(self, v: i64) -> Result<(), E> {
                self.0.push(Scalar::I(v));
                Ok(())
            }
            fn visit_u64<E>(self, v: u64) -> Result<(), E> {
                self.0.push(Scalar::U(v));
                Ok(())
            }
            fn visit_bool<E>(self, v: bool) -> Result<(), E> {
                self.0.push(Scalar::B(v));
                Ok(())
            }
            fn visit_str<E>(self, v: &str) -> Result<(), E> {
                self.0.push(Scalar::S(v.to_string()));
                Ok(())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(V(&mut *self.0))?.is_some() {}
                Ok(())
            }
        }
        let mut out = Vec::new();
        de::DeserializeSeed::deserialize(V(&mut out), d)?;
        Ok(Flat(out))
    }
}

#[derive(Debug, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub data: Option<Flat>,
}

#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// A decoded, schema-checked request.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub id: Option<String>,
    /// `parameters.routing_key`, if the client set one.
    pub routing_key: Option<String>,
    /// Inputs in schema order.
    pub inputs: Vec<Input>,
    /// Which outputs to return (schema indices) and whether each is binary.
    pub outputs: Vec<(usize, bool)>,
    /// The first NaN or infinite input value, if any.
    pub non_finite: Option<NonFinite>,
}

fn names(specs: &[ferry_protocol::TensorSpec]) -> String {
    let n: Vec<String> = specs.iter().map(|s| format!("{:?}", s.name)).collect();
    n.join(", ")
}

fn bool_param(p: &Option<Map<String, Value>>, key: &str) -> Option<bool> {
    p.as_ref().and_then(|m| m.get(key)).and_then(Value::as_bool)
}

/// Decodes an infer request body. `json_len` is the
/// `Inference-Header-Content-Length` header when present: the JSON part is
/// that long and binary tensor data follows. An input whose first (batch)
/// dimension is over `max_rows` is refused before its data is converted.
pub fn decode(
    body: &[u8],
    json_len: Option<usize>,
    schema: &Schema,
    max_rows: u64,
) -> Result<Decoded, RequestError> {
    let (json, mut binary) = match json_len {
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(RequestError::Binary(format!(
                "header length {n} exceeds the body's {} bytes",
                body.len()
            )))
        }
        None => (body, &[][..]),
    };
    let req: InferRequest =
        serde_json::from_slice(json).map_err(|e| RequestError::Json(e.to_string()))?;
    let mut slots: Vec<Option<Input>> = vec![None; schema.inputs.len()];
    let mut non_finite = None;
    for input in req.inputs {
        let Some(idx) = schema.inputs.iter().position(|s| s.name == input.name) else {
            return Err(RequestError::UnknownInput {
                name: input.name,
                expected: names(&schema.inputs),
            });
        };
        let spec = &schema.inputs[idx];
        if slots[idx].is_some() {
            return Err(RequestError::DuplicateInput(input.name));
        }
        let dtype = DType::from_oip_name(&input.datatype);
        if dtype != Some(spec.dtype) {
            return Err(RequestError::DType {
                name: input.name,
                got: input.datatype,
                expected: spec.dtype,
            });
        }
        if input.shape.iter().any(|d| *d < 0) {
            return Err(RequestError::Shape {
                name: input.name,
                got: input.shape,
                expected: spec.shape_string(),
            });
        }
        if input.shape.contains(&0) {
            return Err(RequestError::Shape {
                name: input.name,
                got: input.shape,
                expected: format!("{} with no zero dimension", spec.shape_string()),
            });
        }
        let shape: Vec<u64> = input.shape.iter().map(|d| *d as u64).collect();
        if let Some(&rows) = shape.first().filter(|r| **r > max_rows) {
            return Err(RequestError::TooManyRows {
                name: input.name,
                rows,
                limit: max_rows,
            });
        }
        if !spec.accepts_shape(&shape) {
            return Err(RequestError::Shape {
                name: input.name,
                got: input.shape,
                expected: spec.shape_string(),
            });
        }
        let expected = shape
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(*d))
            .ok_or_else(|| RequestError::Data {
                name: input.name.clone(),
                reason: "shape overflows".into(),
            })?;
        let binary_size = input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
            .and_then(Value::as_u64);
        let data = match (binary_size, input.data) {
            (Some(size), _) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(RequestError::Binary(format!(
                        "input {:?} declares {size} bytes, {} remain",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                from_binary(&input.name, spec.dtype, mine, expected)?
            }
            (None, Some(flat)) => {
                if flat.0.len() as u64 != expected {
                    return Err(RequestError::ElementCount {
                        name: input.name,
                        shape,
                        expected,
                        got: flat.0.len() as u64,
                    });
                }
                let (data, overflow) = from_json(&input.name, spec.dtype, flat.0)?;
                if let (None, Some((i, value))) = (&non_finite, overflow) {
                    non_finite = Some(NonFinite {
                        name: input.name.clone(),
                        at: index_of(&shape, i),
                        value,
                        dtype: spec.dtype,
                    });
                }
                data
            }
            (None, None) => {
                return Err(RequestError::Data {
                    name: input.name,
                    reason: "has neither \"data\" nor binary_data_size".into(),
                })
            }
        };
        if non_finite.is_none() {
            if let Some((i, value)) = first_non_finite(&data) {
                non_finite = Some(NonFinite {
                    name: input.name.clone(),
                    at: index_of(&shape, i),
                    value,
                    dtype: spec.dtype,
                });
            }
        }
        slots[idx] = Some(Input {
            shape: shape.iter().map(|d| *d as usize).collect(),
            data,
        });
    }
    let mut inputs = Vec::with_capacity(slots.len());
    for (slot, spec) in slots.into_iter().zip(&schema.inputs) {
        inputs.push(slot.ok_or_else(|| RequestError::MissingInput(spec.name.clone()))?);
    }
    let all_binary = bool_param(&req.parameters, "binary_data_output").unwrap_or(false);
    let outputs = match req.outputs {
        None => (0..schema.outputs.len()).map(|i| (i, all_binary)).collect(),
        Some(list) => {
            let mut v = Vec::with_capacity(list.len());
            for o in list {
                let Some(i) = schema.outputs.iter().position(|s| s.name == o.name) else {
                    return Err(RequestError::UnknownOutput {
                        name: o.name,
                        expected: names(&schema.outputs),
                    });
                };
                v.push((
                    i,
                    bool_param(&o.parameters, "binary_data").unwrap_or(all_binary),
                ));
            }
            v
        }
    };
    let routing_key = req
        .parameters
        .as_ref()
        .and_then(|p| p.get("routing_key"))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    Ok(Decoded {
        id: req.id,
        routing_key,
        inputs,
        outputs,
        non_finite,
    })
}

fn data_err(name: &str, reason: String) -> RequestError {
    RequestError::Data {
        name: name.to_string(),
        reason,
    }
}

/// JSON scalars as `dtype`; with the first finite number that overflows
/// FP32 (`1e40`), named as sent.
fn from_json(
    name: &str,
    dtype: DType,
    vals: Vec<Scalar>,
) -> Result<(TensorData, Option<(usize, String)>), RequestError> {
    let not = |i: usize, what: &str| data_err(name, format!("element {i} is not {what}"));
    let data = match dtype {
        DType::F32 | DType::F64 | DType::F16 => {
            let mut out = Vec::with_capacity(vals.len());
            for (i, v) in vals.iter().enumerate() {
                out.push(match v {
                    Scalar::F(x) => *x,
                    Scalar::I(x) => *x as f64,
                    Scalar::U(x) => *x as f64,
                    _ => return Err(not(i, "a number")),
                });
            }
            if dtype == DType::F64 {
                TensorData::F64(out)
            } else {
                let overflow = out
                    .iter()
                    .position(|x| x.is_finite() && !(*x as f32).is_finite())
                    .map(|i| (i, format!("{:e} (beyond FP32's range)", out[i])));
                let data = TensorData::F32(out.into_iter().map(|x| x as f32).collect());
                return Ok((data, overflow));
            }
        }
        DType::Bool => vals
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Scalar::B(b) => Ok(*b),
                _ => Err(not(i, "a boolean")),
            })
            .collect::<Result<_, _>>()
            .map(TensorData::Bool)?,
        DType::Bytes => return Err(data_err(name, "BYTES inputs are not supported".into())),
        _ => {
            let (lo, hi) = int_range(dtype);
            let mut out = Vec::with_capacity(vals.len());
            for (i, v) in vals.iter().enumerate() {
                let x = match v {
                    Scalar::I(x) => i128::from(*x),
                    Scalar::U(x) => i128::from(*x),
                    _ => return Err(not(i, "an integer")),
                };
                if x < lo || x > hi {
                    return Err(data_err(
                        name,
                        format!("element {i} ({x}) is out of range for {dtype}"),
                    ));
                }
                out.push(x as i64);
            }
            TensorData::I64(out)
        }
    };
    Ok((data, None))
}

fn int_range(d: DType) -> (i128, i128) {
    match d {
        DType::U8 => (0, u8::MAX.into()),
        DType::U16 => (0, u16::MAX.into()),
        DType::U32 => (0, u32::MAX.into()),
        DType::U64 => (0, i64::MAX.into()),
        DType::I8 => (i8::MIN.into(), i8::MAX.into()),
        DType::I16 => (i16::MIN.into(), i16::MAX.into()),
        DType::I32 => (i32::MIN.into(), i32::MAX.into()),
        _ => (i64::MIN.into(), i64::MAX.into()),
    }
}

/// Little-endian raw tensor bytes (Triton binary extension).
fn from_binary(
    name: &str,
    dtype: DType,
    bytes: &[u8],
    count: u64,
) -> Result<TensorData, RequestError> {
    let size = dtype
        .size()
        .ok_or_else(|| data_err(name, "BYTES inputs are not supported".into()))?;
    if bytes.len() as u64 != count.saturating_mul(size as u64) {
        return Err(RequestError::ElementCount {
            name: name.to_string(),
            shape: vec![],
            expected: count,
            got: (bytes.len() / size) as u64,
        });
    }
    macro_rules! le {
        ($t:ty, $n:expr) => {
            bytes.chunks_exact($n).map(|c| {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                <$t>::from_le_bytes(a)
            })
        };
    }
    Ok(match dtype {
        DType::F32 => TensorData::F32(le!(f32, 4).collect()),
        DType::F64 => TensorData::F64(le!(f64, 8).collect()),
        DType::I64 => TensorData::I64(le!(i64, 8).collect()),
        DType::I32 => TensorData::I32(le!(i32, 4).collect()),
        DType::I16 => TensorData::I64(le!(i16, 2).map(i64::from).collect()),
        DType::I8 => TensorData::I64(bytes.iter().map(|b| i64::from(*b as i8)).collect()),
        DType::U8 => TensorData::I64(bytes.iter().map(|b| i64::from(*b)).collect()),
        DType::U16 => TensorData::I64(le!(u16, 2).map(i64::from).collect()),
        DType::U32 => TensorData::I64(le!(u32, 4).map(i64::from).collect()),
        DType::U64 => TensorData::I64(le!(u64, 8).map(|x| x as i64).collect()),
        DType::Bool => TensorData::Bool(bytes.iter().map(|b| *b != 0).collect()),
        DType::F16 | DType::Bytes => {
            return Err(data_err(
                name,
                format!("binary {dtype} inputs are not supported"),
            ))
        }
    })
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json escapes correctly; strings here are short.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn write_f32(out: &mut String, x: f32) {
    if x.is_finite() {
        let _ = write!(out, "{x}");
    } else {
        out.push_str("null");
    }
}

fn write_f64(out: &mut String, x: f64) {
    if x.is_finite() {
        let _ = write!(out, "{x}");
    } else {
        out.push_str("null");
    }
}

fn write_data(out: &mut String, d: &TensorData) {
    out.push('[');
    macro_rules! list {
        ($v:expr, $f:expr) => {
            for (i, x) in $v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                $f(&mut *out, x);
            }
        };
    }
    match d {
        TensorData::F32(v) => list!(v, |o: &mut String, x: &f32| write_f32(o, *x)),
        TensorData::F64(v) => list!(v, |o: &mut String, x: &f64| write_f64(o, *x)),
        TensorData::I64(v) => list!(v, |o: &mut String, x: &i64| {
            let _ = write!(o, "{x}");
        }),
        TensorData::I32(v) => list!(v, |o: &mut String, x: &i32| {
            let _ = write!(o, "{x}");
        }),
        TensorData::Bool(v) => list!(v, |o: &mut String, x: &bool| {
            o.push_str(if *x { "true" } else { "false" })
        }),
        TensorData::Bytes(v) => list!(v, |o: &mut String, x: &Vec<u8>| {
            push_json_str(o, &String::from_utf8_lossy(x))
        }),
    }
    out.push(']');
}

fn le_bytes(d: &TensorData) -> Vec<u8> {
    match d {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().map(|b| u8::from(*b)).collect(),
        TensorData::Bytes(v) => v
            .iter()
            .flat_map(|b| {
                let mut e = (b.len() as u32).to_le_bytes().to_vec();
                e.extend_from_slice(b);
                e
            })
            .collect(),
    }
}

/// An encoded response: the body and, when binary outputs follow the JSON,
/// the JSON part's length for the `Inference-Header-Content-Length` header.
pub struct Encoded {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

/// Encodes an infer response. Written by hand: this is the hot path and the
/// shape is fixed.
pub fn encode(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[Output],
    wanted: &[(usize, bool)],
) -> Encoded {
    let mut s = String::with_capacity(256);
    s.push_str("{\"model_name\":");
    push_json_str(&mut s, model);
    let _ = write!(s, ",\"model_version\":\"{version}\"");
    if let Some(id) = id {
        s.push_str(",\"id\":");
        push_json_str(&mut s, id);
    }
    s.push_str(",\"outputs\":[");
    let mut binary: Vec<u8> = Vec::new();
    let mut first = true;
    for &(i, bin) in wanted {
        let Some(o) = outputs.get(i) else { continue };
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str("{\"name\":");
        push_json_str(&mut s, &o.name);
        let _ = write!(
            s,
            ",\"datatype\":\"{}\",\"shape\":[",
            o.data.dtype().oip_name()
        );
        for (k, d) in o.shape.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            let _ = write!(s, "{d}");
        }
        s.push(']');
        if bin {
            let bytes = le_bytes(&o.data);
            let _ = write!(
                s,
                ",\"parameters\":{{\"binary_data_size\":{}}}",
                bytes.len()
            );
            binary.extend_from_slice(&bytes);
        } else {
            s.push_str(",\"data\":");
            write_data(&mut s, &o.data);
        }
        s.push('}');
    }
    s.push_str("]}");
    if binary.is_empty() {
        Encoded {
            body: s.into_bytes(),
            json_len: None,
        }
    } else {
        let json_len = s.len();
        let mut body = s.into_bytes();
        body.extend_from_slice(&binary);
        Encoded {
            body,
            json_len: Some(json_len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::{Dim, TensorSpec};

    fn schema() -> Schema {
        Schema {
            inputs: vec![TensorSpec {
                name: "input".into(),
                dtype: DType::F32,
                shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(2)],
            }],
            outputs: vec![TensorSpec {
                name: "label".into(),
                dtype: DType::I64,
                shape: vec![Dim::Symbolic("N".into())],
            }],
        }
    }

    #[test]
    fn nested_and_flat_data_decode_alike() {
        let a = br#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#;
        let b = br#"{"id":"x","inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}]}"#;
        let da = decode(a, None, &schema(), u64::MAX).unwrap();
        let db = decode(b, None, &schema(), u64::MAX).unwrap();
        assert_eq!(da.inputs[0].data, db.inputs[0].data);
        assert_eq!(db.id.as_deref(), Some("x"));
    }

    #[test]
    fn binary_inputs_decode() {
        let json = br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2f32).to_le_bytes());
        let d = decode(&body, Some(json.len()), &schema(), u64::MAX).unwrap();
        assert_eq!(d.inputs[0].data, TensorData::F32(vec![1.5, -2.0]));
    }

    /// `1e40` is a finite JSON number but infinite as FP32; NaN and
    /// infinity arrive as binary tensors. Each is found where the request
    /// put it, and refused unless the model accepts non-finite inputs.
    #[test]
    fn non_finite_values_are_found_and_refused_unless_accepted() {
        let json = br#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,1e40]]}]}"#;
        let d = decode(json, None, &schema(), u64::MAX).unwrap();
        let nf = d.non_finite.clone().unwrap();
        assert_eq!(nf.at, "data[1][1]");
        assert_eq!(nf.value, "1e40 (beyond FP32's range)");
        let e = d.check_finite(false).unwrap_err();
        assert_eq!(e.code(), "non_finite");
        let msg = e.to_string();
        assert!(msg.contains("\"input\": data[1][1] is 1e40"), "{msg}");
        assert!(msg.contains("ferry.non_finite_inputs=accept"), "{msg}");
        assert!(d.check_finite(true).is_ok());

        for (x, name) in [
            (f32::NAN, "NaN"),
            (f32::INFINITY, "inf"),
            (f32::NEG_INFINITY, "-inf"),
        ] {
            let json = br#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#;
            let mut body = json.to_vec();
            for v in [1.0, 2.0, x, 4.0f32] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            let d = decode(&body, Some(json.len()), &schema(), u64::MAX).unwrap();
            let nf = d.non_finite.clone().unwrap();
            assert_eq!((nf.at.as_str(), nf.value.as_str()), ("data[1][0]", name));
            assert!(d.check_finite(false).is_err());
        }

        // Finite values, and 1e40 as FP64, pass.
        let ok =
            br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[3.4e38,-1]}]}"#;
        assert!(decode(ok, None, &schema(), u64::MAX)
            .unwrap()
            .non_finite
            .is_none());
        let mut s64 = schema();
        s64.inputs[0].dtype = DType::F64;
        let big =
            br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP64","data":[1e40,1e300]}]}"#;
        assert!(decode(big, None, &s64, u64::MAX)
            .unwrap()
            .non_finite
            .is_none());
        assert_eq!(index_of(&[5], 3), "data[3]");
        assert_eq!(index_of(&[2, 3, 4], 23), "data[1][2][3]");
    }

    #[test]
    fn errors_name_the_problem() {
        let s = schema();
        let cases: &[(&[u8], &str)] = &[
            (b"{", "invalid_json"),
            (
                br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
                "unknown_input",
            ),
            (
                br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"INT64","data":[1,2]}]}"#,
                "wrong_datatype",
            ),
            (
                br#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
                "wrong_shape",
            ),
            (
                br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1]}]}"#,
                "wrong_element_count",
            ),
            (
                br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,"a"]}]}"#,
                "bad_data",
            ),
            (br#"{"inputs":[]}"#, "missing_input"),
        ];
        for (body, code) in cases {
            let e = decode(body, None, &s, u64::MAX).unwrap_err();
            assert_eq!(e.code(), *code, "{e}");
        }
    }

    #[test]
    fn a_batch_over_the_row_limit_is_refused_before_its_data_is_read() {
        // Binary tensors: 5 rows in 40 bytes.
        let json = br#"{"inputs":[{"name":"input","shape":[5,2],"datatype":"FP32","parameters":{"binary_data_size":40}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[0u8; 40]);
        let e = decode(&body, Some(json.len()), &schema(), 4).unwrap_err();
        assert_eq!(e.code(), "too_many_rows", "{e}");
        assert!(e.to_string().contains("at most 4"), "{e}");
        assert_eq!(
            decode(&body, Some(json.len()), &schema(), 5)
                .unwrap()
                .inputs[0]
                .shape,
            [5, 2]
        );
        // Refused on the declared shape alone, whatever the data.
        let huge =
            br#"{"inputs":[{"name":"input","shape":[100000000,2],"datatype":"FP32","data":[]}]}"#;
        assert_eq!(
            decode(huge, None, &schema(), 65_536).unwrap_err().code(),
            "too_many_rows"
        );
    }
}
