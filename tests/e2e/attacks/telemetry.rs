//! Attacks on the telemetry surface (see docs/security.md): spoofed
//! windows from clients that are not the device, pre-published sequence
//! numbers, reading and writing other devices' topics, and a device
//! flooding its tenant's audit chain with reports. Real `ferry server`
//! and `ferry-agent` processes, the embedded broker and a private
//! Mosquitto started with the config shipped in `deploy/mosquitto/`.
#![allow(clippy::unwrap_used)]

use ferry_e2e::fleet::{
    bin, http_raw, ok, spawn_until, wait_for, Agent, Keys, Proc, Server, ADMIN,
};
use ferry_protocol::telemetry::BrokerUrl;
use serde_json::{json, Value};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// With `CI=true` a missing tool fails the test; elsewhere it is skipped.
pub(super) fn missing(what: &str) -> bool {
    ferry_e2e::skip_or_fail(what);
    true
}

pub(super) fn mosquitto_bin() -> Option<&'static str> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ferry server` with the fleet on and `mqtt` telemetry flags; also
/// returns the broker URL it reports.
fn start_server(data: &Path, mqtt: &[&str], env: &[(&str, &str)]) -> (Server, String) {
    let mut cmd = Command::new(bin("ferry"));
    cmd.args([
        "server",
        "--http",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
        "--data",
    ])
    .arg(data)
    .args(mqtt)
    .env("FERRY_BOOTSTRAP_TOKEN", ADMIN)
    .env_remove("FAILPOINTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (proc, found) = spawn_until(
        cmd,
        &[
            "ferry server listening on ",
            "ferry fleet listening on quic://",
            "ferry server MQTT telemetry: ",
        ],
    );
    let broker = found[2].split(" at ").nth(1).unwrap_or("").to_string();
    (
        Server {
            proc,
            url: found[0].split_whitespace().next().unwrap().to_string(),
            quic: found[1].clone(),
            data: data.to_path_buf(),
        },
        broker,
    )
}

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_string()
}

