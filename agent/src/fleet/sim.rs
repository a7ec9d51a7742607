//! The fleet simulator: many enrolled devices in one process. Each has its
//! own key, certificate and mutual-TLS QUIC session (all over one UDP
//! socket), takes signed desired state, downloads bundles for real
//! (resumable partial files, rate limits) and verifies them completely —
//! manifest signatures against the trust root, target constraints, every
//! artifact's length and digest — but runs no model. It reuses the agent's
//! session code through [`Activator`], so what it measures is what devices
//! do. Devices can also report telemetry over MQTT as agents do
//! (`sim_telemetry`). `ferry-fleet-sim` (in `tests/`) is the command-line
//! front end.
//!
//! Test support, compiled only with the `sim` feature (the `tests` crate
//! enables it): no product binary carries it.

use super::activator::{now_unix, precheck, Activator};
use super::enroll::{enroll, EnrollOptions};
use super::session::{run_with, ClientOptions};
use super::wire::{read_server_frame, send_frame};
use super::{tls, FleetError, Identity, Refusal};
use ferry_protocol::bundle::read_verified;
use ferry_protocol::desired::Assignment;
use ferry_protocol::frames::{AgentFrame, FrameReader, InstalledBundle, ServerFrame};
use ferry_protocol::keys::Digest;
use ferry_protocol::{ModelName, SignedTrustRoot, TrustRoot};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Activations across all simulated devices.
#[derive(Default)]
pub struct SimCounters {
    pub activated: AtomicU64,
    pub refused: AtomicU64,
    pub bytes_verified: AtomicU64,
}

/// One simulated device's "runtime": what it has verified and activated.
pub struct SimActivator {
    trust: TrustRoot,
    active: Mutex<HashMap<String, (u64, Digest)>>,
    /// When each model's active version was activated (ms since the epoch),
    /// for the simulated telemetry's windows.
    since_ms: Mutex<HashMap<String, u64>>,
    /// Earlier champions per model (the agent's rollback history).
    history: Mutex<HashMap<String, Vec<(u64, Digest)>>>,
    counters: Arc<SimCounters>,
    /// What its hello offers (`--runtimes`); checked against bundles'
    /// required runtime as an agent does.
    runtimes: Vec<String>,
}

impl SimActivator {
    pub fn new(trust: TrustRoot, counters: Arc<SimCounters>, runtimes: Vec<String>) -> Self {
        Self {
            runtimes,
            trust,
            active: Mutex::new(HashMap::new()),
            since_ms: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            counters,
        }
    }
}

impl SimActivator {
    /// (model, version, activated at in ms since the epoch) of every
    /// active model, by model name.
    pub fn serving(&self) -> Vec<(String, u64, u64)> {
        let (Ok(active), Ok(since)) = (self.active.lock(), self.since_ms.lock()) else {
            return vec![];
        };
        let mut v: Vec<(String, u64, u64)> = active
            .iter()
            .map(|(m, (v, _))| (m.clone(), *v, since.get(m).copied().unwrap_or(0)))
            .collect();
        v.sort();
        v
    }
}

impl Activator for SimActivator {
    fn runtimes(&self) -> Vec<String> {
        self.runtimes.clone()
    }

    fn installed(&self) -> Vec<InstalledBundle> {
        let Ok(active) = self.active.lock() else {
            return vec![];
        };
        active
            .iter()
            .filter_map(|(m, (v, d))| {
                Some(InstalledBundle {
                    model: ModelName::try_from(m.clone()).ok()?,
                    version: *v,
                    manifest_digest: *d,
                    active: true,
                })
            })
            .collect()
    }

