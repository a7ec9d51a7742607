//! The inference log: one compact record per request in sled, bounded by
//! bytes, read by cursor and trimmed by acknowledgement.
//!
//! Keys are big-endian sequence numbers, so sled's order is append order and
//! "oldest" is `first()`. When the stored bytes pass the bound, the oldest
//! records go and a persisted counter says how many; nothing is dropped
//! silently. Records reach the OS within sled's flush interval; with
//! [`Durability::Sync`] an append returns only after its record is on disk.

use ferry_protocol::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Largest record accepted from the log (decoding limit).
const RECORD_LIMIT: usize = 64 * 1024 * 1024;
const META_DROPPED: &[u8] = b"dropped";
const META_NEXT: &[u8] = b"next_seq";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("inference log: {0}")]
    Sled(#[from] sled::Error),
    #[error("inference log record {seq} does not decode: {reason}")]
    Decode { seq: u64, reason: String },
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

pub struct InferenceLog {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    next: AtomicU64,
    /// No record below this sequence number exists (trim and ack advance
    /// it), so removal is by key, never by scanning sled's tombstones.
    first: AtomicU64,
    bytes: AtomicU64,
    count: AtomicU64,
    dropped: AtomicU64,
    max_bytes: u64,
    durability: Durability,
    /// One trimmer at a time; appenders never wait on it.
    trim: Mutex<()>,
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

impl InferenceLog {
    /// Opens (or creates) the log under `dir`, bounded to `max_bytes` of
    /// record payload.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        durability: Durability,
        flush_every_ms: u64,
    ) -> Result<Self, LogError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(flush_every_ms.max(1)))
            .cache_capacity(8 * 1024 * 1024)
            .open()?;
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        // The bound is on what is stored, so recount it: a crash may have
        // lost the last few counter updates but never the records.
        let (mut bytes, mut count) = (0u64, 0u64);
        for kv in records.iter() {
            let (_, v) = kv?;
            bytes += v.len() as u64;
            count += 1;
        }
        let last = records.last()?.map(|(k, _)| seq_of(&k) + 1).unwrap_or(0);
        let next = last.max(read_u64(&meta, META_NEXT)?);
        let first = records.first()?.map(|(k, _)| seq_of(&k)).unwrap_or(next);
        Ok(Self {
            dropped: AtomicU64::new(read_u64(&meta, META_DROPPED)?),
            db,
            records,
            meta,
            next: AtomicU64::new(next),
            first: AtomicU64::new(first),
            bytes: AtomicU64::new(bytes),
            count: AtomicU64::new(count),
            max_bytes,
            durability,
            trim: Mutex::new(()),
        })
    }

    /// Appends an entry; returns its sequence number. Does not wait for disk
    /// (see [`InferenceLog::wait_durable`]).
    pub fn append(&self, entry: &Entry) -> Result<u64, LogError> {
        let bytes = ferry_protocol::encoding::encode(entry);
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.records.insert(key(seq), bytes.as_slice())?;
        let total =
            self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        if total > self.max_bytes {
            self.trim_to_bound()?;
        }
        Ok(seq)
    }

    /// Waits until everything appended so far is on disk, when the log is
    /// configured for synchronous durability. Concurrent callers share one
    /// fsync (sled coalesces them).
    pub async fn wait_durable(&self) -> Result<(), LogError> {
        if self.durability == Durability::Sync {
            self.db.flush_async().await?;
        }
        Ok(())
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Drops the oldest records until the log is back under 90% of its bound
    /// (hysteresis, so a full log does not trim on every append).
    fn trim_to_bound(&self) -> Result<(), LogError> {
        let Ok(_guard) = self.trim.try_lock() else {
            return Ok(()); // someone else is trimming
        };
        let target = self.max_bytes - self.max_bytes / 10;
        let mut dropped = 0u64;
        let next = self.next.load(Ordering::Relaxed);
        let mut seq = self.first.load(Ordering::Relaxed);
        while self.bytes.load(Ordering::Relaxed) > target && seq < next {
            if let Some(v) = self.records.remove(key(seq))? {
                self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                self.count.fetch_sub(1, Ordering::Relaxed);
                dropped += 1;
            }
            seq += 1;
            self.first.store(seq, Ordering::Relaxed);
        }
        if dropped > 0 {
            let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            self.meta.insert(META_DROPPED, &total.to_be_bytes())?;
            tracing::warn!(dropped, total, "inference log full: oldest records dropped");
        }
        Ok(())
    }

    /// Up to `limit` entries with sequence number `>= from`, in order.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, Entry)>, LogError> {
        let mut out = Vec::new();
        for kv in self.records.range(key(from)..).take(limit) {
            let (k, v) = kv?;
            let seq = seq_of(&k);
            let entry = ferry_protocol::encoding::decode(&v, RECORD_LIMIT, "inference record")
                .map_err(|e| LogError::Decode {
                    seq,
                    reason: e.to_string(),
                })?;
            out.push((seq, entry));
        }
        Ok(out)
    }

    /// Deletes every record with sequence number `<= upto`: upstream has
    /// them. Returns how many were deleted.
    pub fn ack(&self, upto: u64) -> Result<u64, LogError> {
        let _guard = self.trim.lock();
        let mut n = 0;
        let end = upto
            .saturating_add(1)
            .min(self.next.load(Ordering::Relaxed));
        let mut seq = self.first.load(Ordering::Relaxed);
        while seq < end {
            if let Some(v) = self.records.remove(key(seq))? {
                self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                self.count.fetch_sub(1, Ordering::Relaxed);
                n += 1;
            }
            seq += 1;
            self.first.store(seq, Ordering::Relaxed);
        }
        // Sequence numbers must never be reused, even if the log empties.
        let next = self.next.load(Ordering::Relaxed);
        self.meta.insert(META_NEXT, &next.to_be_bytes())?;
        Ok(n)
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            records: self.count.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            max_bytes: self.max_bytes,
            dropped: self.dropped.load(Ordering::Relaxed),
            first_seq: (self.count.load(Ordering::Relaxed) > 0)
                .then(|| self.first.load(Ordering::Relaxed)),
            next_seq: self.next.load(Ordering::Relaxed),
        }
    }

    /// Writes everything to disk now (used at shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }
}
