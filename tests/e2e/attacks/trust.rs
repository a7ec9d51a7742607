//! Attacks on the trust surface (see docs/security.md): a control plane
//! that hands devices a trust root of its own making (a forged row in
//! `trust_roots`), and a device that reaches the control plane under a
//! name its certificate does not carry.
#![allow(clippy::unwrap_used)]

use ferry_e2e::fleet::{device_id_in, ferry, ok, run, wait_for, Agent, Keys, Server};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn push(server: &Server, args: &[&str]) {
    ok(&mut server.cli(args));
}

fn token(server: &Server, ca: &Path, uses: &str) -> Value {
    server.json(&[
        "device",
        "token",
        "create",
        "--labels",
        "site=lab",
        "--uses",
        uses,
        "--ca-out",
        ca.to_str().unwrap(),
    ])
}

fn deploy(server: &Server, model: &str, version: &str) -> String {
    let v = server.json(&[
        "deploy",
        model,
        "--version",
        version,
        "--selector",
        "site=lab",
    ]);
    v["id"].as_str().unwrap().to_string()
}

fn device_state(server: &Server, dep: &str, device: &str, want: &str) -> String {
    wait_for(&format!("{device} {want} in {dep}"), LONG, || {
        let v = server.deployment(dep);
        v["devices"].as_array().unwrap().iter().find_map(|d| {
            (d["device"] == device && d["state"] == want)
                .then(|| d["detail"].as_str().unwrap_or_default().to_string())
        })
    })
}

fn refused_audit(server: &Server, action: &str, needle: &str) -> Value {
    wait_for(
        &format!("audit {action} refused with {needle}"),
        LONG,
        || {
            server.audit(action).into_iter().find(|r| {
                r["outcome"] == "refused" && r["detail"].as_str().unwrap_or("").contains(needle)
            })
        },
    )
}

/// An attacker's trust root for tenant `default` at `version`: its own
/// root key and publisher key (`evil_pub`), signed only by itself.
fn forged_root(keys: &Keys, version: &str) -> PathBuf {
    let dir = keys.path("evil");
    for name in ["evil_root", "evil_pub"] {
        if !dir.join(format!("{name}.key")).exists() {
            ok(&mut ferry(&[
                "key",
                "generate",
                "--out",
                dir.to_str().unwrap(),
                "--name",
                name,
            ]));
        }
    }
    let out = keys.path(&format!("forged-v{version}.root"));
    ok(&mut ferry(&[
        "trust",
        "init",
        "--root-key",
        dir.join("evil_root.key").to_str().unwrap(),
        "--publisher",
        dir.join("evil_pub.pub").to_str().unwrap(),
        "--tenant",
        "default",
        "--version",
        version,
        "--out",
        out.to_str().unwrap(),
    ]));
    out
}

