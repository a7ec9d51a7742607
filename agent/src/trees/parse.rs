//! ONNX-ML `TreeEnsembleClassifier` / `TreeEnsembleRegressor` attributes to [`Ensemble`].
//!
//! Validation happens here, at model load: anything the evaluator cannot run
//! exactly as onnxruntime would is refused with the attribute and value named.

use std::collections::HashMap;

use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};

use super::ensemble::{Aggregate, Ensemble, Kind, PostTransform};
use super::node::{Mode, Node, FEATURE_MASK};
use super::TreeError;

const CLASSIFIER_ATTRS: &[&str] = &[
    "base_values",
    "base_values_as_tensor",
    "class_ids",
    "class_nodeids",
    "class_treeids",
    "class_weights",
    "class_weights_as_tensor",
    "classlabels_int64s",
    "classlabels_strings",
    "post_transform",
];
const REGRESSOR_ATTRS: &[&str] = &[
    "aggregate_function",
    "base_values",
    "base_values_as_tensor",
    "n_targets",
    "post_transform",
    "target_ids",
    "target_nodeids",
    "target_treeids",
    "target_weights",
    "target_weights_as_tensor",
];
const NODE_ATTRS: &[&str] = &[
    "nodes_falsenodeids",
    "nodes_featureids",
    "nodes_hitrates",
    "nodes_hitrates_as_tensor",
    "nodes_missing_value_tracks_true",
    "nodes_modes",
    "nodes_nodeids",
    "nodes_treeids",
    "nodes_truenodeids",
    "nodes_values",
    "nodes_values_as_tensor",
];

struct Attrs<'a> {
    op: &'static str,
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn err(&self, attr: &str, reason: impl Into<String>) -> TreeError {
        TreeError::Attribute {
            op: self.op,
            attr: attr.to_string(),
            reason: reason.into(),
        }
    }

    fn ints(&self, name: &str) -> &'a [i64] {
        self.get(name).map_or(&[], |a| &a.ints[..])
    }

    fn int(&self, name: &str) -> Option<i64> {
        self.get(name).map(|a| a.i)
    }

    fn string(&self, name: &str) -> Result<Option<String>, TreeError> {
        self.get(name)
            .map(|a| String::from_utf8(a.s.clone()).map_err(|_| self.err(name, "is not UTF-8")))
            .transpose()
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, TreeError> {
        self.get(name).map_or(Ok(vec![]), |a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8(s.clone()).map_err(|_| self.err(name, "is not UTF-8")))
                .collect()
        })
    }

    /// A float list, from `name` or from its double `name_as_tensor` twin.
    /// Values are rounded to float32, as onnxruntime does for float inputs.
    fn floats(&self, name: &str) -> Result<Vec<f32>, TreeError> {
        let tensor_name = format!("{name}_as_tensor");
        match (self.get(name), self.get(&tensor_name)) {
            (Some(_), Some(_)) => {
                Err(self.err(&tensor_name, format!("is set together with {name}")))
            }
            (Some(a), None) => Ok(a.floats.clone()),
            (None, Some(a)) => match &a.t {
                Some(t) => tensor_floats(t).map_err(|reason| self.err(&tensor_name, reason)),
                None => Err(self.err(&tensor_name, "holds no tensor")),
            },
            (None, None) => Ok(vec![]),
        }
    }
}

