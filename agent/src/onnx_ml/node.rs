//! The tract plumbing every ONNX-ML operator here shares: a [`Kernel`] says
//! what its outputs are and computes them; [`expansion`] wraps it for tract's
//! ONNX parser (inference rules, then one typed node wired in its place).

use std::fmt::Debug;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceOp, InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::{expand, Expansion};
use tract_onnx::tract_hir::tract_core::internal::{
    as_op, op_as_typed_op, op_out_of_plan, EvalContext, EvalOp, Op, StaticName, TypedOp,
};

use super::MlError;

/// One ONNX-ML operator with its attributes parsed and validated.
pub(crate) trait Kernel: Debug + Clone + PartialEq + Send + Sync + 'static {
    /// The ONNX operator name, for plans and errors.
    fn name(&self) -> &'static str;

    fn n_outputs(&self) -> usize {
        1
    }

    /// What the parser can know before the graph is typed: element types,
    /// ranks, dimensions tied to the input's.
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult;

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;

    /// tract's own ops for this node when they compute exactly the same
    /// thing for these inputs (and tract can optimise them further);
    /// `None` wires the kernel.
    fn wire_native(
        &self,
        _prefix: &str,
        _model: &mut TypedModel,
        _inputs: &[OutletId],
    ) -> TractResult<Option<TVec<OutletId>>> {
        Ok(None)
    }
}

/// The parser's side: an expansion into one [`MlOp`].
pub(crate) fn expansion<K: Kernel>(kernel: K) -> Box<dyn InferenceOp> {
    expand(MlExpansion(kernel))
}

#[derive(Debug, Clone)]
struct MlExpansion<K>(K);

impl<K: Kernel> Expansion for MlExpansion<K> {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.n_outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if outputs.len() != self.0.n_outputs() {
            return Err(MlError::Graph {
                op: self.0.name(),
                reason: format!(
                    "has {} outputs; {} expected",
                    outputs.len(),
                    self.0.n_outputs()
                ),
            }
            .into());
        }
        self.0.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        match self.0.wire_native(prefix, model, inputs)? {
            Some(outlets) => Ok(outlets),
            None => model.wire_node(prefix, MlOp(self.0.clone()), inputs),
        }
    }
}

/// The typed node that runs a [`Kernel`] in a plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MlOp<K>(pub K);

// Equality only merges identical nodes; NaN attributes merely make two
// nodes compare unequal, which is safe.
impl<K: Kernel> Eq for MlOp<K> {}

impl<K: Kernel> Op for MlOp<K> {
    fn name(&self) -> StaticName {
        format!("Ferry{}", self.0.name()).into()
    }

    op_as_typed_op!();
}

impl<K: Kernel> EvalOp for MlOp<K> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(inputs)
    }
}

impl<K: Kernel> TypedOp for MlOp<K> {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }

    as_op!();
}
