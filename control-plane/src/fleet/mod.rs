//! Fleet distribution: device enrollment, the mutual-TLS QUIC endpoint,
//! signed desired state, chunked resumable downloads and deployments.
//!
//! Invariants:
//! - a device's id and tenant come only from its client certificate (the
//!   SHA-256 of the DER the device CA issued, looked up in `devices`);
//!   nothing a device says in a frame names it;
//! - a device can fetch only a bundle assigned to it by its current desired
//!   state (so never another tenant's);
//! - desired state is signed with the control plane's online key and carries
//!   a strictly increasing sequence number (a persisted counter, never the
//!   clock: `sequence`) and an expiry;
//! - devices follow the tenant's trust-root chain from the version they hold
//!   (`trust`); they verify it, this server cannot forge it.

mod admission;
pub mod api;
pub mod assign;
mod bundle_cache;
mod bundle_serve;
pub mod ca;
mod device_snapshot;
mod enrollment;
mod quic;
pub mod report_limit;
mod sequence;
pub mod service;
mod sessions;
mod stream_io;
pub mod trust;

use crate::audit::AuditEntry;
use crate::blobs::Blobs;
use crate::store::fleet as db;
use crate::store::rollouts::RolloutTarget;
use crate::store::{Store, StoreError};
use ed25519_dalek::SigningKey;
use ferry_protocol::desired::{Assignment, DesiredState, SignedDesiredState};
use ferry_protocol::keys::PublicKey;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use bundle_serve::ServeOptions;
pub use quic::ALPN;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Ca(#[from] ca::CaError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("online key {path}: {reason}")]
    OnlineKey { path: PathBuf, reason: String },
    #[error("the fleet service is shutting down")]
    ShuttingDown,
    #[error("desired-state sequence: {0}")]
    Sequence(String),
}

/// Settings of the fleet endpoint.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub quic: SocketAddr,
    /// Names and addresses the server certificate is valid for.
    pub server_names: Vec<String>,
    /// Lifetime of a desired-state document, seconds; it is re-issued at
    /// half of it.
    pub desired_ttl: u64,
    /// Downloads served at once, fleet-wide; further fetches wait
    /// (`FERRY_FLEET_MAX_DOWNLOADS`, default [`DEFAULT_DOWNLOADS`]). On one
    /// machine's CPU, fewer streams at a time finish a fleet sooner and
    /// hold less memory (docs/BENCHMARKS.md); devices on slow links want
    /// more, since the aggregate rate is at most this many times a
    /// device's rate.
    pub max_concurrent_downloads: usize,
    /// Bytes per chunk frame (`FERRY_FLEET_CHUNK_BYTES`, default 64 KiB).
    pub chunk_bytes: usize,
    /// Bytes a connection may have written but not yet acknowledged
    /// (`FERRY_FLEET_SEND_WINDOW_KB`). With every download slot busy the
    /// server holds this much per slot, so the default shares
    /// [`SEND_BUDGET`] among the slots (1 MiB each at 32 slots); quinn's own
    /// default, 10 MB a connection, let a rollout of a large bundle hold
    /// hundreds of MB.
    pub send_window: u64,
    /// The telemetry broker handed to devices at enrollment.
    pub mqtt_url: Option<String>,
}

/// Downloads served at once by default. 32, not 64: a 1,000-device
/// rollout of a 200 MB bundle then peaks under issue 17's 300 MB, and the
/// 1,000 × 5 MB fleet finished sooner with 32 than with 64 on the 2-core
/// machine (docs/BENCHMARKS.md).
pub const DEFAULT_DOWNLOADS: usize = 32;

/// Send buffers of all download slots together, by default.
pub const SEND_BUDGET: u64 = 32 << 20;

/// The default per-connection send window for `slots` download slots:
/// [`SEND_BUDGET`] shared, between 128 KiB (below that a single download
/// crawls on a long link) and 8 MiB.
fn default_send_window(slots: usize) -> u64 {
    (SEND_BUDGET / slots.max(1) as u64).clamp(128 << 10, 8 << 20)
}

