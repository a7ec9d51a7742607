//! The agent's side of the QUIC session: connect with the device
//! certificate, say hello, take signed desired state, fetch what is
//! missing (resuming partial files), verify, activate, report. Reconnects
//! with jittered exponential backoff; serving never depends on it.

use super::{fleet_dir, io, tls, write_atomic, FleetError, Identity};
use crate::serving::{Agent, Role};
use ferry_protocol::bundle::read_header;
use ferry_protocol::desired::{Assignment, DesiredState, DesiredStateError, SignedDesiredState};
use ferry_protocol::frames::{
    length_prefixed, ActivationOutcome, AgentFrame, FrameReader, InstalledBundle, ServerFrame,
    PROTOCOL_VERSION,
};
use ferry_protocol::keys::{sha256, Digest};
use ferry_protocol::{verify_manifest, Manifest, Runtime, TrustRoot};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub(crate) async fn send_frame(
    s: &mut quinn::SendStream,
    frame: &AgentFrame,
) -> Result<(), FleetError> {
    s.write_all(&length_prefixed(&frame.encode()))
        .await
        .map_err(|e| FleetError::Protocol(e.to_string()))
}

pub(crate) async fn read_server_frame(
    r: &mut quinn::RecvStream,
    reader: &mut FrameReader,
) -> Result<Option<ServerFrame>, FleetError> {
    loop {
        if let Some(bytes) = reader
            .next_frame()
            .map_err(|e| FleetError::Protocol(e.to_string()))?
        {
            return ServerFrame::decode(&bytes)
                .map(Some)
                .map_err(|e| FleetError::Protocol(e.to_string()));
        }
        // quinn's own buffers, not a fresh zeroed one per frame.
        match r.read_chunk(256 * 1024, true).await {
            Ok(Some(chunk)) => reader.push(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(e) => return Err(FleetError::Protocol(e.to_string())),
        }
    }
}

/// Why a bundle was not activated: a stable code and a sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub code: String,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: &str, reason: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

/// What the session needs from the thing that runs models. The agent's
/// implementation activates through [`Agent::install`]; the fleet simulator
/// verifies without running a model.
pub trait Activator: Send + Sync + 'static {
    fn installed(&self) -> Vec<InstalledBundle>;
    fn is_active(&self, a: &Assignment) -> bool;
    /// Verifies and activates a complete downloaded bundle (blocking).
    fn activate(&self, bundle: &Path, a: &Assignment) -> Result<(), Refusal>;
    /// Stops serving a model the control plane no longer assigns.
    fn unload(&self, model: &str) -> Result<(), Refusal>;
    /// Checks a download whose signed header has arrived (the artifacts may
    /// not have): signatures, assignment and target constraints, so a bundle
    /// this device would refuse is not downloaded to the end.
    fn precheck(&self, partial: &Path, a: &Assignment) -> Result<(), Refusal>;
    /// A bundle refused before it reached `activate` (by the server, the
    /// disk-space check or the header precheck).
    fn refused(&self, _a: &Assignment, _r: &Refusal) {}
}

/// Target constraints of a verified manifest against this device.
pub fn check_target(m: &Manifest, arch: &str, agent_version: &str) -> Result<(), Refusal> {
    if m.runtime != Runtime::Onnx {
        return Err(Refusal::new(
            "unsupported_runtime",
            format!("runtime {} is not available on this device", m.runtime),
        ));
    }
    if !m.target.architectures.is_empty() && !m.target.architectures.iter().any(|a| a == arch) {
        return Err(Refusal::new(
            "wrong_architecture",
            format!(
                "bundle targets {} but this device is {arch}",
                m.target.architectures.join(", ")
            ),
        ));
    }
    if let Some(min) = &m.target.min_agent_version {
        let parse =
            |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
        if parse(agent_version) < parse(min) {
            return Err(Refusal::new(
                "agent_too_old",
                format!("bundle needs agent {min} or later, this is {agent_version}"),
            ));
        }
    }
    Ok(())
}

