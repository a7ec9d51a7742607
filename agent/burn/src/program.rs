//! A parsed graph lowered to a flat list of steps over numbered slots:
//! what the engine runs per request. Weights and other constants are
//! uploaded to the device once, at load.

use crate::ops::Op;
use crate::value::{HostInts, Value, RANK};
use crate::LoadError;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use onnx_ir::{Argument, Node, OnnxGraph};
use std::collections::HashMap;

/// Operators this engine runs, by their ONNX names. The README's and
/// docs/gpu.md's coverage table is this list.
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "ArgMax",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Erf",
    "Exp",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "Log",
    "MatMul",
    "MaxPool",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// One node: an operator reading slots and writing slots.
pub struct Step {
    /// The node's name in the graph, for errors.
    pub name: String,
    pub op: Op,
    /// `None` for an omitted optional input.
    pub inputs: Vec<Option<usize>>,
    pub outputs: Vec<usize>,
}

/// A graph input: its slot, name and element type.
pub struct GraphInput {
    pub name: String,
    pub slot: usize,
    pub dtype: DType,
}

/// A graph output: its slot, name and the element type ONNX declares.
pub struct GraphOutput {
    pub name: String,
    pub slot: usize,
    pub dtype: DType,
}

pub struct Program {
    pub steps: Vec<Step>,
    pub inputs: Vec<GraphInput>,
    pub outputs: Vec<GraphOutput>,
    /// Constant slots, filled once at load.
    pub constants: Vec<(usize, Value)>,
    pub slots: usize,
    /// For each slot, the index of the last step that reads it (so a
    /// value is dropped, and its device memory freed, as soon as it is
    /// dead). `usize::MAX` for graph outputs.
    pub last_use: Vec<usize>,
}

/// Integer constants up to this many elements are kept on the host:
/// shapes, axes and indices that host-side shape arithmetic reads.
const HOST_INTS: usize = 64;

struct Builder<'a> {
    device: &'a Device,
    slots: HashMap<String, usize>,
    constants: Vec<(usize, Value)>,
    /// Constants already uploaded, by where onnx-ir keeps them: a weight
    /// several nodes read is on the device once.
    uploaded: HashMap<String, usize>,
    next: usize,
}

impl Builder<'_> {
    fn fresh(&mut self) -> usize {
        self.next += 1;
        self.next - 1
    }

    /// The slot an argument reads: a named runtime value, or a constant
    /// uploaded now.
    fn input(&mut self, node: &str, arg: &Argument) -> Result<Option<usize>, LoadError> {
        if arg.is_optional() || (arg.name.is_empty() && arg.value().is_none()) {
            return Ok(None);
        }
        let key = match arg.value_source {
            onnx_ir::ValueSource::Static(id) => Some(format!("static:{id}")),
            onnx_ir::ValueSource::Constant => Some(format!("constant:{}", arg.name)),
            _ => None,
        };
        if let Some(slot) = key.as_ref().and_then(|k| self.uploaded.get(k)) {
            return Ok(Some(*slot));
        }
        if let Some(data) = arg.value() {
            let slot = self.fresh();
            if let Some(k) = key {
                self.uploaded.insert(k, slot);
            }
            let v = constant(data, self.device).map_err(|reason| LoadError::Node {
                node: node.to_string(),
                reason,
            })?;
            self.constants.push((slot, v));
            return Ok(Some(slot));
        }
        match self.slots.get(&arg.name) {
            Some(s) => Ok(Some(*s)),
            None => Err(LoadError::Node {
                node: node.to_string(),
                reason: format!("reads {:?}, which no earlier node produces", arg.name),
            }),
        }
    }

    fn output(&mut self, arg: &Argument) -> usize {
        let slot = self.fresh();
        self.slots.insert(arg.name.clone(), slot);
        slot
    }
}

/// A constant from the graph as a value on `device` (small integer tensors
/// stay on the host).
pub fn constant(data: TensorData, device: &Device) -> Result<Value, String> {
    let dims = data.shape().to_vec();
    let rank = dims.len();
    let shape = crate::value::padded(&dims)?;
    let n: usize = dims.iter().product();
    match data.dtype() {
        DType::F64 | DType::F32 | DType::F16 | DType::BF16 => {
            let data = data.convert::<f32>();
            let v = data
                .try_to_vec::<f32>()
                .map_err(|e| format!("constant data: {e:?}"))?;
            let t = Tensor::<RANK>::from_data(TensorData::new(v, shape), device);
            Ok(Value::Float(t, rank))
        }
        DType::Bool(_)
        | DType::I64
        | DType::I32
        | DType::I16
        | DType::I8
        | DType::U8
        | DType::U16
        | DType::U32
        | DType::U64 => {
            let v = data
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| format!("constant data: {e:?}"))?;
            if n <= HOST_INTS {
                Ok(Value::Host(HostInts {
                    shape: dims,
                    data: v,
                }))
            } else {
                let t = Tensor::<RANK, Int>::from_data(TensorData::new(v, shape), device);
                Ok(Value::Int(t, rank))
            }
        }
        other => Err(format!("constants of type {other:?} are not supported")),
    }
}

