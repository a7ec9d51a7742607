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

use crate::const_fold::ShapedInput;
use crate::engine_choice::{EngineInfo, EngineSelect};
use crate::plan_cache::{CacheBounds, Plan, PlanCache, PlanStats};
use crate::specialise::Specialiser;
use ferry_protocol::{DType, Dim, Schema};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tract_onnx::prelude::*;

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
    #[error(transparent)]
    Fold(#[from] crate::const_fold::FoldError),
    /// The engine asked for (`--engine`, `--gpu-backend`) cannot serve it.
    #[error("{0}")]
    Engine(String),
}

impl From<crate::engine_choice::ChoiceError> for LoadError {
    fn from(e: crate::engine_choice::ChoiceError) -> Self {
        match e {
            crate::engine_choice::ChoiceError::UnsupportedOps(ops) => {
                LoadError::UnsupportedOps(ops)
            }
            crate::engine_choice::ChoiceError::Engine(why) => LoadError::Engine(why),
        }
    }
}

use crate::tensors::{check_fixed, datum_type, from_tract, input_err, to_tract};
pub use crate::tensors::{Input, Output, RunError};

#[derive(Clone)]
pub struct Engine {
    schema: Schema,
    /// Fixed inputs by schema index (`--const-input`): not fed to the
    /// graph, a request must send the same value.
    fixed: Vec<Option<ferry_protocol::Tensor>>,
    plans: Plans,
    stats: Arc<PlanStats>,
}

#[derive(Clone)]
enum Plans {
    /// The graph typed with symbolic dimensions: one plan for any shape,
    /// and one specialised to the batch size the engine is loaded for.
    Symbolic {
        any_batch: Plan,
        batch: Option<(usize, Plan)>,
        /// Convolutional graphs: plans for the concrete shapes requests
        /// repeat (`crate::specialise`).
        shaped: Option<Arc<Specialiser>>,
    },
    /// tract could not type the graph symbolically: one plan per concrete
    /// set of input shapes, compiled on first use.
    PerShape(Arc<PerShape>),
    /// The model runs on the burn engine (`--engine`).
    #[cfg(feature = "gpu")]
    Burn(Arc<crate::engine_choice::BurnPlan>),
}

struct PerShape {
    /// The graph after folding, with input types but no shapes set.
    model: InferenceModel,
    /// The folded protobuf, kept when `If` nodes remain: with the input
    /// shapes known, those whose condition reads only shapes fold too.
    proto: Option<tract_onnx::pb::ModelProto>,
    /// Names of the fed inputs, in order.
    names: Vec<String>,
    /// Element type of each fed input.
    dtypes: Vec<DatumType>,
    cache: PlanCache,
    /// Why the graph did not type symbolically (tract's words).
    why: String,
    /// What one plan is charged against the byte bound: the model file's
    /// size (the weights each plan packs for itself).
    plan_bytes: u64,
}

/// How an engine is loaded: the batch size its specialised plan is built
/// for, the publisher's fixed inputs and the per-shape plan bounds.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub plan_for: PlanFor,
    pub const_inputs: Vec<ferry_protocol::Tensor>,
    pub cache: CacheBounds,
    /// Only the symbolic plans, never one per repeated input shape (to
    /// measure what specialising gains).
    pub symbolic_only: bool,
    /// tract, burn, or the best this host has (`crate::engine_choice`).
    pub engine: EngineSelect,
}

/// The batch size an engine's specialised plan is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanFor {
    /// Single-row requests (serving).
    #[default]
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

pub use crate::front_end::onnx;

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

fn compile(e: anyhow::Error) -> LoadError {
    LoadError::Compile(chain(&e))
}

