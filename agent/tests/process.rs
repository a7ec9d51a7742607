//! The `ferry-agent` binary as devices run it: side-load flags, kill -9
//! in the middle of load with the inference log surviving, restart from the
//! saved state, an existing Open Inference Protocol client (tritonclient),
//! and `ferry-agent score` on real files.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    admin, fixtures, http, infer_body, python_with, reference, reference_rows, Conn, Keys, Process,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// An agent side-loading the `bc_logreg` fixture as model `fraud`, with its
/// data in `dir`, plus `extra` flags.
fn side_load(keys: &Keys, dir: &str, extra: &[&str]) -> Process {
    let bundle = keys.bundle("bc_logreg", "fraud", 1);
    let trust = keys.trust_path.to_str().unwrap();
    let mut args = vec![
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        "--trust",
        trust,
    ];
    args.extend(["--listen", "127.0.0.1:0", "--data", dir]);
    args.extend(extra);
    Process::spawn(&args)
}

/// The agent again, from the data directory alone: the saved state
/// reactivates the model, the log reopens.
fn restart(trust: &str, dir: &str) -> Process {
    Process::spawn(&[
        "run",
        "--trust",
        trust,
        "--listen",
        "127.0.0.1:0",
        "--data",
        dir,
    ])
}

#[test]
fn kill_9_mid_load_loses_no_acknowledged_record() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let trust = keys.trust_path.to_str().unwrap();
    let mut agent = side_load(&keys, dir, &["--log-durability", "sync"]);
    let rows = reference_rows("bc_logreg");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let clients = 4;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, answered, addr, rows) =
                (stop.clone(), answered.clone(), agent.addr, rows.clone());
            std::thread::spawn(move || {
                let Ok(mut conn) = Conn::open(addr) else {
                    return;
                };
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    match conn.request(
                        "POST",
                        "/v2/models/fraud/infer",
                        &[],
                        &infer_body(&format!("{c}-{i}"), &rows[..1]),
                    ) {
                        Ok(r) if r.status == 200 => {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => return, // the agent was killed
                    }
                    i += 1;
                }
            })
        })
        .collect();
    while answered.load(Ordering::SeqCst) < 300 {
        std::thread::yield_now();
    }
    agent.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acknowledged = answered.load(Ordering::SeqCst);

    // Restart from the data directory alone: the saved state reactivates
    // the model, the log reopens.
    let agent = restart(trust, dir);
    let stats = admin(&agent.admin, "GET", "/v1/log/stats", b"").json();
    let records = stats["records"].as_u64().unwrap();
    assert!(
        records >= acknowledged,
        "{records} records survived, {acknowledged} responses were sent"
    );
    // At most one request per client was in flight (logged, not answered).
    assert!(
        records <= acknowledged + clients,
        "{records} records for {acknowledged} responses"
    );
    // Every record decodes, in order.
    let mut from = 0;
    let mut read = 0;
    loop {
        let page = admin(
            &agent.admin,
            "GET",
            &format!("/v1/log?from={from}&limit=1000"),
            b"",
        )
        .json();
        let recs = page["records"].as_array().unwrap();
        if recs.is_empty() {
            break;
        }
        read += recs.len() as u64;
        from = page["next"].as_u64().unwrap();
    }
    assert_eq!(read, records);
    let r = http(
        agent.addr,
        "POST",
        "/v2/models/fraud/infer",
        &infer_body("after", &rows[..1]),
    );
    assert_eq!(
        r.status,
        200,
        "restarted agent does not serve: {}",
        String::from_utf8_lossy(&r.body)
    );

    // Acknowledged records are deleted; sequence numbers move on.
    let ack = admin(
        &agent.admin,
        "POST",
        "/v1/log/ack",
        format!("{{\"upto\": {}}}", from - 1).as_bytes(),
    )
    .json();
    assert_eq!(ack["deleted"].as_u64().unwrap(), read);
    let stats = admin(&agent.admin, "GET", "/v1/log/stats", b"").json();
    assert_eq!(stats["records"], 1); // the "after" request
    assert_eq!(stats["first_seq"].as_u64().unwrap(), from);
}

