//! Attacks on the api surface (see docs/security.md): the REST API, its
//! tokens and what it makes the server do. Each runs against a real
//! `ferry server` process.
#![allow(clippy::unwrap_used)]

use ferry_e2e::fleet::{bin, http_raw, ok, spawn_until, wait_for, Keys, Server, ADMIN};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A well-formed token that names nothing.
const FORGED: &str = "fy_00000000000000000000000000000000000000000000000000000000000000ff";

fn addr(server: &Server) -> String {
    server
        .url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string()
}

/// Stops the server as an operator would (SIGTERM) and waits for it.
fn stop(server: &mut Server) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    kill(
        Pid::from_raw(server.proc.child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    server.proc.child.wait().unwrap();
}

/// M1: an anonymous flood of bad tokens does not buy one audit write (and
/// the write lock with it) per request. The source gets one record when
/// its first failure arrives and one summary with the count for the rest
/// of the minute; past its limit it is answered 429. A good token from the
/// same address still works.
#[test]
fn a_flood_of_bad_tokens_is_rate_limited_and_audited_once_per_source() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let mut server = Server::start(&data, &[]);
    let a = addr(&server);
    const N: usize = 100;
    let (mut unauthorized, mut limited) = (0, 0);
    for i in 0..N {
        // Well-formed tokens (looked up) and garbage (not), on any path.
        let token = if i % 2 == 0 { FORGED } else { "garbage" };
        let path = format!("/api/v1/models/probe-{i}");
        let (status, body) = http_raw(&a, "GET", &path, token, "");
        match status {
            401 => unauthorized += 1,
            429 => limited += 1,
            other => panic!("{path}: {other} {body}"),
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string(), "{body}");
    }
    assert!(
        unauthorized >= 1 && limited >= 1,
        "401: {unauthorized}, 429: {limited}"
    );
    assert_eq!(unauthorized + limited, N);

    // A real token from the same address is not held up.
    let (status, body) = http_raw(&a, "GET", "/api/v1/whoami", ADMIN, "");
    assert_eq!(status, 200, "{body}");

    // One record for the source so far, not one per request, and its
    // target is the source, not the attacker's path.
    let first = server.audit("auth.login");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["target"], "127.0.0.1");
    assert_eq!(first[0]["outcome"], "refused");

    // The rest of the minute is summed up in one record; a server that
    // stops writes the summary before it exits.
    stop(&mut server);
    let server = Server::start(&data, &[]);
    let records = server.audit("auth.login");
    assert_eq!(records.len(), 2, "{records:?}");
    let summary = records
        .iter()
        .find(|r| {
            r["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{} more refused logins", N - 1))
        })
        .unwrap_or_else(|| panic!("no summary of {} more: {records:?}", N - 1));
    assert_eq!(summary["target"], "127.0.0.1");
    assert!(
        summary["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{limited} of them over the rate limit")),
        "{summary}"
    );
    ok(&mut server.cli(&["audit", "verify"]));
}

/// Holds SQLite's write lock on the server's database (as a long write
/// of the registry or telemetry would) until dropped.
struct WriteLock {
    rt: tokio::runtime::Runtime,
    conn: Option<sqlx::SqliteConnection>,
}

impl WriteLock {
    fn take(db: &Path) -> WriteLock {
        use sqlx::Connection;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("sqlite://{}", db.display());
        let conn = rt.block_on(async {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .unwrap();
            c
        });
        WriteLock {
            rt,
            conn: Some(conn),
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            self.rt.block_on(async {
                let _ = sqlx::query("ROLLBACK").execute(&mut c).await;
            });
        }
    }
}

