#![allow(clippy::unwrap_used)]
//! The two tree layouts (padded complete trees for shallow ensembles, child
//! pointers for deep ones) must give bit-identical results. The tract-level
//! test checks the default layout against onnxruntime; this one pins the
//! other layout to it on every fixture, in batches of every path's size.

use std::path::{Path, PathBuf};

use ferry_agent::trees::{self, parse_node, Ensemble};
use serde_json::Value;
use tract_onnx::prelude::Framework;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/trees")
}

fn ensemble(name: &str) -> (Ensemble, Vec<f32>, usize) {
    let bytes = std::fs::read(dir().join(format!("{name}.onnx"))).unwrap();
    let proto = trees::onnx().proto_model_for_read(&mut &bytes[..]).unwrap();
    let node = proto
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.op_type.starts_with("TreeEnsemble"))
        .unwrap()
        .clone();
    let e = parse_node(&node, node.op_type == "TreeEnsembleClassifier").unwrap();
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join(format!("{name}.reference.json"))).unwrap(),
    )
    .unwrap();
    let rows = doc["rows"].as_array().unwrap();
    let f = rows[0].as_array().unwrap().len();
    let x = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().map_or(f32::NAN, |v| v as f32))
        })
        .collect();
    (e, x, f)
}

fn names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .into_string()
                .unwrap()
                .strip_suffix(".onnx")
                .map(String::from)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn complete_and_pointer_layouts_agree_bit_for_bit() {
    let mut complete = 0;
    for name in names() {
        let (e, x, f) = ensemble(&name);
        if !e.uses_complete_layout() {
            continue;
        }
        complete += 1;
        let pointers = e.clone().pointer_layout_only();
        let rows = x.len() / f;
        // A single row, a few rows, a partial lane group, the whole set.
        for n in [1, 3, 11, rows] {
            for start in (0..rows).step_by(n) {
                let end = (start + n).min(rows);
                let xs = &x[start * f..end * f];
                let a = e.eval(xs, end - start, f).unwrap();
                let b = pointers.eval(xs, end - start, f).unwrap();
                assert_eq!(a.labels, b.labels, "{name} rows {start}..{end}");
                let (sa, sb): (Vec<u32>, Vec<u32>) = (
                    a.scores.iter().map(|v| v.to_bits()).collect(),
                    b.scores.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(sa, sb, "{name} rows {start}..{end}");
            }
        }
    }
    assert!(
        complete >= 40,
        "only {complete} fixtures use the complete layout"
    );
}

#[test]
fn deep_trees_use_pointers_and_shallow_ones_the_complete_layout() {
    let (deep, _, _) = ensemble("et_deep");
    assert!(
        deep.max_depth() > 10,
        "et_deep is only {} deep",
        deep.max_depth()
    );
    assert!(!deep.uses_complete_layout());
    let (shallow, _, _) = ensemble("rf_bin");
    assert!(shallow.uses_complete_layout());
}

#[test]
fn bad_batches_are_errors() {
    let (e, x, f) = ensemble("rf_bin");
    assert!(e.eval(&x[..f - 1], 1, f - 1).is_err(), "too few features");
    assert!(e.eval(&x[..f + 3], 1, f).is_err(), "ragged buffer");
    assert!(e.eval(&[], 0, f).unwrap().scores.is_empty());
}
