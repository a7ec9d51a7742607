#![allow(clippy::unwrap_used)]
//! Tree-ensemble fixtures (tests/fixtures/trees, made by make_tree_fixtures.py)
//! scored by Ferry's evaluator inside tract, against onnxruntime's outputs:
//! labels identical, scores within 1e-5 (relative above 1 for regression values).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_agent::trees;
use serde_json::Value;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/trees")
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".reference.json").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

struct Fixture {
    name: String,
    rows: Vec<Vec<f32>>,
    outputs: serde_json::Map<String, Value>,
}

fn load_fixture(name: &str) -> Fixture {
    let text =
        std::fs::read_to_string(fixtures_dir().join(format!("{name}.reference.json"))).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let rows = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().map_or(f32::NAN, |v| v as f32))
                .collect()
        })
        .collect();
    Fixture {
        name: name.into(),
        rows,
        outputs: doc["outputs"].as_object().unwrap().clone(),
    }
}

fn proto(name: &str) -> ModelProto {
    let bytes = std::fs::read(fixtures_dir().join(format!("{name}.onnx"))).unwrap();
    ferry_agent::engine::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .unwrap()
}

type Plan = Arc<TypedRunnableModel>;

fn plan_for(proto: &ModelProto) -> TractResult<(Plan, Vec<String>)> {
    let mut model = ferry_agent::engine::onnx().model_for_proto_model(proto)?;
    // Pin the input to float32 [N, F] with a symbolic batch, as the agent does.
    let f = model
        .input_fact(0)?
        .shape
        .dims()
        .nth(1)
        .and_then(|d| d.concretize())
        .unwrap();
    let n = model.sym("N");
    model.set_input_fact(
        0,
        InferenceFact::dt_shape(f32::datum_type(), tvec![TDim::Sym(n), f]),
    )?;
    let names = model
        .output_outlets()?
        .iter()
        .map(|o| model.outlet_label(*o).unwrap_or_default().to_string())
        .collect();
    Ok((model.into_optimized()?.into_runnable()?, names))
}

fn run(plan: &Plan, rows: &[Vec<f32>]) -> TVec<TValue> {
    let f = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let input = tract_ndarray::Array2::from_shape_vec((rows.len(), f), flat).unwrap();
    plan.run(tvec!(input.into_tensor().into())).unwrap()
}

