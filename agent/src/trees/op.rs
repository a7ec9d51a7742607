//! The tract side: op builders for the ONNX parser, and the typed op that runs
//! an [`Ensemble`] inside a tract plan.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceOp, InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::{check_input_arity, check_output_arity, expand, Expansion};
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::tract_ndarray::{Array1, Array2};

use super::ensemble::Ensemble;
use super::parse::parse_node;
use super::TreeError;

const ML_DOMAIN: &str = "ai.onnx.ml";

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

pub(crate) fn classifier_builder(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    build(node, true)
}

pub(crate) fn regressor_builder(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    build(node, false)
}

fn build(node: &NodeProto, classifier: bool) -> Built {
    if node.domain != ML_DOMAIN {
        return Err(TreeError::Domain {
            op: node.op_type.clone(),
            domain: node.domain.clone(),
        }
        .into());
    }
    let ensemble = Arc::new(parse_node(node, classifier)?);
    Ok((expand(TreeEnsembleExpansion { ensemble }), vec![]))
}

/// Inference-time shape rules; wires [`TreeEnsembleOp`] into the typed model.
#[derive(Debug, Clone)]
struct TreeEnsembleExpansion {
    ensemble: Arc<Ensemble>,
}

fn label_type(e: &Ensemble) -> DatumType {
    if e.has_string_labels() {
        DatumType::String
    } else {
        DatumType::I64
    }
}

impl Expansion for TreeEnsembleExpansion {
    fn name(&self) -> StaticName {
        "FerryTreeEnsemble".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(if self.ensemble.is_classifier() { 2 } else { 1 })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        let e = &self.ensemble;
        s.equals(&inputs[0].rank, 2)?;
        if e.is_classifier() {
            check_output_arity(outputs, 2)?;
            s.equals(&outputs[0].datum_type, label_type(e))?;
            s.equals(&outputs[0].rank, 1)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
            s.equals(&outputs[1].datum_type, DatumType::F32)?;
            s.equals(&outputs[1].rank, 2)?;
            s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
            s.equals(&outputs[1].shape[1], e.n_outputs().to_dim())?;
        } else {
            check_output_arity(outputs, 1)?;
            s.equals(&outputs[0].datum_type, DatumType::F32)?;
            s.equals(&outputs[0].rank, 2)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
            s.equals(&outputs[0].shape[1], e.n_outputs().to_dim())?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?.clone();
        if fact.rank() != 2 {
            return Err(TreeError::Input(format!(
                "input has rank {}; [rows, features] expected",
                fact.rank()
            ))
            .into());
        }
        if let Some(f) = fact.shape[1].as_i64() {
            if f < self.ensemble.n_features() as i64 {
                return Err(TreeError::Input(format!(
                    "the model reads feature {} but the input has {f} features",
                    self.ensemble.n_features() - 1
                ))
                .into());
            }
        }
        let mut input = inputs[0];
        match fact.datum_type {
            DatumType::F32 => {}
            // Integers compare as their float32 value in onnxruntime too.
            DatumType::I64 | DatumType::I32 => {
                input = model.wire_node(
                    format!("{prefix}.cast"),
                    tract_onnx::tract_hir::tract_core::ops::cast::cast(DatumType::F32),
                    &[input],
                )?[0];
            }
            other => {
                return Err(TreeError::Input(format!(
                "input element type {other:?} is not supported; float32, int32 or int64 expected"
            ))
                .into())
            }
        }
        model.wire_node(
            prefix,
            TreeEnsembleOp {
                ensemble: self.ensemble.clone(),
            },
            &[input],
        )
    }
}

/// Runs the whole ensemble, post-transform and labels in one node.
#[derive(Debug, Clone)]
pub struct TreeEnsembleOp {
    ensemble: Arc<Ensemble>,
}

impl PartialEq for TreeEnsembleOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ensemble, &other.ensemble) || self.ensemble == other.ensemble
    }
}

// Equality is only used to merge identical nodes; NaN thresholds merely make
// two ops compare unequal, which is safe.
impl Eq for TreeEnsembleOp {}

impl Op for TreeEnsembleOp {
    fn name(&self) -> StaticName {
        "FerryTreeEnsemble".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let e = &self.ensemble;
        Ok(vec![format!(
            "{} trees, {} outputs",
            e.n_trees(),
            e.n_outputs()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for TreeEnsembleOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs
            .first()
            .ok_or_else(|| TreeError::Input("no input tensor".into()))?;
        let shape = input.shape();
        if shape.len() != 2 {
            return Err(TreeError::Input(format!(
                "input has shape {shape:?}; [rows, features] expected"
            ))
            .into());
        }
        let (rows, stride) = (shape[0], shape[1]);
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let e = &self.ensemble;
        let p = e.eval(x, rows, stride)?;
        let scores = Array2::from_shape_vec((rows, e.n_outputs()), p.scores)?.into_tvalue();
        if !e.is_classifier() {
            return Ok(tvec!(scores));
        }
        let labels = match &e.kind {
            super::ensemble::Kind::Classifier {
                strings: Some(names),
                ..
            } => {
                let names: Vec<String> = p
                    .labels
                    .iter()
                    .map(|&i| names.get(i as usize).cloned().unwrap_or_default())
                    .collect();
                Array1::from_vec(names).into_tvalue()
            }
            _ => Array1::from_vec(p.labels).into_tvalue(),
        };
        Ok(tvec!(labels, scores))
    }
}

impl TypedOp for TreeEnsembleOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs
            .first()
            .and_then(|f| f.shape.iter().next())
            .ok_or_else(|| TreeError::Input("input has no row dimension".into()))?;
        let scores = f32::fact([n.clone(), self.ensemble.n_outputs().to_dim()]);
        if self.ensemble.is_classifier() {
            let labels = TypedFact::dt_shape(label_type(&self.ensemble), [n.clone()]);
            Ok(tvec!(labels, scores))
        } else {
            Ok(tvec!(scores))
        }
    }

    as_op!();
}