#[allow(clippy::cast_possible_truncation)]
fn tensor_floats(t: &TensorProto) -> Result<Vec<f32>, String> {
    const FLOAT: i32 = 1;
    const DOUBLE: i32 = 11;
    match t.data_type {
        FLOAT if !t.raw_data.is_empty() => Ok(t
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        FLOAT => Ok(t.float_data.clone()),
        DOUBLE if !t.raw_data.is_empty() => Ok(t
            .raw_data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect()),
        DOUBLE => Ok(t.double_data.iter().map(|&v| v as f32).collect()),
        other => Err(format!(
            "has element type {other}; float or double expected"
        )),
    }
}

fn parse_mode(s: &[u8]) -> Option<Option<Mode>> {
    Some(Some(match s {
        b"BRANCH_LEQ" => Mode::Leq,
        b"BRANCH_LT" => Mode::Lt,
        b"BRANCH_GTE" => Mode::Gte,
        b"BRANCH_GT" => Mode::Gt,
        b"BRANCH_EQ" => Mode::Eq,
        b"BRANCH_NEQ" => Mode::Neq,
        b"LEAF" => return Some(None),
        _ => return None,
    }))
}

/// Parse and validate a `TreeEnsembleClassifier` (`classifier`) or
/// `TreeEnsembleRegressor` node.
pub fn parse_node(node: &NodeProto, classifier: bool) -> Result<Ensemble, TreeError> {
    let op = if classifier {
        "TreeEnsembleClassifier"
    } else {
        "TreeEnsembleRegressor"
    };
    let a = Attrs { op, node };
    let own = if classifier {
        CLASSIFIER_ATTRS
    } else {
        REGRESSOR_ATTRS
    };
    for attr in &node.attribute {
        if !own.contains(&attr.name.as_str()) && !NODE_ATTRS.contains(&attr.name.as_str()) {
            return Err(a.err(&attr.name, "is not a known attribute of this operator"));
        }
    }

    let post_transform = match a.string("post_transform")?.as_deref().unwrap_or("NONE") {
        "NONE" => PostTransform::None,
        "SOFTMAX" => PostTransform::Softmax,
        "LOGISTIC" => PostTransform::Logistic,
        "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
        "PROBIT" if !classifier => PostTransform::Probit,
        "PROBIT" => {
            return Err(a.err(
                "post_transform",
                "value PROBIT is not supported on a classifier",
            ))
        }
        other => return Err(a.err("post_transform", format!("has unknown value {other}"))),
    };

    let (kind, n_outputs, prefix) = if classifier {
        let ints = a.ints("classlabels_int64s");
        let strings = a.strings("classlabels_strings")?;
        let (labels, strings) = match (ints.is_empty(), strings.is_empty()) {
            (false, true) => (ints.to_vec(), None),
            (true, false) => ((0..strings.len() as i64).collect(), Some(strings)),
            (true, true) => {
                return Err(a.err(
                    "classlabels_int64s",
                    "and classlabels_strings are both empty",
                ))
            }
            (false, false) => {
                return Err(a.err(
                    "classlabels_strings",
                    "is set together with classlabels_int64s",
                ))
            }
        };
        if labels.len() < 2 {
            return Err(a.err(
                "classlabels_int64s",
                "has a single class; at least 2 are needed",
            ));
        }
        let n = labels.len();
        let mut ids: Vec<i64> = a.ints("class_ids").to_vec();
        ids.sort_unstable();
        ids.dedup();
        let weights = a.floats("class_weights")?;
        let kind = Kind::Classifier {
            labels,
            strings,
            binary_single_column: n == 2 && ids.len() == 1,
            weights_all_positive: weights.iter().all(|w| *w >= 0.0),
        };
        (kind, n, "class")
    } else {
        let aggregate = match a.string("aggregate_function")?.as_deref().unwrap_or("SUM") {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => return Err(a.err("aggregate_function", format!("has unknown value {other}"))),
        };
        let n = a.int("n_targets").unwrap_or(0);
        if n < 1 {
            return Err(a.err("n_targets", format!("is {n}; at least 1 is needed")));
        }
        let n = usize::try_from(n).map_err(|_| a.err("n_targets", "is too large"))?;
        (Kind::Regressor { aggregate }, n, "target")
    };

    let base_values = a.floats("base_values")?;
    if base_values.len() > n_outputs {
        return Err(a.err(
            "base_values",
            format!("has {} values for {n_outputs} outputs", base_values.len()),
        ));
    }

    let tree_ids = a.ints("nodes_treeids");
    let n = tree_ids.len();
    if n == 0 {
        return Err(a.err("nodes_treeids", "is empty: the ensemble has no nodes"));
    }
    let node_ids = a.ints("nodes_nodeids");
    let features = a.ints("nodes_featureids");
    let trues = a.ints("nodes_truenodeids");
    let falses = a.ints("nodes_falsenodeids");
    let values = a.floats("nodes_values")?;
    let missing = a.ints("nodes_missing_value_tracks_true");
    let modes = a.get("nodes_modes").map_or(&[][..], |m| &m.strings[..]);
    for (name, len) in [
        ("nodes_nodeids", node_ids.len()),
        ("nodes_featureids", features.len()),
        ("nodes_truenodeids", trues.len()),
        ("nodes_falsenodeids", falses.len()),
        ("nodes_values", values.len()),
        ("nodes_modes", modes.len()),
    ] {
        if len != n {
            return Err(a.err(name, format!("has {len} entries, nodes_treeids has {n}")));
        }
    }
    if missing.len() > n {
        return Err(a.err(
            "nodes_missing_value_tracks_true",
            "has more entries than nodes",
        ));
    }
    let modes: Vec<Option<Mode>> = modes
        .iter()
        .map(|m| {
            parse_mode(m).ok_or_else(|| {
                a.err(
                    "nodes_modes",
                    format!("has unknown value {}", String::from_utf8_lossy(m)),
                )
            })
        })
        .collect::<Result<_, _>>()?;

    let mut by_id: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
    for i in 0..n {
        if by_id.insert((tree_ids[i], node_ids[i]), i).is_some() {
            return Err(a.err(
                "nodes_nodeids",
                format!("node {} of tree {} appears twice", node_ids[i], tree_ids[i]),
            ));
        }
    }

    // Trees in order of first appearance; each tree's root is its first node.
    let mut tree_roots: Vec<usize> = vec![];
    let mut seen_trees: HashMap<i64, ()> = HashMap::new();
    for i in 0..n {
        if i == 0 || tree_ids[i] != tree_ids[i - 1] {
            if seen_trees.insert(tree_ids[i], ()).is_some() {
                return Err(a.err(
                    "nodes_treeids",
                    format!("tree {} is split into several runs of nodes", tree_ids[i]),
                ));
            }
            tree_roots.push(i);
        }
    }

    let child = |i: usize, ids: &[i64], attr: &str| -> Result<usize, TreeError> {
        let c = *by_id.get(&(tree_ids[i], ids[i])).ok_or_else(|| {
            a.err(
                attr,
                format!("node {} of tree {} is not defined", ids[i], tree_ids[i]),
            )
        })?;
        if c == i {
            return Err(a.err(
                attr,
                format!(
                    "node {} of tree {} points to itself",
                    node_ids[i], tree_ids[i]
                ),
            ));
        }
        Ok(c)
    };

    // Level-order layout, tree after tree.
    let mut new_index = vec![u32::MAX; n];
    let mut order: Vec<usize> = Vec::with_capacity(n);
    let mut roots = Vec::with_capacity(tree_roots.len());
    for &root in &tree_roots {
        roots.push(order.len() as u32);
        new_index[root] = order.len() as u32;
        order.push(root);
        let mut head = order.len() - 1;
        while head < order.len() {
            let i = order[head];
            head += 1;
            if modes[i].is_some() {
                for c in [
                    child(i, trues, "nodes_truenodeids")?,
                    child(i, falses, "nodes_falsenodeids")?,
                ] {
                    if new_index[c] == u32::MAX {
                        new_index[c] = order.len() as u32;
                        order.push(c);
                    }
                }
            }
        }
    }
    if order.len() > FEATURE_MASK as usize {
        return Err(a.err("nodes_treeids", "has too many nodes"));
    }

    let mut nodes = Vec::with_capacity(order.len());
    let mut leaf_of = vec![u32::MAX; order.len()];
    let mut n_leaves = 0u32;
    let mut max_feature = 0i64;
    for (new, &i) in order.iter().enumerate() {
        let f = features[i];
        if f < 0 || f >= i64::from(FEATURE_MASK) {
            return Err(a.err("nodes_featureids", format!("has out-of-range value {f}")));
        }
        max_feature = max_feature.max(f);
        let new = new as u32;
        nodes.push(match modes[i] {
            Some(mode) => Node {
                feature: Ensemble::pack_feature(
                    f as u32,
                    mode,
                    missing.get(i).copied().unwrap_or(0) == 1,
                ),
                threshold: values[i],
                on_true: new_index[child(i, trues, "nodes_truenodeids")?],
                on_false: new_index[child(i, falses, "nodes_falsenodeids")?],
            },
            None => {
                leaf_of[new as usize] = n_leaves;
                n_leaves += 1;
                Node {
                    feature: 0,
                    threshold: f32::from_bits(n_leaves - 1),
                    on_true: new,
                    on_false: new,
                }
            }
        });
    }

    let depths = roots
        .iter()
        .map(|&r| {
            tree_depth(&nodes, r).ok_or_else(|| a.err("nodes_truenodeids", "a tree has a cycle"))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Leaf weights, in (tree, node, attribute position) order like onnxruntime.
    let w_ids = a.ints(&format!("{prefix}_ids"));
    let w_nodes = a.ints(&format!("{prefix}_nodeids"));
    let w_trees = a.ints(&format!("{prefix}_treeids"));
    let w_values = a.floats(&format!("{prefix}_weights"))?;
    for (name, len) in [
        (format!("{prefix}_nodeids"), w_nodes.len()),
        (format!("{prefix}_treeids"), w_trees.len()),
        (format!("{prefix}_weights"), w_values.len()),
    ] {
        if len != w_ids.len() {
            return Err(a.err(
                &name,
                format!("has {len} entries, {prefix}_ids has {}", w_ids.len()),
            ));
        }
    }
    let mut sorted: Vec<usize> = (0..w_ids.len()).collect();
    sorted.sort_by_key(|&k| (w_trees[k], w_nodes[k], k));
    let mut per_leaf: Vec<Vec<(u32, f32)>> = vec![vec![]; n_leaves as usize];
    for k in sorted {
        let i = *by_id.get(&(w_trees[k], w_nodes[k])).ok_or_else(|| {
            a.err(
                &format!("{prefix}_nodeids"),
                format!("node {} of tree {} is not defined", w_nodes[k], w_trees[k]),
            )
        })?;
        let id = w_ids[k];
        if id < 0 || id as usize >= n_outputs {
            return Err(a.err(
                &format!("{prefix}_ids"),
                format!("has value {id} outside 0..{n_outputs}"),
            ));
        }
        let new = new_index[i];
        // onnxruntime ignores weights on branch nodes (old onnxmltools emitted them).
        if let Some(&leaf) = leaf_of.get(new as usize).filter(|l| **l != u32::MAX) {
            per_leaf[leaf as usize].push((id as u32, w_values[k]));
        }
    }
    let mut leaf_start = Vec::with_capacity(n_leaves as usize + 1);
    let mut weights = vec![];
    let mut leaf_first = vec![0f32; n_leaves as usize];
    for (new, &i) in order.iter().enumerate() {
        if let Some(&leaf) = leaf_of.get(new).filter(|l| **l != u32::MAX) {
            let ws = &per_leaf[leaf as usize];
            leaf_start.push(weights.len() as u32);
            // Without a weight, onnxruntime's single-target value is nodes_values.
            leaf_first[leaf as usize] = ws.first().map_or(values[i], |w| w.1);
            weights.extend_from_slice(ws);
        }
    }
    leaf_start.push(weights.len() as u32);

    Ok(Ensemble {
        nodes,
        roots,
        depths,
        group_depths: vec![],
        leaf_start,
        weights,
        leaf_first,
        n_outputs,
        n_features: max_feature as usize + 1,
        base_values,
        post_transform,
        kind,
        same_mode: 0,
        has_missing: false,
        complete: None,
    }
    .finish())
}

/// Longest root-to-leaf path, or `None` on a cycle.
fn tree_depth(nodes: &[Node], root: u32) -> Option<u32> {
    // Iterative post-order over the DAG; 0 = new, 1 = on the stack, 2 = done.
    let mut state: HashMap<u32, (u8, u32)> = HashMap::new();
    let mut stack = vec![root];
    while let Some(&i) = stack.last() {
        let n = nodes.get(i as usize)?;
        if n.on_true == i {
            state.insert(i, (2, 0));
            stack.pop();
            continue;
        }
        match state.get(&i).map(|s| s.0) {
            Some(2) => {
                stack.pop();
            }
            Some(1) => {
                let d = |c: u32| state.get(&c).map(|s| s.1);
                let depth = 1 + d(n.on_true)?.max(d(n.on_false)?);
                state.insert(i, (2, depth));
                stack.pop();
            }
            _ => {
                state.insert(i, (1, 0));
                for c in [n.on_true, n.on_false] {
                    match state.get(&c).map(|s| s.0) {
                        Some(1) => return None,
                        Some(2) => {}
                        _ => stack.push(c),
                    }
                }
            }
        }
    }
    state.get(&root).map(|s| s.1)
}
