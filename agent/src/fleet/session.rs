//! The agent's side of the QUIC session: connect with the device
//! certificate, say hello, hand what arrives to the [`Reconciler`] and
//! execute what it asks for (downloads, activations, unloads, reports).
//! Reconnects with jittered exponential backoff; serving never depends on
//! it.

use super::activator::{now_unix, Activator, AgentActivator};
use super::download::{partial_len, partial_path, scan_partials, FetchError, Fetcher};
use super::gate::{save_floor, DesiredGate};
use super::reconcile::{Action, FetchResult, Outcome, Reconciler, Restored};
use super::wire::{read_server_frame, send_frame};
use super::{fleet_dir, tls, write_atomic, FleetError, Identity, Refusal};
use crate::failpoint::crash_point;
use crate::serving::Agent;
use ferry_protocol::desired::Assignment;
use ferry_protocol::frames::{AgentFrame, FrameReader, ServerFrame, PROTOCOL_VERSION};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// `fleet/managed.json`: models the control plane activated here. Only
/// these are unloaded when they leave the desired state, so side-loaded
/// models are never touched.
fn managed_path(data: &Path) -> PathBuf {
    fleet_dir(data).join("managed.json")
}

fn load_managed(data: &Path) -> BTreeSet<String> {
    std::fs::read(managed_path(data))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// What a (re)started agent knows: what serves, what it manages, what it
/// had half downloaded.
fn restore(data: &Path, act: &dyn Activator) -> Restored {
    let installed = act.installed();
    let mut partials = scan_partials(data);
    // A crash after install but before the activate job removed its
    // download leaves the file behind: the bundle serves, so it is done with.
    partials.retain(|digest, _| {
        let done = installed.iter().any(|b| b.manifest_digest == *digest);
        if done {
            let _ = std::fs::remove_file(partial_path(data, digest));
        }
        !done
    });
    Restored {
        installed,
        managed: load_managed(data),
        partials,
        trust: held_trust_root(data),
    }
}

/// `fleet/trust.root`, opened without looking at its expiry (an expired
/// root still anchors the chain to its successors).
fn held_trust_root(data: &Path) -> Option<ferry_protocol::TrustRoot> {
    let path = fleet_dir(data).join("trust.root");
    let bytes = std::fs::read(&path).ok()?;
    match ferry_protocol::SignedTrustRoot::from_bytes(&bytes).and_then(|s| s.open_any_time()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "held trust root does not open");
            None
        }
    }
}

struct Ctx {
    opts: ClientOptions,
    id: Identity,
    cfg: quinn::ClientConfig,
    act: Arc<dyn Activator>,
    fetcher: Fetcher,
}

impl Ctx {
    /// Executes a quick, local action.
    fn apply_local(&self, action: Action) {
        match action {
            Action::SaveSequence(seq) => {
                if let Err(e) = save_floor(&self.opts.data, seq) {
                    tracing::error!(error = %e, "could not persist the desired-state sequence");
                }
            }
            Action::SaveManaged(names) => {
                let bytes = serde_json::to_vec(&names).unwrap_or_default();
                if let Err(e) = write_atomic(&managed_path(&self.opts.data), &bytes, false) {
                    tracing::error!(error = %e, "could not persist the managed model list");
                }
            }
            Action::RecordRefusal {
                assignment,
                refusal,
            } => self.act.refused(&assignment, &refusal),
            Action::SaveTrust { root, signed } => {
                let path = fleet_dir(&self.opts.data).join("trust.root");
                match write_atomic(&path, &signed.to_bytes(), false) {
                    Ok(()) => self.act.set_trust(root),
                    Err(e) => {
                        tracing::error!(error = %e, "could not persist the new trust root; keeping the held one")
                    }
                }
            }
            other => tracing::error!(action = ?other, "not a local action"),
        }
    }
}

/// Runs the agent's session with `agent` activating bundles (against the
/// trust root it holds, which the session replaces on rotation).
pub async fn run(agent: Arc<Agent>, opts: ClientOptions) -> Result<(), FleetError> {
    let act = Arc::new(AgentActivator { agent });
    run_with(act, opts, None).await
}

/// Whether the control plane closed `conn` because this device is revoked.
fn revoked(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == quinn::VarInt::from_u32(3)
                && c.reason.windows(7).any(|w| w == b"revoked")
    )
}

