//! The operator round trip of README "On a real network", command by
//! command: the control plane reached as `cp.example` (on 127.0.0.2, not
//! localhost), the REST API over TLS with a certificate from `ferry broker
//! certs`, telemetry through a Mosquitto running the shipped config (device
//! certificates, per-device topics), a root-pinned enrollment, and a
//! trust-root rotation that reaches the device without re-enrollment.
//!
//! The name resolves through `--resolve`/`FERRY_RESOLVE` for the CLI and
//! `--server-name` for the agent (no /etc/hosts), and every name check
//! stays on: a client that dials the bare address is refused.
#![allow(clippy::unwrap_used)]

use super::telemetry::start_mosquitto;
use ferry_e2e::fleet::{
    bin, device_id_in, ok, run, spawn_until, wait_for, Agent, Keys, Proc, ADMIN,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NAME: &str = "cp.example";
const ADDR: &str = "127.0.0.2";
const LONG: Duration = Duration::from_secs(180);

/// `ferry server` as the README starts it, and the CLI as an operator
/// laptop would run it (its own config directory, `ferry login` once).
struct ControlPlane {
    _proc: Proc,
    url: String,
    quic: String,
    config: PathBuf,
    ca: PathBuf,
}

impl ControlPlane {
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("ferry"));
        c.args(args)
            .env("FERRY_CONFIG_DIR", &self.config)
            .env("FERRY_RESOLVE", format!("{NAME}={ADDR}"))
            .env_remove("FERRY_SERVER")
            .env_remove("FERRY_TOKEN")
            .env_remove("FERRY_CA");
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&ok(&mut self.cli(&a))).unwrap()
    }

    /// A GET through the library client the CLI uses, with the same CA and
    /// name resolution (for resources the CLI has no command for).
    fn get(&self, path: &str) -> Value {
        let transport = ferry::client::Transport {
            ca: Some(self.ca.clone()),
            insecure_http: false,
            resolve: vec![(NAME.to_string(), ADDR.parse().unwrap())],
        };
        let client = ferry::client::Client::connect(&self.url, ADMIN, &transport).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(client.get(path))
            .unwrap()
    }

    fn device(&self, id: &str) -> Value {
        let v = self.json(&["device", "list"]);
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn state(&self, dep: &str, device: &str) -> Option<String> {
        let v = self.json(&["deployments", dep]);
        v["devices"].as_array().unwrap().iter().find_map(|d| {
            (d["device"] == device).then(|| d["state"].as_str().unwrap_or("").to_string())
        })
    }

    fn deploy(&self, model: &str, version: &str, device: &str) -> String {
        let dep = ok(&mut self.cli(&[
            "deploy",
            model,
            "--version",
            version,
            "--selector",
            "site=berlin",
        ]))
        .trim()
        .to_string();
        let state = wait_for(&format!("{device} settled in {dep}"), LONG, || {
            self.state(&dep, device)
                .filter(|s| s == "active" || s == "failed")
        });
        assert_eq!(state, "active", "{}", self.json(&["deployments", &dep]));
        dep
    }
}

