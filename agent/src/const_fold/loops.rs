//! Unrolling a `Loop` whose trip count is constant (tract has no `Loop`).
//!
//! ONNX's `Loop` takes `(M, cond, v_1..v_N)`; its body takes
//! `(iteration_num, cond, v_1..v_N)` and gives `(cond, v_1..v_N,
//! scan_1..scan_K)`; the `Loop` gives the carried values after the last
//! iteration, then each scan output of every iteration stacked on a new
//! axis 0. One is unrolled when `M` depends on constants only (evaluated
//! like an `If`'s condition), its `cond` is absent or constant, and its
//! body's condition output is its condition input passed through or a
//! constant true: the loop then runs exactly `M` times (none when `cond`
//! is false).
//!
//! Iteration `i` is a copy of the body with every value the body defines
//! renamed under `{loop}/{i}/`, `iteration_num` an initializer holding `i`,
//! `cond` one holding true and the carried inputs the previous iteration's
//! outputs; values the body reads from the outer graph keep their names.
//! The body's initializers are added once, under `{loop}/init/`. Scan
//! outputs are `Unsqueeze`d on axis 0 and `Concat`enated; carried outputs
//! are `Identity`s of the last iteration's values.
//!
//! Left alone (and so refused by the engine, naming `Loop`): a trip count
//! or `cond` computed at run time, a body condition computed from anything
//! else, a negative trip count, zero iterations with a scan output in use,
//! and a loop past the bounds below.

use super::{cone, evaluate, rename_node, scalar, FoldError, ShapedInput, BOOL, INT64};
use std::collections::HashMap;
use tract_onnx::pb::{
    attribute_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto,
};

/// The most iterations one `Loop` is unrolled to.
pub(super) const MAX_TRIPS: i64 = 1024;
/// The most nodes one unrolled `Loop` may add (iterations × body nodes,
/// nested subgraphs counted).
pub(super) const MAX_UNROLLED_NODES: usize = 100_000;
/// The most nodes the top-level graph may have after an unrolling.
const MAX_GRAPH_NODES: usize = 250_000;

/// Unrolls the `Loop`s of the top-level graph in order (an unrolled body's
/// own `Loop`s come next). With `strict`, a trip count or condition that
/// depends on constants only but cannot be evaluated is an error; otherwise
/// that `Loop` is left. Returns how many were unrolled.
pub(super) fn unroll(
    proto: &mut ModelProto,
    inputs: &[ShapedInput],
    strict: bool,
) -> Result<usize, FoldError> {
    let opsets = proto.opset_import.clone();
    let ir_version = proto.ir_version;
    let opset = default_opset(&opsets);
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(0);
    };
    let eval = Eval {
        inputs,
        ir_version,
        opsets: &opsets,
    };
    let mut unrolled = 0;
    let mut from = 0;
    while let Some(at) = super::next_op(graph, "Loop", from) {
        from = at + 1;
        let trips = match trip_count(graph, at, &eval) {
            Ok(Some(trips)) => trips,
            Ok(None) => continue,
            Err(e) if strict => return Err(e),
            Err(_) => continue,
        };
        let node = &graph.node[at];
        let Some(body) = static_body(node, graph) else {
            continue;
        };
        let size = body_size(&body) as u64;
        let added = (trips as u64).saturating_mul(size);
        if trips > MAX_TRIPS
            || added > MAX_UNROLLED_NODES as u64
            || graph.node.len() as u64 + added > MAX_GRAPH_NODES as u64
        {
            tracing::info!(
                node = %node.name,
                trips,
                body_nodes = size,
                "a Loop past the unrolling bounds is left as it is"
            );
            continue;
        }
        let Some((nodes, initializers)) = iterations(node, at, &body, trips as usize, opset) else {
            continue;
        };
        graph.initializer.extend(initializers);
        graph.node.splice(at..=at, nodes);
        unrolled += 1;
        // The iterations start at `at`; a body's own Loops come next.
        from = at;
    }
    Ok(unrolled)
}

/// What evaluating a constant value needs.
struct Eval<'a> {
    inputs: &'a [ShapedInput],
    ir_version: i64,
    opsets: &'a [OperatorSetIdProto],
}