/// Runs the session loop: connect, serve the session, back off, reconnect.
/// Returns on a local configuration error, or once the control plane
/// refused a connection because the device is revoked.
pub async fn run_with(
    act: Arc<dyn Activator>,
    opts: ClientOptions,
    endpoint: Option<quinn::Endpoint>,
) -> Result<(), FleetError> {
    let id = Identity::load(&opts.data)?.ok_or_else(|| FleetError::Bad {
        path: fleet_dir(&opts.data).join("device.json"),
        reason: "not enrolled (run ferry-agent enroll)".into(),
    })?;
    let cfg = super::device_client_config(&opts.data)?;
    let mut rec = Reconciler::new(
        DesiredGate::open(&opts.data, &id)?,
        restore(&opts.data, act.as_ref()),
    );
    let endpoint = match endpoint {
        Some(e) => e,
        None => tls::client_endpoint()?,
    };
    let fetcher = Fetcher {
        data: opts.data.clone(),
        max_bytes_per_sec: opts.max_bytes_per_sec,
        act: act.clone(),
    };
    let ctx = Arc::new(Ctx {
        opts: opts.clone(),
        id,
        cfg,
        act,
        fetcher,
    });
    let mut backoff = super::backoff(opts.backoff_min, opts.backoff_max);
    loop {
        let started = std::time::Instant::now();
        // Whether the control plane said anything in this session: a
        // revoked device is refused before it does.
        let mut heard = false;
        let res = match tls::connect_named(
            &endpoint,
            &ctx.id.server,
            ctx.id.server_name.as_deref(),
            ctx.cfg.clone(),
        )
        .await
        {
            Ok(conn) => {
                let res = session(&ctx, &conn, &mut rec, &mut heard).await;
                if revoked(&conn) {
                    rec.handle_revoked();
                }
                res
            }
            Err(e) => Err(e),
        };
        rec.handle_disconnected();
        while let Some(a) = rec.poll_action() {
            ctx.apply_local(a);
        }
        match res {
            Ok(()) => tracing::info!(device = %ctx.id.device_id, "session ended"),
            Err(e) => {
                tracing::warn!(device = %ctx.id.device_id, error = %e, "session failed; serving continues")
            }
        }
        if rec.is_revoked() && !heard {
            tracing::error!(device = %ctx.id.device_id, "the control plane revoked this device; fleet session stopped, serving continues");
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = super::backoff(opts.backoff_min, opts.backoff_max);
        }
        tokio::time::sleep(backoff.next().unwrap_or(opts.backoff_max)).await;
    }
}

