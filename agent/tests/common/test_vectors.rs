//! A fixture's onnxruntime answers (`NAME.testvectors.json`, written by
//! `tests/fixtures/make_shape_fixtures.py`), run through an engine.

use super::fixtures;
use ferry_agent::engine::{Engine, Input};
use ferry_protocol::{Schema, TensorData};
use serde_json::Value;

/// onnxruntime's answers for the fixture (its test vectors).
pub fn reference(name: &str) -> Vec<Value> {
    let path = fixtures().join(format!("{name}.testvectors.json"));
    let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

pub fn shape(t: &Value) -> Vec<usize> {
    serde_json::from_value(t["shape"].clone()).unwrap()
}

/// A test vector's input as the engine takes it.
pub fn input(t: &Value) -> Input {
    let data = match t["datatype"].as_str().unwrap() {
        "FP32" => TensorData::F32(serde_json::from_value(t["data"].clone()).unwrap()),
        "INT64" => TensorData::I64(serde_json::from_value(t["data"].clone()).unwrap()),
        other => panic!("{other}"),
    };
    Input {
        shape: shape(t),
        data,
    }
}

/// Runs the vector's inputs (in schema order) and checks every output
/// against onnxruntime's, within 1e-4 + 1e-3·|ref|.
pub fn check(engine: &Engine, schema: &Schema, vector: &Value) {
    let inputs = schema
        .inputs
        .iter()
        .map(|s| input(&vector["inputs"][&s.name]))
        .collect();
    let out = engine.run(inputs).unwrap();
    assert_eq!(out.len(), schema.outputs.len());
    for (o, s) in out.iter().zip(&schema.outputs) {
        let want_t = &vector["outputs"][&s.name];
        let want: Vec<f32> = serde_json::from_value(want_t["data"].clone()).unwrap();
        assert_eq!(o.shape, shape(want_t), "{}", s.name);
        let TensorData::F32(got) = &o.data else {
            panic!("{:?}", o.data)
        };
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 + 1e-3 * w.abs(),
                "{} at {i}: {g} != {w}",
                s.name
            );
        }
    }
}