/// Default (async) durability: what was answered more than a flush interval
/// (plus the log's group linger) before a kill -9 survives it.
#[test]
fn kill_9_keeps_async_records_older_than_the_flush_interval() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let trust = keys.trust_path.to_str().unwrap();
    let mut agent = side_load(&keys, dir, &["--log-flush-ms", "100"]);
    let rows = reference_rows("bc_logreg");
    let mut conn = Conn::open(agent.addr).unwrap();
    for i in 0..250 {
        let r = conn
            .request(
                "POST",
                "/v2/models/fraud/infer",
                &[],
                &infer_body(&format!("a-{i}"), &rows[..1]),
            )
            .unwrap();
        assert_eq!(r.status, 200);
    }
    // The contract is 100 ms + the 5 ms linger; wait twenty times that.
    std::thread::sleep(std::time::Duration::from_secs(2));
    agent.kill9();
    let agent = restart(trust, dir);
    let stats = admin(&agent.admin, "GET", "/v1/log/stats", b"").json();
    assert_eq!(stats["records"], 250, "{stats}");
}

#[test]
fn refused_side_load_without_a_previous_version_exits_with_the_reason() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let bundle = keys.bundle("unsupported_op", "m", 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .args([
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--trust",
            keys.trust_path.to_str().unwrap(),
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("com.example:FerryDoesNotExist"), "{err}");
}

/// A device whose data directory holds a good version keeps serving it when
/// the bundle it is told to side-load at start-up is refused: the agent
/// stays up, the model answers ready and infers on the previous version,
/// and the refusal is in the log and in `/metrics`.
/// glibc hands every large freed tensor back to the kernel and
/// page-faults it in again on the next request; `run` re-executes itself
/// once with tunables that keep it (a batch of images through a CNN spent a
/// third of its time in page faults without them). The re-executed agent
/// keeps its process id and serves.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn serving_keeps_freed_memory_with_glibc_tunables() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = side_load(&keys, data.path().to_str().unwrap(), &[]);
    let environ = std::fs::read(format!("/proc/{}/environ", agent.child.id())).unwrap();
    // glibc splits the tunables in place when it reads them at start (each
    // `:` becomes a NUL), so they are looked for in the whole block.
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("GLIBC_TUNABLES=glibc.malloc.mmap_threshold=")
            && environ.contains("glibc.malloc.trim_threshold="),
        "the serving agent runs without the malloc tunables"
    );
    assert_eq!(
        http(agent.addr, "GET", "/v2/models/fraud/ready", b"").status,
        200
    );
}

#[test]
fn refused_side_load_keeps_the_previous_version_serving() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let trust = keys.trust_path.to_str().unwrap();
    // v1 side-loaded and serving, then the device stops.
    let mut first = side_load(&keys, dir, &[]);
    assert_eq!(
        http(first.addr, "GET", "/v2/models/fraud/ready", b"").status,
        200
    );
    first.kill9();
    // Restarted with a v2 whose graph uses an operator no runtime has.
    let bad = keys.bundle("unsupported_op", "fraud", 2);
    let log = logs.path().join("agent.log");
    let agent = Process::spawn_logged(
        &[
            "run",
            "--bundle",
            bad.to_str().unwrap(),
            "--trust",
            trust,
            "--listen",
            "127.0.0.1:0",
            "--data",
            dir,
        ],
        &log,
    );
    let ready = http(agent.addr, "GET", "/v2/models/fraud/ready", b"");
    assert_eq!(ready.status, 200);
    let meta = http(agent.addr, "GET", "/v2/models/fraud", b"").json();
    assert_eq!(meta["versions"], serde_json::json!(["1"]), "{meta}");
    let rows = reference_rows("bc_logreg");
    let r = http(
        agent.addr,
        "POST",
        "/v2/models/fraud/infer",
        &infer_body("after-refusal", &rows[..1]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["model_version"], "1");
    let metrics = String::from_utf8(http(agent.addr, "GET", "/metrics", b"").body).unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("ferry_activations_total{outcome=\"refused\"") && l.ends_with(" 1")
        ),
        "{metrics}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("side-load refused"), "{text}");
    assert!(text.contains("com.example:FerryDoesNotExist"), "{text}");
}