/// tract's errors are anyhow chains: every cause on one line, without the
/// backtrace `{:?}` would add when one was captured.
fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
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
        Self::load_with(
            bytes,
            schema,
            &LoadOptions {
                plan_for,
                ..LoadOptions::default()
            },
        )
    }

    /// Loads a model: fixed inputs folded in, the graph typed with a symbol
    /// for every dynamic dimension, or, when tract cannot type it that way,
    /// compiled per concrete input shape on first use.
    pub fn load_with(bytes: &[u8], schema: &Schema, opts: &LoadOptions) -> Result<Self, LoadError> {
        // A panic inside tract must refuse this model, not stop the agent
        // (a bad side-load would otherwise take the good version down).
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::load_unguarded(bytes, schema, opts)
        }))
        .unwrap_or_else(|_| {
            Err(LoadError::Compile(
                "the runtime panicked while compiling the model".into(),
            ))
        })
    }

    fn load_unguarded(
        bytes: &[u8],
        schema: &Schema,
        opts: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let started = Instant::now();
        let chosen =
            crate::engine_choice::select(bytes, &opts.engine, !opts.const_inputs.is_empty())?;
        #[cfg(feature = "gpu")]
        if let Some(plan) = chosen {
            return Self::burn(plan, schema);
        }
        #[cfg(not(feature = "gpu"))]
        let _ = chosen;
        // tract's ONNX front end with Ferry's tree evaluator and ONNX-ML ops.
        let onnx = onnx();
        let mut proto =
            onnx.proto_model_for_read(&mut &bytes[..])
                .map_err(|e| LoadError::Read {
                    path: "(bundle artifact)".into(),
                    reason: format!("not a valid ONNX protobuf: {e}"),
                })?;
        crate::const_fold::dedupe_node_names(&mut proto);
        // Fixed inputs become constants, and the Ifs and Loops they decide
        // fold; without any, Loops with a static trip count still unroll
        // (tract has no Loop).
        if opts.const_inputs.is_empty() {
            crate::const_fold::unroll_static_loops(&mut proto)?;
        } else {
            crate::const_fold::fix_inputs(&mut proto, &opts.const_inputs)?;
        }
        let missing = unsupported_ops(&onnx, &proto);
        if !missing.is_empty() {
            return Err(LoadError::UnsupportedOps(missing));
        }
        let fixed: Vec<Option<ferry_protocol::Tensor>> = schema
            .inputs
            .iter()
            .map(|s| opts.const_inputs.iter().find(|t| t.name == s.name).cloned())
            .collect();
        let fed: Vec<&ferry_protocol::TensorSpec> = schema
            .inputs
            .iter()
            .zip(&fixed)
            .filter(|(_, f)| f.is_none())
            .map(|(s, _)| s)
            .collect();
        let mut model = onnx.model_for_proto_model(&proto).map_err(compile)?;
        if model.inputs.len() != fed.len() {
            return Err(LoadError::InputCount {
                graph: model.inputs.len() + (schema.inputs.len() - fed.len()),
                schema: schema.inputs.len(),
            });
        }
        let mut dtypes = Vec::with_capacity(fed.len());
        for spec in &fed {
            dtypes.push(
                datum_type(spec.dtype).ok_or_else(|| LoadError::UnsupportedInputType {
                    name: spec.name.clone(),
                    dtype: spec.dtype,
                })?,
            );
        }
        let stats = Arc::new(PlanStats::default());
        // The one shape the inputs can have, when every dimension is fixed.
        let concrete: Option<Vec<Vec<usize>>> = fed
            .iter()
            .map(|spec| {
                spec.shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => Some(*n as usize),
                        Dim::Symbolic(_) => None,
                    })
                    .collect()
            })
            .collect();
        // Pin input facts from the schema so tract can type the whole graph;
        // symbolic dimensions stay symbols, unnamed ones get one each.
        let mut batch_symbol = None;
        for (i, (spec, dt)) in fed.iter().zip(&dtypes).enumerate() {
            let dims: TVec<TDim> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(k, d)| match d {
                    Dim::Fixed(n) => TDim::Val(*n as i64),
                    Dim::Symbolic(s) => {
                        let name = symbol_name(&spec.name, k, s);
                        let sym = model.sym(&name);
                        if i == 0 && k == 0 && batch_symbol.is_none() {
                            batch_symbol = Some(sym.clone());
                        }
                        TDim::Sym(sym)
                    }
                })
                .collect();
            model
                .set_input_fact(i, InferenceFact::dt_shape(*dt, dims))
                .map_err(compile)?;
        }
        let shaped = (!opts.symbolic_only).then(|| (opts.cache, stats.clone(), bytes.len() as u64));
        let plans = match symbolic_plans(model, batch_symbol, opts.plan_for.rows(), shaped) {
            Ok(plans) => plans,
            Err(symbolic) => {
                tracing::info!(error = %symbolic, "the graph does not type with symbolic shapes; compiling one plan per input shape");
                // The exporter's shape annotations are in its own symbols
                // (`batch`, `height`), which concrete shapes contradict:
                // tract infers every shape from the inputs instead.
                crate::const_fold::drop_shape_annotations(&mut proto);
                let mut model = onnx.model_for_proto_model(&proto).map_err(compile)?;
                for (i, dt) in dtypes.iter().enumerate() {
                    model
                        .set_input_fact(i, InferenceFact::dt(*dt))
                        .map_err(compile)?;
                }
                let has_if = proto
                    .graph
                    .as_ref()
                    .is_some_and(|g| g.node.iter().any(|n| n.op_type == "If"));
                Plans::PerShape(Arc::new(PerShape {
                    model,
                    proto: has_if.then_some(proto),
                    names: fed.iter().map(|s| s.name.clone()).collect(),
                    dtypes,
                    cache: PlanCache::new(opts.cache, stats.clone()),
                    why: symbolic.to_string(),
                    plan_bytes: bytes.len() as u64,
                }))
            }
        };
        stats.compiled(started.elapsed().as_micros() as u64);
        let engine = Self {
            schema: schema.clone(),
            fixed,
            plans,
            stats,
        };
        // Every dimension pinned: there is one shape, compiled now, so a
        // graph that cannot run is refused at activation (and by --check).
        if let (Plans::PerShape(ps), Some(shapes)) = (&engine.plans, concrete) {
            let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            engine.plan_for(ps, &shapes).map_err(LoadError::Compile)?;
        }
        Ok(engine)
    }

    #[cfg(feature = "gpu")]
    fn burn(plan: crate::engine_choice::BurnPlan, schema: &Schema) -> Result<Self, LoadError> {
        let graph = plan.input_count();
        if graph != schema.inputs.len() {
            return Err(LoadError::InputCount {
                graph,
                schema: schema.inputs.len(),
            });
        }
        Ok(Self {
            schema: schema.clone(),
            fixed: vec![None; schema.inputs.len()],
            plans: Plans::Burn(Arc::new(plan)),
            stats: Arc::default(),
        })
    }

    /// The engine serving this model.
    pub fn info(&self) -> EngineInfo {
        match &self.plans {
            #[cfg(feature = "gpu")]
            Plans::Burn(b) => b.info().clone(),
            _ => EngineInfo::TRACT,
        }
    }

    /// Compile and plan-cache counters, for `/metrics`.
    pub fn plan_stats(&self) -> &PlanStats {
        &self.stats
    }

    /// Whether plans are compiled per input shape (the graph did not type
    /// with symbolic dimensions).
    pub fn per_shape(&self) -> bool {
        matches!(self.plans, Plans::PerShape(_))
    }

    /// Why the graph did not type with symbolic shapes, when it did not.
    pub fn symbolic_failure(&self) -> Option<&str> {
        match &self.plans {
            Plans::PerShape(ps) => Some(&ps.why),
            _ => None,
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Runs the model on inputs given in schema order (already validated
    /// against the schema by the caller).
    pub fn run(&self, inputs: Vec<Input>) -> Result<Vec<Output>, RunError> {
        #[cfg(feature = "gpu")]
        if let Plans::Burn(b) = &self.plans {
            return b.run(&self.schema, inputs);
        }
        let rows = inputs.first().and_then(|i| i.shape.first()).copied();
        let mut values: TVec<TValue> = TVec::with_capacity(inputs.len());
        for ((spec, input), fixed) in self.schema.inputs.iter().zip(inputs).zip(&self.fixed) {
            match fixed {
                None => values.push(to_tract(&spec.name, spec.dtype, input)?.into_tvalue()),
                Some(t) => check_fixed(&spec.name, t, &input)?,
            }
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
        #[cfg(feature = "gpu")]
        if let Plans::Burn(b) = &self.plans {
            let block = from_tract(&spec.name, &block)?;
            let input = Input {
                shape: block.shape,
                data: block.data,
            };
            return b.run(&self.schema, vec![input]);
        }
        let rows = block.shape().first().copied();
        if self.fixed.iter().any(Option::is_some) {
            return Err(RunError::Exec("a block cannot carry a fixed input".into()));
        }
        self.run_values(tvec![block.into_tvalue()], rows)
    }

    fn run_values(
        &self,
        values: TVec<TValue>,
        rows: Option<usize>,
    ) -> Result<Vec<Output>, RunError> {
        let specialised = match &self.plans {
            Plans::Symbolic {
                shaped: Some(sp), ..
            } => {
                let shapes: Vec<&[usize]> = values.iter().map(|v| v.shape()).collect();
                sp.plan(&shapes)
            }
            _ => None,
        };
        let cached;
        let plan = match (&self.plans, &specialised) {
            (_, Some(p)) => p,
            (
                Plans::Symbolic {
                    batch: Some((n, p)),
                    ..
                },
                None,
            ) if rows == Some(*n) => p,
            (Plans::Symbolic { any_batch, .. }, None) => any_batch,
            (Plans::PerShape(ps), None) => {
                cached = self.plan_for_shapes(ps, &values)?;
                &cached
            }
            #[cfg(feature = "gpu")]
            (Plans::Burn(_), None) => {
                return Err(RunError::Exec(
                    "a burn model reached tract's run path".into(),
                ))
            }
        };
        // A panic inside an operator must fail this request, not the agent.
        let outs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan.run(values)))
            .map_err(|_| RunError::Exec("the runtime panicked on this input".into()))?
            .map_err(|e| RunError::Exec(chain(&e)))?;
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

impl Engine {
    /// The plan for these inputs' shapes: from the cache, or compiled now
    /// (outside the cache's lock: another shape's requests do not wait).
    fn plan_for_shapes(&self, ps: &PerShape, values: &[TValue]) -> Result<Plan, RunError> {
        let shapes: Vec<&[usize]> = values.iter().map(|v| v.shape()).collect();
        self.plan_for(ps, &shapes).map_err(|e| {
            let shapes = format!("{shapes:?}");
            tracing::warn!(%shapes, error = %e, "no plan for these input shapes");
            RunError::Shapes(shapes)
        })
    }

    /// The plan for these input shapes, cached or compiled now; the error is
    /// tract's reason.
    fn plan_for(&self, ps: &PerShape, shapes: &[&[usize]]) -> Result<Plan, String> {
        let mut key = Vec::with_capacity(shapes.len() * 5);
        for s in shapes {
            key.push(s.len());
            key.extend_from_slice(s);
        }
        if let Some(p) = ps.cache.get(&key) {
            return Ok(p);
        }
        let started = Instant::now();
        let compiled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ps.compile(shapes)))
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "the runtime panicked compiling these shapes"
                    ))
                });
        let plan = compiled.map_err(|e| {
            self.stats
                .compile_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            chain(&e)
        })?;
        self.stats.compiled(started.elapsed().as_micros() as u64);
        ps.cache.insert(key, plan.clone(), ps.plan_bytes);
        Ok(plan)
    }
}

