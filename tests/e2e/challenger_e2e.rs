//! Champion against challenger end to end, with real processes: `ferry
//! server` (embedded rumqttd broker), two enrolled `ferry-agent`s each
//! serving bc v1 as champion and bc v2 as challenger on a 50 % A/B split,
//! requests and feedback labels over the agents' HTTP API (the challenger's
//! predictions are labelled wrong 40 % of the time, the champion's never),
//! signed drift summaries over MQTT, then `GET /models/bc/challenger` and
//! `ferry model challenger bc`.
//!
//! The first device alone gives too few labels: "not yet: needs N more
//! labelled rows …" with N from the default minimum (200 a side). With the
//! second, the challenger is significantly worse on accuracy.

use super::telemetry_cli::Cli;
use super::{
    bundle, call, call_raw, dev, ferry_ok, fixtures, read_rows, start_agent, start_server, unique,
    wait_for, Conn, ADMIN,
};
use ferry::api::types::{ChallengerReport, Readiness};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

/// Requests and labels a device sent per variant (champion, challenger).
#[derive(Default, Debug, Clone, Copy)]
struct Sent {
    requests: [u64; 2],
    labelled: [u64; 2],
    correct: [u64; 2],
}

/// Sends `rows` (ids `tag-i`) and a label for each: the prediction for the
/// champion (v1); for the challenger (v2), its opposite on 2 rows in 5.
fn serve_and_label(agent: SocketAddr, rows: &[Vec<f64>], tag: &str) -> Sent {
    let mut c = Conn::open(agent);
    let mut sent = Sent::default();
    for (i, r) in rows.iter().enumerate() {
        let id = format!("{tag}-{i}");
        let (s, b) = c.request(
            "POST",
            "/v2/models/bc/infer",
            None,
            &super::infer_body(&id, r),
        );
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        let predicted = v["outputs"][0]["data"][0].as_i64().unwrap();
        let side = match v["model_version"].as_str() {
            Some("1") => 0,
            Some("2") => 1,
            other => panic!("served by {other:?}"),
        };
        sent.requests[side] += 1;
        let wrong = side == 1 && sent.requests[1] % 5 < 2;
        let label = if wrong { 1 - predicted } else { predicted };
        let body = json!({"id": id, "label": label}).to_string();
        let (s, b) = c.request("POST", "/v2/models/bc/feedback", None, body.as_bytes());
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        sent.labelled[side] += 1;
        sent.correct[side] += u64::from(!wrong);
    }
    sent
}

fn add(a: Sent, b: Sent) -> Sent {
    let s = |x: [u64; 2], y: [u64; 2]| [x[0] + y[0], x[1] + y[1]];
    Sent {
        requests: s(a.requests, b.requests),
        labelled: s(a.labelled, b.labelled),
        correct: s(a.correct, b.correct),
    }
}

/// Latency is not what this test is about: a loaded machine may put one
/// variant's p99 a histogram bucket above the other's.
const QUERY: &str = "max_latency_ratio=1000";

fn report(server: SocketAddr) -> (u16, Value) {
    call(
        server,
        "GET",
        &format!("/api/v1/models/bc/challenger?{QUERY}"),
        None,
    )
}

/// The report once the control plane has stored every request `sent` made.
fn report_covering(server: SocketAddr, sent: Sent) -> ChallengerReport {
    let total = sent.requests[0] + sent.requests[1];
    wait_for("the agents' windows at the control plane", || {
        let (s, v) = report(server);
        assert_eq!(s, 200, "{v}");
        let r: ChallengerReport = serde_json::from_value(v).unwrap();
        let c = r.comparisons.first()?;
        (c.champion.requests + c.challenger.requests == total).then_some(r)
    })
}

fn check_counts(r: &ChallengerReport, sent: Sent, devices: u64) {
    assert_eq!(r.comparisons.len(), 1, "{r:?}");
    let c = &r.comparisons[0];
    for (side, v) in [(0, &c.champion), (1, &c.challenger)] {
        assert_eq!(v.requests, sent.requests[side], "{v:?}");
        assert_eq!(v.labelled, sent.labelled[side], "{v:?}");
        assert_eq!(v.correct, sent.correct[side], "{v:?}");
        assert_eq!(v.errors, 0);
        assert_eq!(v.devices, devices);
    }
    assert_eq!(c.champion.variant, "champion");
    assert_eq!(c.challenger.variant, "challenger");
    assert_eq!(
        (
            c.champion.versions.as_slice(),
            c.challenger.versions.as_slice()
        ),
        (&[1][..], &[2][..])
    );
    let t = c.accuracy_test.unwrap();
    assert_eq!(
        (t.n_champion, t.n_challenger),
        (sent.labelled[0], sent.labelled[1])
    );
    let t = c.error_rate_test.unwrap();
    assert_eq!(
        (t.n_champion, t.n_challenger),
        (sent.requests[0], sent.requests[1])
    );
}

