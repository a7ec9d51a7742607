//! Ferry's second engine: a verified bundle's ONNX graph, parsed at
//! activation time by onnx-ir (burn's ONNX front end) and run by a small
//! interpreter on a burn backend: the GPU through wgpu (Vulkan, Metal,
//! DX12) or CUDA, or burn's CPU backend.
//!
//! burn-onnx generates Rust from a model at build time; bundles arrive at
//! run time, signed, so this crate lowers onnx-ir's typed nodes to a closed
//! [`ops::Op`] enum instead and evaluates them in graph order
//! ([`program`]). Operators outside [`SUPPORTED_OPS`] are refused at load,
//! by name, before anything reaches the device.

mod adapter;
mod ops;
mod program;
mod value;

pub use adapter::{adapter, first_gpu, Adapter};
pub use program::SUPPORTED_OPS;

use burn::tensor::{DType, Device, Int, Tensor, TensorData as BurnData};
use ferry_protocol::TensorData;
use program::Program;
use std::collections::BTreeSet;
use std::sync::Arc;
use value::{padded, Value, RANK};

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// burn's CPU backend (flex): tests, and hosts without a GPU.
    Cpu,
    /// wgpu: Vulkan, Metal or DX12, whichever the host's driver offers.
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// CUDA, device 0.
    #[cfg(feature = "cuda")]
    Cuda,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => "wgpu",
            #[cfg(feature = "cuda")]
            Backend::Cuda => "cuda",
        }
    }

    /// The backends this build has, GPU ones first.
    pub fn compiled() -> Vec<Backend> {
        vec![
            #[cfg(feature = "cuda")]
            Backend::Cuda,
            #[cfg(feature = "wgpu")]
            Backend::Wgpu,
            Backend::Cpu,
        ]
    }

    pub fn parse(s: &str) -> Option<Backend> {
        Backend::compiled().into_iter().find(|b| b.name() == s)
    }
}

/// Why a model cannot be made runnable on this engine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model uses operator(s) the burn engine does not support: {}", .0.join(", "))]
    UnsupportedOps(Vec<String>),
    #[error("the model is not a readable ONNX file: {0}")]
    Parse(String),
    #[error("node {node:?}: {reason}")]
    Node { node: String, reason: String },
    #[error("the burn backend failed while loading the model")]
    Panicked,
    #[error("the {backend} backend cannot run on this host: {reason}")]
    NoDevice {
        backend: &'static str,
        reason: String,
    },
}

/// A failure while running a request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("input {index}: {reason}")]
    Input { index: usize, reason: String },
    #[error("node {node:?}: {reason}")]
    Node { node: String, reason: String },
    #[error("the burn backend failed while running the model")]
    Panicked,
}

/// One output: its graph name, shape and elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// A model loaded onto a device, ready to run. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    program: Arc<Program>,
    device: Device,
    backend: Backend,
}

fn parse(bytes: &[u8]) -> Result<onnx_ir::ModelProto, LoadError> {
    use onnx_ir::Message;
    onnx_ir::ModelProto::parse_from_bytes(bytes).map_err(|e| LoadError::Parse(e.to_string()))
}

/// Every `domain:Op` in the model (subgraphs included) that this engine
/// does not run, read from the protobuf before onnx-ir processes it, so
/// the refusal names ONNX's operators, not onnx-ir's variants.
fn unsupported_in(model: &onnx_ir::ModelProto) -> Vec<String> {
    let mut missing = BTreeSet::new();
    let mut stack: Vec<&onnx_ir::GraphProto> = model.graph.as_ref().into_iter().collect();
    while let Some(g) = stack.pop() {
        for node in &g.node {
            let default_domain = node.domain.is_empty() || node.domain == "ai.onnx";
            if !default_domain {
                missing.insert(format!("{}:{}", node.domain, node.op_type));
            } else if !SUPPORTED_OPS.contains(&node.op_type.as_str()) {
                missing.insert(node.op_type.clone());
            }
            for attr in &node.attribute {
                stack.extend(attr.g.as_ref());
                stack.extend(attr.graphs.iter());
            }
        }
    }
    missing.into_iter().collect()
}

/// The graph's own input (initializers excluded) and output names: onnx-ir
/// renames values, requests and answers use the model's names.
fn io_names(model: &onnx_ir::ModelProto) -> (Vec<String>, Vec<String>) {
    let Some(g) = model.graph.as_ref() else {
        return (Vec::new(), Vec::new());
    };
    let inits: BTreeSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| i.name.clone())
        .collect();
    let outputs = g.output.iter().map(|o| o.name.clone()).collect();
    (inputs, outputs)
}