/// A spawned long action, aborted when the session ends.
struct Job(tokio::task::JoinHandle<Outcome>);
impl Drop for Job {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn job_done(job: &mut Option<Job>) -> Result<Outcome, tokio::task::JoinError> {
    match job {
        Some(j) => (&mut j.0).await,
        None => std::future::pending().await,
    }
}

async fn session(
    ctx: &Arc<Ctx>,
    conn: &quinn::Connection,
    rec: &mut Reconciler,
    heard: &mut bool,
) -> Result<(), FleetError> {
    let proto = |e: quinn::ConnectionError| FleetError::Protocol(e.to_string());
    let (mut cs, mut cr) = conn.open_bi().await.map_err(proto)?;
    send_frame(
        &mut cs,
        &AgentFrame::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            target: std::env::consts::ARCH.into(),
            target_triple: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            runtimes: ctx.act.runtimes(),
            installed: ctx.act.installed(),
            last_sequence: rec.last_sequence(),
        },
    )
    .await?;
    tracing::info!(device = %ctx.id.device_id, server = %ctx.id.server, "connected");
    rec.handle_connected();
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::channel::<AgentFrame>(256);
    let mut job: Option<Job> = None;
    let mut reader = FrameReader::new();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    loop {
        while let Some(action) = rec.poll_action() {
            match action {
                Action::Send(f) => {
                    tracing::debug!(frame = ?f, "report to the control plane");
                    send_frame(&mut cs, &f).await?;
                }
                Action::Reconnect => {
                    conn.close(quinn::VarInt::from_u32(0), b"download interrupted");
                    return Err(FleetError::Protocol(
                        "download interrupted; reconnecting to resume".into(),
                    ));
                }
                Action::Unload { model } => {
                    job = Some(Job(tokio::spawn(unload(ctx.clone(), model))))
                }
                Action::Fetch { assignment, offset } => {
                    job = Some(Job(tokio::spawn(fetch(
                        ctx.clone(),
                        conn.clone(),
                        assignment,
                        offset,
                        progress_tx.clone(),
                    ))))
                }
                Action::Activate { assignment } => {
                    job = Some(Job(tokio::spawn(activate(ctx.clone(), assignment))))
                }
                Action::Restore { assignment } => {
                    job = Some(Job(tokio::spawn(restore_held(ctx.clone(), assignment))))
                }
                local => ctx.apply_local(local),
            }
        }
        tokio::select! {
            frame = read_server_frame(&mut cr, &mut reader) => {
                match frame {
                    Ok(Some(ServerFrame::DesiredState(signed))) => {
                        *heard = true;
                        rec.handle_desired(&signed, &ctx.act.installed(), now_unix());
                    }
                    Ok(Some(ServerFrame::TrustRoots { chain })) => {
                        *heard = true;
                        rec.handle_trust_roots(&chain, now_unix());
                    }
                    Ok(Some(ServerFrame::Refused { code, reason })) => {
                        return Err(FleetError::Refused { code, reason });
                    }
                    Ok(Some(_)) => *heard = true,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        return Err(match conn.close_reason() {
                            Some(r) => FleetError::Protocol(format!("connection closed: {r}")),
                            None => e,
                        });
                    }
                }
            }
            Some(f) = progress_rx.recv() => send_frame(&mut cs, &f).await?,
            _ = heartbeat.tick() => send_frame(&mut cs, &AgentFrame::Heartbeat { at: now_unix() }).await?,
            done = job_done(&mut job) => {
                job = None;
                match done {
                    Ok(outcome) => rec.handle_outcome(outcome),
                    // A session whose job died would take desired state and
                    // act on none of it: end it and reconnect instead.
                    Err(e) => return Err(FleetError::Protocol(format!("reconciler job failed: {e}"))),
                }
            }
        }
    }
}

fn internal(e: tokio::task::JoinError) -> Result<(), Refusal> {
    Err(Refusal::new("internal", e.to_string()))
}

async fn unload(ctx: Arc<Ctx>, model: String) -> Outcome {
    let act = ctx.act.clone();
    let m = model.clone();
    let result = tokio::task::spawn_blocking(move || act.unload(&m))
        .await
        .unwrap_or_else(internal);
    Outcome::Unloaded { model, result }
}

async fn fetch(
    ctx: Arc<Ctx>,
    conn: quinn::Connection,
    a: Assignment,
    offset: u64,
    progress: tokio::sync::mpsc::Sender<AgentFrame>,
) -> Outcome {
    let result = match ctx.fetcher.download(&conn, &a, offset, &progress).await {
        Ok(_) => {
            crash_point("fleet-downloaded");
            FetchResult::Complete
        }
        Err(FetchError::Refused(r)) => FetchResult::Refused(r),
        Err(FetchError::Broken(e)) => FetchResult::Broken(e),
    };
    Outcome::Fetched {
        have: partial_len(&ctx.opts.data, &a.manifest_digest),
        assignment: a,
        result,
    }
}

async fn restore_held(ctx: Arc<Ctx>, a: Assignment) -> Outcome {
    let act = ctx.act.clone();
    let a2 = a.clone();
    let result = tokio::task::spawn_blocking(move || act.restore(&a2))
        .await
        .unwrap_or_else(internal);
    Outcome::Activated {
        assignment: a,
        result,
    }
}

async fn activate(ctx: Arc<Ctx>, a: Assignment) -> Outcome {
    let path = partial_path(&ctx.opts.data, &a.manifest_digest);
    let act = ctx.act.clone();
    let (p, a2) = (path.clone(), a.clone());
    let result = tokio::task::spawn_blocking(move || act.activate(&p, &a2))
        .await
        .unwrap_or_else(internal);
    // Verified or not, this file is done with: a refused one must be
    // downloaded afresh, never resumed.
    let _ = std::fs::remove_file(&path);
    if result.is_ok() {
        crash_point("fleet-activated");
    }
    Outcome::Activated {
        assignment: a,
        result,
    }
}
