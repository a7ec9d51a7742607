//! Attacks on the admin surface (see docs/security.md): a local process or
//! a web page in the device's browser reaching the agent's inference port
//! (log ack, rollback, activation from a path, false feedback, DNS
//! rebinding, text/plain and form POSTs), the admin socket's mode, the
//! admin TCP port's token, and activation uploads streamed to disk.
//! Every test runs a real `ferry-agent` process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferry_e2e::admin::{admin_json, admin_request, raw_tcp};
use ferry_e2e::fleet::{bin, ok, spawn_until, wait_for, Keys, Proc};
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A side-loaded agent: `fraud` v1 then v2 as champion (so rollback has
/// somewhere to go).
struct Running {
    _proc: Proc,
    addr: String,
    data: PathBuf,
    sock: PathBuf,
    admin_tcp: Option<String>,
    keys: Keys,
    _dir: tempfile::TempDir,
}

fn start(extra: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let v1 = keys.bundle("fraud", 1, "pub", &[]);
    let v2 = keys.bundle("fraud", 2, "pub", &[]);
    let data = dir.path().join("agent");
    let mut cmd = Command::new(bin("ferry-agent"));
    cmd.args(["run", "--listen", "127.0.0.1:0", "--trust"])
        .arg(keys.path("v1.root"))
        .arg("--bundle")
        .arg(&v1)
        .arg("--bundle")
        .arg(&v2)
        .arg("--data")
        .arg(&data)
        .args(extra)
        .env("FERRY_LOG", "info");
    let mut wanted = vec![
        "ferry-agent listening on http://",
        "ferry-agent admin on unix:",
    ];
    let tcp = extra.contains(&"--admin-listen");
    if tcp {
        wanted.push("ferry-agent admin on http://");
    }
    let (proc, found) = spawn_until(cmd, &wanted);
    Running {
        _proc: proc,
        addr: found[0].clone(),
        data,
        sock: PathBuf::from(&found[1]),
        admin_tcp: tcp.then(|| found[2].clone()),
        keys,
        _dir: dir,
    }
}

fn infer_body(id: &str) -> String {
    let rows = ferry_e2e::fleet::reference_rows();
    serde_json::json!({
        "id": id,
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": rows[0]}]
    })
    .to_string()
}

impl Running {
    /// A request to the inference port as a local client sends it.
    fn local(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        raw_tcp(
            &self.addr,
            method,
            path,
            &[("host", &self.addr), ("content-type", "application/json")],
            body.as_bytes(),
        )
    }

    fn served_version(&self) -> Value {
        let (s, b) = self.local("GET", "/v2/models/fraud", "");
        assert_eq!(s, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        v["parameters"]["version"].clone()
    }

    fn log(&self) -> Vec<Value> {
        let (s, v) = admin_json(&self.sock, "GET", "/v1/log?from=0&limit=1000", "");
        assert_eq!(s, 200, "{v}");
        v["records"].as_array().unwrap().clone()
    }

    fn admin_cli(&self, args: &[&str]) -> String {
        ok(Command::new(bin("ferry-agent"))
            .arg("admin")
            .arg("--data")
            .arg(&self.data)
            .args(args))
    }
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// H2: the admin and log routes answer nowhere on the inference port, so a
/// local process or a page cannot delete the unshipped inference log, roll
/// the model back, or make the agent read a file by path.
#[test]
fn admin_and_log_routes_are_refused_on_the_inference_port() {
    let a = start(&[]);
    let (s, b) = a.local("POST", "/v2/models/fraud/infer", &infer_body("r1"));
    assert_eq!(s, 200, "{b}");
    assert_eq!(a.served_version(), 2);
    let before = a.log().len();
    assert!(before >= 1);

    for (method, path, body) in [
        ("POST", "/v1/log/ack", r#"{"upto": 18446744073709551615}"#),
        ("POST", "/v1/models/fraud/rollback", ""),
        ("POST", "/v1/models/activate?path=/etc/passwd", ""),
        ("POST", "/v1/models/activate?path=/dev/zero", ""),
        ("DELETE", "/v1/models/fraud/challenger", ""),
        ("GET", "/v1/log?from=0&limit=1000", ""),
        ("GET", "/v1/models", ""),
    ] {
        let (s, b) = a.local(method, path, body);
        assert_eq!(s, 404, "{method} {path} on the inference port: {s} {b}");
        assert_eq!(code(&b), "not_found", "{b}");
    }
    // Nothing happened: the log is whole, v2 still serves.
    assert_eq!(a.log().len(), before, "the inference log was trimmed");
    assert_eq!(a.served_version(), 2, "the model was rolled back");
}

/// H2: what a web page open on the device can send to the inference port
/// is refused: DNS rebinding (a foreign Host), a cross-origin request, and
/// the bodies a page can POST without a preflight (text/plain, form,
/// multipart, an untyped blob). No false label reaches the log.
#[test]
fn browser_requests_to_the_inference_port_are_refused() {
    let a = start(&[]);
    let (s, b) = a.local("POST", "/v2/models/fraud/infer", &infer_body("victim"));
    assert_eq!(s, 200, "{b}");
    let feedback = br#"{"id": "victim", "label": 0}"#;
    let port = a.addr.rsplit_once(':').unwrap().1;
    let rebound = format!("attacker.example:{port}");
    /// (what, headers, status, code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: [Case; 7] = [
        (
            "DNS rebinding: feedback with the attacker's Host",
            vec![("host", &rebound), ("content-type", "application/json")],
            421,
            "foreign_host",
        ),
        (
            "a text/plain POST",
            vec![
                ("host", &a.addr),
                ("content-type", "text/plain;charset=UTF-8"),
            ],
            415,
            "unsupported_content_type",
        ),
        (
            "a form POST",
            vec![
                ("host", &a.addr),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            415,
            "unsupported_content_type",
        ),
        (
            "a multipart POST",
            vec![
                ("host", &a.addr),
                ("content-type", "multipart/form-data; boundary=x"),
            ],
            415,
            "unsupported_content_type",
        ),
        (
            "a no-cors POST from another site",
            vec![
                ("host", &a.addr),
                ("origin", "https://attacker.example"),
                ("content-type", "text/plain"),
            ],
            403,
            "foreign_origin",
        ),
        (
            "an untyped blob POST from a browser",
            vec![("host", &a.addr), ("origin", "http://localhost")],
            415,
            "unsupported_content_type",
        ),
        (
            "an opaque origin",
            vec![
                ("host", &a.addr),
                ("origin", "null"),
                ("content-type", "application/json"),
            ],
            403,
            "foreign_origin",
        ),
    ];
    for (what, headers, status, want) in &cases {
        let (s, b) = raw_tcp(
            &a.addr,
            "POST",
            "/v2/models/fraud/feedback",
            headers,
            feedback,
        );
        assert_eq!((s, code(&b).as_str()), (*status, *want), "{what}: {b}");
    }
    // DNS rebinding reads nothing either.
    let (s, b) = raw_tcp(
        &a.addr,
        "GET",
        "/v2/models/fraud",
        &[("host", &rebound)],
        b"",
    );
    assert_eq!((s, code(&b).as_str()), (421, "foreign_host"), "{b}");
    // The same request as the device's own application sends it works.
    let (s, b) = a.local(
        "POST",
        "/v2/models/fraud/feedback",
        std::str::from_utf8(feedback).unwrap(),
    );
    assert_eq!(s, 200, "{b}");
    let labels = a
        .log()
        .iter()
        .filter(|r| r["entry"]["Feedback"]["request_id"] == "victim")
        .count();
    assert_eq!(labels, 1, "only the legitimate label was logged");
}

/// The device's own tooling still works, over the admin socket only, and
/// the socket is 0600.
#[test]
fn the_admin_socket_is_0600_and_serves_the_agent_cli() {
    let a = start(&[]);
    assert_eq!(a.sock, a.data.join("admin.sock"));
    let meta = std::fs::metadata(&a.sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let (s, b) = a.local("POST", "/v2/models/fraud/infer", &infer_body("r1"));
    assert_eq!(s, 200, "{b}");
    let models: Value = serde_json::from_str(&a.admin_cli(&["models"])).unwrap();
    assert_eq!(models["models"]["fraud"]["champion"], 2, "{models}");
    let stats: Value = serde_json::from_str(&a.admin_cli(&["log-stats"])).unwrap();
    assert!(stats["records"].as_u64().unwrap() >= 1, "{stats}");

    let r: Value = serde_json::from_str(&a.admin_cli(&["rollback", "fraud"])).unwrap();
    assert_eq!(r["version"], 1, "{r}");
    assert_eq!(a.served_version(), 1);

    let v3 = a.keys.bundle("fraud", 3, "pub", &[]);
    let r: Value = serde_json::from_str(&a.admin_cli(&["activate", v3.to_str().unwrap()])).unwrap();
    assert_eq!(r["version"], 3, "{r}");
    assert_eq!(a.served_version(), 3);

    let next = stats["next_seq"].as_u64().unwrap();
    let acked: Value =
        serde_json::from_str(&a.admin_cli(&["ack", &(next - 1).to_string()])).unwrap();
    assert!(acked["deleted"].as_u64().unwrap() >= 1, "{acked}");

    // A tampered upload is refused with its reason; v3 keeps serving.
    let mut tampered = std::fs::read(&v3).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let (s, b) = admin_request(
        &a.sock,
        "POST",
        "/v1/models/activate",
        "application/octet-stream",
        &tampered,
    );
    assert_eq!(s, 422, "{b}");
    assert_eq!(a.served_version(), 3);
}

/// The optional loopback admin port refuses a missing or wrong token, and
/// the token file it checks against is 0600.
#[test]
fn the_admin_tcp_port_refuses_a_missing_or_wrong_token() {
    let a = start(&["--admin-listen", "127.0.0.1:0"]);
    let tcp = a.admin_tcp.clone().unwrap();
    let token_path = a.data.join("admin.token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (s, b) = a.local("POST", "/v2/models/fraud/infer", &infer_body("r1"));
    assert_eq!(s, 200, "{b}");
    let before = a.log().len();
    let ack = br#"{"upto": 18446744073709551615}"#;
    let wrong = format!("Bearer {}", "0".repeat(token.trim().len()));
    for (auth, want) in [(None, "no_token"), (Some(wrong.as_str()), "bad_token")] {
        let mut h = vec![("host", tcp.as_str()), ("content-type", "application/json")];
        if let Some(v) = auth {
            h.push(("authorization", v));
        }
        let (s, b) = raw_tcp(&tcp, "POST", "/v1/log/ack", &h, ack);
        assert_eq!((s, code(&b).as_str()), (401, want), "{b}");
        let (s, b) = raw_tcp(&tcp, "POST", "/v1/models/fraud/rollback", &h, b"");
        assert_eq!((s, code(&b).as_str()), (401, want), "{b}");
    }
    assert_eq!(a.log().len(), before);
    assert_eq!(a.served_version(), 2);
    let right = format!("Bearer {}", token.trim());
    let (s, b) = raw_tcp(
        &tcp,
        "GET",
        "/v1/log/stats",
        &[("host", tcp.as_str()), ("authorization", right.as_str())],
        b"",
    );
    assert_eq!(s, 200, "{b}");

    // The admin port is never put on the network.
    let out = Command::new(bin("ferry-agent"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
        ])
        .arg("--trust")
        .arg(a.keys.path("v1.root"))
        .arg("--data")
        .arg(a.data.with_file_name("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}

/// M9: an activation upload goes to disk as it arrives, never into memory:
/// part of a large upload is already in `incoming/` before the request is
/// complete, and an upload cut short leaves nothing behind.
#[test]
fn activation_uploads_are_streamed_to_disk() {
    let a = start(&[]);
    let incoming = a.data.join("incoming");
    let uploads = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("upload-"))
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    let mut s = std::os::unix::net::UnixStream::connect(&a.sock).unwrap();
    let declared: u64 = 1 << 30;
    write!(
        s,
        "POST /v1/models/activate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: {declared}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..16 {
        s.write_all(&chunk).unwrap();
    }
    s.flush().unwrap();
    // 16 MiB of a 1 GiB body sent: they are on disk already.
    wait_for("the partial upload on disk", WAIT, || {
        (uploads(&incoming) >= 16 << 20).then_some(())
    });
    drop(s);
    wait_for("the cut upload removed", WAIT, || {
        (uploads(&incoming) == 0).then_some(())
    });
    assert_eq!(a.served_version(), 2);
}
