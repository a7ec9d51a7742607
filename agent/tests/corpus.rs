//! The real-model corpus (`scripts/models/fetch_corpus.py`): public ONNX
//! models from PyPI packages, unmodified. Each is bundled as a publisher
//! would (`--check`, the flags it needs, its reference as signed test
//! vectors), activated by a real agent and served over HTTP, in JSON and in
//! binary tensors; every output is compared with onnxruntime's within
//! 1e-4 absolute + 1e-3 relative. A model the runtime cannot run must be
//! refused at build time with the operator named. Under `CI=true` a corpus
//! that cannot be fetched fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Conn, Keys, Served};
use ferry::bundle_build::{build, BuildError};
use ferry::input_shapes::{parse_const_input, parse_input_shape};
use ferry_agent::serving::{Agent, Role};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus_dir() -> PathBuf {
    std::env::var_os("FERRY_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/model-corpus"))
}

/// Fetches the corpus (a no-op when cached), or `None` outside CI when it
/// cannot be had.
fn fetch() -> Option<(PathBuf, Vec<String>)> {
    let python = common::python_with("onnxruntime")?;
    let dir = corpus_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/models/fetch_corpus.py");
    let out = Command::new(python)
        .arg(script)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    if !out.status.success() {
        let why = format!(
            "fetching the model corpus failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why}");
        }
        eprintln!("note: skipping, {why}");
        return None;
    }
    let ids: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("corpus.json")).unwrap()).unwrap();
    Some((dir, ids))
}

/// A tensor of a case file: its JSON description and raw values.
struct CaseTensor {
    name: String,
    datatype: String,
    shape: Vec<usize>,
    raw: Vec<u8>,
}

impl CaseTensor {
    fn read(dir: &Path, v: &Value) -> Self {
        Self {
            name: v["name"].as_str().unwrap().to_string(),
            datatype: v["datatype"].as_str().unwrap().to_string(),
            shape: v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect(),
            raw: std::fs::read(dir.join(v["file"].as_str().unwrap())).unwrap(),
        }
    }

    fn values(&self) -> Vec<f64> {
        decode(&self.datatype, &self.raw)
    }

    fn json(&self) -> Value {
        let data: Vec<Value> = match self.datatype.as_str() {
            "INT64" | "INT32" => self.values().iter().map(|v| json!(*v as i64)).collect(),
            "BOOL" => self.raw.iter().map(|b| json!(*b != 0)).collect(),
            _ => self.values().iter().map(|v| json!(v)).collect(),
        };
        json!({"name": self.name, "shape": self.shape, "datatype": self.datatype, "data": data})
    }
}

fn decode(datatype: &str, raw: &[u8]) -> Vec<f64> {
    match datatype {
        "FP32" => raw
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        "FP64" => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        "INT64" => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        "INT32" => raw
            .chunks_exact(4)
            .map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        "BOOL" | "UINT8" => raw.iter().map(|b| f64::from(*b)).collect(),
        other => panic!("datatype {other} in a corpus case"),
    }
}

struct Case {
    id: String,
    dir: PathBuf,
    inputs: Vec<CaseTensor>,
    outputs: Vec<CaseTensor>,
    input_shapes: Vec<String>,
    const_inputs: Vec<String>,
}

impl Case {
    fn read(root: &Path, id: &str) -> Self {
        let dir = root.join(id);
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        Self {
            id: id.to_string(),
            inputs: v["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| CaseTensor::read(&dir, t))
                .collect(),
            outputs: v["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| CaseTensor::read(&dir, t))
                .collect(),
            input_shapes: list("input_shapes"),
            const_inputs: list("const_inputs"),
            dir,
        }
    }

    /// The reference as signed test vectors, when small enough to sign
    /// (a manifest is bounded); the agent runs them before activation.
    fn test_vectors(&self, out: &Path) -> Option<PathBuf> {
        let bytes: usize = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .map(|t| t.raw.len())
            .sum();
        if bytes > 2 << 20 {
            return None;
        }
        let map = |ts: &[CaseTensor]| -> serde_json::Map<String, Value> {
            ts.iter().map(|t| (t.name.clone(), t.json())).collect()
        };
        let doc = json!({"tolerance": 1e-2, "vectors": [{
            "inputs": map(&self.inputs), "outputs": map(&self.outputs)}]});
        let path = out.join(format!("{}.vectors.json", self.id));
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        Some(path)
    }
}

/// What became of one model.
enum Outcome {
    Served { per_shape: bool },
    Refused(String),
}

fn bundle(keys: &Keys, case: &Case, out: &Path) -> Result<(PathBuf, bool), BuildError> {
    let path = out.join(format!("{}.ferry", case.id));
    let mut spec = keys.spec(case.dir.join("model.onnx"), &case.id, path.clone());
    spec.test_vectors = case.test_vectors(out);
    spec.input_shapes = case
        .input_shapes
        .iter()
        .map(|s| parse_input_shape(s).unwrap())
        .collect();
    spec.const_inputs = case
        .const_inputs
        .iter()
        .map(|s| parse_const_input(s).unwrap())
        .collect();
    spec.check = true;
    let built = build(&spec, &indicatif::ProgressBar::hidden())?;
    Ok((path, built.check.is_some_and(|c| c.per_shape)))
}

/// Compares what the agent answered with onnxruntime's reference.
fn compare(case: &Case, got: &[(String, Vec<usize>, Vec<f64>)], how: &str) {
    for want in &case.outputs {
        let Some((_, shape, values)) = got.iter().find(|(n, _, _)| *n == want.name) else {
            panic!("{} ({how}): output {:?} missing", case.id, want.name);
        };
        let expected = want.values();
        assert_eq!(
            values.len(),
            expected.len(),
            "{} ({how}): output {:?} shape {shape:?}, onnxruntime {:?}",
            case.id,
            want.name,
            want.shape
        );
        for (k, (a, b)) in values.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 + 1e-3 * b.abs(),
                "{} ({how}): output {:?}[{k}] = {a}, onnxruntime {b}",
                case.id,
                want.name
            );
        }
    }
}

