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
//!   a strictly increasing sequence number and an expiry.

pub mod api;
pub mod assign;
pub mod ca;
mod quic;
pub mod report_limit;
pub mod service;

use crate::audit::AuditEntry;
use crate::blobs::Blobs;
use crate::store::fleet as db;
use crate::store::{Store, StoreError};
use ed25519_dalek::SigningKey;
use ferry_protocol::desired::{Assignment, DesiredState, SignedDesiredState};
use ferry_protocol::keys::PublicKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// (`FERRY_FLEET_MAX_DOWNLOADS`, default 64). On one machine's
    /// CPU, fewer streams at a time finish a fleet sooner (docs/BENCHMARKS.md);
    /// devices on slow links want more, since the aggregate rate is at most
    /// this many times a device's rate.
    pub max_concurrent_downloads: usize,
    /// Bytes per chunk frame (`FERRY_FLEET_CHUNK_BYTES`, default 64 KiB).
    pub chunk_bytes: usize,
    /// The telemetry broker handed to devices at enrollment.
    pub mqtt_url: Option<String>,
}

impl FleetOptions {
    pub fn new(quic: SocketAddr) -> Self {
        Self {
            quic,
            mqtt_url: None,
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            desired_ttl: std::env::var("FERRY_FLEET_DESIRED_TTL")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3600),
            max_concurrent_downloads: std::env::var("FERRY_FLEET_MAX_DOWNLOADS")
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(64)
                .max(1),
            chunk_bytes: std::env::var("FERRY_FLEET_CHUNK_BYTES")
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(64 * 1024)
                .clamp(256, 1024 * 1024),
        }
    }
}

/// Assembled bundle files by (tenant, manifest digest).
type BundleCache = HashMap<(String, String), Arc<Vec<u8>>>;

