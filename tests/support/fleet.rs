//! Fleet end-to-end harness: a `ferry server --quic` process, enrolled
//! `ferry-agent` processes, keys/trust roots/bundles made by the real CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "fy_00000000000000000000000000000000000000000000000000000000000000a1";

/// `target/debug` (or the profile dir) holding the product binaries:
/// the test executable lives in its `deps/`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    // This crate's own copies of the binaries (built with the test from the
    // same sources) first; the product binaries otherwise.
    let mut p = dir.join(format!("e2e-{name}"));
    if !p.exists() {
        p = dir.join(name);
    }
    assert!(
        p.exists(),
        "{} is missing: `cargo test --workspace` builds it; alone, run `cargo build -p ferry -p ferry-agent --bins` first",
        p.display()
    );
    p
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn ferry(args: &[&str]) -> Command {
    let mut c = Command::new(bin("ferry"));
    c.args(args);
    c
}

/// Waits for `cond` (polling), panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` and reads stdout until a line starting with each of
/// `prefixes` appeared; returns the rest of those lines.
pub fn spawn_until(mut cmd: Command, prefixes: &[&str]) -> (Proc, Vec<String>) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    crate::quiet_stderr(&mut child);
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut found = vec![String::new(); prefixes.len()];
    let mut left = prefixes.len();
    while left > 0 {
        match lines.next() {
            Some(Ok(line)) => {
                for (i, p) in prefixes.iter().enumerate() {
                    if let Some(rest) = line.strip_prefix(p) {
                        found[i] = rest.trim().to_string();
                        left -= 1;
                    }
                }
            }
            _ => {
                let status = child.wait().unwrap();
                panic!("{cmd:?} exited before printing {prefixes:?}: {status}");
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Proc { child }, found)
}

pub struct Server {
    pub proc: Proc,
    pub url: String,
    pub quic: String,
    pub data: PathBuf,
}

impl Server {
    pub fn start(data: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_with(data, env, "127.0.0.1:0", &[])
    }

    /// [`Server::start`] with the QUIC endpoint on `quic` and `extra`
    /// flags (e.g. `--quic-name NAME`).
    pub fn start_with(data: &Path, env: &[(&str, &str)], quic: &str, extra: &[&str]) -> Server {
        let mut cmd = Command::new(bin("ferry"));
        cmd.args(["server", "--http", "127.0.0.1:0", "--quic", quic])
            .args(extra)
            .arg("--data")
            .arg(data)
            .env("FERRY_BOOTSTRAP_TOKEN", ADMIN)
            // Failpoints only where a test names them.
            .env_remove("FAILPOINTS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (proc, found) = spawn_until(
            cmd,
            &[
                "ferry server listening on ",
                "ferry fleet listening on quic://",
            ],
        );
        Server {
            proc,
            url: found[0].split_whitespace().next().unwrap().to_string(),
            quic: found[1].clone(),
            data: data.to_path_buf(),
        }
    }

    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("ferry"));
        c.args(args)
            .env("FERRY_SERVER", &self.url)
            .env("FERRY_TOKEN", ADMIN)
            .env("HOME", &self.data);
        c
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&ok(&mut self.cli(&a))).unwrap()
    }

    /// Per-device state of a deployment.
    pub fn deployment(&self, id: &str) -> Value {
        self.json(&["deployments", id])
    }

    /// Audit records with `action`.
    pub fn audit(&self, action: &str) -> Vec<Value> {
        let out = ok(&mut self.cli(&[
            "audit", "list", "--json", "--limit", "1000", "--action", action,
        ]));
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        match v {
            Value::Array(a) => a,
            Value::Object(ref o) => o
                .get("records")
                .and_then(|r| r.as_array().cloned())
                .unwrap_or_default(),
            _ => vec![],
        }
    }
}

/// Keys, trust roots and bundles made by the `ferry` CLI.
pub struct Keys {
    pub dir: PathBuf,
}

impl Keys {
    pub fn new(dir: &Path) -> Keys {
        let keys = dir.join("keys");
        for name in ["root", "pub", "pub2"] {
            ok(&mut ferry(&[
                "key",
                "generate",
                "--out",
                keys.to_str().unwrap(),
                "--name",
                name,
            ]));
        }
        let k = Keys {
            dir: dir.to_path_buf(),
        };
        for (version, publisher, out) in [("1", "pub", "v1.root"), ("2", "pub2", "v2.root")] {
            ok(&mut ferry(&[
                "trust",
                "init",
                "--root-key",
                k.path("keys/root.key").to_str().unwrap(),
                "--publisher",
                k.path(&format!("keys/{publisher}.pub")).to_str().unwrap(),
                "--tenant",
                "default",
                "--version",
                version,
                "--out",
                k.path(out).to_str().unwrap(),
            ]));
        }
        k
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A bc_logreg bundle named `model` at `version` signed by `key`, with
    /// its test vectors and `extra` build flags.
    pub fn bundle(&self, model: &str, version: u64, key: &str, extra: &[&str]) -> PathBuf {
        let out = self.path(&format!("{model}-{version}-{key}.ferry"));
        let mut args: Vec<String> = vec![
            "bundle".into(),
            "build".into(),
            fixtures().join("bc_logreg.onnx").display().to_string(),
            "--name".into(),
            model.into(),
            "--version".into(),
            version.to_string(),
            "--test-vectors".into(),
            fixtures()
                .join("bc_logreg.testvectors.json")
                .display()
                .to_string(),
            "--sign-with".into(),
            self.path(&format!("keys/{key}.key")).display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&mut ferry(&refs));
        out
    }
}

/// An enrolled agent process.
pub struct Agent {
    pub proc: Option<Proc>,
    pub data: PathBuf,
    pub addr: String,
    pub device_id: String,
    pub extra: Vec<String>,
}

impl Agent {
    /// Enrolls a device in `data`, pinning the trust root file `root` (the
    /// operator's, e.g. `keys.path("v1.root")`); its device id.
    pub fn enroll(server: &Server, token: &str, ca: &Path, data: &Path, root: &Path) -> String {
        let out = ok(&mut Self::enroll_cmd(
            server,
            token,
            ca,
            data,
            &[std::ffi::OsStr::new("--trust"), root.as_os_str()],
        ));
        device_id_in(&out)
    }

