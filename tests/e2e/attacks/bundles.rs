//! Attacks on the bundles surface (see docs/security.md): bundle serving
//! memory (H4), download slots held by stalled readers (M4), deleting what
//! a live deployment uses (M7), unauthenticated QUIC (L9) and progress
//! arithmetic (L10). Each against a real `ferry server` process.
#![allow(clippy::unwrap_used)]

use ferry_agent::fleet::sim::{hold_unenrolled, DeviceLink};
use ferry_agent::fleet::{enroll, EnrollOptions, FleetError, RootPin};
use ferry_e2e::fleet::{http_raw, ok, wait_for, Agent, Keys, Server, ADMIN};
use ferry_protocol::frames::AgentFrame;
use ferry_protocol::keys::Digest;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `HOST:PORT` of the server's REST API.
fn api_addr(server: &Server) -> String {
    server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// A server with the default trust root pushed and `bundles` registered.
fn server_with(tmp: &Path, keys: &Keys, env: &[(&str, &str)], bundles: &[&Path]) -> Server {
    let server = Server::start(&tmp.join("server"), env);
    ok(&mut server.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    for b in bundles {
        ok(&mut server.cli(&["model", "push", b.to_str().unwrap()]));
    }
    server
}

/// An enrollment token for `uses` devices labelled `site=berlin`, and the
/// CA file it wrote.
fn token(server: &Server, tmp: &Path, uses: u32) -> (String, PathBuf) {
    let ca = tmp.join("ca.pem");
    let tok = server.json(&[
        "device",
        "token",
        "create",
        "--labels",
        "site=berlin",
        "--uses",
        &uses.to_string(),
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    (tok["token"].as_str().unwrap().to_string(), ca)
}

/// Deploys `model` v`version` to `site=berlin`: (deployment id, digest).
fn deploy(server: &Server, model: &str, version: &str) -> (String, Digest) {
    let v = server.json(&[
        "deploy",
        model,
        "--version",
        version,
        "--selector",
        "site=berlin",
    ]);
    let digest = Digest::from_hex(v["digest"].as_str().unwrap()).unwrap();
    (v["id"].as_str().unwrap().to_string(), digest)
}

fn state_of(server: &Server, dep: &str, device: &str) -> String {
    let v = server.deployment(dep);
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .and_then(|d| d["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn audit_with(server: &Server, action: &str, outcome: &str, needle: &str) -> Option<Value> {
    server
        .audit(action)
        .into_iter()
        .find(|r| r["outcome"] == outcome && r["detail"].as_str().unwrap_or("").contains(needle))
}

/// Admin view of the fleet's download slots: (in flight, peak, limit).
fn slots(server: &Server) -> (u64, u64, u64) {
    let v = server.json(&["device", "list"]);
    let d = &v["downloads"];
    (
        d["in_flight"].as_u64().unwrap(),
        d["peak"].as_u64().unwrap(),
        d["limit"].as_u64().unwrap(),
    )
}

// ------------------------------------------------------------------ M7

#[test]
fn deleting_or_archiving_a_version_a_live_deployment_uses_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let v1 = keys.bundle("fraud", 1, "pub", &[]);
    let server = server_with(tmp.path(), &keys, &[], &[&v1]);
    let (dep, _) = deploy(&server, "fraud", "1");
    let addr = api_addr(&server);

    // The version, the whole model, and archiving: each a 409 that names
    // the deployment.
    for (method, path) in [
        ("DELETE", "/api/v1/models/fraud/versions/1"),
        ("DELETE", "/api/v1/models/fraud"),
        ("POST", "/api/v1/models/fraud/versions/1/archive"),
    ] {
        let (status, body) = http_raw(&addr, method, path, ADMIN, "");
        assert_eq!(status, 409, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], "conflict", "{body}");
        assert!(v["error"].as_str().unwrap().contains(&dep), "{body}");
    }
    // Refused in the audit trail, with the deployment named.
    for action in ["version.delete", "model.delete", "version.archive"] {
        assert!(
            audit_with(&server, action, "refused", &dep).is_some(),
            "no refused {action} naming {dep}"
        );
    }
    // Nothing was collected: the bundle is whole and still served.
    let (status, _) = http_raw(
        &addr,
        "GET",
        "/api/v1/models/fraud/versions/1/bundle",
        ADMIN,
        "",
    );
    assert_eq!(status, 200);

    // Undeployed, it can go, and its artifacts with it.
    ok(&mut server.cli(&["undeploy", &dep]));
    let (status, body) = http_raw(
        &addr,
        "DELETE",
        "/api/v1/models/fraud/versions/1",
        ADMIN,
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !v["artifacts_removed"].as_array().unwrap().is_empty(),
        "{body}"
    );
}

// ------------------------------------------------------------------ M4

#[test]
fn a_device_that_stalls_its_fetches_cannot_hold_the_fleets_download_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let v1 = keys.bundle("fraud", 1, "pub", &[]);
    let server = server_with(
        tmp.path(),
        &keys,
        &[
            ("FERRY_FLEET_MAX_DOWNLOADS", "3"),
            ("FERRY_FLEET_DEVICE_DOWNLOADS", "2"),
            ("FERRY_FLEET_FETCH_IDLE_SECS", "8"),
        ],
        &[&v1],
    );
    let (tok, ca) = token(&server, tmp.path(), 2);
    let attacker_dir = tmp.path().join("attacker");
    let attacker = Agent::enroll(&server, &tok, &ca, &attacker_dir, &keys.path("v1.root"));
    let honest_dir = tmp.path().join("honest");
    let honest = Agent::enroll(&server, &tok, &ca, &honest_dir, &keys.path("v1.root"));
    let (dep, digest) = deploy(&server, "fraud", "1");

    // The attacker opens more fetch streams than the fleet has slots, with
    // a 1 KiB stream window, and never reads them.
    let rt = rt();
    let mut link = rt
        .block_on(DeviceLink::connect(&attacker_dir, Some(1024)))
        .unwrap();
    rt.block_on(link.stall_fetches(digest, 4)).unwrap();
    wait_for("the attacker's fetches to take slots", LONG, || {
        (slots(&server).0 == 2).then_some(())
    });
    // Stalled streams lose their slots after the idle timeout, audited.
    let stalled = wait_for("a stalled fetch released", LONG, || {
        audit_with(&server, "device.fetch", "refused", "stalled")
    });
    assert_eq!(stalled["actor"], format!("device {attacker}"), "{stalled}");
    assert!(
        stalled["detail"]
            .as_str()
            .unwrap()
            .contains("download slot was released"),
        "{stalled}"
    );
    // By now all four of its fetches reached the server: never more than
    // its two at once.
    let (_, peak, limit) = slots(&server);
    assert_eq!(limit, 3);
    assert_eq!(
        peak, 2,
        "one device held {peak} of the fleet's {limit} slots"
    );

    // A well-behaved device still gets its bundle while the attacker stalls.
    let _agent = Agent::start(&honest_dir, &honest, &[]);
    wait_for("the honest device active", LONG, || {
        (state_of(&server, &dep, &honest) == "active").then_some(())
    });
    // Every stalled fetch ends and frees its slot.
    wait_for("all slots free", LONG, || {
        (slots(&server).0 == 0).then_some(())
    });
    let stalls = server
        .audit("device.fetch")
        .into_iter()
        .filter(|r| r["detail"].as_str().unwrap_or("").contains("stalled"))
        .count();
    assert_eq!(stalls, 4, "each of the attacker's fetches stalled once");
    rt.block_on(link.close());
}

// ------------------------------------------------------------------ H4

/// An ONNX model of about `mb` MiB: the bc_logreg fixture with a large
/// `doc_string` (ModelProto field 6) appended, which protobuf merges in.
fn big_model(dir: &Path, mb: usize) -> PathBuf {
    let mut bytes = std::fs::read(ferry_e2e::fleet::fixtures().join("bc_logreg.onnx")).unwrap();
    let pad = mb << 20;
    bytes.push(0x32); // field 6, length-delimited
    let mut n = pad;
    while n >= 0x80 {
        bytes.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
    bytes.extend((0..pad).map(|i| b'a' + (i % 26) as u8));
    let path = dir.join("big.onnx");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn big_bundle(keys: &Keys, dir: &Path, mb: usize) -> PathBuf {
    let model = big_model(dir, mb);
    let out = dir.join("big.ferry");
    ok(ferry_e2e::fleet::ferry(&[
        "bundle",
        "build",
        model.to_str().unwrap(),
        "--name",
        "big",
        "--version",
        "1",
        "--sign-with",
        keys.path("keys/pub.key").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .env_remove("FAILPOINTS"));
    out
}

/// Peak resident memory of `pid`, bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Two devices fetch a 48 MiB bundle whole; the server serves it from the
/// artifact store in ranges and its peak memory grows by well under the
/// bundle's size (the old code assembled the whole file in memory).
fn fetch_a_large_bundle(env: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let big = big_bundle(&keys, tmp.path(), 48);
    let size = std::fs::metadata(&big).unwrap().len();
    let mut env = env.to_vec();
    env.push(("FERRY_FLEET_CACHE_MB", "4"));
    let server = server_with(tmp.path(), &keys, &env, &[]);
    ok(&mut server.cli(&["model", "push", big.to_str().unwrap()]));
    let (tok, ca) = token(&server, tmp.path(), 2);
    let dirs: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("dev{i}"))).collect();
    for d in &dirs {
        Agent::enroll(&server, &tok, &ca, d, &keys.path("v1.root"));
    }
    let (_, digest) = deploy(&server, "big", "1");
    // The peak so far (the upload included); what serving adds is measured.
    let pid = server.proc.child.id();
    let before = peak_rss(pid);
    let want = std::fs::read(&big).unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for d in &dirs {
            let link = DeviceLink::connect(d, None).await.unwrap();
            tasks.push(tokio::spawn(async move {
                let got = link.fetch_all(digest).await;
                link.close().await;
                got
            }));
        }
        for t in tasks {
            let got = t.await.unwrap().unwrap().unwrap();
            assert!(
                got == want,
                "the served bundle differs from the pushed file"
            );
        }
    });
    let grew = peak_rss(pid).saturating_sub(before);
    assert!(
        grew < size / 2,
        "serving a {size}-byte bundle to two devices raised the server's peak RSS by {grew} bytes"
    );
}

#[test]
fn a_large_bundle_is_served_in_ranges_from_local_disk() {
    fetch_a_large_bundle(&[]);
}

/// moto_server: FERRY_MOTO_SERVER, the repository's .venv, or beside
/// FERRY_PYTHON.
fn moto_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FERRY_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let mut candidates =
        vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server")];
    if let Ok(py) = std::env::var("FERRY_PYTHON") {
        if let Some(dir) = Path::new(&py).parent() {
            candidates.push(dir.join("moto_server"));
        }
    }
    candidates.into_iter().find(|p| p.exists())
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_large_bundle_is_served_in_ranges_from_s3() {
    let Some(bin) = moto_binary() else {
        ferry_e2e::skip_or_fail(
            "moto_server (FERRY_MOTO_SERVER, or FERRY_PYTHON's venv from scripts/python-env.sh)",
        );
        return;
    };
    ferry_e2e::used_service("S3 (moto_server)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _moto = Moto(
        Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}");
    // Creating the bucket is also the wait for moto to listen.
    wait_for("moto to create the bucket", LONG, || {
        let r = std::net::TcpStream::connect(&addr)
            .ok()
            .map(|_| http_raw(&addr, "PUT", "/ferry-test", "", "").0);
        r.filter(|s| *s == 200).map(|_| ())
    });
    let endpoint = format!("http://{addr}");
    fetch_a_large_bundle(&[
        ("FERRY_ARTIFACTS", "s3://ferry-test/ferry"),
        ("FERRY_S3_ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ]);
}

// ------------------------------------------------------------------ L9

#[test]
fn unauthenticated_connections_are_capped_and_enrollment_frames_are_small() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = server_with(
        tmp.path(),
        &keys,
        &[("FERRY_FLEET_MAX_ENROLLING", "2")],
        &[],
    );
    let (tok, ca) = token(&server, tmp.path(), 2);
    let rt = rt();
    // Four connections without a certificate that say nothing: two wait
    // for an Enroll frame (until the server's timeout), two are turned
    // away at once.
    let reasons = rt.block_on(hold_unenrolled(&server.quic, &ca, 4)).unwrap();
    let busy = reasons
        .iter()
        .filter(|r| r.contains("too many enrollments in progress"))
        .count();
    assert_eq!(busy, 2, "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("expected an enrollment stream"))
            .count(),
        2,
        "{reasons:?}"
    );

    // An Enroll frame far over the limit (a 100 KiB hostname) is refused
    // before it is buffered, and enrolls nothing.
    let opts = |dir: &str, hostname: String| EnrollOptions {
        server: server.quic.clone(),
        token: tok.clone(),
        ca: ca.clone(),
        data: tmp.path().join(dir),
        hostname: Some(hostname),
        server_name: None,
        pin: RootPin::File(keys.path("v1.root")),
    };
    let err = rt
        .block_on(enroll(&opts("huge", "h".repeat(100 * 1024))))
        .unwrap_err();
    match err {
        FleetError::Refused { code, reason } => {
            assert_eq!(code, "bad_request");
            assert!(reason.contains("8192-byte limit"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    let devices = server.json(&["device", "list"]);
    assert!(
        devices["devices"].as_array().unwrap().is_empty(),
        "{devices}"
    );
    // The cap is on connections in progress: a normal enrollment now works.
    rt.block_on(enroll(&opts("normal", "edge-1".into())))
        .unwrap();
}

// ------------------------------------------------------------------ L10

#[test]
fn a_progress_frame_with_huge_numbers_does_not_kill_the_control_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let v1 = keys.bundle("fraud", 1, "pub", &[]);
    let server = server_with(tmp.path(), &keys, &[], &[&v1]);
    let (tok, ca) = token(&server, tmp.path(), 1);
    let dir = tmp.path().join("dev");
    let device = Agent::enroll(&server, &tok, &ca, &dir, &keys.path("v1.root"));
    let (dep, digest) = deploy(&server, "fraud", "1");
    let rt = rt();
    let mut link = rt.block_on(DeviceLink::connect(&dir, None)).unwrap();
    // received * 100 overflowed u64: a panic in a debug build, a wrapped
    // percentage in release.
    rt.block_on(link.control(&[AgentFrame::Progress {
        manifest_digest: digest,
        received: u64::MAX,
        total: u64::MAX,
    }]))
    .unwrap();
    wait_for("the progress shown", LONG, || {
        (state_of(&server, &dep, &device) == "downloading 100%").then_some(())
    });
    rt.block_on(link.close());
}
