//! The burn engine against onnxruntime: every fixture's test vectors
//! (onnxruntime's outputs, written by tests/fixtures/make_gpu_fixtures.py
//! and make_shape_fixtures.py) run on burn's CPU backend and, with the
//! `wgpu` feature, on the host's Vulkan driver (Mesa's lavapipe in CI),
//! within 1e-4 absolute + 1e-3 relative. Models with operators outside
//! the set are refused by operator name.
#![allow(clippy::unwrap_used)]

use ferry_burn::{Backend, Engine, LoadError, RunError};
use ferry_protocol::TensorData;
use serde_json::Value as Json;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

/// The models the conformance run covers: ours for this engine, and the
/// repository's CNN fixtures that carry onnxruntime's outputs.
const MODELS: &[&str] = &[
    "gpu/cnn_classifier",
    "gpu/dw_separable",
    "gpu/detector_head",
    "gpu/upsample_mlp",
    "gpu/bench_cnn",
    "mobile_block_dynamic",
    "grouped_conv_dynamic",
];

fn tensor(j: &Json) -> (Vec<usize>, TensorData) {
    let shape = j["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = j["data"].as_array().unwrap();
    let data = match j["datatype"].as_str().unwrap() {
        "FP32" => TensorData::F32(data.iter().map(|v| v.as_f64().unwrap() as f32).collect()),
        "INT64" => TensorData::I64(data.iter().map(|v| v.as_i64().unwrap()).collect()),
        other => panic!("datatype {other}"),
    };
    (shape, data)
}

fn as_f64(d: &TensorData) -> Vec<f64> {
    d.as_f64().unwrap()
}

/// Runs every vector of `name` on `backend`; returns the largest
/// absolute error seen.
fn conform(name: &str, backend: Backend) -> f64 {
    let dir = fixtures();
    let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
    let engine = Engine::load(&bytes, backend).unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = std::fs::read_to_string(dir.join(format!("{name}.testvectors.json"))).unwrap();
    let doc: Json = serde_json::from_str(&text).unwrap();
    let mut worst = 0f64;
    for (k, v) in doc["vectors"].as_array().unwrap().iter().enumerate() {
        let inputs = engine
            .input_names()
            .iter()
            .map(|n| tensor(&v["inputs"][*n]))
            .collect();
        let outs = engine
            .run(inputs)
            .unwrap_or_else(|e| panic!("{name} vector {k}: {e}"));
        let want = v["outputs"].as_object().unwrap();
        assert_eq!(outs.len(), want.len(), "{name}: output count");
        for out in outs {
            let (shape, data) = tensor(&want[&out.name]);
            assert_eq!(out.shape, shape, "{name} vector {k} output {}", out.name);
            let (got, exp) = (as_f64(&out.data), as_f64(&data));
            assert_eq!(got.len(), exp.len());
            for (i, (g, e)) in got.iter().zip(&exp).enumerate() {
                let err = (g - e).abs();
                worst = worst.max(err);
                assert!(
                    err <= 1e-4 + 1e-3 * e.abs(),
                    "{name} on {} vector {k} output {} [{i}]: burn {g}, onnxruntime {e}",
                    backend.name(),
                    out.name
                );
            }
        }
    }
    worst
}

fn conform_all(backend: Backend) {
    for name in MODELS {
        let worst = conform(name, backend);
        eprintln!("{name} on {}: max abs error {worst:.2e}", backend.name());
    }
}

#[test]
fn matches_onnxruntime_on_the_cpu_backend() {
    conform_all(Backend::Cpu);
}

/// On the host's wgpu adapter: Mesa's lavapipe (a Vulkan driver on the
/// CPU) in CI, so the GPU code path, shaders included, runs without a GPU.
/// No adapter fails the test: CI installs mesa-vulkan-drivers.
#[cfg(feature = "wgpu")]
#[test]
fn matches_onnxruntime_on_wgpu() {
    let adapter = ferry_burn::adapter(Backend::Wgpu).unwrap_or_else(|e| {
        panic!("{e} (install mesa-vulkan-drivers for the software Vulkan driver)")
    });
    eprintln!("wgpu adapter: {adapter:?}");
    assert!(!adapter.name.is_empty());
    conform_all(Backend::Wgpu);
}

/// On an NVIDIA GPU (scripts/gpu-check.sh builds this).
#[cfg(feature = "cuda")]
#[test]
fn matches_onnxruntime_on_cuda() {
    let adapter = ferry_burn::adapter(Backend::Cuda).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cuda adapter: {adapter:?}");
    conform_all(Backend::Cuda);
}

#[test]
fn refuses_operators_outside_the_set_by_name() {
    let dir = fixtures();
    for (file, op) in [
        ("unsupported_op.onnx", None),
        ("bc_forest.onnx", Some("ai.onnx.ml:TreeEnsembleClassifier")),
        ("loop_static.onnx", Some("Loop")),
        ("if_on_rate.onnx", Some("If")),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        match Engine::load(&bytes, Backend::Cpu) {
            Err(LoadError::UnsupportedOps(ops)) => {
                assert!(!ops.is_empty(), "{file}");
                if let Some(op) = op {
                    assert!(ops.iter().any(|o| o == op), "{file}: {ops:?}");
                }
                let msg = LoadError::UnsupportedOps(ops.clone()).to_string();
                assert!(msg.contains(&ops[0]), "{msg}");
            }
            Err(e) => panic!("{file}: refused for another reason: {e}"),
            Ok(_) => panic!("{file}: loaded"),
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let bytes = std::fs::read(fixtures().join("gpu/cnn_classifier.onnx")).unwrap();
    let engine = Engine::load(&bytes, Backend::Cpu).unwrap();
    // Wrong channel count: the convolution cannot run.
    let bad = engine.run(vec![(vec![1, 4, 16, 16], TensorData::F32(vec![0.0; 1024]))]);
    assert!(
        matches!(bad, Err(RunError::Node { .. } | RunError::Panicked)),
        "{bad:?}"
    );
    // Shape and element count disagree.
    let bad = engine.run(vec![(vec![1, 3, 16, 16], TensorData::F32(vec![0.0; 7]))]);
    assert!(matches!(bad, Err(RunError::Input { .. })), "{bad:?}");
    // Too many inputs.
    let x = (vec![1, 3, 16, 16], TensorData::F32(vec![0.0; 768]));
    assert!(engine.run(vec![x.clone(), x.clone()]).is_err());
    // The engine still answers afterwards.
    let ok = engine.run(vec![x]).unwrap();
    assert_eq!(ok[0].shape, vec![1, 10]);
    // Garbage bytes are refused at load.
    assert!(matches!(
        Engine::load(b"not a model", Backend::Cpu),
        Err(LoadError::Parse(_))
    ));
}