const TRITON_SCRIPT: &str = r#"
import json, sys
import numpy as np
import tritonclient.http as httpclient

url, ref_path = sys.argv[1], sys.argv[2]
ref = json.load(open(ref_path))
c = httpclient.InferenceServerClient(url=url)
assert c.is_server_live()
assert c.is_server_ready()
assert c.is_model_ready("fraud")
meta = c.get_model_metadata("fraud")
assert meta["inputs"][0]["name"] == "input", meta
assert meta["inputs"][0]["datatype"] == "FP32", meta
rows = np.array(ref["rows"], dtype=np.float32)
for binary in (True, False):
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary)
    outs = [httpclient.InferRequestedOutput("label", binary_data=binary),
            httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    res = c.infer("fraud", [inp], outputs=outs, request_id="triton-%s" % binary)
    assert res.get_response()["id"] == "triton-%s" % binary
    labels = res.as_numpy("label")
    probs = res.as_numpy("probabilities")
    assert labels.tolist() == ref["outputs"]["label"], labels
    assert np.allclose(probs, np.array(ref["outputs"]["probabilities"]), atol=1e-4), probs
# Default call: no outputs named -> binary outputs for all.
inp = httpclient.InferInput("input", [1, rows.shape[1]], "FP32")
inp.set_data_from_numpy(rows[:1])
res = c.infer("fraud", [inp])
assert res.as_numpy("label").tolist() == ref["outputs"]["label"][:1]
try:
    bad = httpclient.InferInput("wrong", [1, rows.shape[1]], "FP32")
    bad.set_data_from_numpy(rows[:1])
    c.infer("fraud", [bad])
    raise SystemExit("bad input accepted")
except httpclient.InferenceServerException as e:
    assert "wrong" in str(e), e
print("tritonclient ok")
"#;

#[test]
fn tritonclient_works_against_the_agent() {
    let Some(python) = python_with("tritonclient.http") else {
        return;
    };
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let bundle = keys.bundle("bc_logreg", "fraud", 3);
    let agent = Process::spawn(&[
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        "--trust",
        keys.trust_path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    let out = std::process::Command::new(python)
        .args(["-c", TRITON_SCRIPT, &agent.addr.to_string()])
        .arg(fixtures().join("bc_logreg.reference.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tritonclient failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn score(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .arg("score")
        .args(args)
        .arg("--no-progress")
        .output()
        .unwrap()
}

/// `ferry-agent score` of `input` into `out` in blocks of 7 rows; the
/// output's lines, after checking it succeeded.
fn score_csv(
    bundle: &str,
    trust: &str,
    input: &std::path::Path,
    out: &std::path::Path,
) -> Vec<String> {
    let o = score(&[
        "--bundle",
        bundle,
        "--trust",
        trust,
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--batch-rows",
        "7",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn score_csv_and_ndjson_match_the_reference_and_report_bad_rows() {
    let keys = Keys::new();
    let bundle = keys.bundle("bc_logreg", "fraud", 1);
    let (b, t) = (
        bundle.to_str().unwrap().to_string(),
        keys.trust_path.to_str().unwrap().to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let heldout = fixtures().join("bc_logreg.heldout.csv");
    let out = dir.path().join("preds.csv");
    let lines = score_csv(&b, &t, &heldout, &out);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(lines[0], "line,label,probabilities_0,probabilities_1");
    assert_eq!(lines.len(), 101);
    // heldout.csv's first 20 rows are the reference rows.
    let want = reference("bc_logreg");
    for (i, l) in lines[1..21].iter().enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f[0], (i + 2).to_string(), "line numbers follow the input");
        assert_eq!(f[1], want["outputs"]["label"][i].to_string());
        let p: f64 = f[3].parse().unwrap();
        assert!((p - want["outputs"]["probabilities"][i][1].as_f64().unwrap()).abs() <= 1e-4);
    }

    // A malformed row stops the run with its line number; nothing is written.
    let src = std::fs::read_to_string(&heldout).unwrap();
    let mut bad: Vec<String> = src.lines().map(str::to_string).collect();
    bad[3] = bad[3].replacen(',', ",oops,", 1);
    bad[6] = "1,2,3".into();
    let bad_path = dir.path().join("bad.csv");
    std::fs::write(&bad_path, bad.join("\n") + "\n").unwrap();
    let out2 = dir.path().join("bad-preds.csv");
    let o = score(&[
        "--bundle",
        &b,
        "--trust",
        &t,
        "--input",
        bad_path.to_str().unwrap(),
        "--output",
        out2.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 4"), "{err}");
    assert!(!out2.exists());
    // --skip-bad-rows counts and names them.
    let o = score(&[
        "--bundle",
        &b,
        "--trust",
        &t,
        "--input",
        bad_path.to_str().unwrap(),
        "--output",
        out2.to_str().unwrap(),
        "--skip-bad-rows",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("skipped 2 bad rows (lines 4, 7)"), "{err}");
    assert_eq!(std::fs::read_to_string(&out2).unwrap().lines().count(), 99);

    // Quoting follows RFC 4180 (the csv crate): a header name with a comma
    // inside quotes is one field, and quoted numbers are numbers.
    let mut quoted: Vec<String> = src.lines().map(str::to_string).collect();
    for (i, fmt) in [(0, "cm"), (1, "")] {
        let (head, rest) = quoted[i].split_once(',').unwrap();
        let head = if fmt.is_empty() {
            head.to_string()
        } else {
            format!("{head}, {fmt}")
        };
        quoted[i] = format!("\"{head}\",{rest}");
    }
    let q_path = dir.path().join("quoted.csv");
    std::fs::write(&q_path, quoted.join("\r\n") + "\r\n").unwrap();
    let q_out = dir.path().join("quoted-preds.csv");
    let o = score(&[
        "--bundle",
        &b,
        "--trust",
        &t,
        "--input",
        q_path.to_str().unwrap(),
        "--output",
        q_out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&q_out).unwrap(), text);

    // NDJSON in, NDJSON out.
    let nd = dir.path().join("rows.ndjson");
    let rows = reference_rows("bc_logreg");
    let body: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(&nd, body).unwrap();
    let nd_out = dir.path().join("preds.ndjson");
    let o = score(&[
        "--bundle",
        &b,
        "--trust",
        &t,
        "--input",
        nd.to_str().unwrap(),
        "--output",
        nd_out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let preds: Vec<serde_json::Value> = std::fs::read_to_string(&nd_out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(preds.len(), 20);
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p["label"], want["outputs"]["label"][i]);
        assert_eq!(p["probabilities"].as_array().unwrap().len(), 2);
    }

    // A bundle that does not verify is refused before any scoring.
    let other = Keys::with_seed(9);
    let o = score(&[
        "--bundle",
        &b,
        "--trust",
        other.trust_path.to_str().unwrap(),
        "--input",
        nd.to_str().unwrap(),
        "--output",
        nd_out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bundle refused"));
}

/// The tree-ensemble fixtures (made by tests/fixtures/trees/make_tree_fixtures.py).
fn tree_fixture(name: &str) -> (std::path::PathBuf, serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/trees");
    let text = std::fs::read_to_string(dir.join(format!("{name}.reference.json"))).unwrap();
    (
        dir.join(format!("{name}.onnx")),
        serde_json::from_str(&text).unwrap(),
    )
}

/// An infer request with `rows` of input `input` as a binary FP32 tensor.
fn binary_infer(addr: std::net::SocketAddr, model: &str, rows: &[Vec<f32>]) -> common::Response {
    let width = rows.first().map_or(0, Vec::len);
    let json = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": [rows.len(), width], "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.len() * width * 4}}]
    }))
    .unwrap();
    let mut body = json.clone();
    for x in rows.iter().flatten() {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let len = json.len().to_string();
    Conn::open(addr)
        .unwrap()
        .request(
            "POST",
            &format!("/v2/models/{model}/infer"),
            &[
                ("content-type", "application/octet-stream"),
                ("inference-header-content-length", &len),
            ],
            &body,
        )
        .unwrap()
}

/// NaN and infinity reach only a model whose signed manifest accepts them.
/// The logistic regression refuses `1e40` (a finite JSON number, infinite
/// as FP32) and binary NaN and infinity with a 400 that names the input
/// and the element; the HistGradientBoosting ensemble, which routes missing
/// values (`ferry bundle build` tagged it), answers NaN rows as
/// onnxruntime does.
#[test]
fn non_finite_inputs_are_refused_unless_the_manifest_accepts_them() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let agent = side_load(&keys, data.path().to_str().unwrap(), &[]);
    let rows = reference_rows("bc_logreg");
    let infer = |body: &[u8]| http(agent.addr, "POST", "/v2/models/fraud/infer", body);

    let r = infer(&infer_body("finite", &rows[..2]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut big = rows[1].clone();
    big[3] = 1e40;
    let r = infer(&infer_body("big", &[rows[0].clone(), big]));
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["code"], "non_finite", "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("input \"input\": data[1][3] is 1e40 (beyond FP32's range)"),
        "{msg}"
    );
    assert!(msg.contains("ferry.non_finite_inputs=accept"), "{msg}");
    for (x, name) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let mut r32: Vec<Vec<f32>> = rows[..2]
            .iter()
            .map(|r| r.iter().map(|x| *x as f32).collect())
            .collect();
        r32[0][7] = x;
        let r = binary_infer(agent.addr, "fraud", &r32);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["code"], "non_finite");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("data[0][7] is {name},")),
            "{v}"
        );
    }
    // The refusals cost nothing: the model still answers.
    assert_eq!(infer(&infer_body("after", &rows[..1])).status, 200);

    // A tree ensemble with missing-value tracking: its bundle carries the
    // tag, and NaN rows are scored as onnxruntime scored them.
    let (onnx, reference) = tree_fixture("hgb_bin");
    let bundle = keys.bundle_onnx(&onnx, None, "trees", 1, &[]);
    let tree_data = tempfile::tempdir().unwrap();
    let trees = Process::spawn(&[
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        "--trust",
        keys.trust_path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--data",
        tree_data.path().to_str().unwrap(),
    ]);
    let rows: Vec<Vec<f32>> = reference["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect()
        })
        .collect();
    assert!(rows.iter().flatten().any(|x| x.is_nan()));
    let r = binary_infer(trees.addr, "trees", &rows);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let label = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    assert_eq!(label["data"], reference["outputs"]["label"]["data"]);
}

/// The batch scorer refuses a missing or infinite value with its line and
/// column for a model that takes only finite numbers, and scores it for a
/// tree ensemble that routes missing values.
#[test]
fn score_reports_the_row_and_column_of_a_non_finite_value() {
    let keys = Keys::new();
    let bundle = keys.bundle("bc_logreg", "fraud", 1);
    let trust = keys.trust_path.to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let rows = reference_rows("bc_logreg");
    let line = |r: &[f64]| r.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
    for (col, value, says) in [
        (2usize, "", "column 3 is missing (empty, NaN or null)"),
        (4, "inf", "column 5 is infinite"),
        (0, "1e40", "column 1 is 1e40, beyond FP32's range"),
    ] {
        let mut text: Vec<String> = rows[..3].iter().map(|r| line(r)).collect();
        let mut fields: Vec<String> = rows[1].iter().map(f64::to_string).collect();
        fields[col] = value.into();
        text[1] = fields.join(",");
        let input = dir.path().join("in.csv");
        std::fs::write(&input, text.join("\n") + "\n").unwrap();
        let out = dir.path().join("out.csv");
        let o = score(&[
            "--bundle",
            bundle.to_str().unwrap(),
            "--trust",
            &trust,
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("line 2: {says}")), "{err}");
        assert!(err.contains("ferry.non_finite_inputs=accept"), "{err}");
        assert!(!out.exists());
    }

    // The tree ensemble scores the same kind of file, empty fields included.
    let (onnx, reference) = tree_fixture("hgb_bin");
    let trees = keys.bundle_onnx(&onnx, None, "trees", 1, &[]);
    let text: Vec<String> = reference["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().map_or(String::new(), |x| (x as f32).to_string()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    assert!(text.iter().any(|l| l.contains(",,") || l.starts_with(',')));
    let input = dir.path().join("trees.csv");
    std::fs::write(&input, text.join("\n") + "\n").unwrap();
    let out = dir.path().join("trees-out.csv");
    let o = score(&[
        "--bundle",
        trees.to_str().unwrap(),
        "--trust",
        &trust,
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let labels: Vec<i64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    let want: Vec<i64> = reference["outputs"]["label"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(labels, want);
}

/// Labels and probabilities of an OIP answer against a fixture's reference
/// rows `first..`: labels exactly, probabilities within 1e-4 + 1e-3 relative.
fn assert_reference_answer(v: &serde_json::Value, want: &serde_json::Value, first: usize) {
    let labels = v["outputs"][0]["data"].as_array().unwrap();
    let probs = v["outputs"][1]["data"].as_array().unwrap();
    let classes = v["outputs"][1]["shape"][1].as_u64().unwrap() as usize;
    for (r, label) in labels.iter().enumerate() {
        assert_eq!(
            *label,
            want["outputs"]["label"][first + r],
            "row {}",
            first + r
        );
        for c in 0..classes {
            let got = probs[r * classes + c].as_f64().unwrap();
            let exp = want["outputs"]["probabilities"][first + r][c]
                .as_f64()
                .unwrap();
            assert!(
                (got - exp).abs() <= 1e-4 + 1e-3 * exp.abs(),
                "row {} class {c}: {got} vs onnxruntime {exp}",
                first + r
            );
        }
    }
}

/// skl2onnx's default export of StandardScaler + LogisticRegression
/// (ai.onnx.ml `Scaler` + `LinearClassifier`, no black_op), side-loaded
/// into the agent binary and asked over OIP: onnxruntime's answers.
#[test]
fn default_export_logreg_is_served_over_oip_by_the_agent_binary() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let bundle = keys.bundle("bc_logreg_default", "fraud", 1);
    let agent = Process::spawn(&[
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        "--trust",
        keys.trust_path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    let meta = http(agent.addr, "GET", "/v2/models/fraud", b"").json();
    assert_eq!(meta["outputs"][0]["name"], "label");
    assert_eq!(meta["outputs"][1]["name"], "probabilities");
    let rows = reference_rows("bc_logreg_default");
    let want = reference("bc_logreg_default");
    let r = http(
        agent.addr,
        "POST",
        "/v2/models/fraud/infer",
        &infer_body("all", &rows),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["outputs"][1]["shape"], serde_json::json!([rows.len(), 2]));
    assert_reference_answer(&v, &want, 0);
    // One row per request: the serving plan specialised to one row.
    let mut conn = Conn::open(agent.addr).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let r = conn
            .request(
                "POST",
                "/v2/models/fraud/infer",
                &[("content-type", "application/json")],
                &infer_body(&format!("r{i}"), std::slice::from_ref(row)),
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_reference_answer(&r.json(), &want, i);
    }
}

/// Batch scoring of the default export: the first 20 held-out rows are the
/// reference rows.
#[test]
fn score_of_the_default_export_matches_the_reference() {
    let keys = Keys::new();
    let bundle = keys.bundle("bc_logreg_default", "fraud", 1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("preds.csv");
    let heldout = fixtures().join("bc_logreg_default.heldout.csv");
    let lines = score_csv(
        bundle.to_str().unwrap(),
        keys.trust_path.to_str().unwrap(),
        &heldout,
        &out,
    );
    assert_eq!(lines[0], "line,label,probabilities_0,probabilities_1");
    assert_eq!(lines.len(), 101);
    let want = reference("bc_logreg_default");
    for (i, l) in lines[1..21].iter().enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f[1], want["outputs"]["label"][i].to_string());
        for c in 0..2 {
            let p: f64 = f[2 + c].parse().unwrap();
            let exp = want["outputs"]["probabilities"][i][c].as_f64().unwrap();
            assert!(
                (p - exp).abs() <= 1e-4 + 1e-3 * exp.abs(),
                "line {i}: {p} vs {exp}"
            );
        }
    }
}
