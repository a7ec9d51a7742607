//! Manifest verification against a trust root: the one gate every bundle
//! passes before any of its bytes are used.

use crate::encoding::DecodeError;
use crate::keys::{self, Digest, Domain, KeyId};
use crate::manifest::{Manifest, ManifestError, SignedManifest};
use crate::trust::{TrustError, TrustRoot};
use crate::{UnixTime, Version};

/// A manifest whose signatures, scope, expiry and version were checked. Only
/// [`verify_manifest`] makes one, so holding it proves the checks ran.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    digest: Digest,
    signers: Vec<KeyId>,
}

impl VerifiedManifest {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// SHA-256 of the signed manifest bytes: the bundle's identity.
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// Publisher keys whose valid, in-scope signatures were counted.
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }
    pub fn into_manifest(self) -> Manifest {
        self.manifest
    }
}

/// Every reason a bundle is refused. Each names what failed, so an operator
/// reading an agent's report or `ferry bundle verify` knows what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a Ferry bundle (bad magic bytes)")]
    BadMagic,
    #[error("bundle is truncated: {0}")]
    Truncated(String),
    #[error("bundle header: {0}")]
    Header(DecodeError),
    #[error("manifest: {0}")]
    Manifest(DecodeError),
    #[error("manifest is invalid: {0}")]
    Invalid(#[from] ManifestError),
    #[error("trust root: {0}")]
    Trust(#[from] TrustError),
    #[error("no signature from a key in the trust root (signed by {0})")]
    UnknownKey(String),
    #[error("signature by key {0} does not verify: manifest or signature was tampered with")]
    BadSignature(KeyId),
    #[error("key {0} is revoked")]
    RevokedKey(KeyId),
    #[error("publisher {publisher:?} (key {key}) may not sign model {model:?}")]
    OutOfScope {
        publisher: String,
        key: KeyId,
        model: String,
    },
    #[error("{have} valid publisher signatures, {need} needed")]
    BelowThreshold { have: usize, need: usize },
    #[error("manifest expired at {expires_at} (now {now})")]
    Expired { expires_at: UnixTime, now: UnixTime },
    #[error(
        "version {version} is older than version {highest_seen} already seen: rollback refused"
    )]
    Rollback {
        version: Version,
        highest_seen: Version,
    },
    #[error("artifact {name:?}: digest mismatch (expected {expected}, got {actual})")]
    DigestMismatch {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("artifact {name:?}: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("data continues after the last artifact")]
    TrailingData,
    #[error("reading bundle: {0}")]
    Io(String),
}

impl VerifyError {
    /// A short stable code for reports, audit records and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::BadMagic => "bad_magic",
            VerifyError::Truncated(_) => "truncated",
            VerifyError::Header(_) => "malformed_header",
            VerifyError::Manifest(_) => "malformed_manifest",
            VerifyError::Invalid(_) => "invalid_manifest",
            VerifyError::Trust(TrustError::Expired { .. }) => "trust_root_expired",
            VerifyError::Trust(_) => "trust_root",
            VerifyError::UnknownKey(_) => "unknown_key",
            VerifyError::BadSignature(_) => "bad_signature",
            VerifyError::RevokedKey(_) => "revoked_key",
            VerifyError::OutOfScope { .. } => "out_of_scope",
            VerifyError::BelowThreshold { .. } => "below_threshold",
            VerifyError::Expired { .. } => "expired",
            VerifyError::Rollback { .. } => "rollback",
            VerifyError::DigestMismatch { .. } => "digest_mismatch",
            VerifyError::LengthMismatch { .. } => "length_mismatch",
            VerifyError::TrailingData => "trailing_data",
            VerifyError::Io(_) => "io",
        }
    }
}

/// Verifies a bundle header's manifest against `trust` at time `now`.
///
/// Checks, in order: the trust root is unexpired; the manifest decodes; at
/// least `publisher_threshold` distinct publishers that are neither revoked
/// nor out of scope signed it; it is unexpired; its version is not below
/// `highest_seen`; it is structurally valid. When signatures fall short, the
/// most specific reason is returned (revoked, then out of scope, then
/// tampered, then unknown).
pub fn verify_manifest(
    trust: &TrustRoot,
    header: &SignedManifest,
    now: UnixTime,
    highest_seen: Option<Version>,
) -> Result<VerifiedManifest, VerifyError> {
    trust.check_expiry(now)?;
    let manifest = Manifest::decode(&header.manifest).map_err(VerifyError::Manifest)?;
    let model = manifest.model.as_str();

    let mut valid: Vec<KeyId> = Vec::new();
    let mut revoked = None;
    let mut out_of_scope = None;
    let mut bad_sig = None;
    for sig in &header.signatures {
        let Some(publisher) = trust.publisher(&sig.key_id) else {
            if trust.is_revoked(&sig.key_id) {
                revoked.get_or_insert(sig.key_id);
            }
            continue;
        };
        if !publisher
            .key
            .verify(Domain::Manifest, &header.manifest, sig)
        {
            bad_sig.get_or_insert(sig.key_id);
            continue;
        }
        if trust.is_revoked(&sig.key_id) {
            revoked.get_or_insert(sig.key_id);
            continue;
        }
        if !publisher.may_sign(model) {
            out_of_scope.get_or_insert((publisher.name.clone(), sig.key_id));
            continue;
        }
        if !valid.contains(&sig.key_id) {
            valid.push(sig.key_id);
        }
    }
    let need = trust.publisher_threshold as usize;
    if valid.len() < need {
        if let Some(k) = revoked {
            return Err(VerifyError::RevokedKey(k));
        }
        if let Some((publisher, key)) = out_of_scope {
            return Err(VerifyError::OutOfScope {
                publisher,
                key,
                model: model.to_string(),
            });
        }
        if let Some(k) = bad_sig {
            return Err(VerifyError::BadSignature(k));
        }
        if valid.is_empty() {
            let ids: Vec<String> = header
                .signatures
                .iter()
                .map(|s| s.key_id.to_hex())
                .collect();
            let ids = if ids.is_empty() {
                "nobody".to_string()
            } else {
                ids.join(", ")
            };
            return Err(VerifyError::UnknownKey(ids));
        }
        return Err(VerifyError::BelowThreshold {
            have: valid.len(),
            need,
        });
    }
    if let Some(expires_at) = manifest.expires_at {
        if now >= expires_at {
            return Err(VerifyError::Expired { expires_at, now });
        }
    }
    if let Some(highest_seen) = highest_seen {
        if manifest.version < highest_seen {
            return Err(VerifyError::Rollback {
                version: manifest.version,
                highest_seen,
            });
        }
    }
    manifest.validate()?;
    Ok(VerifiedManifest {
        digest: keys::sha256(&header.manifest),
        manifest,
        signers: valid,
    })
}
