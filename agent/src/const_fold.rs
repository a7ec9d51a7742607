//! Inputs a publisher fixed (`ferry bundle build --const-input sr=16000`)
//! become constants of the ONNX graph, every `If` whose condition then
//! depends on constants only is replaced by the branch it takes, and every
//! `Loop` whose trip count is then constant is unrolled, before tract types
//! the graph.
//!
//! tract types both branches of an `If` and cannot type one whose condition
//! is a run-time value (a voice-activity detector branching on its sample
//! rate); with the value fixed for a deployment the branch folds away and
//! the graph is an ordinary one. tract has no `Loop` at all: one with a
//! static trip count becomes that many copies of its body (`loops`); one
//! whose trip count is a run-time value, whose condition is computed, or
//! that would unroll past the bounds in `loops` is left, and the model is
//! refused naming the operator.
//!
//! The work is done on the protobuf: the condition's (or trip count's) cone
//! (constants only) is cut out as a graph of its own and evaluated by tract,
//! then the taken branch's nodes are spliced in place of the `If`, its
//! values renamed under the `If`'s name so they cannot collide with the
//! outer graph's; an unrolled `Loop`'s iterations are renamed the same way,
//! under `{loop}/{i}/`.

use ferry_protocol::{DType, Tensor, TensorData};
use std::collections::{HashMap, HashSet};
use tract_onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto,
    ValueInfoProto,
};
use tract_onnx::prelude::*;

mod loops;

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
    #[error("evaluating the {what} of Loop node {node:?}: {reason}")]
    LoopInput {
        node: String,
        what: &'static str,
        reason: String,
    },
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
/// values, folds every `If` whose condition is then constant and unrolls
/// every `Loop` whose trip count is. Returns how many `If` and `Loop` nodes
/// were folded.
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
    fold(proto, &[], true)
}

/// Unrolls every `Loop` whose trip count depends on constants only, for a
/// model without fixed inputs (its `If`s are left to tract, as they were).
/// Returns how many were unrolled.
pub fn unroll_static_loops(proto: &mut ModelProto) -> Result<usize, FoldError> {
    let mut unrolled = 0;
    for _ in 0..MAX_ROUNDS {
        let n = loops::unroll(proto, &[], true)?;
        if n == 0 {
            break;
        }
        unrolled += n;
    }
    if unrolled > 0 {
        dedupe_node_names(proto);
    }
    Ok(unrolled)
}

/// Rounds of `If` folding and `Loop` unrolling: a folded branch or an
/// unrolled body may bring nested ones to the top level.
const MAX_ROUNDS: usize = 8;

/// Folds `If`s, then unrolls `Loop`s (a trip count computed from a folded
/// branch is constant by then), then folds the `If`s unrolled bodies
/// brought up, and so on.
fn fold(proto: &mut ModelProto, inputs: &[ShapedInput], strict: bool) -> Result<usize, FoldError> {
    let mut folded = fold_ifs(proto, inputs, strict)?;
    let mut unrolled = 0;
    for _ in 0..MAX_ROUNDS {
        let n = loops::unroll(proto, inputs, strict)?;
        if n == 0 {
            break;
        }
        unrolled += n;
        folded += n + fold_ifs(proto, inputs, strict)?;
    }
    if unrolled > 0 {
        // Iterations copy the body's node names under distinct prefixes,
        // but a body may repeat a name of its own.
        dedupe_node_names(proto);
    }
    Ok(folded)
}

/// One graph input with the concrete shape a request gives it.
pub struct ShapedInput {
    pub name: String,
    pub datum: DatumType,
    pub shape: Vec<usize>,
}

