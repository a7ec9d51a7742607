//! Dynamic batching through the real HTTP server: concurrent requests for
//! one model run as one stacked batch, each gets exactly its own rows (as
//! an unbatched agent answers them), each is logged and metered on its
//! own, and a model that cannot be stacked keeps serving unbatched.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ferry::input_shapes::parse_input_shape;
use ferry_agent::batching::{BatchPolicy, BatchingConfig};
use ferry_agent::serving::{Agent, Role};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Row counts of the concurrent requests: 12 rows in all.
const ROWS: [usize; 8] = [1, 2, 1, 3, 1, 1, 2, 1];

fn batching(model: &str, max_rows: usize) -> BatchingConfig {
    let mut b = BatchingConfig::default();
    // A full batch runs at once; the long wait only matters if one of the
    // concurrent requests arrives a whole second after the first.
    let policy = BatchPolicy::new(max_rows, Duration::from_secs(1)).unwrap();
    b.models.insert(model.into(), policy);
    b
}

fn agent(keys: &Keys, data: &std::path::Path, b: BatchingConfig) -> Arc<Agent> {
    Agent::open(ferry_agent::serving::AgentOptions {
        batching: b,
        ..keys.options(data)
    })
    .unwrap()
}

/// Request `i`'s body: `ROWS[i]` reference rows, starting at a different
/// row for every request so that answers cannot be swapped unnoticed.
fn bodies() -> Vec<Vec<u8>> {
    let rows = reference_rows("bc_logreg");
    ROWS.iter()
        .enumerate()
        .map(|(i, n)| {
            let mine: Vec<Vec<f64>> = (0..*n)
                .map(|k| rows[(i * 3 + k) % rows.len()].clone())
                .collect();
            infer_body(&format!("req-{i}"), &mine)
        })
        .collect()
}

/// Sends every body at once, each on its own connection.
fn send_all(addr: std::net::SocketAddr, path: &str, bodies: &[Vec<u8>]) -> Vec<Response> {
    std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| s.spawn(move || http(addr, "POST", path, b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// [`send_all`], every answer a 200, as JSON.
fn concurrently(addr: std::net::SocketAddr, path: &str, bodies: &[Vec<u8>]) -> Vec<Value> {
    send_all(addr, path, bodies)
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()
        })
        .collect()
}

/// The agent's `/metrics` text.
fn metrics(addr: std::net::SocketAddr) -> String {
    String::from_utf8(http(addr, "GET", "/metrics", b"").body).unwrap()
}

fn assert_close(got: &Value, want: &Value, what: &str) {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() <= 1e-6 + 1e-5 * w.abs(), "{what}: {g} vs {w}");
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{what}: lengths");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_close(g, w, &format!("{what}[{i}]"));
            }
        }
        (Value::Object(g), Value::Object(w)) => {
            assert_eq!(g.len(), w.len(), "{what}: keys");
            for (k, w) in w {
                assert_close(&g[k], w, &format!("{what}.{k}"));
            }
        }
        _ => assert_eq!(got, want, "{what}"),
    }
}

fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn concurrent_requests_run_as_one_batch_and_each_gets_its_own_rows() {
    let keys = Keys::new();
    let bundle = keys.bundle("bc_logreg", "m", 1);
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = agent(&keys, plain_dir.path(), BatchingConfig::default());
    plain.install(&bundle, Role::Champion, None).unwrap();
    let plain = Served::start(plain, 1 << 20);
    let batched_dir = tempfile::tempdir().unwrap();
    let total: usize = ROWS.iter().sum();
    let batched = agent(&keys, batched_dir.path(), batching("m", total));
    batched.install(&bundle, Role::Champion, None).unwrap();
    let batched = Served::start(batched, 1 << 20);

    let bodies = bodies();
    let want = concurrently(plain.addr, "/v2/models/m/infer", &bodies);
    let got = concurrently(batched.addr, "/v2/models/m/infer", &bodies);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g["id"], format!("req-{i}"));
        assert_eq!(g["outputs"][0]["shape"][0], ROWS[i]);
        assert_close(&g["outputs"], &w["outputs"], &format!("request {i}"));
    }

    let meta = http(batched.addr, "GET", "/v2/models/m", b"").json();
    assert_eq!(meta["parameters"]["batching"]["max_batch"], total);
    assert_eq!(meta["parameters"]["batching"]["max_delay_us"], 1_000_000);
    let meta = http(plain.addr, "GET", "/v2/models/m", b"").json();
    assert!(meta["parameters"]["batching"].is_null());

    let m = metrics(batched.addr);
    let labels = r#"{model="m",version="1"}"#;
    // All 12 rows filled one batch: one run for 8 requests.
    assert_eq!(
        metric(&m, &format!("ferry_batch_size_count{labels}")),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("ferry_batch_size_sum{labels}")),
        Some(8)
    );
    assert_eq!(
        metric(&m, &format!("ferry_batch_unstacked_total{labels}")),
        Some(0)
    );
    // Each request is still a request of its own.
    assert_eq!(
        metric(
            &m,
            r#"ferry_inference_requests_total{model="m",version="1",variant="champion"}"#
        ),
        Some(8),
        "{m}"
    );
    // The unbatched agent has no batcher lines at all.
    let m = metrics(plain.addr);
    assert!(!m.contains("ferry_batch_size"), "{m}");
}

