//! The inference log: one compact record per request in sled, bounded by
//! bytes, read by cursor and trimmed by acknowledgement.
//!
//! Records are numbered in append order and stored in groups: an append
//! frames its record into an in-memory group (a mutex, no I/O), and a
//! writer thread stores each group as one sled value keyed by the big-endian
//! sequence number of its first record. One sled insert per group instead
//! of one per request is what keeps the request path cheap; sled's
//! per-operation cost dominated the old one-key-per-record layout.
//!
//! A group is stored within [`LINGER`] of its first record, and reaches the
//! disk within sled's flush interval after that. With [`Durability::Sync`],
//! [`InferenceLog::wait_durable`] stores the group itself and waits for the
//! fsync. Readers, acknowledgements and trimming store the pending group
//! first, so they see every record appended before them.
//!
//! When the stored bytes pass the bound, the oldest records go (whole groups,
//! then the front of a group) and a persisted counter says how many; nothing
//! is dropped silently.

use ferry_protocol::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest encoded record: `append` refuses (or trims) anything larger and
/// `read_from` decodes up to it, so every stored record can be read back
/// and a cursor never sticks on one.
pub const RECORD_LIMIT: usize = 64 * 1024 * 1024;
const META_DROPPED: &[u8] = b"dropped";
const META_NEXT: &[u8] = b"next_seq";
/// Bytes of the length prefix in front of each record in a group.
const FRAME: usize = 4;
/// How long the writer lets a group fill before storing it.
pub const LINGER: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("inference log: {0}")]
    Sled(#[from] sled::Error),
    #[error("inference log record {seq} does not decode: {reason}")]
    Decode { seq: u64, reason: String },
    #[error("inference log: a record of {0} bytes is over the record limit")]
    TooLarge(usize),
    #[error("inference log: cannot start the writer thread: {0}")]
    Writer(std::io::Error),
}

/// When an appended record is known to be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Within the flush interval (sled's background flusher).
    #[default]
    Async,
    /// Before the request is answered (group-committed fsync).
    Sync,
}

/// One inference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferenceRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub model: String,
    pub version: u64,
    /// `champion`, `challenger`, `shadow` or `pinned`.
    pub variant: String,
    pub latency_us: u32,
    pub request_id: Option<String>,
    /// Error code when the model failed; outputs are then empty.
    pub error: Option<String>,
    pub outputs: Vec<Tensor>,
    /// Per row of the first input: each feature's bin against the bundle
    /// baseline (`255` = missing).
    pub bins: Vec<Vec<u8>>,
    /// The full inputs, when this request was sampled.
    pub payload: Option<Vec<Tensor>>,
}

/// A ground-truth label attached to an earlier request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub time_ms: u64,
    pub model: String,
    pub request_id: String,
    /// The label as JSON text (any JSON value the application sent).
    pub label_json: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    Inference(InferenceRecord),
    Feedback(FeedbackRecord),
}

/// Counters the log reports (metrics, `/v1/log/stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LogStats {
    pub records: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub dropped: u64,
    pub first_seq: Option<u64>,
    pub next_seq: u64,
}

/// Records appended but not yet stored: one group in the making.
#[derive(Default)]
struct Pending {
    /// Sequence number of the first record in `buf`.
    first: u64,
    /// Sequence number the next append gets.
    next: u64,
    /// Framed records: `u32` little-endian length, then the encoded entry.
    buf: Vec<u8>,
    /// Records in `buf`.
    records: u64,
}

struct Shared {
    db: sled::Db,
    groups: sled::Tree,
    meta: sled::Tree,
    pending: Mutex<Pending>,
    /// Wakes the writer when a group starts (and at close).
    wake: Condvar,
    /// Serialises every change to `groups` (store, trim, ack), so groups are
    /// stored in sequence order and never overlap.
    store: Mutex<()>,
    /// No record below this sequence number exists.
    first: AtomicU64,
    /// Framed bytes held, stored and pending.
    bytes: AtomicU64,
    count: AtomicU64,
    dropped: AtomicU64,
    max_bytes: u64,
    durability: Durability,
    closed: AtomicBool,
}

pub struct InferenceLog {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if k.len() == 8 {
        b.copy_from_slice(k);
    }
    u64::from_be_bytes(b)
}

