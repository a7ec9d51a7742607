//! Runtime targeting end to end: a version built with `ferry bundle build
//! --runtime burn` reaches only the devices whose fleet hello offers a
//! burn GPU runtime, through deployments and rollouts alike; the others
//! keep the version they run and show `unsupported` with the reason.
//! Real `ferry server --quic` and `ferry-fleet-sim` processes, two
//! simulators differing only in the runtimes their devices offer.
#![allow(clippy::unwrap_used)]

use ferry_e2e::fleet::{
    device_token, ok, simulated_devices, wait_connected, wait_for, Keys, Proc, Server,
};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);
const CPU: usize = 3;
const GPU: usize = 2;

/// A server with `fraud` v1 (any runtime) and v2 (`--runtime burn`)
/// pushed, three CPU devices and two that offer `onnx-burn-cuda`, all
/// labelled `site=plant` and connected; the devices' ids by kind.
struct Plant {
    server: Server,
    _sims: Vec<Proc>,
    cpu: Vec<String>,
    gpu: Vec<String>,
}

fn plant(tmp: &Path, env: &[(&str, &str)]) -> Plant {
    let keys = Keys::new(&tmp.join("k"));
    let server = Server::start(&tmp.join("server"), env);
    ok(&mut server.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    let v1 = keys.bundle("fraud", 1, "pub", &[]);
    let v2 = keys.bundle("fraud", 2, "pub", &["--runtime", "burn"]);
    for b in [v1, v2] {
        ok(&mut server.cli(&["model", "push", b.to_str().unwrap()]));
    }
    let mut sims = Vec::new();
    for (kind, n, runtimes) in [("cpu", CPU, "onnx"), ("gpu", GPU, "onnx,onnx-burn-cuda")] {
        let ca = tmp.join(format!("{kind}-ca.pem"));
        let tok = device_token(&server, "site=plant", n, &ca);
        sims.push(simulated_devices(
            &server,
            &tok,
            &ca,
            &tmp.join(kind),
            n,
            300,
            &["--runtimes", runtimes],
        ));
    }
    wait_connected(&server, CPU + GPU, LONG);
    // Which device is which, from what their hellos offered.
    let list = wait_for("every device's runtimes known", LONG, || {
        let v = server.json(&["device", "list"]);
        let all = v["devices"].as_array().unwrap().clone();
        all.iter().all(|d| d["runtimes"].is_array()).then_some(all)
    });
    let ids = |burn: bool| -> Vec<String> {
        list.iter()
            .filter(|d| {
                d["runtimes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == "onnx-burn-cuda")
                    == burn
            })
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (cpu, gpu) = (ids(false), ids(true));
    assert_eq!((cpu.len(), gpu.len()), (CPU, GPU), "{list:?}");
    Plant {
        server,
        _sims: sims,
        cpu,
        gpu,
    }
}

fn deploy(server: &Server, version: &str) -> String {
    let v = server.json(&[
        "deploy",
        "fraud",
        "--version",
        version,
        "--selector",
        "site=plant",
    ]);
    v["id"].as_str().unwrap().to_string()
}

/// Each device's (state, detail) in deployment `id`.
fn states(server: &Server, id: &str) -> Vec<(String, String, String)> {
    server.deployment(id)["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
                d["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_deployment_of_a_burn_version_reaches_only_the_devices_that_offer_burn() {
    let tmp = tempfile::tempdir().unwrap();
    let p = plant(tmp.path(), &[]);
    let s = &p.server;
    let v1 = deploy(s, "1");
    wait_for("every device active on v1", LONG, || {
        (s.deployment(&v1)["summary"]["active"] == (CPU + GPU) as u64).then_some(())
    });

    let v2 = deploy(s, "2");
    let dep = s.deployment(&v2);
    assert_eq!(dep["runtime"], "burn", "{dep}");
    wait_for("the GPU devices active on v2", LONG, || {
        (s.deployment(&v2)["summary"]["active"] == GPU as u64).then_some(())
    });
    for (device, state, detail) in states(s, &v2) {
        if p.cpu.contains(&device) {
            assert_eq!(state, "unsupported", "{device}: {detail}");
            assert!(
                detail.contains("requires runtime burn") && detail.contains("offers onnx"),
                "{detail}"
            );
        } else {
            assert_eq!(state, "active", "{device}: {detail}");
        }
    }
    // The CPU devices keep v1; v1 is superseded on the GPU ones only.
    let on_v1 = states(s, &v1);
    for (device, state, _) in &on_v1 {
        let want = if p.gpu.contains(device) {
            "superseded"
        } else {
            "active"
        };
        assert_eq!(state, want, "{device}: {on_v1:?}");
    }
    // No CPU device was ever sent v2: none reported a refusal of it.
    let refused: Vec<Value> = s
        .audit("device.activate")
        .into_iter()
        .filter(|r| r["outcome"] != "ok")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

#[test]
fn a_rollout_of_a_burn_version_walks_only_the_devices_that_offer_burn() {
    if std::net::TcpStream::connect("127.0.0.1:1883").is_err() {
        ferry_e2e::skip_or_fail("Mosquitto on 127.0.0.1:1883");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = plant(
        tmp.path(),
        &[
            ("FERRY_MQTT_URL", "mqtt://127.0.0.1:1883"),
            ("FERRY_ROLLOUT_TICK_MS", "100"),
        ],
    );
    let s = &p.server;
    let v1 = deploy(s, "1");
    wait_for("every device active on v1", LONG, || {
        (s.deployment(&v1)["summary"]["active"] == (CPU + GPU) as u64).then_some(())
    });
    let policy = tmp.path().join("quick.toml");
    std::fs::write(
        &policy,
        "waves = [\"50%\", \"100%\"]\nbake_secs = 1\n\n[model]\ngates = []\n",
    )
    .unwrap();
    ok(&mut s.cli(&[
        "rollout",
        "policy",
        "put",
        "quick",
        policy.to_str().unwrap(),
    ]));
    let started = s.json(&[
        "rollout",
        "start",
        "fraud",
        "--version",
        "2",
        "--selector",
        "site=plant",
        "--policy",
        "quick",
    ]);
    let id = started["id"].as_str().unwrap().to_string();
    let v: Value = wait_for("the rollout finished", LONG, || {
        let v = s.json(&["rollout", "show", &id]);
        (v["rollout"]["phase"] == "finished").then_some(v)
    });
    let walked: Vec<String> = v["waves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["devices"].as_array().unwrap().clone())
        .map(|d| d["device"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = walked.clone();
    sorted.sort();
    let mut gpu = p.gpu.clone();
    gpu.sort();
    assert_eq!(sorted, gpu, "only the burn devices are in its waves: {v}");
    // The CPU devices still run v1.
    for (device, state, _) in states(s, &v1) {
        if p.cpu.contains(&device) {
            assert_eq!(state, "active", "{device}");
        }
    }
}