impl PerShape {
    /// Compiles the graph for concrete input shapes: `If`s on shapes folded
    /// first, then typed, fused and optimised like a symbolic plan.
    fn compile(&self, shapes: &[&[usize]]) -> TractResult<Plan> {
        let mut model = match &self.proto {
            None => self.model.clone(),
            Some(proto) => {
                let mut proto = proto.clone();
                let shaped: Vec<ShapedInput> = shapes
                    .iter()
                    .zip(&self.dtypes)
                    .zip(&self.names)
                    .map(|((s, dt), name)| ShapedInput {
                        name: name.clone(),
                        datum: *dt,
                        shape: s.to_vec(),
                    })
                    .collect();
                crate::const_fold::fold_for_shapes(&mut proto, &shaped);
                onnx().model_for_proto_model(&proto)?
            }
        };
        for (i, (s, dt)) in shapes.iter().zip(&self.dtypes).enumerate() {
            model.set_input_fact(i, InferenceFact::dt_shape(*dt, *s))?;
        }
        optimise(model.into_typed()?)
    }
}

/// The tract symbol for dimension `k` of input `input`, named `name` in the
/// schema. Unnamed dynamic dimensions (`?`, empty, or the `d{k}` an older
/// `ferry bundle build` wrote for them) each get a symbol of their own, so
/// two of them are never taken to be equal.
fn symbol_name(input: &str, k: usize, name: &str) -> String {
    let unnamed = name.is_empty() || name == "?" || name == format!("d{k}");
    if unnamed {
        format!("{input}__{k}")
    } else {
        name.to_string()
    }
}

