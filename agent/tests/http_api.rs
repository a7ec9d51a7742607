//! The local API over a real loopback socket: OIP endpoints, feedback,
//! metrics, the Unix socket, and the table of bad inputs, each a 4xx with a
//! JSON error naming the problem, the server still serving afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use common::{admin, http, infer_body, reference, reference_rows, Conn, Keys, Served};
use ferry_agent::serving::{Agent, Role};

fn serve(max_body: usize) -> (Keys, tempfile::TempDir, Served) {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    agent
        .install(&keys.bundle("bc_logreg", "fraud", 7), Role::Champion, None)
        .unwrap();
    (keys, data, Served::start(agent, max_body))
}

#[test]
fn oip_endpoints_and_outputs() {
    let (_k, _d, s) = serve(1 << 20);
    assert_eq!(http(s.addr, "GET", "/v2/health/live", b"").status, 200);
    assert_eq!(
        http(s.addr, "GET", "/v2/health/ready", b"").json()["ready"],
        true
    );
    let meta = http(s.addr, "GET", "/v2/models/fraud", b"").json();
    assert_eq!(meta["name"], "fraud");
    assert_eq!(meta["versions"][0], "7");
    assert_eq!(meta["inputs"][0]["name"], "input");
    assert_eq!(meta["inputs"][0]["datatype"], "FP32");
    assert_eq!(meta["inputs"][0]["shape"], serde_json::json!([-1, 30]));
    assert_eq!(meta["outputs"][0]["name"], "label");
    assert_eq!(
        http(s.addr, "GET", "/v2/models/fraud/ready", b"").status,
        200
    );
    assert_eq!(
        http(s.addr, "GET", "/v2/models/fraud/versions/7/ready", b"").status,
        200
    );
    assert_eq!(
        http(s.addr, "GET", "/v2/models/fraud/versions/8/ready", b"").status,
        404
    );

    let rows = reference_rows("bc_logreg");
    let want = reference("bc_logreg");
    let r = http(
        s.addr,
        "POST",
        "/v2/models/fraud/infer",
        &infer_body("req-1", &rows),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["id"], "req-1");
    assert_eq!(v["model_name"], "fraud");
    assert_eq!(v["model_version"], "7");
    assert_eq!(v["outputs"][0]["name"], "label");
    assert_eq!(v["outputs"][0]["datatype"], "INT64");
    assert_eq!(v["outputs"][0]["data"], want["outputs"]["label"]);
    assert_eq!(v["outputs"][1]["shape"], serde_json::json!([20, 2]));
    let got: Vec<f64> = v["outputs"][1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let exp: Vec<f64> = want["outputs"]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    for (a, b) in got.iter().zip(&exp) {
        assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
    }

    // Pinned version, nested data, requested outputs only.
    let nested = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [rows[0].clone()]}],
        "outputs": [{"name": "label"}]
    });
    let r = http(
        s.addr,
        "POST",
        "/v2/models/fraud/versions/7/infer",
        nested.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["data"][0], want["outputs"]["label"][0]);
    assert_eq!(
        http(
            s.addr,
            "POST",
            "/v2/models/fraud/versions/3/infer",
            nested.to_string().as_bytes()
        )
        .status,
        404
    );

    // Feedback lands in the log next to the inference.
    let fb = http(
        s.addr,
        "POST",
        "/v2/models/fraud/feedback",
        br#"{"id":"req-1","label":1}"#,
    );
    assert_eq!(fb.status, 200, "{}", String::from_utf8_lossy(&fb.body));
    let log = admin(&s.admin, "GET", "/v1/log?from=0&limit=100", b"").json();
    let entries = log["records"].as_array().unwrap();
    assert!(entries
        .iter()
        .any(|e| e["entry"]["Feedback"]["request_id"] == "req-1"));
    let inf = entries
        .iter()
        .find(|e| e["entry"]["Inference"]["request_id"] == "req-1")
        .unwrap();
    // 20 rows, each binned on 30 baseline features.
    let bins = inf["entry"]["Inference"]["bins"].as_array().unwrap();
    assert_eq!(bins.len(), 20);
    assert_eq!(bins[0].as_array().unwrap().len(), 30);
    assert_eq!(inf["entry"]["Inference"]["variant"], "champion");

    let m = String::from_utf8(http(s.addr, "GET", "/metrics", b"").body).unwrap();
    assert!(
        m.contains(
            r#"ferry_inference_requests_total{model="fraud",version="7",variant="champion"} 2"#
        ),
        "{m}"
    );
    assert!(m.contains("ferry_inference_latency_seconds_bucket{model=\"fraud\",version=\"7\",variant=\"champion\",le=\"+Inf\"} 2"));
    assert!(m.contains("ferry_inference_log_records "));
    assert!(m.contains("ferry_inference_log_dropped_total 0"));
}

