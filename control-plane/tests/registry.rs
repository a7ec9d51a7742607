//! The control plane's registry, lifecycle, refusals and audit trail, end to
//! end against a real `ferry server` process. Every test runs twice: on the
//! embedded SQLite default and on a fresh PostgreSQL database.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use support::{Backend, Fixture, Server, ADMIN};

both_backends!(
    lifecycle,
    refusals_are_4xx_and_audited,
    audit_chain_detects_tampering,
    tenants_are_isolated,
    migrations_run_once_and_state_survives_restart,
    rate_limit_per_token,
    cli_round_trip,
);

fn names(v: &Value) -> Vec<String> {
    v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

async fn lifecycle(b: Backend) {
    let fx = Fixture::get();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&b, dir.path(), &[]);
    let api = srv.api();

    // Nothing can be registered before the tenant has a trust root.
    let v1 = fx.bundle(
        "bc_logreg",
        "fraud-eu",
        1,
        "pub",
        &[
            "--metric",
            "auc=0.91",
            "--tag",
            "team=risk",
            "--training-run",
            "runs:/abc",
        ],
    );
    let (s, e) = api.push(ADMIN, &v1).await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["code"], "no_trust_root");

    let (s, v) = api.push_trust(ADMIN, &fx.path("default.root")).await;
    assert_eq!(s, 200, "{v}");

    let v2 = fx.bundle(
        "bc_logreg",
        "fraud-eu",
        2,
        "pub",
        &[
            "--metric",
            "auc=0.95",
            "--tag",
            "team=risk",
            "--parent-version",
            "1",
        ],
    );
    let v3 = fx.bundle(
        "digits_mlp",
        "fraud-eu",
        3,
        "pub",
        &["--metric", "auc=0.97", "--tag", "team=risk"],
    );
    let other = fx.bundle(
        "bc_forest",
        "churn",
        1,
        "pub",
        &[
            "--metric",
            "auc=0.80",
            "--tag",
            "team=growth",
            "--tag",
            "project=retention",
        ],
    );
    for p in [&v1, &v2, &v3, &other] {
        let (s, v) = api.push(ADMIN, p).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["status"], "created");
    }
    let (s, v) = api.push(ADMIN, &v1).await;
    assert_eq!(s, 409, "duplicate push: {v}");

    // List and search.
    let (s, v) = api.get(ADMIN, "/api/v1/models").await;
    assert_eq!(s, 200);
    assert_eq!(names(&v), ["churn", "fraud-eu"]);
    let (_, v) = api.get(ADMIN, "/api/v1/models?name_prefix=fra").await;
    assert_eq!(names(&v), ["fraud-eu"]);
    let (_, v) = api.get(ADMIN, "/api/v1/models?q=URN").await;
    assert_eq!(names(&v), ["churn"]);
    let (_, v) = api.get(ADMIN, "/api/v1/models?tag=team:growth").await;
    assert_eq!(names(&v), ["churn"]);
    let (_, v) = api.get(ADMIN, "/api/v1/models?metric=auc%3E%3D0.9").await;
    assert_eq!(names(&v), ["fraud-eu"]);
    // A range holds for one version's metric: fraud-eu v2 (0.95) is in
    // [0.93, 0.96]; v3 is >= 0.96 and v1 <= 0.92, but none is both.
    let (_, v) = api
        .get(
            ADMIN,
            "/api/v1/models?metric=auc%3E%3D0.75&metric=auc%3C%3D0.85",
        )
        .await;
    assert_eq!(names(&v), ["churn"]);
    let (_, v) = api
        .get(
            ADMIN,
            "/api/v1/models?metric=auc%3E%3D0.93&metric=auc%3C%3D0.96",
        )
        .await;
    assert_eq!(names(&v), ["fraud-eu"]);
    let (_, v) = api
        .get(
            ADMIN,
            "/api/v1/models?metric=auc%3E%3D0.96&metric=auc%3C%3D0.92",
        )
        .await;
    assert_eq!(names(&v), Vec::<String>::new());
    let (_, v) = api.get(ADMIN, "/api/v1/models?project=retention").await;
    assert_eq!(names(&v), ["churn"]);
    let (_, v) = api.get(ADMIN, "/api/v1/models?limit=1").await;
    assert_eq!(names(&v), ["churn"]);
    let next = v["next_page_token"].as_str().unwrap().to_string();
    let (_, v) = api
        .get(ADMIN, &format!("/api/v1/models?limit=1&page_token={next}"))
        .await;
    assert_eq!(names(&v), ["fraud-eu"]);
    assert!(v["next_page_token"].is_null());

    // Show, versions, ModelDoc.
    let (s, m) = api.get(ADMIN, "/api/v1/models/fraud-eu").await;
    assert_eq!(s, 200);
    assert_eq!(m["latest_version"], 3);
    assert_eq!(m["versions"], 3);
    assert_eq!(m["latest"]["metrics"]["auc"], 0.97);
    let (_, v) = api.get(ADMIN, "/api/v1/models/fraud-eu/versions").await;
    let vs: Vec<i64> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_i64().unwrap())
        .collect();
    assert_eq!(vs, [3, 2, 1]);
    let (_, v) = api
        .get(ADMIN, "/api/v1/models/fraud-eu/versions?metric=auc%3C0.96")
        .await;
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    let (s, d) = api.get(ADMIN, "/api/v1/models/fraud-eu/versions/2").await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["schema"]["inputs"][0]["datatype"], "FP32");
    assert_eq!(d["metrics"]["auc"], 0.95);
    assert_eq!(d["tags"]["team"], "risk");
    assert_eq!(d["lineage"]["parent_version"], 1);
    assert_eq!(d["signatures"][0]["publisher"], "pub");
    assert_eq!(d["baseline"]["features"].as_array().unwrap().len(), 30);
    assert!(d["registered_by"].as_str().unwrap().contains("bootstrap"));
    assert_eq!(d["project"], "default");

    // Compare: metric deltas against the first, schema and baseline changes.
    let (s, c) = api
        .get(ADMIN, "/api/v1/models/fraud-eu/compare?versions=1,2,3")
        .await;
    assert_eq!(s, 200, "{c}");
    let auc = c["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "auc")
        .unwrap();
    assert!((auc["delta"]["2"].as_f64().unwrap() - 0.04).abs() < 1e-9);
    assert!(c["schema_changes"]["2"].as_array().unwrap().is_empty());
    assert!(
        !c["schema_changes"]["3"].as_array().unwrap().is_empty(),
        "{c}"
    );
    assert!(!c["baseline_changes"]["3"].as_array().unwrap().is_empty());

    // Aliases: promote, challenger, optimistic concurrency.
    let (s, v) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/models/fraud-eu/promote",
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["previous"].is_null());
    let (s, _) = api
        .call(
            ADMIN,
            "PUT",
            "/api/v1/models/fraud-eu/aliases/challenger",
            Some(json!({"version": 2})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .call(
            ADMIN,
            "PUT",
            "/api/v1/models/fraud-eu/aliases/production",
            Some(json!({"version": 2, "expect_current": 3})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = api
        .call(
            ADMIN,
            "PUT",
            "/api/v1/models/fraud-eu/aliases/production",
            Some(json!({"version": 2, "expect_current": 1})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["previous"], 1);
    let (_, v) = api.get(ADMIN, "/api/v1/models?alias=production").await;
    assert_eq!(names(&v), ["fraud-eu"]);
    let (_, m) = api.get(ADMIN, "/api/v1/models/fraud-eu").await;
    assert_eq!(m["aliases"], json!({"challenger": 2, "production": 2}));

    // Archive: refused while aliased; hidden from defaults; not promotable.
    let (s, _) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/models/fraud-eu/versions/2/archive",
            None,
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/models/fraud-eu/versions/3/archive",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = api.get(ADMIN, "/api/v1/models/fraud-eu/versions").await;
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    let (_, v) = api
        .get(
            ADMIN,
            "/api/v1/models/fraud-eu/versions?include_archived=true",
        )
        .await;
    assert_eq!(v["versions"].as_array().unwrap().len(), 3);
    let (s, _) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/models/fraud-eu/promote",
            Some(json!({"version": 3})),
        )
        .await;
    assert_eq!(s, 409);
    // Re-register: pushing the archived version's bundle again restores it.
    let (s, v) = api.push(ADMIN, &v3).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "restored");
    let (s, _) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/models/fraud-eu/versions/3/archive",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/models/fraud-eu/versions/3/restore",
            None,
        )
        .await;
    assert_eq!(s, 200);

    // Download is byte-identical to what was pushed.
    let (s, bytes) = api
        .bytes(ADMIN, "/api/v1/models/fraud-eu/versions/2/bundle")
        .await;
    assert_eq!(s, 200);
    assert_eq!(bytes, std::fs::read(&v2).unwrap());

    // Delete: refused while deployed; garbage-collects unreferenced artifacts.
    let (s, v) = api
        .call(ADMIN, "DELETE", "/api/v1/models/fraud-eu/versions/2", None)
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("deployed"));
    let (s, v) = api
        .call(ADMIN, "DELETE", "/api/v1/models/fraud-eu/versions/3", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["artifacts_removed"].as_array().unwrap().len(), 1, "{v}");
    // v1 and v2 share the same ONNX file: deleting v1 keeps the blob.
    let (s, v) = api
        .call(ADMIN, "DELETE", "/api/v1/models/fraud-eu/versions/1", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["artifacts_removed"].as_array().unwrap().len(), 0, "{v}");
    let (s, _) = api
        .call(ADMIN, "DELETE", "/api/v1/models/fraud-eu", None)
        .await;
    assert_eq!(s, 409);
    for alias in ["production", "challenger"] {
        let (s, _) = api
            .call(
                ADMIN,
                "DELETE",
                &format!("/api/v1/models/fraud-eu/aliases/{alias}"),
                None,
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, v) = api
        .call(ADMIN, "DELETE", "/api/v1/models/fraud-eu", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["artifacts_removed"].as_array().unwrap().len(), 1);
    let (s, _) = api.get(ADMIN, "/api/v1/models/fraud-eu").await;
    assert_eq!(s, 404);
    // The churn model's blob is still there and downloads intact.
    let (s, bytes) = api
        .bytes(ADMIN, "/api/v1/models/churn/versions/1/bundle")
        .await;
    assert_eq!(s, 200);
    assert_eq!(bytes, std::fs::read(&other).unwrap());

    // Projects.
    let (_, v) = api.get(ADMIN, "/api/v1/projects").await;
    let projects: Vec<&str> = v["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(projects, ["default", "retention"]);
    let (s, _) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/projects",
            Some(json!({"name": "vision", "description": "cameras"})),
        )
        .await;
    assert_eq!(s, 201);

    // Every mutation above left an audit record, in a chain that verifies.
    let (_, a) = api.get(ADMIN, "/api/v1/audit?action=alias.set").await;
    let outcomes: Vec<&str> = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "ok", "refused", "ok", "refused"]);
    let out = srv.cli_ok(ADMIN, &["audit", "verify"]);
    assert!(out.contains("records verified"), "{out}");
}

