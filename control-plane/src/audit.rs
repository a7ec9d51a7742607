//! The tamper-evident audit trail: one hash chain per tenant.
//!
//! Each record's hash is SHA-256 over the previous record's hash and the
//! record's own fields, each length-prefixed, so changing, inserting or
//! removing any record breaks every hash after it. [`verify_chain`] is pure:
//! the server, the CLI (`ferry audit verify`) and the tests all run it on
//! records fetched however they like.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The `prev_hash` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened to a request.
pub const OUTCOME_OK: &str = "ok";
pub const OUTCOME_REFUSED: &str = "refused";

/// One audit record as stored and as served by `GET /api/v1/audit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub tenant: String,
    pub seq: i64,
    /// Seconds since the Unix epoch.
    pub at: i64,
    pub request_id: String,
    /// Token id and name (`tok_… (name)`), or `anonymous`.
    pub actor: String,
    /// `model.register`, `alias.set`, `token.create`, …
    pub action: String,
    /// What the action was about (`fraud@3`, `token tok_…`).
    pub target: String,
    /// `ok` or `refused`.
    pub outcome: String,
    /// Why a refusal happened, or a short description.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The fields of a record before it is chained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub tenant: String,
    pub request_id: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

impl AuditEntry {
    /// Chains this entry after `prev_hash` as record `seq`.
    pub fn seal(self, seq: i64, at: i64, prev_hash: &str) -> AuditRecord {
        let mut r = AuditRecord {
            tenant: self.tenant,
            seq,
            at,
            request_id: self.request_id,
            actor: self.actor,
            action: self.action,
            target: self.target,
            outcome: self.outcome,
            detail: self.detail,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        r.hash = record_hash(&r);
        r
    }
}

/// SHA-256 over the previous hash and every field except `hash`, each as an
/// 8-byte little-endian length followed by its bytes.
pub fn record_hash(r: &AuditRecord) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"ferry/v1/audit");
    field(r.prev_hash.as_bytes());
    field(r.tenant.as_bytes());
    field(&r.seq.to_le_bytes());
    field(&r.at.to_le_bytes());
    field(r.request_id.as_bytes());
    field(r.actor.as_bytes());
    field(r.action.as_bytes());
    field(r.target.as_bytes());
    field(r.outcome.as_bytes());
    field(r.detail.as_bytes());
    hex::encode(h.finalize())
}

/// Where a chain stops being valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The first record that does not verify (for a missing tail, the
    /// sequence number the head says should exist).
    pub seq: i64,
    pub reason: String,
}

/// The chain head as the server's head table records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

/// Recomputes a tenant's chain from its first record. `records` must be the
/// whole chain in sequence order; `head`, when given, is the server's
/// record of the last sequence number and hash, which catches a removed
/// tail. Returns the number of records verified, or the first break.
pub fn verify_chain(records: &[AuditRecord], head: Option<&ChainHead>) -> Result<u64, ChainBreak> {
    verify_chain_from(None, records, head)
}

/// [`verify_chain`] continuing after `prefix`, the last record of a part
/// already verified (`records` then start at the record after it).
/// Returns the number of records verified in all (the last one's sequence
/// number), or the first break.
pub fn verify_chain_from(
    prefix: Option<&ChainHead>,
    records: &[AuditRecord],
    head: Option<&ChainHead>,
) -> Result<u64, ChainBreak> {
    let mut prev = prefix.map_or_else(|| GENESIS.to_string(), |p| p.hash.clone());
    let mut expect_seq = prefix.map_or(0, |p| p.seq) + 1;
    for r in records {
        if r.seq != expect_seq {
            return Err(ChainBreak {
                seq: expect_seq,
                reason: format!(
                    "record {expect_seq} is missing (next record present is {})",
                    r.seq
                ),
            });
        }
        if r.prev_hash != prev {
            return Err(ChainBreak {
                seq: r.seq,
                reason: "prev_hash does not match the previous record's hash".into(),
            });
        }
        let computed = record_hash(r);
        if computed != r.hash {
            return Err(ChainBreak {
                seq: r.seq,
                reason: format!(
                    "contents do not match its hash (stored {}, recomputed {})",
                    short(&r.hash),
                    short(&computed)
                ),
            });
        }
        prev = computed;
        expect_seq += 1;
    }
    if let Some(head) = head {
        let last = expect_seq - 1;
        if head.seq != last {
            return Err(ChainBreak {
                seq: last + 1,
                reason: format!(
                    "the chain head says {} records, {} present: records after {last} were removed",
                    head.seq, last
                ),
            });
        }
        if head.hash != prev {
            return Err(ChainBreak {
                seq: last,
                reason: "the last record's hash does not match the chain head".into(),
            });
        }
    }
    Ok((expect_seq - 1).max(0) as u64)
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|r| r.hash.clone()).unwrap_or(GENESIS.into());
            out.push(
                AuditEntry {
                    tenant: "t".into(),
                    request_id: format!("r{i}"),
                    actor: "a".into(),
                    action: "x".into(),
                    target: "y".into(),
                    outcome: OUTCOME_OK.into(),
                    detail: String::new(),
                }
                .seal(i as i64 + 1, 100 + i as i64, &prev),
            );
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let head = ChainHead {
            seq: 5,
            hash: c[4].hash.clone(),
        };
        assert_eq!(verify_chain(&c, Some(&head)), Ok(5));
    }

    #[test]
    fn edits_removals_and_truncation_are_named() {
        let c = chain(5);
        let head = ChainHead {
            seq: 5,
            hash: c[4].hash.clone(),
        };
        let mut edited = c.clone();
        edited[2].outcome = "ok-ish".into();
        assert_eq!(verify_chain(&edited, Some(&head)).unwrap_err().seq, 3);

        let mut removed = c.clone();
        removed.remove(1);
        assert_eq!(verify_chain(&removed, Some(&head)).unwrap_err().seq, 2);

        let truncated = &c[..3];
        assert_eq!(verify_chain(truncated, Some(&head)).unwrap_err().seq, 4);

        // Rehashing an edited record still breaks the next link.
        let mut rehashed = c.clone();
        rehashed[1].detail = "forged".into();
        rehashed[1].hash = record_hash(&rehashed[1]);
        assert_eq!(verify_chain(&rehashed, Some(&head)).unwrap_err().seq, 3);
    }
}