    fn activate(&self, bundle: &Path, a: &Assignment) -> Result<(), Refusal> {
        let res = (|| {
            precheck(&self.trust, bundle, a, now_unix(), &self.runtimes)?;
            let f = std::fs::File::open(bundle)
                .map_err(|e| Refusal::new("io", format!("{}: {e}", bundle.display())))?;
            let mut r = std::io::BufReader::with_capacity(256 * 1024, f);
            let mut n = 0u64;
            read_verified(&mut r, &self.trust, now_unix(), None, |_, bytes| {
                n += bytes.len() as u64;
                Ok(())
            })
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
            self.counters.bytes_verified.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })();
        match &res {
            Ok(()) => {
                if let Ok(mut m) = self.active.lock() {
                    let prev = m.insert(a.model.to_string(), (a.version, a.manifest_digest));
                    if let (Some(p), Ok(mut h)) = (prev, self.history.lock()) {
                        let h = h.entry(a.model.to_string()).or_default();
                        h.retain(|x| x.0 != p.0);
                        h.push(p);
                    }
                }
                if let Ok(mut m) = self.since_ms.lock() {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    m.insert(a.model.to_string(), now_ms);
                }
                self.counters.activated.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        res
    }

    fn precheck(&self, partial: &Path, a: &Assignment) -> Result<(), Refusal> {
        precheck(&self.trust, partial, a, now_unix(), &self.runtimes).map(|_| ())
    }

    fn unload(&self, model: &str) -> Result<(), Refusal> {
        if let Ok(mut m) = self.active.lock() {
            m.remove(model);
        }
        if let Ok(mut h) = self.history.lock() {
            h.remove(model);
        }
        Ok(())
    }

    /// The agent's rollback rule: an earlier champion still held, with the
    /// assigned manifest.
    fn restore(&self, a: &Assignment) -> Result<(), Refusal> {
        let (Ok(mut active), Ok(mut history)) = (self.active.lock(), self.history.lock()) else {
            return Err(Refusal::new("internal", "simulator state poisoned"));
        };
        let h = history.entry(a.model.to_string()).or_default();
        if !h.contains(&(a.version, a.manifest_digest)) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::new(
                "rollback_refused",
                format!(
                    "model {} v{}: not an earlier champion of this device that it still holds",
                    a.model, a.version
                ),
            ));
        }
        h.retain(|x| x.0 != a.version);
        active.insert(a.model.to_string(), (a.version, a.manifest_digest));
        self.counters.activated.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub struct SimOptions {
    /// `HOST:PORT` of the control plane's QUIC endpoint.
    pub server: String,
    pub token: String,
    pub ca: PathBuf,
    /// The trust root every device pins.
    pub pin: super::RootPin,
    /// One data directory per device is made under here.
    pub dir: PathBuf,
    pub devices: usize,
    /// Enrollments in flight at once.
    pub enroll_concurrency: usize,
    pub max_bytes_per_sec: Option<u64>,
}

/// Enrolls `opts.devices` devices (reusing those already enrolled under
/// `opts.dir`); returns their data directories.
pub async fn enroll_all(opts: &SimOptions) -> Result<Vec<PathBuf>, FleetError> {
    let dirs: Vec<PathBuf> = (0..opts.devices)
        .map(|i| opts.dir.join(format!("dev{i:05}")))
        .collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.enroll_concurrency.max(1)));
    let mut tasks = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        if Identity::load(d)?.is_some() {
            continue;
        }
        let eo = EnrollOptions {
            server: opts.server.clone(),
            token: opts.token.clone(),
            ca: opts.ca.clone(),
            pin: opts.pin.clone(),
            server_name: None,
            data: d.clone(),
            hostname: Some(format!("sim-{i:05}")),
        };
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            enroll(&eo).await
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| FleetError::Protocol(format!("enrollment task: {e}")))??;
    }
    Ok(dirs)
}

/// Runs a session per device in `dirs` over one shared QUIC endpoint, for
/// ever; watch `counters` for progress. Returns each device's activator
/// (what it serves), with its directory.
pub fn run_all(
    dirs: &[PathBuf],
    max_bytes_per_sec: Option<u64>,
    counters: Arc<SimCounters>,
    runtimes: &[String],
) -> Result<Vec<(PathBuf, Arc<SimActivator>)>, FleetError> {
    let mut devices = Vec::with_capacity(dirs.len());
    let endpoint = tls::client_endpoint()?;
    for d in dirs {
        let trust_path = super::fleet_dir(d).join("trust.root");
        let bytes = std::fs::read(&trust_path).map_err(super::io("reading", &trust_path))?;
        let trust = SignedTrustRoot::from_bytes(&bytes)
            .and_then(|s| s.open(now_unix()))
            .map_err(|e| FleetError::Bad {
                path: trust_path.clone(),
                reason: e.to_string(),
            })?;
        let act = Arc::new(SimActivator::new(
            trust,
            counters.clone(),
            runtimes.to_vec(),
        ));
        devices.push((d.clone(), act.clone()));
        let mut opts = ClientOptions::new(d);
        opts.max_bytes_per_sec = max_bytes_per_sec;
        let endpoint = endpoint.clone();
        let dir = d.clone();
        tokio::spawn(async move {
            if let Err(e) = run_with(act, opts, Some(endpoint)).await {
                tracing::error!(device = %dir.display(), error = %e, "simulated device stopped");
            }
        });
    }
    Ok(devices)
}

