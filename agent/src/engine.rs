//! The CPU runtime: a verified bundle's ONNX graph compiled by tract into an
//! optimised plan, run on validated inputs.
//!
//! Two plans are kept when the first input's batch dimension is symbolic: one
//! with the symbol left free (any batch size) and one specialised to the
//! batch size the engine is loaded for ([`PlanFor`]). Serving specialises to
//! one row, the common case on a device: a concrete plan skips shape
//! resolution on every call. Batch scoring specialises to its block size:
//! with concrete shapes tract picks matrix kernels that fit them (1.6× on
//! the digits MLP).

use ferry_protocol::{DType, Dim, Schema, TensorData};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

/// Why a model could not be made runnable. Each names what an operator must
/// fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model uses operator(s) this runtime does not support: {}", .0.join(", "))]
    UnsupportedOps(Vec<String>),
    #[error("model file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("tract cannot compile the model: {0}")]
    Compile(String),
    #[error("schema input {name:?} has type {dtype}, which the runtime cannot feed")]
    UnsupportedInputType { name: String, dtype: DType },
    #[error("the model's graph has {graph} inputs, the manifest schema {schema}")]
    InputCount { graph: usize, schema: usize },
}

/// A failure while running a validated request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("input {name:?}: {reason}")]
    Input { name: String, reason: String },
    #[error("model execution failed: {0}")]
    Exec(String),
    #[error("output {name:?} has element type {dtype}, which cannot be returned")]
    OutputType { name: String, dtype: String },
}

/// One validated input, in schema order.
#[derive(Clone, Debug)]
pub struct Input {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// One output as the runtime produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

#[derive(Clone)]
pub struct Engine {
    schema: Schema,
    any_batch: Plan,
    /// Plan specialised to `rows` rows, when the batch dimension is symbolic.
    fixed: Option<(usize, Plan)>,
}

/// The batch size an engine's specialised plan is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFor {
    /// Single-row requests (serving).
    Serving,
    /// Blocks of this many rows (offline scoring).
    Blocks(usize),
}

impl PlanFor {
    fn rows(self) -> usize {
        match self {
            PlanFor::Serving => 1,
            PlanFor::Blocks(n) => n.max(1),
        }
    }
}

fn datum_type(d: DType) -> Option<DatumType> {
    Some(match d {
        DType::Bool => DatumType::Bool,
        DType::U8 => DatumType::U8,
        DType::U16 => DatumType::U16,
        DType::U32 => DatumType::U32,
        DType::U64 => DatumType::U64,
        DType::I8 => DatumType::I8,
        DType::I16 => DatumType::I16,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::F16 => DatumType::F16,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::Bytes => return None,
    })
}

/// tract's ONNX front end with Ferry's operators: the tree-ensemble
/// evaluator and the other ONNX-ML operators.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::trees::register(&mut onnx);
    crate::onnx_ml::register(&mut onnx);
    onnx
}

/// Operators in `path`'s graph (and subgraphs) that tract has no builder for,
/// as `domain:Op`.
fn unsupported_ops(onnx: &tract_onnx::Onnx, proto: &tract_onnx::pb::ModelProto) -> Vec<String> {
    let known = &onnx.op_register.0;
    let mut missing = std::collections::BTreeSet::new();
    let mut stack: Vec<&tract_onnx::pb::GraphProto> = proto.graph.iter().collect();
    while let Some(g) = stack.pop() {
        for node in &g.node {
            if !known.contains_key(&node.op_type) {
                let name = if node.domain.is_empty() {
                    node.op_type.clone()
                } else {
                    format!("{}:{}", node.domain, node.op_type)
                };
                missing.insert(name);
            }
            for attr in &node.attribute {
                stack.extend(attr.g.iter());
                stack.extend(attr.graphs.iter());
            }
        }
    }
    missing.into_iter().collect()
}

fn compile(e: impl std::fmt::Debug) -> LoadError {
    // tract's errors are anyhow chains; `{:?}` keeps the causes.
    LoadError::Compile(format!("{e:?}").replace('\n', " "))
}

