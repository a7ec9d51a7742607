//! Fetch streams: a bundle served from a byte offset, straight from the
//! artifact store.
//!
//! A bundle is its signed preamble followed by its artifacts. Nothing here
//! assembles it: the preamble comes from the version's stored header, and
//! each chunk of an artifact from a ranged read of its blob (`Blobs::
//! get_range`, an HTTP range GET on S3) in 1 MiB blocks, kept in a cache
//! bounded by bytes ([`ByteCache`]) with no lock held across a read, as
//! 64 KiB pieces that chunk frames send by reference. Memory per download
//! is QUIC's send window of pieces, whatever the bundle's size.
//!
//! Download slots: a fleet-wide cap, and a per-device cap taken first (a
//! device's further fetches wait without holding a fleet slot). A reader
//! that takes no bytes for `idle` loses its stream and its slots; the
//! stall is audited.

use super::bundle_cache::{ByteCache, Weigh};
use super::{db, DownloadSlots, Fleet, FleetError};
use crate::audit::{OUTCOME_OK, OUTCOME_REFUSED};
use bytes::Bytes;
use ferry_protocol::desired::Assignment;
use ferry_protocol::frames::{chunk_head, length_prefixed, ServerFrame};
use ferry_protocol::keys::Digest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes per ranged read of an artifact (and per cache entry).
pub(crate) const BLOCK: u64 = 1 << 20;
/// Bytes per separately allocated piece of a cached block; a chunk frame
/// carries at most one piece.
const PIECE: usize = 64 << 10;

/// Stream reset code of a fetch whose reader stalled.
const STALLED: u32 = 0x5354;
/// Stream reset code of a fetch the artifact store failed under.
const STORE_FAILED: u32 = 0x5346;

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// Settings of bundle serving (environment only).
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Downloads one device may have in flight
    /// (`FERRY_FLEET_DEVICE_DOWNLOADS`, default 2, at most 16).
    pub per_device: usize,
    /// A fetch whose reader takes no bytes for this long loses its stream
    /// and slots (`FERRY_FLEET_FETCH_IDLE_SECS`, default 30).
    pub idle: Duration,
    /// Budget of the artifact block cache, bytes (`FERRY_FLEET_CACHE_MB`,
    /// default 32; 0 caches nothing). The server's serving memory is about
    /// this, plus per busy download slot one block being sent and its
    /// connection's send window (`FleetOptions::send_window`).
    pub cache_bytes: usize,
}

impl ServeOptions {
    pub fn from_env() -> Self {
        Self {
            per_device: env_parse::<usize>("FERRY_FLEET_DEVICE_DOWNLOADS")
                .unwrap_or(2)
                .clamp(1, 16),
            idle: Duration::from_secs(
                env_parse::<u64>("FERRY_FLEET_FETCH_IDLE_SECS")
                    .unwrap_or(30)
                    .max(1),
            ),
            cache_bytes: env_parse::<usize>("FERRY_FLEET_CACHE_MB")
                .unwrap_or(32)
                .saturating_mul(1 << 20),
        }
    }
}

/// One artifact's place in the bundle file.
#[derive(Debug)]
struct Part {
    digest: String,
    start: u64,
    len: u64,
}

/// Where each byte of a bundle file comes from: the preamble (kept, it is
/// bounded by the header limit), then the artifacts' blobs.
#[derive(Debug)]
pub(crate) struct BundleLayout {
    preamble: Bytes,
    parts: Vec<Part>,
    pub total: u64,
}

impl Weigh for BundleLayout {
    fn weight(&self) -> usize {
        self.preamble.len()
            + self
                .parts
                .iter()
                .map(|p| p.digest.len() + 32)
                .sum::<usize>()
    }
}

impl BundleLayout {
    fn new(preamble: Vec<u8>, artifacts: &[(String, u64)]) -> Self {
        let mut start = preamble.len() as u64;
        let parts = artifacts
            .iter()
            .map(|(digest, len)| {
                let p = Part {
                    digest: digest.clone(),
                    start,
                    len: *len,
                };
                start += len;
                p
            })
            .collect();
        Self {
            preamble: Bytes::from(preamble),
            parts,
            total: start,
        }
    }