#[test]
fn bad_inputs_get_json_4xx_and_the_server_keeps_serving() {
    let (_k, _d, s) = serve(64 * 1024);
    let row = vec![1.0f64; 30];
    let good = infer_body("ok", std::slice::from_ref(&row));
    let tensor = |name: &str, shape: serde_json::Value, dt: &str, data: serde_json::Value| {
        serde_json::json!({"inputs": [{"name": name, "shape": shape, "datatype": dt, "data": data}]})
            .to_string()
            .into_bytes()
    };
    let ones = |n: usize| serde_json::json!(vec![1.0; n]);
    let huge = vec![b' '; 70 * 1024];
    // (what, path, body, status, code, what the message must mention)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("unknown model", "/v2/models/nope/infer", good.clone(), 404, "unknown_model", "nope"),
        ("unknown version", "/v2/models/fraud/versions/99/infer", good.clone(), 404, "unknown_version", "99"),
        ("invalid JSON", "/v2/models/fraud/infer", b"{\"inputs\": [".to_vec(), 400, "invalid_json", "JSON"),
        ("not an object", "/v2/models/fraud/infer", b"[1,2]".to_vec(), 400, "invalid_json", "JSON"),
        ("wrong tensor name", "/v2/models/fraud/infer", tensor("x", serde_json::json!([1, 30]), "FP32", ones(30)), 400, "unknown_input", "\"x\""),
        ("wrong dtype", "/v2/models/fraud/infer", tensor("input", serde_json::json!([1, 30]), "INT64", serde_json::json!(vec![1; 30])), 400, "wrong_datatype", "INT64"),
        ("unknown dtype", "/v2/models/fraud/infer", tensor("input", serde_json::json!([1, 30]), "FLOAT", ones(30)), 400, "wrong_datatype", "FLOAT"),
        ("wrong shape", "/v2/models/fraud/infer", tensor("input", serde_json::json!([1, 29]), "FP32", ones(29)), 400, "wrong_shape", "[1, 29]"),
        ("wrong rank", "/v2/models/fraud/infer", tensor("input", serde_json::json!([30]), "FP32", ones(30)), 400, "wrong_shape", "[30]"),
        ("zero rows", "/v2/models/fraud/infer", tensor("input", serde_json::json!([0, 30]), "FP32", ones(0)), 400, "wrong_shape", "[0, 30]"),
        ("negative dim", "/v2/models/fraud/infer", tensor("input", serde_json::json!([-1, 30]), "FP32", ones(30)), 400, "wrong_shape", "-1"),
        ("element count", "/v2/models/fraud/infer", tensor("input", serde_json::json!([2, 30]), "FP32", ones(30)), 400, "wrong_element_count", "60"),
        ("non-number", "/v2/models/fraud/infer", tensor("input", serde_json::json!([1, 30]), "FP32", serde_json::json!(vec!["a"; 30])), 400, "bad_data", "not a number"),
        ("missing input", "/v2/models/fraud/infer", br#"{"inputs": []}"#.to_vec(), 400, "missing_input", "input"),
        ("unknown output", "/v2/models/fraud/infer", serde_json::json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}], "outputs": [{"name": "zz"}]}).to_string().into_bytes(), 400, "unknown_output", "zz"),
        ("body over limit", "/v2/models/fraud/infer", huge, 413, "body_too_large", "limit"),
        ("bad feedback", "/v2/models/fraud/feedback", b"{}".to_vec(), 400, "invalid_json", "label"),
    ];
    let mut conn = Conn::open(s.addr).unwrap();
    for (what, path, body, status, code, mention) in cases {
        let r = http(s.addr, "POST", path, &body);
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["code"], code, "{what}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains(mention),
            "{what}: {msg:?} does not mention {mention:?}"
        );
        // The same connection keeps working after each refusal.
        let ok = conn
            .request("POST", "/v2/models/fraud/infer", &[], &good)
            .unwrap();
        assert_eq!(ok.status, 200, "{what}: server stopped serving");
    }
    let m = String::from_utf8(http(s.addr, "GET", "/metrics", b"").body).unwrap();
    assert!(
        m.contains(r#"ferry_request_rejected_total{model="fraud",reason="wrong_shape"} 4"#),
        "{m}"
    );
}