/// Waits until `counters.activated` reaches `target`, printing progress
/// every `every`; returns when it did (or `None` after `timeout`).
pub async fn wait_activated(
    counters: &SimCounters,
    target: u64,
    timeout: Duration,
) -> Option<Instant> {
    let until = Instant::now() + timeout;
    loop {
        if counters.activated.load(Ordering::Relaxed) >= target {
            return Some(Instant::now());
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects as the enrolled device in `data`, asks for `digest` and returns
/// the control plane's first answer: `Ok(total length)` or `Err(reason)`
/// when it refuses. For the refusal tests.
pub async fn probe_fetch(data: &Path, digest: Digest) -> Result<Result<u64, String>, FleetError> {
    let id = Identity::load(data)?.ok_or_else(|| FleetError::Bad {
        path: super::fleet_dir(data).join("device.json"),
        reason: "not enrolled".into(),
    })?;
    let cfg = super::device_client_config(data)?;
    let endpoint = tls::client_endpoint()?;
    let conn = tls::connect_named(&endpoint, &id.server, id.server_name.as_deref(), cfg).await?;
    let (mut s, mut r) = conn
        .open_bi()
        .await
        .map_err(|e| FleetError::Protocol(e.to_string()))?;
    send_frame(&mut s, &AgentFrame::Fetch { digest, offset: 0 }).await?;
    let mut reader = FrameReader::new();
    let answer = match read_server_frame(&mut r, &mut reader).await? {
        Some(ServerFrame::FetchStart { total, .. }) => Ok(total),
        Some(ServerFrame::FetchRefused { reason, .. }) => Err(reason),
        other => Err(format!("unexpected answer {other:?}")),
    };
    conn.close(quinn::VarInt::from_u32(0), b"probe done");
    Ok(answer)
}

/// A raw connection as the enrolled device in `data`, for the attack tests:
/// it speaks the wire protocol directly, and misbehaves on request (fetches
/// it never reads, arbitrary control frames).
pub struct DeviceLink {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// Streams kept open (stalled fetches, the control stream).
    held: Vec<(quinn::SendStream, quinn::RecvStream)>,
}

impl DeviceLink {
    /// Connects with the device's certificate. `stream_window` sets the
    /// receive window of each stream (bytes the server may send ahead of
    /// what is read); `None` keeps quinn's default.
    pub async fn connect(data: &Path, stream_window: Option<u32>) -> Result<Self, FleetError> {
        let id = Identity::load(data)?.ok_or_else(|| FleetError::Bad {
            path: super::fleet_dir(data).join("device.json"),
            reason: "not enrolled".into(),
        })?;
        let mut cfg = super::device_client_config(data)?;
        let mut t = quinn::TransportConfig::default();
        // Keep-alives hold the connection up while its streams stall.
        t.keep_alive_interval(Some(Duration::from_secs(2)));
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(20))
                .map_err(|e| FleetError::Tls(e.to_string()))?,
        ));
        if let Some(w) = stream_window {
            t.stream_receive_window(quinn::VarInt::from_u32(w));
        }
        cfg.transport_config(Arc::new(t));
        let endpoint = tls::client_endpoint()?;
        let conn =
            tls::connect_named(&endpoint, &id.server, id.server_name.as_deref(), cfg).await?;
        Ok(Self {
            conn,
            endpoint,
            held: Vec::new(),
        })
    }

    /// Opens `n` fetch streams for `digest` and never reads from them.
    pub async fn stall_fetches(&mut self, digest: Digest, n: usize) -> Result<(), FleetError> {
        for _ in 0..n {
            let (mut s, r) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| FleetError::Protocol(e.to_string()))?;
            send_frame(&mut s, &AgentFrame::Fetch { digest, offset: 0 }).await?;
            self.held.push((s, r));
        }
        Ok(())
    }

    /// Opens a control stream (a `Hello`), sends `frames` on it and keeps
    /// it open.
    pub async fn control(&mut self, frames: &[AgentFrame]) -> Result<(), FleetError> {
        let (mut s, r) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| FleetError::Protocol(e.to_string()))?;
        send_frame(
            &mut s,
            &AgentFrame::Hello {
                protocol: ferry_protocol::frames::PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                target: std::env::consts::ARCH.into(),
                target_triple: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
                runtimes: vec!["onnx".into()],
                installed: vec![],
                last_sequence: None,
            },
        )
        .await?;
        for f in frames {
            send_frame(&mut s, f).await?;
        }
        self.held.push((s, r));
        Ok(())
    }

    /// Fetches the whole bundle `digest` on a fresh stream: its bytes, or
    /// the control plane's refusal.
    pub async fn fetch_all(&self, digest: Digest) -> Result<Result<Vec<u8>, String>, FleetError> {
        let (mut s, mut r) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| FleetError::Protocol(e.to_string()))?;
        send_frame(&mut s, &AgentFrame::Fetch { digest, offset: 0 }).await?;
        let _ = s.finish();
        let mut reader = FrameReader::new();
        let total = match read_server_frame(&mut r, &mut reader).await? {
            Some(ServerFrame::FetchStart { total, .. }) => total,
            Some(ServerFrame::FetchRefused { reason, .. }) => return Ok(Err(reason)),
            other => return Ok(Err(format!("unexpected answer {other:?}"))),
        };
        let mut out = Vec::new();
        while (out.len() as u64) < total {
            match read_server_frame(&mut r, &mut reader).await? {
                Some(ServerFrame::Chunk { offset, data, .. }) if offset == out.len() as u64 => {
                    out.extend_from_slice(&data)
                }
                other => {
                    return Ok(Err(format!(
                        "at byte {} of {total}: unexpected {other:?}",
                        out.len()
                    )))
                }
            }
        }
        Ok(Ok(out))
    }

    /// Why the connection ended (waits for it).
    pub async fn closed(&self) -> String {
        self.conn.closed().await.to_string()
    }

    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// Opens `n` connections without a client certificate, as many enrollments
