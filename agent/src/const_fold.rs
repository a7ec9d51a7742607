//! Inputs a publisher fixed (`ferry bundle build --const-input sr=16000`)
//! become constants of the ONNX graph, and every `If` whose condition then
//! depends on constants only is replaced by the branch it takes, before tract
//! types the graph.
//!
//! tract types both branches of an `If` and cannot type one whose condition
//! is a run-time value (a voice-activity detector branching on its sample
//! rate); with the value fixed for a deployment the branch folds away and
//! the graph is an ordinary one.
//!
//! The work is done on the protobuf: the condition's cone (constants only)
//! is cut out as a graph of its own and evaluated by tract, then the taken
//! branch's nodes are spliced in place of the `If`, its values renamed under
//! the `If`'s name so they cannot collide with the outer graph's.

use ferry_protocol::{DType, Tensor, TensorData};
use std::collections::{HashMap, HashSet};
use tract_onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto,
    ValueInfoProto,
};
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("fixed input {0:?} is not an input of the graph")]
    NotAnInput(String),
    #[error("fixed input {name:?}: {reason}")]
    Value { name: String, reason: String },
    #[error("evaluating the condition of If node {node:?}: {reason}")]
    Condition { node: String, reason: String },
    #[error("If node {0:?} has no branch for its condition")]
    NoBranch(String),
}

/// Operators whose value is not a function of their inputs, or whose
/// output shape depends on their input values: a condition computed through
/// them is not folded.
const NOT_FOLDABLE: &[&str] = &[
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "NonZero",
    "Unique",
    "Compress",
    "NonMaxSuppression",
    "Loop",
    "Scan",
];

/// Replaces the graph inputs named in `fixed` by initializers holding their
/// values and folds every `If` whose condition is then constant. Returns how
/// many `If` nodes were folded.
pub fn fix_inputs(proto: &mut ModelProto, fixed: &[Tensor]) -> Result<usize, FoldError> {
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(0);
    };
    for t in fixed {
        let pos = graph
            .input
            .iter()
            .position(|i| i.name == t.name)
            .ok_or_else(|| FoldError::NotAnInput(t.name.clone()))?;
        let input = graph.input.remove(pos);
        let elem = elem_type(&input).unwrap_or(0);
        // An old exporter may list an initializer among the inputs too.
        graph.initializer.retain(|i| i.name != t.name);
        graph.initializer.push(tensor_proto(t, elem)?);
    }
    fold_ifs(proto, &[], true)
}

/// One graph input with the concrete shape a request gives it.
pub struct ShapedInput {
    pub name: String,
    pub datum: DatumType,
    pub shape: Vec<usize>,
}

/// Folds every `If` whose condition depends only on constants and on the
/// shapes of `inputs` (PyTorch exports `squeeze(dim)` as "if that dimension
/// is 1"), for a plan compiled for these shapes. Conditions that cannot be
/// evaluated are left to tract. Returns how many were folded.
pub fn fold_for_shapes(proto: &mut ModelProto, inputs: &[ShapedInput]) -> usize {
    fold_ifs(proto, inputs, false).unwrap_or(0)
}

/// Folds `If` nodes of the top-level graph in order (a folded branch's own
/// `If`s come next). With `strict`, a condition that should fold but cannot
/// be evaluated is an error; otherwise that `If` is left as it is.
fn fold_ifs(
    proto: &mut ModelProto,
    inputs: &[ShapedInput],
    strict: bool,
) -> Result<usize, FoldError> {
    let opsets = proto.opset_import.clone();
    let ir_version = proto.ir_version;
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(0);
    };
    let mut folded = 0;
    let mut from = 0;
    while let Some(at) = next_if(graph, from) {
        from = at + 1;
        let Some(cone) = condition_cone(graph, at, inputs) else {
            continue;
        };
        match evaluate_condition(graph, at, &cone, inputs, ir_version, &opsets) {
            Ok(cond) => {
                splice_branch(graph, at, cond)?;
                folded += 1;
                // The branch's nodes now start at `at`.
                from = at;
            }
            Err(e) if strict => return Err(e),
            Err(_) => {}
        }
    }
    Ok(folded)
}

fn next_if(graph: &GraphProto, from: usize) -> Option<usize> {
    (from..graph.node.len())
        .find(|&i| graph.node[i].op_type == "If" && graph.node[i].domain.is_empty())
}