/// Compare `got` (rows `first..first + n` of the reference) to onnxruntime.
fn check(fx: &Fixture, names: &[String], got: &TVec<TValue>, rows: std::ops::Range<usize>) {
    for (name, value) in names.iter().zip(got.iter()) {
        let reference = &fx.outputs[name];
        let shape: Vec<usize> = reference["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let width: usize = shape[1..].iter().product();
        let data = reference["data"].as_array().unwrap();
        let expected = &data[rows.start * width..rows.end * width];
        let ctx = format!("{} output {name} rows {rows:?}", fx.name);
        assert_eq!(value.len(), expected.len(), "{ctx}: length");
        match reference["dtype"].as_str().unwrap() {
            "int64" => {
                // tract may report int64 outputs as TDim; the values are the same.
                let got = value.cast_to::<i64>().unwrap();
                let got = got
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<i64>()
                    .unwrap()
                    .to_vec();
                let want: Vec<i64> = expected.iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(got, want, "{ctx}: labels");
            }
            "string" => {
                let got = value
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<String>()
                    .unwrap()
                    .to_vec();
                let want: Vec<String> = expected
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(got, want, "{ctx}: labels");
            }
            _ => {
                let got = value
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec();
                for (i, (g, w)) in got.iter().zip(expected).enumerate() {
                    // null stands for NaN (onnxruntime's PROBIT outside 0..1).
                    let Some(w) = w.as_f64().map(|w| w as f32) else {
                        assert!(g.is_nan(), "{ctx}: value {i}: got {g}, onnxruntime NaN");
                        continue;
                    };
                    let tol = 1e-5 * w.abs().max(1.0);
                    assert!(
                        (g - w).abs() <= tol,
                        "{ctx}: value {i}: got {g}, onnxruntime {w}"
                    );
                }
            }
        }
    }
}

/// Fixtures the evaluator must refuse rather than run.
const REFUSED: &[&str] = &[];

#[test]
fn every_fixture_matches_onnxruntime_batch_and_single_rows() {
    let names = fixture_names();
    assert!(
        names.len() >= 30,
        "fixtures missing: run make_tree_fixtures.py"
    );
    let mut failed = vec![];
    for name in names.iter().filter(|n| !REFUSED.contains(&n.as_str())) {
        // One report per fixture, so a single run lists every mismatch.
        let outcome = std::panic::catch_unwind(|| check_fixture(name));
        if let Err(e) = outcome {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            failed.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} fixtures differ:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn check_fixture(name: &str) {
    let fx = load_fixture(name);
    let (plan, outputs) = plan_for(&proto(name)).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let n = fx.rows.len();
    check(&fx, &outputs, &run(&plan, &fx.rows), 0..n);
    for r in 0..n {
        check(&fx, &outputs, &run(&plan, &fx.rows[r..r + 1]), r..r + 1);
    }
    // Batches of 3 and 11 rows: the few-rows path and a partial lane group.
    for size in [3, 11] {
        let mut start = 0;
        while start < n {
            let end = (start + size).min(n);
            check(&fx, &outputs, &run(&plan, &fx.rows[start..end]), start..end);
            start = end;
        }
    }
}

#[test]
fn large_batches_split_over_threads_match_onnxruntime() {
    trees::set_threads(2);
    for name in [
        "rf_multi",
        "hgb_bin",
        "xgb_reg",
        "lgbm_multi",
        "syn_modes_multi",
        "rf_strings",
    ] {
        if !fixtures_dir().join(format!("{name}.onnx")).exists() {
            continue; // the XGBoost/LightGBM fixtures are optional
        }
        let fx = load_fixture(name);
        let (plan, outputs) = plan_for(&proto(name)).unwrap();
        // 40 reference rows repeated to 40,000: enough work to use both threads.
        let big: Vec<Vec<f32>> = fx
            .rows
            .iter()
            .cycle()
            .take(fx.rows.len() * 1000)
            .cloned()
            .collect();
        let got = run(&plan, &big);
        for (out, value) in got.iter().enumerate() {
            let width = value.len() / big.len();
            let all = value.clone().into_tensor();
            for rep in [0, 499, 999] {
                let start = rep * fx.rows.len() * width;
                let slice = all
                    .slice(0, rep * fx.rows.len(), (rep + 1) * fx.rows.len())
                    .unwrap();
                let _ = start;
                check(
                    &fx,
                    &outputs[out..out + 1],
                    &tvec!(slice.into()),
                    0..fx.rows.len(),
                );
            }
        }
    }
}

fn set_attr(
    proto: &mut ModelProto,
    attr: &str,
    f: impl FnOnce(&mut tract_onnx::pb::AttributeProto),
) {
    let graph = proto.graph.as_mut().unwrap();
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type.starts_with("TreeEnsemble"))
        .unwrap();
    f(node
        .attribute
        .iter_mut()
        .find(|a| a.name == attr)
        .unwrap_or_else(|| panic!("no {attr}")));
}

fn refusal(proto: &ModelProto) -> String {
    match plan_for(proto) {
        Ok(_) => panic!("model was accepted"),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn unsupported_attributes_are_refused_at_load_naming_them() {
    let mut p = proto("syn_reg_sum");
    set_attr(&mut p, "nodes_modes", |a| {
        a.strings[0] = b"BRANCH_MEMBER".to_vec()
    });
    let e = refusal(&p);
    assert!(
        e.contains("nodes_modes") && e.contains("BRANCH_MEMBER"),
        "{e}"
    );

    let mut p = proto("syn_logistic_multi");
    set_attr(&mut p, "post_transform", |a| a.s = b"PROBIT".to_vec());
    let e = refusal(&p);
    assert!(e.contains("post_transform") && e.contains("PROBIT"), "{e}");

    let mut p = proto("syn_reg_sum");
    set_attr(&mut p, "aggregate_function", |a| a.s = b"MEDIAN".to_vec());
    let e = refusal(&p);
    assert!(
        e.contains("aggregate_function") && e.contains("MEDIAN"),
        "{e}"
    );

    let mut p = proto("syn_reg_sum");
    set_attr(&mut p, "nodes_truenodeids", |a| a.ints[0] = 42);
    let e = refusal(&p);
    assert!(e.contains("nodes_truenodeids") && e.contains("42"), "{e}");

    let mut p = proto("syn_reg_sum");
    set_attr(&mut p, "target_ids", |a| a.ints[0] = 9);
    let e = refusal(&p);
    assert!(e.contains("target_ids") && e.contains('9'), "{e}");

    let mut p = proto("syn_reg_sum");
    set_attr(&mut p, "nodes_values", |a| {
        a.floats.pop();
    });
    let e = refusal(&p);
    assert!(e.contains("nodes_values"), "{e}");

    let mut p = proto("syn_reg_sum");
    set_attr(&mut p, "nodes_falsenodeids", |a| {
        a.name = "nodes_falsenodeids_v9".into()
    });
    let e = refusal(&p);
    assert!(e.contains("nodes_falsenodeids_v9"), "{e}");

    // A cycle: node 1 of tree 0 sends its false branch back to the root.
    let mut p = proto("syn_reg_sum");
    set_attr(&mut p, "nodes_falsenodeids", |a| a.ints[1] = 0);
    let e = refusal(&p);
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn rows_with_too_few_features_are_an_error_not_a_panic() {
    let (plan, _) = plan_for(&proto("rf_bin")).unwrap();
    let input = tract_ndarray::Array2::<f32>::zeros((2, 5)).into_tensor();
    let e = plan.run(tvec!(input.into())).unwrap_err();
    assert!(format!("{e:?}").contains("feature"), "{e:?}");
}
