//! Drift telemetry end to end, with real processes: `ferry server` (its
//! embedded rumqttd broker, or an external Mosquitto), `ferry-agent` serving
//! the breast-cancer logistic regression, a webhook receiver in the test,
//! and `mosquitto_sub` as a third-party consumer.
//!
//! Held-out rows make a window without drift (no alert); the shifted copy
//! makes a drifted window (one drift alert, exactly one retraining webhook).
//! The PSI the control plane stored equals `ferry-protocol`'s offline
//! computation on the same rows as the model saw them (FP32 tensors).
//!
//! The control plane stores only what an enrolled device signed, so every
//! agent here is enrolled first (`start_agent`): the test names devices
//! by label, [`dev`] gives the id enrollment assigned.
#![allow(clippy::unwrap_used)]

#[path = "telemetry_cli.rs"]
mod telemetry_cli;

#[path = "challenger_e2e.rs"]
mod challenger_e2e;

use ferry_e2e::db::Db;
use ferry_e2e::on_both_databases;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN: &str = "fy_00000000000000000000000000000000000000000000000000000000000000e2";
const SECRET: &str = "webhook-secret";
const WAIT: Duration = Duration::from_secs(180);

fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_e2e-ferry")
}

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_e2e-ferry-agent")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A real dependency is missing: fail under CI, skip with a note otherwise.
fn missing(what: &str) -> bool {
    ferry_e2e::skip_or_fail(what);
    true
}

fn ferry_ok(args: &[&str]) {
    let out = Command::new(ferry_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{:x}{}", n & 0xffff_ffff, std::process::id())
}

// ------------------------------------------------------------------ http

/// A keep-alive HTTP/1.1 connection (responses carry Content-Length).
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Self {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        self.w.write_all(head.as_bytes()).unwrap();
        self.w.write_all(body).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut b = vec![0; len];
        self.r.read_exact(&mut b).unwrap();
        (status, b)
    }
}

fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let (s, b) = Conn::open(addr).request(method, path, Some(ADMIN), &bytes);
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn call_raw(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (s, b) = Conn::open(addr).request(method, path, Some(ADMIN), body);
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

// ------------------------------------------------------------------ processes

struct Proc {
    child: Child,
}

impl Proc {
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `bin`, reads stdout until `ready` returns a value for a line,
/// then keeps draining it.
fn spawn_until<T>(
    bin: &str,
    args: &[String],
    env: &[(&str, &str)],
    mut ready: impl FnMut(&str) -> Option<T>,
) -> (Proc, T, Vec<String>) {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    ferry_e2e::quiet_stderr(&mut child);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let v = loop {
        match lines.next() {
            Some(Ok(line)) => {
                let r = ready(&line);
                seen.push(line);
                if let Some(v) = r {
                    break v;
                }
            }
            _ => {
                let status = child.wait().unwrap();
                panic!("{bin} exited before it was ready ({status}); output: {seen:?}");
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc { child }, v, seen)
}

struct Server {
    proc: Proc,
    http: SocketAddr,
    mqtt: String,
}

thread_local! {
    /// The QUIC and HTTP addresses of the server this test started last
    /// (each test runs on its own thread): `start_agent` enrolls there.
    static FLEET: RefCell<Option<(String, SocketAddr)>> = const { RefCell::new(None) };
    /// Device label → the id enrollment gave it.
    static IDS: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
}

/// The enrolled id of the device this test calls `label`.
fn dev(label: &str) -> String {
    IDS.with(|m| m.borrow().get(label).cloned())
        .unwrap_or_else(|| panic!("device {label:?} was not enrolled"))
}

/// Enrolls the device `label` (data directory `dir/agent-LABEL`) with the
/// test's server, pushing the tenant's trust root `trust` first; its id.
/// An already enrolled directory keeps its id.
fn enroll(dir: &Path, trust: &Path, label: &str) -> String {
    let data = dir.join(format!("agent-{label}"));
    let known = std::fs::read(data.join("fleet/device.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["device_id"].as_str().map(str::to_string));
    let id = match known {
        Some(id) => id,
        None => {
            let (quic, http) = FLEET
                .with(|f| f.borrow().clone())
                .expect("start_server before start_agent");
            // The tenant's root (again, when the test pushed it already).
            let _ = call_raw(
                http,
                "PUT",
                "/api/v1/trust-root",
                &std::fs::read(trust).unwrap(),
            );
            let ca = dir.join(format!("fleet-ca-{label}.pem"));
            let out = Command::new(ferry_bin())
                .args(["device", "token", "create", "--json", "--ca-out"])
                .arg(&ca)
                .env("FERRY_SERVER", format!("http://{http}"))
                .env("FERRY_TOKEN", ADMIN)
                .env("HOME", dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let tok: Value = serde_json::from_slice(&out.stdout).unwrap();
            let out = Command::new(agent_bin())
                .args(["enroll", "--server", &quic, "--token"])
                .arg(tok["token"].as_str().unwrap())
                .arg("--ca")
                .arg(&ca)
                .arg("--data")
                .arg(&data)
                .args(["--hostname", label, "--trust"])
                .arg(trust)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find(|w| w.starts_with("dev_"))
                .unwrap()
                .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        }
    };
    IDS.with(|m| m.borrow_mut().insert(label.to_string(), id.clone()));
    id
}

fn start_server(dir: &Path, tenant: &str, mqtt_args: &[&str]) -> Server {
    let config = dir.join("server.toml");
    std::fs::write(&config, format!("root_tenant = \"{tenant}\"\n")).unwrap();
    let mut args: Vec<String> = vec![
        "server".into(),
        "--config".into(),
        config.display().to_string(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--data".into(),
        dir.join("server").display().to_string(),
        "--quic".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(mqtt_args.iter().map(|s| s.to_string()));
    let mut mqtt = None;
    let mut http = None;
    let (proc, (http, quic), _) = spawn_until(
        ferry_bin(),
        &args,
        // The test's webhook receiver listens on loopback, which webhooks
        // may only reach when the operator allows it.
        &[
            ("FERRY_BOOTSTRAP_TOKEN", ADMIN),
            ("FERRY_WEBHOOK_ALLOW", "127.0.0.1/32"),
        ],
        |l| {
            if let Some(rest) = l.strip_prefix("ferry server MQTT telemetry: ") {
                mqtt = rest.split(" at ").nth(1).map(str::to_string);
            }
            if let Some(r) = l.strip_prefix("ferry server listening on http://") {
                http = r
                    .split_whitespace()
                    .next()
                    .map(|a| a.parse::<SocketAddr>().unwrap());
            }
            // The fleet's line comes last.
            l.strip_prefix("ferry fleet listening on quic://")
                .map(|q| (http.expect("the HTTP address first"), q.trim().to_string()))
        },
    );
    FLEET.with(|f| *f.borrow_mut() = Some((quic, http)));
    Server {
        proc,
        http,
        mqtt: mqtt.expect("the server says which MQTT broker it uses"),
    }
}

/// Enrolls the device `device` (a label, see [`dev`]) unless it is, and
/// runs it; `extra`: more `ferry-agent run` flags. It publishes as its
/// enrolled tenant and id, signing with its device key.
#[allow(clippy::too_many_arguments)]
fn start_agent(
    dir: &Path,
    bundle: &Path,
    trust: &Path,
    mqtt: &str,
    tenant: &str,
    device: &str,
    window_rows: u64,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let _ = tenant;
    enroll(dir, trust, device);
    let mut args: Vec<String> = [
        "run",
        "--bundle",
        &bundle.display().to_string(),
        "--trust",
        &trust.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--data",
        &dir.join(format!("agent-{device}")).display().to_string(),
        "--mqtt-url",
        mqtt,
        "--window-rows",
        &window_rows.to_string(),
        "--window-secs",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let (p, addr, _) = spawn_until(agent_bin(), &args, &[], |l| {
        l.strip_prefix("ferry-agent listening on http://")
            .map(|r| r.trim().parse::<SocketAddr>().unwrap())
    });
    (p, addr)
}

// ------------------------------------------------------------------ webhook

#[derive(Clone, Debug)]
struct Hook {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn webhook_receiver() -> (String, Arc<Mutex<Vec<Hook>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/retrain", l.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = HashMap::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            g.lock().unwrap().push(Hook { headers, body });
            let mut w = s;
            let _ =
                w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, got)
}

// ------------------------------------------------------------------ data

fn read_rows(path: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split(',')
                .map(|x| x.trim().parse::<f64>().unwrap())
                .collect()
        })
        .collect()
}

fn infer_body(id: &str, row: &[f64]) -> Vec<u8> {
    json!({
        "id": id,
        "inputs": [{"name": "input", "shape": [1, row.len()], "datatype": "FP32", "data": row}]
    })
    .to_string()
    .into_bytes()
}

fn send_rows(agent: SocketAddr, rows: &[Vec<f64>], tag: &str) {
    let mut c = Conn::open(agent);
    for (i, r) in rows.iter().enumerate() {
        let (s, b) = c.request(
            "POST",
            "/v2/models/bc/infer",
            None,
            &infer_body(&format!("{tag}-{i}"), r),
        );
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    }
}

/// PSI as the agent computes it: the rows as the FP32 tensor the model saw.
fn offline_psi(rows: &[Vec<f64>]) -> Vec<Option<f64>> {
    let baseline =
        ferry::baseline_csv::from_csv(&fixtures().join("models/bc_logreg.baseline.csv"), 10)
            .unwrap();
    let as_f32: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().map(|x| f64::from(*x as f32)).collect())
        .collect();
    let counts = baseline.count_rows(as_f32.iter().map(Vec::as_slice));
    ferry_protocol::psi(&baseline, &counts)
        .unwrap()
        .into_iter()
        .map(Some)
        .collect()
}

/// Keys, a trust root for `tenant` and a signed bc_logreg bundle, made by
/// the real `ferry` CLI.
fn bundle(dir: &Path, tenant: &str) -> (PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n).display().to_string();
    for k in ["root", "pub"] {
        ferry_ok(&["key", "generate", "--out", &p("keys"), "--name", k]);
    }
    ferry_ok(&[
        "trust",
        "init",
        "--root-key",
        &p("keys/root.key"),
        "--publisher",
        &p("keys/pub.pub"),
        "--tenant",
        tenant,
        "--version",
        "1",
        "--out",
        &p("trust.root"),
    ]);
    let models = fixtures().join("models");
    ferry_ok(&[
        "bundle",
        "build",
        &models.join("bc_logreg.onnx").display().to_string(),
        "--name",
        "bc",
        "--version",
        "1",
        "--baseline",
        &models.join("bc_logreg.baseline.csv").display().to_string(),
        "--sign-with",
        &p("keys/pub.key"),
        "--out",
        &p("bc.ferry"),
    ]);
    (dir.join("bc.ferry"), dir.join("trust.root"))
}

fn drift_windows(server: SocketAddr) -> Vec<Value> {
    let (s, v) = call(server, "GET", "/api/v1/models/bc/drift", None);
    assert_eq!(s, 200, "{v}");
    v["windows"].as_array().unwrap().clone()
}

fn alerts(server: SocketAddr, kind: &str) -> Vec<Value> {
    let (s, v) = call(server, "GET", &format!("/api/v1/alerts?kind={kind}"), None);
    assert_eq!(s, 200, "{v}");
    v["alerts"].as_array().unwrap().clone()
}

fn psi_of(w: &Value) -> Vec<Option<f64>> {
    w["psi"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::as_f64)
        .collect()
}

/// Equal up to JSON number parsing: the agent and the offline computation
/// run the same function on the same counts, and the agent prints each
/// value's shortest round-trip form, but serde_json's default parser (no
/// `float_roundtrip`) may land one ULP away when the API re-reads it.
fn assert_same_psi(got: &[Option<f64>], want: &[Option<f64>]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (Some(g), Some(w)) => assert!(
                (g - w).abs() <= 4.0 * f64::EPSILON * w.abs().max(1e-300),
                "feature {i}: stored {g}, offline {w}"
            ),
            _ => assert_eq!(g, w, "feature {i}"),
        }
    }
}

/// The scenario on a running server; returns the summaries' PSI.
fn held_out_then_shifted(dir: &Path, server: &Server, tenant: &str, device: &str) {
    let (bundle, trust) = bundle(dir, tenant);
    let (s, v) = call_raw(
        server.http,
        "PUT",
        "/api/v1/trust-root",
        &std::fs::read(&trust).unwrap(),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call_raw(
        server.http,
        "POST",
        "/api/v1/models",
        &std::fs::read(&bundle).unwrap(),
    );
    assert_eq!(s, 201, "{v}");
    let (hook_url, hooks) = webhook_receiver();
    let (s, v) = call(
        server.http,
        "POST",
        "/api/v1/models/bc/drift-config",
        Some(json!({
            "psi_threshold": 0.3, "min_drifted_rows": 100, "cooldown_secs": 3600,
            "webhook_url": hook_url, "webhook_secret": SECRET,
        })),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["webhook_secret_set"], true);
    assert!(
        v.get("webhook_secret").is_none(),
        "the secret is never shown"
    );
    // The URL is listed by its origin (a hook's path can be its credential).
    // Posting the policy back as listed, without the secret, keeps both:
    // the hook below is still delivered there and signed with SECRET.
    let listed = ferry::telemetry::policy::redacted_url(&hook_url);
    assert_eq!(v["webhook_url"], listed.as_str(), "{v}");
    assert!(listed.ends_with("/…"), "{listed}");
    let (s, v) = call(
        server.http,
        "POST",
        "/api/v1/models/bc/drift-config",
        Some(json!({
            "psi_threshold": 0.3, "min_drifted_rows": 100, "cooldown_secs": 3600,
            "webhook_url": listed,
        })),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["webhook_secret_set"], true, "{v}");

    let held_out = read_rows(&fixtures().join("psi/bc_test.csv"));
    let shifted = read_rows(&fixtures().join("psi/bc_shifted.csv"));
    assert_eq!(held_out.len(), shifted.len());
    let (mut agent, agent_addr) = start_agent(
        dir,
        &bundle,
        &trust,
        &server.mqtt,
        tenant,
        device,
        held_out.len() as u64,
        &[],
    );

    send_rows(agent_addr, &held_out, "held");
    let w = wait_for("the held-out window at the control plane", || {
        let w = drift_windows(server.http);
        (!w.is_empty()).then_some(w)
    });
    assert_eq!(w.len(), 1);
    assert_eq!(w[0]["rows"], held_out.len());
    assert_eq!(w[0]["drifted"], false, "{}", w[0]);
    assert_same_psi(&psi_of(&w[0]), &offline_psi(&held_out));
    assert!(alerts(server.http, "drift").is_empty());

    send_rows(agent_addr, &shifted, "shifted");
    let w = wait_for("the shifted window", || {
        let w = drift_windows(server.http);
        (w.len() >= 2).then_some(w)
    });
    assert_eq!(w.len(), 2);
    assert_eq!(w[1]["drifted"], true, "{}", w[1]);
    assert_same_psi(&psi_of(&w[1]), &offline_psi(&shifted));
    // The roll-ups the charts read hold both windows, fleet-wide and for
    // the device, and the heat map the shifted window's PSI.
    for path in [
        "/api/v1/models/bc/monitoring?range=1h".to_string(),
        format!(
            "/api/v1/models/bc/monitoring?range=24h&device={}",
            dev(device)
        ),
    ] {
        let m = wait_for("both windows rolled up", || {
            let (s, m) = call(server.http, "GET", &path, None);
            assert_eq!(s, 200, "{m}");
            (m["series"][0]["totals"]["windows"] == 2).then_some(m)
        });
        assert_eq!(m["resolution"], "minute", "{m}");
        let t = &m["series"][0]["totals"];
        assert_eq!(t["drifted_rows"], shifted.len(), "{m}");
        assert_eq!(t["requests"], held_out.len() + shifted.len(), "{m}");
        let most = psi_of(&w[1]).into_iter().flatten().fold(0.0, f64::max);
        assert!((t["max_psi"].as_f64().unwrap() - most).abs() < 1e-9, "{m}");
        if m["device"].is_null() {
            let heat = m["features"].as_array().unwrap();
            assert!(!heat.is_empty() && heat.len() <= psi_of(&w[1]).len(), "{m}");
        } else {
            assert!(m["features"].as_array().unwrap().is_empty(), "{m}");
        }
    }
    let (s, m) = call(
        server.http,
        "GET",
        "/api/v1/models/bc/monitoring?range=1y",
        None,
    );
    assert_eq!(s, 400, "{m}");
    let a = wait_for("the drift alert", || {
        let a = alerts(server.http, "drift");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["device"], dev(device).as_str());
    let hook = wait_for("the retraining webhook", || {
        hooks.lock().unwrap().first().cloned()
    });
    let sig = hook.headers.get("x-ferry-signature").unwrap();
    assert!(
        ferry::telemetry::webhook::verify(SECRET, &hook.body, sig),
        "HMAC signature"
    );
    let payload: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(payload["reason"], "drift");
    assert_eq!(payload["model"], "bc");
    assert_eq!(payload["version"], 1);
    assert_eq!(payload["alert_id"], a[0]["id"]);
    assert_eq!(payload["evidence"]["window"]["rows"], shifted.len());
    assert!(!payload["evidence"]["drifted_features"]
        .as_array()
        .unwrap()
        .is_empty());

    // A second drifted window in the same episode: stored, no new trigger.
    send_rows(agent_addr, &shifted, "shifted-again");
    wait_for("the third window", || {
        (drift_windows(server.http).len() >= 3).then_some(())
    });
    let (s, v) = call(
        server.http,
        "GET",
        "/api/v1/retrain-triggers?model=bc",
        None,
    );
    assert_eq!(s, 200, "{v}");
    let t = wait_for("the trigger's delivery record", || {
        let (_, t) = call(
            server.http,
            "GET",
            "/api/v1/retrain-triggers?model=bc",
            None,
        );
        let list = t["triggers"].as_array().unwrap().clone();
        (list.len() == 1 && list[0]["delivered"] == true).then_some(list)
    });
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(
        hooks.lock().unwrap().len(),
        1,
        "exactly one retraining trigger"
    );
    assert_eq!(alerts(server.http, "drift").len(), 1);

    // Every trigger is audited.
    let (s, v) = call(
        server.http,
        "GET",
        "/api/v1/audit?action=retrain.trigger",
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["records"].as_array().unwrap().len(), 1, "{v}");

    // A tampered bundle pushed to the agent is refused (a `refused` event
    // on the events topic) and the model keeps serving.
    let mut tampered = std::fs::read(&bundle).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let sock = ferry_e2e::admin::admin_socket(&dir.join(format!("agent-{device}")));
    let (s, b) = ferry_e2e::admin::admin_request(
        &sock,
        "POST",
        "/v1/models/activate",
        "application/octet-stream",
        &tampered,
    );
    assert!((400..500).contains(&s), "{s} {b}");
    send_rows(agent_addr, &held_out[..1], "after-refusal");

    // The operator CLI reads (and acknowledges) what the scenario made.
    telemetry_cli::check(
        server.http,
        ADMIN,
        &dir.join(format!("cli-{device}")),
        &dev(device),
        a[0]["id"].as_str().unwrap(),
        SECRET,
    );

    // Health: retained online while serving, offline after a clean stop.
    let (_, d) = call(server.http, "GET", "/api/v1/devices", None);
    assert!(
        d["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["device"] == dev(device).as_str()),
        "{d}"
    );
    agent.terminate();
    wait_for("the device marked offline", || {
        let (_, d) = call(server.http, "GET", "/api/v1/devices", None);
        d["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["device"] == dev(device).as_str() && x["status"] == "offline")
            .then_some(())
    });
}

on_both_databases!(drift_alert_and_one_retraining_trigger_with_the_embedded_broker);
fn drift_alert_and_one_retraining_trigger_with_the_embedded_broker(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let tenant = unique("emb");
    let mut args = vec!["--mqtt-listen", "127.0.0.1:0"];
    args.extend(db.args());
    let server = start_server(dir.path(), &tenant, &args);
    assert!(
        server.mqtt.starts_with("mqtt://127.0.0.1:"),
        "{}",
        server.mqtt
    );
    assert_ne!(server.mqtt, "mqtt://127.0.0.1:1883");
    held_out_then_shifted(dir.path(), &server, &tenant, "dev-1");
    // rumqttd's listener speaks 3.1.1 only: the agent's MQTT 5 CONNECT was
    // refused, and it fell back.
    assert_eq!(device_health(&server, &dev("dev-1"))["mqtt_protocol"], 4);
    drop(server.proc);
}

/// The device's last health message as the control plane stored it.
fn device_health(server: &Server, device: &str) -> Value {
    let (_, d) = call(server.http, "GET", "/api/v1/devices", None);
    d["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["device"] == device)
        .map(|x| x["health"].clone())
        .unwrap_or_else(|| panic!("{device} not in {d}"))
}

fn mosquitto_up() -> bool {
    TcpStream::connect_timeout(&"127.0.0.1:1883".parse().unwrap(), Duration::from_secs(2)).is_ok()
}

#[test]
fn drift_alert_through_external_mosquitto_read_by_mosquitto_sub() {
    if !mosquitto_up() && missing("Mosquitto on 127.0.0.1:1883") {
        return;
    }
    ferry_e2e::used_service("Mosquitto 127.0.0.1:1883");
    if Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_err()
        && missing("mosquitto_sub (Debian package mosquitto-clients)")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tenant = unique("mq");
    // Third-party consumers, subscribed before anything is published.
    let (mut sub, lines) = mosquitto_sub(&format!("ferry/v1/{tenant}/+/drift"));
    let (mut ev_sub, event_lines) = mosquitto_sub(&format!("ferry/v1/{tenant}/+/events"));
    // An MQTT 5 subscriber printing each message's content type and payload
    // format indicator: only an MQTT 5 publisher can have set them.
    let (mut sub5, lines5) = mosquitto_sub_with(
        &["-V", "mqttv5", "-F", "%C %F %p"],
        &format!("ferry/v1/{tenant}/+/drift"),
    );
    let server = start_server(
        dir.path(),
        &tenant,
        &["--mqtt-url", "mqtt://127.0.0.1:1883"],
    );
    assert_eq!(server.mqtt, "mqtt://127.0.0.1:1883");
    held_out_then_shifted(dir.path(), &server, &tenant, "dev-m");
    let got = wait_for("mosquitto_sub to print three summaries", || {
        let l = lines.lock().unwrap().clone();
        (l.len() >= 3).then_some(l)
    });
    let _ = sub.kill();
    let _ = sub.wait();
    let got5 = wait_for("the MQTT 5 subscriber to print three summaries", || {
        let l = lines5.lock().unwrap().clone();
        (l.len() >= 3).then_some(l)
    });
    let _ = sub5.kill();
    let _ = sub5.wait();
    for (l5, l) in got5.iter().zip(&got) {
        let payload = l5
            .strip_prefix("application/json 1 ")
            .unwrap_or_else(|| panic!("no MQTT 5 content type / payload format: {l5}"));
        assert_eq!(payload, l);
    }
    let stored = drift_windows(server.http);
    for (line, w) in got.iter().zip(&stored) {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["tenant"], tenant.as_str());
        assert_eq!(v["seq"], w["seq"]);
        assert_same_psi(&psi_of(&v), &psi_of(w));
        assert_eq!(v["features"].as_array().unwrap().len(), 30);
    }
    // Events, in the device's sequence: started, the side-loaded model
    // activated, the tampered bundle refused.
    let ev = wait_for("started, activated and refused events", || {
        let e: Vec<Value> = event_lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (e.len() >= 3).then_some(e)
    });
    let _ = ev_sub.kill();
    let _ = ev_sub.wait();
    let kinds: Vec<&str> = ev.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[..3], ["started", "activated", "refused"], "{ev:?}");
    assert_eq!(ev[1]["model"], "bc");
    assert_eq!(ev[1]["version"], 1);
    assert_eq!(ev[1]["detail"], "champion");
    assert!(ev
        .windows(2)
        .all(|p| p[0]["seq"].as_u64() < p[1]["seq"].as_u64()));
    assert!(ev
        .iter()
        .all(|e| e["schema"] == 1 && e["device"] == dev("dev-m").as_str()));
    assert!(ev
        .iter()
        .all(|e| e["sig"].as_str().is_some_and(|s| s.len() == 128)));
    assert_eq!(device_health(&server, &dev("dev-m"))["mqtt_protocol"], 5);
    drop(server.proc);
}

/// `mosquitto_sub` on Mosquitto at 127.0.0.1:1883 (QoS 1), and the lines it
/// prints as they arrive.
fn mosquitto_sub(topic: &str) -> (Child, Arc<Mutex<Vec<String>>>) {
    mosquitto_sub_with(&[], topic)
}

/// [`mosquitto_sub`] with more of its flags (`-V mqttv5`, `-F FORMAT`).
fn mosquitto_sub_with(flags: &[&str], topic: &str) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", topic])
        .args(flags)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    let out = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(l);
        }
    });
    (sub, lines)
}

/// A private Mosquitto (with persistence) the test can stop and restart.
struct Mosquitto {
    conf: PathBuf,
    port: u16,
    proc: Option<Proc>,
    log: PathBuf,
}

/// `None` (the test returns) where Mosquitto is not installed; with
/// `CI=true` that fails the test instead.
fn mosquitto_missing() -> Option<Mosquitto> {
    missing("the mosquitto broker binary (Debian package mosquitto)");
    None
}

impl Mosquitto {
    /// A private Mosquitto, or `None` where it is not installed (see
    /// [`mosquitto_missing`]).
    fn start_or_skip(dir: &Path) -> Option<Mosquitto> {
        Self::start_with(dir, "").or_else(mosquitto_missing)
    }

    /// `listener_conf` goes after the listener line (TLS settings).
    fn start_with(dir: &Path, listener_conf: &str) -> Option<Mosquitto> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).unwrap();
        let conf = dir.join("mosquitto.conf");
        // Started as root, Mosquitto drops to the `mosquitto` user, which
        // cannot write the test's private directory: its persistence (the
        // control plane's session, kept across the restart) would silently
        // not happen. Staying the current user keeps it.
        let me = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "root".into());
        std::fs::write(
            &conf,
            format!(
                "user {me}\nlistener {port} 127.0.0.1\n{listener_conf}allow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\nlog_dest file {}\nconnection_messages true\n",
                data.display(),
                dir.join("mosquitto.log").display()
            ),
        )
        .unwrap();
        let _ = bin;
        let mut m = Mosquitto {
            conf,
            port,
            proc: None,
            log: dir.join("mosquitto.log"),
        };
        m.restart();
        ferry_e2e::used_service("a private Mosquitto");
        Some(m)
    }

    fn restart(&mut self) {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap();
        let child = Command::new(bin)
            .args(["-c", &self.conf.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc { child });
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        wait_for("mosquitto to listen", || {
            TcpStream::connect(addr).ok().map(|_| ())
        });
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    /// The broker's own record of each connection of `client_id`:
    /// `(p5, c0, k10)` is MQTT 5, clean start off, keep-alive 10 s; Mosquitto
    /// writes MQTT 3.1.1 as `p2`.
    fn connections_of(&self, client_id: &str) -> Vec<String> {
        let needle = format!(" as {client_id} (");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains(&needle))
            .filter_map(|l| {
                l.split(&needle)
                    .nth(1)
                    .map(|r| r.trim_end_matches(").").to_string())
            })
            .collect()
    }

    fn ingest_connections(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains(" as ferry-server-"))
            .filter_map(|l| {
                l.rsplit_once(" (")
                    .map(|r| r.1.trim_end_matches(").").to_string())
            })
            .collect()
    }
}