/// The nodes (indices, in graph order) the condition of the `If` at `at` is
/// computed from, when it depends only on constants and on the shapes of
/// `inputs`: its values never come from a graph input except through
/// `Shape` or `Size`.
fn condition_cone(graph: &GraphProto, at: usize, inputs: &[ShapedInput]) -> Option<Vec<usize>> {
    let producer: HashMap<&str, usize> = graph.node[..at]
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let shaped: HashSet<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    // (value, whether only its shape matters)
    let mut stack: Vec<(&str, bool)> = vec![(graph.node[at].input.first()?.as_str(), false)];
    let mut seen: HashSet<(&str, bool)> = HashSet::new();
    let mut cone = HashSet::new();
    while let Some((v, shape_only)) = stack.pop() {
        if v.is_empty() || initializers.contains(v) || !seen.insert((v, shape_only)) {
            continue;
        }
        let Some(&i) = producer.get(v) else {
            // A graph input: its shape may be known, its values never are.
            if shape_only && shaped.contains(v) {
                continue;
            }
            return None;
        };
        let n = &graph.node[i];
        let has_subgraph = n
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
        if (!n.domain.is_empty() && n.domain != "ai.onnx")
            || NOT_FOLDABLE.contains(&n.op_type.as_str())
            || (has_subgraph && !shape_only)
        {
            return None;
        }
        cone.insert(i);
        // What a Shape or Size reads matters only by its shape; a shape is
        // taken to follow from the input shapes (the ops that break that
        // are refused above).
        let next = shape_only || matches!(n.op_type.as_str(), "Shape" | "Size");
        stack.extend(n.input.iter().map(|x| (x.as_str(), next)));
    }
    let mut cone: Vec<usize> = cone.into_iter().collect();
    cone.sort_unstable();
    Some(cone)
}

fn elem_type(v: &ValueInfoProto) -> Option<i32> {
    // Sequence and map inputs are refused by the schema before this.
    let type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    Some(t.elem_type)
}

/// The value as an ONNX initializer of element type `elem` (the graph's
/// declaration; the manifest's value is cast to it).
fn tensor_proto(t: &Tensor, elem: i32) -> Result<TensorProto, FoldError> {
    let bad = |reason: String| FoldError::Value {
        name: t.name.clone(),
        reason,
    };
    let dtype = DType::from_onnx(elem)
        .ok_or_else(|| bad(format!("the graph declares element type {elem}")))?;
    let values = t
        .data
        .as_f64()
        .ok_or_else(|| bad("a BYTES value cannot be fixed".into()))?;
    let mut p = TensorProto {
        name: t.name.clone(),
        dims: t.shape.iter().map(|d| *d as i64).collect(),
        data_type: elem,
        ..Default::default()
    };
    let integral = |v: f64| -> Result<i64, FoldError> {
        if v.fract() == 0.0 {
            Ok(v as i64)
        } else {
            Err(bad(format!("{v} is not an integer")))
        }
    };
    match (dtype, &t.data) {
        (DType::I64, TensorData::I64(v)) => p.int64_data = v.clone(),
        (DType::F32, _) => p.float_data = values.iter().map(|v| *v as f32).collect(),
        (DType::F64, _) => p.double_data = values,
        (DType::Bool, _) => p.int32_data = values.iter().map(|v| i32::from(*v != 0.0)).collect(),
        (DType::I64, _) => {
            p.int64_data = values.into_iter().map(integral).collect::<Result<_, _>>()?
        }
        (DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::U16, _) => {
            p.int32_data = values
                .into_iter()
                .map(|v| integral(v).map(|i| i as i32))
                .collect::<Result<_, _>>()?
        }
        (d, _) => return Err(bad(format!("fixing a {d} input is not supported"))),
    }
    Ok(p)
}

