//! The burn engine behind the agent (`--engine burn`, the `gpu` build):
//! the same signed bundles, the same OIP API. On burn's CPU backend and on
//! wgpu (Mesa's lavapipe in CI): metadata names the engine, JSON and
//! binary tensors answer as onnxruntime, bad input is a 400 that leaves
//! the model serving, a new version swaps in; the signed test vectors run
//! on burn before activation, and an operator burn lacks is refused by
//! name (or, under `auto`, served by tract).
#![cfg(feature = "gpu")]
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ferry::bundle_build::build;
use ferry_agent::engine_choice::{EngineChoice, EngineSelect};
use ferry_agent::serving::{Agent, AgentOptions, Role};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn agent(keys: &Keys, data: &Path, choice: EngineChoice, backend: Option<&str>) -> Arc<Agent> {
    Agent::open(AgentOptions {
        engine: EngineSelect {
            choice,
            gpu_backend: backend.map(str::to_string),
        },
        ..keys.options(data)
    })
    .unwrap()
}

fn vectors_path() -> PathBuf {
    fixtures().join("gpu/cnn_classifier.testvectors.json")
}

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(vectors_path()).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

/// The CNN classifier bundled as `cnn` v`version` with `vectors` signed in.
fn bundle(keys: &Keys, dir: &Path, version: u64, vectors: PathBuf) -> PathBuf {
    bundle_requiring(keys, dir, version, vectors, None)
}

