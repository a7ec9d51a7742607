//! A MobileNet / PP-LCNet block with its BatchNorms and a dynamic batch,
//! height and width (`tests/fixtures/make_shape_fixtures.py`), answers as
//! onnxruntime at a batch of one and a batch of three, on its symbolic
//! plan: with its depth-wise convolution Ferry's and its 1×1 convolutions
//! matrix products, it needs no plan per shape. A batch of more than one is
//! where Ferry runs each 1×1 convolution per image and folds the depth-wise
//! BatchNorm (`pointwise_batch`, `channel_affine`). A grouped
//! convolution stays tract's: a shape seen twice gets a plan of its own,
//! where a small batch is convolved one image at a time
//! (`conv_per_image`); that plan answers as onnxruntime too.
#![allow(clippy::unwrap_used)]

mod common;

use common::fixtures;
use common::test_vectors::{check, reference};
use ferry_agent::engine::{Engine, LoadOptions};
use ferry_agent::plan_cache::PlanStats;
use ferry_protocol::{DType, Dim, Schema, TensorSpec};

/// `x [N, c_in, H, W]` to `y [N, c_out, OH, OW]`.
fn schema(c_in: u64, c_out: u64) -> Schema {
    let sym = |s: &str| Dim::Symbolic(s.into());
    let spec = |name: &str, c: u64, h: &str, w: &str| TensorSpec {
        name: name.into(),
        dtype: DType::F32,
        shape: vec![sym("N"), Dim::Fixed(c), sym(h), sym(w)],
    };
    Schema {
        inputs: vec![spec("x", c_in, "H", "W")],
        outputs: vec![spec("y", c_out, "OH", "OW")],
    }
}

/// Fixture `name` loaded as the agent loads it, with its schema
/// (`c_in` → `c_out` channels) and its two test vectors.
fn load(name: &str, c_in: u64, c_out: u64) -> (Engine, Schema, Vec<serde_json::Value>) {
    let bytes = std::fs::read(fixtures().join(format!("{name}.onnx"))).unwrap();
    let vectors = reference(name);
    assert_eq!(vectors.len(), 2);
    let schema = schema(c_in, c_out);
    let engine = Engine::load_with(&bytes, &schema, &LoadOptions::default()).unwrap();
    (engine, schema, vectors)
}

#[test]
fn a_mobile_block_answers_as_onnxruntime_at_a_batch_of_one_and_of_three() {
    let (engine, schema, vectors) = load("mobile_block_dynamic", 8, 8);
    assert!(!engine.per_shape(), "the block should type with symbols");
    let at_load = PlanStats::get(&engine.plan_stats().compiles);
    // Each shape twice: a shape seen twice would get its own plan if the
    // graph needed one.
    for vector in vectors.iter().chain(&vectors) {
        check(&engine, &schema, vector);
    }
    assert_eq!(PlanStats::get(&engine.plan_stats().compiles), at_load);
}

#[test]
fn a_grouped_convolution_answers_as_onnxruntime_on_the_plan_for_its_shape() {
    let (engine, schema, vectors) = load("grouped_conv_dynamic", 4, 2);
    let stats = engine.plan_stats();
    let at_load = PlanStats::get(&stats.compiles);
    // Three times each: on the symbolic plan, then the second compiles a
    // plan for the shape, the third runs on it.
    for vector in vectors.iter().chain(&vectors).chain(&vectors) {
        check(&engine, &schema, vector);
    }
    assert_eq!(PlanStats::get(&stats.compiles), at_load + 2);
    assert_eq!(PlanStats::get(&stats.hits), 2);
}