fn infer_json(conn: &mut Conn, case: &Case) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let body = json!({"id": "json", "inputs": case.inputs.iter().map(CaseTensor::json).collect::<Vec<_>>()});
    let r = conn
        .request(
            "POST",
            &format!("/v2/models/{}/infer", case.id),
            &[("content-type", "application/json")],
            &serde_json::to_vec(&body).unwrap(),
        )
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "{}: {}",
        case.id,
        String::from_utf8_lossy(&r.body)
    );
    r.json()["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
                o["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().or_else(|| v.as_bool().map(f64::from)).unwrap())
                    .collect(),
            )
        })
        .collect()
}

fn infer_binary(conn: &mut Conn, case: &Case) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let inputs: Vec<Value> = case
        .inputs
        .iter()
        .map(|t| {
            json!({"name": t.name, "shape": t.shape, "datatype": t.datatype,
                   "parameters": {"binary_data_size": t.raw.len()}})
        })
        .collect();
    let head = serde_json::to_vec(&json!({"id": "binary", "inputs": inputs,
        "parameters": {"binary_data_output": true}}))
    .unwrap();
    let mut body = head.clone();
    for t in &case.inputs {
        body.extend_from_slice(&t.raw);
    }
    let len = head.len().to_string();
    let r = conn
        .request(
            "POST",
            &format!("/v2/models/{}/infer", case.id),
            &[
                ("content-type", "application/octet-stream"),
                ("inference-header-content-length", &len),
            ],
            &body,
        )
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "{}: {}",
        case.id,
        String::from_utf8_lossy(&r.body)
    );
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let (head, mut rest) = r.body.split_at(n);
    let head: Value = serde_json::from_slice(head).unwrap();
    head["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let size = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
            let (mine, more) = rest.split_at(size);
            rest = more;
            (
                o["name"].as_str().unwrap().to_string(),
                o["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
                decode(o["datatype"].as_str().unwrap(), mine),
            )
        })
        .collect()
}

#[test]
fn corpus_models_serve_like_onnxruntime_or_are_refused_at_build_time() {
    let Some((root, ids)) = fetch() else {
        return;
    };
    let keys = Keys::new();
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    let served = Served::start(agent.clone(), 64 << 20);
    let mut outcomes = Vec::new();
    for id in &ids {
        let case = Case::read(&root, id);
        let outcome = match bundle(&keys, &case, work.path()) {
            Err(BuildError::Check(ferry::build_check::CheckError::Load(
                e @ ferry_agent::engine::LoadError::UnsupportedOps(_),
            ))) => Outcome::Refused(e.to_string()),
            Err(e) => panic!("{id}: bundle build refused it: {e}"),
            Ok((bundle, per_shape)) => {
                agent
                    .install(&bundle, Role::Champion, None)
                    .unwrap_or_else(|e| panic!("{id}: activation refused: {e}"));
                let mut conn = Conn::open(served.addr).unwrap();
                compare(&case, &infer_json(&mut conn, &case), "JSON");
                compare(&case, &infer_binary(&mut conn, &case), "binary");
                Outcome::Served { per_shape }
            }
        };
        match &outcome {
            Outcome::Served { per_shape } => eprintln!(
                "corpus: {id}: served, matches onnxruntime ({})",
                if *per_shape {
                    "plan per input shape"
                } else {
                    "symbolic shapes"
                }
            ),
            Outcome::Refused(why) => eprintln!("corpus: {id}: refused at build time: {why}"),
        }
        outcomes.push(outcome);
    }
    let served_n = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Served { .. }))
        .count();
    eprintln!(
        "corpus: {} models, {served_n} served, {} refused at build time",
        outcomes.len(),
        outcomes.len() - served_n
    );
    assert!(
        outcomes.len() >= 12,
        "the corpus has {} models",
        outcomes.len()
    );
}
