//! `ferry demo`: the README's run command. On embedded defaults it starts a
//! control plane and one enrolled agent as child processes, walks the
//! operator's real round trip (keys, trust root, signed bundle, push,
//! enrollment, deploy), sends a little traffic and prints where everything
//! is. Every step is the same `ferry` / `ferry-agent` command a user would
//! type, so the demo cannot drift from the product.

use crate::api::types::{Deployment, DeploymentDetail, DeviceTokenCreated};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// The demo model: the breast-cancer logistic regression the tests use.
const MODEL_ONNX: &[u8] = include_bytes!("../../../tests/fixtures/models/bc_logreg.onnx");
const BASELINE_CSV: &[u8] = include_bytes!("../../../tests/fixtures/models/bc_logreg.baseline.csv");
const TEST_VECTORS: &[u8] =
    include_bytes!("../../../tests/fixtures/models/bc_logreg.testvectors.json");
const HELDOUT_CSV: &str = include_str!("../../../tests/fixtures/models/bc_logreg.heldout.csv");
const MODEL: &str = "breast-cancer";
/// Marks a directory this command made, so a rerun may clear it.
const MARKER: &str = ".ferry-demo";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory for keys, the control plane's data and the agent's
    /// data (cleared on each run if an earlier demo made it)
    #[arg(long, default_value = "ferry-demo")]
    dir: PathBuf,
    /// Control plane REST API address
    #[arg(long, default_value = "127.0.0.1:8470")]
    http: String,
    /// Control plane QUIC (fleet) address
    #[arg(long, default_value = "127.0.0.1:8471")]
    quic: String,
    /// Embedded MQTT broker address
    #[arg(long, default_value = "127.0.0.1:1884")]
    mqtt_listen: String,
    /// The agent's local inference API address
    #[arg(long, default_value = "127.0.0.1:8081")]
    agent_listen: String,
    /// The ferry-agent binary (default: next to this one, else on PATH)
    #[arg(long, env = "FERRY_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Inference requests to send once the model is active
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// Stop after the traffic instead of running until Ctrl-C
    #[arg(long)]
    exit_after_traffic: bool,
}

/// A child process that is asked to stop (SIGTERM) when dropped, and
/// killed if it has not within a few seconds.
struct Managed {
    name: &'static str,
    child: Child,
}

impl Managed {
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `cmd` with stdout and stderr going to `log` (stdout also read
/// here) and waits until a line starting with each of `prefixes` appeared;
/// returns the rest of those lines.
fn spawn_until(
    name: &'static str,
    mut cmd: Command,
    log: &Path,
    prefixes: &[&str],
) -> anyhow::Result<(Managed, Vec<String>)> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut out = err.try_clone()?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(err));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{name}: no stdout"))?;
    let managed = Managed { name, child };
    let (tx, rx) = mpsc::channel::<String>();
    // Copies every line to the log and hands it over; runs until the child
    // closes its stdout.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(out, "{line}");
            let _ = tx.send(line);
        }
    });
    let mut found = vec![None; prefixes.len()];
    let until = Instant::now() + Duration::from_secs(60);
    while found.iter().any(Option::is_none) {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                for (i, p) in prefixes.iter().enumerate() {
                    if let Some(rest) = line.strip_prefix(p) {
                        found[i] = Some(rest.trim().to_string());
                    }
                }
            }
            Err(_) => bail!(
                "{name} did not start (see {}):\n{}",
                log.display(),
                tail(log)
            ),
        }
    }
    Ok((managed, found.into_iter().flatten().collect()))
}

fn tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs one `ferry` / `ferry-agent` command to completion; its stdout.
fn run(mut cmd: Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        bail!(
            "`{} {}` failed: {}{}",
            Path::new(cmd.get_program()).display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.join(MARKER).exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    } else if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} exists and was not made by `ferry demo`; pass --dir with a new or empty folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        b"made by `ferry demo`; cleared by its next run\n",
    )?;
    Ok(())
}

fn agent_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("ferry-agent");
    if beside.exists() {
        return Ok(beside);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("ferry-agent"))
            .find(|p| p.exists())
    });
    on_path.ok_or_else(|| {
        anyhow!(
            "ferry-agent not found next to {} or on PATH (build it: cargo build --release -p ferry-agent, or pass --agent-bin)",
            exe.display()
        )
    })
}

/// The held-out rows of the demo model, without the header.
fn demo_rows(n: usize) -> Vec<Vec<f64>> {
    HELDOUT_CSV
        .lines()
        .skip(1)
        .filter_map(|l| {
            l.split(',')
                .take(30)
                .map(|c| c.trim().parse::<f64>().ok())
                .collect::<Option<Vec<f64>>>()
        })
        .filter(|r| r.len() == 30)
        .take(n)
        .collect()
}

