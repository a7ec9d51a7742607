//! The telemetry outbox: messages waiting for the broker's acknowledgement,
//! in a sled tree keyed by a big-endian sequence number, so they survive
//! broker outages and agent restarts and leave in order.
//!
//! Bounded: when `max_entries` are waiting, the oldest is dropped and counted
//! (`dropped`, persisted), never silently.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("telemetry outbox {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("telemetry outbox: {0}")]
    Db(#[from] sled::Error),
    #[error("telemetry outbox entry {0} is corrupt")]
    Corrupt(u64),
}

/// One queued message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub key: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

pub struct Outbox {
    db: sled::Db,
    queue: sled::Tree,
    meta: sled::Tree,
    max_entries: u64,
    /// Serialises every read-modify-write of `meta` (the sequence number
    /// and the drop counter): the publisher and the serving core's event
    /// sink push from different threads, and two pushes reading the same
    /// `next_seq` would write the same key, one message silently replacing
    /// the other.
    write: Mutex<()>,
}

const NEXT_SEQ: &[u8] = b"next_seq";
const DROPPED: &[u8] = b"dropped";

fn get_u64(t: &sled::Tree, k: &[u8]) -> Result<u64, OutboxError> {
    Ok(t.get(k)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

impl Outbox {
    pub fn open(dir: &Path, max_entries: u64) -> Result<Self, OutboxError> {
        let db = crate::sled_open::open(&sled::Config::new().path(dir).cache_capacity(4 << 20))
            .map_err(|source| OutboxError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        let queue = db.open_tree("queue")?;
        let meta = db.open_tree("meta")?;
        Ok(Self {
            db,
            queue,
            meta,
            max_entries: max_entries.max(1),
            write: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next sequence number to assign (persisted across restarts).
    pub fn next_seq(&self) -> Result<u64, OutboxError> {
        get_u64(&self.meta, NEXT_SEQ)
    }

    /// Appends a message under the next sequence number, which it returns;
    /// `make` builds the payload for that number. Flushed before returning.
    pub fn push(&self, topic: &str, make: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, OutboxError> {
        let _write = self.lock();
        let seq = self.next_seq()?;
        let payload = make(seq);
        let mut value = Vec::with_capacity(2 + topic.len() + payload.len());
        value.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        value.extend_from_slice(topic.as_bytes());
        value.extend_from_slice(&payload);
        self.queue.insert(seq.to_be_bytes(), value)?;
        self.meta.insert(NEXT_SEQ, &(seq + 1).to_be_bytes())?;
        while self.queue.len() as u64 > self.max_entries {
            if self.queue.pop_min()?.is_none() {
                break;
            }
            let d = get_u64(&self.meta, DROPPED)? + 1;
            self.meta.insert(DROPPED, &d.to_be_bytes())?;
        }
        self.db.flush()?;
        Ok(seq)
    }

    /// The oldest waiting message.
    pub fn first(&self) -> Result<Option<Message>, OutboxError> {
        let Some((k, v)) = self.queue.first()? else {
            return Ok(None);
        };
        let key = <[u8; 8]>::try_from(k.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| OutboxError::Corrupt(0))?;
        if v.len() < 2 {
            return Err(OutboxError::Corrupt(key));
        }
        let tl = usize::from(u16::from_be_bytes([v[0], v[1]]));
        let topic = v
            .get(2..2 + tl)
            .and_then(|t| std::str::from_utf8(t).ok())
            .ok_or(OutboxError::Corrupt(key))?
            .to_string();
        Ok(Some(Message {
            key,
            topic,
            payload: v[2 + tl..].to_vec(),
        }))
    }

    /// Removes an acknowledged message (idempotent).
    pub fn remove(&self, key: u64) -> Result<(), OutboxError> {
        self.queue.remove(key.to_be_bytes())?;
        Ok(())
    }

    /// Drops a message that can never be sent (corrupt), counting it.
    pub fn discard(&self, key: u64) -> Result<(), OutboxError> {
        let _write = self.lock();
        self.queue.remove(key.to_be_bytes())?;
        let d = get_u64(&self.meta, DROPPED)? + 1;
        self.meta.insert(DROPPED, &d.to_be_bytes())?;
        Ok(())
    }

    pub fn depth(&self) -> u64 {
        self.queue.len() as u64
    }

    pub fn dropped(&self) -> Result<u64, OutboxError> {
        get_u64(&self.meta, DROPPED)
    }

    pub fn flush(&self) -> Result<(), OutboxError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_bound_and_counts_drops_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Outbox::open(dir.path(), 3).unwrap();
            for i in 0..5u8 {
                let seq = o.push("t/a", |s| vec![i, s as u8]).unwrap();
                assert_eq!(seq, u64::from(i));
            }
            assert_eq!(o.depth(), 3);
            assert_eq!(o.dropped().unwrap(), 2);
            let m = o.first().unwrap().unwrap();
            assert_eq!((m.key, m.topic.as_str(), m.payload), (2, "t/a", vec![2, 2]));
            o.remove(2).unwrap();
            o.remove(2).unwrap();
        }
        let o = Outbox::open(dir.path(), 3).unwrap();
        assert_eq!(o.first().unwrap().unwrap().key, 3);
        assert_eq!(o.next_seq().unwrap(), 5);
        assert_eq!(o.dropped().unwrap(), 2);
    }

    #[test]
    fn concurrent_pushes_never_share_a_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let o = std::sync::Arc::new(Outbox::open(dir.path(), 1_000_000).unwrap());
        let (threads, each) = (8u64, 50u64);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let o = o.clone();
                std::thread::spawn(move || {
                    (0..each)
                        .map(|i| {
                            o.push("t/x", |s| format!("{t}-{i}-{s}").into_bytes())
                                .unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        // Every push got its own number and every message is still queued.
        assert_eq!(seqs.len() as u64, threads * each);
        assert_eq!(o.depth(), threads * each);
        assert_eq!(o.next_seq().unwrap(), threads * each);
        let mut payloads = std::collections::HashSet::new();
        while let Some(m) = o.first().unwrap() {
            let text = String::from_utf8(m.payload).unwrap();
            assert!(
                text.ends_with(&format!("-{}", m.key)),
                "{text} under {}",
                m.key
            );
            payloads.insert(text);
            o.remove(m.key).unwrap();
        }
        assert_eq!(payloads.len() as u64, threads * each);
    }
}