/// [`bundle`], requiring `runtime` (`ferry bundle build --runtime`) if set.
fn bundle_requiring(
    keys: &Keys,
    dir: &Path,
    version: u64,
    vectors: PathBuf,
    runtime: Option<&str>,
) -> PathBuf {
    let out = dir.join(format!("cnn-{version}.ferry"));
    let mut spec = keys.spec(
        fixtures().join("gpu/cnn_classifier.onnx"),
        "cnn",
        out.clone(),
    );
    spec.version = version;
    spec.test_vectors = Some(vectors);
    if let Some(r) = runtime {
        spec.tags
            .insert(ferry_protocol::RUNTIME_TAG.into(), r.into());
    }
    build(&spec, &indicatif::ProgressBar::hidden()).unwrap();
    out
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 + 1e-3 * w.abs(),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn infer_binary(addr: std::net::SocketAddr, x: &Value) -> (Vec<usize>, Vec<f64>) {
    let data: Vec<u8> = floats(&x["data"])
        .iter()
        .flat_map(|v| (*v as f32).to_le_bytes())
        .collect();
    let head = serde_json::to_vec(&json!({
        "inputs": [{"name": "x", "shape": x["shape"], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len()}}],
        "parameters": {"binary_data_output": true}
    }))
    .unwrap();
    let mut body = head.clone();
    body.extend_from_slice(&data);
    let len = head.len().to_string();
    let r = Conn::open(addr)
        .unwrap()
        .request(
            "POST",
            "/v2/models/cnn/infer",
            &[
                ("content-type", "application/octet-stream"),
                ("inference-header-content-length", &len),
            ],
            &body,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let (head, rest) = r.body.split_at(n);
    let head: Value = serde_json::from_slice(head).unwrap();
    let out = &head["outputs"][0];
    let shape = out["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let vals = rest
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    (shape, vals)
}

fn serves_oip_on(backend: &str) {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let a = agent(&keys, data.path(), EngineChoice::Burn, Some(backend));
    a.install(
        &bundle(&keys, dir.path(), 1, vectors_path()),
        Role::Champion,
        None,
    )
    .unwrap();
    let served = Served::start(a.clone(), 1 << 20);
    let addr = served.addr;

    // Metadata names the engine and its backend.
    let meta = http(addr, "GET", "/v2/models/cnn", b"").json();
    assert_eq!(meta["parameters"]["engine"]["name"], "burn", "{meta}");
    assert_eq!(meta["parameters"]["engine"]["backend"], backend, "{meta}");

    // Health lists the engines and the device under each.
    let ready = http(addr, "GET", "/v2/health/ready", b"").json();
    let engines = ready["engines"].as_array().unwrap();
    assert!(engines.iter().any(|e| e["engine"] == "tract"), "{ready}");
    let mine = engines
        .iter()
        .find(|e| e["engine"] == "burn" && e["backend"] == backend)
        .unwrap_or_else(|| panic!("{ready}"));
    assert!(
        mine["error"].is_null() && mine["adapter"].is_string(),
        "{ready}"
    );

    // JSON tensors: one image, as onnxruntime answers it.
    let vs = vectors();
    let x = &vs[0]["inputs"]["x"];
    let body = serde_json::to_vec(&json!({"inputs": [
        {"name": "x", "shape": x["shape"], "datatype": "FP32", "data": x["data"]}]}))
    .unwrap();
    let r = http(addr, "POST", "/v2/models/cnn/infer", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let got = r.json();
    assert_eq!(got["outputs"][0]["shape"], json!([1, 10]));
    assert_close(
        &floats(&got["outputs"][0]["data"]),
        &floats(&vs[0]["outputs"]["probs"]["data"]),
        "json",
    );

    // Binary tensors: a batch of four.
    let (shape, vals) = infer_binary(addr, &vs[1]["inputs"]["x"]);
    assert_eq!(shape, vec![4, 10]);
    assert_close(&vals, &floats(&vs[1]["outputs"]["probs"]["data"]), "binary");

    // Bad input: wrong channel count, malformed JSON. Clear 400s; the
    // model keeps serving.
    let bad = serde_json::to_vec(&json!({"inputs": [
        {"name": "x", "shape": [1, 4, 16, 16], "datatype": "FP32", "data": vec![0.0; 1024]}]}))
    .unwrap();
    let r = http(addr, "POST", "/v2/models/cnn/infer", &bad);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = http(addr, "POST", "/v2/models/cnn/infer", b"{\"inputs\": [");
    assert_eq!(r.status, 400);
    let r = http(addr, "POST", "/v2/models/cnn/infer", &body);
    assert_eq!(r.status, 200);

    // Hot swap: v2 takes over while serving.
    a.install(
        &bundle(&keys, dir.path(), 2, vectors_path()),
        Role::Champion,
        None,
    )
    .unwrap();
    let meta = http(addr, "GET", "/v2/models/cnn", b"").json();
    assert_eq!(meta["parameters"]["version"], 2, "{meta}");
    assert_eq!(meta["parameters"]["engine"]["name"], "burn");
    let r = http(addr, "POST", "/v2/models/cnn/infer", &body);
    assert_eq!(r.status, 200);
    assert_close(
        &floats(&r.json()["outputs"][0]["data"]),
        &floats(&vs[0]["outputs"]["probs"]["data"]),
        "after the swap",
    );
}

#[test]
fn serves_oip_on_the_burn_cpu_backend() {
    serves_oip_on("cpu");
}

#[test]
fn serves_oip_on_wgpu() {
    serves_oip_on("wgpu");
}

/// Vectors whose expected outputs are off by 0.01: a model that computes
/// "differently" on this engine must not go live.
#[test]
fn test_vectors_run_on_burn_before_activation() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(vectors_path()).unwrap()).unwrap();
    let probs = &mut doc["vectors"][0]["outputs"]["probs"]["data"];
    let shifted: Vec<f64> = floats(probs).iter().map(|v| v + 0.01).collect();
    *probs = json!(shifted);
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, serde_json::to_vec(&doc).unwrap()).unwrap();
    let a = agent(&keys, data.path(), EngineChoice::Burn, Some("cpu"));
    let err = a
        .install(&bundle(&keys, dir.path(), 1, wrong), Role::Champion, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("test vector"), "{err}");
    assert!(!a.table().models.contains_key("cnn"));
}

#[test]
fn an_operator_burn_lacks_is_refused_by_name_or_served_by_tract_under_auto() {
    let keys = Keys::new();
    let forest = keys.bundle("bc_forest", "forest", 1);
    let data = tempfile::tempdir().unwrap();
    let burn = agent(&keys, data.path(), EngineChoice::Burn, Some("cpu"));
    let err = burn
        .install(&forest, Role::Champion, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("TreeEnsembleClassifier"), "{err}");

    // `auto` on a host without a GPU adapter (lavapipe is a CPU device):
    // tract serves, and says so.
    let data = tempfile::tempdir().unwrap();
    let auto = agent(&keys, data.path(), EngineChoice::Auto, None);
    auto.install(&forest, Role::Champion, None).unwrap();
    let served = Served::start(auto, 1 << 20);
    let meta = http(served.addr, "GET", "/v2/models/forest", b"").json();
    assert_eq!(meta["parameters"]["engine"]["name"], "tract", "{meta}");
}