/// at once would, and sends nothing on them; returns why the server closed
/// each (the connections it admitted wait for an Enroll frame until its
/// timeout).
pub async fn hold_unenrolled(server: &str, ca: &Path, n: usize) -> Result<Vec<String>, FleetError> {
    let ca_bytes = std::fs::read(ca).map_err(super::io("reading", ca))?;
    let ca_der = super::pem_or_der(&ca_bytes).map_err(|reason| FleetError::Bad {
        path: ca.to_path_buf(),
        reason,
    })?;
    let endpoint = tls::client_endpoint()?;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let cfg = tls::client_config(&ca_der, None)?;
        let (endpoint, server) = (endpoint.clone(), server.to_string());
        tasks.push(tokio::spawn(async move {
            match tls::connect_named(&endpoint, &server, None, cfg).await {
                Ok(conn) => conn.closed().await.to_string(),
                Err(e) => e.to_string(),
            }
        }));
    }
    let mut reasons = Vec::new();
    for t in tasks {
        reasons.push(t.await.map_err(|e| FleetError::Protocol(e.to_string()))?);
    }
    Ok(reasons)
}

/// Connects as the enrolled device in `data`, opens a control stream,
/// sends `frames` after its Hello, and keeps the connection open until
/// `done()` (polled) says the control plane has handled them. For the
/// flood tests: what a compromised device could send.
pub async fn probe_control(
    data: &Path,
    frames: Vec<AgentFrame>,
    done: impl Fn() -> bool,
) -> Result<usize, FleetError> {
    use ferry_protocol::frames::PROTOCOL_VERSION;
    let id = Identity::load(data)?.ok_or_else(|| FleetError::Bad {
        path: super::fleet_dir(data).join("device.json"),
        reason: "not enrolled".into(),
    })?;
    let cfg = super::device_client_config(data)?;
    let endpoint = tls::client_endpoint()?;
    let conn = tls::connect_named(&endpoint, &id.server, id.server_name.as_deref(), cfg).await?;
    let (mut s, _r) = conn
        .open_bi()
        .await
        .map_err(|e| FleetError::Protocol(e.to_string()))?;
    send_frame(
        &mut s,
        &AgentFrame::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "probe".into(),
            target: std::env::consts::ARCH.into(),
            target_triple: "probe".into(),
            runtimes: vec![],
            installed: vec![],
            last_sequence: None,
        },
    )
    .await?;
    let mut sent = 0;
    for f in &frames {
        send_frame(&mut s, f).await?;
        sent += 1;
    }
    while !done() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.close(quinn::VarInt::from_u32(0), b"probe done");
    Ok(sent)
}
