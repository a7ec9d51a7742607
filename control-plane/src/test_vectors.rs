//! Test vectors as operators write them: JSON tensors in the Open Inference
//! Protocol's shape (`shape`, `datatype`, `data`), keyed by tensor name.
//!
//! ```json
//! {"tolerance": 1e-4, "vectors": [{"inputs": {"input": {"shape": [1, 30],
//!   "datatype": "FP32", "data": [...]}}, "outputs": {"label": {...}}}]}
//! ```

use ferry_protocol::manifest::{TestVector, TestVectors};
use ferry_protocol::model::{DType, Tensor, TensorData};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TestVectorError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("vector {index}, tensor {name:?}: {reason}")]
    Tensor {
        index: usize,
        name: String,
        reason: String,
    },
}

#[derive(Deserialize)]
struct FileVectors {
    tolerance: f64,
    vectors: Vec<FileVector>,
}

#[derive(Deserialize)]
struct FileVector {
    inputs: BTreeMap<String, FileTensor>,
    outputs: BTreeMap<String, FileTensor>,
}

#[derive(Deserialize)]
struct FileTensor {
    shape: Vec<u64>,
    datatype: String,
    data: Vec<serde_json::Value>,
}

pub fn read(path: &Path) -> Result<TestVectors, TestVectorError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TestVectorError::Read {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    let file: FileVectors = serde_json::from_str(&text).map_err(|e| TestVectorError::Read {
        path: p,
        reason: e.to_string(),
    })?;
    let vectors = file
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            Ok(TestVector {
                inputs: convert(index, v.inputs)?,
                outputs: convert(index, v.outputs)?,
            })
        })
        .collect::<Result<_, TestVectorError>>()?;
    Ok(TestVectors {
        tolerance: file.tolerance,
        vectors,
    })
}

fn convert(
    index: usize,
    tensors: BTreeMap<String, FileTensor>,
) -> Result<Vec<Tensor>, TestVectorError> {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let err = |reason: String| TestVectorError::Tensor {
                index,
                name: name.clone(),
                reason,
            };
            let dtype = DType::from_oip_name(&t.datatype)
                .ok_or_else(|| err(format!("unknown datatype {:?}", t.datatype)))?;
            let num = |v: &serde_json::Value| {
                v.as_f64()
                    .ok_or_else(|| err(format!("{v} is not a number")))
            };
            let data = match dtype {
                DType::F32 | DType::F16 => TensorData::F32(
                    t.data
                        .iter()
                        .map(|v| num(v).map(|x| x as f32))
                        .collect::<Result<_, _>>()?,
                ),
                DType::F64 => TensorData::F64(t.data.iter().map(num).collect::<Result<_, _>>()?),
                DType::I64 | DType::U64 | DType::U32 => TensorData::I64(
                    t.data
                        .iter()
                        .map(|v| {
                            v.as_i64()
                                .ok_or_else(|| err(format!("{v} is not an integer")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                DType::I32 | DType::I16 | DType::I8 | DType::U16 | DType::U8 => TensorData::I32(
                    t.data
                        .iter()
                        .map(|v| {
                            v.as_i64()
                                .and_then(|x| i32::try_from(x).ok())
                                .ok_or_else(|| err(format!("{v} is not a 32-bit integer")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                DType::Bool => TensorData::Bool(
                    t.data
                        .iter()
                        .map(|v| v.as_bool().ok_or_else(|| err(format!("{v} is not a bool"))))
                        .collect::<Result<_, _>>()?,
                ),
                DType::Bytes => TensorData::Bytes(
                    t.data
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(|s| s.as_bytes().to_vec())
                                .ok_or_else(|| err(format!("{v} is not a string")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            let tensor = Tensor {
                name: name.clone(),
                shape: t.shape,
                data,
            };
            if !tensor.is_consistent() {
                return Err(err("shape does not match the number of values".into()));
            }
            Ok(tensor)
        })
        .collect()
}