/// A bundle that requires a runtime (`ferry bundle build --runtime`,
/// signed as the `ferry.target.runtime` tag) runs on it whatever the
/// agent's own choice would be, and an agent that does not offer it
/// refuses it by name while the version before keeps serving.
#[test]
fn a_required_runtime_decides_the_engine_or_refuses_the_bundle() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let tagged = |version: u64, runtime: Option<&str>| {
        bundle_requiring(&keys, dir.path(), version, vectors_path(), runtime)
    };
    let engine_of = |a: &Arc<Agent>| {
        let served = Served::start(a.clone(), 1 << 20);
        let meta = http(served.addr, "GET", "/v2/models/cnn", b"").json();
        meta["parameters"]["engine"].clone()
    };

    // `auto` alone picks tract on a host without a GPU adapter; the
    // bundle's `burn-cpu` puts it on burn's CPU backend.
    let data = tempfile::tempdir().unwrap();
    let auto = agent(&keys, data.path(), EngineChoice::Auto, None);
    assert!(
        auto.runtimes().contains(&"onnx-burn-cpu".to_string()),
        "{:?}",
        auto.runtimes()
    );
    auto.install(&tagged(1, None), Role::Champion, None)
        .unwrap();
    assert_eq!(engine_of(&auto)["name"], "tract");
    auto.install(&tagged(2, Some("burn-cpu")), Role::Champion, None)
        .unwrap();
    let engine = engine_of(&auto);
    assert_eq!(engine["name"], "burn", "{engine}");
    assert_eq!(engine["backend"], "cpu", "{engine}");

    // Pinned to tract, the agent offers only `onnx`: v2 is refused, v1 serves.
    let data = tempfile::tempdir().unwrap();
    let tract = agent(&keys, data.path(), EngineChoice::Tract, None);
    assert_eq!(tract.runtimes(), ["onnx"]);
    tract
        .install(&tagged(1, None), Role::Champion, None)
        .unwrap();
    let err = tract
        .install(&tagged(2, Some("burn-cpu")), Role::Champion, None)
        .err()
        .unwrap();
    assert_eq!(err.code(), "unsupported_runtime");
    assert!(
        err.to_string().contains("requires runtime burn-cpu"),
        "{err}"
    );
    assert_eq!(
        tract.table().models["cnn"].champion.loaded.manifest.version,
        1
    );
    // `ferry bundle build` refuses a requirement no agent knows.
    let mut spec = keys.spec(
        fixtures().join("gpu/cnn_classifier.onnx"),
        "cnn",
        dir.path().join("tpu.ferry"),
    );
    spec.tags
        .insert(ferry_protocol::RUNTIME_TAG.into(), "burn-tpu".into());
    let err = build(&spec, &indicatif::ProgressBar::hidden())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("burn-tpu"), "{err}");
}

/// Dynamic batching on the burn engine: four concurrent one-image requests
/// run as one stacked batch of four, and each gets its own image's answer.
#[test]
fn concurrent_requests_batch_on_burn_and_each_gets_its_own_answer() {
    use ferry_agent::batching::{BatchPolicy, BatchingConfig};
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut batching = BatchingConfig::default();
    batching.models.insert(
        "cnn".into(),
        BatchPolicy::new(4, std::time::Duration::from_secs(1)).unwrap(),
    );
    let a = Agent::open(AgentOptions {
        engine: EngineSelect {
            choice: EngineChoice::Burn,
            gpu_backend: Some("cpu".into()),
        },
        batching,
        ..keys.options(data.path())
    })
    .unwrap();
    a.install(
        &bundle(&keys, dir.path(), 1, vectors_path()),
        Role::Champion,
        None,
    )
    .unwrap();
    let served = Served::start(a, 1 << 20);
    let addr = served.addr;
    let vs = vectors();
    let images = floats(&vs[1]["inputs"]["x"]["data"]);
    let want = floats(&vs[1]["outputs"]["probs"]["data"]);
    let per = 3 * 16 * 16;
    let answers: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let image = images[i * per..(i + 1) * per].to_vec();
                s.spawn(move || {
                    let body = serde_json::to_vec(&json!({"inputs": [
                        {"name": "x", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": image}]}))
                    .unwrap();
                    let r = http(addr, "POST", "/v2/models/cnn/infer", &body);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    r.json()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, got) in answers.iter().enumerate() {
        assert_close(
            &floats(&got["outputs"][0]["data"]),
            &want[i * 10..(i + 1) * 10],
            &format!("request {i}"),
        );
    }
    let text = String::from_utf8(http(addr, "GET", "/metrics", b"").body).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("ferry_batch_size_count{"))
        .unwrap();
    let runs: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(runs < 4, "four requests ran as {runs} runs: {line}");
    assert!(text.contains("ferry_model_engine_info{model=\"cnn\",version=\"1\",engine=\"burn\",backend=\"cpu\"} 1"), "{text}");
    assert!(
        text.contains("ferry_engine_available{engine=\"burn\",backend=\"cpu\""),
        "{text}"
    );
}
