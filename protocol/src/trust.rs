//! Trust roots: who may sign what, for one tenant.
//!
//! Modelled on TUF's root role, kept small: a threshold of root keys signs the
//! root; the root names publisher keys and the model-name patterns each may
//! sign; a new root must be signed by a threshold of the old root's keys and
//! of its own.

use crate::encoding::{self, DecodeError};
use crate::keys::{self, Domain, KeyId, PublicKey, Signature};
use crate::UnixTime;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// Largest encoded trust root any decoder accepts.
pub const TRUST_ROOT_LIMIT: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRoot {
    pub tenant: String,
    /// Increases with every replacement; agents refuse a lower one.
    pub version: u64,
    pub expires_at: UnixTime,
    /// Root signatures needed on this document and on its successor.
    pub threshold: u32,
    pub root_keys: Vec<PublicKey>,
    pub publishers: Vec<Publisher>,
    /// Distinct in-scope publisher signatures a manifest needs.
    pub publisher_threshold: u32,
    /// Keys that must no longer be trusted for anything.
    pub revoked: Vec<KeyId>,
}

/// A key that may sign bundles for model names matching `scopes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    pub name: String,
    pub key: PublicKey,
    /// Glob patterns over model names; `*` matches any run of characters.
    pub scopes: Vec<String>,
}

/// A trust root as distributed: its canonical bytes and the root signatures
/// over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTrustRoot {
    pub root: Vec<u8>,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("trust root does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("trust root v{version} expired at {expires_at} (now {now})")]
    Expired {
        version: u64,
        expires_at: UnixTime,
        now: UnixTime,
    },
    #[error("trust root is invalid: {0}")]
    Invalid(String),
    #[error("{have} valid signatures from {which} root keys, {need} needed")]
    BelowThreshold {
        which: &'static str,
        have: usize,
        need: usize,
    },
    #[error("new trust root v{new} does not supersede the current v{current}")]
    NotNewer { current: u64, new: u64 },
    #[error("new trust root is for tenant {new:?}, the current one for {current:?}")]
    TenantChanged { current: String, new: String },
}

/// Matches `name` against a glob with `*` wildcards.
pub fn scope_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Publisher {
    pub fn may_sign(&self, model: &str) -> bool {
        self.scopes.iter().any(|s| scope_matches(s, model))
    }
}

impl TrustRoot {
    /// Checks internal consistency: thresholds reachable, keys distinct.
    pub fn validate(&self) -> Result<(), TrustError> {
        let invalid = |m: &str| Err(TrustError::Invalid(m.into()));
        if self.threshold == 0 || self.threshold as usize > self.root_keys.len() {
            return invalid("root threshold must be between 1 and the number of root keys");
        }
        if self.publisher_threshold == 0 {
            return invalid("publisher threshold must be at least 1");
        }
        let mut ids: Vec<KeyId> = self.root_keys.iter().map(PublicKey::id).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != self.root_keys.len() {
            return invalid("root keys must be distinct");
        }
        let mut pubs: Vec<KeyId> = self.publishers.iter().map(|p| p.key.id()).collect();
        pubs.sort();
        pubs.dedup();
        if pubs.len() != self.publishers.len() {
            return invalid("publisher keys must be distinct");
        }
        Ok(())
    }

    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }

    pub fn publisher(&self, id: &KeyId) -> Option<&Publisher> {
        self.publishers.iter().find(|p| p.key.id() == *id)
    }

    pub fn check_expiry(&self, now: UnixTime) -> Result<(), TrustError> {
        if now >= self.expires_at {
            return Err(TrustError::Expired {
                version: self.version,
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }

    /// Counts distinct, non-revoked root keys of `self` that signed `msg`.
    fn count_root_signatures(&self, msg: &[u8], sigs: &[Signature]) -> usize {
        let mut signers: Vec<KeyId> = Vec::new();
        for s in sigs {
            if self.is_revoked(&s.key_id) || signers.contains(&s.key_id) {
                continue;
            }
            if let Some(k) = self.root_keys.iter().find(|k| k.id() == s.key_id) {
                if k.verify(Domain::TrustRoot, msg, s) {
                    signers.push(s.key_id);
                }
            }
        }
        signers.len()
    }
}

impl SignedTrustRoot {
    /// Signs `root` with each of `keys`.
    pub fn sign(root: &TrustRoot, keys: &[&SigningKey]) -> Self {
        let bytes = encoding::encode(root);
        let signatures = keys
            .iter()
            .map(|k| keys::sign(Domain::TrustRoot, &bytes, k))
            .collect();
        Self {
            root: bytes,
            signatures,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        Ok(encoding::decode(
            bytes,
            TRUST_ROOT_LIMIT,
            "trust root file",
        )?)
    }

    /// Decodes the root without checking signatures (for display only).
    pub fn peek(&self) -> Result<TrustRoot, TrustError> {
        Ok(encoding::decode(
            &self.root,
            TRUST_ROOT_LIMIT,
            "trust root",
        )?)
    }

    /// Opens a root provisioned out of band: it must be consistent, signed by
    /// a threshold of its own root keys, and unexpired at `now`.
    pub fn open(&self, now: UnixTime) -> Result<TrustRoot, TrustError> {
        let root = self.peek()?;
        root.validate()?;
        let have = root.count_root_signatures(&self.root, &self.signatures);
        if have < root.threshold as usize {
            return Err(TrustError::BelowThreshold {
                which: "its own",
                have,
                need: root.threshold as usize,
            });
        }
        root.check_expiry(now)?;
        Ok(root)
    }

    /// Accepts `self` as the successor of `current`: same tenant, higher
    /// version, signed by a threshold of the current root keys and of its
    /// own.
    pub fn open_as_successor(
        &self,
        current: &TrustRoot,
        now: UnixTime,
    ) -> Result<TrustRoot, TrustError> {
        let new = self.open(now)?;
        if new.tenant != current.tenant {
            return Err(TrustError::TenantChanged {
                current: current.tenant.clone(),
                new: new.tenant,
            });
        }
        if new.version <= current.version {
            return Err(TrustError::NotNewer {
                current: current.version,
                new: new.version,
            });
        }
        let have = current.count_root_signatures(&self.root, &self.signatures);
        if have < current.threshold as usize {
            return Err(TrustError::BelowThreshold {
                which: "the previous root's",
                have,
                need: current.threshold as usize,
            });
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(scope_matches("*", "anything"));
        assert!(scope_matches("fraud-*", "fraud-eu"));
        assert!(scope_matches("fraud-*", "fraud-"));
        assert!(!scope_matches("fraud-*", "fraud"));
        assert!(scope_matches("*-eu", "fraud-eu"));
        assert!(scope_matches("a*b*c", "aXXbYYc"));
        assert!(!scope_matches("a*b*c", "aXXbYY"));
        assert!(scope_matches("exact", "exact"));
        assert!(!scope_matches("exact", "exactly"));
    }
}
