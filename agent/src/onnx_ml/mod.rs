//! The ONNX-ML (`ai.onnx.ml`) operators exporters emit by default, run by our
//! own code inside tract: scikit-learn's StandardScaler + LogisticRegression
//! through skl2onnx becomes `Scaler` + `LinearClassifier`, an SVC becomes
//! `SVMClassifier`, and so on.
//!
//! Each operator is a [`node::Kernel`]: attributes parsed and checked once at
//! load (a value the spec or onnxruntime leaves undefined is refused, naming
//! the attribute), then evaluated on whole batches. Results follow
//! onnxruntime 1.32's CPU kernels, including its quirks where they are the
//! only defined behaviour (binary score layouts, its approximate PROBIT).
//!
//! `ZipMap` returns a sequence of maps in ONNX. Here it passes the
//! probability tensor through unchanged: a served model answers with the
//! float32 `[N, classes]` tensor, columns in the order of the operator's
//! class labels (the same order onnxruntime's dicts list them in), and the
//! control plane records that output in the schema as such.
//!
//! String tensors work inside a graph (`CategoryMapper`, `LabelEncoder`,
//! string class labels); the OIP API itself neither takes nor returns them.

mod attrs;
mod encoders;
mod features;
mod labels;
mod linear;
pub(crate) mod node;
mod post;
mod preprocess;
mod svm;
mod values;
mod zipmap;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::TractResult;
use tract_onnx::tract_hir::infer::InferenceOp;

pub use post::PostTransform;

const ML_DOMAIN: &str = "ai.onnx.ml";

/// Why an ONNX-ML node was refused or could not run.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
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
    /// The node's place in the graph does not fit the operator.
    #[error("{op}: {reason}")]
    Graph { op: &'static str, reason: String },
    /// A tensor given at run time does not fit the model.
    #[error("{op} input: {reason}")]
    Input { op: &'static str, reason: String },
}

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

fn check_domain(node: &NodeProto) -> Result<(), MlError> {
    if node.domain == ML_DOMAIN {
        Ok(())
    } else {
        Err(MlError::Domain {
            op: node.op_type.clone(),
            domain: node.domain.clone(),
        })
    }
}

macro_rules! builder {
    ($name:ident, $parse:path) => {
        fn $name(_ctx: &ParsingContext, node: &NodeProto) -> Built {
            check_domain(node)?;
            Ok((node::expansion($parse(node)?), vec![]))
        }
    };
}

builder!(scaler, preprocess::Scaler::parse);
builder!(normalizer, preprocess::Normalizer::parse);
builder!(imputer, preprocess::Imputer::parse);
builder!(binarizer, preprocess::Binarizer::parse);
builder!(one_hot, encoders::OneHotEncoder::parse);
builder!(label_encoder, encoders::LabelEncoder::parse);
builder!(category_mapper, encoders::CategoryMapper::parse);
builder!(feature_vectorizer, features::FeatureVectorizer::parse);
builder!(
    array_feature_extractor,
    features::ArrayFeatureExtractor::parse
);
builder!(zip_map, zipmap::ZipMap::parse);
builder!(linear_classifier, linear::LinearClassifier::parse);
builder!(linear_regressor, linear::LinearRegressor::parse);
builder!(svm_classifier, svm::SvmClassifier::parse);
builder!(svm_regressor, svm::SvmRegressor::parse);

/// Make `onnx` build these ONNX-ML nodes with Ferry's kernels (replacing
/// tract's own, where it has one).
pub fn register(onnx: &mut tract_onnx::Onnx) {
    let reg = &mut onnx.op_register;
    reg.insert("Scaler", scaler);
    reg.insert("Normalizer", normalizer);
    reg.insert("Imputer", imputer);
    reg.insert("Binarizer", binarizer);
    reg.insert("OneHotEncoder", one_hot);
    reg.insert("LabelEncoder", label_encoder);
    reg.insert("CategoryMapper", category_mapper);
    reg.insert("FeatureVectorizer", feature_vectorizer);
    reg.insert("ArrayFeatureExtractor", array_feature_extractor);
    reg.insert("ZipMap", zip_map);
    reg.insert("LinearClassifier", linear_classifier);
    reg.insert("LinearRegressor", linear_regressor);
    reg.insert("SVMClassifier", svm_classifier);
    reg.insert("SVMRegressor", svm_regressor);
}