/// Evaluates the condition of the `If` at `at` with tract, on a graph made
/// of its cone; the shaped inputs it reads are fed zeros of their shapes
/// (only their shapes reach the condition).
fn evaluate_condition(
    graph: &GraphProto,
    at: usize,
    cone: &[usize],
    inputs: &[ShapedInput],
    ir_version: i64,
    opsets: &[tract_onnx::pb::OperatorSetIdProto],
) -> Result<bool, FoldError> {
    let node = &graph.node[at];
    let cond = node.input[0].clone();
    let fail = |reason: String| FoldError::Condition {
        node: node.name.clone(),
        reason,
    };
    let nodes: Vec<NodeProto> = cone.iter().map(|&i| graph.node[i].clone()).collect();
    let read: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let initializer = graph
        .initializer
        .iter()
        .filter(|i| read.contains(i.name.as_str()))
        .cloned()
        .collect();
    let fed: Vec<&ShapedInput> = inputs
        .iter()
        .filter(|i| read.contains(i.name.as_str()))
        .collect();
    let input = fed
        .iter()
        .filter_map(|i| graph.input.iter().find(|g| g.name == i.name).cloned())
        .collect();
    let sub = ModelProto {
        ir_version,
        opset_import: opsets.to_vec(),
        graph: Some(GraphProto {
            name: "condition".into(),
            node: nodes,
            initializer,
            input,
            output: vec![ValueInfoProto {
                name: cond.clone(),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: 9, // BOOL
                        shape: None,
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = (|| -> TractResult<bool> {
        let mut model = crate::front_end::onnx().model_for_proto_model(&sub)?;
        let mut feeds = TVec::new();
        for (ix, i) in fed.iter().enumerate() {
            model.set_input_fact(ix, InferenceFact::dt_shape(i.datum, &i.shape))?;
            feeds.push(tract_onnx::prelude::Tensor::zero_dt(i.datum, &i.shape)?.into_tvalue());
        }
        let out = model.into_typed()?.into_runnable()?.run(feeds)?;
        let t = out.first().ok_or_else(|| anyhow::anyhow!("no output"))?;
        if t.len() != 1 {
            anyhow::bail!("the condition has {} values, not one", t.len());
        }
        t.cast_to_scalar::<bool>()
    })()
    .map_err(|e| fail(format!("{e:#}").replace('\n', " ")))?;
    Ok(value)
}

fn branch(node: &NodeProto, which: &str) -> Option<GraphProto> {
    node.attribute
        .iter()
        .find(|a| a.name == which)
        .and_then(|a: &AttributeProto| a.g.clone())
}

/// Replaces the `If` at `at` by the nodes of the branch `cond` selects.
fn splice_branch(graph: &mut GraphProto, at: usize, cond: bool) -> Result<(), FoldError> {
    let node = graph.node[at].clone();
    let which = if cond { "then_branch" } else { "else_branch" };
    let mut body = branch(&node, which).ok_or_else(|| FoldError::NoBranch(node.name.clone()))?;
    // Values the branch defines get the If's name as a prefix; outer values
    // it reads keep theirs.
    let prefix = if node.name.is_empty() {
        format!("if{at}")
    } else {
        node.name.clone()
    };
    let mut renames: HashMap<String, String> = HashMap::new();
    for n in &body.node {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            renames.insert(o.clone(), format!("{prefix}/{o}"));
        }
    }
    for i in &body.initializer {
        renames.insert(i.name.clone(), format!("{prefix}/{}", i.name));
    }
    for n in &mut body.node {
        rename_node(n, &renames);
        if !n.name.is_empty() {
            n.name = format!("{prefix}/{}", n.name);
        }
    }
    for i in &mut body.initializer {
        if let Some(r) = renames.get(&i.name) {
            i.name = r.clone();
        }
    }
    let mut spliced = body.node;
    // The If's outputs are the branch's outputs, by position.
    for (k, (out, inner)) in node.output.iter().zip(&body.output).enumerate() {
        let from = renames
            .get(&inner.name)
            .cloned()
            .unwrap_or_else(|| inner.name.clone());
        spliced.push(NodeProto {
            name: format!("{prefix}/output{k}"),
            op_type: "Identity".into(),
            input: vec![from],
            output: vec![out.clone()],
            ..Default::default()
        });
    }
    graph.initializer.extend(body.initializer);
    graph.node.splice(at..=at, spliced);
    Ok(())
}

/// Renames the values a node reads and writes, and the outer values its
/// subgraphs read.
fn rename_node(n: &mut NodeProto, renames: &HashMap<String, String>) {
    for name in n.input.iter_mut().chain(n.output.iter_mut()) {
        if let Some(r) = renames.get(name) {
            *name = r.clone();
        }
    }
    for a in &mut n.attribute {
        for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
            for inner in &mut g.node {
                rename_node(inner, renames);
            }
            for o in &mut g.output {
                if let Some(r) = renames.get(&o.name) {
                    o.name = r.clone();
                }
            }
        }
    }
}

/// Gives repeated node names of the top-level graph a suffix: some
/// exporters repeat them (15 `F0::anon` nodes in a public voice-activity
/// model), which tract refuses as duplicate names. Returns how many changed.
pub fn dedupe_node_names(proto: &mut ModelProto) -> usize {
    let Some(graph) = proto.graph.as_mut() else {
        return 0;
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut renamed = 0;
    for (i, n) in graph.node.iter_mut().enumerate() {
        if n.name.is_empty() {
            continue;
        }
        if !seen.insert(n.name.clone()) {
            n.name = format!("{}#{i}", n.name);
            seen.insert(n.name.clone());
            renamed += 1;
        }
    }
    renamed
}

/// Drops the graph's intermediate shape annotations (`value_info`) and its
/// outputs' shapes, keeping element types: for a plan compiled for concrete
/// input shapes, the exporter's symbolic annotations only contradict them.
pub fn drop_shape_annotations(proto: &mut ModelProto) {
    let Some(graph) = proto.graph.as_mut() else {
        return;
    };
    graph.value_info.clear();
    for o in &mut graph.output {
        if let Some(type_proto::Value::TensorType(t)) =
            o.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
    }
}
