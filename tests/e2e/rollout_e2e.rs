//! Rollouts end to end: a real `ferry server --quic`, simulated devices
//! (`ferry-fleet-sim`) or real `ferry-agent` processes, the `ferry rollout`
//! CLI. Failing test vectors and failing requests come from the agent's
//! failpoints (`serving-test-vectors-fail`, `serving-infer-error`), set on
//! every agent: only the devices a rollout gives the version ever run it.
#![allow(clippy::unwrap_used)]

use ferry_e2e::db::Db;
use ferry_e2e::fleet::{
    device_token, ok, run, simulated_devices, wait_connected, wait_for, Agent, Keys, Proc, Server,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);

/// A server with the trust root and `fraud` v1 and v2 pushed.
fn server(tmp: &Path, env: &[(&str, &str)]) -> (Server, Keys) {
    let keys = Keys::new(&tmp.join("k"));
    let mut env = env.to_vec();
    env.push(("FERRY_ROLLOUT_TICK_MS", "100"));
    let server = Server::start(&tmp.join("server"), &env);
    ok(&mut server.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    for v in [1, 2] {
        let b = keys.bundle("fraud", v, "pub", &[]);
        ok(&mut server.cli(&["model", "push", b.to_str().unwrap()]));
    }
    (server, keys)
}

/// `n` simulated devices enrolled with `tok`, connected; `extra` goes to
/// `ferry-fleet-sim` (e.g. `--telemetry`).
fn simulate(server: &Server, tmp: &Path, tok: &Value, ca: &Path, n: usize, extra: &[&str]) -> Proc {
    let sim = simulated_devices(server, tok, ca, &tmp.join("sim"), n, 300, extra);
    wait_connected(server, n, LONG);
    sim
}

/// Deploys `fraud` v1 to `selector` and waits until `n` devices run it;
/// the deployment's id.
fn deploy_v1(server: &Server, selector: &str, n: u64) -> String {
    let v = server.json(&["deploy", "fraud", "--version", "1", "--selector", selector]);
    let id = v["id"].as_str().unwrap().to_string();
    wait_for("every device active on v1", LONG, || {
        (server.deployment(&id)["summary"]["active"] == n).then_some(())
    });
    id
}

fn write(tmp: &Path, name: &str, text: &str) -> PathBuf {
    let p = tmp.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn start(server: &Server, args: &[&str]) -> String {
    let mut a = vec!["rollout", "start", "fraud", "--version", "2"];
    a.extend_from_slice(args);
    let v = server.json(&a);
    v["id"].as_str().unwrap().to_string()
}

fn show(server: &Server, id: &str) -> Value {
    server.json(&["rollout", "show", id])
}

fn wait_phase(server: &Server, id: &str, phase: &str) -> Value {
    wait_for(&format!("rollout {id} {phase}"), LONG, || {
        let v = show(server, id);
        (v["rollout"]["phase"] == phase).then_some(v)
    })
}

/// Devices of each wave, in order.
fn wave_devices(v: &Value) -> Vec<Vec<Value>> {
    v["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["devices"].as_array().unwrap().clone())
        .collect()
}

/// The retained rollout state on the broker (Mosquitto on 1883).
fn retained_state(tenant: &str, id: &str) -> Value {
    let out = run(std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", "1883", "-C", "1", "-W", "10", "-t"])
        .arg(format!("ferry/v1/{tenant}/_control/rollouts/{id}")));
    assert!(out.status.success(), "no retained rollout state: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits for rollout `id` to abort on `gate` failing while its first wave
/// held one device; that canary.
fn aborted_by_gate_at_one_canary(server: &Server, id: &str, gate: &str) -> String {
    let v = wait_phase(server, id, "aborted");
    let cause = &v["phase_detail"]["cause"];
    assert_eq!(cause["by"], "gate", "{v}");
    assert_eq!(cause["report"]["gate"], gate, "{v}");
    assert_eq!(cause["report"]["verdict"], "fail", "{v}");
    let waves = wave_devices(&v);
    assert_eq!(waves.len(), 1, "{v}");
    assert_eq!(waves[0].len(), 1, "{v}");
    waves[0][0]["device"].as_str().unwrap().to_string()
}

/// The audit trail: v2 was assigned to `canary` alone, and rolled back
/// from it to v1.
fn only_the_canary_was_given_v2_and_taken_back(server: &Server, canary: &str) {
    let assigned = server.audit("rollout.assign");
    assert_eq!(assigned.len(), 1, "{assigned:?}");
    assert!(assigned[0]["detail"]
        .as_str()
        .unwrap()
        .ends_with(&format!(": 1 devices: {canary}")));
    let rolled = server.audit("rollout.rollback");
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert!(rolled[0]["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("{canary}->v1")));
}

/// (a) A good version goes 1 % → 10 % → 50 % → 100 % of 20 devices, each
/// wave baking 1 s, and ends with every device active on it; the rollout
/// becomes a deployment, every step is audited and its state is retained
/// on the broker.
#[test]
fn a_good_version_walks_every_wave_to_every_device() {
    if std::net::TcpStream::connect("127.0.0.1:1883").is_err() {
        ferry_e2e::skip_or_fail("Mosquitto on 127.0.0.1:1883");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (server, _keys) = server(tmp.path(), &[("FERRY_MQTT_URL", "mqtt://127.0.0.1:1883")]);
    let ca = tmp.path().join("ca.pem");
    let tok = device_token(&server, "site=berlin", 20, &ca);
    let _sim = simulate(&server, tmp.path(), &tok, &ca, 20, &[]);
    deploy_v1(&server, "site=berlin", 20);

    let policy = write(
        tmp.path(),
        "quick.toml",
        "waves = [\"1%\", \"10%\", \"50%\", \"100%\"]\nbake_secs = 1\n\n[model]\ngates = []\n",
    );
    let p = server.json(&[
        "rollout",
        "policy",
        "put",
        "quick",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(p["version"], 1, "{p}");
    let p = server.json(&["rollout", "policy", "list"]);
    assert_eq!(p["policies"][0]["name"], "quick", "{p}");

    let t0 = std::time::Instant::now();
    let id = start(&server, &["--selector", "site=berlin", "--policy", "quick"]);
    let v = wait_phase(&server, &id, "finished");
    // Measured, not asserted (docs/BENCHMARKS.md).
    eprintln!(
        "rollout of 20 devices, 4 waves of 1 s bake: finished in {:?}",
        t0.elapsed()
    );
    // Waves of 1, 2, 10 and 20 devices: 1, 1, 8 and 10 new ones.
    let sizes: Vec<usize> = wave_devices(&v).iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1, 8, 10], "{v}");
    for d in wave_devices(&v).iter().flatten() {
        assert_eq!(d["outcome"], "active", "{v}");
        assert_eq!(d["version"], 2, "{v}");
        assert_eq!(d["previous"], 1, "{v}");
    }
    assert_eq!(v["rollout"]["active"], 20, "{v}");
    // Each wave was assigned once, in order, as the audit trail says.
    let assigned: Vec<String> = server
        .audit("rollout.assign")
        .iter()
        .filter(|r| r["target"] == id.as_str())
        .map(|r| r["detail"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(assigned.len(), 4, "{assigned:?}");
    for (i, n) in [1, 1, 8, 10].iter().enumerate() {
        let want = format!("wave {}: {n} devices", i + 1);
        assert!(assigned.iter().any(|d| d.contains(&want)), "{assigned:?}");
    }
    assert_eq!(server.audit("rollout.finish").len(), 1);
    assert_eq!(server.audit("rollout.start").len(), 1);
    // The finished rollout is now a deployment of v2 with every device on it.
    let deps = server.json(&["deployments"]);
    let dep = deps["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["created_by"] == format!("rollout {id}"))
        .cloned()
        .unwrap_or_else(|| panic!("no deployment from the rollout: {deps}"));
    assert_eq!(dep["version"], 2);
    let status = server.deployment(dep["id"].as_str().unwrap());
    assert_eq!(status["summary"]["active"], 20, "{status}");
    // Third parties follow the rollout on the broker.
    let state = retained_state("default", &id);
    assert_eq!(state["phase"], "finished", "{state}");
    assert_eq!(state["active"], 20, "{state}");
    // `rollout list` shows it.
    let l = server.json(&["rollout", "list"]);
    assert_eq!(l["rollouts"][0]["id"], id.as_str(), "{l}");
}

/// Enrolls and starts `n` real agents labelled `labels`, each with
/// `FAILPOINTS=failpoints` and one-second telemetry windows.
fn agents(
    server: &Server,
    keys: &Keys,
    tmp: &Path,
    labels: &str,
    n: usize,
    failpoints: &str,
) -> Vec<Agent> {
    let ca = tmp.join("agent-ca.pem");
    let tok = device_token(server, labels, n, &ca);
    let token = tok["token"].as_str().unwrap().to_string();
    (0..n)
        .map(|i| {
            let data = tmp.join(format!("agent{i}"));
            let id = Agent::enroll(server, &token, &ca, &data, &keys.path("v1.root"));
            let mut a = Agent {
                proc: None,
                data,
                addr: String::new(),
                device_id: id,
                extra: vec!["--window-secs".into(), "1".into()],
            };
            a.restart_with_failpoints(failpoints);
            a
        })
        .collect()
}

/// Whether the agent's local store holds `fraud` v`version`.
fn stored(a: &Agent, version: u64) -> bool {
    a.data
        .join(format!("models/fraud/{version:020}.ferry"))
        .exists()
}

fn serving(a: &Agent) -> Value {
    a.infer("fraud").1["model_version"].clone()
}

/// (b) A version whose test vectors fail on the devices given it pauses
/// the rollout at its first wave; no other device is given it, and the
/// canary keeps serving the previous version. Abort ends it.
#[test]
fn failing_test_vectors_pause_at_the_first_wave() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, keys) = server(tmp.path(), &[]);
    let agents = agents(
        &server,
        &keys,
        tmp.path(),
        "site=paris",
        2,
        "serving-test-vectors-fail=return(2)",
    );
    deploy_v1(&server, "site=paris", 2);
    let policy = write(
        tmp.path(),
        "p.toml",
        "waves = [\"1%\", \"100%\"]\nbake_secs = 1\n\n[model]\ngates = []\n",
    );
    let id = start(
        &server,
        &[
            "--selector",
            "site=paris",
            "--policy-file",
            policy.to_str().unwrap(),
        ],
    );
    let v = wait_phase(&server, &id, "paused");
    let waves = wave_devices(&v);
    assert_eq!(waves.len(), 1, "{v}");
    assert_eq!(waves[0].len(), 1, "{v}");
    assert_eq!(waves[0][0]["outcome"], "failed", "{v}");
    assert!(
        waves[0][0]["detail"]
            .as_str()
            .unwrap()
            .contains("test_vector"),
        "{v}"
    );
    assert_eq!(v["phase_detail"]["reason"]["by"], "gate", "{v}");
    assert_eq!(
        v["phase_detail"]["reason"]["report"]["gate"], "install",
        "{v}"
    );
    assert_eq!(v["waiting"].as_array().unwrap().len(), 1, "{v}");
    for a in &agents {
        assert_eq!(serving(a), "1");
    }
    // Paused, it stays paused (the driver keeps polling).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(show(&server, &id)["rollout"]["phase"], "paused");
    let out = ok(&mut server.cli(&["rollout", "abort", &id]));
    assert!(out.contains("aborted"), "{out}");
    assert_eq!(server.audit("rollout.abort").len(), 1);
    assert_eq!(server.audit("rollout.hold").len(), 1);
}

/// (c) A version whose requests fail on the canary is rolled back by the
/// error-rate gate: the canary goes back to v1 (restored from its own
/// store), and no device outside the canary wave ever received v2.
#[test]
fn a_high_error_rate_on_the_canary_rolls_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, keys) = server(tmp.path(), &[]);
    let agents = agents(
        &server,
        &keys,
        tmp.path(),
        "site=lyon",
        3,
        "serving-infer-error=return(2)",
    );
    let dep = deploy_v1(&server, "site=lyon", 3);
    let policy = write(
        tmp.path(),
        "p.toml",
        "waves = [\"1%\", \"100%\"]\nbake_secs = 600\nmin_requests = 5\n\n[[model.gates]]\nmetric = \"error_rate\"\nagainst = \"absolute\"\nmax = 0.05\n",
    );
    // Requests to every device, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = agents
        .iter()
        .map(|a| {
            let addr = a.addr.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let probe = Agent {
                    proc: None,
                    data: Default::default(),
                    addr,
                    device_id: String::new(),
                    extra: vec![],
                };
                while !stop.load(Ordering::Relaxed) {
                    let _ = probe.infer("fraud");
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    let id = start(
        &server,
        &[
            "--selector",
            "site=lyon",
            "--policy-file",
            policy.to_str().unwrap(),
        ],
    );
    let started = std::time::Instant::now();
    let canary = aborted_by_gate_at_one_canary(&server, &id, "error_rate vs absolute");
    let (canary_agent, others): (Vec<&Agent>, Vec<&Agent>) =
        agents.iter().partition(|a| a.device_id == canary);
    // The canary is back on v1, and the control plane hears it.
    wait_for("the canary serving v1 again", LONG, || {
        (serving(canary_agent[0]) == "1").then_some(())
    });
    // The control plane hears it: the v1 deployment is the canary's again
    // and it reports v1 active.
    wait_for("the canary's report of v1", LONG, || {
        let d = server.deployment(&dep);
        d["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["device"] == canary.as_str() && x["state"] == "active")
            .then_some(())
    });
    // Measured, not asserted (docs/BENCHMARKS.md).
    eprintln!(
        "rollout start -> canary rolled back and reported on v1: {:?}",
        started.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    // Only the canary was ever assigned v2, and no other device holds any
    // of its bytes.
    only_the_canary_was_given_v2_and_taken_back(&server, &canary);
    for a in others {
        assert_eq!(serving(a), "1");
        assert!(!stored(a, 2));
        let partial = a.data.join("fleet/partial");
        let n = std::fs::read_dir(&partial).map_or(0, |d| d.count());
        assert_eq!(n, 0, "{} holds a partial download", a.device_id);
    }
    // The canary ran v2 and went back to v1 from its store.
    assert!(stored(canary_agent[0], 1) && stored(canary_agent[0], 2));
}

/// (c) The model gates that only telemetry can trip, over simulated devices
/// reporting per version (signed summaries through the server's broker):
/// a version whose outputs shift, or whose accuracy on labelled rows drops
/// 10 points against what the same devices had on v1, is rolled back from
/// its canary, and no other device is ever given it.
#[test]
fn a_prediction_shift_on_the_canary_rolls_it_back() {
    rolled_back_by_telemetry(
        "v2:class.0=0.1,class.1=0.9",
        "metric = \"prediction_shift\"\nagainst = \"previous_version\"\nmeasure = \"jensen_shannon\"\nmax = 0.05\n",
        "prediction_shift vs previous version",
    );
}

#[test]
fn a_10_point_accuracy_drop_on_the_canary_rolls_it_back() {
    rolled_back_by_telemetry(
        "v2:accuracy=0.85",
        "metric = \"accuracy\"\nagainst = \"previous_version\"\nalpha = 0.01\nmin_labelled = 200\n",
        "accuracy vs previous version",
    );
}

/// Ten simulated devices on v1 (accuracy 95 %, half the rows labelled,
/// classes 0 and 1 evenly), v2 with `bad_profile`, rolled out in waves of
/// 10 % and 100 % under the one `gate`.
fn rolled_back_by_telemetry(bad_profile: &str, gate: &str, gate_name: &str) {
    let n = 10;
    let tmp = tempfile::tempdir().unwrap();
    let (server, _keys) = server(tmp.path(), &[]);
    let ca = tmp.path().join("ca.pem");
    let tok = device_token(&server, "site=oslo", n, &ca);
    let _sim = simulate(
        &server,
        tmp.path(),
        &tok,
        &ca,
        n,
        &[
            "--telemetry",
            "--telemetry-window-secs",
            "1",
            "--telemetry-requests",
            "200",
            "--telemetry-profile",
            "default:error_rate=0,accuracy=0.95,labelled=0.5",
            "--telemetry-profile",
            bad_profile,
        ],
    );
    let dep = deploy_v1(&server, "site=oslo", n as u64);
    // What the devices saw on v1 is the reference: three windows each.
    wait_for("three v1 windows from every device", LONG, || {
        let v = server.json(&[
            "model",
            "metrics",
            "fraud",
            "--version",
            "1",
            "--limit",
            "10000",
        ]);
        let mut per = std::collections::HashMap::new();
        for w in v["windows"].as_array().unwrap() {
            *per.entry(w["device"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        (per.len() == n && per.values().all(|&c| c >= 3)).then_some(())
    });
    let policy = write(
        tmp.path(),
        "p.toml",
        &format!("waves = [\"10%\", \"100%\"]\nbake_secs = 600\nmin_requests = 100\n\n[[model.gates]]\n{gate}"),
    );
    let id = start(
        &server,
        &[
            "--selector",
            "site=oslo",
            "--policy-file",
            policy.to_str().unwrap(),
        ],
    );
    let canary = aborted_by_gate_at_one_canary(&server, &id, gate_name);
    // The canary reports v1 active again; every device is on v1.
    wait_for("every device active on v1 again", LONG, || {
        let d = server.deployment(&dep);
        let all = d["devices"].as_array().unwrap();
        (all.len() == n && all.iter().all(|x| x["state"] == "active")).then_some(())
    });
    only_the_canary_was_given_v2_and_taken_back(&server, &canary);
    // Only the canary ever reported a v2 window.
    let v2 = server.json(&[
        "model",
        "metrics",
        "fraud",
        "--version",
        "2",
        "--limit",
        "10000",
    ]);
    let reporters: std::collections::BTreeSet<&str> = v2["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["device"].as_str().unwrap())
        .collect();
    assert_eq!(reporters.into_iter().collect::<Vec<_>>(), [canary.as_str()]);
}

/// (d) In approval mode the rollout waits after each wave for `ferry
/// rollout approve`: a viewer's approval is refused (403), an operator's
/// starts the next wave.
#[test]
fn approval_mode_waits_for_an_operator() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _keys) = server(tmp.path(), &[]);
    let ca = tmp.path().join("ca.pem");
    let tok = device_token(&server, "site=oslo", 4, &ca);
    let _sim = simulate(&server, tmp.path(), &tok, &ca, 4, &[]);
    deploy_v1(&server, "site=oslo", 4);
    let policy = write(
        tmp.path(),
        "p.json",
        r#"{"waves": ["25%", "100%"], "bake_secs": 1, "on_success": "approve", "model": {"gates": []}}"#,
    );
    let id = start(
        &server,
        &[
            "--selector",
            "site=oslo",
            "--policy-file",
            policy.to_str().unwrap(),
        ],
    );
    let v = wait_phase(&server, &id, "awaiting_approval");
    assert_eq!(wave_devices(&v).len(), 1, "{v}");
    // It waits: still one wave a while later.
    std::thread::sleep(Duration::from_millis(1500));
    let v = show(&server, &id);
    assert_eq!(v["rollout"]["phase"], "awaiting_approval");
    assert_eq!(wave_devices(&v).len(), 1, "{v}");

    let viewer = |role: &str| -> String {
        let t = server.json(&["token", "create", "--name", role, "--role", role]);
        t["token"].as_str().unwrap().to_string()
    };
    let (viewer_token, operator_token) = (viewer("viewer"), viewer("operator"));
    let as_token = |t: &str, args: &[&str]| {
        let mut c = server.cli(args);
        c.env("FERRY_TOKEN", t);
        run(&mut c)
    };
    // A viewer may look, not approve.
    let out = as_token(&viewer_token, &["rollout", "show", &id]);
    assert!(out.status.success());
    let out = as_token(&viewer_token, &["rollout", "approve", &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not rollout.approve"), "{err}");
    let http = server.url.trim_start_matches("http://");
    let (code, body) = ferry_e2e::fleet::http_raw(
        http,
        "POST",
        &format!("/api/v1/rollouts/{id}/approve"),
        &viewer_token,
        "",
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(show(&server, &id)["rollout"]["phase"], "awaiting_approval");
    // An operator approves: the last wave runs and the rollout finishes.
    let out = as_token(&operator_token, &["rollout", "approve", &id]);
    assert!(out.status.success(), "{out:?}");
    let v = wait_phase(&server, &id, "finished");
    let sizes: Vec<usize> = wave_devices(&v).iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 3], "{v}");
    let approvals = server.audit("rollout.approve");
    assert_eq!(
        approvals.iter().filter(|r| r["outcome"] == "ok").count(),
        1,
        "{approvals:?}"
    );
    assert!(approvals.iter().any(|r| r["outcome"] == "refused"));
}

/// (3) Two replicas over one PostgreSQL: the one holding a rollout's lease
/// drives it; killed, the other takes the rollout over and finishes it.
#[test]
fn a_second_replica_takes_over_a_rollout_from_a_killed_one() {
    let Some(db) = Db::postgres() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let env_a = db.with(&[
        ("FERRY_ROLLOUT_TICK_MS", "100"),
        ("FERRY_ROLLOUT_LEASE_MS", "2000"),
    ]);
    // The replica that starts a rollout holds its lease first (A); B polls
    // rarely.
    let env_b = db.with(&[
        ("FERRY_ROLLOUT_TICK_MS", "1500"),
        ("FERRY_ROLLOUT_LEASE_MS", "2000"),
    ]);
    let mut a = Server::start(&tmp.path().join("a"), &env_a);
    let b = Server::start(&tmp.path().join("b"), &env_b);
    ok(&mut b.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    for v in [1, 2] {
        let bundle = keys.bundle("fraud", v, "pub", &[]);
        ok(&mut b.cli(&["model", "push", bundle.to_str().unwrap()]));
    }
    // The devices are B's (its CA, its QUIC endpoint).
    let ca = tmp.path().join("ca.pem");
    let tok = device_token(&b, "site=rome", 6, &ca);
    let _sim = simulate(&b, tmp.path(), &tok, &ca, 6, &[]);
    deploy_v1(&b, "site=rome", 6);
    let policy = write(
        tmp.path(),
        "p.toml",
        "waves = [\"1%\", \"50%\", \"100%\"]\nbake_secs = 3\n\n[model]\ngates = []\n",
    );
    let id = start(
        &a,
        &[
            "--selector",
            "site=rome",
            "--policy-file",
            policy.to_str().unwrap(),
        ],
    );
    let holder_a = wait_for("A driving the rollout", LONG, || {
        let v = show(&b, &id);
        let h = v["rollout"]["lease_holder"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (!h.is_empty() && v["rollout"]["assigned"] == 1).then_some(h)
    });
    // A is killed (SIGKILL) in the first wave's bake.
    a.proc.child.kill().unwrap();
    a.proc.child.wait().unwrap();
    let v = wait_phase(&b, &id, "finished");
    assert_ne!(v["rollout"]["lease_holder"], holder_a.as_str(), "{v}");
    let sizes: Vec<usize> = wave_devices(&v).iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 2, 3], "{v}");
    assert_eq!(v["rollout"]["active"], 6, "{v}");
}

/// RBAC of every rollout route: viewers list and show, operators and up
/// change; below the role is 403 (audited), another tenant sees 404,
/// without a token 401.
#[test]
fn rollout_rbac_matrix() {
    const ROLES: [&str; 4] = ["viewer", "operator", "publisher", "admin"];
    let rank = |r: &str| ROLES.iter().position(|x| *x == r).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (server, _keys) = server(tmp.path(), &[]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let policy = write(tmp.path(), "p.toml", "bake_secs = 1\n");
    server.json(&["rollout", "policy", "put", "p", policy.to_str().unwrap()]);
    let ro = start(&server, &["--selector", "nothing=matches", "--policy", "p"]);
    let start_body = r#"{"model": "fraud", "version": 2, "selector": {"nothing": "matches"}}"#;
    let put_body = r#"{"document": "bake_secs = 2"}"#;
    // (method, path, body, least role, whether 409 may answer instead of 200)
    let cells = [
        ("POST", "/api/v1/rollouts", start_body, "operator", false),
        ("GET", "/api/v1/rollouts", "", "viewer", false),
        ("GET", "/api/v1/rollouts/{ro}", "", "viewer", false),
        ("POST", "/api/v1/rollouts/{ro}/pause", "", "operator", true),
        ("POST", "/api/v1/rollouts/{ro}/resume", "", "operator", true),
        (
            "POST",
            "/api/v1/rollouts/{ro}/approve",
            "",
            "operator",
            true,
        ),
        ("POST", "/api/v1/rollouts/{ro}/abort", "", "operator", true),
        ("GET", "/api/v1/rollouts/policies", "", "viewer", false),
        (
            "GET",
            "/api/v1/rollouts/policies/{name}",
            "",
            "viewer",
            false,
        ),
        (
            "PUT",
            "/api/v1/rollouts/policies/{name}",
            put_body,
            "operator",
            false,
        ),
    ];
    // Every rollout operation of the OpenAPI document is a cell.
    let ops: Vec<(String, String)> = ferry::server::openapi::operations()
        .into_iter()
        .filter(|o| o.tags.iter().any(|t| t == "rollouts"))
        .map(|o| (o.method, o.path.replace("{id}", "{ro}")))
        .collect();
    assert_eq!(ops.len(), cells.len(), "{ops:?}");
    for (m, p) in &ops {
        assert!(
            cells.iter().any(|c| c.0 == m.as_str() && c.1 == p.as_str()),
            "{m} {p} is not in the rollout RBAC matrix"
        );
    }
    let mut failures = Vec::new();
    for r in ROLES {
        let t = server.json(&["token", "create", "--name", r, "--role", r]);
        let token = t["token"].as_str().unwrap().to_string();
        for (method, route, body, needs, may_conflict) in cells {
            let path = route.replace("{ro}", &ro).replace("{name}", "p");
            let (status, text) = ferry_e2e::fleet::http_raw(&addr, method, &path, &token, body);
            let ok = if rank(r) < rank(needs) {
                status == 403
            } else {
                status == 200 || (may_conflict && status == 409)
            };
            if !ok {
                failures.push(format!("{method} {path} as {r}: {status} {text}"));
            }
        }
    }
    // Another tenant's admin sees none of it.
    let beta = server.json(&[
        "token", "create", "--name", "b", "--role", "admin", "--tenant", "beta",
    ]);
    let beta = beta["token"].as_str().unwrap();
    let (status, _) =
        ferry_e2e::fleet::http_raw(&addr, "GET", &format!("/api/v1/rollouts/{ro}"), beta, "");
    assert_eq!(status, 404);
    let (status, text) = ferry_e2e::fleet::http_raw(&addr, "GET", "/api/v1/rollouts", beta, "");
    assert_eq!(status, 200);
    assert!(!text.contains(&ro), "{text}");
    for (method, route, ..) in cells {
        let path = route.replace("{ro}", &ro).replace("{name}", "p");
        let (status, _) = ferry_e2e::fleet::http_raw(&addr, method, &path, "", "{}");
        if status != 401 {
            failures.push(format!("{method} {path} without a token: {status}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Bad input: a clear error, and nothing stored.
    let admin = ferry_e2e::fleet::ADMIN;
    let bad = r#"{"document": "waves = [\"50%\", \"10%\", \"100%\"]"}"#;
    let (status, text) =
        ferry_e2e::fleet::http_raw(&addr, "PUT", "/api/v1/rollouts/policies/bad", admin, bad);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("bad_policy") && text.contains("waves"),
        "{text}"
    );
    let (status, _) =
        ferry_e2e::fleet::http_raw(&addr, "GET", "/api/v1/rollouts/policies/bad", admin, "");
    assert_eq!(status, 404);
    let out = run(&mut server.cli(&[
        "rollout",
        "start",
        "fraud",
        "--version",
        "2",
        "--policy",
        "nope",
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rollout policy \"nope\""), "{err}");
    let out = run(&mut server.cli(&["rollout", "start", "fraud", "--version", "9"]));
    assert!(!out.status.success());
}

/// The rollback rule against an attacker: the server's replay hook resends
/// the connection's first desired state (which assigned v1) after every
/// newer one. The device holds v1 (it served it before v2), so only the
/// sequence check stands between the replay and a downgrade: it is
/// refused, audited, and v2 keeps serving. A fresh signed state (a newer
/// deployment of v1) does send it back, from its store.
#[test]
fn a_replayed_desired_state_cannot_send_a_device_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, keys) = server(tmp.path(), &[("FAILPOINTS", "fleet-replay-desired=return")]);
    // v1 is deployed before the device connects: its first state holds it.
    server.json(&[
        "deploy",
        "fraud",
        "--version",
        "1",
        "--selector",
        "site=rome",
    ]);
    let agents = agents(&server, &keys, tmp.path(), "site=rome", 1, "");
    let a = &agents[0];
    wait_for("v1 serving", LONG, || (serving(a) == "1").then_some(()));
    server.json(&[
        "deploy",
        "fraud",
        "--version",
        "2",
        "--selector",
        "site=rome",
    ]);
    wait_for("v2 serving", LONG, || (serving(a) == "2").then_some(()));
    wait_for("the replayed state refused", LONG, || {
        server.audit("device.desired_state").into_iter().find(|r| {
            r["outcome"] == "refused"
                && r["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("replayed_desired_state")
        })
    });
    assert!(
        stored(a, 1),
        "v1 is held: only the sequence check refused it"
    );
    // A while later: still v2.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(serving(a), "2");
    // A fresh signed state sends it back to v1, from its store.
    server.json(&[
        "deploy",
        "fraud",
        "--version",
        "1",
        "--selector",
        "site=rome",
    ]);
    wait_for("v1 serving again", LONG, || {
        (serving(a) == "1").then_some(())
    });
}

/// A control-plane restart resumes a rollout where it was: awaiting
/// approval after its first wave before the restart (kill -9), it still is
/// after, and an approval finishes it on the devices, which reconnect to
/// the same QUIC address.
#[test]
fn a_restarted_server_resumes_a_rollout() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, _keys) = server(tmp.path(), &[]);
    let ca = tmp.path().join("ca.pem");
    let tok = device_token(&server, "site=kyiv", 4, &ca);
    let _sim = simulate(&server, tmp.path(), &tok, &ca, 4, &[]);
    deploy_v1(&server, "site=kyiv", 4);
    let policy = write(
        tmp.path(),
        "p.toml",
        "waves = [\"50%\", \"100%\"]\nbake_secs = 1\non_success = \"approve\"\n\n[model]\ngates = []\n",
    );
    let id = start(
        &server,
        &[
            "--selector",
            "site=kyiv",
            "--policy-file",
            policy.to_str().unwrap(),
        ],
    );
    let before = wait_phase(&server, &id, "awaiting_approval");
    server.proc.child.kill().unwrap();
    server.proc.child.wait().unwrap();
    let quic = server.quic.clone();
    server = Server::start_with(
        &tmp.path().join("server"),
        &[("FERRY_ROLLOUT_TICK_MS", "100")],
        &quic,
        &[],
    );
    let after = show(&server, &id);
    assert_eq!(after["rollout"]["phase"], "awaiting_approval", "{after}");
    assert_eq!(after["waves"], before["waves"], "{after}");
    ok(&mut server.cli(&["rollout", "approve", &id]));
    let v = wait_phase(&server, &id, "finished");
    let sizes: Vec<usize> = wave_devices(&v).iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2], "{v}");
    assert_eq!(v["rollout"]["active"], 4, "{v}");
}