/// Types, declutters, fuses and optimises a graph into a runnable plan.
pub fn optimise(typed: TypedModel) -> TractResult<Plan> {
    let mut typed = typed.into_decluttered()?;
    crate::kernel_swaps::swap_in(&mut typed)?;
    crate::concrete::rewrite(typed)?
        .into_optimized()?
        .into_runnable()
}

/// A symbolically typed graph decluttered, with our kernels swapped in:
/// what the agent's symbolic plans (and per-request specialisations) start
/// from.
pub fn symbolic_typed(typed: TypedModel) -> TractResult<TypedModel> {
    let mut typed = typed.into_decluttered()?;
    crate::kernel_swaps::swap_in(&mut typed)?;
    Ok(typed)
}

/// The symbolic plans, or why the graph does not type symbolically.
fn symbolic_plans(
    model: InferenceModel,
    batch_symbol: Option<Symbol>,
    rows: usize,
    shaped: Option<(CacheBounds, Arc<PlanStats>, u64)>,
) -> Result<Plans, LoadError> {
    let typed = symbolic_typed(model.into_typed().map_err(compile)?).map_err(compile)?;
    // A failure here only loses the fast path, not the model.
    let batch = batch_symbol
        .and_then(|sym| crate::concrete::symbol_set_plan(&typed, sym, rows).ok())
        .map(|p| (rows, p));
    let shaped = shaped.and_then(|(bounds, stats, bytes)| {
        Specialiser::new(&typed, bounds, stats, bytes).map(Arc::new)
    });
    let any_batch = typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(compile)?;
    Ok(Plans::Symbolic {
        any_batch,
        batch,
        shaped,
    })
}