/// L11: a model's batch-row limit refuses a request with more rows before
/// it runs, counted under its reason; one at the limit runs.
#[test]
fn a_batch_over_the_models_row_limit_is_refused() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    agent
        .install(&keys.bundle("bc_logreg", "fraud", 1), Role::Champion, None)
        .unwrap();
    let s = Served::start_with(
        agent,
        ferry_agent::server::ServeOptions {
            rows: ferry_agent::server::RowLimits {
                default: 1000,
                per_model: [("fraud".to_string(), 2)].into_iter().collect(),
            },
            ..Default::default()
        },
    );
    let rows = reference_rows("bc_logreg");
    let r = http(
        s.addr,
        "POST",
        "/v2/models/fraud/infer",
        &infer_body("three", &rows[..3]),
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["code"], "too_many_rows", "{v}");
    assert!(v["error"].as_str().unwrap().contains("at most 2"), "{v}");
    let r = http(
        s.addr,
        "POST",
        "/v2/models/fraud/infer",
        &infer_body("two", &rows[..2]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = String::from_utf8(http(s.addr, "GET", "/metrics", b"").body).unwrap();
    assert!(
        m.contains(r#"ferry_request_rejected_total{model="fraud",reason="too_many_rows"} 1"#),
        "{m}"
    );
}

#[test]
fn unix_socket_serves_the_inference_api() {
    use std::io::{Read, Write};
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    agent
        .install(&keys.bundle("bc_logreg", "fraud", 1), Role::Champion, None)
        .unwrap();
    let sock = data.path().join("agent.sock");
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sock2 = sock.clone();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let opts = ferry_agent::server::ServeOptions {
                listen: None,
                unix_socket: Some(sock2),
                max_body: 1 << 20,
                tcp_loops: 1,
                ..Default::default()
            };
            let bound = ferry_agent::server::bind(&opts).await.unwrap();
            tx.send(()).unwrap();
            ferry_agent::server::serve(bound, agent, &opts, async move {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    rx.recv().unwrap();
    let body = infer_body("u1", &reference_rows("bc_logreg")[..1]);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    write!(
        s,
        "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"id\":\"u1\""), "{resp}");
    // The admin API is not on it.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    write!(
        s,
        "POST /v1/log/ack HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{{\"upto\": 0}}"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    stop_tx.send(()).unwrap();
    t.join().unwrap();
}

/// A second agent on the same port must fail to bind rather than share it,
/// whether the first serves TCP on one loop or several.
#[test]
fn a_second_agent_cannot_bind_a_port_in_use() {
    use ferry_agent::server::{bind, ServeError, ServeOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = |listen: std::net::SocketAddr, tcp_loops| ServeOptions {
            listen: Some(listen),
            max_body: 1 << 20,
            tcp_loops,
            ..Default::default()
        };
        for first_loops in [1, 2] {
            let first = bind(&opts("127.0.0.1:0".parse().unwrap(), first_loops))
                .await
                .unwrap();
            let addr = first.local_addr.unwrap();
            for second_loops in [1, 2] {
                let second = bind(&opts(addr, second_loops)).await;
                assert!(
                    matches!(second, Err(ServeError::Bind { .. })),
                    "{first_loops} then {second_loops} loops: the second bind succeeded"
                );
            }
        }
    });
}
