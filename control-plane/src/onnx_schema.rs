//! Reads an ONNX graph's interface (inputs, outputs, element types, shapes)
//! without building an execution plan, so models with operators the CPU
//! runtime lacks can still be described and bundled.

use ferry_protocol::model::{DType, Dim, Schema, TensorSpec};
use std::collections::BTreeSet;
use std::path::Path;
use tract_onnx::pb::{tensor_shape_proto::dimension, type_proto, GraphProto, ValueInfoProto};
use tract_onnx::prelude::Framework;

#[derive(Debug, thiserror::Error)]
pub enum OnnxSchemaError {
    #[error("{path}: not a readable ONNX model: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: the model has no graph")]
    NoGraph { path: String },
    #[error("tensor {name:?}: {reason}")]
    Tensor { name: String, reason: String },
}

/// The model's schema and the operators it uses (`domain:op`).
#[derive(Debug, Clone)]
pub struct OnnxInfo {
    pub schema: Schema,
    pub operators: BTreeSet<String>,
    pub opsets: Vec<(String, i64)>,
}

pub fn read(path: &Path) -> Result<OnnxInfo, OnnxSchemaError> {
    let p = path.display().to_string();
    let proto =
        tract_onnx::onnx()
            .proto_model_for_path(path)
            .map_err(|e| OnnxSchemaError::Parse {
                path: p.clone(),
                reason: format!("{e:#}"),
            })?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or(OnnxSchemaError::NoGraph { path: p })?;
    // Old exporters list initializers among the inputs; they are weights.
    let initializers: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<TensorSpec> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(spec)
        .collect::<Result<_, _>>()?;
    let outputs = graph
        .output
        .iter()
        .map(|o| match zipmap_output(graph, o, &inputs) {
            Some(s) => Ok(s),
            None => spec(o),
        })
        .collect::<Result<_, _>>()?;
    let operators = graph
        .node
        .iter()
        .map(|n| {
            if n.domain.is_empty() {
                n.op_type.clone()
            } else {
                format!("{}:{}", n.domain, n.op_type)
            }
        })
        .collect();
    let opsets = proto
        .opset_import
        .iter()
        .map(|o| (o.domain.clone(), o.version))
        .collect();
    Ok(OnnxInfo {
        schema: Schema { inputs, outputs },
        operators,
        opsets,
    })
}

/// A `ZipMap` output (a sequence of maps in ONNX) as the agent serves it:
/// the float32 `[N, classes]` probability tensor, columns in the order of
/// the operator's class labels.
fn zipmap_output(
    graph: &GraphProto,
    v: &ValueInfoProto,
    inputs: &[TensorSpec],
) -> Option<TensorSpec> {
    if matches!(
        v.r#type.as_ref().and_then(|t| t.value.as_ref()),
        Some(type_proto::Value::TensorType(_))
    ) {
        return None;
    }
    let node = graph.node.iter().find(|n| {
        n.op_type == "ZipMap" && n.domain == "ai.onnx.ml" && n.output.contains(&v.name)
    })?;
    let classes = node
        .attribute
        .iter()
        .find(|a| a.name == "classlabels_int64s" || a.name == "classlabels_strings")
        .map(|a| a.ints.len().max(a.strings.len()))?;
    let rows = inputs
        .first()
        .and_then(|i| i.shape.first().cloned())
        .unwrap_or_else(|| Dim::Symbolic("N".into()));
    Some(TensorSpec {
        name: v.name.clone(),
        dtype: DType::F32,
        shape: vec![rows, Dim::Fixed(classes as u64)],
    })
}

fn spec(v: &ValueInfoProto) -> Result<TensorSpec, OnnxSchemaError> {
    let err = |reason: &str| OnnxSchemaError::Tensor {
        name: v.name.clone(),
        reason: reason.into(),
    };
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(err("only tensor inputs and outputs are supported (not sequences or maps other than a ZipMap's)"));
    };
    let dtype = DType::from_onnx(t.elem_type)
        .ok_or_else(|| err(&format!("element type {} is not supported", t.elem_type)))?;
    let shape = match &t.shape {
        None => return Err(err("the graph declares no shape")),
        Some(s) => s
            .dim
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.value {
                Some(dimension::Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as u64),
                Some(dimension::Value::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                _ => Dim::Symbolic(format!("d{i}")),
            })
            .collect(),
    };
    Ok(TensorSpec {
        name: v.name.clone(),
        dtype,
        shape,
    })
}