#[test]
fn broker_outage_loses_no_window_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Mosquitto::start_or_skip(dir.path()) else {
        return;
    };
    let tenant = unique("out");
    let server = start_server(
        dir.path(),
        &tenant,
        &["--mqtt-url", &format!("mqtt://127.0.0.1:{}", broker.port)],
    );
    let (bundle, trust) = bundle(dir.path(), &tenant);
    let (_agent, agent_addr) = start_agent(
        dir.path(),
        &bundle,
        &trust,
        &server.mqtt,
        &tenant,
        "dev-o",
        100,
        &[],
    );
    let rows = read_rows(&fixtures().join("psi/bc_test.csv"));
    let mut c = Conn::open(agent_addr);
    for i in 0..10_000usize {
        if i == 2_000 {
            broker.stop();
            // The premise: the broker kept the control plane's session.
            assert!(
                dir.path().join("mosquitto/mosquitto.db").exists(),
                "mosquitto wrote no persistence file"
            );
        }
        if i == 7_000 {
            broker.restart();
        }
        let (s, b) = c.request(
            "POST",
            "/v2/models/bc/infer",
            None,
            &infer_body(&format!("o{i}"), &rows[i % rows.len()]),
        );
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    }
    let w = wait_for("all 100 windows at the control plane", || {
        let w = drift_windows(server.http);
        (w.len() >= 100).then_some(w)
    });
    assert_eq!(w.len(), 100, "no duplicates");
    let mut by_seq = w.clone();
    by_seq.sort_by_key(|x| x["seq"].as_u64().unwrap());
    let seqs: Vec<u64> = by_seq.iter().map(|x| x["seq"].as_u64().unwrap()).collect();
    // seq 0 is the `started` event, 1 the side-loaded model's `activated`;
    // windows are 2..=101, none missing.
    assert_eq!(seqs, (2..=101).collect::<Vec<u64>>());
    assert!(by_seq.iter().all(|x| x["rows"] == 100));
    let received: Vec<i64> = by_seq
        .iter()
        .map(|x| x["received_at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        received.windows(2).all(|p| p[0] <= p[1]),
        "arrived in order: {received:?}"
    );
    let (_, d) = call(server.http, "GET", "/api/v1/devices", None);
    let id_o = dev("dev-o");
    let found = d["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["device"] == id_o.as_str())
        .cloned();
    if let Some(dev) = found {
        assert_eq!(dev["health"]["outbox_dropped"], 0, "{dev}");
    }
    // MQTT 5 on both sides, before and after the restart: the control
    // plane's session kept by the broker (clean start off, a session that
    // never expires), the agent's clean.
    let ingest = broker.ingest_connections();
    assert!(ingest.len() >= 2, "{ingest:?}");
    assert!(
        ingest.iter().all(|c| c.starts_with("p5, c0,")),
        "{ingest:?}"
    );
    let agent = broker.connections_of(&format!("ferry-{tenant}-{}", dev("dev-o")));
    assert!(agent.len() >= 2, "{agent:?}");
    assert!(agent.iter().all(|c| c.starts_with("p5, c1,")), "{agent:?}");
    broker.stop();
}

/// TLS to the broker: a Mosquitto whose only listener is TLS, with a
/// certificate from a test CA. The control plane and the agent both connect
/// with `mqtts://` and `--mqtt-ca`, and drift summaries arrive; an agent
/// without the CA does not get its summaries through.
#[test]
fn summaries_over_tls_to_an_external_broker() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test broker CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca, crt, k) = (
        dir.path().join("ca.pem"),
        dir.path().join("broker.pem"),
        dir.path().join("broker.key"),
    );
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let tls = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n",
        ca.display(),
        crt.display(),
        k.display()
    );
    let Some(broker) = Mosquitto::start_with(dir.path(), &tls).or_else(mosquitto_missing) else {
        return;
    };
    let tenant = unique("tls");
    let url = format!("mqtts://localhost:{}", broker.port);
    let ca_s = ca.display().to_string();
    // The control plane pinned to MQTT 3.1.1; the agents on auto.
    let server = start_server(
        dir.path(),
        &tenant,
        &[
            "--mqtt-url",
            &url,
            "--mqtt-ca",
            &ca_s,
            "--mqtt-version",
            "3.1.1",
        ],
    );
    assert_eq!(server.mqtt, url);
    let (bundle, trust) = bundle(dir.path(), &tenant);
    let (s, v) = call_raw(
        server.http,
        "PUT",
        "/api/v1/trust-root",
        &std::fs::read(&trust).unwrap(),
    );
    assert_eq!(s, 200, "{v}");
    let rows = read_rows(&fixtures().join("psi/bc_test.csv"));
    // Without the CA: the broker's certificate is not trusted.
    let (_untrusting, addr_u) = start_agent(
        dir.path(),
        &bundle,
        &trust,
        &url,
        &tenant,
        "dev-no-ca",
        10,
        &[],
    );
    send_rows(addr_u, &rows[..20], "no-ca");
    let (_agent, addr) = start_agent(
        dir.path(),
        &bundle,
        &trust,
        &url,
        &tenant,
        "dev-tls",
        10,
        &["--mqtt-ca", &ca_s],
    );
    send_rows(addr, &rows[..20], "tls");
    let w = wait_for("two windows over TLS", || {
        let w = drift_windows(server.http);
        (w.len() >= 2).then_some(w)
    });
    assert!(
        w.iter().all(|x| x["device"] == dev("dev-tls").as_str()),
        "{w:?}"
    );
    assert_same_psi(&psi_of(&w[0]), &offline_psi(&rows[..10]));
    // Sent first, the untrusting agent's windows never got through.
    assert!(drift_windows(server.http)
        .iter()
        .all(|x| x["device"] != dev("dev-no-ca").as_str()));
    // Mosquitto logs MQTT 3.1.1 as `p2` (its own numbering), 5 as `p5`.
    let ingest = broker.ingest_connections();
    assert!(
        !ingest.is_empty() && ingest.iter().all(|c| c.starts_with("p2,")),
        "{ingest:?}"
    );
    let agent = broker.connections_of(&format!("ferry-{tenant}-{}", dev("dev-tls")));
    assert!(
        !agent.is_empty() && agent.iter().all(|c| c.starts_with("p5,")),
        "{agent:?}"
    );
    assert!(broker
        .connections_of(&format!("ferry-{tenant}-{}", dev("dev-no-ca")))
        .is_empty());
}