/// A tenant's live deployments as fetched at a change generation.
struct Fetched {
    generation: u64,
    at: std::time::Instant,
    deployments: Arc<Vec<db::Deployment>>,
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
    last_sequence: AtomicU64,
    /// Bumped on every change that may alter some device's desired state.
    changes: tokio::sync::watch::Sender<u64>,
    /// Open connections by device id (closed on revocation).
    connections: Mutex<HashMap<String, quinn::Connection>>,
    /// Assembled bundles by (tenant, manifest digest).
    bundles: tokio::sync::Mutex<BundleCache>,
    /// Live deployments by tenant, fetched once per change for every
    /// connected device (the lock makes the others wait for that fetch).
    deployments: tokio::sync::Mutex<HashMap<String, Fetched>>,
    downloads: tokio::sync::Semaphore,
    /// The most downloads ever served at once (what an admin sees of the
    /// cap in `GET /api/v1/fleet/devices`; those in flight now are the
    /// semaphore's permits in use).
    downloads_peak: AtomicUsize,
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
        let (changes, _) = tokio::sync::watch::channel(0);
        let permits = opts.max_concurrent_downloads.max(1);
        Ok(Arc::new(Self {
            store,
            blobs,
            ca,
            online,
            opts,
            last_sequence: AtomicU64::new(0),
            changes,
            connections: Mutex::new(HashMap::new()),
            bundles: tokio::sync::Mutex::new(HashMap::new()),
            deployments: tokio::sync::Mutex::new(HashMap::new()),
            downloads: tokio::sync::Semaphore::new(permits),
            downloads_peak: AtomicUsize::new(0),
            progress: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn online_public_key(&self) -> PublicKey {
        PublicKey::from_signing_key(&self.online)
    }

    /// Waits for a download slot under the fleet-wide cap; the slot is
    /// free again when the permit drops.
    pub(crate) async fn download_slot(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, FleetError> {
        let permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| FleetError::ShuttingDown)?;
        self.downloads_peak
            .fetch_max(self.download_slots().in_flight, Ordering::SeqCst);
        Ok(permit)
    }

    pub fn download_slots(&self) -> DownloadSlots {
        let limit = self.opts.max_concurrent_downloads.max(1);
        DownloadSlots {
            limit,
            in_flight: limit.saturating_sub(self.downloads.available_permits()),
            peak: self.downloads_peak.load(Ordering::SeqCst),
        }
    }

    /// Tells every connection to recompute its desired state.
    pub fn changed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn next_sequence(&self) -> u64 {
        let now = self.store.clock().now_micros();
        let mut cur = self.last_sequence.load(Ordering::Relaxed);
        loop {
            let next = now.max(cur + 1);
            match self.last_sequence.compare_exchange(
                cur,
                next,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(c) => cur = c,
            }
        }
    }

    /// Live deployments of `tenant`, from one query per change: every
    /// connected device recomputes its desired state after a change, and
    /// all of them read the same fetched list.
    async fn live_deployments(&self, tenant: &str) -> Result<Arc<Vec<db::Deployment>>, StoreError> {
        let generation = *self.changes.borrow();
        let mut cache = self.deployments.lock().await;
        if let Some(f) = cache.get(tenant) {
            if f.generation == generation && f.at.elapsed() < DEPLOYMENTS_MAX_AGE {
                return Ok(f.deployments.clone());
            }
        }
        let deployments = Arc::new(self.store.live_deployments(tenant).await?);
        cache.insert(
            tenant.to_string(),
            Fetched {
                generation,
                at: std::time::Instant::now(),
                deployments: deployments.clone(),
            },
        );
        Ok(deployments)
    }

    /// What `device` should run now: per model, the newest live deployment
    /// whose selector matches its labels ([`assign::assign`]).
    pub async fn assignments(&self, device: &db::Device) -> Result<Vec<Assignment>, StoreError> {
        let deployments = self.live_deployments(&device.tenant).await?;
        Ok(assign::assign(&deployments, &device.labels))
    }

    /// Signs a fresh desired-state document for `device` at `now`.
    pub async fn desired_state(
        &self,
        device: &db::Device,
        now: u64,
    ) -> Result<SignedDesiredState, StoreError> {
        let assignments = self.assignments(device).await?;
        let doc = DesiredState {
            tenant: device.tenant.clone(),
            device_id: device.id.clone(),
            sequence: self.next_sequence(),
            issued_at: now,
            expires_at: now + self.opts.desired_ttl,
            assignments,
        };
        Ok(SignedDesiredState::sign(&doc, &self.online))
    }

    /// Signs an arbitrary document with the online key (test hooks and the
    /// simulator use it to build replayed or expired states).
    pub fn sign(&self, doc: &DesiredState) -> SignedDesiredState {
        SignedDesiredState::sign(doc, &self.online)
    }

    /// The whole bundle file (preamble and artifacts) for a manifest digest
    /// of `tenant`, assembled from the registry once and cached.
    pub async fn bundle_bytes(
        &self,
        tenant: &str,
        model: &str,
        version: i64,
        digest: &str,
    ) -> Result<Arc<Vec<u8>>, String> {
        let key = (tenant.to_string(), digest.to_string());
        let mut cache = self.bundles.lock().await;
        if let Some(b) = cache.get(&key) {
            return Ok(b.clone());
        }
        let row = self
            .store
            .version(tenant, model, version)
            .await
            .map_err(|e| e.to_string())?;
        if row.digest != digest {
            return Err(format!(
                "{model} v{version} has digest {}, not {digest}",
                row.digest
            ));
        }
        let header = row
            .signed_manifest()
            .ok_or_else(|| "stored bundle header does not decode".to_string())?;
        let mut out = header.to_preamble();
        let arts = self
            .store
            .artifacts(tenant, model, version)
            .await
            .map_err(|e| e.to_string())?;
        for a in arts {
            use futures::StreamExt;
            let mut s = self
                .blobs
                .get(tenant, &a.digest)
                .await
                .map_err(|e| e.to_string())?;
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
            }
        }
        let b = Arc::new(out);
        // Keep the cache small: the bundles of current deployments.
        if cache.len() >= 32 {
            cache.clear();
        }
        cache.insert(key, b.clone());
        Ok(b)
    }

    fn register(&self, device: &str, conn: quinn::Connection) {
        if let Ok(mut m) = self.connections.lock() {
            if let Some(old) = m.insert(device.to_string(), conn) {
                old.close(
                    quinn::VarInt::from_u32(2),
                    b"replaced by a newer connection",
                );
            }
        }
    }

    fn unregister(&self, device: &str, conn: &quinn::Connection) {
        if let Ok(mut m) = self.connections.lock() {
            if m.get(device)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
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
            c.close(quinn::VarInt::from_u32(3), reason.as_bytes());
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

    pub fn connected(&self) -> Vec<String> {
        self.connections
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
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
    pub fn start_quic(self: &Arc<Self>) -> Result<(quinn::Endpoint, SocketAddr), FleetError> {
        quic::start(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(id: &str, version: i64) -> db::Deployment {
        db::Deployment {
            id: id.into(),
            tenant: "t".into(),
            model: "fraud".into(),
            version,
            digest: ferry_protocol::keys::sha256(id.as_bytes()).to_hex(),
            selector: db::Labels::new(),
            created_at: 0,
            created_by: "admin".into(),
            deleted_at: None,
        }
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