fn get(server: &Server, path: &str) -> String {
    let (status, body) = http_raw(&addr(server), "GET", path, ADMIN, "");
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A counter from the server's `/metrics`.
fn metric(server: &Server, name: &str) -> u64 {
    get(server, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// The drift windows the control plane stored for `model`.
fn windows(server: &Server, model: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&get(server, &format!("/api/v1/models/{model}/drift"))).unwrap();
    v["windows"].as_array().unwrap().clone()
}

/// Trust root and the `fraud` model pushed, one enrollment token with
/// `uses`; the CA file the agents enroll with.
fn prepare(server: &Server, keys: &Keys, dir: &Path, uses: u32) -> (PathBuf, String) {
    ok(&mut server.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    let bundle = keys.bundle("fraud", 1, "pub", &[]);
    ok(&mut server.cli(&["model", "push", bundle.to_str().unwrap()]));
    let ca = dir.join("fleet-ca.pem");
    let tok = server.json(&[
        "device",
        "token",
        "create",
        "--uses",
        &uses.to_string(),
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    (ca, tok["token"].as_str().unwrap().to_string())
}

/// An enrolled agent serving the side-loaded `fraud` bundle, closing a
/// drift window after every row.
fn serving_agent(keys: &Keys, data: &Path, id: &str) -> Agent {
    let bundle = keys.path("fraud-1-pub.ferry");
    Agent::start(
        data,
        id,
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--window-rows",
            "1",
            "--window-secs",
            "0",
        ],
    )
}

/// A forged drift window claiming to be `device`'s, marked by its rows.
fn forged(tenant: &str, device: &str, seq: u64, sig: Option<&str>) -> Vec<u8> {
    let mut w = json!({
        "schema": 1, "tenant": tenant, "device": device, "seq": seq,
        "model": "fraud", "version": 1, "variant": "champion",
        "window_start_ms": 1, "window_end_ms": 2, "closed_by": "rows",
        "rows": 777_777, "features": [], "psi": [], "missing": [], "out_of_range": [],
        "predictions": {"output": "label", "classes": {"1": 777_777}},
        "latency_us": [0,0,0,0,0,0,0,0,0,0,0,0], "latency_p50_us": 1, "latency_p99_us": 1,
        "errors": 777_777, "requests": 777_777, "labelled": 0, "correct": 0,
    });
    if let Some(s) = sig {
        w["sig"] = json!(s);
    }
    serde_json::to_vec(&w).unwrap()
}

/// One MQTT client run to completion: connects with `tls`, subscribes to
/// `subscribe`, publishes `publish` (QoS 1) one after the other, calling
/// `after_ack(i)` when publish `i` is acknowledged, and returns each
/// PUBACK's refusal (MQTT 5) and the topics of the messages received before
/// the last PUBACK, or the connection error. The broker sends a client its
/// packets in order, so a message routed to it before a publish was
/// acknowledged arrives before that PUBACK.
fn mqtt_session(
    url: BrokerUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    subscribe: &[String],
    publish: Vec<(String, Vec<u8>)>,
    mut after_ack: impl FnMut(usize),
) -> Result<(Vec<Option<String>>, Vec<String>), String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut o = ferry_mqtt::Options::new(format!("attacker-{}", std::process::id()), url);
        o.tls = tls;
        o.keep_alive = Duration::from_secs(300);
        o.request_capacity = publish.len() + subscribe.len() + 16;
        // The embedded broker (plain mqtt://) speaks 3.1.1 only.
        let protocol = if o.url.tls {
            ferry_mqtt::Protocol::V5
        } else {
            ferry_mqtt::Protocol::V311
        };
        let (client, mut conn) = ferry_mqtt::connect(&o, protocol);
        let mut acks = Vec::new();
        let mut received = Vec::new();
        let mut queue = publish.into_iter();
        let mut subscribed = false;
        loop {
            let ev = tokio::time::timeout(WAIT, conn.poll())
                .await
                .map_err(|_| "no answer from the broker".to_string())?
                .map_err(|e| e.to_string())?;
            let next = match ev {
                ferry_mqtt::Event::Connected { .. } if !subscribed => {
                    subscribed = true;
                    for s in subscribe {
                        client.try_subscribe(s).unwrap();
                    }
                    true
                }
                ferry_mqtt::Event::PubAck { refused, .. } => {
                    acks.push(refused);
                    after_ack(acks.len() - 1);
                    true
                }
                ferry_mqtt::Event::Message(m) => {
                    received.push(m.topic.clone());
                    false
                }
                _ => false,
            };
            if next {
                match queue.next() {
                    Some((t, p)) => client.try_publish(t, p, false).unwrap(),
                    None => return Ok((acks, received)),
                }
            }
        }
    })
}

fn plain(url: &str) -> BrokerUrl {
    url.parse().unwrap()
}

#[test]
fn spoofed_and_pre_published_windows_are_refused_at_ingest_on_the_embedded_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let (server, broker) = start_server(
        &tmp.path().join("server"),
        &["--mqtt-listen", "127.0.0.1:0"],
        &[],
    );
    assert!(broker.starts_with("mqtt://127.0.0.1:"), "{broker}");
    let (ca, token) = prepare(&server, &keys, tmp.path(), 1);
    let data = tmp.path().join("agent");
    let id = Agent::enroll(&server, &token, &ca, &data, &keys.path("v1.root"));

    // Before the device says anything, an attacker on the broker publishes
    // windows in its name for its next sequence numbers: unsigned, and
    // with a signature made by a key that is not the device's.
    let topic = format!("ferry/v1/default/{id}/drift");
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let mut spoofs: Vec<(String, Vec<u8>)> = (1..=20)
        .map(|seq| (topic.clone(), forged("default", &id, seq, None)))
        .collect();
    for seq in 21..=25 {
        let body = forged("default", &id, seq, None);
        let signed = ferry_protocol::telemetry::sign_payload("drift", &body, &stranger).unwrap();
        spoofs.push((topic.clone(), signed));
    }
    let n = spoofs.len() as u64;
    let (acks, _) = mqtt_session(plain(&broker), None, &[], spoofs, |_| {}).unwrap();
    assert_eq!(acks.len() as u64, n, "the embedded broker takes anything");
    wait_for("the spoofs refused at ingest", WAIT, || {
        (metric(&server, "ferry_telemetry_unauthenticated_total") >= n).then_some(())
    });
    assert!(
        windows(&server, "fraud").is_empty(),
        "a spoofed window was stored"
    );

    // The real device's windows, numbered from 1 like the spoofs, are stored.
    let agent = serving_agent(&keys, &data, &id);
    for _ in 0..3 {
        assert_eq!(agent.infer("fraud").0, 200);
    }
    let w = wait_for("the device's three windows", WAIT, || {
        let w = windows(&server, "fraud");
        (w.len() >= 3).then_some(w)
    });
    assert_eq!(w.len(), 3, "{w:?}");
    for x in &w {
        assert_eq!(x["device"], id.as_str());
        assert_eq!(x["rows"], 1, "a spoofed window got in: {x}");
        assert!(
            x["seq"].as_u64().unwrap() <= 25,
            "seq {x}: the spoofs covered it"
        );
    }

    // Audited once per minute per source, not once per message.
    let audit = server.audit("telemetry.refuse");
    assert!(
        !audit.is_empty() && audit.len() <= 2,
        "{} records for {n} refusals: {audit:?}",
        audit.len()
    );
    assert!(
        audit[0]["target"].as_str().unwrap().contains(&id),
        "{audit:?}"
    );
    drop(agent);
}

