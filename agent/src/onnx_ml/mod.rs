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
mod label_encoder;
mod labels;
mod linear;
pub(crate) mod node;
mod post;
mod preprocess;
mod svm;
mod svm_regressor;
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

fn label_encoder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    check_domain(node)?;
    let kernel = label_encoder::LabelEncoder::parse(node, |t| ctx.load_tensor(t))?;
    Ok((node::expansion(kernel), vec![]))
}

builder!(scaler, preprocess::Scaler::parse);
builder!(normalizer, preprocess::Normalizer::parse);
builder!(imputer, preprocess::Imputer::parse);
builder!(binarizer, preprocess::Binarizer::parse);
builder!(one_hot, encoders::OneHotEncoder::parse);
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
builder!(svm_regressor, svm_regressor::SvmRegressor::parse);

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

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::AttributeProto;

    fn node(op: &str, domain: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            domain: domain.into(),
            attribute: attrs,
            input: vec!["x".into()],
            output: vec!["y".into()],
            ..Default::default()
        }
    }

    fn floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            floats: v.to_vec(),
            ..Default::default()
        }
    }

    fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn refusals_name_the_operator_and_attribute() {
        let err = check_domain(&node("Scaler", "", vec![])).unwrap_err();
        assert!(err.to_string().contains("ai.onnx.ml expected"), "{err}");

        let scaler = node(
            "Scaler",
            ML_DOMAIN,
            vec![floats("scale", &[1.0, 2.0]), floats("offset", &[0.0])],
        );
        let err = preprocess::Scaler::parse(&scaler).unwrap_err().to_string();
        assert!(err.starts_with("Scaler: attribute offset"), "{err}");

        let le = node(
            "LabelEncoder",
            ML_DOMAIN,
            vec![AttributeProto {
                name: "keys_tensor".into(),
                t: Some(Default::default()),
                ..Default::default()
            }],
        );
        let err = label_encoder::LabelEncoder::parse(&le, |_| {
            Err(tract_onnx::prelude::TractError::msg("no data"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("keys_tensor cannot be read"), "{err}");

        let norm = node("Normalizer", ML_DOMAIN, vec![string("norm", "L3")]);
        let err = preprocess::Normalizer::parse(&norm)
            .unwrap_err()
            .to_string();
        assert!(err.contains("norm is \"L3\""), "{err}");

        let svr = node(
            "SVMRegressor",
            ML_DOMAIN,
            vec![
                floats("coefficients", &[1.0]),
                floats("rho", &[0.0]),
                string("post_transform", "PROBIT"),
            ],
        );
        let err = svm_regressor::SvmRegressor::parse(&svr)
            .unwrap_err()
            .to_string();
        assert!(err.contains("post_transform"), "{err}");

        let svc = node(
            "SVMClassifier",
            ML_DOMAIN,
            vec![
                floats("coefficients", &[1.0, 1.0]),
                floats("rho", &[0.0]),
                string("kernel_type", "CUBIC"),
            ],
        );
        let err = svm::SvmClassifier::parse(&svc).unwrap_err().to_string();
        assert!(err.contains("kernel_type is \"CUBIC\""), "{err}");
    }
}
