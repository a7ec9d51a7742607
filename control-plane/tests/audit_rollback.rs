//! Fault injection through the real HTTP API: when the audit append of a
//! change fails, the change is rolled back with it. One route of each
//! family (registry, fleet, telemetry), on SQLite and PostgreSQL.
//!
//! The `ferry` binary built for these tests has the `failpoints` feature
//! (the self dev-dependency in Cargo.toml); `FAILPOINTS` makes the store's
//! `store::audit_append` fail for one audit action only, so the test can
//! set up through the API first.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::path::Path;
use support::{Api, Backend, Fixture, Server, ADMIN};

/// A server (with the fleet endpoint) whose audit appends fail for
/// `action`.
fn start(b: &Backend, data: &Path, action: &str) -> Server {
    let mut args: Vec<String> = [
        "server",
        "--http",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
        "--data",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(data.display().to_string());
    args.extend(b.database_args());
    let failpoints = format!("store::audit_append=return({action})");
    Server::spawn(&args, data, &[("FAILPOINTS", &failpoints)])
}

/// Trust root and `fraud` v1, both audited normally.
async fn registry_setup(api: &Api) {
    let fx = Fixture::get();
    let (s, v) = api.push_trust(ADMIN, &fx.path("default.root")).await;
    assert!(s == 200 || s == 201, "trust push: {s} {v}");
    let (s, v) = api.push(ADMIN, &fx.simple("fraud", 1)).await;
    assert_eq!(s, 201, "push: {v}");
}

/// The audit records of `action` (any outcome).
async fn audited(api: &Api, action: &str) -> Vec<Value> {
    let (s, v) = api
        .get(ADMIN, &format!("/api/v1/audit?action={action}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["records"].as_array().unwrap().clone()
}

/// The chain is whole: nothing half-written by the failed change.
fn chain_verifies(srv: &Server) {
    let out = srv.cli_ok(ADMIN, &["audit", "verify"]);
    assert!(out.contains("records verified"), "{out}");
}

async fn registry_push_rolls_back(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&b, dir.path(), "model.register");
    let api = srv.api();
    let fx = Fixture::get();
    let (s, v) = api.push_trust(ADMIN, &fx.path("default.root")).await;
    assert!(s == 200 || s == 201, "trust push: {s} {v}");
    let (s, v) = api.push(ADMIN, &fx.simple("fraud", 1)).await;
    assert_eq!(s, 500, "push with a failing audit append: {v}");
    let (s, v) = api.get(ADMIN, "/api/v1/models/fraud").await;
    assert_eq!(s, 404, "the version must not exist: {v}");
    let (s, v) = api.get(ADMIN, "/api/v1/models").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["models"], json!([]), "{v}");
    assert!(audited(&api, "model.register").await.is_empty());
    chain_verifies(&srv);
}

async fn fleet_deployment_rolls_back(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&b, dir.path(), "deployment.create");
    let api = srv.api();
    registry_setup(&api).await;
    let (s, v) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/deployments",
            Some(json!({"model": "fraud", "version": 1})),
        )
        .await;
    assert_eq!(s, 500, "deployment with a failing audit append: {v}");
    let (s, v) = api.get(ADMIN, "/api/v1/deployments").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deployments"], json!([]), "{v}");
    assert!(audited(&api, "deployment.create").await.is_empty());
    chain_verifies(&srv);
}

async fn telemetry_policy_rolls_back(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&b, dir.path(), "drift_policy.set");
    let api = srv.api();
    registry_setup(&api).await;
    let (s, v) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/models/fraud/drift-config",
            Some(json!({"psi_threshold": 0.25, "min_drifted_rows": 50})),
        )
        .await;
    assert_eq!(s, 500, "policy with a failing audit append: {v}");
    let (s, v) = api.get(ADMIN, "/api/v1/models/fraud/drift-config").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["default"],
        json!(true),
        "the policy must not be stored: {v}"
    );
    assert!(audited(&api, "drift_policy.set").await.is_empty());
    chain_verifies(&srv);
}

/// Without the failpoint armed for it, the same route commits and audits
/// (the test above fails for the reason it claims).
async fn unarmed_route_commits(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&b, dir.path(), "nothing.at.all");
    let api = srv.api();
    registry_setup(&api).await;
    let (s, v) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/deployments",
            Some(json!({"model": "fraud", "version": 1})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(audited(&api, "deployment.create").await.len(), 1);
    assert_eq!(audited(&api, "model.register").await.len(), 1);
    chain_verifies(&srv);
}

both_backends!(
    registry_push_rolls_back,
    fleet_deployment_rolls_back,
    telemetry_policy_rolls_back,
    unarmed_route_commits,
);
