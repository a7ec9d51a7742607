//! `ZipMap`: in ONNX a sequence of `{label: probability}` maps. Here the
//! probability tensor passes through unchanged (see the module docs): the
//! OIP answer is the float32 `[N, classes]` tensor, columns in class-label
//! order.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::internal::check_input_arity;

use super::attrs::Attrs;
use super::node::Kernel;
use super::values::{arg, input_err};
use super::MlError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ZipMap {
    classes: usize,
}

impl ZipMap {
    pub fn parse(node: &NodeProto) -> Result<Self, MlError> {
        let a = Attrs::new("ZipMap", node);
        let ints = a.ints("classlabels_int64s");
        let strs = a.strings("classlabels_strings")?;
        let classes = match (ints.is_empty(), strs.is_empty()) {
            (false, true) => ints.len(),
            (true, false) => strs.len(),
            _ => {
                return Err(a.err(
                    "classlabels_int64s",
                    "or classlabels_strings: exactly one must be given, not empty",
                ))
            }
        };
        Ok(Self { classes })
    }
}

impl Kernel for ZipMap {
    fn name(&self) -> &'static str {
        "ZipMap"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        s.equals(&inputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&inputs[0].shape[1], self.classes.to_dim())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = arg("ZipMap", &inputs, 0)?;
        if x.rank() != 2 || x.shape()[1] != self.classes {
            return Err(input_err(
                "ZipMap",
                format!("shape {:?}; [N, {}] expected", x.shape(), self.classes),
            ));
        }
        Ok(tvec!(inputs[0].clone()))
    }
}