impl FleetOptions {
    pub fn new(quic: SocketAddr) -> Self {
        let max_concurrent_downloads = std::env::var("FERRY_FLEET_MAX_DOWNLOADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(DEFAULT_DOWNLOADS)
            .max(1);
        Self {
            quic,
            mqtt_url: None,
            server_names: default_server_names(quic, &host_name()),
            desired_ttl: std::env::var("FERRY_FLEET_DESIRED_TTL")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3600),
            max_concurrent_downloads,
            chunk_bytes: std::env::var("FERRY_FLEET_CHUNK_BYTES")
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(64 * 1024)
                .clamp(256, 1024 * 1024),
            send_window: std::env::var("FERRY_FLEET_SEND_WINDOW_KB")
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .map(|kb| kb.clamp(64, 64 * 1024) * 1024)
                .unwrap_or_else(|| default_send_window(max_concurrent_downloads)),
        }
    }
}

impl FleetOptions {
    /// The certificate names: `names` when given (`--quic-name`), else the
    /// default ([`default_server_names`]). Names are never wildcards made
    /// up here, and the agents verify them in full.
    pub fn with_names(mut self, names: &[String]) -> Self {
        let names: Vec<String> = names
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if !names.is_empty() {
            self.server_names = names;
        }
        self
    }
}

/// This machine's host name (`/etc/hostname`, or `HOSTNAME`), if any.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The default certificate names: the host's name, the QUIC address when it
/// is a specific one, and loopback (`localhost`, 127.0.0.1, ::1).
pub fn default_server_names(quic: SocketAddr, host: &Option<String>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: String| {
        if !names.contains(&n) {
            names.push(n);
        }
    };
    if let Some(h) = host {
        add(h.clone());
    }
    if !quic.ip().is_unspecified() {
        add(quic.ip().to_string());
    }
    for n in ["localhost", "127.0.0.1", "::1"] {
        add(n.to_string());
    }
    names
}

/// A tenant's live deployments and rollout assignments (by device) as
/// fetched at a change generation.
struct Fetched {
    generation: u64,
    at: std::time::Instant,
    live: Arc<Live>,
}

/// What decides a tenant's assignments ([`assign::assign`]).
#[derive(Default)]
struct Live {
    deployments: Vec<db::Deployment>,
    targets: HashMap<String, Vec<RolloutTarget>>,
}

/// How long fetched deployments serve without a local change: bounds how
/// stale a change made through another replica can be here.
const DEPLOYMENTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// The argument of the failpoint `name` when a test configured it
/// (`FAILPOINTS=name=return(arg)`; empty without an argument). Always
/// `None` in a build without the `failpoints` feature.
pub(crate) fn failpoint(name: &str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    return fail::eval(name, |arg| arg.unwrap_or_default());
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Shared state of the fleet service.
pub struct Fleet {
    pub store: Store,
    pub blobs: Blobs,
    pub ca: ca::DeviceCa,
    online: SigningKey,
    pub opts: FleetOptions,
    /// Desired-state sequence numbers (`DATA/fleet/sequence`).
    sequence: sequence::Sequencer,
    /// Current trust-root version by tenant, read at most every few
    /// seconds (`trust::TRUST_VERSION_MAX_AGE`).
    trust_versions: tokio::sync::Mutex<HashMap<String, (std::time::Instant, Option<u64>)>>,
    /// The trust root each device reported holding: (version, expires_at).
    held_roots: Mutex<HashMap<String, (u64, u64)>>,
    /// Bumped on every change that may alter some device's desired state.
    changes: tokio::sync::watch::Sender<u64>,
    /// Bumped for every activation report stored: the rollout driver steps
    /// at once on new input.
    reports: tokio::sync::watch::Sender<u64>,
    /// Open connections by device id (closed on revocation), each with
    /// the id of its session lease in the database.
    connections: Mutex<HashMap<String, sessions::Session>>,
    /// Each tenant's devices at a device generation
    /// ([`Fleet::device_snapshot`]).
    snapshots: tokio::sync::Mutex<HashMap<String, device_snapshot::DeviceSnapshot>>,
    /// Live deployments by tenant, fetched once per change for every
    /// connected device (the lock makes the others wait for that fetch).
    deployments: tokio::sync::Mutex<HashMap<String, Fetched>>,
    /// Bundle serving: ranged reads from the artifact store through a
    /// byte-bounded cache, and the download slots (fleet-wide and per
    /// device; in flight and peak are what an admin sees in
    /// `GET /api/v1/fleet/devices`).
    serve: bundle_serve::BundleServer,
    /// Download progress by (device id, manifest digest hex), percent. Kept
    /// in memory: progress is advisory, arrives ten times per download, and
    /// writing it to the database made a thousand devices queue on SQLite's
    /// single writer. Outcomes (active, failed) are stored.
    progress: Mutex<HashMap<(String, String), u64>>,
    /// Queues the fleet's own writes (reports, last-seen) in this process:
    /// SQLite has one writer, and its busy handler makes waiting writers
    /// sleep up to 100 ms at a time, which idled a thousand reporting
    /// devices; an async queue wakes the next one at once.
    pub(crate) writes: tokio::sync::Mutex<()>,
}

/// Download slot usage, fleet-wide.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DownloadSlots {
    pub limit: usize,
    pub in_flight: usize,
    pub peak: usize,
}