/// Folds every `If` whose condition depends only on constants and on the
/// shapes of `inputs` (PyTorch exports `squeeze(dim)` as "if that dimension
/// is 1"), for a plan compiled for these shapes, and unrolls every `Loop`
/// whose trip count does. Conditions that cannot be evaluated are left to
/// tract. Returns how many were folded.
pub fn fold_for_shapes(proto: &mut ModelProto, inputs: &[ShapedInput]) -> usize {
    fold(proto, inputs, false).unwrap_or(0)
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
    while let Some(at) = next_op(graph, "If", from) {
        from = at + 1;
        let Some(cond) = graph.node[at].input.first() else {
            continue;
        };
        let Some(cone) = cone(graph, at, cond, inputs) else {
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

/// The first node of the default domain with operator `op` from `from` on.
fn next_op(graph: &GraphProto, op: &str, from: usize) -> Option<usize> {
    (from..graph.node.len())
        .find(|&i| graph.node[i].op_type == op && graph.node[i].domain.is_empty())
}

/// The nodes (indices, in graph order) before `at` that `value` is computed
/// from, when it depends only on constants and on the shapes of `inputs`:
/// its values never come from a graph input except through `Shape` or
/// `Size`.
fn cone(graph: &GraphProto, at: usize, value: &str, inputs: &[ShapedInput]) -> Option<Vec<usize>> {
    let producer: HashMap<&str, usize> = graph.node[..at]
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let shaped: HashSet<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    // (value, whether only its shape matters)
    let mut stack: Vec<(&str, bool)> = vec![(value, false)];
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
/// of its cone.
fn evaluate_condition(
    graph: &GraphProto,
    at: usize,
    cone: &[usize],
    inputs: &[ShapedInput],
    ir_version: i64,
    opsets: &[tract_onnx::pb::OperatorSetIdProto],
) -> Result<bool, FoldError> {
    let node = &graph.node[at];
    let fail = |reason: String| FoldError::Condition {
        node: node.name.clone(),
        reason,
    };
    let cond = node
        .input
        .first()
        .ok_or_else(|| fail("no condition".into()))?;
    let t = evaluate(graph, cond, BOOL, cone, inputs, ir_version, opsets).map_err(fail)?;
    scalar::<bool>(&t).map_err(fail)
}

/// ONNX element types of the values evaluated here.
const BOOL: i32 = 9;
const INT64: i32 = 7;

/// The one value of `t`, cast to `T`.
fn scalar<T: Datum + Copy>(t: &tract_onnx::prelude::Tensor) -> Result<T, String> {
    if t.len() != 1 {
        return Err(format!("{} values, not one", t.len()));
    }
    t.cast_to_scalar::<T>()
        .map_err(|e| format!("{e:#}").replace('\n', " "))
}

/// Evaluates `value` (of ONNX element type `elem`) with tract, on a graph
/// made of its cone; the shaped inputs it reads are fed zeros of their
/// shapes (only their shapes reach it).
fn evaluate(
    graph: &GraphProto,
    value: &str,
    elem: i32,
    cone: &[usize],
    inputs: &[ShapedInput],
    ir_version: i64,
    opsets: &[tract_onnx::pb::OperatorSetIdProto],
) -> Result<tract_onnx::prelude::Tensor, String> {
    let nodes: Vec<NodeProto> = cone.iter().map(|&i| graph.node[i].clone()).collect();
    // The value itself may be an initializer.
    let read: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain([value])
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
            name: "constant".into(),
            node: nodes,
            initializer,
            input,
            output: vec![ValueInfoProto {
                name: value.to_string(),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: elem,
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
    (|| -> TractResult<tract_onnx::prelude::Tensor> {
        let mut model = crate::front_end::onnx().model_for_proto_model(&sub)?;
        let mut feeds = TVec::new();
        for (ix, i) in fed.iter().enumerate() {
            model.set_input_fact(ix, InferenceFact::dt_shape(i.datum, &i.shape))?;
            feeds.push(tract_onnx::prelude::Tensor::zero_dt(i.datum, &i.shape)?.into_tvalue());
        }
        let out = model.into_typed()?.into_runnable()?.run(feeds)?;
        let t = out.first().ok_or_else(|| anyhow::anyhow!("no output"))?;
        Ok(t.clone().into_tensor())
    })()
    .map_err(|e| format!("{e:#}").replace('\n', " "))
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
/// subgraphs read (not a name a subgraph defines itself).
fn rename_node(n: &mut NodeProto, renames: &HashMap<String, String>) {
    for name in n.input.iter_mut().chain(n.output.iter_mut()) {
        if let Some(r) = renames.get(name) {
            *name = r.clone();
        }
    }
    for a in &mut n.attribute {
        for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
            let shadowed: Vec<&str> = g
                .input
                .iter()
                .map(|i| i.name.as_str())
                .chain(g.initializer.iter().map(|i| i.name.as_str()))
                .filter(|v| renames.contains_key(*v))
                .collect();
            let inner = if shadowed.is_empty() {
                None
            } else {
                let mut inner = renames.clone();
                for v in shadowed {
                    inner.remove(v);
                }
                Some(inner)
            };
            let renames = inner.as_ref().unwrap_or(renames);
            for node in &mut g.node {
                rename_node(node, renames);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fixture(name: &str) -> ModelProto {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../tests/fixtures/models/{name}.onnx"));
        let bytes = std::fs::read(path).unwrap();
        crate::front_end::onnx()
            .proto_model_for_read(&mut &bytes[..])
            .unwrap()
    }

    fn graph(p: &ModelProto) -> &GraphProto {
        p.graph.as_ref().unwrap()
    }

    fn ops(p: &ModelProto, op: &str) -> usize {
        graph(p).node.iter().filter(|n| n.op_type == op).count()
    }

    fn body_mut(p: &mut ModelProto) -> &mut GraphProto {
        let g = p.graph.as_mut().unwrap();
        let l = g.node.iter_mut().find(|n| n.op_type == "Loop").unwrap();
        l.attribute[0].g.as_mut().unwrap()
    }

    fn set_trips(p: &mut ModelProto, trips: i64) {
        let g = p.graph.as_mut().unwrap();
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "trips")
            .unwrap();
        *t = TensorProto {
            name: "trips".into(),
            data_type: 7,
            int64_data: vec![trips],
            ..Default::default()
        };
    }

    fn bool_const(value: bool) -> AttributeProto {
        AttributeProto {
            name: "value".into(),
            r#type: 4, // TENSOR
            t: Some(TensorProto {
                data_type: 9,
                int32_data: vec![i32::from(value)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The body's condition output made by `op` instead of an Identity.
    fn with_body_cond(op: &str, attribute: Vec<AttributeProto>) -> ModelProto {
        let mut p = fixture("loop_static");
        let cond = body_mut(&mut p)
            .node
            .iter_mut()
            .find(|n| n.output == ["cond_out"])
            .unwrap();
        cond.op_type = op.into();
        if op == "Constant" {
            cond.input.clear();
        }
        cond.attribute = attribute;
        p
    }

    /// The fixture's expected outputs, by name (onnxruntime's).
    fn expected(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../tests/fixtures/models/{name}.testvectors.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn run(p: &ModelProto, inputs: TVec<TValue>) -> TVec<TValue> {
        crate::front_end::onnx()
            .model_for_proto_model(p)
            .unwrap()
            .into_typed()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(inputs)
            .unwrap()
    }

    fn close(got: &TValue, want: &serde_json::Value) {
        let got = got.try_as_plain_ram().unwrap();
        let got = got.as_slice::<f32>().unwrap();
        let want: Vec<f32> = serde_json::from_value(want["data"].clone()).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 + 1e-3 * w.abs(),
                "{got:?} != {want:?}"
            );
        }
    }

    fn static_input() -> TVec<TValue> {
        let x: Vec<f32> = (0..8).map(|i| -1.0 + 2.0 * i as f32 / 7.0).collect();
        tvec![tract_ndarray::Array2::from_shape_vec((1, 8), x)
            .unwrap()
            .into_tensor()
            .into_tvalue()]
    }

    #[test]
    fn a_loop_with_a_constant_trip_count_becomes_its_iterations() {
        let mut p = fixture("loop_static");
        assert_eq!(unroll_static_loops(&mut p).unwrap(), 1);
        assert_eq!(ops(&p, "Loop"), 0);
        // 4 iterations of the 6 body nodes, one Identity for the carried
        // output, an Unsqueeze per iteration and a Concat for the scan.
        assert_eq!(graph(&p).node.len(), 4 * 6 + 1 + 4 + 1);
        assert_eq!(ops(&p, "Unsqueeze"), 4);
        assert_eq!(ops(&p, "Concat"), 1);
        // The body's initializer once; each iteration its number.
        let inits: Vec<&str> = graph(&p)
            .initializer
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(inits.iter().filter(|n| n.ends_with("/b")).count(), 1);
        assert!(inits.contains(&"steps/3/i"), "{inits:?}");
        let named: Vec<&str> = graph(&p)
            .node
            .iter()
            .map(|n| n.name.as_str())
            .filter(|n| !n.is_empty())
            .collect();
        // The carried output's Identity, the scan's Unsqueezes and Concat.
        assert_eq!(named.len(), 6);
        assert_eq!(named.iter().collect::<HashSet<_>>().len(), named.len());
        // What tract computes from it is onnxruntime's answer.
        let want = &expected("loop_static")["vectors"][0]["outputs"];
        let out = run(&p, static_input());
        close(&out[0], &want["y"]);
        assert_eq!(out[1].shape(), &[4, 1, 8]);
        close(&out[1], &want["ys"]);
    }

    #[test]
    fn before_opset_13_the_scan_unsqueezes_take_their_axes_as_an_attribute() {
        let mut p = fixture("loop_static");
        p.opset_import[0].version = 11;
        assert_eq!(unroll_static_loops(&mut p).unwrap(), 1);
        let u = graph(&p)
            .node
            .iter()
            .find(|n| n.op_type == "Unsqueeze")
            .unwrap();
        assert_eq!(u.input.len(), 1);
        assert_eq!(u.attribute[0].ints, vec![0]);
        let want = &expected("loop_static")["vectors"][0]["outputs"];
        close(&run(&p, static_input())[1], &want["ys"]);
    }

    #[test]
    fn a_trip_count_from_an_input_unrolls_only_once_the_input_is_fixed() {
        let mut p = fixture("loop_on_rate");
        assert_eq!(unroll_static_loops(&mut p).unwrap(), 0);
        assert_eq!(ops(&p, "Loop"), 1);
        let n = |v: i64| Tensor {
            name: "n".into(),
            shape: vec![],
            data: TensorData::I64(vec![v]),
        };
        assert_eq!(fix_inputs(&mut p, &[n(32)]).unwrap(), 1);
        assert_eq!(ops(&p, "Loop"), 0);
        // The Div, 4 iterations of 5 nodes, the carried output's Identity.
        assert_eq!(graph(&p).node.len(), 1 + 4 * 5 + 1);
        // No iteration: the output is the initial value.
        let mut p = fixture("loop_on_rate");
        assert_eq!(fix_inputs(&mut p, &[n(4)]).unwrap(), 1);
        let node_ops: Vec<&str> = graph(&p).node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(node_ops, ["Div", "Identity"]);
        assert_eq!(graph(&p).node[1].input, ["x"]);
    }

    #[test]
    fn a_constant_true_body_condition_unrolls_and_a_computed_one_is_left() {
        let mut p = with_body_cond("Constant", vec![bool_const(true)]);
        assert_eq!(unroll_static_loops(&mut p).unwrap(), 1);
        assert_eq!(ops(&p, "Loop"), 0);
        assert_eq!(ops(&p, "Constant"), 4);
        for mut p in [
            with_body_cond("Not", vec![]),
            with_body_cond("Constant", vec![bool_const(false)]),
        ] {
            assert_eq!(unroll_static_loops(&mut p).unwrap(), 0);
            assert_eq!(ops(&p, "Loop"), 1);
        }
    }

    #[test]
    fn loops_past_the_bounds_or_without_iterations_to_scan_are_left() {
        for trips in [loops::MAX_TRIPS + 1, 0] {
            let mut p = fixture("loop_static");
            set_trips(&mut p, trips);
            assert_eq!(unroll_static_loops(&mut p).unwrap(), 0, "{trips}");
            assert_eq!(ops(&p, "Loop"), 1);
        }
        // 1000 iterations of a body of 6 nodes are within both bounds; of
        // 120 nodes, past the bound on nodes.
        let mut p = fixture("loop_static");
        set_trips(&mut p, 1000);
        assert_eq!(unroll_static_loops(&mut p).unwrap(), 1);
        let mut p = fixture("loop_static");
        set_trips(&mut p, 1000);
        let body = body_mut(&mut p);
        let padding: Vec<NodeProto> = (0..114)
            .map(|k| NodeProto {
                op_type: "Identity".into(),
                input: vec!["v_in".into()],
                output: vec![format!("pad{k}")],
                ..Default::default()
            })
            .collect();
        body.node.extend(padding);
        const { assert!(1000 * 120 > loops::MAX_UNROLLED_NODES) };
        assert_eq!(unroll_static_loops(&mut p).unwrap(), 0);
        assert_eq!(ops(&p, "Loop"), 1);
    }
}