/// `None` where Mosquitto is not installed (a failure under `CI=true`).
fn start(dir: &Path) -> Option<(ControlPlane, super::telemetry::Mosquitto)> {
    let server_data = dir.join("server");
    std::fs::create_dir_all(dir.join("mosquitto")).unwrap();
    let mq = start_mosquitto(&dir.join("mosquitto"), &server_data)?;
    // The API's certificate, from the same fleet CA, for the name.
    let tls = dir.join("tls");
    ok(Command::new(bin("ferry"))
        .args(["broker", "certs", "--data"])
        .arg(&server_data)
        .arg("--out")
        .arg(&tls)
        .args(["--host", NAME]));
    let c = |n: &str| mq.certs.join(n).display().to_string();
    let mut cmd = Command::new(bin("ferry"));
    cmd.args(["server", "--data"])
        .arg(&server_data)
        .args(["--http", &format!("{ADDR}:0"), "--tls-cert"])
        .arg(tls.join("server.pem"))
        .arg("--tls-key")
        .arg(tls.join("server.key"))
        .args(["--quic", &format!("{ADDR}:0"), "--quic-name", NAME])
        .args(["--mqtt-url", &format!("mqtts://127.0.0.1:{}", mq.port)])
        .args(["--mqtt-ca", &c("ca.pem")])
        .args(["--mqtt-cert", &c("ferry-control.pem")])
        .args(["--mqtt-key", &c("ferry-control.key")])
        .env("FERRY_BOOTSTRAP_TOKEN", ADMIN)
        .env_remove("FAILPOINTS");
    let (proc, found) = spawn_until(
        cmd,
        &[
            "ferry server listening on ",
            "ferry fleet listening on quic://",
        ],
    );
    let listening = found[0].split_whitespace().next().unwrap().to_string();
    let port = listening.rsplit(':').next().unwrap();
    assert_eq!(listening, format!("https://{ADDR}:{port}"));
    let quic_port = found[1].rsplit(':').next().unwrap();
    let cp = ControlPlane {
        _proc: proc,
        url: format!("https://{NAME}:{port}"),
        quic: format!("{ADDR}:{quic_port}"),
        config: dir.join("laptop"),
        ca: tls.join("ca.pem"),
    };
    let ca = cp.ca.clone();
    ok(&mut cp.cli(&[
        "login",
        "--server",
        &cp.url,
        "--ca",
        ca.to_str().unwrap(),
        "--token",
        ADMIN,
    ]));
    // The name check is on: the bare address is not in the certificate.
    let bare = cp.url.replace(NAME, ADDR);
    let out = run(&mut cp.cli(&[
        "model",
        "list",
        "--server",
        &bare,
        "--ca",
        ca.to_str().unwrap(),
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
    Some((cp, mq))
}

#[test]
fn the_readme_round_trip_works_by_name_over_tls_with_a_rotated_root() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let Some((cp, _mq)) = start(tmp.path()) else {
        return;
    };

    // Operator: root and a bundle signed by publisher A (`pub`).
    ok(&mut cp.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    let a1 = keys.bundle("fraud", 1, "pub", &[]);
    ok(&mut cp.cli(&["model", "push", a1.to_str().unwrap()]));
    let fleet_ca = tmp.path().join("fleet-ca.pem");
    let tok = cp.json(&[
        "device",
        "token",
        "create",
        "--labels",
        "site=berlin",
        "--uses",
        "10",
        "--ca-out",
        fleet_ca.to_str().unwrap(),
    ]);
    let fingerprint = tok["root_fingerprint"].as_str().unwrap().to_string();

    // Device: the name checked in full, the root pinned by fingerprint.
    let data = tmp.path().join("device");
    let out = ok(Command::new(bin("ferry-agent"))
        .args([
            "enroll",
            "--server",
            &cp.quic,
            "--server-name",
            NAME,
            "--token",
        ])
        .arg(tok["token"].as_str().unwrap())
        .arg("--ca")
        .arg(&fleet_ca)
        .args(["--root-fingerprint", &fingerprint, "--hostname", "berlin-1"])
        .arg("--data")
        .arg(&data));
    let id = device_id_in(&out);
    let agent = Agent::start(&data, &id, &["--window-rows", "1", "--window-secs", "0"]);
    assert!(
        data.join("admin.sock").exists(),
        "the admin API is on its socket"
    );
    cp.deploy("fraud", "1", &id);
    wait_for("fraud v1 serving on the device", LONG, || {
        (agent.infer("fraud").1["model_version"] == "1").then_some(())
    });

    // Telemetry came back through Mosquitto under the device's certificate
    // and signature: the control plane stored a drift window from it.
    let drift = wait_for("a drift window through Mosquitto", LONG, || {
        assert_eq!(agent.infer("fraud").0, 200);
        let v = cp.get("/models/fraud/drift");
        let windows = v["windows"].as_array().cloned().unwrap_or_default();
        windows.into_iter().find(|w| w["device"] == id.as_str())
    });
    assert!(drift["rows"].as_u64().unwrap() >= 1, "{drift}");

    // Rotate: add publisher B (`pub2`), revoke A, signed by the old root's
    // key. The device follows without re-enrolling.
    let revoke = ferry::keyfile::read_public_key(&keys.path("keys/pub.pub"))
        .unwrap()
        .id()
        .to_hex();
    let v2 = keys.path("trust-v2.root");
    ok(Command::new(bin("ferry")).args([
        "trust",
        "init",
        "--root-key",
        keys.path("keys/root.key").to_str().unwrap(),
        "--threshold",
        "1",
        "--publisher",
        keys.path("keys/pub2.pub").to_str().unwrap(),
        "--revoke",
        &revoke,
        "--version",
        "2",
        "--tenant",
        "default",
        "--out",
        v2.to_str().unwrap(),
    ]));
    ok(&mut cp.cli(&["trust", "push", v2.to_str().unwrap()]));
    wait_for("trust_root_version 2 on the device", LONG, || {
        (cp.device(&id)["trust_root_version"] == 2).then_some(())
    });
    let b2 = keys.bundle("fraud", 2, "pub2", &[]);
    ok(&mut cp.cli(&["model", "push", b2.to_str().unwrap()]));
    cp.deploy("fraud", "2", &id);
    wait_for("B's fraud v2 serving", LONG, || {
        (agent.infer("fraud").1["model_version"] == "2").then_some(())
    });
    assert_eq!(
        cp.json(&["device", "list"])["devices"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "no re-enrollment"
    );
}
