//! The scaled setup: several `ferry server` replicas over one PostgreSQL and
//! one artifact store, and artifacts in a real S3-compatible server
//! (moto[server], started here on loopback).
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use support::{Backend, Fixture, Server, ADMIN};

fn replica(
    b: &Backend,
    data: &std::path::Path,
    artifacts: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Server {
    let mut args: Vec<String> = vec![
        "server".into(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--data".into(),
        data.display().to_string(),
        "--artifacts".into(),
        artifacts.into(),
    ];
    args.extend(b.database_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::spawn(&args, data, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_over_one_postgres() {
    let Some(b) = Backend::postgres().await else {
        return;
    };
    let fx = Fixture::get();
    let shared = tempfile::tempdir().unwrap();
    let artifacts = format!("file://{}", shared.path().display());
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r1 = replica(&b, d1.path(), &artifacts, &[], &[]);
    let r2 = replica(&b, d2.path(), &artifacts, &[], &[]);
    let (a1, a2) = (r1.api(), r2.api());

    let (s, _) = a1.push_trust(ADMIN, &fx.path("default.root")).await;
    assert_eq!(s, 200);
    for v in 1..=3 {
        let (s, x) = a1.push(ADMIN, &fx.simple("fraud", v)).await;
        assert_eq!(s, 201, "{x}");
    }
    // Pushed through one, visible, downloadable and promotable through the other.
    let (s, v) = a2.get(ADMIN, "/api/v1/models/fraud/versions").await;
    assert_eq!(s, 200);
    assert_eq!(v["versions"].as_array().unwrap().len(), 3);
    let (s, bytes) = a2
        .bytes(ADMIN, "/api/v1/models/fraud/versions/2/bundle")
        .await;
    assert_eq!(s, 200);
    assert_eq!(bytes, std::fs::read(fx.simple("fraud", 2)).unwrap());
    let (s, _) = a2
        .call(
            ADMIN,
            "POST",
            "/api/v1/models/fraud/promote",
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, m) = a1.get(ADMIN, "/api/v1/models/fraud").await;
    assert_eq!(m["aliases"]["production"], 1);

    // Racing guarded promotions of the same alias: exactly one wins each
    // round, the loser gets 409, both are audited.
    let mut current = 1;
    for round in 0..8 {
        let (x, y) = if round % 2 == 0 { (2, 3) } else { (3, 2) };
        let body = |to: i64| Some(json!({"version": to, "expect_current": current}));
        let (ra, rb) = tokio::join!(
            a1.call(
                ADMIN,
                "PUT",
                "/api/v1/models/fraud/aliases/production",
                body(x)
            ),
            a2.call(
                ADMIN,
                "PUT",
                "/api/v1/models/fraud/aliases/production",
                body(y)
            ),
        );
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}: {ra:?} {rb:?}");
        let winner = if ra.0 == 200 { x } else { y };
        let (_, m) = a2.get(ADMIN, "/api/v1/models/fraud").await;
        assert_eq!(m["aliases"]["production"], winner);
        // Put it back to 1 for the next round's guard to be meaningful.
        let (s, _) = a1
            .call(
                ADMIN,
                "PUT",
                "/api/v1/models/fraud/aliases/production",
                Some(json!({"version": 1, "expect_current": winner})),
            )
            .await;
        assert_eq!(s, 200);
        current = 1;
    }

    // Unguarded concurrent promotions through both replicas: the final
    // alias is whatever the last successful record in the chain says.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let api = if i % 2 == 0 { a1.clone() } else { a2.clone() };
        tasks.push(tokio::spawn(async move {
            api.call(
                ADMIN,
                "PUT",
                "/api/v1/models/fraud/aliases/production",
                Some(json!({"version": 1 + i % 3})),
            )
            .await
            .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let (_, a) = a1
        .get(ADMIN, "/api/v1/audit?action=alias.set&limit=1000")
        .await;
    let recs = a["records"].as_array().unwrap();
    assert_eq!(recs.iter().filter(|r| r["outcome"] == "refused").count(), 8);
    let last_ok = recs.iter().rev().find(|r| r["outcome"] == "ok").unwrap();
    let (_, m) = a2.get(ADMIN, "/api/v1/models/fraud").await;
    let target = last_ok["target"].as_str().unwrap();
    assert!(
        target.ends_with(&format!("-> {}", m["aliases"]["production"])),
        "alias {} but the last record says {target}",
        m["aliases"]["production"]
    );
    // The chain, written by two processes, verifies.
    let out = r2.cli_ok(ADMIN, &["audit", "verify"]);
    assert!(out.contains("records verified"), "{out}");
}

// ------------------------------------------------------------------ S3 (moto)

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FERRY_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    venv.exists().then_some(venv)
}

async fn start_moto() -> Option<Moto> {
    let Some(bin) = moto_binary() else {
        support::missing(
            "moto_server (pip install 'moto[server]' into .venv, or set FERRY_MOTO_SERVER)",
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(&moto.endpoint).send().await.is_ok() {
            support::used_service("S3 (moto_server)");
            return Some(moto);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("moto_server did not start on {}", moto.endpoint);
}

async fn bucket_keys(http: &reqwest::Client, endpoint: &str, bucket: &str) -> Vec<String> {
    let xml = http
        .get(format!("{endpoint}/{bucket}?list-type=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    xml.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

async fn s3_artifacts(b: Backend) {
    let Some(moto) = start_moto().await else {
        return;
    };
    let fx = Fixture::get();
    let http = reqwest::Client::new();
    let bucket = "ferry-test";
    let r = http
        .put(format!("{}/{bucket}", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    let artifacts = format!("s3://{bucket}/ferry");
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let endpoint_flag = ["--s3-endpoint", moto.endpoint.as_str()];
    let r1 = replica(&b, d1.path(), &artifacts, &env, &endpoint_flag);
    let api = r1.api();
    api.push_trust(ADMIN, &fx.path("default.root")).await;
    for (m, v) in [("fraud", 1), ("fraud", 2)] {
        let (s, x) = api.push(ADMIN, &fx.simple(m, v)).await;
        assert_eq!(s, 201, "{x}");
    }
    let churn = fx.bundle("bc_forest", "churn", 1, "pub", &[]);
    let (s, _) = api.push(ADMIN, &churn).await;
    assert_eq!(s, 201);
    // Content-addressed: fraud v1 and v2 share one ONNX blob.
    let keys = bucket_keys(&http, &moto.endpoint, bucket).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("ferry/default/sha256/")),
        "{keys:?}"
    );
    assert!(
        !d1.path().join("artifacts").exists(),
        "artifacts went to local disk"
    );

    let (s, bytes) = api
        .bytes(ADMIN, "/api/v1/models/churn/versions/1/bundle")
        .await;
    assert_eq!(s, 200);
    assert_eq!(bytes, std::fs::read(&churn).unwrap());

    // A second replica with its own (SQLite or PostgreSQL) view reads the
    // same bucket when it shares the database.
    if matches!(b, Backend::Postgres(_)) {
        let r2 = replica(&b, d2.path(), &artifacts, &env, &endpoint_flag);
        let (s, bytes) = r2
            .api()
            .bytes(ADMIN, "/api/v1/models/fraud/versions/2/bundle")
            .await;
        assert_eq!(s, 200);
        assert_eq!(bytes, std::fs::read(fx.simple("fraud", 2)).unwrap());
    }

    // Deleting garbage-collects blobs no version references.
    let (s, v) = api
        .call(ADMIN, "DELETE", "/api/v1/models/fraud/versions/1", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(bucket_keys(&http, &moto.endpoint, bucket).await.len(), 2);
    let (s, _) = api
        .call(ADMIN, "DELETE", "/api/v1/models/fraud", None)
        .await;
    assert_eq!(s, 200);
    let keys = bucket_keys(&http, &moto.endpoint, bucket).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (s, v): (u16, Value) = api
        .call(ADMIN, "DELETE", "/api/v1/models/churn", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(bucket_keys(&http, &moto.endpoint, bucket).await.is_empty());
}

both_backends!(s3_artifacts);