/// `ferry-agent enroll` with `token`: (succeeded, stdout + stderr).
fn try_enroll(server: &Server, token: &str, ca: &Path, data: &Path, root: &Path) -> (bool, String) {
    let out = Command::new(bin("ferry-agent"))
        .args(["enroll", "--server", &server.quic, "--token", token, "--ca"])
        .arg(ca)
        .arg("--data")
        .arg(data)
        .args(["--hostname", "rogue", "--trust"])
        .arg(root)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn token_state(server: &Server, id: &str) -> String {
    let v = server.json(&["device", "token", "list"]);
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .map(|t| t["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{id} not listed: {v}"))
}

/// M2: a leaked enrollment token can be found and revoked, and enrolling
/// with a revoked, expired or used-up token is refused by a read alone.
/// The refusals are checked while the test holds the database's write
/// lock: they come back at once with their reason, where taking a write
/// per attempt would wait on the lock and fail as an internal error.
#[test]
fn enrollment_tokens_are_listed_revoked_and_refused_without_a_write() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let data = tmp.path().join("server");
    let server = Server::start(&data, &[]);
    ok(&mut server.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    let ca = tmp.path().join("ca.pem");
    let create = |uses: &str, expires: &str| {
        let v = server.json(&[
            "device",
            "token",
            "create",
            "--labels",
            "site=leak",
            "--uses",
            uses,
            "--expires",
            expires,
            "--ca-out",
            ca.to_str().unwrap(),
        ]);
        (
            v["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    };
    let (leaked_id, leaked) = create("1000", "30d");
    let (short_id, short) = create("5", "1s");
    let (once_id, once) = create("1", "1h");

    // The list shows the tokens, never their secrets.
    let listed = ok(&mut server.cli(&["device", "token", "list", "--json"]));
    for (id, secret) in [
        (&leaked_id, &leaked),
        (&short_id, &short),
        (&once_id, &once),
    ] {
        assert!(listed.contains(id.as_str()), "{listed}");
        assert!(
            !listed.contains(secret.as_str()),
            "a secret is listed: {listed}"
        );
    }
    assert_eq!(token_state(&server, &leaked_id), "usable");

    // The one use of `once` is spent by a real device.
    let (enrolled, out) = try_enroll(
        &server,
        &once,
        &ca,
        &tmp.path().join("dev-ok"),
        &keys.path("v1.root"),
    );
    assert!(enrolled, "{out}");
    assert_eq!(token_state(&server, &once_id), "used_up");

    // The leaked token is revoked, audited in the tenant's trail.
    let out = ok(&mut server.cli(&["device", "token", "revoke", &leaked_id]));
    assert!(out.contains(&leaked_id), "{out}");
    assert_eq!(token_state(&server, &leaked_id), "revoked");
    let revoked = server.audit("device.token.revoke");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["target"], leaked_id.as_str());
    assert_eq!(revoked[0]["outcome"], "ok");
    // Revoking it again, or a token that does not exist, is a 404.
    for id in [leaked_id.as_str(), "enr_nothere"] {
        let out = server
            .cli(&["device", "token", "revoke", id])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("404"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("the short token to expire", Duration::from_secs(60), || {
        (token_state(&server, &short_id) == "expired").then_some(())
    });
    let enrolled_before = server.audit("device.enroll").len();

    // Refusals need no write: with the write lock held elsewhere, each is
    // answered with its reason.
    {
        let _lock = WriteLock::take(&data.join("ferry.db"));
        for (i, (token, reason)) in [
            (&leaked, "enrollment token revoked"),
            (&short, "enrollment token expired"),
            (&once, "enrollment token already used up"),
        ]
        .into_iter()
        .enumerate()
        {
            let rogue = tmp.path().join(format!("rogue{i}"));
            let (enrolled, out) = try_enroll(&server, token, &ca, &rogue, &keys.path("v1.root"));
            assert!(!enrolled, "enrolled with a dead token: {out}");
            assert!(out.contains(reason), "expected {reason:?}: {out}");
        }
    }
    // Nothing was enrolled, and nothing was spent.
    assert_eq!(server.audit("device.enroll").len(), enrolled_before);
    let devices = server.json(&["device", "list"]);
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");
}

/// A TLS CA and a server certificate for 127.0.0.1 and localhost; the
/// paths (ca.pem, server.pem, server.key) under `dir`.
fn tls_files(
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    let (ca, crt, k) = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-server.pem")),
        dir.join(format!("{name}-server.key")),
    );
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (ca, crt, k)
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// M8: the REST API over TLS. The CLI with the server's CA works end to
/// end (login, then commands with the saved CA); a client that does not
/// trust that CA is refused, and so is plain HTTP to the TLS port. A token
/// is never sent over plain http:// to another machine without
/// --insecure-http.
#[test]
fn the_api_speaks_tls_and_the_cli_trusts_only_the_given_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, crt, key) = tls_files(tmp.path(), "ferry");
    let (rogue_ca, _, _) = tls_files(tmp.path(), "rogue");
    let server = Server::start(
        &tmp.path().join("server"),
        &[
            ("FERRY_TLS_CERT", crt.to_str().unwrap()),
            ("FERRY_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let config = tmp.path().join("config");
    let cli = |args: &[&str]| {
        let mut c = Command::new(bin("ferry"));
        c.args(args)
            .env("FERRY_CONFIG_DIR", &config)
            .env_remove("FERRY_SERVER")
            .env_remove("FERRY_TOKEN")
            .env_remove("FERRY_CA");
        c
    };

    // Round trip with the CA: login stores it, later commands use it.
    let (ok_login, out) = output(&mut cli(&[
        "login",
        "--server",
        &server.url,
        "--token",
        ADMIN,
        "--ca",
        ca.to_str().unwrap(),
    ]));
    assert!(ok_login, "{out}");
    let (listed, out) = output(&mut cli(&["token", "list", "--json"]));
    assert!(listed, "{out}");
    assert!(out.contains("bootstrap"), "{out}");

    // Without the CA (the system's roots), or with another CA, the
    // server's certificate is refused before the token is sent.
    for extra in [vec![], vec!["--ca", rogue_ca.to_str().unwrap()]] {
        let mut args = vec!["model", "list", "--server", &server.url, "--token", ADMIN];
        args.extend(extra.iter().copied());
        let (listed, out) = output(&mut cli(&args));
        assert!(!listed, "{args:?}: {out}");
        assert!(
            out.to_lowercase().contains("certificate") || out.contains("UnknownIssuer"),
            "{args:?}: {out}"
        );
    }
    // Plain HTTP to the TLS port gets no answer.
    let plain = server.url.replace("https://", "http://");
    let (listed, out) = output(&mut cli(&[
        "model", "list", "--server", &plain, "--token", ADMIN,
    ]));
    assert!(!listed, "{out}");

    // A token is not sent over http:// to another machine.
    let remote = "http://192.0.2.10:8470";
    let (sent, out) = output(&mut cli(&["login", "--server", remote, "--token", ADMIN]));
    assert!(!sent, "{out}");
    assert!(out.contains("plain http://"), "{out}");
}

/// The trigger of `model`, once its delivery is over.
fn delivered_trigger(a: &str, token: &str, model: &str) -> Value {
    wait_for(
        &format!("the scheduled trigger of {model} to be delivered or given up"),
        Duration::from_secs(180),
        || {
            let (status, text) = http_raw(a, "GET", "/api/v1/retrain-triggers", token, "");
            assert_eq!(status, 200, "{text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            v["triggers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| {
                    t["model"] == model
                        && t["attempts"].as_i64().unwrap_or(0) > 0
                        && (t["delivered"] == true || !t["last_error"].as_str().unwrap().is_empty())
                })
                .cloned()
        },
    )
}

/// M5: an operator points retraining webhooks at the server's own
/// network: at an address literal, at a host name that resolves to
/// loopback, at an IPv4-mapped IPv6 literal. None of them is connected
/// to, and what viewers see says why without any detail of what answers
/// there.
#[test]
fn webhooks_to_internal_addresses_are_refused_at_connect_time() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = Server::start(&tmp.path().join("server"), &[]);
    let a = addr(&server);
    ok(&mut server.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    // An internal service the attacker wants to reach.
    let internal = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    internal.set_nonblocking(true).unwrap();
    let port = internal.local_addr().unwrap().port();
    let targets = [
        ("hook-literal", format!("http://127.0.0.1:{port}/admin")),
        ("hook-name", format!("http://localhost:{port}/admin")),
        (
            "hook-mapped",
            format!("http://[::ffff:127.0.0.1]:{port}/admin"),
        ),
    ];
    for (model, url) in &targets {
        let bundle = keys.bundle(model, 1, "pub", &[]);
        ok(&mut server.cli(&["model", "push", bundle.to_str().unwrap()]));
        let policy = serde_json::json!({
            "retrain_schedule": "* * * * *",
            "webhook_url": url,
            "webhook_secret": "s",
        });
        let (status, text) = http_raw(
            &a,
            "POST",
            &format!("/api/v1/models/{model}/drift-config"),
            ADMIN,
            &policy.to_string(),
        );
        assert_eq!(status, 200, "{text}");
    }
    let viewer = server.json(&["token", "create", "--name", "v", "--role", "viewer"]);
    let viewer = viewer["token"].as_str().unwrap().to_string();
    for (model, url) in &targets {
        let t = delivered_trigger(&a, &viewer, model);
        assert_eq!(t["delivered"], false, "{url}: {t}");
        let err = t["last_error"].as_str().unwrap();
        assert!(err.starts_with("destination not allowed"), "{url}: {err}");
        // Refused before any connection: one attempt, not retried.
        assert_eq!(t["attempts"], 1, "{url}: {t}");
    }
    // Nothing ever connected to the internal service.
    match internal.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the internal service was reached: {other:?}"),
    }
}

/// L2: requests refused before inference (here: bodies over the limit)
/// for names no model has do not each add a metrics series: they are all
/// counted under `(unknown)`.
#[test]
fn made_up_model_names_do_not_grow_the_agent_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let mut cmd = Command::new(bin("ferry-agent"));
    cmd.args(["run", "--listen", "127.0.0.1:0", "--max-body-bytes", "1024"])
        .arg("--trust")
        .arg(keys.path("v1.root"))
        .arg("--data")
        .arg(tmp.path().join("agent"))
        .env_remove("FAILPOINTS");
    let (_agent, found) = spawn_until(cmd, &["ferry-agent listening on http://"]);
    let agent = found[0].clone();
    let big = "x".repeat(4096);
    const N: usize = 20;
    for i in 0..N {
        let path = format!("/v2/models/made-up-{i}/infer");
        let (status, text) = http_raw(&agent, "POST", &path, "", &big);
        assert!(status >= 400, "{path}: {status} {text}");
    }
    let (status, metrics) = http_raw(&agent, "GET", "/metrics", "", "");
    assert_eq!(status, 200, "{metrics}");
    assert!(!metrics.contains("made-up-"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "ferry_request_rejected_total{{model=\"(unknown)\",reason=\"bad_body\"}} {N}"
        )),
        "{metrics}"
    );
}