fn load_online_key(path: &Path) -> Result<SigningKey, FleetError> {
    let err = |reason: String| FleetError::OnlineKey {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let bytes = hex::decode(s.trim()).map_err(|e| err(e.to_string()))?;
            let arr: [u8; 32] = bytes
                .try_into()
                .map_err(|_| err("expected 32 hex-encoded bytes".into()))?;
            Ok(SigningKey::from_bytes(&arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            use std::io::Write;
            let mut f = o.open(path).map_err(|e| err(e.to_string()))?;
            f.write_all(hex::encode(key.to_bytes()).as_bytes())
                .map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl Fleet {
    /// Opens the CA and online key under `data/fleet` and creates the fleet
    /// tables.
    pub async fn open(
        store: Store,
        blobs: Blobs,
        data: &Path,
        opts: FleetOptions,
    ) -> Result<Arc<Self>, FleetError> {
        let dir = data.join("fleet");
        std::fs::create_dir_all(&dir).map_err(|source| FleetError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let ca = ca::DeviceCa::load_or_create(&dir)?;
        let online = load_online_key(&dir.join("online.key"))?;
        let sequence = sequence::Sequencer::open(&dir.join("sequence"))?;
        let (changes, _) = tokio::sync::watch::channel(0);
        let serve = bundle_serve::BundleServer::new(
            opts.max_concurrent_downloads,
            ServeOptions::from_env(),
        );
        Ok(Arc::new(Self {
            store,
            blobs,
            ca,
            online,
            opts,
            sequence,
            trust_versions: tokio::sync::Mutex::new(HashMap::new()),
            held_roots: Mutex::new(HashMap::new()),
            changes,
            reports: tokio::sync::watch::Sender::new(0),
            connections: Mutex::new(HashMap::new()),
            snapshots: tokio::sync::Mutex::new(HashMap::new()),
            deployments: tokio::sync::Mutex::new(HashMap::new()),
            serve,
            progress: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn online_public_key(&self) -> PublicKey {
        PublicKey::from_signing_key(&self.online)
    }

    /// Download slot usage, fleet-wide.
    pub fn download_slots(&self) -> DownloadSlots {
        self.serve.slots()
    }

    /// Tells every connection to recompute its desired state.
    pub fn changed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    /// Changes of desired state (deployments, labels, revocations,
    /// rollout assignments).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Activation reports stored.
    pub(crate) fn subscribe_reports(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reports.subscribe()
    }

    /// Says an activation report was stored.
    pub(crate) fn reported(&self) {
        self.reports.send_modify(|n| *n += 1);
    }

    /// The next desired-state sequence number for a device whose replay
    /// floor is `floor` (the highest it applied, as its `Hello` said, or
    /// the last this connection sent): above the persisted counter and
    /// above the floor. The clock plays no part. A device's floor never
    /// moves the shared counter, so one device cannot push every other
    /// device's numbers up.
    pub(crate) fn next_sequence(&self, floor: Option<u64>) -> Result<u64, FleetError> {
        let n = self.sequence.next()?;
        Ok(match floor {
            Some(f) => n.max(f.saturating_add(1)),
            None => n,
        })
    }

    /// Live deployments and rollout assignments of `tenant`, from one
    /// query each per change: every connected device recomputes its
    /// desired state after a change, and all of them read the same fetched
    /// lists.
    async fn live(&self, tenant: &str) -> Result<Arc<Live>, StoreError> {
        let generation = *self.changes.borrow();
        let mut cache = self.deployments.lock().await;
        if let Some(f) = cache.get(tenant) {
            if f.generation == generation && f.at.elapsed() < DEPLOYMENTS_MAX_AGE {
                return Ok(f.live.clone());
            }
        }
        let deployments = self.store.live_deployments(tenant).await?;
        let mut targets: HashMap<String, Vec<RolloutTarget>> = HashMap::new();
        for t in self.store.rollout_targets(tenant).await? {
            targets.entry(t.device_id.clone()).or_default().push(t);
        }
        let live = Arc::new(Live {
            deployments,
            targets,
        });
        cache.insert(
            tenant.to_string(),
            Fetched {
                generation,
                at: std::time::Instant::now(),
                live: live.clone(),
            },
        );
        Ok(live)
    }

    /// What `device` should run now: per model, the newest of the live
    /// deployments whose selector matches its labels and of what rollouts
    /// assigned it ([`assign::assign`]).
    pub async fn assignments(&self, device: &db::Device) -> Result<Vec<Assignment>, StoreError> {
        let live = self.live(&device.tenant).await?;
        let targets = live.targets.get(&device.id).map_or(&[][..], Vec::as_slice);
        Ok(assign::assign(&live.deployments, targets, device))
    }

    /// Whether `d` is what each of `devices` should run of its model now (a
    /// newer deployment or a rollout may win a device), in their order:
    /// [`Self::assignments`] for many devices, reading the live deployments once.
    pub async fn wanted(
        &self,
        d: &db::Deployment,
        devices: &[&db::Device],
    ) -> Result<Vec<bool>, StoreError> {
        let live = self.live(&d.tenant).await?;
        Ok(devices
            .iter()
            .map(|dev| {
                let targets = live.targets.get(&dev.id).map_or(&[][..], Vec::as_slice);
                assign::wins(&live.deployments, targets, *dev, &d.model, &d.digest)
            })
            .collect())
    }

    /// Signs a fresh desired-state document for `device` at `now`, numbered
    /// above `floor` ([`Self::next_sequence`]).
    pub async fn desired_state(
        &self,
        device: &db::Device,
        now: u64,
        floor: Option<u64>,
    ) -> Result<(SignedDesiredState, u64), FleetError> {
        let assignments = self.assignments(device).await?;
        let sequence = self.next_sequence(floor)?;
        let doc = DesiredState {
            tenant: device.tenant.clone(),
            device_id: device.id.clone(),
            sequence,
            issued_at: now,
            expires_at: now + self.opts.desired_ttl,
            assignments,
        };
        Ok((SignedDesiredState::sign(&doc, &self.online), sequence))
    }

    /// Signs an arbitrary document with the online key (test hooks and the
    /// simulator use it to build replayed or expired states).
    pub fn sign(&self, doc: &DesiredState) -> SignedDesiredState {
        SignedDesiredState::sign(doc, &self.online)
    }

    fn register(&self, device: &str, conn: quinn::Connection, session: String) {
        if let Ok(mut m) = self.connections.lock() {
            if let Some(old) = m.insert(device.to_string(), sessions::Session { conn, id: session })
            {
                old.conn.close(
                    quinn::VarInt::from_u32(2),
                    b"replaced by a newer connection",
                );
            }
        }
    }

    fn unregister(&self, device: &str, conn: &quinn::Connection) {
        if let Ok(mut m) = self.connections.lock() {
            if m.get(device)
                .is_some_and(|c| c.conn.stable_id() == conn.stable_id())
            {
                m.remove(device);
                self.clear_progress(device);
            }
        }
    }

    /// Forgets the device's download progress (an outcome was reported, or
    /// it went away).
    pub(crate) fn clear_progress(&self, device: &str) {
        if let Ok(mut m) = self.progress.lock() {
            m.retain(|(d, _), _| d != device);
        }
    }

    /// Closes the device's connection (after revocation).
    pub fn disconnect(&self, device: &str, reason: &str) {
        let conn = self
            .connections
            .lock()
            .ok()
            .and_then(|mut m| m.remove(device));
        if let Some(c) = conn {
            c.conn.close(quinn::VarInt::from_u32(3), reason.as_bytes());
        }
    }

    /// Devices connected now.
    pub(crate) fn set_progress(&self, device: &str, digest: &str, pct: u64) {
        if let Ok(mut m) = self.progress.lock() {
            m.insert((device.to_string(), digest.to_string()), pct);
        }
    }

    /// Download progress of `device` for the bundle `digest`, if a download
    /// is under way.
    pub fn progress(&self, device: &str, digest: &str) -> Option<u64> {
        self.progress
            .lock()
            .ok()?
            .get(&(device.to_string(), digest.to_string()))
            .copied()
    }

    /// The devices connected now (a set: listings ask it of every device).
    pub fn connected(&self) -> HashSet<String> {
        self.connections
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `device` is connected now.
    pub fn is_connected(&self, device: &str) -> bool {
        self.connections
            .lock()
            .is_ok_and(|m| m.contains_key(device))
    }

    /// The audit record of something a device did (or was refused).
    fn audit_entry(
        tenant: &str,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: String,
    ) -> AuditEntry {
        AuditEntry {
            tenant: tenant.to_string(),
            request_id: String::new(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
            detail,
        }
    }

    async fn audit(
        &self,
        tenant: &str,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: String,
    ) {
        let e = Self::audit_entry(tenant, actor, action, target, outcome, detail);
        if let Err(err) = self.store.audit(e).await {
            tracing::error!(error = %err, action, "audit append failed");
        }
    }

    /// Binds the QUIC endpoint and serves until the returned handle is
    /// dropped or the endpoint is closed.
    /// Also starts the hourly trust-root expiry check (alerts 30 days
    /// ahead).
    pub fn start_quic(self: &Arc<Self>) -> Result<(quinn::Endpoint, SocketAddr), FleetError> {
        let started = quic::start(self.clone())?;
        self.spawn_expiry_alerts();
        Ok(started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_budget_is_shared_among_the_download_slots() {
        assert_eq!(default_send_window(DEFAULT_DOWNLOADS), 1 << 20);
        assert_eq!(default_send_window(64), 512 << 10);
        assert_eq!(default_send_window(4), 8 << 20);
        assert_eq!(default_send_window(1), 8 << 20);
        assert_eq!(default_send_window(1024), 128 << 10);
        // What the fleet's send buffers can hold with every slot busy.
        for slots in [1, 8, 64, 256] {
            assert!(default_send_window(slots) * slots as u64 <= SEND_BUDGET);
        }
    }

    fn deployment(id: &str, version: i64) -> db::Deployment {
        db::Deployment {
            id: id.into(),
            tenant: "t".into(),
            model: "fraud".into(),
            version,
            digest: ferry_protocol::keys::sha256(id.as_bytes()).to_hex(),
            selector: db::Labels::new(),
            created_at: 0,
            created_us: 0,
            created_by: "admin".into(),
            deleted_at: None,
            runtime: None,
        }
    }

    /// M6: desired-state sequence numbers come from a persisted counter, so
    /// a clock stepped back (while running, or across a restart) never
    /// makes a device refuse the next document as a replay; and a device
    /// whose floor is above the counter (numbers from an older server or
    /// another replica) gets numbers above its floor.
    #[tokio::test]
    async fn sequence_numbers_survive_clock_steps_back_and_restarts() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", d.path().join("ferry.db").display());
        let ms = Arc::new(AtomicU64::new(1_800_000_000_000));
        let clock_ms = ms.clone();
        let clock: crate::clock::SharedClock = Arc::new(move || clock_ms.load(Ordering::SeqCst));
        let device = db::Device {
            id: "dev_a".into(),
            tenant: "t".into(),
            hostname: "h".into(),
            labels: db::Labels::new(),
            created_at: 0,
            revoked_at: None,
            last_seen: None,
            session_until: None,
            runtimes: None,
        };
        let open = |clock: crate::clock::SharedClock| {
            let url = url.clone();
            let dir = d.path().to_path_buf();
            async move {
                let store = Store::connect_with(&url, 2, clock).await.unwrap();
                let blobs = Blobs::local(&dir.join("artifacts")).unwrap();
                let opts = FleetOptions::new(([127, 0, 0, 1], 0).into());
                Fleet::open(store, blobs, &dir, opts).await.unwrap()
            }
        };
        let fleet = open(clock.clone()).await;
        let key = fleet.online_public_key();
        // The device's side: the real check with its persisted floor.
        fn accept(key: &PublicKey, signed: &SignedDesiredState, now: u64, floor: &mut Option<u64>) {
            let doc = signed.verify(key, "dev_a", now, *floor).unwrap();
            *floor = Some(doc.sequence);
        }
        let mut floor: Option<u64> = None;
        let now = || ms.load(Ordering::SeqCst) / 1000;
        let (s, _) = fleet.desired_state(&device, now(), floor).await.unwrap();
        accept(&key, &s, now(), &mut floor);
        // The clock steps back a day while the server runs.
        ms.fetch_sub(86_400_000, Ordering::SeqCst);
        let (s, _) = fleet.desired_state(&device, now(), None).await.unwrap();
        accept(&key, &s, now(), &mut floor);
        drop(fleet);
        // And back a year across a restart: the counter continues above
        // everything issued before, even for a device that says no floor.
        ms.fetch_sub(365 * 86_400_000, Ordering::SeqCst);
        let fleet = open(clock.clone()).await;
        let (s, _) = fleet.desired_state(&device, now(), None).await.unwrap();
        accept(&key, &s, now(), &mut floor);
        // A device that applied a microsecond-clock number from an older
        // server: the next document goes above its floor.
        let old = 1_800_000_000_000_000;
        let (s, seq) = fleet
            .desired_state(&device, now(), Some(old))
            .await
            .unwrap();
        assert_eq!(seq, old + 1);
        floor = Some(old);
        accept(&key, &s, now(), &mut floor);
    }

    #[tokio::test]
    async fn live_deployments_are_fetched_once_per_change() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", d.path().join("ferry.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        let blobs = Blobs::local(&d.path().join("artifacts")).unwrap();
        let opts = FleetOptions::new(([127, 0, 0, 1], 0).into());
        let fleet = Fleet::open(store, blobs, d.path(), opts).await.unwrap();
        let device = db::Device {
            id: "dev_a".into(),
            tenant: "t".into(),
            hostname: "h".into(),
            labels: db::Labels::new(),
            created_at: 0,
            revoked_at: None,
            last_seen: None,
            session_until: None,
            runtimes: None,
        };
        let version = |a: Vec<Assignment>| a.iter().map(|a| a.version).collect::<Vec<_>>();
        let entry = || AuditEntry {
            tenant: "t".into(),
            request_id: String::new(),
            actor: "test".into(),
            action: "deployment.create".into(),
            target: String::new(),
            outcome: crate::audit::OUTCOME_OK.into(),
            detail: String::new(),
        };
        // A deployment's version must exist (checked where it is created).
        for (id, version) in [("d1", 1), ("d2", 2)] {
            let nv = crate::store::NewVersion {
                tenant: "t".into(),
                model: "fraud".into(),
                project: "default".into(),
                version,
                digest: deployment(id, version).digest,
                header: String::new(),
                manifest: String::new(),
                size: 0,
                artifacts: vec![],
                tags: vec![],
                metrics: vec![],
                created_by: "test".into(),
            };
            let mut e = entry();
            e.action = "version.register".into();
            fleet
                .store
                .register(&nv, e, || async { Ok(()) })
                .await
                .unwrap();
        }
        fleet
            .store
            .create_deployment(&deployment("d1", 1), entry())
            .await
            .unwrap();
        fleet.changed();
        assert_eq!(version(fleet.assignments(&device).await.unwrap()), [1]);
        // A row written without announcing a change is not read again: every
        // device computes this change from the list fetched once...
        fleet
            .store
            .create_deployment(&deployment("d2", 2), entry())
            .await
            .unwrap();
        assert_eq!(version(fleet.assignments(&device).await.unwrap()), [1]);
        // ...and the next change fetches it afresh.
        fleet.changed();
        assert_eq!(version(fleet.assignments(&device).await.unwrap()), [2]);
    }
}