async fn refusals_are_4xx_and_audited(b: Backend) {
    let fx = Fixture::get();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&b, dir.path(), &["--max-upload-bytes", "200000"]);
    let api = srv.api();
    api.push_trust(ADMIN, &fx.path("default.root")).await;

    // Signed by a key the trust root does not know.
    let rogue = fx.bundle("bc_logreg", "fraud", 1, "rogue", &[]);
    let (s, v) = api.push(ADMIN, &rogue).await;
    assert_eq!((s, v["code"].as_str()), (422, Some("unknown_key")), "{v}");

    // Tampered artifact byte, tampered manifest byte.
    let good = std::fs::read(fx.simple("fraud", 1)).unwrap();
    let mut t = good.clone();
    let n = t.len();
    t[n - 10] ^= 0xff;
    let (s, v) = api.raw(ADMIN, "POST", "/api/v1/models", t).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("digest_mismatch")),
        "{v}"
    );
    let mut t = good.clone();
    t[40] ^= 0x01;
    let (s, v) = api.raw(ADMIN, "POST", "/api/v1/models", t).await;
    assert_eq!(s, 422, "{v}");
    // Trailing garbage and not-a-bundle.
    let mut t = good.clone();
    t.extend_from_slice(b"more");
    let (s, v) = api.raw(ADMIN, "POST", "/api/v1/models", t).await;
    assert_eq!((s, v["code"].as_str()), (422, Some("trailing_data")), "{v}");
    let (s, v) = api
        .raw(ADMIN, "POST", "/api/v1/models", b"hello".to_vec())
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("bad_magic")), "{v}");

    // Oversized: refused by Content-Length, and by counting when streamed
    // without one (chunked), without buffering it.
    let (s, v) = api
        .raw(ADMIN, "POST", "/api/v1/models", vec![0u8; 300_000])
        .await;
    assert_eq!((s, v["code"].as_str()), (413, Some("too_large")), "{v}");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![7u8; 10_000])).collect();
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/models", api.base))
        .bearer_auth(ADMIN)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The server may answer and close before the client finishes sending (a
    // separate client, so the closed connection is not reused below).
    if let Ok(r) = resp {
        assert_eq!(r.status().as_u16(), 413);
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "upload scratch left behind"
    );

    // Malformed JSON, query parameters and paths.
    for (method, path, body, code) in [
        (
            "POST",
            "/api/v1/models/fraud/promote",
            Some("{not json"),
            400,
        ),
        (
            "POST",
            "/api/v1/models/fraud/promote",
            Some("{\"version\": \"two\"}"),
            400,
        ),
        (
            "POST",
            "/api/v1/models/fraud/promote",
            Some("{\"version\": 1, \"bogus\": 1}"),
            400,
        ),
        (
            "PUT",
            "/api/v1/models/fraud/aliases/production",
            Some(""),
            400,
        ),
        ("GET", "/api/v1/models?limit=0", None, 400),
        ("GET", "/api/v1/models?limit=abc", None, 400),
        ("GET", "/api/v1/models?metric=auc~1", None, 400),
        ("GET", "/api/v1/models?colour=red", None, 400),
        ("GET", "/api/v1/models?page_token=zz", None, 400),
        ("GET", "/api/v1/models/fraud/versions/latest", None, 400),
        ("GET", "/api/v1/models/fraud/versions/-1", None, 400),
        ("GET", "/api/v1/models/fraud/compare?versions=1", None, 400),
        ("GET", "/api/v1/models/..%2Fetc/versions", None, 400),
        (
            "PUT",
            "/api/v1/models/fraud/aliases/-bad",
            Some("{\"version\": 1}"),
            400,
        ),
        (
            "POST",
            "/api/v1/tokens",
            Some("{\"name\": \"x\", \"role\": \"root\"}"),
            400,
        ),
        ("GET", "/api/v1/audit?after_seq=x", None, 400),
        ("GET", "/api/v1/nope", None, 404),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = api
            .http
            .request(m, format!("{}{path}", api.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
        assert_eq!(status, code, "{method} {path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: no error message: {v}"
        );
    }

    // Auth failures.
    let (s, _) = api.get("", "/api/v1/models").await;
    assert_eq!(s, 401);
    let (s, _) = api
        .get(
            "fy_0000000000000000000000000000000000000000000000000000000000000000",
            "/api/v1/models",
        )
        .await;
    assert_eq!(s, 401);

    // A trust root that does not chain from the current one.
    let (s, v) = api.push_trust(ADMIN, &fx.path("forged-v3.root")).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = api.push_trust(ADMIN, &fx.path("beta.root")).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = api.push_trust(ADMIN, &fx.path("default-v2.root")).await;
    assert_eq!(s, 200, "{v}");

    // Every refused upload and the failed login are in the audit trail.
    let (_, a) = api.get(ADMIN, "/api/v1/audit?outcome=refused").await;
    let recs = a["records"].as_array().unwrap();
    let details: Vec<&str> = recs.iter().map(|r| r["detail"].as_str().unwrap()).collect();
    for code in [
        "unknown_key",
        "digest_mismatch",
        "trailing_data",
        "bad_magic",
        "too_large",
        "trust_root",
    ] {
        assert!(
            details.iter().any(|d| d.starts_with(code)),
            "no refusal with {code}: {details:?}"
        );
    }
    assert!(recs.iter().any(|r| r["action"] == "auth.login"));
    assert!(recs
        .iter()
        .filter(|r| r["action"] == "model.register")
        .all(|r| !r["request_id"].as_str().unwrap().is_empty()));
    let fraud = recs
        .iter()
        .find(|r| r["detail"].as_str().unwrap().starts_with("digest_mismatch"))
        .unwrap();
    assert_eq!(fraud["target"], "fraud@1");
}

async fn audit_chain_detects_tampering(b: Backend) {
    let fx = Fixture::get();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&b, dir.path(), &[]);
    let api = srv.api();
    api.push_trust(ADMIN, &fx.path("default.root")).await;
    api.push(ADMIN, &fx.simple("fraud", 1)).await;
    api.push(ADMIN, &fx.simple("fraud", 2)).await;
    api.call(
        ADMIN,
        "POST",
        "/api/v1/models/fraud/promote",
        Some(json!({"version": 2})),
    )
    .await;
    let viewer = api.token(ADMIN, "v", "viewer", None).await;
    let (s, _) = api
        .call(
            &viewer,
            "POST",
            "/api/v1/models/fraud/promote",
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(s, 403);

    let out = srv.cli_ok(ADMIN, &["audit", "verify"]);
    assert!(out.contains("records verified"), "{out}");
    let (_, a) = api.get(ADMIN, "/api/v1/audit").await;
    let n = a["records"].as_array().unwrap().len();
    assert!(n >= 6, "{a}");

    // Alter one record directly in the database.
    assert_eq!(
        b.exec(
            &srv.data,
            "UPDATE audit SET target = target || ' (edited)' WHERE tenant = 'default' AND seq = 4"
        )
        .await,
        1
    );
    let out = srv.cli(ADMIN, &["audit", "verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BROKEN at record 4"), "{err}");

    // Removing an earlier record is named as the first break.
    b.exec(
        &srv.data,
        "DELETE FROM audit WHERE tenant = 'default' AND seq = 2",
    )
    .await;
    let out = srv.cli(ADMIN, &["audit", "verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BROKEN at record 2"), "{err}");

    // Removing the tail is caught by the chain head.
    let dir2 = tempfile::tempdir().unwrap();
    drop(srv);
    let b2 = match b {
        Backend::Sqlite => Backend::Sqlite,
        Backend::Postgres(_) => match Backend::postgres().await {
            Some(x) => x,
            None => return,
        },
    };
    let srv = Server::start(&b2, dir2.path(), &[]);
    let api = srv.api();
    api.push_trust(ADMIN, &fx.path("default.root")).await;
    api.push(ADMIN, &fx.simple("fraud", 1)).await;
    let (_, a) = api.get(ADMIN, "/api/v1/audit").await;
    let last = a["head"]["seq"].as_i64().unwrap();
    b2.exec(
        &srv.data,
        &format!("DELETE FROM audit WHERE tenant = 'default' AND seq = {last}"),
    )
    .await;
    let out = srv.cli(ADMIN, &["audit", "verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("BROKEN at record {last}")), "{err}");
}

async fn tenants_are_isolated(b: Backend) {
    let fx = Fixture::get();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&b, dir.path(), &[]);
    let api = srv.api();
    api.push_trust(ADMIN, &fx.path("default.root")).await;
    api.push(ADMIN, &fx.simple("secret-model", 1)).await;
    let beta = api.token(ADMIN, "beta-admin", "admin", Some("beta")).await;
    // A tenant admin cannot mint tokens elsewhere.
    let (s, _) = api
        .call(
            &beta,
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "x", "role": "admin", "tenant": "default"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = api.push_trust(&beta, &fx.path("default.root")).await;
    assert_eq!(s, 422, "another tenant's trust root: {v}");
    let (s, _) = api.push_trust(&beta, &fx.path("beta.root")).await;
    assert_eq!(s, 200);
    // The default tenant's bundle does not verify under beta's root.
    let (s, v) = api.push(&beta, &fx.simple("secret-model", 1)).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = api
        .push(
            &beta,
            &fx.bundle("bc_logreg", "beta-model", 1, "pub-b", &[]),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let (_, v) = api.get(&beta, "/api/v1/models").await;
    assert_eq!(names(&v), ["beta-model"]);
    for path in [
        "/api/v1/models/secret-model",
        "/api/v1/models/secret-model/versions",
        "/api/v1/models/secret-model/versions/1",
        "/api/v1/models/secret-model/versions/1/bundle",
        "/api/v1/models/secret-model/aliases",
    ] {
        let (s, _) = api.get(&beta, path).await;
        assert_eq!(s, 404, "{path}");
    }
    let (s, _) = api
        .call(&beta, "DELETE", "/api/v1/models/secret-model", None)
        .await;
    assert_eq!(s, 404);
    let (_, a) = api.get(&beta, "/api/v1/audit").await;
    // Beta's chain holds only beta's records; the only mentions of the
    // other tenant's model name are beta's own refused attempts.
    for r in a["records"].as_array().unwrap() {
        assert_eq!(r["tenant"], "beta");
        if r.to_string().contains("secret-model") {
            assert_eq!(r["outcome"], "refused", "{r}");
            assert!(r["actor"].as_str().unwrap().contains("beta-admin"), "{r}");
        }
    }
    let (_, t) = api.get(&beta, "/api/v1/tokens").await;
    assert_eq!(t["tokens"].as_array().unwrap().len(), 1);
    let (_, v) = api.get(ADMIN, "/api/v1/models").await;
    assert_eq!(names(&v), ["secret-model"]);
}

async fn migrations_run_once_and_state_survives_restart(b: Backend) {
    let fx = Fixture::get();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&b, dir.path(), &[]);
    let api = srv.api();
    api.push_trust(ADMIN, &fx.path("default.root")).await;
    api.push(ADMIN, &fx.simple("fraud", 1)).await;
    drop(srv);
    let srv = Server::start(&b, dir.path(), &[]);
    let api = srv.api();
    let (s, v) = api.get(ADMIN, "/api/v1/models/fraud/versions/1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        b.exec(
            &srv.data,
            "UPDATE _sqlx_migrations SET description = description WHERE version = 1"
        )
        .await,
        1
    );
    // Every migration the store knows is recorded exactly once.
    assert_eq!(
        b.exec(
            &srv.data,
            "UPDATE _sqlx_migrations SET description = description"
        )
        .await,
        ferry::store::MIGRATION_COUNT as u64
    );
    let out = srv.cli_ok(ADMIN, &["audit", "verify"]);
    assert!(out.contains("records verified"));
}

async fn rate_limit_per_token(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&b, dir.path(), &["--rate-limit-per-minute", "3"]);
    let api = srv.api();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(api.get(ADMIN, "/api/v1/whoami").await.0);
    }
    assert_eq!(statuses[0], 200);
    assert!(statuses.contains(&429), "{statuses:?}");
    let (s, v) = api.get(ADMIN, "/api/v1/whoami").await;
    if s == 429 {
        assert_eq!(v["code"], "rate_limited");
    }
}

async fn cli_round_trip(b: Backend) {
    let fx = Fixture::get();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&b, dir.path(), &[]);
    let root = fx.path("default.root").display().to_string();
    let out = srv.cli_ok(ADMIN, &["trust", "push", &root]);
    assert!(out.contains("trust root v1"), "{out}");

    // `ferry login` stores credentials that later commands use.
    let cfg = dir.path().join("login-config");
    let login = std::process::Command::new(support::ferry_bin())
        .args(["login", "--server", &srv.url, "--token", ADMIN])
        .env("FERRY_CONFIG_DIR", &cfg)
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let v1 = fx
        .bundle("bc_logreg", "fraud", 1, "pub", &["--metric", "auc=0.9"])
        .display()
        .to_string();
    let push = std::process::Command::new(support::ferry_bin())
        .args(["model", "push", &v1, "--project", "risk"])
        .env("FERRY_CONFIG_DIR", &cfg)
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    assert!(String::from_utf8_lossy(&push.stdout).contains("registered fraud@1"));

    let v2 = fx
        .bundle("bc_logreg", "fraud", 2, "pub", &["--metric", "auc=0.93"])
        .display()
        .to_string();
    srv.cli_ok(ADMIN, &["model", "push", &v2]);
    let out = srv.cli_ok(ADMIN, &["model", "list"]);
    assert!(out.contains("fraud") && out.contains("risk"), "{out}");
    let out = srv.cli_ok(ADMIN, &["model", "list", "--json", "--metric", "auc>=0.92"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(names(&v), ["fraud"]);
    let out = srv.cli_ok(ADMIN, &["model", "show", "fraud"]);
    assert!(out.contains("latest ready: 2"), "{out}");
    let out = srv.cli_ok(ADMIN, &["model", "versions", "fraud"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let out = srv.cli_ok(ADMIN, &["model", "compare", "fraud", "1", "2"]);
    assert!(out.contains("+0.03"), "{out}");
    let out = srv.cli_ok(ADMIN, &["model", "promote", "fraud", "2"]);
    assert!(out.contains("fraud@production -> 2"), "{out}");
    let out = srv.cli_ok(ADMIN, &["model", "describe", "fraud", "2"]);
    assert!(out.contains("\"production\""), "{out}");
    srv.cli_ok(ADMIN, &["model", "archive", "fraud", "1"]);
    srv.cli_ok(ADMIN, &["model", "restore", "fraud", "1"]);
    let dl = dir.path().join("dl.ferry");
    srv.cli_ok(
        ADMIN,
        &[
            "model",
            "download",
            "fraud",
            "2",
            "--out",
            &dl.display().to_string(),
        ],
    );
    assert_eq!(std::fs::read(&dl).unwrap(), std::fs::read(&v2).unwrap());
    // The downloaded bundle still verifies offline.
    support::ok(&[
        "bundle",
        "verify",
        &dl.display().to_string(),
        "--trust",
        &root,
    ]);
    let refused = srv.cli(ADMIN, &["model", "delete", "fraud", "2"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("deployed"));
    srv.cli_ok(ADMIN, &["model", "delete", "fraud", "1"]);

    let out = srv.cli_ok(
        ADMIN,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--role",
            "publisher",
            "--json",
        ],
    );
    let t: Value = serde_json::from_str(&out).unwrap();
    let secret = t["token"].as_str().unwrap();
    let out = srv.cli_ok(secret, &["model", "list"]);
    assert!(out.contains("fraud"));
    let out = srv.cli_ok(ADMIN, &["token", "list"]);
    assert!(out.contains("ci") && out.contains("publisher"), "{out}");
    srv.cli_ok(ADMIN, &["token", "revoke", t["id"].as_str().unwrap()]);
    assert!(!srv.cli(secret, &["model", "list"]).status.success());
    let out = srv.cli_ok(ADMIN, &["audit", "list", "--outcome", "refused"]);
    assert!(out.contains("version.delete"), "{out}");
    let out = srv.cli_ok(ADMIN, &["audit", "verify"]);
    assert!(out.contains("records verified"));
}

/// `ferry server --config FILE`: the file supplies what flags do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-config");
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "data = {:?}\nhttp = \"127.0.0.1:1\"\nmax_upload_bytes = 1000\nroot_tenant = \"ops\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "server",
        "--config",
        &cfg.display().to_string(),
        "--http",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let srv = Server::spawn(&args, &data, &[]);
    assert!(data.join("ferry.db").exists());
    let api = srv.api();
    let (_, who) = api.get(ADMIN, "/api/v1/whoami").await;
    assert_eq!(who["tenant"], "ops");
    let (s, v) = api
        .raw(ADMIN, "POST", "/api/v1/models", vec![0u8; 2000])
        .await;
    assert_eq!((s, v["code"].as_str()), (413, Some("too_large")), "{v}");

    std::fs::write(&cfg, "colour = \"red\"\n").unwrap();
    let out = support::ferry(&["server", "--config", &cfg.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
}