    /// The segment holding byte `pos`: preamble bytes from there, or the
    /// artifact and the offset inside it.
    fn locate(&self, pos: u64) -> Option<Segment<'_>> {
        let pre = self.preamble.len() as u64;
        if pos < pre {
            return Some(Segment::Preamble(self.preamble.slice(pos as usize..)));
        }
        let i = self.parts.partition_point(|p| p.start + p.len <= pos);
        let part = self.parts.get(i)?;
        (pos >= part.start).then(|| Segment::Artifact {
            part,
            offset: pos - part.start,
        })
    }
}

enum Segment<'a> {
    Preamble(Bytes),
    Artifact { part: &'a Part, offset: u64 },
}

/// Why a fetch is not served; the text of `Refused` goes to the device.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
}

type BlockKey = (String, String, u64);

/// A block of an artifact, copied once on load into pieces of [`PIECE`]
/// bytes. Chunks go to QUIC as slices of a piece (no copy per device), and
/// QUIC keeps a slice alive until the device acknowledges it: slices of one
/// 1 MiB allocation kept the whole MiB alive per unacknowledged slice,
/// about 1 GB at 200 devices x 200 MB, where pieces keep what is in flight.
#[derive(Debug)]
struct Block {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Weigh for Block {
    fn weight(&self) -> usize {
        self.len
    }
}

impl Block {
    fn new(bytes: &[u8]) -> Self {
        Self {
            pieces: bytes.chunks(PIECE).map(Bytes::copy_from_slice).collect(),
            len: bytes.len(),
        }
    }

    /// At most `max` bytes from `at`, up to the end of the piece holding
    /// it; none at or past the block's end.
    fn slice(&self, at: usize, max: usize) -> Option<Bytes> {
        if at >= self.len || max == 0 {
            return None;
        }
        let piece = self.pieces.get(at / PIECE)?;
        let within = at % PIECE;
        Some(piece.slice(within..piece.len().min(within + max)))
    }
}
type LayoutKey = (String, String);

/// Bundle serving state: caches and download slots.
pub struct BundleServer {
    pub opts: ServeOptions,
    blocks: ByteCache<BlockKey, Arc<Block>>,
    layouts: ByteCache<LayoutKey, Arc<BundleLayout>>,
    limit: usize,
    downloads: Semaphore,
    peak: AtomicUsize,
    /// Per-device slots by device id, while the device has a fetch.
    devices: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A device's download slot; the device's entry goes with its last one.
struct DeviceSlot<'a> {
    server: &'a BundleServer,
    device: String,
    sem: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for DeviceSlot<'_> {
    fn drop(&mut self) {
        self.permit.take();
        let mut m = self
            .server
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Only the map and this guard hold it: nobody waits, nobody serves.
        if Arc::strong_count(&self.sem) == 2
            && m.get(&self.device)
                .is_some_and(|s| Arc::ptr_eq(s, &self.sem))
        {
            m.remove(&self.device);
        }
    }
}

impl BundleServer {
    pub fn new(max_concurrent_downloads: usize, opts: ServeOptions) -> Self {
        let limit = max_concurrent_downloads.max(1);
        Self {
            blocks: ByteCache::new(opts.cache_bytes),
            // Preambles are at most a few MiB; a sixteenth of the budget
            // (at least 1 MiB) holds those of every live deployment.
            layouts: ByteCache::new((opts.cache_bytes / 16).max(1 << 20)),
            opts,
            limit,
            downloads: Semaphore::new(limit),
            peak: AtomicUsize::new(0),
            devices: Mutex::new(HashMap::new()),
        }
    }

    pub fn slots(&self) -> DownloadSlots {
        DownloadSlots {
            limit: self.limit,
            in_flight: self
                .limit
                .saturating_sub(self.downloads.available_permits()),
            peak: self.peak.load(Ordering::SeqCst),
        }
    }

