//! The operator CLI against a real `ferry server` process (with its QUIC
//! fleet endpoint and an enrolled `ferry-agent`): the commands for the
//! resources that need no device telemetry, each as a table and as
//! `--json` read back into the API's types. The telemetry commands on
//! real alerts and windows run in `telemetry_e2e` (`telemetry_cli.rs`);
//! `ferry::cli::coverage` checks every API operation has a command.
#![allow(clippy::unwrap_used)]

use ferry::api::types::{
    AlertList, AliasList, DeploymentDeleted, DeploymentDetail, DeploymentScaled, DeviceHealthList,
    DriftPolicyView, DriftSeries, Health, MetricSeries, ProjectList, TriggerList, TrustRootDoc,
    WhoAmI,
};
use ferry_e2e::fleet::{ok, run, Agent, Keys, Server};
use ferry_e2e::table::{assert_aligned, row};
use serde::de::DeserializeOwned;

fn json<T: DeserializeOwned>(server: &Server, args: &[&str]) -> T {
    let mut a = args.to_vec();
    a.push("--json");
    let text = ok(&mut server.cli(&a));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ferry {a:?}: {e}: {text}"))
}

fn text(server: &Server, args: &[&str]) -> String {
    ok(&mut server.cli(args))
}

/// A command that must fail; its standard error.
fn refused(server: &Server, args: &[&str]) -> String {
    let o = run(&mut server.cli(args));
    assert!(!o.status.success(), "ferry {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn registry_and_fleet_commands_print_tables_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let keys = Keys::new(tmp.path());

    // The server, and who the token is.
    let h: Health = json(&server, &["health"]);
    assert_eq!(h.status, "ok");
    assert!(text(&server, &["health"]).ends_with(": ok\n"));
    let who: WhoAmI = json(&server, &["whoami"]);
    assert_eq!(who.tenant, "default");
    assert!(text(&server, &["whoami"]).contains("in tenant default, role admin"));

    // The trust root in force.
    assert!(refused(&server, &["trust", "get"]).contains("has no trust root"));
    text(
        &server,
        &["trust", "push", keys.path("v1.root").to_str().unwrap()],
    );
    let root: TrustRootDoc = json(&server, &["trust", "get"]);
    assert_eq!((root.version, root.publishers.len()), (1, 1));
    let t = text(&server, &["trust", "get"]);
    assert_aligned(&t);
    assert_eq!(row(&t, "default")[1], "1");

    // Projects.
    text(
        &server,
        &["project", "create", "fraud", "--description", "card fraud"],
    );
    let p: ProjectList = json(&server, &["project", "list"]);
    assert!(p.projects.iter().any(|p| p.name == "fraud"));
    let t = text(&server, &["project", "list"]);
    assert_aligned(&t);
    assert_eq!(row(&t, "fraud").last(), Some(&"card fraud"));

    // A model, its aliases.
    let bundle = keys.bundle("bc", 1, "pub", &[]);
    text(
        &server,
        &[
            "model",
            "push",
            bundle.to_str().unwrap(),
            "--project",
            "fraud",
        ],
    );
    text(&server, &["model", "promote", "bc", "1"]);
    let a: AliasList = json(&server, &["model", "aliases", "bc"]);
    assert_eq!(a.aliases.len(), 1);
    assert_eq!(
        (a.aliases[0].alias.as_str(), a.aliases[0].version),
        ("production", 1)
    );
    let t = text(&server, &["model", "aliases", "bc"]);
    assert_aligned(&t);
    assert_eq!(row(&t, "production")[1], "1");

    // The drift policy: defaults, then flags on top of what is in force.
    let p: DriftPolicyView = json(&server, &["drift", "config", "get", "bc"]);
    assert_eq!(p.default, Some(true));
    let t = text(&server, &["drift", "config", "get", "bc"]);
    assert_aligned(&t);
    assert_eq!(row(&t, "source")[1], "defaults (no policy saved)");
    let p: DriftPolicyView = json(
        &server,
        &[
            "drift",
            "config",
            "set",
            "bc",
            "--psi-threshold",
            "0.2",
            "--lookback",
            "30m",
            "--features",
            "mean radius,mean texture",
        ],
    );
    assert_eq!(p.policy["psi_threshold"], 0.2);
    assert_eq!(p.policy["lookback_secs"], 1800);
    let p: DriftPolicyView = json(
        &server,
        &["drift", "config", "set", "bc", "--min-drifted-rows", "50"],
    );
    assert_eq!(p.policy["psi_threshold"], 0.2, "kept");
    assert_eq!(p.policy["min_drifted_rows"], 50);
    let t = text(&server, &["drift", "config", "get", "bc"]);
    assert_eq!(row(&t, "psi threshold")[1], "0.2");
    assert_eq!(row(&t, "lookback")[1], "30m");
    assert_eq!(row(&t, "features")[1], "mean radius,mean texture");
    // The server's validation reaches the operator; nothing is changed.
    let err = refused(
        &server,
        &["drift", "config", "set", "bc", "--fleet-fraction", "2"],
    );
    assert!(err.contains("fleet_fraction must be in (0, 1]"), "{err}");
    let file = tmp.path().join("policy.json");
    std::fs::write(&file, r#"{"psi_threshold": 0.4, "cooldown_secs": 60}"#).unwrap();
    let p: DriftPolicyView = json(
        &server,
        &[
            "drift",
            "config",
            "set",
            "bc",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(p.policy["psi_threshold"], 0.4);
    assert_eq!(
        p.policy["min_drifted_rows"], 100,
        "a file states the whole policy"
    );

    // Retraining: webhook and schedule. The secret is never shown, the URL
    // by origin only; both survive a change that does not name them.
    let p: DriftPolicyView = json(
        &server,
        &[
            "triggers",
            "set",
            "bc",
            "--webhook-url",
            "https://ml.example/retrain",
            "--webhook-secret",
            "s3cret",
        ],
    );
    assert_eq!(p.policy["webhook_secret_set"], true);
    assert_eq!(p.policy["webhook_url"], "https://ml.example/…");
    assert_eq!(p.policy["psi_threshold"], 0.4, "kept");
    let p: DriftPolicyView = json(
        &server,
        &["triggers", "set", "bc", "--schedule", "0 3 * * 1"],
    );
    assert_eq!(p.policy["retrain_schedule"], "0 3 * * 1");
    assert_eq!(p.policy["webhook_secret_set"], true, "kept");
    assert_eq!(p.policy["webhook_url"], "https://ml.example/…", "kept");
    let t = text(&server, &["drift", "config", "get", "bc"]);
    assert_eq!(row(&t, "retrain schedule")[1], "0 3 * * 1");
    assert_eq!(row(&t, "webhook secret")[1], "set");
    assert!(!t.contains("s3cret") && !t.contains("/retrain"), "{t}");
    let err = refused(&server, &["triggers", "set", "bc", "--webhook-secret", ""]);
    assert!(err.contains("--webhook-secret"), "{err}");
    let err = refused(
        &server,
        &["triggers", "set", "bc", "--schedule", "every day"],
    );
    assert!(err.contains("retrain_schedule"), "{err}");
    let p: DriftPolicyView = json(
        &server,
        &[
            "triggers",
            "set",
            "bc",
            "--no-webhook",
            "--no-webhook-secret",
            "--no-schedule",
        ],
    );
    assert_eq!(p.policy["webhook_secret_set"], false);
    assert_eq!(p.policy["webhook_url"], serde_json::Value::Null);
    assert_eq!(p.policy["retrain_schedule"], serde_json::Value::Null);
    let p: DriftPolicyView = json(&server, &["drift", "config", "set", "bc", "--reset"]);
    assert_eq!(p.policy["psi_threshold"], 0.3);
    assert_eq!(p.default, None);

    // Telemetry reads before any device reported: empty, and said so.
    let tr: TriggerList = json(&server, &["triggers", "list", "--since", "1h"]);
    assert!(tr.triggers.is_empty());
    let al: AlertList = json(&server, &["alerts", "list", "--open", "--limit", "5"]);
    assert!(al.alerts.is_empty());
    assert!(text(&server, &["alerts", "list"]).starts_with("ID  "));
    let err = refused(&server, &["alerts", "ack", "nope"]);
    assert!(err.contains("404"), "{err}");
    let m: MetricSeries = json(&server, &["model", "metrics", "bc", "--version", "1"]);
    assert!(m.windows.is_empty());
    let d: DriftSeries = json(&server, &["drift", "series", "bc"]);
    assert!(d.windows.is_empty());
    let err = refused(&server, &["drift", "config", "get", "no-such-model"]);
    assert!(err.contains("404"), "{err}");

    // A device: listed with aligned columns.
    let ca = tmp.path().join("ca.pem");
    let tok: serde_json::Value = json(
        &server,
        &[
            "device",
            "token",
            "create",
            "--labels",
            "site=a",
            "--ca-out",
            ca.to_str().unwrap(),
        ],
    );
    let device = Agent::enroll(
        &server,
        tok["token"].as_str().unwrap(),
        &ca,
        &tmp.path().join("agent"),
        &keys.path("v1.root"),
    );
    let t = text(&server, &["device", "list"]);
    assert_aligned(&t);
    let r = row(&t, &device);
    assert_eq!(r[1], "test-device", "{t}");
    // Labels, then the runtimes (none before its first hello).
    assert_eq!(r[r.len() - 2], "{\"site\":\"a\"}", "{t}");
    assert_eq!(r.last(), Some(&"-"), "{t}");
    let h: DeviceHealthList = json(&server, &["device", "health"]);
    assert!(h.devices.is_empty(), "no MQTT report yet: {:?}", h.devices);

    // Deployments: deploy, scale to another selector, list.
    let id = text(
        &server,
        &["deploy", "bc", "--version", "1", "--selector", "site=a"],
    )
    .trim()
    .to_string();
    let s: DeploymentScaled = json(
        &server,
        &["deployments", "scale", &id, "--selector", "site=b"],
    );
    assert_eq!(s.selector.get("site").map(String::as_str), Some("b"));
    let d: DeploymentDetail = json(&server, &["deployments", &id]);
    assert_eq!(d.deployment.selector, s.selector);
    let t = text(&server, &["deployments"]);
    assert_aligned(&t);
    assert_eq!(&row(&t, &id)[1..4], ["bc", "1", "{\"site\":\"b\"}"], "{t}");
    let gone: DeploymentDeleted = json(&server, &["undeploy", &id]);
    assert!(gone.deleted && gone.id == id);
}