/// A BatchNormalization whose parameters are constants becomes
/// `x · k + shift` per channel, `k` and `shift` computed here once: two
/// device operations per run instead of seven.
fn folded_batch_norm(
    b: &mut Builder<'_>,
    node: &Node,
    name: &str,
) -> Result<Option<Step>, LoadError> {
    let Node::BatchNormalization(n) = node else {
        return Ok(None);
    };
    let epsilon = match &n.config {
        onnx_ir::node::batch_norm::BatchNormConfig::Static(c) => c.epsilon,
        onnx_ir::node::batch_norm::BatchNormConfig::Runtime(c) => c.epsilon,
    };
    let read = |i: usize| -> Option<Vec<f32>> {
        let d = n.inputs.get(i)?.value()?;
        d.convert::<f32>().try_to_vec::<f32>().ok()
    };
    let (Some(scale), Some(bias), Some(mean), Some(var)) = (read(1), read(2), read(3), read(4))
    else {
        return Ok(None);
    };
    let c = scale.len();
    if [bias.len(), mean.len(), var.len()] != [c, c, c] {
        return Ok(None);
    }
    let k: Vec<f32> = scale
        .iter()
        .zip(&var)
        .map(|(s, v)| s / (v + epsilon as f32).sqrt())
        .collect();
    let shift: Vec<f32> = bias
        .iter()
        .zip(&mean)
        .zip(&k)
        .map(|((b, m), k)| b - m * k)
        .collect();
    let x = n.inputs.first().ok_or_else(|| LoadError::Node {
        node: name.to_string(),
        reason: "BatchNormalization without an input".into(),
    })?;
    let x = b.input(name, x)?;
    let mut upload = |v: Vec<f32>| -> Result<usize, LoadError> {
        let value =
            constant(TensorData::new(v, [c]), b.device).map_err(|reason| LoadError::Node {
                node: name.to_string(),
                reason,
            })?;
        let slot = b.fresh();
        b.constants.push((slot, value));
        Ok(slot)
    };
    let (k, shift) = (upload(k)?, upload(shift)?);
    let outputs = n.outputs.iter().take(1).map(|a| b.output(a)).collect();
    Ok(Some(Step {
        name: name.to_string(),
        op: Op::ChannelAffine,
        inputs: vec![x, Some(k), Some(shift)],
        outputs,
    }))
}

/// Lowers a parsed graph: every node to a step, constants uploaded.
pub fn lower(graph: &OnnxGraph, device: &Device) -> Result<Program, LoadError> {
    let mut b = Builder {
        device,
        slots: HashMap::new(),
        constants: Vec::new(),
        uploaded: HashMap::new(),
        next: 0,
    };
    let mut inputs = Vec::new();
    for arg in &graph.inputs {
        let slot = b.output(arg);
        inputs.push(GraphInput {
            name: arg.name.clone(),
            slot,
            dtype: arg.ty.elem_type(),
        });
    }
    let mut steps = Vec::new();
    for node in &graph.nodes {
        let name = node.name().to_string();
        if let Node::Constant(c) = node {
            // A constant node's value reaches its readers through their
            // arguments; give it a slot too in case a graph output is one.
            if let Some(out) = c.outputs.first() {
                if let Some(data) = out.value() {
                    let slot = b.output(out);
                    let v = constant(data, device).map_err(|reason| LoadError::Node {
                        node: name.clone(),
                        reason,
                    })?;
                    b.constants.push((slot, v));
                }
            }
            continue;
        }
        if let Some(step) = folded_batch_norm(&mut b, node, &name)? {
            steps.push(step);
            continue;
        }
        let op = crate::ops::lower(node).map_err(|reason| LoadError::Node {
            node: name.clone(),
            reason,
        })?;
        let mut ins = Vec::new();
        for arg in node.inputs() {
            ins.push(b.input(&name, arg)?);
        }
        let outs = node.outputs().iter().map(|a| b.output(a)).collect();
        steps.push(Step {
            name,
            op,
            inputs: ins,
            outputs: outs,
        });
    }
    let mut outputs = Vec::new();
    for arg in &graph.outputs {
        let slot = match b.slots.get(&arg.name) {
            Some(s) => *s,
            None => match arg.value() {
                Some(data) => {
                    let slot = b.fresh();
                    let v = constant(data, device).map_err(|reason| LoadError::Node {
                        node: arg.name.clone(),
                        reason,
                    })?;
                    b.constants.push((slot, v));
                    slot
                }
                None => {
                    return Err(LoadError::Node {
                        node: arg.name.clone(),
                        reason: "graph output that no node produces".into(),
                    })
                }
            },
        };
        outputs.push(GraphOutput {
            name: arg.name.clone(),
            slot,
            dtype: arg.ty.elem_type(),
        });
    }
    let mut last_use = vec![0usize; b.next];
    for (i, s) in steps.iter().enumerate() {
        for slot in s.inputs.iter().flatten() {
            last_use[*slot] = i;
        }
    }
    for o in &outputs {
        last_use[o.slot] = usize::MAX;
    }
    for (slot, _) in &b.constants {
        // Constants live for the engine's life; the run clones them.
        last_use[*slot] = usize::MAX;
    }
    Ok(Program {
        steps,
        inputs,
        outputs,
        constants: b.constants,
        slots: b.next,
        last_use,
    })
}