fn v2_bundle(dir: &Path) -> std::path::PathBuf {
    let models = fixtures().join("models");
    let out = dir.join("bc2.ferry");
    ferry_ok(&[
        "bundle",
        "build",
        &models.join("bc_logreg.onnx").display().to_string(),
        "--name",
        "bc",
        "--version",
        "2",
        "--baseline",
        &models.join("bc_logreg.baseline.csv").display().to_string(),
        "--sign-with",
        &dir.join("keys/pub.key").display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    out
}

#[test]
fn a_worse_challenger_is_called_worse_from_real_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = unique("ab");
    let server = start_server(dir.path(), &tenant, &["--mqtt-listen", "127.0.0.1:0"]);
    let (v1, trust) = bundle(dir.path(), &tenant);
    let v2 = v2_bundle(dir.path());
    let (s, v) = call_raw(
        server.http,
        "PUT",
        "/api/v1/trust-root",
        &std::fs::read(&trust).unwrap(),
    );
    assert_eq!(s, 200, "{v}");
    for b in [&v1, &v2] {
        let (s, v) = call_raw(
            server.http,
            "POST",
            "/api/v1/models",
            &std::fs::read(b).unwrap(),
        );
        assert_eq!(s, 201, "{v}");
    }
    // No telemetry yet: nothing to compare.
    let (s, v) = report(server.http);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["comparisons"], json!([]), "{v}");

    let rows = read_rows(&fixtures().join("psi/bc_test.csv"));
    let split = ["--challenger", &v2.display().to_string(), "--split", "0.5"].map(String::from);
    let split: Vec<&str> = split.iter().map(String::as_str).collect();
    // Windows close only at shutdown, so every label lands in the window of
    // the request it labels.
    let start = |label: &str| {
        start_agent(
            dir.path(),
            &v1,
            &trust,
            &server.mqtt,
            &tenant,
            label,
            1_000_000,
            &split,
        )
    };

    // One device, 60 labelled requests: too little evidence.
    let (mut a, addr) = start("ab-1");
    let first = serve_and_label(addr, &rows[..60], "a");
    a.terminate();
    let r = report_covering(server.http, first);
    check_counts(&r, first, 1);
    let c = &r.comparisons[0];
    let short = |min: u64, n: [u64; 2]| min.saturating_sub(n[0]) + min.saturating_sub(n[1]);
    let needs_labelled = short(200, first.labelled);
    let needs_requests = short(100, first.requests);
    assert_eq!(
        c.readiness,
        Readiness::NotYet {
            needs_labelled,
            needs_requests
        }
    );
    assert_eq!(
        c.verdict,
        format!(
            "not yet: needs {needs_labelled} more labelled rows and {needs_requests} more requests"
        )
    );
    assert_eq!(c.champion.accuracy.unwrap().value, 1.0);

    // A second device and many more labels: the challenger is worse.
    let (mut b, addr) = start("ab-2");
    let mut second = Sent::default();
    for round in 0..4 {
        second = add(second, serve_and_label(addr, &rows, &format!("b{round}")));
    }
    b.terminate();
    let all = add(first, second);
    assert!(all.labelled.iter().all(|n| *n >= 200), "{all:?}");
    let r = report_covering(server.http, all);
    check_counts(&r, all, 2);
    let c = &r.comparisons[0];
    assert_eq!(
        c.readiness,
        Readiness::Worse {
            on: vec!["accuracy".into()]
        },
        "{c:?}"
    );
    assert_eq!(c.verdict, "worse on: accuracy");
    let t = c.accuracy_test.unwrap();
    assert!(t.p_value < 1e-6 && t.z < 0.0, "{t:?}");
    let (champ, chall) = (c.champion.accuracy.unwrap(), c.challenger.accuracy.unwrap());
    assert!(
        chall.high < champ.low,
        "intervals apart: {champ:?} {chall:?}"
    );
    // The same model behind both: the same kind of predictions.
    assert!(c.prediction_js.unwrap() < 0.05, "{c:?}");
    // The devices' windows, by their enrolled ids.
    let (_, m) = call(server.http, "GET", "/api/v1/models/bc/metrics", None);
    for label in ["ab-1", "ab-2"] {
        assert!(
            m["windows"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["device"] == dev(label).as_str() && w["variant"] == "challenger"),
            "{m}"
        );
    }

    // The CLI: the same report as JSON, and as a table with the verdict.
    let cli = Cli::new(server.http, ADMIN, &dir.path().join("cli"));
    let args = [
        "model",
        "challenger",
        "bc",
        "--window",
        "1h",
        "--max-latency-ratio",
        "1000",
    ];
    let from_cli: ChallengerReport = cli.json(&args);
    assert_eq!(from_cli.window_secs, 3600);
    // The same windows: the same counts and verdict (floats only up to
    // JSON parsing, which may land one ULP away).
    let (x, y) = (&from_cli.comparisons[0], &r.comparisons[0]);
    assert_eq!((&x.readiness, &x.verdict), (&y.readiness, &y.verdict));
    assert_eq!(
        (x.champion.labelled, x.challenger.labelled),
        (y.champion.labelled, y.challenger.labelled)
    );
    assert_eq!(
        (x.champion.requests, x.challenger.requests),
        (y.champion.requests, y.challenger.requests)
    );
    let (px, py) = (
        x.accuracy_test.unwrap().p_value,
        y.accuracy_test.unwrap().p_value,
    );
    assert!((px - py).abs() <= 1e-12 * py.abs().max(1e-300), "{px} {py}");
    let t = cli.ok(&args);
    assert!(t.contains("verdict: worse on: accuracy"), "{t}");
    assert!(
        t.contains("challenger v2 against champion v1 on 2 device(s)"),
        "{t}"
    );
    let accuracy_row = t.lines().find(|l| l.starts_with("accuracy")).unwrap();
    assert!(
        accuracy_row.contains(&format!("(n={}/{})", all.labelled[0], all.labelled[1])),
        "{t}"
    );
    // Stricter criteria: with 10,000 labels a side required, not yet.
    let t = cli.ok(&[
        "model",
        "challenger",
        "bc",
        "--min-labelled",
        "10000",
        "--max-latency-ratio",
        "1000",
    ]);
    assert!(!t.contains("verdict: worse on"), "{t}");
    assert!(t.contains("verdict: not yet: needs "), "{t}");
    // Bad input is refused with the reason.
    let o = cli.run(&["model", "challenger", "bc", "--alpha", "2"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("alpha"),
        "{o:?}"
    );
    drop(server.proc);
}