/// A private Mosquitto with the shipped `deploy/mosquitto` config, its
/// paths and port rewritten, the certificates from `ferry broker certs`.
pub(super) struct Mosquitto {
    _proc: Proc,
    pub(super) port: u16,
    pub(super) certs: PathBuf,
}

pub(super) fn start_mosquitto(dir: &Path, server_data: &Path) -> Option<Mosquitto> {
    let Some(bin_path) = mosquitto_bin() else {
        missing("the mosquitto broker binary (Debian package mosquitto)");
        return None;
    };
    let certs = dir.join("mq");
    ok(Command::new(bin("ferry"))
        .args(["broker", "certs", "--data"])
        .arg(server_data)
        .arg("--out")
        .arg(&certs));
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
    let port = free_port();
    let conf = std::fs::read_to_string(shipped.join("mosquitto.conf"))
        .unwrap()
        .replace(
            "/etc/mosquitto/ferry/acl",
            &dir.join("acl").display().to_string(),
        )
        .replace("/etc/mosquitto/ferry", &certs.display().to_string())
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"));
    assert!(conf.contains("require_certificate true"));
    assert!(conf.contains("use_identity_as_username true"));
    std::fs::copy(shipped.join("acl"), dir.join("acl")).unwrap();
    // Started as root, Mosquitto drops to the `mosquitto` user, which
    // cannot read the test's private directory.
    let me = Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "root".into());
    let path = dir.join("mosquitto.conf");
    std::fs::write(
        &path,
        format!(
            "user {me}\nlog_dest file {}\n{conf}",
            dir.join("mosquitto.log").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin_path)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc { child };
    wait_for("mosquitto to listen", WAIT, || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    ferry_e2e::used_service("a private Mosquitto with deploy/mosquitto's config");
    Some(Mosquitto {
        _proc: proc,
        port,
        certs,
    })
}

/// TLS to the private Mosquitto as an enrolled device (its certificate
/// from `data`), or with no client certificate.
fn device_tls(m: &Mosquitto, data: Option<&Path>) -> Arc<rustls::ClientConfig> {
    let identity = data.map(|d| ferry_mqtt::ClientIdentity {
        cert_der: std::fs::read(d.join("fleet/device.der")).unwrap(),
        key_pkcs8_der: std::fs::read(d.join("fleet/device.key")).unwrap(),
    });
    ferry_mqtt::tls_client_config(Some(&m.certs.join("ca.pem")), &[], identity).unwrap()
}

#[test]
fn mosquitto_with_the_shipped_config_binds_topics_to_device_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server_data = tmp.path().join("server");
    let Some(m) = start_mosquitto(tmp.path(), &server_data) else {
        return;
    };
    let url = format!("mqtts://127.0.0.1:{}", m.port);
    let c = |n: &str| m.certs.join(n).display().to_string();
    let (server, broker) = start_server(
        &server_data,
        &[
            "--mqtt-url",
            &url,
            "--mqtt-ca",
            &c("ca.pem"),
            "--mqtt-cert",
            &c("ferry-control.pem"),
            "--mqtt-key",
            &c("ferry-control.key"),
        ],
        &[],
    );
    assert_eq!(broker, url);
    let (ca, token) = prepare(&server, &keys, tmp.path(), 2);
    let data_a = tmp.path().join("agent-a");
    let id_a = Agent::enroll(&server, &token, &ca, &data_a, &keys.path("v1.root"));
    let data_b = tmp.path().join("agent-b");
    let id_b = Agent::enroll(&server, &token, &ca, &data_b, &keys.path("v1.root"));

    // Device A publishes over mqtts:// with its enrollment certificate;
    // the control plane stores its signed window.
    let agent = serving_agent(&keys, &data_a, &id_a);
    assert_eq!(agent.infer("fraud").0, 200);
    wait_for("device A's window through Mosquitto", WAIT, || {
        (!windows(&server, "fraud").is_empty()).then_some(())
    });

    // Without a client certificate, no connection at all.
    let r = mqtt_session(plain(&url), Some(device_tls(&m, None)), &[], vec![], |_| {});
    assert!(r.is_err(), "connected without a certificate: {r:?}");

    // Device B (enrolled, same tenant) subscribes to every tenant's
    // telemetry (A's retained health is there), publishes under its own id,
    // waits while A publishes a window the control plane stores, then writes
    // A's topic, A's id under another tenant, and its own id under another
    // tenant.
    let mut stored = 0;
    let (acks, received) = mqtt_session(
        plain(&url),
        Some(device_tls(&m, Some(&data_b))),
        &[
            "ferry/v1/#".to_string(),
            "ferry/v1/default/+/drift".to_string(),
        ],
        vec![
            (
                format!("ferry/v1/default/{id_b}/events"),
                b"{\"probe\":1}".to_vec(),
            ),
            (
                format!("ferry/v1/default/{id_a}/drift"),
                forged("default", &id_a, 1000, None),
            ),
            (
                format!("ferry/v1/othertenant/{id_a}/drift"),
                forged("othertenant", &id_a, 1000, None),
            ),
            (
                format!("ferry/v1/othertenant/{id_b}/drift"),
                forged("othertenant", &id_b, 1, None),
            ),
        ],
        |i| {
            if i == 0 {
                let before = windows(&server, "fraud").len();
                assert_eq!(agent.infer("fraud").0, 200);
                stored = wait_for("A's window while B listens", WAIT, || {
                    let n = windows(&server, "fraud").len();
                    (n > before).then_some(n)
                });
            }
        },
    )
    .unwrap();
    assert!(stored >= 2);
    assert_eq!(acks.len(), 4);
    assert_eq!(acks[0], None, "B may write its own topic");
    assert!(acks[1].is_some(), "B wrote A's topic");
    assert!(acks[2].is_some(), "B wrote A's id under another tenant");
    // Nothing of A's (retained health, live window) reached B.
    assert!(received.is_empty(), "B read {received:?}");
    // The broker lets B write its own id under any tenant name; ingest
    // refuses that (no such device there), and B's unsigned probe: counted.
    assert_eq!(acks[3], None);
    wait_for("B's messages refused at ingest", WAIT, || {
        (metric(&server, "ferry_telemetry_unauthenticated_total") >= 2).then_some(())
    });
    let w = windows(&server, "fraud");
    assert!(
        w.iter()
            .all(|x| x["device"] == id_a.as_str() && x["rows"] == 1),
        "{w:?}"
    );
    let audit = server.audit("telemetry.refuse");
    assert!(!audit.is_empty(), "no telemetry.refuse record");
    drop(agent);
}

