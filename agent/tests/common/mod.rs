//! Shared test support: real signed bundles from the fixture models, an
//! in-process agent on a real loopback socket, the agent binary as a child
//! process, and a minimal HTTP/1.1 client (keep-alive) over std sockets.
#![allow(dead_code, clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use ferry::bundle_build::{build, BuildSpec};
use ferry_agent::clock::SystemClock;
use ferry_agent::inference_log::Durability;
use ferry_agent::server::{self, ServeOptions};
use ferry_agent::serving::{Agent, AgentOptions};
use ferry_protocol::trust::{Publisher, SignedTrustRoot, TrustRoot};
use ferry_protocol::{ModelName, PublicKey};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

pub mod test_vectors;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A tenant with one root key and one publisher allowed to sign anything.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub trust: TrustRoot,
    pub trust_path: PathBuf,
    pub publisher: SigningKey,
}

impl Keys {
    pub fn new() -> Self {
        Self::with_seed(1)
    }

    /// Another tenant's keys for `seed != 1`.
    pub fn with_seed(seed: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = SigningKey::from_bytes(&[seed; 32]);
        let publisher = SigningKey::from_bytes(&[seed.wrapping_add(1); 32]);
        let trust = TrustRoot {
            tenant: "test".into(),
            version: 1,
            expires_at: now() + 86_400,
            threshold: 1,
            root_keys: vec![PublicKey::from_signing_key(&root)],
            publishers: vec![Publisher {
                name: "ci".into(),
                key: PublicKey::from_signing_key(&publisher),
                scopes: vec!["*".into()],
            }],
            publisher_threshold: 1,
            revoked: vec![],
        };
        let signed = SignedTrustRoot::sign(&trust, &[&root]);
        let trust_path = dir.path().join("trust.root");
        std::fs::write(&trust_path, signed.to_bytes()).unwrap();
        Self {
            dir,
            trust,
            trust_path,
            publisher,
        }
    }

    /// Bundles fixture `model` (`bc_logreg`, …) as `name` v`version`, with
    /// its baseline when there is one.
    pub fn bundle(&self, model: &str, name: &str, version: u64) -> PathBuf {
        let onnx = fixtures().join(format!("{model}.onnx"));
        let baseline = fixtures().join(format!("{model}.baseline.csv"));
        self.bundle_onnx(
            &onnx,
            baseline.exists().then_some(baseline),
            name,
            version,
            &[],
        )
    }

    /// Bundles the ONNX file `onnx` as `name` v`version` with manifest
    /// `tags` (and those `ferry bundle build` adds itself).
    pub fn bundle_onnx(
        &self,
        onnx: &Path,
        baseline: Option<PathBuf>,
        name: &str,
        version: u64,
        tags: &[(&str, &str)],
    ) -> PathBuf {
        let stem = onnx.file_stem().unwrap().to_string_lossy().into_owned();
        let out = self
            .dir
            .path()
            .join(format!("{name}-{version}-{stem}.ferry"));
        let mut spec = self.spec(onnx.to_path_buf(), name, out.clone());
        spec.version = version;
        spec.baseline = baseline;
        spec.tags = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        build(&spec, &indicatif::ProgressBar::hidden()).unwrap();
        out
    }

    /// `model` bundled as `name` v1 into `out`, signed by this publisher,
    /// with nothing else set and no check.
    pub fn spec(&self, model: PathBuf, name: &str, out: PathBuf) -> BuildSpec {
        BuildSpec {
            model,
            name: ModelName::new(name).unwrap(),
            version: 1,
            baseline: None,
            bins: 10,
            tags: Default::default(),
            metrics: Default::default(),
            lineage: Default::default(),
            created_at: now(),
            expires_at: None,
            target: Default::default(),
            test_vectors: None,
            input_shapes: Vec::new(),
            symbols: Vec::new(),
            const_inputs: Vec::new(),
            check: false,
            signers: vec![self.publisher.clone()],
            out,
        }
    }

    /// A checked build of fixture `model` (`tests/fixtures/models/{model}.onnx`)
    /// into `out/{model}.ferry`, as a publisher would run `ferry bundle build
    /// --check`; `tune` sets what a test adds (fixed inputs, vectors, …).
    pub fn fixture_spec(
        &self,
        model: &str,
        out: &Path,
        tune: impl FnOnce(&mut BuildSpec),
    ) -> BuildSpec {
        let mut s = self.spec(
            fixtures().join(format!("{model}.onnx")),
            model,
            out.join(format!("{model}.ferry")),
        );
        s.check = true;
        tune(&mut s);
        s
    }

