//! Every fixture model, run through a verified bundle, reproduces
//! onnxruntime's reference outputs; a model tract cannot run is refused at
//! activation with the operator's name, and the old version keeps serving.
#![allow(clippy::unwrap_used)]

mod common;

use common::{now, reference, reference_rows, Keys};
use ferry_agent::engine::{Engine, Input, PlanFor};
use ferry_agent::serving::{verify_and_load, verify_and_load_for, Agent, Role};
use ferry_protocol::TensorData;

fn check_model(model: &str) {
    let keys = Keys::new();
    let bundle = keys.bundle(model, model, 1);
    let loaded = verify_and_load(&keys.trust, &bundle, now(), |_| None).unwrap();
    let rows = reference_rows(model);
    let want = reference(model);
    let labels: Vec<i64> = want["outputs"]["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let probs: Vec<Vec<f64>> = want["outputs"]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    let width = rows[0].len();
    let check_with = |engine: &Engine, batch: &[Vec<f64>], offset: usize, as_block: bool| {
        let data: Vec<f32> = batch.iter().flatten().map(|x| *x as f32).collect();
        let out = if as_block {
            // The batch paths' entry: rows already in a tract tensor.
            let block =
                tract_onnx::prelude::Tensor::from_shape(&[batch.len(), width], &data).unwrap();
            engine.run_block(block).unwrap()
        } else {
            engine
                .run(vec![Input {
                    shape: vec![batch.len(), width],
                    data: TensorData::F32(data),
                }])
                .unwrap()
        };
        let TensorData::I64(got_labels) = &out[0].data else {
            panic!("label is {:?}", out[0].data.dtype())
        };
        assert_eq!(
            got_labels[..],
            labels[offset..offset + batch.len()],
            "{model} labels"
        );
        let TensorData::F32(got_probs) = &out[1].data else {
            panic!("probabilities are {:?}", out[1].data.dtype())
        };
        let classes = probs[0].len();
        assert_eq!(out[1].shape, vec![batch.len(), classes]);
        for (r, row) in got_probs.chunks(classes).enumerate() {
            for (c, p) in row.iter().enumerate() {
                let w = probs[offset + r][c];
                assert!(
                    (f64::from(*p) - w).abs() <= 1e-4,
                    "{model} row {} class {c}: {p} vs onnxruntime {w}",
                    offset + r
                );
            }
        }
    };
    let check = |engine: &Engine, batch: &[Vec<f64>], offset: usize| {
        check_with(engine, batch, offset, false)
    };
    // The whole batch (symbolic-batch plan) and every row alone (batch-1 plan).
    check(&loaded.engine, &rows, 0);
    for (i, r) in rows.iter().enumerate() {
        check(&loaded.engine, std::slice::from_ref(r), i);
    }
    // The batch-scoring plan, specialised to this batch's size.
    let blocks = verify_and_load_for(
        &keys.trust,
        &bundle,
        now(),
        |_| None,
        PlanFor::Blocks(rows.len()),
    )
    .unwrap();
    check(&blocks.engine, &rows, 0);
    check_with(&blocks.engine, &rows, 0, true);
    // A block of the wrong type is refused, not reinterpreted.
    let f64_block =
        tract_onnx::prelude::Tensor::from_shape(&[1, width], &vec![0.0f64; width]).unwrap();
    let err = blocks.engine.run_block(f64_block).unwrap_err();
    assert!(err.to_string().contains("block"), "{err}");
}

#[test]
fn logistic_regression_matches_onnxruntime() {
    check_model("bc_logreg");
}

#[test]
fn random_forest_matches_onnxruntime() {
    check_model("bc_forest");
}

#[test]
fn mlp_matches_onnxruntime() {
    check_model("digits_mlp");
}

#[test]
fn unsupported_operator_is_refused_and_previous_version_keeps_serving() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    let good = keys.bundle("bc_logreg", "m", 1);
    agent.install(&good, Role::Champion, None).unwrap();
    let bad = keys.bundle("unsupported_op", "m", 2);
    let err = agent.install(&bad, Role::Champion, None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("FerryDoesNotExist"), "{msg}");
    assert!(msg.contains("com.example"), "{msg}");
    assert_eq!(err.code(), "model_load_failed");
    let table = agent.table();
    assert_eq!(table.models["m"].champion.version(), 1);
    assert_eq!(agent.state().models["m"].champion, Some(1));
}

#[test]
fn tampered_bundle_is_refused_before_loading() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    let path = keys.bundle("bc_logreg", "m", 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = agent.install(&path, Role::Champion, None).unwrap_err();
    assert_eq!(err.code(), "digest_mismatch", "{err}");
    assert!(!agent.ready());
}

#[test]
fn logistic_regression_default_export_matches_onnxruntime() {
    // skl2onnx's defaults: ai.onnx.ml Scaler + LinearClassifier.
    check_model("bc_logreg_default");
}