#[test]
fn a_device_cannot_flood_its_tenants_audit_chain_with_reports() {
    use ferry_protocol::frames::{ActivationOutcome, AgentFrame};
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let (server, _) = start_server(&tmp.path().join("server"), &["--no-mqtt"], &[]);
    let (ca, token) = prepare(&server, &keys, tmp.path(), 1);
    let data = tmp.path().join("agent");
    let id = Agent::enroll(&server, &token, &ca, &data, &keys.path("v1.root"));
    // A compromised device: reports for models it was never assigned and
    // desired-state refusals, each different, with long texts.
    let frames: Vec<AgentFrame> = (0..100u64)
        .map(|i| AgentFrame::Report {
            model: format!("junk{i}").parse().unwrap(),
            version: i,
            outcome: ActivationOutcome::Refused {
                code: "x".into(),
                reason: "y".repeat(5_000),
            },
        })
        .chain((0..100u64).map(|i| AgentFrame::DesiredStateRefused {
            sequence: Some(i),
            code: "x".into(),
            reason: "z".repeat(5_000),
        }))
        .collect();
    let n = frames.len();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sent = rt
        .block_on(ferry_agent::fleet::sim::probe_control(
            &data,
            frames,
            || !server.audit("device.report_flood").is_empty(),
        ))
        .unwrap();
    assert_eq!(sent, n);
    let floods = server.audit("device.report_flood");
    // One record per minute of flood (two if the minute turned meanwhile).
    assert!((1..=2).contains(&floods.len()), "{floods:?}");
    let reports = server.audit("device.activate");
    let refusals = server.audit("device.desired_state");
    assert!(
        reports.len() + refusals.len() <= 2 * 30,
        "{} + {} records from one device",
        reports.len(),
        refusals.len()
    );
    for r in reports.iter().chain(&refusals) {
        assert!(r["detail"].as_str().unwrap().len() <= 1100, "{r}");
        assert_eq!(
            r["target"].as_str().map(|t| t.contains("junk")),
            r["action"].as_str().map(|a| a == "device.activate"),
            "{r}"
        );
    }
    // None of the junk models got a row: the device is assigned none.
    let dev = server.json(&["device", "show", &id]);
    assert!(!dev.to_string().contains("junk"), "{dev}");
}
