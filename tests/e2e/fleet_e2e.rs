//! Fleet distribution end to end: a real `ferry server --quic` process and
//! real enrolled `ferry-agent` processes on loopback.
#![allow(clippy::unwrap_used)]

use ferry_e2e::db::Db;
use ferry_e2e::fleet::{wait_for, Agent, Keys, Server};
use ferry_e2e::on_both_databases;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn state_of(server: &Server, dep: &str, device: &str) -> (String, String) {
    let v = server.deployment(dep);
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .map(|d| {
            (
                d["state"].as_str().unwrap_or_default().to_string(),
                d["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

fn wait_state(server: &Server, dep: &str, device: &str, want: &str) -> String {
    wait_for(&format!("{device} {want} in {dep}"), LONG, || {
        let (s, d) = state_of(server, dep, device);
        (s == want).then_some(d)
    })
}

fn deploy(server: &Server, model: &str, version: &str, selector: &str) -> String {
    let v = server.json(&[
        "deploy",
        model,
        "--version",
        version,
        "--selector",
        selector,
    ]);
    v["id"].as_str().unwrap().to_string()
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

on_both_databases!(enroll_deploy_promote_and_refusals);
fn enroll_deploy_promote_and_refusals(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let good1 = keys.bundle("fraud", 1, "pub", &[]);
    let good2 = keys.bundle("fraud", 2, "pub", &[]);
    let tampered = keys.bundle("tampered", 1, "pub", &[]);
    let arm = keys.bundle("armonly", 1, "pub", &["--arch", "aarch64"]);
    let other = keys.bundle("elsewhere", 1, "pub", &[]);

    let server = Server::start(
        &tmp.path().join("server"),
        &db.with(&[("FAILPOINTS", "fleet-corrupt-model=return(tampered)")]),
    );
    ferry_e2e::fleet::ok(&mut server.cli(&[
        "trust",
        "push",
        keys.path("v1.root").to_str().unwrap(),
    ]));
    for b in [&good1, &good2, &tampered, &arm, &other] {
        ferry_e2e::fleet::ok(&mut server.cli(&["model", "push", b.to_str().unwrap()]));
    }

    // --- enrollment: 3 devices, keys generated on the devices.
    let ca = tmp.path().join("ca.pem");
    let tok = server.json(&[
        "device",
        "token",
        "create",
        "--labels",
        "site=berlin,hw=rpi4",
        "--expires",
        "1h",
        "--uses",
        "3",
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    let token = tok["token"].as_str().unwrap().to_string();
    let mut agents = Vec::new();
    for i in 0..3 {
        let data = tmp.path().join(format!("agent{i}"));
        let id = Agent::enroll(&server, &token, &ca, &data, &keys.path("v1.root"));
        assert!(data.join("fleet/device.key").exists());
        assert!(data.join("fleet/trust.root").exists());
        agents.push(Agent::start(&data, &id, &[]));
    }
    // A fourth use of a 3-use token is refused.
    let out = ferry_e2e::fleet::run(
        std::process::Command::new(ferry_e2e::fleet::bin("ferry-agent"))
            .args([
                "enroll",
                "--server",
                &server.quic,
                "--token",
                &token,
                "--ca",
            ])
            .arg(&ca)
            .arg("--trust")
            .arg(keys.path("v1.root"))
            .arg("--data")
            .arg(tmp.path().join("agent-extra")),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already used up"));

    // --- deploy v1 to site=berlin: all three serve it.
    let d1 = deploy(&server, "fraud", "1", "site=berlin");
    for a in &agents {
        wait_state(&server, &d1, &a.device_id, "active");
        let (status, v) = a.infer("fraud");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model_version"], "1");
    }

    // --- promote v2 under traffic: no failed request, all switch.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for a in &agents {
        let addr = a.addr.clone();
        let (stop, failures, total) = (stop.clone(), failures.clone(), total.clone());
        load.push(std::thread::spawn(move || {
            let probe = Agent {
                proc: None,
                data: Default::default(),
                addr,
                device_id: String::new(),
                extra: vec![],
            };
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = probe.infer("fraud");
                total.fetch_add(1, Ordering::Relaxed);
                if s != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let d2 = deploy(&server, "fraud", "2", "site=berlin");
    for a in &agents {
        wait_state(&server, &d2, &a.device_id, "active");
        wait_for("v2 answering", LONG, || {
            (a.infer("fraud").1["model_version"] == "2").then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(total.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the swap"
    );
    assert_eq!(server.deployment(&d1)["devices"][0]["state"], "superseded");

    // --- refusals, each with a reason in the report and an audit record.
    let a0 = &agents[0];
    // Tampered bytes (the server's test hook flips the last byte).
    let dt = deploy(&server, "tampered", "1", "site=berlin");
    let detail = wait_state(&server, &dt, &a0.device_id, "failed");
    assert!(detail.starts_with("digest_mismatch"), "{detail}");
    refused_audit(&server, "device.activate", "digest_mismatch");
    // Wrong architecture.
    let da = deploy(&server, "armonly", "1", "site=berlin");
    let detail = wait_state(&server, &da, &a0.device_id, "failed");
    assert!(detail.starts_with("wrong_architecture"), "{detail}");
    refused_audit(&server, "device.activate", "wrong_architecture");
    // A bundle signed by a key the device's root does not know is refused
    // as `unknown_key` in attacks::trust (a forged root in the database);
    // a revoked key after a rotation in
    // `trust_root_rotation_reaches_devices_without_reenrollment`.
    // The refused bundles never displaced what serves.
    for a in &agents {
        assert_eq!(a.infer("fraud").1["model_version"], "2");
        assert_eq!(a.infer("tampered").0, 404);
    }

    // A device asking for a bundle not assigned to it.
    let elsewhere = server.json(&["model", "show", "elsewhere"]);
    let digest = elsewhere["versions"][0]["digest"]
        .as_str()
        .or(elsewhere["latest"]["digest"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let v = server.json(&["model", "versions", "elsewhere"]);
            v["versions"][0]["digest"].as_str().unwrap().to_string()
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = rt
        .block_on(ferry_agent::fleet::sim::probe_fetch(
            &a0.data,
            ferry_protocol::keys::Digest::from_hex(&digest).unwrap(),
        ))
        .unwrap();
    let reason = answer.unwrap_err();
    assert!(reason.contains("not assigned"), "{reason}");
    refused_audit(&server, "device.fetch", "not assigned");

    // --- revocation: the connection is closed, reconnects are refused, the
    // device keeps serving what it has.
    let victim = &agents[2];
    ferry_e2e::fleet::ok(&mut server.cli(&["device", "revoke", &victim.device_id]));
    refused_audit(&server, "device.connect", "revoked");
    let devs = server.json(&["device", "list"]);
    let row = devs["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == victim.device_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["connected"], false);
    assert_eq!(victim.infer("fraud").1["model_version"], "2");

    // --- labels: moving a device out of the selector takes the model away
    // from it (and only from it); undeploy takes it from the rest. The
    // revoked device, cut off, keeps serving what it has.
    let moved = &agents[1];
    ferry_e2e::fleet::ok(&mut server.cli(&["device", "label", &moved.device_id, "site=paris"]));
    wait_for("relabelled device unloads fraud", LONG, || {
        (moved.infer("fraud").0 == 404).then_some(())
    });
    let rows = server.deployment(&d2)["devices"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        rows.iter().all(|r| r["device"] != moved.device_id.as_str()),
        "{rows:?}"
    );
    assert_eq!(a0.infer("fraud").1["model_version"], "2");
    // v1's deployment is still live underneath (superseded): removing v2's
    // falls back to it, which agents that ran v2 refuse as a rollback. The
    // CLI warns; removing v1's then has nothing older to warn about.
    let out = ferry_e2e::fleet::run(&mut server.cli(&["undeploy", &d2]));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 device(s) fall back to fraud version 1") && err.contains("rollback"),
        "{err}"
    );
    let out = ferry_e2e::fleet::run(&mut server.cli(&["undeploy", &d1]));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && !err.contains("warning"), "{err}");
    wait_for("undeployed model unloads", LONG, || {
        (a0.infer("fraud").0 == 404).then_some(())
    });
    assert_eq!(victim.infer("fraud").1["model_version"], "2");
}

/// A download cut at half way by killing the agent resumes from where it
/// stopped; then the agent exits on the spot (as kill -9 would) at each
/// crash point of its fetch/activate path and of the serving core's
/// install, once each, and never leaves a partial or unverified model
/// active, nor a download or a copy behind.
#[test]
fn resume_after_kill_and_crash_points_never_activate_a_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = Server::start(
        &tmp.path().join("server"),
        &[("FERRY_FLEET_CHUNK_BYTES", "256")],
    );
    ferry_e2e::fleet::ok(&mut server.cli(&[
        "trust",
        "push",
        keys.path("v1.root").to_str().unwrap(),
    ]));
    let bundles: Vec<_> = (1..=8)
        .map(|v| keys.bundle("slow", v, "pub", &[]))
        .collect();
    for b in &bundles {
        ferry_e2e::fleet::ok(&mut server.cli(&["model", "push", b.to_str().unwrap()]));
    }
    let size = std::fs::metadata(&bundles[0]).unwrap().len();
    let ca = tmp.path().join("ca.pem");
    let tok = server.json(&[
        "device",
        "token",
        "create",
        "--labels",
        "site=x",
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    let data = tmp.path().join("agent");
    let id = Agent::enroll(
        &server,
        tok["token"].as_str().unwrap(),
        &ca,
        &data,
        &keys.path("v1.root"),
    );
    // About four seconds per bundle at this rate.
    let rate = (size / 4).max(256).to_string();
    // One stored version: pruning runs at every install, and must never
    // delete what the saved state still names.
    let mut agent = Agent::start(
        &data,
        &id,
        &["--fleet-max-bytes-per-sec", &rate, "--keep-versions", "1"],
    );

    // --- cut at >= 50 %, kill, restart: it resumes.
    let d1 = deploy(&server, "slow", "1", "site=x");
    let partial_dir = data.join("fleet/partial");
    wait_for("half of the bundle on disk", LONG, || {
        let n: u64 = std::fs::read_dir(&partial_dir)
            .ok()?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        (n >= size / 2).then_some(())
    });
    agent.kill();
    agent.restart();
    wait_state(&server, &d1, &id, "active");
    let resumed = wait_for("a resumed fetch in the audit trail", LONG, || {
        server.audit("device.fetch").into_iter().find(|r| {
            r["outcome"] == "ok"
                && r["detail"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("resumed at byte")
        })
    });
    let at: u64 = resumed["detail"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= size / 2, "resumed at {at} of {size}");
    assert_eq!(agent.infer("slow").1["model_version"], "1");

    // --- exit at each crash point (the `failpoints` feature of the e2e
    // build; `agent/src/failpoint.rs`), once each, in the order an
    // activation passes them: half way through a download; after the
    // download; in install after the copy into `incoming/`, after
    // verify/compile/test vectors and the move into `models/`, after
    // `state.json` is saved, after the routing-table swap; after install
    // before the report. Until `state.json` is saved the previous version
    // is the active one; the restarted agent finds the complete download
    // and installs it again, so every deployment ends `active` on `v`.
    for (v, point) in [
        (2u64, "fleet-download-half"),
        (3, "fleet-downloaded"),
        (4, "serving-install-copied"),
        (5, "serving-install-verified"),
        (6, "serving-install-saved"),
        (7, "serving-install-swapped"),
        (8, "fleet-activated"),
    ] {
        agent.kill();
        agent.restart_with_failpoints(&format!("{point}=1*return"));
        let dep = deploy(&server, "slow", &v.to_string(), "site=x");
        let status = agent.wait_exit(LONG);
        assert_eq!(status.code(), Some(137), "{point}: {status}");
        // Whatever is in the store and active must be complete and verified.
        let state: Value = std::fs::read(data.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let active = state["models"]["slow"]["champion"].as_u64().unwrap();
        let stored = data.join(format!("models/slow/{active:020}.ferry"));
        ferry_e2e::fleet::ok(&mut ferry_e2e::fleet::ferry(&[
            "bundle",
            "verify",
            stored.to_str().unwrap(),
            "--trust",
            keys.path("v1.root").to_str().unwrap(),
        ]));
        let saved = matches!(
            point,
            "serving-install-saved" | "serving-install-swapped" | "fleet-activated"
        );
        let expect_active = if saved { v } else { v - 1 };
        assert_eq!(active, expect_active, "{point}");
        if point.starts_with("serving-install-") {
            // Install runs on the complete download, which the restart
            // installs again (or, once installed, discards).
            let part = std::fs::read_dir(data.join("fleet/partial"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .collect::<Vec<_>>();
            let full = std::fs::metadata(&bundles[v as usize - 1]).unwrap().len();
            assert_eq!(part, [full], "{point}: the download on disk");
        }
        if point == "serving-install-verified" {
            // Stored, but nothing names it: it must not serve after restart.
            assert!(data.join(format!("models/slow/{v:020}.ferry")).exists());
        }
        agent.restart();
        // Straight after the restart it serves what state.json names, or
        // already `v` if the reinstall was quick; never anything else.
        let (status, body) = agent.infer("slow");
        assert_eq!(status, 200, "after {point}: {body}");
        let serving = body["model_version"].as_str().unwrap().to_string();
        assert!(
            serving == expect_active.to_string() || serving == v.to_string(),
            "after {point}: serving v{serving}"
        );
        wait_state(&server, &dep, &id, "active");
        assert_eq!(agent.infer("slow").1["model_version"], v.to_string());
    }
    if partial_left(&data) {
        panic!("a partial download was left behind");
    }
    let left = |dir: &str| {
        std::fs::read_dir(data.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>()
    };
    // A copy abandoned at `serving-install-copied` is cleared at the next start.
    assert_eq!(left("incoming"), Vec::<String>::new(), "incoming/");
    // Versions left by a crash before pruning are pruned at the next install.
    assert_eq!(
        left("models/slow"),
        [format!("{:020}.ferry", 8)],
        "models/slow"
    );
}

/// Whether a partial download is still on disk.
fn partial_left(data: &std::path::Path) -> bool {
    std::fs::read_dir(data.join("fleet/partial"))
        .map(|d| d.count() > 0)
        .unwrap_or(false)
}

on_both_databases!(replayed_and_expired_desired_state_are_refused_and_audited);
/// Replayed and expired desired-state documents are refused by the agent,
/// reported, and audited at the control plane.
fn replayed_and_expired_desired_state_are_refused_and_audited(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let bundle = keys.bundle("fraud", 1, "pub", &[]);
    for (name, env, code) in [
        (
            "replay",
            ("FAILPOINTS", "fleet-replay-desired=return"),
            "replayed_desired_state",
        ),
        (
            "expired",
            ("FERRY_FLEET_DESIRED_TTL", "0"),
            "expired_desired_state",
        ),
    ] {
        // A server of its own each time, on an empty database.
        let db = db.fresh();
        let server = Server::start(&tmp.path().join(format!("server-{name}")), &db.with(&[env]));
        let data = tmp.path().join(format!("agent-{name}"));
        let id = enroll_with_bundle(&server, &keys, &bundle, &data);
        let agent = Agent::start(&data, &id, &[]);
        // The replay hook resends a connection's first state after a newer
        // one: the deployment must come after the session is up, or the
        // first state already holds it and nothing is replayed.
        wait_for("the device's session", LONG, || {
            let v = server.json(&["device", "list"]);
            v["devices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"] == id.as_str() && d["connected"] == true)
                .then_some(())
        });
        deploy(&server, "fraud", "1", "");
        let rec = refused_audit(&server, "device.desired_state", code);
        assert_eq!(rec["actor"], format!("device {id}"));
        if name == "replay" {
            // The fresh state was applied; only the replay was refused.
            wait_for("v1 serving", LONG, || {
                (agent.infer("fraud").0 == 200).then_some(())
            });
        } else {
            // Nothing from an expired state was acted on.
            assert_eq!(agent.infer("fraud").0, 404);
        }
    }
}

/// Pushes the v1 trust root and `bundle`, makes a one-use enrollment token
/// and enrolls an agent into `data`; its device id.
fn enroll_with_bundle(
    server: &Server,
    keys: &Keys,
    bundle: &std::path::Path,
    data: &std::path::Path,
) -> String {
    push_trust_and_model(server, keys, bundle);
    let ca = data.with_extension("ca.pem");
    let tok = server.json(&[
        "device",
        "token",
        "create",
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    Agent::enroll(
        server,
        tok["token"].as_str().unwrap(),
        &ca,
        data,
        &keys.path("v1.root"),
    )
}

/// Pushes the tenant's trust root (`v1.root`) and `bundle` to `server`.
fn push_trust_and_model(server: &Server, keys: &Keys, bundle: &std::path::Path) {
    ferry_e2e::fleet::ok(&mut server.cli(&[
        "trust",
        "push",
        keys.path("v1.root").to_str().unwrap(),
    ]));
    ferry_e2e::fleet::ok(&mut server.cli(&["model", "push", bundle.to_str().unwrap()]));
}

/// Runs `n` simulated devices (the 1,000-agent benchmark's tool) against a
/// server started with `env`, deploys a bundle to them and waits until the
/// control plane sees every one active. Returns the server and the
/// simulator, still running.
fn simulate_fleet(
    tmp: &std::path::Path,
    n: usize,
    env: &[(&str, &str)],
    sim_args: &[&str],
) -> (Server, ferry_e2e::fleet::Proc, Keys) {
    let keys = Keys::new(&tmp.join("k"));
    let bundle = keys.bundle("fraud", 1, "pub", &[]);
    let server = Server::start(&tmp.join("server"), env);
    push_trust_and_model(&server, &keys, &bundle);
    let ca = tmp.join("ca.pem");
    let tok = ferry_e2e::fleet::device_token(&server, "fleet=sim", n, &ca);
    let sim =
        ferry_e2e::fleet::simulated_devices(&server, &tok, &ca, &tmp.join("sim"), n, 120, sim_args);
    ferry_e2e::fleet::wait_connected(&server, n, LONG);
    let dep = deploy(&server, "fraud", "1", "fleet=sim");
    wait_for("control plane sees every device active", LONG, || {
        let v = server.deployment(&dep);
        (v["summary"]["active"] == n as u64).then_some(())
    });
    (server, sim, keys)
}

/// The fleet simulator at a size a test can afford: every simulated device
/// enrolls, downloads, verifies and reports, and the control plane sees all
/// of them active.
#[test]
fn fleet_simulator_devices_all_report_active() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, mut sim, _) = simulate_fleet(tmp.path(), 25, &[], &[]);
    // Still running (it stays up until told to stop), with no failure.
    assert!(sim.child.try_wait().unwrap().is_none());
}

/// The server's cap on concurrent downloads holds: twelve devices fetch at
/// once through two slots (small chunks keep each download open a while),
/// all of them finish, and no more than two were ever served together.
#[test]
fn server_caps_concurrent_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, mut sim, _) = simulate_fleet(
        tmp.path(),
        12,
        &[
            ("FERRY_FLEET_MAX_DOWNLOADS", "2"),
            ("FERRY_FLEET_CHUNK_BYTES", "256"),
        ],
        &[],
    );
    assert!(sim.child.try_wait().unwrap().is_none());
    let v = server.json(&["device", "list"]);
    let dl = &v["downloads"];
    assert_eq!(dl["limit"], 2, "{v}");
    let peak = dl["peak"].as_u64().unwrap();
    assert!((1..=2).contains(&peak), "peak {peak} over the cap: {v}");
    wait_for("every download slot released", LONG, || {
        let v = server.json(&["device", "list"]);
        (v["downloads"]["in_flight"] == 0).then_some(())
    });
}

/// One version's figures summed over the windows the control plane stored
/// from simulated devices: (devices, requests, errors, labelled, correct,
/// latency p50s seen).
fn version_figures(server: &Server, version: u64) -> (usize, u64, u64, u64, u64, Vec<u64>) {
    let v = server.json(&[
        "model",
        "metrics",
        "fraud",
        "--version",
        &version.to_string(),
        "--limit",
        "10000",
    ]);
    let windows = v["windows"].as_array().unwrap();
    let devices: std::collections::BTreeSet<&str> = windows
        .iter()
        .map(|w| w["device"].as_str().unwrap())
        .collect();
    let sum = |k: &str| windows.iter().map(|w| w[k].as_u64().unwrap()).sum::<u64>();
    let correct = windows
        .iter()
        .map(|w| {
            (w["accuracy"].as_f64().unwrap_or(0.0) * w["labelled"].as_f64().unwrap()).round() as u64
        })
        .sum();
    let mut p50: Vec<u64> = windows
        .iter()
        .map(|w| w["latency_p50_us"].as_u64().unwrap())
        .collect();
    p50.sort_unstable();
    p50.dedup();
    (
        devices.len(),
        sum("requests"),
        sum("errors"),
        sum("labelled"),
        correct,
        p50,
    )
}

/// Simulated devices report telemetry as agents do (signed with their
/// enrollment keys, to the broker enrollment named): healthy figures for
/// v1, and for v2, deployed to the same devices, the bad profile injected
/// into it. The control plane stores both per version, from every device.
#[test]
fn fleet_simulator_reports_telemetry_per_version_from_every_device() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 6;
    let (server, mut sim, keys) = simulate_fleet(
        tmp.path(),
        n,
        &[],
        &[
            "--telemetry",
            "--telemetry-window-secs",
            "1",
            "--telemetry-requests",
            "200",
            "--telemetry-profile",
            "default:error_rate=0,accuracy=0.95,labelled=0.5",
            "--telemetry-profile",
            "v2:error_rate=0.3,accuracy=0.6,labelled=0.5,latency_us=20000,p99_us=20000",
        ],
    );
    wait_for("v1 windows from every simulated device", LONG, || {
        (version_figures(&server, 1).0 == n).then_some(())
    });
    let v2 = keys.bundle("fraud", 2, "pub", &[]);
    ferry_e2e::fleet::ok(&mut server.cli(&["model", "push", v2.to_str().unwrap()]));
    let dep = deploy(&server, "fraud", "2", "fleet=sim");
    wait_for("every device active on v2", LONG, || {
        (server.deployment(&dep)["summary"]["active"] == n as u64).then_some(())
    });
    // Enough v2 windows for the rates to be clear of sampling noise.
    let (devices, requests, errors, labelled, correct, p50) =
        wait_for("v2 windows from every simulated device", LONG, || {
            let f = version_figures(&server, 2);
            (f.0 == n && f.1 >= 20 * 200).then_some(f)
        });
    assert_eq!(devices, n);
    // Binomial draws: within 5 standard deviations of the profile.
    let within = |x: u64, n: u64, p: f64| {
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        ((x as f64 / n as f64) - p).abs() < 5.0 * sd
    };
    assert!(
        within(errors, requests, 0.3),
        "{errors} errors of {requests}"
    );
    assert!(
        within(correct, labelled, 0.6),
        "{correct} correct of {labelled}"
    );
    assert!(
        within(labelled, requests - errors, 0.5),
        "{labelled} labelled"
    );
    assert_eq!(p50, [25_000], "v2's latency bucket");
    let (_, requests, errors, labelled, correct, p50) = version_figures(&server, 1);
    assert!(requests > 0 && labelled > 0);
    assert_eq!(errors, 0);
    assert!(
        correct as f64 / labelled as f64 > 0.8,
        "{correct} of {labelled}"
    );
    assert_eq!(p50, [500], "v1's latency bucket");
    // Nothing was refused as unsigned or forged.
    let http = server.url.trim_start_matches("http://");
    let (code, metrics) =
        ferry_e2e::fleet::http_raw(http, "GET", "/metrics", ferry_e2e::fleet::ADMIN, "");
    assert_eq!(code, 200);
    for refused in [
        "ferry_telemetry_unauthenticated_total",
        "ferry_telemetry_refused_total",
    ] {
        let line = metrics.lines().find(|l| l.starts_with(refused));
        assert!(
            line.is_none_or(|l| l.ends_with(" 0")),
            "{refused}: {line:?}"
        );
    }
    assert!(sim.child.try_wait().unwrap().is_none());
}

#[test]
fn enrolled_agent_publishes_telemetry_as_itself_to_the_broker_it_was_given() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let bundle = keys.bundle("fraud", 1, "pub", &[]);
    let server = Server::start(&tmp.path().join("server"), &[]);
    let data = tmp.path().join("agent");
    let id = enroll_with_bundle(&server, &keys, &bundle, &data);
    // The enrollment named the server's (embedded) broker, without
    // credentials.
    let identity: Value =
        serde_json::from_slice(&std::fs::read(data.join("fleet").join("device.json")).unwrap())
            .unwrap();
    let broker = identity["mqtt_url"].as_str().unwrap().to_string();
    assert!(broker.starts_with("mqtt://127.0.0.1:"), "{identity}");
    // No telemetry flag at all: the agent uses its enrollment.
    let agent = Agent::start(&data, &id, &[]);
    deploy(&server, "fraud", "1", "");
    wait_for("v1 serving", LONG, || {
        (agent.infer("fraud").0 == 200).then_some(())
    });
    let http = server.url.trim_start_matches("http://");
    let dev = wait_for("the device's health at the control plane", LONG, || {
        let (code, body) =
            ferry_e2e::fleet::http_raw(http, "GET", "/api/v1/devices", ferry_e2e::fleet::ADMIN, "");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == id.as_str() && d["status"] == "online")
            .cloned()
    });
    // Published as the certificate's device and tenant.
    assert_eq!(dev["health"]["device"], id.as_str());
    assert_eq!(dev["health"]["tenant"], "default");
    // The embedded broker (rumqttd) speaks 3.1.1 only: the agent's MQTT 5
    // CONNECT was refused and it fell back.
    assert_eq!(dev["health"]["mqtt_protocol"], 4, "{dev}");
    // Its architecture, as the dashboard's fleet page shows it.
    let arch = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    assert_eq!(dev["health"]["arch"], arch.as_str(), "{dev}");
}

/// `ferry trust init` for tenant `default` with the shared root key.
fn make_root(keys: &Keys, version: &str, publishers: &[&str], revoke: &[&str], out: &str) {
    let root_key = keys.path("keys/root.key");
    let mut args: Vec<String> = vec![
        "trust".into(),
        "init".into(),
        "--root-key".into(),
        root_key.display().to_string(),
        "--tenant".into(),
        "default".into(),
        "--version".into(),
        version.into(),
        "--out".into(),
        keys.path(out).display().to_string(),
    ];
    for p in publishers {
        args.push("--publisher".into());
        args.push(keys.path(&format!("keys/{p}.pub")).display().to_string());
    }
    for r in revoke {
        let id = ferry::keyfile::read_public_key(&keys.path(&format!("keys/{r}.pub")))
            .unwrap()
            .id();
        args.push("--revoke".into());
        args.push(id.to_hex());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ferry_e2e::fleet::ok(&mut ferry_e2e::fleet::ferry(&refs));
}

/// The trust-root version `device` reports holding, per `ferry device list`.
fn held_root(server: &Server, device: &str) -> Option<u64> {
    let v = server.json(&["device", "list"]);
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == device)
        .and_then(|d| d["trust_root_version"].as_u64())
}

on_both_databases!(trust_root_rotation_reaches_devices_without_reenrollment);
/// C1: the operator rotates the tenant's trust root (publisher B added,
/// publisher A revoked) with `ferry trust push` only. Connected devices
/// take the new root without re-enrollment: they refuse A's new bundles and
/// activate B's. A device offline through two rotations follows the chain
/// from the root it holds when it reconnects, and a restarted agent runs
/// with the rotated root.
fn trust_root_rotation_reaches_devices_without_reenrollment(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = Server::start(&tmp.path().join("server"), &db.with(&[]));
    let v1 = keys.path("v1.root");
    ferry_e2e::fleet::ok(&mut server.cli(&["trust", "push", v1.to_str().unwrap()]));
    // Signed by A while A is trusted: the registry takes them now.
    let a1 = keys.bundle("fraud", 1, "pub", &[]);
    let a2 = keys.bundle("fraud", 2, "pub", &[]);
    for b in [&a1, &a2] {
        ferry_e2e::fleet::ok(&mut server.cli(&["model", "push", b.to_str().unwrap()]));
    }
    let ca = tmp.path().join("ca.pem");
    let tok = server.json(&[
        "device",
        "token",
        "create",
        "--labels",
        "site=rot",
        "--uses",
        "2",
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    let token = tok["token"].as_str().unwrap();
    let mut agents = Vec::new();
    for i in 0..2 {
        let data = tmp.path().join(format!("agent{i}"));
        let id = Agent::enroll(&server, token, &ca, &data, &v1);
        agents.push(Agent::start(&data, &id, &[]));
    }
    let d1 = deploy(&server, "fraud", "1", "site=rot");
    for a in &agents {
        wait_state(&server, &d1, &a.device_id, "active");
        wait_for("held root reported", LONG, || {
            (held_root(&server, &a.device_id) == Some(1)).then_some(())
        });
    }
    let ids: Vec<String> = agents.iter().map(|a| a.device_id.clone()).collect();

    // The second device goes offline for both rotations.
    agents[1].kill();
    let (online, offline) = (&agents[0], &ids[1]);

    // Rotation 1: B (pub2) added, A (pub) revoked.
    make_root(&keys, "2", &["pub2"], &["pub"], "rot-v2.root");
    ferry_e2e::fleet::ok(&mut server.cli(&[
        "trust",
        "push",
        keys.path("rot-v2.root").to_str().unwrap(),
    ]));
    wait_for("the online device holds v2", LONG, || {
        (held_root(&server, &online.device_id) == Some(2)).then_some(())
    });
    let rec = wait_for("audit of the device's new root", LONG, || {
        server.audit("device.trust_root").into_iter().find(|r| {
            r["outcome"] == "ok" && r["actor"] == format!("device {}", online.device_id).as_str()
        })
    });
    assert!(
        rec["detail"]
            .as_str()
            .unwrap()
            .contains("now holds v2 (was v1)"),
        "{rec}"
    );
    assert_eq!(
        std::fs::read(online.data.join("fleet/trust.root")).unwrap(),
        std::fs::read(keys.path("rot-v2.root")).unwrap()
    );
    // A's new bundle (registered before the rotation) is refused.
    let d2 = deploy(&server, "fraud", "2", "site=rot");
    let detail = wait_state(&server, &d2, &online.device_id, "failed");
    assert!(detail.starts_with("revoked_key"), "{detail}");
    assert_eq!(online.infer("fraud").1["model_version"], "1");
    // B's bundle activates.
    let b3 = keys.bundle("fraud", 3, "pub2", &[]);
    ferry_e2e::fleet::ok(&mut server.cli(&["model", "push", b3.to_str().unwrap()]));
    let d3 = deploy(&server, "fraud", "3", "site=rot");
    wait_state(&server, &d3, &online.device_id, "active");
    assert_eq!(online.infer("fraud").1["model_version"], "3");

    // Rotation 2 while the second device is still away.
    make_root(&keys, "3", &["pub2"], &["pub"], "rot-v3.root");
    ferry_e2e::fleet::ok(&mut server.cli(&[
        "trust",
        "push",
        keys.path("rot-v3.root").to_str().unwrap(),
    ]));
    wait_for("the online device holds v3", LONG, || {
        (held_root(&server, &online.device_id) == Some(3)).then_some(())
    });

    // The offline device comes back holding v1: it follows v1 -> v2 -> v3
    // and activates B's bundle, with the identity it enrolled with.
    agents[1].restart();
    let back = &agents[1];
    assert_eq!(&back.device_id, offline);
    wait_state(&server, &d3, offline, "active");
    wait_for("B's model serving on the returning device", LONG, || {
        (back.infer("fraud").1["model_version"] == "3").then_some(())
    });
    assert_eq!(held_root(&server, offline), Some(3));
    assert_eq!(
        std::fs::read(back.data.join("fleet/trust.root")).unwrap(),
        std::fs::read(keys.path("rot-v3.root")).unwrap()
    );
    // A restart runs with the rotated root from disk.
    agents[0].restart();
    wait_for("v3 serving after a restart", LONG, || {
        (agents[0].infer("fraud").1["model_version"] == "3").then_some(())
    });
    wait_for("restarted device reports v3", LONG, || {
        (held_root(&server, &ids[0]) == Some(3)).then_some(())
    });
    let devs = server.json(&["device", "list"]);
    assert_eq!(
        devs["devices"].as_array().unwrap().len(),
        2,
        "no re-enrollment"
    );
}

/// C1, expiry: a device whose trust root expired keeps serving what it
/// verified, `ferry-agent run` still starts and serves it, and a new
/// activation is refused with `trust_root_expired` in its report.
#[test]
fn an_expired_trust_root_keeps_serving_and_refuses_new_activations() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = Server::start(&tmp.path().join("server"), &[]);
    let a1 = keys.bundle("fraud", 1, "pub", &[]);
    let a2 = keys.bundle("fraud", 2, "pub", &[]);
    // A root that expires soon: long enough to push, enroll and activate
    // v1 on a loaded machine.
    let short = keys.path("short.root");
    ferry_e2e::fleet::ok(&mut ferry_e2e::fleet::ferry(&[
        "trust",
        "init",
        "--root-key",
        keys.path("keys/root.key").to_str().unwrap(),
        "--publisher",
        keys.path("keys/pub.pub").to_str().unwrap(),
        "--tenant",
        "default",
        "--expires",
        "40s",
        "--out",
        short.to_str().unwrap(),
    ]));
    ferry_e2e::fleet::ok(&mut server.cli(&["trust", "push", short.to_str().unwrap()]));
    for b in [&a1, &a2] {
        ferry_e2e::fleet::ok(&mut server.cli(&["model", "push", b.to_str().unwrap()]));
    }
    let ca = tmp.path().join("ca.pem");
    let tok = server.json(&[
        "device",
        "token",
        "create",
        "--labels",
        "site=exp",
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    let data = tmp.path().join("agent");
    let id = Agent::enroll(&server, tok["token"].as_str().unwrap(), &ca, &data, &short);
    let mut agent = Agent::start(&data, &id, &[]);
    let d1 = deploy(&server, "fraud", "1", "site=exp");
    wait_state(&server, &d1, &id, "active");
    // Wait until the root has expired (a fact, not a duration).
    let root = ferry_protocol::SignedTrustRoot::from_bytes(&std::fs::read(&short).unwrap())
        .unwrap()
        .open_any_time()
        .unwrap();
    wait_for("the trust root to expire", LONG, || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (now > root.expires_at).then_some(())
    });
    // Restarted past expiry: it starts and serves what it verified.
    agent.restart();
    wait_for("v1 serving after a restart past expiry", LONG, || {
        (agent.infer("fraud").1["model_version"] == "1").then_some(())
    });
    // A new activation is refused with the reason.
    let d2 = deploy(&server, "fraud", "2", "site=exp");
    let detail = wait_state(&server, &d2, &id, "failed");
    assert!(detail.starts_with("trust_root_expired"), "{detail}");
    assert_eq!(agent.infer("fraud").1["model_version"], "1");
}
