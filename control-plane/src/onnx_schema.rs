//! Reads an ONNX graph's interface (inputs, outputs, element types, shapes)
//! without building an execution plan, so models with operators the CPU
//! runtime lacks can still be described and bundled.

use ferry_protocol::model::{DType, Dim, Schema, TensorSpec};
use std::collections::BTreeSet;
use std::path::Path;
use tract_onnx::pb::{tensor_shape_proto::dimension, type_proto, GraphProto, ValueInfoProto};
use tract_onnx::prelude::Framework;

/// How the schema records a dynamic dimension the graph leaves unnamed.
pub const UNNAMED: &str = "?";

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
    /// A tree ensemble in the graph sends missing values (NaN) down a
    /// chosen branch (`nodes_missing_value_tracks_true`), or an `Imputer`
    /// replaces NaN (`replaced_value_float` NaN, scikit-learn's
    /// SimpleImputer): the model takes NaN inputs by design.
    pub tracks_missing_values: bool,
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
    let tracks_missing_values = graph.node.iter().any(|n| {
        let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
        match n.op_type.as_str() {
            t if t.starts_with("TreeEnsemble") => attr("nodes_missing_value_tracks_true")
                .is_some_and(|a| a.ints.iter().any(|v| *v != 0)),
            "Imputer" => {
                attr("imputed_value_floats").is_some_and(|a| !a.floats.is_empty())
                    && attr("replaced_value_float").is_some_and(|a| a.f.is_nan())
            }
            _ => false,
        }
    });
    Ok(OnnxInfo {
        schema: Schema { inputs, outputs },
        operators,
        opsets,
        tracks_missing_values,
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
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as u64),
                Some(dimension::Value::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                // Unnamed (no value, `-1`, an empty name): dynamic. The agent
                // gives each such dimension a symbol of its own.
                _ => Dim::Symbolic(UNNAMED.into()),
            })
            .collect(),
    };
    Ok(TensorSpec {
        name: v.name.clone(),
        dtype,
        shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(path)
    }

    /// Missing-value tracking is read from the tree ensembles' attributes:
    /// HistGradientBoosting trained with NaN has it, a logistic regression
    /// and a random forest do not.
    #[test]
    fn tree_ensembles_that_route_missing_values_are_recognised() {
        assert!(
            read(&fixture("trees/hgb_bin.onnx"))
                .unwrap()
                .tracks_missing_values
        );
        assert!(
            !read(&fixture("trees/rf_bin.onnx"))
                .unwrap()
                .tracks_missing_values
        );
        assert!(
            !read(&fixture("models/bc_logreg.onnx"))
                .unwrap()
                .tracks_missing_values
        );
        // skl2onnx's SimpleImputer: an ai.onnx.ml Imputer replacing NaN.
        assert!(
            read(&fixture("onnx_ml/imputer_scaler_logreg.onnx"))
                .unwrap()
                .tracks_missing_values
        );
        assert!(
            !read(&fixture("onnx_ml/scaler_logreg_bin.onnx"))
                .unwrap()
                .tracks_missing_values
        );
    }
}