fn read_u64(tree: &sled::Tree, k: &[u8]) -> Result<u64, LogError> {
    Ok(tree.get(k)?.map(|v| seq_of(&v)).unwrap_or(0))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The records of a stored group, each with the offset of its frame.
fn frames(base: u64, group: &[u8]) -> Result<Vec<(usize, &[u8])>, LogError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < group.len() {
        let broken = || LogError::Decode {
            seq: base + out.len() as u64,
            reason: "the record's frame is cut short".into(),
        };
        let len_bytes: [u8; FRAME] = group
            .get(at..at + FRAME)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(broken)?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let body = group.get(at + FRAME..at + FRAME + len).ok_or_else(broken)?;
        out.push((at, body));
        at += FRAME + len;
    }
    Ok(out)
}

impl InferenceLog {
    /// Opens (or creates) the log under `dir`, bounded to `max_bytes` of
    /// framed records.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        durability: Durability,
        flush_every_ms: u64,
    ) -> Result<Self, LogError> {
        let db = crate::sled_open::open(
            &sled::Config::new()
                .path(dir)
                .flush_every_ms(Some(flush_every_ms.max(1)))
                .cache_capacity(8 * 1024 * 1024),
        )?;
        let groups = db.open_tree("groups")?;
        let meta = db.open_tree("meta")?;
        migrate_single_records(&db, &groups)?;
        // The bound is on what is stored, so recount it: a crash may have
        // lost the last few counter updates but never the records.
        let (mut bytes, mut count, mut last) = (0u64, 0u64, None);
        for kv in groups.iter() {
            let (k, v) = kv?;
            let n = frames(seq_of(&k), &v)?.len() as u64;
            bytes += v.len() as u64;
            count += n;
            last = Some(seq_of(&k) + n);
        }
        let next = last.unwrap_or(0).max(read_u64(&meta, META_NEXT)?);
        let first = groups.first()?.map(|(k, _)| seq_of(&k)).unwrap_or(next);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(read_u64(&meta, META_DROPPED)?),
            db,
            groups,
            meta,
            pending: Mutex::new(Pending {
                first: next,
                next,
                buf: Vec::new(),
                records: 0,
            }),
            wake: Condvar::new(),
            store: Mutex::new(()),
            first: AtomicU64::new(first),
            bytes: AtomicU64::new(bytes),
            count: AtomicU64::new(count),
            max_bytes,
            durability,
            closed: AtomicBool::new(false),
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("ferry-log-writer".into())
            .spawn(move || s.write_loop())
            .map_err(LogError::Writer)?;
        Ok(Self {
            shared,
            writer: Some(writer),
        })
    }

    /// Appends an entry; returns its sequence number. Does no I/O unless the
    /// log is at its bound (see [`InferenceLog::wait_durable`]).
    ///
    /// A record that would encode over [`RECORD_LIMIT`] is kept without its
    /// sampled payload (the full inputs are what make a record large); one
    /// still over the limit is refused with [`LogError::TooLarge`].
    pub fn append(&self, entry: &Entry) -> Result<u64, LogError> {
        let s = &self.shared;
        let bytes = within_limit(entry)?;
        let len = u32::try_from(bytes.len()).map_err(|_| LogError::TooLarge(bytes.len()))?;
        let framed = (FRAME + bytes.len()) as u64;
        let (seq, started, total) = {
            let mut p = lock(&s.pending);
            let seq = p.next;
            p.next += 1;
            let started = p.buf.is_empty();
            if started {
                p.first = seq;
            }
            p.buf.extend_from_slice(&len.to_le_bytes());
            p.buf.extend_from_slice(&bytes);
            p.records += 1;
            // Counted under the lock, so a trim never sees a stored record
            // whose bytes are not counted yet.
            s.count.fetch_add(1, Ordering::Relaxed);
            let total = s.bytes.fetch_add(framed, Ordering::Relaxed) + framed;
            (seq, started, total)
        };
        if total > s.max_bytes {
            s.store_pending()?;
        } else if started {
            s.wake.notify_one();
        }
        Ok(seq)
    }

    /// Waits until everything appended so far is on disk, when the log is
    /// configured for synchronous durability. Concurrent callers share one
    /// fsync (sled coalesces them).
    pub async fn wait_durable(&self) -> Result<(), LogError> {
        if self.shared.durability == Durability::Sync {
            self.shared.store_pending()?;
            self.shared.db.flush_async().await?;
        }
        Ok(())
    }

    pub fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// Up to `limit` entries with sequence number `>= from`, in order.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, Entry)>, LogError> {
        let s = &self.shared;
        s.store_pending()?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // Start at the group holding `from`, if any.
        let start = match s.groups.get_lt(key(from.saturating_add(1)))? {
            Some((k, _)) => seq_of(&k),
            None => from,
        };
        for kv in s.groups.range(key(start)..) {
            let (k, v) = kv?;
            let base = seq_of(&k);
            for (i, (_, body)) in frames(base, &v)?.into_iter().enumerate() {
                let seq = base + i as u64;
                if seq < from {
                    continue;
                }
                let entry =
                    ferry_protocol::encoding::decode(body, RECORD_LIMIT, "inference record")
                        .map_err(|e| LogError::Decode {
                            seq,
                            reason: e.to_string(),
                        })?;
                out.push((seq, entry));
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Deletes every record with sequence number `<= upto`: upstream has
    /// them. Returns how many were deleted.
    pub fn ack(&self, upto: u64) -> Result<u64, LogError> {
        let s = &self.shared;
        let next = lock(&s.pending).next;
        s.store_pending()?;
        let _store = lock(&s.store);
        let n = s.remove_below(upto.saturating_add(1).min(next))?;
        // Sequence numbers must never be reused, even if the log empties.
        s.meta.insert(META_NEXT, &next.to_be_bytes())?;
        Ok(n)
    }

    pub fn stats(&self) -> LogStats {
        let s = &self.shared;
        let records = s.count.load(Ordering::Relaxed);
        LogStats {
            records,
            bytes: s.bytes.load(Ordering::Relaxed),
            max_bytes: s.max_bytes,
            dropped: s.dropped.load(Ordering::Relaxed),
            first_seq: (records > 0).then(|| s.first.load(Ordering::Relaxed)),
            next_seq: lock(&s.pending).next,
        }
    }

    /// Stores the pending group now instead of within [`LINGER`] (no fsync).
    pub fn store(&self) -> Result<(), LogError> {
        self.shared.store_pending()
    }

    /// Stores what is pending and writes everything to disk now (used at
    /// shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        self.shared.store_pending()?;
        self.shared.db.flush()?;
        Ok(())
    }
}