#[test]
fn a_batch_that_is_not_full_runs_when_its_oldest_request_has_waited() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    // Room for 64 rows, but only one request comes: it runs after the wait.
    let mut b = BatchingConfig::default();
    b.models.insert(
        "*".into(),
        BatchPolicy::new(64, Duration::from_millis(5)).unwrap(),
    );
    let a = agent(&keys, data.path(), b);
    a.install(&keys.bundle("bc_logreg", "m", 1), Role::Champion, None)
        .unwrap();
    let s = Served::start(a, 1 << 20);
    let rows = reference_rows("bc_logreg");
    let r = http(
        s.addr,
        "POST",
        "/v2/models/m/infer",
        &infer_body("one", &rows[..2]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["outputs"][0]["shape"][0], 2);
    // A request of more rows than a batch holds runs alone, unqueued.
    let many: Vec<Vec<f64>> = (0..65).map(|i| rows[i % rows.len()].clone()).collect();
    let r = http(
        s.addr,
        "POST",
        "/v2/models/m/infer",
        &infer_body("many", &many),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["outputs"][0]["shape"][0], 65);
    let m = metrics(s.addr);
    assert_eq!(
        metric(&m, r#"ferry_batch_size_count{model="m",version="1"}"#),
        Some(1),
        "{m}"
    );
}

#[test]
fn a_hot_swap_batches_the_new_version_and_bad_requests_are_still_refused() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let a = agent(&keys, data.path(), batching("m", 4));
    a.install(&keys.bundle("bc_logreg", "m", 1), Role::Champion, None)
        .unwrap();
    let s = Served::start(a.clone(), 1 << 20);
    a.install(&keys.bundle("bc_logreg", "m", 2), Role::Champion, None)
        .unwrap();
    let bodies: Vec<Vec<u8>> = bodies().into_iter().take(4).collect();
    // Rows 1+2+1+3 > 4: at least two runs, all on version 2.
    for r in concurrently(s.addr, "/v2/models/m/infer", &bodies) {
        assert_eq!(r["model_version"], "2");
    }
    // A request with the wrong width is refused before it reaches a batch.
    let r = http(
        s.addr,
        "POST",
        "/v2/models/m/infer",
        &infer_body("bad", &[vec![1.0; 3]]),
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let m = metrics(s.addr);
    assert_eq!(
        metric(&m, r#"ferry_batch_size_sum{model="m",version="2"}"#),
        Some(4),
        "{m}"
    );
}

#[test]
fn a_model_with_a_fixed_batch_dimension_is_served_unbatched() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let width = reference_rows("bc_logreg")[0].len();
    let mut spec = keys.spec(
        fixtures().join("bc_logreg.onnx"),
        "pinned",
        dir.path().join("pinned.ferry"),
    );
    spec.input_shapes = vec![parse_input_shape(&format!("input=1,{width}")).unwrap()];
    ferry::bundle_build::build(&spec, &indicatif::ProgressBar::hidden()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let a = agent(&keys, data.path(), batching("pinned", 8));
    a.install(&dir.path().join("pinned.ferry"), Role::Champion, None)
        .unwrap();
    assert!(!a.batches("pinned"));
    let s = Served::start(a, 1 << 20);
    let rows = reference_rows("bc_logreg");
    let r = http(
        s.addr,
        "POST",
        "/v2/models/pinned/infer",
        &infer_body("x", &rows[..1]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = metrics(s.addr);
    assert!(!m.contains("ferry_batch_size"), "{m}");
}

fn gather_body(id: &str, idx: &[i64]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "inputs": [{"name": "idx", "shape": [idx.len()], "datatype": "INT64", "data": idx}]
    }))
    .unwrap()
}

#[test]
fn a_request_that_fails_in_a_batch_fails_alone_and_the_others_are_answered() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let spec = keys.spec(
        fixtures().join("gather_rows.onnx"),
        "rows",
        dir.path().join("rows.ferry"),
    );
    ferry::bundle_build::build(&spec, &indicatif::ProgressBar::hidden()).unwrap();
    let data = tempfile::tempdir().unwrap();
    // Five requests of two rows: one batch of ten.
    let a = agent(&keys, data.path(), batching("rows", 10));
    a.install(&dir.path().join("rows.ferry"), Role::Champion, None)
        .unwrap();
    let s = Served::start(a, 1 << 20);
    let idx: [[i64; 2]; 5] = [[0, 1], [2, 3], [4, 99], [5, 6], [9, 8]];
    let bodies: Vec<Vec<u8>> = idx
        .iter()
        .enumerate()
        .map(|(i, r)| gather_body(&format!("req-{i}"), r))
        .collect();
    let answers = send_all(s.addr, "/v2/models/rows/infer", &bodies);
    for (i, (r, rows)) in answers.iter().zip(&idx).enumerate() {
        if i == 2 {
            assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
            let text = String::from_utf8_lossy(&r.body);
            assert!(!text.contains("99"), "tract's message leaked: {text}");
            continue;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let want: Vec<f64> = rows
            .iter()
            .flat_map(|k| (0..4).map(move |j| (*k as f64 * 4.0 + j as f64) / 4.0))
            .collect();
        let got: Vec<f64> = r.json()["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got, want, "request {i}");
    }
    let m = metrics(s.addr);
    let labels = r#"{model="rows",version="1"}"#;
    assert_eq!(
        metric(&m, &format!("ferry_batch_size_count{labels}")),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("ferry_batch_unstacked_total{labels}")),
        Some(1),
        "{m}"
    );
}
