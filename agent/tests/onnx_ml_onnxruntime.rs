//! The ONNX-ML fixtures (tests/fixtures/onnx_ml, made by make_onnx_ml.py:
//! skl2onnx default exports and a few hand-built corner cases), each built
//! into a signed bundle by `ferry bundle build`'s code, verified and loaded
//! by the agent, and run by its engine: outputs equal onnxruntime's within
//! 1e-4 absolute + 1e-3 relative (labels exactly), for the whole batch,
//! every row alone and the batch-scoring plan.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{now, Keys};
use ferry_agent::engine::{Engine, Input, Output, PlanFor};
use ferry_agent::serving::{verify_and_load, verify_and_load_for};
use ferry_protocol::{DType, TensorData};
use serde_json::Value;
use tract_onnx::prelude::Framework;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx_ml")
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

fn reference(name: &str) -> Value {
    let text =
        std::fs::read_to_string(fixtures_dir().join(format!("{name}.reference.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn shape(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect()
}

/// Rows `rows` of every reference input, as engine inputs.
fn inputs(doc: &Value, rows: std::ops::Range<usize>) -> Vec<Input> {
    doc["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let mut shape = shape(i);
            let width: usize = shape[1..].iter().product();
            let data = &i["data"].as_array().unwrap()[rows.start * width..rows.end * width];
            shape[0] = rows.len();
            let data = match i["dtype"].as_str().unwrap() {
                "float32" => TensorData::F32(
                    data.iter()
                        .map(|v| v.as_f64().map_or(f32::NAN, |v| v as f32))
                        .collect(),
                ),
                "int64" => TensorData::I64(data.iter().map(|v| v.as_i64().unwrap()).collect()),
                other => panic!("input dtype {other}"),
            };
            Input { shape, data }
        })
        .collect()
}

fn close(got: f32, want: f64) -> bool {
    (f64::from(got) - want).abs() <= 1e-4 + 1e-3 * want.abs()
}

/// Compares `got` with rows `rows` of the reference outputs.
fn check(name: &str, doc: &Value, got: &[Output], rows: std::ops::Range<usize>) {
    let want = doc["outputs"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{name}: output count");
    for (g, w) in got.iter().zip(want) {
        let ctx = format!("{name} output {} rows {rows:?}", g.name);
        assert_eq!(g.name, w["name"].as_str().unwrap(), "{ctx}: name");
        let mut wshape = shape(w);
        let width: usize = wshape[1..].iter().product();
        wshape[0] = rows.len();
        assert_eq!(g.shape, wshape, "{ctx}: shape");
        let data = &w["data"].as_array().unwrap()[rows.start * width..rows.end * width];
        match (&g.data, w["dtype"].as_str().unwrap()) {
            (TensorData::I64(v), "int64") => {
                let want: Vec<i64> = data.iter().map(|x| x.as_i64().unwrap()).collect();
                assert_eq!(v, &want, "{ctx}");
            }
            (TensorData::F32(v), "float32") => {
                for (i, (g, w)) in v.iter().zip(data).enumerate() {
                    match w.as_f64() {
                        // null stands for NaN (PROBIT outside 0..1).
                        None => assert!(g.is_nan(), "{ctx}: value {i}: {g}, onnxruntime NaN"),
                        Some(w) => assert!(close(*g, w), "{ctx}: value {i}: {g}, onnxruntime {w}"),
                    }
                }
            }
            (d, dt) => panic!("{ctx}: got {:?}, onnxruntime {dt}", d.dtype()),
        }
    }
}

fn rows_of(doc: &Value) -> usize {
    shape(&doc["inputs"][0])[0]
}

fn check_fixture(keys: &Keys, name: &str) {
    let doc = reference(name);
    let onnx = fixtures_dir().join(format!("{name}.onnx"));
    let bundle = keys.bundle_onnx(&onnx, None, "ml", 1, &[]);
    let loaded = verify_and_load(&keys.trust, &bundle, now(), |_| None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // A ZipMap output is served as its probability tensor.
    for (spec, w) in loaded
        .engine
        .schema()
        .outputs
        .iter()
        .zip(doc["outputs"].as_array().unwrap())
    {
        if w["zipmap"].as_bool() == Some(true) {
            assert_eq!(
                spec.dtype,
                DType::F32,
                "{name}: {} in the schema",
                spec.name
            );
        }
    }
    let n = rows_of(&doc);
    let run = |engine: &Engine, rows: std::ops::Range<usize>| {
        let out = engine
            .run(inputs(&doc, rows.clone()))
            .unwrap_or_else(|e| panic!("{name} rows {rows:?}: {e}"));
        check(name, &doc, &out, rows);
    };
    run(&loaded.engine, 0..n);
    for r in 0..n {
        run(&loaded.engine, r..r + 1);
    }
    let blocks = verify_and_load_for(&keys.trust, &bundle, now(), |_| None, PlanFor::Blocks(n))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    run(&blocks.engine, 0..n);
}

#[test]
fn every_onnx_ml_fixture_matches_onnxruntime() {
    let names = fixture_names();
    assert!(names.len() >= 40, "fixtures missing: run make_onnx_ml.py");
    let keys = Keys::new();
    let mut failed = vec![];
    for name in &names {
        // One report per fixture, so a single run lists every mismatch.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_fixture(&keys, name)));
        if let Err(e) = outcome {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} fixtures differ:\n{}",
        failed.len(),
        names.len(),
        failed.join("\n")
    );
}

#[test]
fn every_operator_the_issue_names_is_covered_by_a_fixture() {
    let mut seen = std::collections::BTreeSet::new();
    for name in fixture_names() {
        for op in reference(&name)["ml_ops"].as_array().unwrap() {
            seen.insert(op.as_str().unwrap().to_string());
        }
    }
    for op in [
        "Scaler",
        "Normalizer",
        "Imputer",
        "Binarizer",
        "OneHotEncoder",
        "LabelEncoder",
        "CategoryMapper",
        "FeatureVectorizer",
        "ArrayFeatureExtractor",
        "ZipMap",
        "LinearClassifier",
        "LinearRegressor",
        "SVMClassifier",
        "SVMRegressor",
    ] {
        assert!(seen.contains(op), "no fixture uses {op}");
    }
}

/// A model whose graph has no defined output is refused when the engine
/// builds it, with the operator and attribute named, not run.
#[test]
fn undefined_corner_is_refused_when_the_graph_is_built() {
    // The hand-built one-column LinearClassifier with two labels and PROBIT:
    // onnxruntime leaves half its output unwritten. Made from the NONE twin.
    let src = fixtures_dir().join("syn_linclf_bin1_none.onnx");
    let onnx = ferry_agent::engine::onnx();
    let mut proto = onnx.proto_model_for_path(&src).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    for a in &mut graph.node[0].attribute {
        if a.name == "post_transform" {
            a.s = b"PROBIT".to_vec();
        }
    }
    let err = format!("{:?}", onnx.model_for_proto_model(&proto).err().unwrap());
    assert!(err.contains("post_transform"), "{err}");
    assert!(err.contains("LinearClassifier"), "{err}");
}

/// A pipeline exported with ZipMap left on, served over OIP: the answer
/// carries `output_probability` as the float32 `[N, classes]` tensor,
/// columns in class-label order, equal to onnxruntime's maps.
#[test]
fn zipmap_model_answers_oip_with_its_probability_tensor() {
    use ferry_agent::serving::{Agent, Role};
    let name = "scaler_logreg_zipmap";
    let doc = reference(name);
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    let bundle = keys.bundle_onnx(
        &fixtures_dir().join(format!("{name}.onnx")),
        None,
        "wine",
        1,
        &[],
    );
    agent.install(&bundle, Role::Champion, None).unwrap();
    let served = common::Served::start(agent, 1 << 20);
    let input = &doc["inputs"][0];
    let width = shape(input)[1];
    let rows: Vec<Vec<f64>> = input["data"]
        .as_array()
        .unwrap()
        .chunks(width)
        .map(|r| r.iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    let meta = common::http(served.addr, "GET", "/v2/models/wine", b"").json();
    assert_eq!(meta["outputs"][1]["name"], "output_probability");
    assert_eq!(meta["outputs"][1]["datatype"], "FP32");
    let r = common::http(
        served.addr,
        "POST",
        "/v2/models/wine/infer",
        &common::infer_body("z", &rows),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let want = &doc["outputs"];
    assert_eq!(v["outputs"][0]["name"], "output_label");
    assert_eq!(v["outputs"][0]["data"], want[0]["data"]);
    assert_eq!(v["outputs"][1]["shape"], serde_json::json!([rows.len(), 3]));
    let got = v["outputs"][1]["data"].as_array().unwrap();
    for (g, w) in got.iter().zip(want[1]["data"].as_array().unwrap()) {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        assert!(
            (g - w).abs() <= 1e-4 + 1e-3 * w.abs(),
            "{g} vs onnxruntime {w}"
        );
    }
}

/// skl2onnx's SimpleImputer replaces NaN: `ferry bundle build` tags the
/// model as taking non-finite inputs, and rows with holes, sent as binary
/// FP32 tensors over OIP, get onnxruntime's answers.
#[test]
fn imputer_model_takes_nan_rows_over_oip() {
    use ferry_agent::serving::{Agent, Role};
    let name = "imputer_scaler_logreg";
    let doc = reference(name);
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    let onnx = fixtures_dir().join(format!("{name}.onnx"));
    let bundle = keys.bundle_onnx(&onnx, None, "holes", 1, &[]);
    agent.install(&bundle, Role::Champion, None).unwrap();
    let served = common::Served::start(agent, 1 << 20);
    let input = &doc["inputs"][0];
    let rows = shape(input)[0];
    let x: Vec<f32> = input["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().map_or(f32::NAN, |v| v as f32))
        .collect();
    assert!(
        x.iter().any(|v| v.is_nan()),
        "the reference rows have holes"
    );
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": shape(input), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.len() * 4}}]
    }))
    .unwrap();
    let mut body = header.clone();
    for v in &x {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let len = header.len().to_string();
    let r = common::Conn::open(served.addr)
        .unwrap()
        .request(
            "POST",
            "/v2/models/holes/infer",
            &[
                ("content-type", "application/octet-stream"),
                ("inference-header-content-length", &len),
            ],
            &body,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["outputs"][0]["data"], doc["outputs"][0]["data"]);
    assert_eq!(v["outputs"][1]["shape"], serde_json::json!([rows, 2]));
    for (g, w) in v["outputs"][1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(doc["outputs"][1]["data"].as_array().unwrap())
    {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        assert!(
            (g - w).abs() <= 1e-4 + 1e-3 * w.abs(),
            "{g} vs onnxruntime {w}"
        );
    }
}