/// A burst far larger than the ingest's request queue (256) and MQTT 5's
/// receive maximum (100): every message is handled and acknowledged (each
/// refused and counted: no enrolled device signed these). (The
/// stall this guards against, acks dropped when the queue was full, showed
/// with 10,000 drift summaries in `scripts/bench/telemetry.py --broker`;
/// these lighter health messages did not reproduce it before the fix.)
#[test]
fn ingest_keeps_up_with_a_burst_over_mqtt_5() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start_or_skip(dir.path()) else {
        return;
    };
    let tenant = unique("burst");
    let server = start_server(
        dir.path(),
        &tenant,
        &["--mqtt-url", &format!("mqtt://127.0.0.1:{}", broker.port)],
    );
    wait_for("the ingest's MQTT 5 session", || {
        (!broker.ingest_connections().is_empty()).then_some(())
    });
    const N: usize = 3000;
    let url = ferry_protocol::telemetry::BrokerUrl {
        host: "127.0.0.1".into(),
        port: broker.port,
        username: None,
        password: None,
        tls: false,
    };
    // One publisher, every message queued at once: the broker forwards
    // them to the ingest as fast as it acknowledges.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut o = ferry_mqtt::Options::new("burst-publisher", url);
        o.request_capacity = N + 16;
        let (client, mut conn) = ferry_mqtt::connect(&o, ferry_mqtt::Protocol::V5);
        for i in 0..N {
            let health = serde_json::json!({
                "schema": 1, "tenant": tenant, "device": format!("d{i}"),
                "status": "online", "at_ms": 1, "agent_version": "0",
            });
            client
                .try_publish(
                    format!("ferry/v1/{tenant}/d{i}/health"),
                    health.to_string(),
                    false,
                )
                .unwrap();
        }
        let mut acked = 0;
        while acked < N {
            match tokio::time::timeout(Duration::from_secs(60), conn.poll()).await {
                Ok(Ok(ferry_mqtt::Event::PubAck { refused: None, .. })) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("publisher: {other:?} after {acked} acks"),
            }
        }
    });
    // None of these devices is enrolled and none signed: every message is
    // handled (refused, counted) and acknowledged, none stored.
    let n = wait_for("every message handled by the ingest", || {
        let n = metric(server.http, "ferry_telemetry_unauthenticated_total");
        (n >= N as u64).then_some(n)
    });
    assert_eq!(n, N as u64);
    let (_, d) = call(server.http, "GET", "/api/v1/devices", None);
    assert_eq!(d["devices"].as_array().map_or(0, |a| a.len()), 0, "{d}");
}

/// A counter from the server's `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (s, b) = Conn::open(addr).request("GET", "/metrics", None, b"");
    assert_eq!(s, 200);
    String::from_utf8_lossy(&b)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}