/// Verifies the bundle's signed manifest against `trust`, that it is the
/// assigned one, and its target constraints: everything that can be
/// refused before the bytes of the model are looked at.
pub fn precheck(
    trust: &TrustRoot,
    bundle: &Path,
    a: &Assignment,
    now: u64,
) -> Result<Manifest, Refusal> {
    let f = std::fs::File::open(bundle)
        .map_err(|e| Refusal::new("io", format!("opening {}: {e}", bundle.display())))?;
    let mut r = std::io::BufReader::new(f);
    let header = read_header(&mut r).map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    let digest = sha256(&header.manifest);
    if digest != a.manifest_digest {
        return Err(Refusal::new(
            "digest_mismatch",
            format!(
                "received manifest {} but {} was assigned",
                digest.to_hex(),
                a.manifest_digest.to_hex()
            ),
        ));
    }
    let verified = verify_manifest(trust, &header, now, None)
        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    let m = verified.into_manifest();
    if m.model != a.model || m.version != a.version {
        return Err(Refusal::new(
            "wrong_model",
            format!(
                "bundle is {} v{}, assignment is {} v{}",
                m.model, m.version, a.model, a.version
            ),
        ));
    }
    check_target(&m, std::env::consts::ARCH, env!("CARGO_PKG_VERSION"))?;
    Ok(m)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Activation through the serving core's atomic install path.
pub struct AgentActivator {
    pub agent: Arc<Agent>,
    pub trust: TrustRoot,
}

impl Activator for AgentActivator {
    fn installed(&self) -> Vec<InstalledBundle> {
        // What actually serves, with the digest of its signed manifest.
        let table = self.agent.table();
        table
            .models
            .values()
            .map(|routes| {
                let l = &routes.champion.loaded;
                InstalledBundle {
                    model: l.manifest.model.clone(),
                    version: l.manifest.version,
                    manifest_digest: l.manifest_digest,
                    active: true,
                }
            })
            .collect()
    }

    fn is_active(&self, a: &Assignment) -> bool {
        self.agent
            .state()
            .models
            .get(a.model.as_str())
            .is_some_and(|s| s.champion == Some(a.version))
    }

    fn precheck(&self, partial: &Path, a: &Assignment) -> Result<(), Refusal> {
        precheck(&self.trust, partial, a, now_unix()).map(|_| ())
    }

    fn unload(&self, model: &str) -> Result<(), Refusal> {
        match self.agent.unload(model) {
            Ok(()) | Err(crate::serving::ActivateError::UnknownModel(_)) => Ok(()),
            Err(e) => Err(Refusal::new(e.code(), e.to_string())),
        }
    }

    fn refused(&self, a: &Assignment, r: &Refusal) {
        self.agent.record_event(crate::serving::DeviceEvent {
            kind: "refused",
            model: Some(a.model.to_string()),
            version: Some(a.version),
            detail: format!("{}: {}", r.code, r.reason),
        });
    }

    fn activate(&self, bundle: &Path, a: &Assignment) -> Result<(), Refusal> {
        if let Err(r) = precheck(&self.trust, bundle, a, now_unix()) {
            self.refused(a, &r);
            return Err(r);
        }
        // install() copies, verifies every artifact, compiles the model, runs
        // the signed test vectors and only then swaps it in.
        self.agent
            .install(bundle, Role::Champion, None)
            .map(|_| ())
            .map_err(|e| Refusal::new(e.code(), e.to_string()))
    }
}

/// Models the control plane activated here, persisted in
/// `fleet/managed.json`: only these are unloaded when they leave the
/// desired state, so side-loaded models are never touched.
struct ManagedModels {
    path: PathBuf,
    names: std::collections::BTreeSet<String>,
}

impl ManagedModels {
    fn open(data: &Path) -> Self {
        let path = fleet_dir(data).join("managed.json");
        let names = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self { path, names }
    }

    fn set(&mut self, model: &str, present: bool) {
        let changed = if present {
            self.names.insert(model.to_string())
        } else {
            self.names.remove(model)
        };
        if changed {
            let bytes = serde_json::to_vec(&self.names).unwrap_or_default();
            if let Err(e) = write_atomic(&self.path, &bytes, false) {
                tracing::error!(error = %e, "could not persist the managed model list");
            }
        }
    }
}

/// The replay floor for desired state, persisted in `fleet/sequence`.
pub struct DesiredGate {
    online_key: ferry_protocol::PublicKey,
    device_id: String,
    path: PathBuf,
    last: Option<u64>,
}

impl DesiredGate {
    pub fn open(data: &Path, id: &Identity) -> Result<Self, FleetError> {
        let path = fleet_dir(data).join("sequence");
        let last = match std::fs::read_to_string(&path) {
            Ok(s) => Some(s.trim().parse().map_err(|_| FleetError::Bad {
                path: path.clone(),
                reason: "not a sequence number".into(),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &path)(e)),
        };
        Ok(Self {
            online_key: id.online_key,
            device_id: id.device_id.clone(),
            path,
            last,
        })
    }

    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// Verifies `signed` at `now` and moves the floor to its sequence.
    pub fn accept(
        &mut self,
        signed: &SignedDesiredState,
        now: u64,
    ) -> Result<DesiredState, DesiredStateError> {
        let doc = signed.verify(&self.online_key, &self.device_id, now, self.last)?;
        self.last = Some(doc.sequence);
        if let Err(e) = write_atomic(&self.path, doc.sequence.to_string().as_bytes(), false) {
            tracing::error!(error = %e, "could not persist the desired-state sequence");
        }
        Ok(doc)
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub data: PathBuf,
    /// Per-agent download rate limit, bytes per second.
    pub max_bytes_per_sec: Option<u64>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl ClientOptions {
    pub fn new(data: &Path) -> Self {
        Self {
            data: data.to_path_buf(),
            max_bytes_per_sec: None,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff with full jitter in [d/2, d].
pub struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, cur: min }
    }
    pub fn reset(&mut self) {
        self.cur = self.min;
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_secs_f64(half.as_secs_f64() * rand::random::<f64>())
    }
}

struct Ctx {
    opts: ClientOptions,
    id: Identity,
    cfg: quinn::ClientConfig,
    act: Arc<dyn Activator>,
    gate: Mutex<DesiredGate>,
}

/// Runs the agent's session with `agent` activating bundles.
pub async fn run(
    agent: Arc<Agent>,
    trust: TrustRoot,
    opts: ClientOptions,
) -> Result<(), FleetError> {
    let act = Arc::new(AgentActivator { agent, trust });
    run_with(act, opts, None).await
}

/// Runs the session loop forever: connect, serve the session, back off,
/// reconnect. Returns only on a local configuration error.
pub async fn run_with(
    act: Arc<dyn Activator>,
    opts: ClientOptions,
    endpoint: Option<quinn::Endpoint>,
) -> Result<(), FleetError> {
    let id = Identity::load(&opts.data)?.ok_or_else(|| FleetError::Bad {
        path: fleet_dir(&opts.data).join("device.json"),
        reason: "not enrolled (run ferry-agent enroll)".into(),
    })?;
    let dir = fleet_dir(&opts.data);
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(io("reading", &p))
    };
    let cfg = tls::client_config(
        &read("ca.der")?,
        Some((read("device.der")?, read("device.key")?)),
    )?;
    let gate = Mutex::new(DesiredGate::open(&opts.data, &id)?);
    let endpoint = match endpoint {
        Some(e) => e,
        None => tls::client_endpoint()?,
    };
    let ctx = Arc::new(Ctx {
        opts: opts.clone(),
        id,
        cfg,
        act,
        gate,
    });
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    loop {
        let started = std::time::Instant::now();
        match session(&ctx, &endpoint).await {
            Ok(()) => tracing::info!(device = %ctx.id.device_id, "session ended"),
            Err(e) => {
                tracing::warn!(device = %ctx.id.device_id, error = %e, "session failed; serving continues")
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn session(ctx: &Arc<Ctx>, endpoint: &quinn::Endpoint) -> Result<(), FleetError> {
    let conn = tls::connect(endpoint, &ctx.id.server, ctx.cfg.clone()).await?;
    let proto = |e: quinn::ConnectionError| FleetError::Protocol(e.to_string());
    let (mut cs, mut cr) = conn.open_bi().await.map_err(proto)?;
    let last_sequence = ctx.gate.lock().map(|g| g.last()).unwrap_or(None);
    send_frame(
        &mut cs,
        &AgentFrame::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            target: std::env::consts::ARCH.into(),
            target_triple: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            runtimes: vec!["onnx".into()],
            installed: ctx.act.installed(),
            last_sequence,
        },
    )
    .await?;
    tracing::info!(device = %ctx.id.device_id, server = %ctx.id.server, "connected");
    let (report_tx, mut report_rx) = tokio::sync::mpsc::channel::<AgentFrame>(256);
    let (desired_tx, desired_rx) = tokio::sync::watch::channel::<Option<DesiredState>>(None);
    let reconciler = tokio::spawn(reconcile(
        ctx.clone(),
        conn.clone(),
        desired_rx,
        report_tx.clone(),
    ));
    let mut reconciler = AbortOnDrop(reconciler);
    let mut reader = FrameReader::new();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            frame = read_server_frame(&mut cr, &mut reader) => {
                match frame {
                    Ok(Some(ServerFrame::DesiredState(signed))) => {
                        let res = ctx.gate.lock().map_err(|_| FleetError::Protocol("gate lock".into()))?.accept(&signed, now_unix());
                        match res {
                            Ok(doc) => { let _ = desired_tx.send(Some(doc)); }
                            Err(e) => {
                                tracing::error!(error = %e, code = e.code(), "desired state refused");
                                send_frame(&mut cs, &AgentFrame::DesiredStateRefused {
                                    sequence: signed.peek_sequence(),
                                    code: e.code().into(),
                                    reason: e.to_string(),
                                }).await?;
                            }
                        }
                    }
                    Ok(Some(ServerFrame::Refused { code, reason })) => {
                        return Err(FleetError::Refused { code, reason });
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        return Err(match conn.close_reason() {
                            Some(r) => FleetError::Protocol(format!("connection closed: {r}")),
                            None => e,
                        });
                    }
                }
            }
            Some(f) = report_rx.recv() => {
                tracing::debug!(frame = ?f, "report to the control plane");
                send_frame(&mut cs, &f).await?
            }
            _ = heartbeat.tick() => send_frame(&mut cs, &AgentFrame::Heartbeat { at: now_unix() }).await?,
            // A session without a reconciler would take desired state and
            // act on none of it: end it and reconnect instead.
            _ = &mut reconciler.0 => return Err(FleetError::Protocol("reconciler stopped".into())),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum FetchError {
    /// The control plane refused (not assigned, unknown): do not retry this
    /// digest in this session.
    Refused(Refusal),
    /// The connection broke: the session reconnects and resumes.
    Broken(String),
}

async fn reconcile(
    ctx: Arc<Ctx>,
    conn: quinn::Connection,
    mut rx: tokio::sync::watch::Receiver<Option<DesiredState>>,
    tx: tokio::sync::mpsc::Sender<AgentFrame>,
) {
    let mut reported: HashSet<(String, u64)> = HashSet::new();
    let mut failed: HashMap<Digest, Refusal> = HashMap::new();
    let mut managed = ManagedModels::open(&ctx.opts.data);
    loop {
        let doc = rx.borrow_and_update().clone();
        let Some(doc) = doc else {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        // Undeployed: what the control plane put here and no longer assigns.
        let assigned: HashSet<String> = doc
            .assignments
            .iter()
            .map(|a| a.model.to_string())
            .collect();
        let gone: Vec<String> = managed
            .names
            .iter()
            .filter(|m| !assigned.contains(*m))
            .cloned()
            .collect();
        for model in gone {
            let act = ctx.act.clone();
            let m = model.clone();
            match tokio::task::spawn_blocking(move || act.unload(&m)).await {
                Ok(Ok(())) => {
                    tracing::info!(model = %model, "undeployed by the control plane; unloaded");
                    managed.set(&model, false);
                    reported.retain(|(m, _)| *m != model);
                }
                Ok(Err(r)) => {
                    tracing::error!(model = %model, code = %r.code, reason = %r.reason, "could not unload")
                }
                Err(e) => tracing::error!(model = %model, error = %e, "could not unload"),
            }
        }
        for a in doc.assignments {
            let key = (a.model.to_string(), a.version);
            let report = |outcome| AgentFrame::Report {
                model: a.model.clone(),
                version: a.version,
                outcome,
            };
            if ctx.act.is_active(&a) {
                managed.set(a.model.as_str(), true);
                if reported.insert(key) {
                    let _ = tx.send(report(ActivationOutcome::Activated)).await;
                }
                continue;
            }
            if failed.contains_key(&a.manifest_digest) {
                continue;
            }
            let path = match download(&ctx, &conn, &a, &tx).await {
                Ok(p) => p,
                Err(FetchError::Refused(r)) => {
                    ctx.act.refused(&a, &r);
                    let _ = tx
                        .send(report(ActivationOutcome::Refused {
                            code: r.code.clone(),
                            reason: r.reason.clone(),
                        }))
                        .await;
                    failed.insert(a.manifest_digest, r);
                    continue;
                }
                Err(FetchError::Broken(e)) => {
                    // End the whole session: the outer loop reconnects and
                    // resumes from the partial file. Returning alone would
                    // leave a live connection with nobody reconciling.
                    tracing::warn!(error = %e, model = %a.model, "download interrupted; reconnecting to resume");
                    conn.close(quinn::VarInt::from_u32(0), b"download interrupted");
                    return;
                }
            };
            let act = ctx.act.clone();
            let (p, a2) = (path.clone(), a.clone());
            let res = tokio::task::spawn_blocking(move || act.activate(&p, &a2))
                .await
                .unwrap_or_else(|e| Err(Refusal::new("internal", e.to_string())));
            // Verified or not, this file is done with: a refused one must be
            // downloaded afresh, never resumed.
            let _ = std::fs::remove_file(&path);
            match res {
                Ok(()) => {
                    tracing::info!(model = %a.model, version = a.version, "activated from the control plane");
                    managed.set(a.model.as_str(), true);
                    reported.insert(key);
                    let _ = tx.send(report(ActivationOutcome::Activated)).await;
                }
                Err(r) => {
                    tracing::error!(model = %a.model, version = a.version, code = %r.code, reason = %r.reason, "activation refused; previous version keeps serving");
                    let _ = tx
                        .send(report(ActivationOutcome::Refused {
                            code: r.code.clone(),
                            reason: r.reason.clone(),
                        }))
                        .await;
                    failed.insert(a.manifest_digest, r);
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Room for the rest of a download of `total` bytes that has `have`, plus
/// the store's copy made at activation, plus 5% of the bundle or 1 MiB of
/// slack. Refused before a byte is fetched, so a full disk never takes down
/// what already serves.
pub fn check_space(free: u64, have: u64, total: u64) -> Result<(), Refusal> {
    let slack = (total / 20).max(1 << 20);
    let need = total
        .saturating_sub(have)
        .saturating_add(total)
        .saturating_add(slack);
    if free < need {
        return Err(Refusal::new(
            "no_space",
            format!("{free} bytes free on the data volume; this {total}-byte bundle needs {need}"),
        ));
    }
    Ok(())
}

/// Magic and header length: the bytes before the encoded header.
const PREAMBLE: u64 = 12;

/// Where the signed header of the (partial) bundle at `path` ends, from its
/// preamble; `None` when the preamble is not a bundle's.
fn preamble_end(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut pre = [0u8; PREAMBLE as usize];
    std::fs::File::open(path).ok()?.read_exact(&mut pre).ok()?;
    if pre[..8] != ferry_protocol::bundle::MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64;
    (len as usize <= ferry_protocol::bundle::HEADER_LIMIT).then_some(PREAMBLE + len)
}

/// Path of the partial download of `digest`.
pub fn partial_path(data: &Path, digest: &Digest) -> PathBuf {
    fleet_dir(data)
        .join("partial")
        .join(format!("{}.part", digest.to_hex()))
}

async fn download(
    ctx: &Ctx,
    conn: &quinn::Connection,
    a: &Assignment,
    tx: &tokio::sync::mpsc::Sender<AgentFrame>,
) -> Result<PathBuf, FetchError> {
    let broken = |e: String| FetchError::Broken(e);
    let path = partial_path(&ctx.opts.data, &a.manifest_digest);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| broken(format!("creating {}: {e}", dir.display())))?;
    }
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(|e| broken(format!("opening {}: {e}", path.display())))?;
    let have = f.metadata().await.map_err(|e| broken(e.to_string()))?.len();
    let (mut s, mut r) = conn.open_bi().await.map_err(|e| broken(e.to_string()))?;
    send_frame(
        &mut s,
        &AgentFrame::Fetch {
            digest: a.manifest_digest,
            offset: have,
        },
    )
    .await
    .map_err(|e| broken(e.to_string()))?;
    let _ = s.finish();
    let mut reader = FrameReader::new();
    let (start, total) = match read_server_frame(&mut r, &mut reader)
        .await
        .map_err(|e| broken(e.to_string()))?
    {
        Some(ServerFrame::FetchStart { offset, total, .. }) => (offset, total),
        Some(ServerFrame::FetchRefused { reason, .. }) => {
            return Err(FetchError::Refused(Refusal::new("fetch_refused", reason)))
        }
        Some(_) => return Err(broken("unexpected reply to Fetch".into())),
        None => return Err(broken("fetch stream closed".into())),
    };
    if start != have {
        f.set_len(start).await.map_err(|e| broken(e.to_string()))?;
    }
    if let Ok(free) = fs2::available_space(&ctx.opts.data) {
        check_space(free, start, total).map_err(FetchError::Refused)?;
    }
    if have > 0 {
        tracing::info!(model = %a.model, offset = start, total, "resuming download");
    }
    let mut pos = start;
    let began = std::time::Instant::now();
    let mut next_progress = 0u64;
    // End of the signed header in the file, once known; checked once.
    let mut header_end: Option<u64> = None;
    let mut header_checked = false;
    while pos < total {
        let frame = read_server_frame(&mut r, &mut reader)
            .await
            .map_err(|e| broken(e.to_string()))?;
        let Some(ServerFrame::Chunk { offset, data, .. }) = frame else {
            return Err(broken(format!("download ended at {pos} of {total} bytes")));
        };
        if offset != pos {
            return Err(broken(format!("chunk at {offset}, expected {pos}")));
        }
        if pos + data.len() as u64 > total {
            return Err(FetchError::Refused(Refusal::new(
                "length_mismatch",
                format!("server sent more than the {total} bytes it declared"),
            )));
        }
        f.write_all(&data)
            .await
            .map_err(|e| broken(format!("writing {}: {e}", path.display())))?;
        pos += data.len() as u64;
        if !header_checked {
            if header_end.is_none() && pos >= PREAMBLE {
                f.flush().await.map_err(|e| broken(e.to_string()))?;
                header_end = preamble_end(&path);
                // Not a bundle preamble: full verification refuses it.
                header_checked = header_end.is_none();
            }
            if header_end.is_some_and(|end| pos >= end) {
                header_checked = true;
                f.flush().await.map_err(|e| broken(e.to_string()))?;
                let act = ctx.act.clone();
                let (p, a2) = (path.clone(), a.clone());
                let res = tokio::task::spawn_blocking(move || act.precheck(&p, &a2))
                    .await
                    .unwrap_or_else(|e| Err(Refusal::new("internal", e.to_string())));
                if let Err(r) = res {
                    // Refused before the artifacts: never resume this file.
                    drop(f);
                    let _ = std::fs::remove_file(&path);
                    return Err(FetchError::Refused(r));
                }
            }
        }
        if let Some(rate) = ctx.opts.max_bytes_per_sec.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64((pos - start) as f64 / rate as f64);
            let spent = began.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
        if pos >= next_progress || pos == total {
            next_progress = pos + total / 10 + 1;
            // Advisory: never let a slow control stream hold up the download.
            let _ = tx.try_send(AgentFrame::Progress {
                manifest_digest: a.manifest_digest,
                received: pos,
                total,
            });
        }
    }
    f.flush().await.map_err(|e| broken(e.to_string()))?;
    f.sync_all().await.map_err(|e| broken(e.to_string()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::TargetConstraints;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut prev_cap = Duration::from_millis(100);
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d >= prev_cap / 2 && d <= prev_cap, "{d:?} vs {prev_cap:?}");
            prev_cap = (prev_cap * 2).min(Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    fn manifest() -> Manifest {
        Manifest {
            model: ferry_protocol::ModelName::try_from("m".to_string()).unwrap(),
            version: 1,
            runtime: Runtime::Onnx,
            schema: ferry_protocol::Schema {
                inputs: vec![],
                outputs: vec![],
            },
            baseline: None,
            artifacts: vec![],
            tags: Default::default(),
            metrics: Default::default(),
            lineage: Default::default(),
            created_at: 0,
            expires_at: None,
            target: TargetConstraints::default(),
            test_vectors: None,
        }
    }

    #[test]
    fn disk_space_check_counts_the_rest_of_the_download_and_the_store_copy() {
        let mb = 1 << 20;
        // 10 MB bundle, nothing yet: 10 (download) + 10 (store) + 1 slack.
        assert!(check_space(21 * mb, 0, 10 * mb).is_ok());
        let r = check_space(20 * mb, 0, 10 * mb).unwrap_err();
        assert_eq!(r.code, "no_space");
        assert!(r.reason.contains("needs"), "{}", r.reason);
        // Half downloaded already: 5 less needed.
        assert!(check_space(16 * mb, 5 * mb, 10 * mb).is_ok());
        assert!(check_space(0, 0, u64::MAX).is_err());
    }

    #[test]
    fn target_constraints_refuse_wrong_architecture_and_old_agent() {
        let mut m = manifest();
        m.target = TargetConstraints {
            architectures: vec!["aarch64".into()],
            min_agent_version: None,
        };
        assert_eq!(
            check_target(&m, "x86_64", "0.1.0").unwrap_err().code,
            "wrong_architecture"
        );
        assert!(check_target(&m, "aarch64", "0.1.0").is_ok());
        m.target.architectures.clear();
        m.target.min_agent_version = Some("0.2.0".into());
        assert_eq!(
            check_target(&m, "x86_64", "0.1.9").unwrap_err().code,
            "agent_too_old"
        );
        assert!(check_target(&m, "x86_64", "0.10.0").is_ok());
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use ferry_protocol::desired::DesiredState;

    fn doc(seq: u64, expires_at: u64) -> DesiredState {
        DesiredState {
            tenant: "t".into(),
            device_id: "dev_a".into(),
            sequence: seq,
            issued_at: 0,
            expires_at,
            assignments: vec![],
        }
    }

    #[test]
    fn gate_refuses_replays_across_restarts_and_expired_states() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(fleet_dir(d.path())).unwrap();
        let k = SigningKey::from_bytes(&[7; 32]);
        let id = Identity {
            device_id: "dev_a".into(),
            tenant: "t".into(),
            server: "127.0.0.1:1".into(),
            online_key: ferry_protocol::PublicKey::from_signing_key(&k),
            mqtt_url: None,
        };
        let old = SignedDesiredState::sign(&doc(10, 1000), &k);
        let new = SignedDesiredState::sign(&doc(11, 1000), &k);
        let mut g = DesiredGate::open(d.path(), &id).unwrap();
        g.accept(&old, 500).unwrap();
        g.accept(&new, 500).unwrap();
        // A restarted agent still refuses the older document.
        let mut g = DesiredGate::open(d.path(), &id).unwrap();
        assert_eq!(g.last(), Some(11));
        assert_eq!(
            g.accept(&old, 500).unwrap_err().code(),
            "replayed_desired_state"
        );
        assert_eq!(
            g.accept(&new, 500).unwrap_err().code(),
            "replayed_desired_state"
        );
        // A fresh sequence that has expired (controlled clock) is refused too.
        let frozen = SignedDesiredState::sign(&doc(12, 1000), &k);
        assert_eq!(
            g.accept(&frozen, 1000).unwrap_err().code(),
            "expired_desired_state"
        );
        assert_eq!(g.last(), Some(11));
        // Signed by another key: refused.
        let forged = SignedDesiredState::sign(&doc(13, 1000), &SigningKey::from_bytes(&[8; 32]));
        assert_eq!(
            g.accept(&forged, 500).unwrap_err().code(),
            "bad_desired_state_signature"
        );
    }
}

/// Connects as the enrolled device in `data`, asks for `digest` and returns
/// the control plane's first answer: `Ok(total length)` or `Err(reason)`
/// when it refuses. For diagnostics and the refusal tests.
pub async fn probe_fetch(data: &Path, digest: Digest) -> Result<Result<u64, String>, FleetError> {
    let id = Identity::load(data)?.ok_or_else(|| FleetError::Bad {
        path: fleet_dir(data).join("device.json"),
        reason: "not enrolled".into(),
    })?;
    let dir = fleet_dir(data);
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(io("reading", &p))
    };
    let cfg = tls::client_config(
        &read("ca.der")?,
        Some((read("device.der")?, read("device.key")?)),
    )?;
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
