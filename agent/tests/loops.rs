//! `Loop`s on the fixtures made by `tests/fixtures/make_shape_fixtures.py`
//! (tract has no `Loop`): one with a constant trip count is unrolled at
//! load and answers as onnxruntime does; one whose trip count is computed
//! from an input is refused by `ferry bundle build --check` naming `Loop`,
//! and unrolled, with onnxruntime's answers, once the publisher fixes that
//! input.
#![allow(clippy::unwrap_used)]

mod common;

use common::test_vectors::{check, input, reference};
use common::{fixtures, Keys};
use ferry::bundle_build::{build, BuildError};
use ferry::input_shapes::parse_const_input;
use ferry_agent::engine::{Engine, LoadError, LoadOptions};
use ferry_protocol::{DType, Dim, Schema, Tensor, TensorData, TensorSpec};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn model(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(format!("{name}.onnx"))).unwrap()
}

fn spec(name: &str, dtype: DType, shape: &[usize]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.iter().map(|d| Dim::Fixed(*d as u64)).collect(),
    }
}

fn static_schema() -> Schema {
    Schema {
        inputs: vec![spec("x", DType::F32, &[1, 8])],
        outputs: vec![
            spec("y", DType::F32, &[1, 8]),
            spec("ys", DType::F32, &[4, 1, 8]),
        ],
    }
}

fn rate_schema() -> Schema {
    Schema {
        inputs: vec![spec("x", DType::F32, &[1, 8]), spec("n", DType::I64, &[])],
        outputs: vec![spec("y", DType::F32, &[1, 8])],
    }
}

fn n(v: i64) -> Tensor {
    Tensor {
        name: "n".into(),
        shape: vec![],
        data: TensorData::I64(vec![v]),
    }
}

#[test]
fn a_loop_with_a_constant_trip_count_is_unrolled_and_answers_as_onnxruntime() {
    let schema = static_schema();
    let engine =
        Engine::load_with(&model("loop_static"), &schema, &LoadOptions::default()).unwrap();
    let vectors = reference("loop_static");
    assert_eq!(vectors.len(), 1);
    check(&engine, &schema, &vectors[0]);
}

#[test]
fn a_loop_on_a_fixed_input_unrolls_and_other_values_are_refused() {
    let bytes = model("loop_on_rate");
    let schema = rate_schema();
    // Without the fixed value the trip count is a run-time value: refused,
    // naming the operator.
    let e = Engine::load_with(&bytes, &schema, &LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(&e, LoadError::UnsupportedOps(ops) if ops == &["Loop"]),
        "{e}"
    );
    // 32 / 8 = 4 iterations, and 4 / 8 = none.
    for vector in reference("loop_on_rate") {
        let rate = vector["inputs"]["n"]["data"][0].as_i64().unwrap();
        let engine = Engine::load_with(
            &bytes,
            &schema,
            &LoadOptions {
                const_inputs: vec![n(rate)],
                ..LoadOptions::default()
            },
        )
        .unwrap();
        check(&engine, &schema, &vector);
        let mut other = vector.clone();
        other["inputs"]["n"]["data"] = json!([rate + 8]);
        let inputs = vec![input(&other["inputs"]["x"]), input(&other["inputs"]["n"])];
        let e = engine.run(inputs).unwrap_err().to_string();
        assert!(e.contains(&format!("fixes it to {rate}")), "{e}");
    }
}

/// The fixture's test vectors whose `n` is `rate` (all of them without one).
fn vectors(dir: &Path, model: &str, rate: Option<i64>) -> PathBuf {
    let vectors: Vec<Value> = reference(model)
        .into_iter()
        .filter(|v| rate.is_none_or(|r| v["inputs"]["n"]["data"][0] == json!(r)))
        .collect();
    let p = dir.join(format!("{model}.vectors.json"));
    let doc = json!({"tolerance": 1e-4, "vectors": vectors});
    std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
    p
}

#[test]
fn bundle_check_refuses_a_loop_on_an_input_and_accepts_it_with_the_fixed_input() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let hidden = indicatif::ProgressBar::hidden();
    let e = build(
        &keys.fixture_spec("loop_on_rate", dir.path(), |_| {}),
        &hidden,
    )
    .err()
    .unwrap();
    assert!(
        matches!(e, BuildError::Check(_)) && e.to_string().contains("Loop"),
        "{e}"
    );
    assert!(!dir.path().join("loop_on_rate.ferry").exists());
    // With n fixed the check unrolls it and runs onnxruntime's vectors.
    let tv = vectors(dir.path(), "loop_on_rate", Some(32));
    let built = build(
        &keys.fixture_spec("loop_on_rate", dir.path(), |s| {
            s.const_inputs = vec![parse_const_input("n=32").unwrap()];
            s.test_vectors = Some(tv);
        }),
        &hidden,
    )
    .unwrap();
    assert_eq!(built.manifest.const_inputs, vec![n(32)]);
    assert!(built.check.is_some());
    assert!(dir.path().join("loop_on_rate.ferry").exists());
    // A constant trip count needs nothing fixed.
    let tv = vectors(dir.path(), "loop_static", None);
    let built = build(
        &keys.fixture_spec("loop_static", dir.path(), |s| s.test_vectors = Some(tv)),
        &hidden,
    )
    .unwrap();
    assert!(built.check.is_some());
}