impl Engine {
    /// Loads and optimises `path` against the manifest `schema`.
    pub fn load(path: &Path, schema: &Schema) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::load_bytes(&bytes, schema)
    }

    /// Loads a model from its ONNX bytes (a verified bundle's artifact), for
    /// serving.
    pub fn load_bytes(bytes: &[u8], schema: &Schema) -> Result<Self, LoadError> {
        Self::load_bytes_for(bytes, schema, PlanFor::Serving)
    }

    /// Loads a model with its specialised plan built for `plan_for`.
    pub fn load_bytes_for(
        bytes: &[u8],
        schema: &Schema,
        plan_for: PlanFor,
    ) -> Result<Self, LoadError> {
        let onnx = onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| LoadError::Read {
                path: "(bundle artifact)".into(),
                reason: format!("not a valid ONNX protobuf: {e}"),
            })?;
        let missing = unsupported_ops(&onnx, &proto);
        if !missing.is_empty() {
            return Err(LoadError::UnsupportedOps(missing));
        }
        let mut model = onnx.model_for_proto_model(&proto).map_err(compile)?;
        if model.inputs.len() != schema.inputs.len() {
            return Err(LoadError::InputCount {
                graph: model.inputs.len(),
                schema: schema.inputs.len(),
            });
        }
        // Pin input facts from the schema so tract can type the whole graph;
        // symbolic dimensions stay symbols.
        let mut batch_symbol = None;
        for (i, spec) in schema.inputs.iter().enumerate() {
            let dt = datum_type(spec.dtype).ok_or_else(|| LoadError::UnsupportedInputType {
                name: spec.name.clone(),
                dtype: spec.dtype,
            })?;
            let dims: TVec<TDim> = spec
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => TDim::Val(*n as i64),
                    Dim::Symbolic(s) => {
                        let sym = model.sym(s);
                        if i == 0 && batch_symbol.is_none() {
                            batch_symbol = Some(sym.clone());
                        }
                        TDim::Sym(sym)
                    }
                })
                .collect();
            model
                .set_input_fact(i, InferenceFact::dt_shape(dt, dims))
                .map_err(compile)?;
        }
        let typed = model.into_typed().map_err(compile)?;
        let mut typed = typed.into_decluttered().map_err(compile)?;
        // Narrow matrix products with their bias and ReLU: one fused layer
        // each, with weights packed once here instead of per call.
        crate::dense::fuse(&mut typed).map_err(compile)?;
        // Softmax/argmax tails over a few classes: our row loops, not tract's.
        crate::rowops::substitute(&mut typed).map_err(compile)?;
        let rows = plan_for.rows();
        let fixed = match &batch_symbol {
            Some(sym)
                if schema
                    .inputs
                    .first()
                    .is_some_and(|s| s.shape.first() == Some(&Dim::Symbolic(sym.to_string()))) =>
            {
                let mut subs = HashMap::new();
                subs.insert(sym.clone(), TDim::Val(rows as i64));
                // A failure here only loses the fast path, not the model.
                typed
                    .set_symbols(&subs)
                    .and_then(|m| m.into_optimized())
                    .and_then(|m| m.into_runnable())
                    .ok()
                    .map(|p| (rows, p))
            }
            _ => None,
        };
        let any_batch = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(compile)?;
        Ok(Self {
            schema: schema.clone(),
            any_batch,
            fixed,
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Runs the model on inputs given in schema order (already validated
    /// against the schema by the caller).
    pub fn run(&self, inputs: Vec<Input>) -> Result<Vec<Output>, RunError> {
        let rows = inputs.first().and_then(|i| i.shape.first()).copied();
        let mut values: TVec<TValue> = TVec::with_capacity(inputs.len());
        for (spec, input) in self.schema.inputs.iter().zip(inputs) {
            values.push(to_tract(&spec.name, spec.dtype, input)?.into_tvalue());
        }
        self.run_values(values, rows)
    }

    /// Runs a block of rows (rows × features) already in tract's layout, for
    /// a model with one input. The batch paths parse rows straight into it
    /// and so skip the copy `run` makes of every input.
    pub fn run_block(&self, block: Tensor) -> Result<Vec<Output>, RunError> {
        let spec = match &self.schema.inputs[..] {
            [spec] => spec,
            _ => {
                return Err(RunError::Exec(format!(
                    "a block is one input; the model takes {}",
                    self.schema.inputs.len()
                )))
            }
        };
        if datum_type(spec.dtype) != Some(block.datum_type()) {
            return Err(input_err(
                &spec.name,
                format!(
                    "a {:?} block for a {:?} input",
                    block.datum_type(),
                    spec.dtype
                ),
            ));
        }
        let rows = block.shape().first().copied();
        self.run_values(tvec![block.into_tvalue()], rows)
    }

    fn run_values(
        &self,
        values: TVec<TValue>,
        rows: Option<usize>,
    ) -> Result<Vec<Output>, RunError> {
        let plan = match &self.fixed {
            Some((n, p)) if rows == Some(*n) => p,
            _ => &self.any_batch,
        };
        // A panic inside an operator must fail this request, not the agent.
        let outs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan.run(values)))
            .map_err(|_| RunError::Exec("the runtime panicked on this input".into()))?
            .map_err(|e| RunError::Exec(format!("{e:?}").replace('\n', " ")))?;
        outs.into_iter()
            .zip(&self.schema.outputs)
            .map(|(t, spec)| {
                // Specialised plans may produce an equivalent type (a
                // constant-folded label comes out as TDim): return what the
                // schema promises.
                match datum_type(spec.dtype) {
                    Some(dt) if dt != t.datum_type() => {
                        let c = t.cast_to_dt(dt).map_err(|_| RunError::OutputType {
                            name: spec.name.clone(),
                            dtype: format!("{:?}", t.datum_type()),
                        })?;
                        from_tract(&spec.name, &c)
                    }
                    _ => from_tract(&spec.name, &t),
                }
            })
            .collect()
    }
}