impl Engine {
    /// Parses `bytes` and uploads the model's weights to `backend`'s device.
    pub fn load(bytes: &[u8], backend: Backend) -> Result<Engine, LoadError> {
        let model = parse(bytes)?;
        let missing = unsupported_in(&model);
        if !missing.is_empty() {
            return Err(LoadError::UnsupportedOps(missing));
        }
        let (input_names, output_names) = io_names(&model);
        drop(model);
        let device = adapter::device(backend).map_err(|reason| LoadError::NoDevice {
            backend: backend.name(),
            reason,
        })?;
        // onnx-ir and the backends assert on what they cannot handle; a
        // bad bundle must be refused, not take the agent down.
        let program = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let graph = onnx_ir::OnnxGraphBuilder::new()
                .parse_bytes(bytes)
                .map_err(|e| LoadError::Parse(e.to_string()))?;
            program::lower(&graph, &device)
        }))
        .map_err(|_| LoadError::Panicked)??;
        let mut program = program;
        if program.inputs.len() != input_names.len() || program.outputs.len() != output_names.len()
        {
            return Err(LoadError::Parse(format!(
                "onnx-ir sees {} inputs and {} outputs, the model declares {} and {}",
                program.inputs.len(),
                program.outputs.len(),
                input_names.len(),
                output_names.len()
            )));
        }
        for (i, n) in program.inputs.iter_mut().zip(input_names) {
            i.name = n;
        }
        for (o, n) in program.outputs.iter_mut().zip(output_names) {
            o.name = n;
        }
        Ok(Engine {
            program: Arc::new(program),
            device,
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The graph's input names, in order.
    pub fn input_names(&self) -> Vec<&str> {
        self.program
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect()
    }

    /// Runs the model on `inputs` (graph order: shape and elements each).
    pub fn run(&self, inputs: Vec<(Vec<usize>, TensorData)>) -> Result<Vec<Output>, RunError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_unguarded(inputs)))
            .map_err(|_| RunError::Panicked)?
    }

    fn run_unguarded(
        &self,
        inputs: Vec<(Vec<usize>, TensorData)>,
    ) -> Result<Vec<Output>, RunError> {
        let p = &self.program;
        if inputs.len() != p.inputs.len() {
            return Err(RunError::Input {
                index: inputs.len(),
                reason: format!(
                    "the model takes {} inputs, got {}",
                    p.inputs.len(),
                    inputs.len()
                ),
            });
        }
        let mut slots: Vec<Option<Value>> = vec![None; p.slots];
        for (slot, v) in &p.constants {
            slots[*slot] = Some(v.clone());
        }
        for (index, ((shape, data), gi)) in inputs.into_iter().zip(&p.inputs).enumerate() {
            let v = self
                .upload(&shape, data, gi.dtype)
                .map_err(|reason| RunError::Input { index, reason })?;
            slots[gi.slot] = Some(v);
        }
        for (i, step) in p.steps.iter().enumerate() {
            let ins = step
                .inputs
                .iter()
                .map(|s| {
                    s.and_then(|s| {
                        if p.last_use[s] == i {
                            slots[s].take()
                        } else {
                            slots[s].clone()
                        }
                    })
                })
                .collect();
            let outs = ops::exec(&step.op, ins, &self.device).map_err(|reason| RunError::Node {
                node: step.name.clone(),
                reason,
            })?;
            for (slot, v) in step.outputs.iter().zip(outs) {
                slots[*slot] = Some(v);
            }
        }
        p.outputs
            .iter()
            .map(|o| {
                let v = slots[o.slot].clone().ok_or_else(|| RunError::Node {
                    node: o.name.clone(),
                    reason: "the output was never computed".into(),
                })?;
                download(&o.name, v, o.dtype)
            })
            .collect()
    }

    fn upload(&self, shape: &[usize], data: TensorData, dtype: DType) -> Result<Value, String> {
        let p = padded(shape)?;
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(format!(
                "shape {shape:?} needs {n} elements, got {}",
                data.len()
            ));
        }
        let float = matches!(dtype, DType::F64 | DType::F32 | DType::F16 | DType::BF16);
        let r = shape.len();
        Ok(match data {
            TensorData::F32(v) if float => Value::Float(
                Tensor::<RANK>::from_data(BurnData::new(v, p), &self.device),
                r,
            ),
            TensorData::F64(v) if float => Value::Float(
                Tensor::<RANK>::from_data(
                    BurnData::new(v.into_iter().map(|x| x as f32).collect(), p),
                    &self.device,
                ),
                r,
            ),
            TensorData::I64(v) if !float => Value::Int(
                Tensor::<RANK, Int>::from_data(BurnData::new(v, p), &self.device),
                r,
            ),
            TensorData::I32(v) if !float => Value::Int(
                Tensor::<RANK, Int>::from_data(
                    BurnData::new(v.into_iter().map(i64::from).collect(), p),
                    &self.device,
                ),
                r,
            ),
            other => {
                return Err(format!(
                    "elements of this type cannot feed a {dtype:?} input ({} elements)",
                    other.len()
                ))
            }
        })
    }
}

/// Reads an output back from the device in the element type the graph
/// declares.
fn download(name: &str, v: Value, dtype: DType) -> Result<Output, RunError> {
    let shape = v.dims();
    let err = |reason: String| RunError::Node {
        node: name.to_string(),
        reason,
    };
    let data = match (v, dtype) {
        (Value::Float(t, _), DType::F64) => TensorData::F64(
            t.into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .map_err(|e| err(format!("{e:?}")))?,
        ),
        (Value::Float(t, _), _) => TensorData::F32(
            t.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| err(format!("{e:?}")))?,
        ),
        (other, dt) => {
            let ints = other.host().map_err(err)?.data;
            match dt {
                DType::I32 => TensorData::I32(ints.into_iter().map(|x| x as i32).collect()),
                DType::Bool(_) => TensorData::Bool(ints.into_iter().map(|x| x != 0).collect()),
                DType::F32 => TensorData::F32(ints.into_iter().map(|x| x as f32).collect()),
                _ => TensorData::I64(ints),
            }
        }
    };
    Ok(Output {
        name: name.to_string(),
        shape,
        data,
    })
}
