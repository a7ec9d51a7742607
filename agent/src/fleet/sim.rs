//! The fleet simulator: many enrolled devices in one process. Each has its
//! own key, certificate and mutual-TLS QUIC session (all over one UDP
//! socket), takes signed desired state, downloads bundles for real
//! (resumable partial files, rate limits) and verifies them completely —
//! manifest signatures against the trust root, target constraints, every
//! artifact's length and digest — but runs no model. It reuses the agent's
//! session code through [`Activator`], so what it measures is what devices
//! do. `ferry-fleet-sim` (in `tests/`) is the command-line front end.
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
    counters: Arc<SimCounters>,
}

impl SimActivator {
    pub fn new(trust: TrustRoot, counters: Arc<SimCounters>) -> Self {
        Self {
            trust,
            active: Mutex::new(HashMap::new()),
            counters,
        }
    }
}

impl Activator for SimActivator {
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
            precheck(&self.trust, bundle, a, now_unix())?;
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
                    m.insert(a.model.to_string(), (a.version, a.manifest_digest));
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
        precheck(&self.trust, partial, a, now_unix()).map(|_| ())
    }

    fn unload(&self, model: &str) -> Result<(), Refusal> {
        if let Ok(mut m) = self.active.lock() {
            m.remove(model);
        }
        Ok(())
    }
}

pub struct SimOptions {
    /// `HOST:PORT` of the control plane's QUIC endpoint.
    pub server: String,
    pub token: String,
    pub ca: PathBuf,
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
/// ever; watch `counters` for progress.
pub fn run_all(
    dirs: &[PathBuf],
    max_bytes_per_sec: Option<u64>,
    counters: Arc<SimCounters>,
) -> Result<(), FleetError> {
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
        let act = Arc::new(SimActivator::new(trust, counters.clone()));
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
    Ok(())
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
    let conn = tls::connect(&endpoint, &id.server, cfg).await?;
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
    let conn = tls::connect(&endpoint, &id.server, cfg).await?;
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