/// Runs `sql` (with the forged root's hex as `$1` when given) on the
/// server's SQLite database, as someone with write access to it would.
fn sql(server: &Server, statement: &str, root: Option<&Path>) {
    let db = server.data.join("ferry.db");
    let url = format!("sqlite://{}", db.display());
    let hexed = root.map(|p| hex(&std::fs::read(p).unwrap()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let mut q = sqlx::query(statement);
        if let Some(h) = &hexed {
            q = q.bind(h.as_str());
        }
        q.execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    });
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn insert_root(server: &Server, version: i64, root: &Path) {
    sql(
        server,
        &format!(
            "INSERT INTO trust_roots (tenant, version, signed, created_at, created_by) \
             VALUES ('default', {version}, $1, 0, 'attacker')"
        ),
        Some(root),
    );
}

fn fingerprint_of(path: &Path) -> String {
    let signed =
        ferry_protocol::SignedTrustRoot::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    ferry_protocol::trust::fingerprint(&signed).to_hex()
}

/// C2: the database holds a forged root (a higher version with the
/// attacker's own root and publisher key, or a replaced version 1). A
/// device pinned to the operator's root, by file or by fingerprint,
/// refuses to enroll onto it and stores nothing.
#[test]
fn a_forged_root_in_the_database_cannot_enroll_a_pinned_device() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = Server::start(&tmp.path().join("server"), &[]);
    let v1 = keys.path("v1.root");
    push(&server, &["trust", "push", v1.to_str().unwrap()]);
    // The fingerprint the operator's `trust init` printed, and the one the
    // control plane prints with a token, agree while nobody tampered.
    let ca = tmp.path().join("ca.pem");
    let tok = token(&server, &ca, "10");
    assert_eq!(tok["root_fingerprint"], fingerprint_of(&v1).as_str());
    let token = tok["token"].as_str().unwrap().to_string();

    // The attacker's root as version 2 of the tenant.
    let forged = forged_root(&keys, "2");
    insert_root(&server, 2, &forged);
    let pins: [(&str, PathBuf, String); 2] = [
        ("file", tmp.path().join("dev-file"), String::new()),
        (
            "fingerprint",
            tmp.path().join("dev-fp"),
            fingerprint_of(&v1),
        ),
    ];
    for (kind, data, fp) in &pins {
        let pin: Vec<&OsStr> = if *kind == "file" {
            vec![OsStr::new("--trust"), v1.as_os_str()]
        } else {
            vec![OsStr::new("--root-fingerprint"), OsStr::new(fp.as_str())]
        };
        let out = run(&mut Agent::enroll_cmd(&server, &token, &ca, data, &pin));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{kind}: enrolled onto a forged root");
        assert!(
            err.contains("trust_root_not_pinned") && err.contains("not the pinned v1"),
            "{kind}: {err}"
        );
        assert!(!data.join("fleet/device.json").exists(), "{kind}");
        assert!(!data.join("fleet/trust.root").exists(), "{kind}");
    }

    // The attacker replaces the whole history with a root of its own at
    // version 1: the pinned fingerprint or file does not match it.
    sql(
        &server,
        "DELETE FROM trust_roots WHERE tenant = 'default'",
        None,
    );
    let forged1 = forged_root(&keys, "1");
    insert_root(&server, 1, &forged1);
    let data = tmp.path().join("dev-fp2");
    let fp = fingerprint_of(&v1);
    let pin = [OsStr::new("--root-fingerprint"), OsStr::new(fp.as_str())];
    let out = run(&mut Agent::enroll_cmd(&server, &token, &ca, &data, &pin));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no root with the pinned fingerprint"), "{err}");
    let data = tmp.path().join("dev-file2");
    let pin = [OsStr::new("--trust"), v1.as_os_str()];
    let out = run(&mut Agent::enroll_cmd(&server, &token, &ca, &data, &pin));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not the pinned v1"), "{err}");
    assert!(!data.join("fleet/device.json").exists());
    // Enrollment needs a pin at all: there is no unpinned mode.
    let out = run(&mut Agent::enroll_cmd(
        &server,
        &token,
        &ca,
        &tmp.path().join("dev-none"),
        &[],
    ));
    assert!(!out.status.success());
}

