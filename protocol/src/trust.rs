//! Trust roots: who may sign what, for one tenant.
//!
//! Modelled on TUF's root role, kept small: a threshold of root keys signs the
//! root; the root names publisher keys and the model-name patterns each may
//! sign; a new root must be signed by a threshold of the old root's keys and
//! of its own.

use crate::encoding::{self, DecodeError};
use crate::keys::{self, Digest, Domain, KeyId, PublicKey, Signature};
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

impl TrustError {
    /// A short stable code for reports and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            TrustError::Decode(_) => "malformed_trust_root",
            TrustError::Expired { .. } => "trust_root_expired",
            TrustError::Invalid(_) => "invalid_trust_root",
            TrustError::BelowThreshold { .. } => "trust_root_signatures",
            TrustError::NotNewer { .. } => "trust_root_not_newer",
            TrustError::TenantChanged { .. } => "trust_root_tenant",
        }
    }
}

/// The fingerprint of a signed trust root: the SHA-256 of its encoded file
/// bytes, as `ferry trust init` and `ferry device token create` print it.
/// A device pins the root it enrolls with by this value.
pub fn fingerprint(signed: &SignedTrustRoot) -> Digest {
    keys::sha256(&signed.to_bytes())
}

/// Parses a fingerprint as printed (64 hex digits, optionally after
/// `sha256:`).
pub fn parse_fingerprint(s: &str) -> Option<Digest> {
    let s = s.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    Digest::from_hex(s).ok()
}

/// Follows `chain` from `current`: every root in it newer than the one
/// before must be its valid successor (same tenant, higher version, signed
/// by a threshold of the previous root's keys and of its own). Roots at or
/// below `current`'s version are skipped, so a chain from version 1 can be
/// offered to a device holding any version. Intermediate roots may have
/// expired since (they are history); the last one must be unexpired at
/// `now`. `None`: nothing newer than `current`.
pub fn follow_chain(
    current: &TrustRoot,
    chain: &[SignedTrustRoot],
    now: UnixTime,
) -> Result<Option<(TrustRoot, SignedTrustRoot)>, TrustError> {
    let mut links: Vec<(u64, &SignedTrustRoot)> = Vec::with_capacity(chain.len());
    for s in chain {
        links.push((s.peek()?.version, s));
    }
    links.sort_by_key(|(v, _)| *v);
    let mut held = current.clone();
    let mut last: Option<(TrustRoot, SignedTrustRoot)> = None;
    for (version, signed) in links {
        if version <= held.version {
            continue;
        }
        let next = signed.successor(&held, None)?;
        held = next.clone();
        last = Some((next, signed.clone()));
    }
    if let Some((root, _)) = &last {
        root.check_expiry(now)?;
    }
    Ok(last)
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
        let root = self.open_any_time()?;
        root.check_expiry(now)?;
        Ok(root)
    }

    /// Opens a root without looking at its expiry: consistent and signed by
    /// a threshold of its own root keys. For a root a device already holds
    /// (what it verified keeps serving after expiry; new bundles are still
    /// checked against the expiry) and for the history of a chain.
    pub fn open_any_time(&self) -> Result<TrustRoot, TrustError> {
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
        self.successor(current, Some(now))
    }

    /// [`Self::open_as_successor`], checking expiry only when `now` is given.
    fn successor(
        &self,
        current: &TrustRoot,
        now: Option<UnixTime>,
    ) -> Result<TrustRoot, TrustError> {
        let new = match now {
            Some(now) => self.open(now)?,
            None => self.open_any_time()?,
        };
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

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn root(tenant: &str, version: u64, expires_at: u64, root_key: u8, publisher: u8) -> TrustRoot {
        TrustRoot {
            tenant: tenant.into(),
            version,
            expires_at,
            threshold: 1,
            root_keys: vec![PublicKey::from_signing_key(&key(root_key))],
            publishers: vec![Publisher {
                name: format!("p{publisher}"),
                key: PublicKey::from_signing_key(&key(publisher)),
                scopes: vec!["*".into()],
            }],
            publisher_threshold: 1,
            revoked: vec![],
        }
    }

    #[test]
    fn a_chain_of_two_rotations_is_followed_from_any_held_version() {
        let v1 = root("acme", 1, 1_000, 1, 10);
        let s2 = SignedTrustRoot::sign(&root("acme", 2, 1_000, 1, 11), &[&key(1)]);
        // v3 rotates the root key too: signed by the old one and the new one.
        let s3 = SignedTrustRoot::sign(&root("acme", 3, 5_000, 2, 12), &[&key(1), &key(2)]);
        let chain = [s3.clone(), s2.clone()];
        let (got, signed) = follow_chain(&v1, &chain, 500).unwrap().unwrap();
        assert_eq!((got.version, signed), (3, s3.clone()));
        // v2 expired by now (history); the newest is what must be valid.
        let (got, _) = follow_chain(&v1, &chain, 2_000).unwrap().unwrap();
        assert_eq!(got.version, 3);
        let v2 = s2.open(0).unwrap();
        assert_eq!(
            follow_chain(&v2, &chain, 500).unwrap().unwrap().0.version,
            3
        );
        let v3 = s3.open(0).unwrap();
        assert_eq!(follow_chain(&v3, &chain, 500).unwrap(), None);
        // The newest expired: refused.
        let e = follow_chain(&v1, &chain, 6_000).unwrap_err();
        assert_eq!(e.code(), "trust_root_expired");
    }

    #[test]
    fn a_forged_or_foreign_link_breaks_the_chain() {
        let v1 = root("acme", 1, 1_000, 1, 10);
        // Signed only by a key the held root does not list.
        let forged = SignedTrustRoot::sign(&root("acme", 2, 1_000, 9, 99), &[&key(9)]);
        let e = follow_chain(&v1, &[forged], 500).unwrap_err();
        assert_eq!(e.code(), "trust_root_signatures");
        let other = SignedTrustRoot::sign(&root("other", 2, 1_000, 1, 10), &[&key(1)]);
        let e = follow_chain(&v1, &[other], 500).unwrap_err();
        assert_eq!(e.code(), "trust_root_tenant");
        // A gap (v3 signed by a root key v1 does not have) is refused too.
        let s3 = SignedTrustRoot::sign(&root("acme", 3, 1_000, 2, 12), &[&key(2)]);
        assert!(follow_chain(&v1, &[s3], 500).is_err());
    }

    #[test]
    fn fingerprints_parse_as_printed() {
        let s = SignedTrustRoot::sign(&root("acme", 1, 1_000, 1, 10), &[&key(1)]);
        let fp = fingerprint(&s);
        assert_eq!(parse_fingerprint(&fp.to_hex()), Some(fp));
        assert_eq!(
            parse_fingerprint(&format!("sha256:{}", fp.to_hex())),
            Some(fp)
        );
        assert_eq!(parse_fingerprint("nope"), None);
    }

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