fn input_err(name: &str, reason: impl std::fmt::Display) -> RunError {
    RunError::Input {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

fn to_tract(name: &str, dtype: DType, input: Input) -> Result<Tensor, RunError> {
    let shape = &input.shape;
    let t = match input.data {
        TensorData::F32(v) => Tensor::from_shape(shape, &v),
        TensorData::F64(v) => Tensor::from_shape(shape, &v),
        TensorData::I64(v) => Tensor::from_shape(shape, &v),
        TensorData::I32(v) => Tensor::from_shape(shape, &v),
        TensorData::Bool(v) => Tensor::from_shape(shape, &v),
        TensorData::Bytes(_) => return Err(input_err(name, "BYTES inputs are not supported")),
    }
    .map_err(|e| input_err(name, e))?;
    let dt = datum_type(dtype).ok_or_else(|| input_err(name, "unsupported type"))?;
    if t.datum_type() == dt {
        Ok(t)
    } else {
        t.cast_to_dt(dt)
            .map(|c| c.into_owned())
            .map_err(|e| input_err(name, e))
    }
}

fn plain<D: Datum + Copy>(t: &Tensor) -> Option<Vec<D>> {
    let view = t.to_plain_array_view::<D>().ok()?;
    // A contiguous tensor (every plan output here) is one copy, not an
    // element-by-element walk.
    Some(match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    })
}

fn from_tract(name: &str, t: &Tensor) -> Result<Output, RunError> {
    let shape = t.shape().to_vec();
    let bad = || RunError::OutputType {
        name: name.to_string(),
        dtype: format!("{:?}", t.datum_type()),
    };
    let data = match t.datum_type() {
        DatumType::F32 => TensorData::F32(plain(t).ok_or_else(bad)?),
        DatumType::F64 => TensorData::F64(plain(t).ok_or_else(bad)?),
        DatumType::I64 => TensorData::I64(plain(t).ok_or_else(bad)?),
        DatumType::I32 => TensorData::I32(plain(t).ok_or_else(bad)?),
        DatumType::Bool => TensorData::Bool(plain(t).ok_or_else(bad)?),
        DatumType::F16 => {
            let c = t.cast_to::<f32>().map_err(|_| bad())?;
            TensorData::F32(plain(&c).ok_or_else(bad)?)
        }
        DatumType::U8 | DatumType::U16 | DatumType::U32 | DatumType::I8 | DatumType::I16 => {
            let c = t.cast_to::<i64>().map_err(|_| bad())?;
            TensorData::I64(plain(&c).ok_or_else(bad)?)
        }
        _ => return Err(bad()),
    };
    Ok(Output {
        name: name.to_string(),
        shape,
        data,
    })
}