    /// The `ferry-agent enroll` command with `pin` (`--trust FILE` or
    /// `--root-fingerprint FP`, and anything else) appended.
    pub fn enroll_cmd(
        server: &Server,
        token: &str,
        ca: &Path,
        data: &Path,
        pin: &[&std::ffi::OsStr],
    ) -> Command {
        let mut c = Command::new(bin("ferry-agent"));
        c.args(["enroll", "--server", &server.quic, "--token", token, "--ca"])
            .arg(ca)
            .arg("--data")
            .arg(data)
            .args(["--hostname", "test-device"])
            .args(pin);
        c
    }

    pub fn start(data: &Path, device_id: &str, extra: &[&str]) -> Agent {
        let mut a = Agent {
            proc: None,
            data: data.to_path_buf(),
            addr: String::new(),
            device_id: device_id.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        a.restart();
        a
    }

    pub fn restart(&mut self) {
        self.restart_with_failpoints("");
    }

    /// Starts the agent again with `FAILPOINTS` set to `failpoints` (none
    /// when empty), e.g. `fleet-downloaded=1*return` to make it exit at
    /// that crash point.
    pub fn restart_with_failpoints(&mut self, failpoints: &str) {
        self.proc = None;
        let mut cmd = Command::new(bin("ferry-agent"));
        cmd.args(["run", "--listen", "127.0.0.1:0", "--data"])
            .arg(&self.data)
            .args(&self.extra)
            .env("FERRY_LOG", "info");
        if failpoints.is_empty() {
            cmd.env_remove("FAILPOINTS");
        } else {
            cmd.env("FAILPOINTS", failpoints);
        }
        let (proc, found) = spawn_until(cmd, &["ferry-agent listening on http://"]);
        self.proc = Some(proc);
        self.addr = found[0].clone();
    }

    /// Waits up to `timeout` for the agent to exit by itself (at a crash
    /// point); its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + timeout;
        let p = self.proc.as_mut().expect("the agent is running");
        loop {
            if let Some(status) = p.child.try_wait().expect("waiting for the agent") {
                self.proc = None;
                return status;
            }
            assert!(
                Instant::now() < until,
                "the agent did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(p) = &mut self.proc {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.proc = None;
    }

    pub fn infer(&self, model: &str) -> (u16, Value) {
        let rows = reference_rows();
        let body = serde_json::json!({
            "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": rows[0]}]
        });
        http(
            &self.addr,
            "POST",
            &format!("/v2/models/{model}/infer"),
            &body.to_string(),
        )
    }
}

/// The device id (`dev_…`) in `ferry-agent enroll`'s output.
pub fn device_id_in(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("dev_"))
        .unwrap()
        .to_string()
}

pub fn reference_rows() -> Vec<Value> {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("bc_logreg.reference.json")).unwrap(),
    )
    .unwrap();
    v["rows"].as_array().unwrap().clone()
}

/// A minimal HTTP/1.1 request over loopback; (status, JSON body), or
/// (0, null) when the connection fails.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    match request(addr, method, path, "", body) {
        Some((status, text)) => (status, serde_json::from_str(&text).unwrap_or(Value::Null)),
        None => (0, Value::Null),
    }
}

/// An authenticated HTTP/1.1 request over loopback; (status, body text).
/// An empty `token` sends no Authorization header.
pub fn http_raw(addr: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    request(addr, method, path, token, body)
        .unwrap_or_else(|| panic!("{method} {path}: cannot reach {addr}"))
}

fn request(addr: &str, method: &str, path: &str, token: &str, body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((status, body.to_string()))
}

/// An enrollment token for `n` devices labelled `labels`; writes the
/// server's CA to `ca`.
pub fn device_token(server: &Server, labels: &str, n: usize, ca: &Path) -> Value {
    server.json(&[
        "device",
        "token",
        "create",
        "--labels",
        labels,
        "--uses",
        &n.to_string(),
        "--ca-out",
        ca.to_str().unwrap(),
    ])
}

/// `ferry-fleet-sim` running `n` devices enrolled with `tok` (from
/// [`device_token`]) in `dir`, once it printed that they run; `extra` goes
/// to the simulator (e.g. `--telemetry`). The caller waits for whatever
/// state of theirs it needs.
pub fn simulated_devices(
    server: &Server,
    tok: &Value,
    ca: &Path,
    dir: &Path,
    n: usize,
    timeout_secs: u64,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(bin("ferry-fleet-sim"));
    cmd.args(["--server", &server.quic, "--token"])
        .arg(tok["token"].as_str().unwrap())
        .arg("--ca")
        .arg(ca)
        .arg("--root-fingerprint")
        .arg(tok["root_fingerprint"].as_str().unwrap())
        .arg("--dir")
        .arg(dir)
        .args(["--devices", &n.to_string()])
        .args(["--timeout-secs", &timeout_secs.to_string()])
        .args(extra);
    spawn_until(cmd, &["running "]).0
}

/// Waits until the server lists `n` connected devices.
pub fn wait_connected(server: &Server, n: usize, timeout: Duration) {
    wait_for("every simulated device connected", timeout, || {
        let v = server.json(&["device", "list"]);
        let c = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["connected"] == true)
            .count();
        (c == n).then_some(())
    });
}