    pub fn options(&self, data: &Path) -> AgentOptions {
        AgentOptions {
            data_dir: data.to_path_buf(),
            trust: self.trust.clone(),
            keep_versions: 3,
            sample_rate: 0.0,
            log_max_bytes: 64 << 20,
            log_durability: Durability::Async,
            log_flush_ms: 100,
            plan_cache: Default::default(),
            clock: Arc::new(SystemClock),
            batching: Default::default(),
            engine: Default::default(),
        }
    }
}

/// An agent served in-process on 127.0.0.1 (a real socket), with its admin
/// API on a Unix socket.
pub struct Served {
    pub agent: Arc<Agent>,
    pub addr: SocketAddr,
    /// The admin socket.
    pub admin: PathBuf,
    _admin_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    pub fn start(agent: Arc<Agent>, max_body: usize) -> Self {
        Self::start_with(
            agent,
            ServeOptions {
                max_body,
                ..Default::default()
            },
        )
    }

    /// With `opts`; the TCP address and admin socket are chosen here.
    pub fn start_with(agent: Arc<Agent>, opts: ServeOptions) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let a = agent.clone();
        let admin_dir = tempfile::tempdir().unwrap();
        let admin = admin_dir.path().join("admin.sock");
        let admin_sock = admin.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let opts = ServeOptions {
                    listen: Some("127.0.0.1:0".parse().unwrap()),
                    admin_socket: Some(admin_sock),
                    tcp_loops: 2,
                    ..opts
                };
                let bound = server::bind(&opts).await.unwrap();
                addr_tx.send(bound.local_addr.unwrap()).unwrap();
                server::serve(bound, a, &opts, async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            agent,
            addr,
            admin,
            _admin_dir: admin_dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `ferry-agent` binary as a child process; waits for its
/// "listening" and "admin" lines and reads the port and socket from them.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: PathBuf,
}

impl Process {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_to(args, Stdio::piped())
    }

    /// [`Process::spawn`] with the agent's log (stderr) written to `log`.
    pub fn spawn_logged(args: &[&str], log: &Path) -> Self {
        Self::spawn_to(args, std::fs::File::create(log).unwrap().into())
    }

    fn spawn_to(args: &[&str], stderr: Stdio) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        quiet_stderr(&mut child);
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let line = lines
                .next()
                .expect("agent exited before listening")
                .unwrap();
            if let Some(a) = line.strip_prefix("ferry-agent listening on http://") {
                addr = Some(a.parse().unwrap());
            }
            if let Some(p) = line.strip_prefix("ferry-agent admin on unix:") {
                admin = Some(PathBuf::from(p));
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Self {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        self.w.write_all(&msg)?;
        read_response(&mut self.r)
    }
}

/// Reads one response (its body has a `content-length`).
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One request to the admin API on its Unix socket.
pub fn admin(sock: &Path, method: &str, path: &str, body: &[u8]) -> Response {
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("admin socket {}: {e}", sock.display()));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    read_response(&mut BufReader::new(s)).unwrap()
}

/// One request on a fresh connection.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    Conn::open(addr)
        .unwrap()
        .request(method, path, &[("content-type", "application/json")], body)
        .unwrap()
}

/// An OIP infer body for `rows` of the fixture input.
pub fn infer_body(id: &str, rows: &[Vec<f64>]) -> Vec<u8> {
    let width = rows.first().map_or(0, Vec::len);
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "inputs": [{"name": "input", "shape": [rows.len(), width], "datatype": "FP32", "data": data}]
    }))
    .unwrap()
}

/// The reference file of a fixture model.
pub fn reference(model: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{model}.reference.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn reference_rows(model: &str) -> Vec<Vec<f64>> {
    reference(model)["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// Python with the peer packages, or `None` (a note is printed) when
/// missing outside CI. Under `CI=true` a missing interpreter fails.
pub fn python_with(module: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("FERRY_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            used_service(&format!("Python {module} ({})", p.display()));
            return Some(p);
        }
    }
    ferry_test_harness::skip_or_fail(&format!(
        "a Python with {module} (FERRY_PYTHON, or .venv from scripts/python-env.sh)"
    ));
    None
}

pub use ferry_test_harness::{quiet_stderr, used_service};