/// How many times the `Loop` at `at` runs: `None` when that is not known
/// before it runs (no trip count, or one or a condition computed from a
/// run-time value) or the trip count is negative.
fn trip_count(graph: &GraphProto, at: usize, eval: &Eval) -> Result<Option<i64>, FoldError> {
    let node = &graph.node[at];
    let given = |k: usize| node.input.get(k).filter(|v| !v.is_empty());
    let Some(m) = given(0) else {
        return Ok(None);
    };
    let Some(trips) = constant::<i64>(graph, at, m, INT64, "trip count", eval)? else {
        return Ok(None);
    };
    if trips < 0 {
        return Ok(None);
    }
    let run = match given(1) {
        None => true,
        Some(cond) => match constant::<bool>(graph, at, cond, BOOL, "condition", eval)? {
            Some(run) => run,
            None => return Ok(None),
        },
    };
    Ok(Some(if run { trips } else { 0 }))
}

/// The one value of `value`, read by the node at `at`, when it depends on
/// constants only (`None` otherwise).
fn constant<T: tract_onnx::prelude::Datum + Copy>(
    graph: &GraphProto,
    at: usize,
    value: &str,
    elem: i32,
    what: &'static str,
    eval: &Eval,
) -> Result<Option<T>, FoldError> {
    let Some(cone) = cone(graph, at, value, eval.inputs) else {
        return Ok(None);
    };
    let fail = |reason: String| FoldError::LoopInput {
        node: graph.node[at].name.clone(),
        what,
        reason,
    };
    let t = evaluate(
        graph,
        value,
        elem,
        &cone,
        eval.inputs,
        eval.ir_version,
        eval.opsets,
    )
    .map_err(fail)?;
    scalar::<T>(&t).map(Some).map_err(fail)
}

/// The body of `node`, when its inputs and outputs are a `Loop`'s and its
/// condition output is its condition input or a constant true (the loop
/// then ends only at its trip count).
fn static_body(node: &NodeProto, outer: &GraphProto) -> Option<GraphProto> {
    let body = node
        .attribute
        .iter()
        .find(|a| a.name == "body")
        .and_then(|a| a.g.as_ref())?;
    let carried = node.input.len().checked_sub(2)?;
    if body.input.len() != carried + 2
        || body.output.len() < carried + 1
        || node.output.len() > body.output.len() - 1
    {
        return None;
    }
    let cond_in = body.input[1].name.as_str();
    let mut v = body.output[0].name.as_str();
    // Through Identities to the condition input or a constant.
    for _ in 0..=body.node.len() {
        if v == cond_in {
            return Some(body.clone());
        }
        if let Some(n) = body.node.iter().find(|n| n.output.iter().any(|o| o == v)) {
            if !n.domain.is_empty() {
                return None;
            }
            match n.op_type.as_str() {
                "Identity" => v = n.input.first()?.as_str(),
                "Constant" => {
                    let value = n.attribute.iter().find(|a| a.name == "value")?;
                    return is_true(value.t.as_ref()?).then(|| body.clone());
                }
                _ => return None,
            }
        } else {
            let t = body
                .initializer
                .iter()
                .chain(&outer.initializer)
                .find(|t| t.name == v)?;
            return is_true(t).then(|| body.clone());
        }
    }
    None
}

/// Whether `t` is a boolean scalar (or one-value tensor) holding true.
fn is_true(t: &TensorProto) -> bool {
    t.data_type == BOOL
        && t.dims.iter().product::<i64>() == 1
        && (t.int32_data.first().is_some_and(|v| *v != 0)
            || t.raw_data.first().is_some_and(|v| *v != 0))
}

/// The nodes of `g`, its nested subgraphs' included.
fn body_size(g: &GraphProto) -> usize {
    g.node
        .iter()
        .map(|n| {
            1 + n
                .attribute
                .iter()
                .flat_map(|a| a.g.iter().chain(&a.graphs))
                .map(body_size)
                .sum::<usize>()
        })
        .sum()
}

/// The version of the default ONNX domain the model imports.
fn default_opset(opsets: &[OperatorSetIdProto]) -> i64 {
    opsets
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .unwrap_or(1)
}