fn infer_body(row: &[f64]) -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, row.len()], "datatype": "FP32", "data": row}]})
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    prepare_dir(&dir)?;
    let ferry_bin = std::env::current_exe()?;
    let agent_bin = agent_binary(args.agent_bin.clone())?;
    let ferry = |a: &[&str]| {
        let mut c = Command::new(&ferry_bin);
        c.args(a).env("HOME", &dir).env_remove("FERRY_CONFIG");
        c
    };
    let p = |name: &str| dir.join(name).display().to_string();
    let step = |s: &str| println!("== {s}");

    step("keys and trust root (offline, on the operator's machine)");
    for name in ["root", "publisher"] {
        run(ferry(&[
            "key",
            "generate",
            "--out",
            &p("keys"),
            "--name",
            name,
        ]))?;
    }
    run(ferry(&[
        "trust",
        "init",
        "--root-key",
        &p("keys/root.key"),
        "--publisher",
        &p("keys/publisher.pub"),
        "--tenant",
        "default",
        "--out",
        &p("trust.root"),
    ]))?;

    step("signed bundle from a real ONNX model");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir)?;
    std::fs::write(model_dir.join("bc_logreg.onnx"), MODEL_ONNX)?;
    std::fs::write(model_dir.join("baseline.csv"), BASELINE_CSV)?;
    std::fs::write(model_dir.join("testvectors.json"), TEST_VECTORS)?;
    let bundle = p("breast-cancer-1.ferry");
    run(ferry(&[
        "bundle",
        "build",
        &p("model/bc_logreg.onnx"),
        "--name",
        MODEL,
        "--version",
        "1",
        "--baseline",
        &p("model/baseline.csv"),
        "--test-vectors",
        &p("model/testvectors.json"),
        "--metric",
        "accuracy=0.988",
        "--tag",
        "dataset=breast_cancer",
        "--sign-with",
        &p("keys/publisher.key"),
        "--out",
        &bundle,
    ]))?;
    print!(
        "{}",
        run(ferry(&[
            "bundle",
            "verify",
            &bundle,
            "--trust",
            &p("trust.root")
        ]))?
    );

    step("control plane (SQLite, local artifacts, embedded MQTT broker)");
    let admin = crate::auth::generate_token();
    std::fs::write(dir.join("admin.token"), format!("{admin}\n"))?;
    let mut cmd = ferry(&[
        "server",
        "--http",
        &args.http,
        "--quic",
        &args.quic,
        "--mqtt-listen",
        &args.mqtt_listen,
        "--data",
        &p("server"),
    ]);
    cmd.env("FERRY_BOOTSTRAP_TOKEN", &admin);
    let (server, found) = spawn_until(
        "ferry server",
        cmd,
        &dir.join("server.log"),
        &[
            "ferry server listening on ",
            "ferry server MQTT telemetry: embedded (rumqttd) broker at ",
            "ferry fleet listening on quic://",
        ],
    )?;
    let api = found[0]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let (mqtt, quic) = (found[1].clone(), found[2].clone());
    let op = |a: &[&str]| {
        let mut c = ferry(a);
        c.env("FERRY_SERVER", &api).env("FERRY_TOKEN", &admin);
        c
    };
    run(op(&["trust", "push", &p("trust.root")]))?;
    run(op(&["model", "push", &bundle]))?;

    step("enroll one agent (its key is made on the device)");
    let tok: DeviceTokenCreated = serde_json::from_str(&run(op(&[
        "device",
        "token",
        "create",
        "--labels",
        "site=demo",
        "--expires",
        "1h",
        "--ca-out",
        &p("ca.pem"),
        "--json",
    ]))?)?;
    let token = tok.token.as_str();
    let mut enroll = Command::new(&agent_bin);
    enroll.args([
        "enroll",
        "--server",
        &quic,
        "--token",
        token,
        "--ca",
        &p("ca.pem"),
        // The device pins the operator's trust root, made offline above:
        // the control plane cannot hand it another.
        "--trust",
        &p("trust.root"),
        "--data",
        &p("agent"),
        "--hostname",
        "demo-device",
    ]);
    let enrolled = run(enroll)?;
    let device = enrolled
        .split_whitespace()
        .find(|w| w.starts_with("dev_"))
        .ok_or_else(|| anyhow!("enrollment printed no device id: {enrolled}"))?
        .to_string();
    let mut cmd = Command::new(&agent_bin);
    cmd.args([
        "run",
        "--listen",
        &args.agent_listen,
        "--data",
        &p("agent"),
        "--mqtt-url",
        &mqtt,
        "--tenant",
        "default",
        "--device",
        &device,
        "--window-secs",
        "10",
    ])
    .env("FERRY_LOG", "info");
    let (agent, found) = spawn_until(
        "ferry-agent",
        cmd,
        &dir.join("agent.log"),
        &["ferry-agent listening on http://"],
    )?;
    let agent_addr = found[0].clone();

    step("deploy breast-cancer v1 to site=demo");
    let dep: Deployment = serde_json::from_str(&run(op(&[
        "deploy",
        MODEL,
        "--version",
        "1",
        "--selector",
        "site=demo",
        "--json",
    ]))?)?;
    let dep_id = dep.id;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let v: DeploymentDetail =
            serde_json::from_str(&run(op(&["deployments", &dep_id, "--json"]))?)?;
        let first = v.devices.first();
        let state = first.map(|d| d.state.clone()).unwrap_or_default();
        if state == "active" {
            println!("{device}: active");
            break;
        }
        if state == "failed" {
            bail!(
                "the device refused the bundle: {}",
                first.map(|d| d.detail.as_str()).unwrap_or_default()
            );
        }
        if Instant::now() > until {
            bail!(
                "the deployment is still {state:?} after 60 s (see {})",
                dir.join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    step(&format!("{} inference requests", args.requests));
    let rows = demo_rows(args.requests.max(1));
    let url = format!("http://{agent_addr}/v2/models/{MODEL}/infer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::new();
    let mut first = None;
    let mut ok = 0;
    for row in rows.iter().cycle().take(args.requests) {
        let resp = rt.block_on(async {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(infer_body(row).to_string())
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>((
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            ))
        })?;
        if !resp.0.is_success() {
            bail!("inference failed: {} {}", resp.0, resp.1);
        }
        ok += 1;
        first.get_or_insert(resp.1);
    }
    println!("{ok} of {} answered", args.requests);
    if let Some(v) = first {
        println!("first answer: {}", v["outputs"]);
    }

    let sample = rows
        .first()
        .map(|r| infer_body(r).to_string())
        .unwrap_or_default();
    // A one-time link: the browser opens signed in, the token pasted nowhere.
    let link = run(op(&["dashboard"]))?.trim().to_string();
    println!();
    println!("Ferry demo is running (files in {}):", dir.display());
    println!("  control plane API   {api}/api/v1  (OpenAPI: {api}/api/v1/openapi.json)");
    println!("  dashboard           {link}");
    println!("                      (a one-time sign-in link for 10 minutes; later: {api}/ with the admin token)");
    println!("  admin token         {admin}  (also in admin.token)");
    println!("  fleet (QUIC)        quic://{quic}");
    println!("  MQTT telemetry      {mqtt}  (topics ferry/v1/default/#)");
    println!("  agent inference     http://{agent_addr}/v2/models/{MODEL}/infer");
    println!("  agent metrics       http://{agent_addr}/metrics");
    let ferry = cli_as_typed();
    println!(
        "  deployment          FERRY_SERVER={api} FERRY_TOKEN={admin} {ferry} deployments {dep_id}"
    );
    // Listen before saying "ready": a Ctrl-C right after that line must stop
    // the demo cleanly, not kill it with the default handler.
    let stop = if args.exit_after_traffic {
        None
    } else {
        use tokio::signal::unix::{signal, SignalKind};
        let _in_runtime = rt.enter();
        Some((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    };
    println!("Try:");
    println!("  curl -s -H 'content-type: application/json' -d '{sample}' {url}");
    println!("  FERRY_SERVER={api} FERRY_TOKEN={admin} {ferry} device list");
    if ferry != "ferry" {
        println!("  (scripts/install.sh puts `ferry` and `ferry-agent` on PATH)");
    }
    println!("ferry demo ready");
    let _ = std::io::stdout().flush();

    if let Some((mut interrupt, mut terminate)) = stop {
        println!("Ctrl-C stops everything.");
        let _ = std::io::stdout().flush();
        rt.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        println!("stopping");
    }
    // The agent first, so it does not spend its last moments reconnecting.
    drop(agent);
    drop(server);
    println!("ferry demo stopped");
    Ok(())
}

/// How a user runs this binary from a shell: `ferry` when that name on
/// PATH is this binary, else its full path (so printed commands work as
/// printed).
fn cli_as_typed() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "ferry".into();
    };
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ferry"))
            .find(|p| p.is_file())
    });
    match on_path.and_then(|p| p.canonicalize().ok()) {
        Some(p) if p == me => "ferry".into(),
        _ => me.display().to_string(),
    }
}