/// C2, after enrollment: a forged root written into the database later is
/// offered to an enrolled, pinned device, which refuses it (audited with
/// the reason) and then refuses a bundle signed by the forged root's
/// publisher key, while its model keeps serving and its root file is
/// unchanged.
#[test]
fn a_forged_root_in_the_database_cannot_make_a_device_activate_its_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = Server::start(&tmp.path().join("server"), &[]);
    let v1 = keys.path("v1.root");
    push(&server, &["trust", "push", v1.to_str().unwrap()]);
    let good = keys.bundle("fraud", 1, "pub", &[]);
    push(&server, &["model", "push", good.to_str().unwrap()]);
    let ca = tmp.path().join("ca.pem");
    let tok = token(&server, &ca, "1");
    let data = tmp.path().join("agent");
    let id = Agent::enroll(&server, tok["token"].as_str().unwrap(), &ca, &data, &v1);
    let agent = Agent::start(&data, &id, &[]);
    let d1 = deploy(&server, "fraud", "1");
    device_state(&server, &d1, &id, "active");

    let forged = forged_root(&keys, "2");
    insert_root(&server, 2, &forged);
    // The registry now takes bundles signed by the attacker's publisher.
    let dir = keys.path("evil");
    let evil = tmp.path().join("evil.ferry");
    ok(&mut ferry(&[
        "bundle",
        "build",
        ferry_e2e::fleet::fixtures()
            .join("bc_logreg.onnx")
            .to_str()
            .unwrap(),
        "--name",
        "evil",
        "--version",
        "1",
        "--sign-with",
        dir.join("evil_pub.key").to_str().unwrap(),
        "--out",
        evil.to_str().unwrap(),
    ]));
    push(&server, &["model", "push", evil.to_str().unwrap()]);

    // The device is offered the forged root and refuses it: it is not
    // signed by the root keys of the root it holds.
    let a = refused_audit(&server, "device.trust_root", "trust_root_signatures");
    assert_eq!(a["actor"], format!("device {id}").as_str(), "{a}");
    let de = deploy(&server, "evil", "1");
    let detail = device_state(&server, &de, &id, "failed");
    assert!(detail.starts_with("unknown_key"), "{detail}");
    refused_audit(&server, "device.activate", "unknown_key");
    assert_eq!(agent.infer("evil").0, 404);
    assert_eq!(agent.infer("fraud").1["model_version"], "1");
    assert_eq!(
        std::fs::read(data.join("fleet/trust.root")).unwrap(),
        std::fs::read(&v1).unwrap()
    );
    let devs = server.json(&["device", "list"]);
    let row = devs["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["trust_root_version"], 1, "{row}");
}

/// H3: the control plane listens on another loopback address under a name
/// that is not `localhost`. A device that expects that name enrolls,
/// deploys and serves; one that expects another name, or the bare address
/// the certificate does not carry, is refused by the TLS name check.
#[test]
fn quic_certificate_carries_the_configured_name_and_devices_check_it() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = Server::start_with(
        &tmp.path().join("server"),
        &[],
        "127.0.0.2:0",
        &["--quic-name", "cp.ferry.test"],
    );
    assert!(server.quic.starts_with("127.0.0.2:"), "{}", server.quic);
    let v1 = keys.path("v1.root");
    push(&server, &["trust", "push", v1.to_str().unwrap()]);
    let good = keys.bundle("fraud", 1, "pub", &[]);
    push(&server, &["model", "push", good.to_str().unwrap()]);
    let ca = tmp.path().join("ca.pem");
    let tok = token(&server, &ca, "3");
    let token = tok["token"].as_str().unwrap().to_string();

    // Wrong name, and the address the certificate does not name.
    for (data, name) in [
        (tmp.path().join("dev-wrong"), Some("other.ferry.test")),
        (tmp.path().join("dev-addr"), None),
    ] {
        let mut pin = vec![OsStr::new("--trust"), v1.as_os_str()];
        if let Some(n) = name {
            pin.push(OsStr::new("--server-name"));
            pin.push(OsStr::new(n));
        }
        let out = run(&mut Agent::enroll_cmd(&server, &token, &ca, &data, &pin));
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{name:?}: enrolled");
        assert!(
            err.contains("certificate")
                && (err.contains("not valid for name") || err.contains("notvalidforname")),
            "{name:?}: {err}"
        );
        assert!(!data.join("fleet/device.json").exists());
    }
    // Neither attempt used the token up: the server never saw them.
    let data = tmp.path().join("dev");
    let pin = [
        OsStr::new("--trust"),
        v1.as_os_str(),
        OsStr::new("--server-name"),
        OsStr::new("cp.ferry.test"),
    ];
    let out = ok(&mut Agent::enroll_cmd(&server, &token, &ca, &data, &pin));
    let id = device_id_in(&out);
    let agent = Agent::start(&data, &id, &[]);
    let d = deploy(&server, "fraud", "1");
    device_state(&server, &d, &id, "active");
    wait_for("fraud v1 serving", LONG, || {
        (agent.infer("fraud").1["model_version"] == "1").then_some(())
    });
}