/// `entry` encoded, without its sampled payload if that is what puts it
/// over [`RECORD_LIMIT`].
fn within_limit(entry: &Entry) -> Result<Vec<u8>, LogError> {
    let bytes = ferry_protocol::encoding::encode(entry);
    if bytes.len() <= RECORD_LIMIT {
        return Ok(bytes);
    }
    let Entry::Inference(r) = entry else {
        return Err(LogError::TooLarge(bytes.len()));
    };
    if r.payload.is_none() {
        return Err(LogError::TooLarge(bytes.len()));
    }
    let slim = Entry::Inference(InferenceRecord {
        time_ms: r.time_ms,
        model: r.model.clone(),
        version: r.version,
        variant: r.variant.clone(),
        latency_us: r.latency_us,
        request_id: r.request_id.clone(),
        error: r.error.clone(),
        outputs: r.outputs.clone(),
        bins: r.bins.clone(),
        payload: None,
    });
    let bytes = ferry_protocol::encoding::encode(&slim);
    tracing::warn!(
        model = %r.model,
        "inference log: a sampled payload over the record limit was left out"
    );
    if bytes.len() > RECORD_LIMIT {
        return Err(LogError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

impl Drop for InferenceLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.take() {
            // The writer stores the last group before it exits.
            let _ = w.join();
        }
    }
}

impl Shared {
    fn write_loop(&self) {
        loop {
            {
                let mut p = lock(&self.pending);
                while p.buf.is_empty() && !self.closed.load(Ordering::Relaxed) {
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
            }
            let closing = self.closed.load(Ordering::Relaxed);
            if !closing {
                // Let the group fill: this is the batching.
                std::thread::sleep(LINGER);
            }
            if let Err(e) = self.store_pending() {
                tracing::error!(error = %e, "inference log: storing records failed");
            }
            if closing {
                return;
            }
        }
    }

    /// Stores the pending group (if any) as one sled value, then trims to the
    /// bound. A group that cannot be stored is counted as dropped.
    fn store_pending(&self) -> Result<(), LogError> {
        let _store = lock(&self.store);
        let (first, buf, lost) = {
            let mut p = lock(&self.pending);
            let records = std::mem::take(&mut p.records);
            (p.first, std::mem::take(&mut p.buf), records)
        };
        if !buf.is_empty() {
            let len = buf.len() as u64;
            if let Err(e) = self.groups.insert(key(first), buf) {
                // The records are gone: say so in the counters.
                tracing::error!(error = %e, lost, "inference log: a group of records was lost");
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                self.count.fetch_sub(lost, Ordering::Relaxed);
                self.dropped.fetch_add(lost, Ordering::Relaxed);
                return Err(e.into());
            }
        }
        if self.bytes.load(Ordering::Relaxed) > self.max_bytes {
            self.trim_to_bound()?;
        }
        Ok(())
    }

    /// Drops the oldest records until the log is back under 90% of its bound
    /// (hysteresis, so a full log does not trim on every append). Called with
    /// `store` held.
    fn trim_to_bound(&self) -> Result<(), LogError> {
        let target = self.max_bytes - self.max_bytes / 10;
        let mut excess = self.bytes.load(Ordering::Relaxed).saturating_sub(target);
        let mut end = None;
        'scan: for kv in self.groups.iter() {
            let (k, v) = kv?;
            let base = seq_of(&k);
            for (i, (_, body)) in frames(base, &v)?.into_iter().enumerate() {
                if excess == 0 {
                    break 'scan;
                }
                excess = excess.saturating_sub((FRAME + body.len()) as u64);
                end = Some(base + i as u64 + 1);
            }
        }
        let Some(end) = end else { return Ok(()) };
        let dropped = self.remove_below(end)?;
        if dropped > 0 {
            let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            self.meta.insert(META_DROPPED, &total.to_be_bytes())?;
            tracing::warn!(dropped, total, "inference log full: oldest records dropped");
        }
        Ok(())
    }

    /// Removes every stored record below `end`: whole groups, then the front
    /// of the group that holds `end`. Called with `store` held.
    fn remove_below(&self, end: u64) -> Result<u64, LogError> {
        let mut removed = 0;
        while let Some((k, v)) = self.groups.first()? {
            let base = seq_of(&k);
            if base >= end {
                break;
            }
            let frames = frames(base, &v)?;
            let n = frames.len() as u64;
            if base + n <= end {
                self.groups.remove(&k)?;
                self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                self.count.fetch_sub(n, Ordering::Relaxed);
                removed += n;
                continue;
            }
            // `end` falls inside this group: keep its tail under a new key.
            let keep = (end - base) as usize;
            let offset = frames.get(keep).map_or(v.len(), |f| f.0);
            let mut batch = sled::Batch::default();
            batch.remove(&k);
            batch.insert(&key(end), &v[offset..]);
            self.groups.apply_batch(batch)?;
            self.bytes.fetch_sub(offset as u64, Ordering::Relaxed);
            self.count.fetch_sub(keep as u64, Ordering::Relaxed);
            removed += keep as u64;
            break;
        }
        self.first.fetch_max(end, Ordering::Relaxed);
        Ok(removed)
    }
}

/// Moves records stored one per key (the layout before groups) into
/// single-record groups. Idempotent: keys are the same sequence numbers, so
/// a crash part-way through only repeats work.
fn migrate_single_records(db: &sled::Db, groups: &sled::Tree) -> Result<(), LogError> {
    if !db.tree_names().iter().any(|n| n.as_ref() == b"records") {
        return Ok(());
    }
    let old = db.open_tree("records")?;
    for kv in old.iter() {
        let (k, v) = kv?;
        let len = u32::try_from(v.len()).map_err(|_| LogError::TooLarge(v.len()))?;
        let mut framed = Vec::with_capacity(FRAME + v.len());
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(&v);
        groups.insert(k, framed)?;
    }
    groups.flush()?;
    db.drop_tree("records")?;
    Ok(())
}