    async fn device_slot(&self, device: &str) -> Result<DeviceSlot<'_>, FleetError> {
        let sem = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(device.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.opts.per_device)))
            .clone();
        let mut slot = DeviceSlot {
            server: self,
            device: device.to_string(),
            sem: sem.clone(),
            permit: None,
        };
        slot.permit = Some(
            sem.acquire_owned()
                .await
                .map_err(|_| FleetError::ShuttingDown)?,
        );
        Ok(slot)
    }

    async fn download_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, FleetError> {
        let permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| FleetError::ShuttingDown)?;
        self.peak
            .fetch_max(self.slots().in_flight, Ordering::SeqCst);
        Ok(permit)
    }

    /// The layout of `a`'s bundle, from the registry once.
    async fn layout(
        &self,
        fleet: &Fleet,
        tenant: &str,
        a: &Assignment,
    ) -> Result<Arc<BundleLayout>, ServeError> {
        let digest = a.manifest_digest.to_hex();
        let key = (tenant.to_string(), digest.clone());
        self.layouts
            .get_or_load(&key, || async {
                load_layout(fleet, tenant, a.model.as_str(), a.version as i64, &digest)
                    .await
                    .map(Arc::new)
            })
            .await
    }

    /// Block `index` of the artifact `part`: one ranged read, shared.
    async fn block(
        &self,
        fleet: &Fleet,
        tenant: &str,
        part: &Part,
        index: u64,
    ) -> Result<Arc<Block>, String> {
        let key = (tenant.to_string(), part.digest.clone(), index);
        let start = index * BLOCK;
        let end = (start + BLOCK).min(part.len);
        self.blocks
            .get_or_load(&key, || async {
                fleet
                    .blobs
                    .get_range(tenant, &part.digest, start..end)
                    .await
                    .map(|b| Arc::new(Block::new(&b)))
                    .map_err(|e| e.to_string())
            })
            .await
    }

    /// At most `max` bytes of the bundle from `pos` (fewer at a segment or
    /// block boundary).
    async fn read(
        &self,
        fleet: &Fleet,
        tenant: &str,
        layout: &BundleLayout,
        pos: u64,
        max: usize,
    ) -> Result<Bytes, String> {
        match layout.locate(pos) {
            Some(Segment::Preamble(b)) => Ok(b.slice(..b.len().min(max))),
            Some(Segment::Artifact { part, offset }) => {
                let index = offset / BLOCK;
                let block = self.block(fleet, tenant, part, index).await?;
                let within = (offset - index * BLOCK) as usize;
                block.slice(within, max).ok_or_else(|| {
                    format!("blob {} is shorter than its manifest says", part.digest)
                })
            }
            None => Err(format!("byte {pos} is past the bundle's end")),
        }
    }
}

