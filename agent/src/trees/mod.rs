//! Tree-ensemble models (ONNX-ML `TreeEnsembleClassifier` / `TreeEnsembleRegressor`)
//! evaluated by our own code inside tract.
//!
//! tract's own tree op is correct but walks one row through one tree at a time
//! (and has no regressor). [`register`] replaces the ONNX op builders so that
//! each tree-ensemble node becomes one [`op::TreeEnsembleOp`]: the attributes
//! are parsed and validated once at model load ([`parse`]) into a compact
//! level-ordered layout, and batches are scored by interleaved, branch-free
//! walks ([`ensemble`]). The rest of the graph (casts, scalers, outputs) stays
//! in tract. Results follow onnxruntime's float32 semantics: same labels,
//! scores within float rounding.

mod complete;
pub mod ensemble;
mod node;
pub mod op;
pub mod parse;

pub use ensemble::{set_threads, threads, Ensemble, Prediction};
pub use parse::parse_node;

/// Why a tree ensemble was refused or could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// An attribute is missing, inconsistent or has an unsupported value.
    #[error("{op}: attribute {attr} {reason}")]
    Attribute {
        op: &'static str,
        attr: String,
        reason: String,
    },
    /// The op type is registered under a domain other than `ai.onnx.ml`.
    #[error("{op} in domain {domain:?} is not supported; ai.onnx.ml expected")]
    Domain { op: String, domain: String },
    /// The input tensor does not fit the model.
    #[error("tree ensemble input: {0}")]
    Input(String),
}

/// Make `onnx` build tree-ensemble nodes with Ferry's evaluator.
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register
        .insert("TreeEnsembleClassifier", op::classifier_builder);
    onnx.op_register
        .insert("TreeEnsembleRegressor", op::regressor_builder);
}

/// tract's ONNX framework with the tree-ensemble builders registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    register(&mut onnx);
    onnx
}