/// The nodes and initializers that replace the `Loop` `node` (at `at`)
/// run `trips` times, or `None` when it cannot be (no iterations to stack a
/// scan output from).
fn iterations(
    node: &NodeProto,
    at: usize,
    body: &GraphProto,
    trips: usize,
    opset: i64,
) -> Option<(Vec<NodeProto>, Vec<TensorProto>)> {
    let n_carried = node.input.len() - 2;
    let scan_outputs: Vec<(usize, &String)> = node
        .output
        .iter()
        .enumerate()
        .skip(n_carried)
        .filter(|(_, o)| !o.is_empty())
        .map(|(k, o)| (k - n_carried, o))
        .collect();
    if trips == 0 && !scan_outputs.is_empty() {
        return None;
    }
    let prefix = if node.name.is_empty() {
        format!("loop{at}")
    } else {
        node.name.clone()
    };
    let mut nodes = Vec::with_capacity(trips * body.node.len() + node.output.len());
    let mut initializers = Vec::new();
    // The body's constants, once for every iteration.
    let mut shared: HashMap<String, String> = HashMap::new();
    for t in &body.initializer {
        let name = format!("{prefix}/init/{}", t.name);
        shared.insert(t.name.clone(), name.clone());
        initializers.push(TensorProto { name, ..t.clone() });
    }
    let mut carried: Vec<String> = node.input[2..].to_vec();
    let mut scans: Vec<Vec<String>> = vec![Vec::with_capacity(trips); scan_outputs.len()];
    for i in 0..trips {
        let p = format!("{prefix}/{i}/");
        let mut renames = shared.clone();
        for n in &body.node {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                renames.insert(o.clone(), format!("{p}{o}"));
            }
        }
        // (iteration_num, cond, v_1..v_N): two constants and the previous
        // iteration's values.
        let (iteration, cond) = (&body.input[0].name, &body.input[1].name);
        if !iteration.is_empty() {
            let name = format!("{p}{iteration}");
            initializers.push(scalar_proto(&name, INT64, |t| {
                t.int64_data = vec![i as i64]
            }));
            renames.insert(iteration.clone(), name);
        }
        if !cond.is_empty() {
            let name = format!("{p}{cond}");
            initializers.push(scalar_proto(&name, BOOL, |t| t.int32_data = vec![1]));
            renames.insert(cond.clone(), name);
        }
        for (v, value) in body.input[2..].iter().zip(&carried) {
            renames.insert(v.name.clone(), value.clone());
        }
        for n in &body.node {
            let mut n = n.clone();
            rename_node(&mut n, &renames);
            if !n.name.is_empty() {
                n.name = format!("{p}{}", n.name);
            }
            nodes.push(n);
        }
        let out = |k: usize| {
            let name = &body.output[k].name;
            renames.get(name).cloned().unwrap_or_else(|| name.clone())
        };
        carried = (0..n_carried).map(|j| out(1 + j)).collect();
        for (s, (k, _)) in scans.iter_mut().zip(&scan_outputs) {
            s.push(out(1 + n_carried + k));
        }
    }
    for (j, (out, from)) in node.output.iter().zip(&carried).enumerate() {
        if !out.is_empty() {
            nodes.push(op(
                format!("{prefix}/output{j}"),
                "Identity",
                vec![from.clone()],
                out,
            ));
        }
    }
    if !scan_outputs.is_empty() {
        // Unsqueeze takes its axes as an input from opset 13 on.
        let axes = format!("{prefix}/axes0");
        if opset >= 13 {
            initializers.push(TensorProto {
                name: axes.clone(),
                dims: vec![1],
                data_type: INT64,
                int64_data: vec![0],
                ..Default::default()
            });
        }
        for (values, (k, out)) in scans.into_iter().zip(scan_outputs) {
            let mut stacked = Vec::with_capacity(values.len());
            for (i, v) in values.into_iter().enumerate() {
                let name = format!("{prefix}/scan{k}/{i}");
                let mut u = if opset >= 13 {
                    op(name.clone(), "Unsqueeze", vec![v, axes.clone()], &name)
                } else {
                    op(name.clone(), "Unsqueeze", vec![v], &name)
                };
                if opset < 13 {
                    u.attribute.push(ints("axes", vec![0]));
                }
                nodes.push(u);
                stacked.push(name);
            }
            let mut concat = op(format!("{prefix}/scan{k}"), "Concat", stacked, out);
            concat.attribute.push(AttributeProto {
                name: "axis".into(),
                r#type: attribute_proto::AttributeType::Int as i32,
                i: 0,
                ..Default::default()
            });
            nodes.push(concat);
        }
    }
    Some((nodes, initializers))
}

fn op(name: String, op_type: &str, input: Vec<String>, output: &str) -> NodeProto {
    NodeProto {
        name,
        op_type: op_type.into(),
        input,
        output: vec![output.to_string()],
        ..Default::default()
    }
}

fn ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_proto::AttributeType::Ints as i32,
        ints,
        ..Default::default()
    }
}

fn scalar_proto(name: &str, elem: i32, fill: impl FnOnce(&mut TensorProto)) -> TensorProto {
    let mut t = TensorProto {
        name: name.into(),
        data_type: elem,
        ..Default::default()
    };
    fill(&mut t);
    t
}