async fn load_layout(
    fleet: &Fleet,
    tenant: &str,
    model: &str,
    version: i64,
    digest: &str,
) -> Result<BundleLayout, ServeError> {
    let internal = |e: crate::store::StoreError| ServeError::Internal(e.to_string());
    let row = match fleet.store.version(tenant, model, version).await {
        Ok(r) => r,
        Err(crate::store::StoreError::NotFound(_)) => {
            return Err(ServeError::Refused(format!(
                "{model} v{version} is not in the registry"
            )))
        }
        Err(e) => return Err(internal(e)),
    };
    if row.digest != digest {
        return Err(ServeError::Refused(format!(
            "{model} v{version} has digest {}, not {digest}",
            row.digest
        )));
    }
    let header = row
        .signed_manifest()
        .ok_or_else(|| ServeError::Internal("stored bundle header does not decode".into()))?;
    let arts = fleet
        .store
        .artifacts(tenant, model, version)
        .await
        .map_err(internal)?;
    let arts = arts
        .into_iter()
        .map(|a| {
            u64::try_from(a.len)
                .map(|len| (a.digest, len))
                .map_err(|_| {
                    ServeError::Internal(format!("artifact {} has length {}", a.name, a.len))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BundleLayout::new(header.to_preamble(), &arts))
}

/// Download progress in percent, for any `received` and `total` a device
/// sends (a `u64` times 100 overflows; u128 does not).
pub(crate) fn percent(received: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    let p = u128::from(received.min(total)) * 100 / u128::from(total);
    u64::try_from(p).unwrap_or(100)
}

/// Why writing to a fetch stream ended.
enum WriteEnd {
    /// The reader took no bytes for the idle timeout.
    Stalled,
    /// The stream or connection went away.
    Gone(String),
}

/// Writes `frame`, giving up when the reader takes nothing for `idle`:
/// each write that makes progress restarts the clock, so a slow reader is
/// served and a stalled one is not.
async fn write_frame(
    s: &mut quinn::SendStream,
    frame: &ServerFrame,
    idle: Duration,
) -> Result<(), WriteEnd> {
    let buf = length_prefixed(&frame.encode());
    let mut at = 0;
    while at < buf.len() {
        match tokio::time::timeout(idle, s.write(&buf[at..])).await {
            Ok(Ok(n)) => at += n,
            Ok(Err(e)) => return Err(WriteEnd::Gone(e.to_string())),
            Err(_) => return Err(WriteEnd::Stalled),
        }
    }
    Ok(())
}

/// Writes a chunk frame carrying `data` at `offset`. The bytes go to QUIC
/// as the slice of the cached piece they lie in (`write_chunks` keeps a
/// reference, it copies nothing); the idle rule is `write_frame`'s.
async fn write_chunk(
    s: &mut quinn::SendStream,
    digest: Digest,
    offset: u64,
    data: Bytes,
    idle: Duration,
) -> Result<(), WriteEnd> {
    let mut parts = [Bytes::from(chunk_head(digest, offset, data.len())), data];
    let mut done = 0;
    while done < parts.len() {
        // A partly written part is advanced in place to what is left of it.
        match tokio::time::timeout(idle, s.write_chunks(&mut parts[done..])).await {
            Ok(Ok(w)) => done += w.chunks,
            Ok(Err(e)) => return Err(WriteEnd::Gone(e.to_string())),
            Err(_) => return Err(WriteEnd::Stalled),
        }
    }
    Ok(())
}

async fn refuse(
    fleet: &Fleet,
    device: &db::Device,
    s: &mut quinn::SendStream,
    digest: Digest,
    reason: String,
    audit: bool,
) -> Result<(), String> {
    if audit {
        fleet
            .audit(
                &device.tenant,
                &format!("device {}", device.id),
                "device.fetch",
                &digest.to_hex(),
                OUTCOME_REFUSED,
                reason.clone(),
            )
            .await;
    }
    let idle = fleet.serve.opts.idle;
    match write_frame(s, &ServerFrame::FetchRefused { digest, reason }, idle).await {
        Ok(()) => {
            let _ = s.finish();
            Ok(())
        }
        Err(WriteEnd::Stalled) => Err("fetch refusal not taken".into()),
        Err(WriteEnd::Gone(e)) => Err(e),
    }
}

/// A fetch stream: the bundle `digest` from `offset`, if it is assigned to
/// this device.
pub(super) async fn fetch(
    fleet: Arc<Fleet>,
    device: db::Device,
    mut s: quinn::SendStream,
    digest: Digest,
    offset: u64,
) -> Result<(), String> {
    let hexd = digest.to_hex();
    let assigned = fleet
        .assignments(&device)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|a| a.manifest_digest == digest);
    let Some(a) = assigned else {
        let reason = format!("bundle {hexd} is not assigned to device {}", device.id);
        return refuse(&fleet, &device, &mut s, digest, reason, true).await;
    };
    let srv = &fleet.serve;
    // The device's own slot first: its further fetches wait here and hold
    // none of the fleet's.
    let device_slot = srv
        .device_slot(&device.id)
        .await
        .map_err(|e| e.to_string())?;
    let slot = srv.download_slot().await.map_err(|e| e.to_string())?;
    let layout = match srv.layout(&fleet, &device.tenant, &a).await {
        Ok(l) => l,
        Err(ServeError::Refused(reason)) => {
            return refuse(&fleet, &device, &mut s, digest, reason, false).await
        }
        Err(ServeError::Internal(e)) => {
            tracing::error!(device = %device.id, bundle = %hexd, error = %e, "bundle layout unavailable");
            let reason = "the control plane cannot read this bundle now".to_string();
            return refuse(&fleet, &device, &mut s, digest, reason, false).await;
        }
    };
    let total = layout.total;
    let start = offset.min(total);
    let idle = srv.opts.idle;
    let mut pos = start;
    let mut ended = write_frame(
        &mut s,
        &ServerFrame::FetchStart {
            digest,
            offset: start,
            total,
        },
        idle,
    )
    .await;
    if ended.is_ok() && start > 0 {
        fleet
            .audit(
                &device.tenant,
                &format!("device {}", device.id),
                "device.fetch",
                &hexd,
                OUTCOME_OK,
                format!("resumed at byte {start} of {total}"),
            )
            .await;
    }
    // Failpoint `fleet-corrupt-model=return(MODEL)`: serve MODEL's bundles
    // with their last byte flipped, as a tampering network or disk would.
    let corrupt = super::failpoint("fleet-corrupt-model").as_deref() == Some(a.model.as_str());
    while ended.is_ok() && pos < total {
        let bytes = match srv
            .read(&fleet, &device.tenant, &layout, pos, fleet.opts.chunk_bytes)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(device = %device.id, bundle = %hexd, error = %e, "artifact read failed");
                let _ = s.reset(quinn::VarInt::from_u32(STORE_FAILED));
                return Ok(());
            }
        };
        let end = pos + bytes.len() as u64;
        let data = if corrupt && end == total {
            let mut copy = bytes.to_vec();
            if let Some(b) = copy.last_mut() {
                *b ^= 0x55;
            }
            Bytes::from(copy)
        } else {
            bytes
        };
        ended = write_chunk(&mut s, digest, pos, data, idle).await;
        if ended.is_ok() {
            pos = end;
        }
    }
    if ended.is_ok() {
        let _ = s.finish();
        // The last window is still on its way: wait for the reader to take
        // it, under the same idle rule.
        ended = match tokio::time::timeout(idle, s.stopped()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(WriteEnd::Stalled),
        };
    }
    match ended {
        Ok(()) => Ok(()),
        Err(WriteEnd::Gone(e)) => Err(e),
        Err(WriteEnd::Stalled) => {
            let _ = s.reset(quinn::VarInt::from_u32(STALLED));
            drop(slot);
            drop(device_slot);
            fleet
                .audit(
                    &device.tenant,
                    &format!("device {}", device.id),
                    "device.fetch",
                    &hexd,
                    OUTCOME_REFUSED,
                    format!(
                        "stalled: the device took no bytes for {} s at byte {pos} of {total}; its download slot was released",
                        idle.as_secs()
                    ),
                )
                .await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_never_overflows() {
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(percent(u64::MAX, 10), 100);
        assert_eq!(percent(u64::MAX / 2, u64::MAX), 49);
        assert_eq!(percent(5, 10), 50);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(0, 10), 0);
    }

    #[test]
    fn a_block_is_read_in_slices_that_stop_at_its_pieces() {
        let bytes: Vec<u8> = (0..BLOCK as usize).map(|i| (i % 251) as u8).collect();
        let b = Block::new(&bytes[..PIECE * 2 + 10]);
        assert_eq!(b.pieces.len(), 3);
        assert_eq!(b.weight(), PIECE * 2 + 10);
        let s = b.slice(5, 1 << 20).unwrap();
        assert_eq!(&s[..], &bytes[5..PIECE]);
        let s = b.slice(PIECE - 1, 100).unwrap();
        assert_eq!(&s[..], &bytes[PIECE - 1..PIECE]);
        let s = b.slice(PIECE * 2 + 3, 4).unwrap();
        assert_eq!(&s[..], &bytes[PIECE * 2 + 3..PIECE * 2 + 7]);
        assert!(b.slice(PIECE * 2 + 10, 4).is_none());
        assert!(b.slice(PIECE * 3, 4).is_none());
    }

    #[test]
    fn every_byte_of_a_bundle_is_located_once() {
        let l = BundleLayout::new(
            vec![1; 10],
            &[
                ("a".into(), 5),
                ("empty".into(), 0),
                ("b".into(), 3 * BLOCK + 7),
            ],
        );
        assert_eq!(l.total, 10 + 5 + 3 * BLOCK + 7);
        assert!(matches!(l.locate(0), Some(Segment::Preamble(b)) if b.len() == 10));
        assert!(matches!(l.locate(9), Some(Segment::Preamble(b)) if b.len() == 1));
        match l.locate(10) {
            Some(Segment::Artifact { part, offset }) => {
                assert_eq!((part.digest.as_str(), offset), ("a", 0))
            }
            _ => panic!("byte 10 is a's first"),
        }
        match l.locate(15) {
            Some(Segment::Artifact { part, offset }) => {
                assert_eq!((part.digest.as_str(), offset), ("b", 0))
            }
            _ => panic!("byte 15 is b's first: the empty artifact has none"),
        }
        match l.locate(l.total - 1) {
            Some(Segment::Artifact { part, offset }) => {
                assert_eq!((part.digest.as_str(), offset), ("b", 3 * BLOCK + 6))
            }
            _ => panic!("the last byte is b's"),
        }
        assert!(l.locate(l.total).is_none());
    }
}
