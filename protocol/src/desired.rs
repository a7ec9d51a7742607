//! Desired-state documents: what the control plane wants a device to run,
//! signed with its online key. A sequence number and an expiry make replayed
//! and frozen assignments detectable.

use crate::encoding::{self, DecodeError};
use crate::keys::{self, Digest, Domain, PublicKey, Signature};
use crate::model::{ModelName, Version};
use crate::UnixTime;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

pub const DESIRED_STATE_LIMIT: usize = 1024 * 1024;

/// The role a model version plays on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Champion,
    Challenger,
    Shadow,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub model: ModelName,
    pub version: Version,
    /// Digest of the signed manifest bytes (the bundle identity).
    pub manifest_digest: Digest,
    pub variant: Variant,
    /// Percentage of traffic for a challenger (0..=100).
    pub traffic_percent: u8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub tenant: String,
    pub device_id: String,
    /// Strictly increasing per device.
    pub sequence: u64,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
    pub assignments: Vec<Assignment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDesiredState {
    pub document: Vec<u8>,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DesiredStateError {
    #[error("desired state does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("desired state signature does not verify")]
    BadSignature,
    #[error("desired state is for device {got:?}, this is {expected:?}")]
    WrongDevice { expected: String, got: String },
    #[error("desired state #{sequence} replayed: #{last} already applied")]
    Replayed { sequence: u64, last: u64 },
    #[error("desired state #{sequence} expired at {expires_at} (now {now})")]
    Expired {
        sequence: u64,
        expires_at: UnixTime,
        now: UnixTime,
    },
}

impl DesiredStateError {
    /// A short stable code for reports and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            DesiredStateError::Decode(_) => "malformed_desired_state",
            DesiredStateError::BadSignature => "bad_desired_state_signature",
            DesiredStateError::WrongDevice { .. } => "wrong_device",
            DesiredStateError::Replayed { .. } => "replayed_desired_state",
            DesiredStateError::Expired { .. } => "expired_desired_state",
        }
    }
}

impl SignedDesiredState {
    /// The sequence number, without verifying anything (for reports about a
    /// refused document).
    pub fn peek_sequence(&self) -> Option<u64> {
        encoding::decode::<DesiredState>(&self.document, DESIRED_STATE_LIMIT, "desired state")
            .ok()
            .map(|d| d.sequence)
    }

    pub fn sign(doc: &DesiredState, key: &SigningKey) -> Self {
        let document = encoding::encode(doc);
        let signature = keys::sign(Domain::DesiredState, &document, key);
        Self {
            document,
            signature,
        }
    }

    /// Verifies signature, addressee, freshness and order. `last_sequence`
    /// is the highest sequence this device applied (persisted across
    /// restarts); an equal sequence is a replay too.
    pub fn verify(
        &self,
        online_key: &PublicKey,
        device_id: &str,
        now: UnixTime,
        last_sequence: Option<u64>,
    ) -> Result<DesiredState, DesiredStateError> {
        if self.signature.key_id != online_key.id()
            || !online_key.verify(Domain::DesiredState, &self.document, &self.signature)
        {
            return Err(DesiredStateError::BadSignature);
        }
        let doc: DesiredState =
            encoding::decode(&self.document, DESIRED_STATE_LIMIT, "desired state")?;
        if doc.device_id != device_id {
            return Err(DesiredStateError::WrongDevice {
                expected: device_id.into(),
                got: doc.device_id,
            });
        }
        if let Some(last) = last_sequence {
            if doc.sequence <= last {
                return Err(DesiredStateError::Replayed {
                    sequence: doc.sequence,
                    last,
                });
            }
        }
        if now >= doc.expires_at {
            return Err(DesiredStateError::Expired {
                sequence: doc.sequence,
                expires_at: doc.expires_at,
                now,
            });
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn doc(sequence: u64, expires_at: UnixTime) -> DesiredState {
        DesiredState {
            tenant: "acme".into(),
            device_id: "dev_1".into(),
            sequence,
            issued_at: 100,
            expires_at,
            assignments: vec![],
        }
    }

    #[test]
    fn fresh_signed_state_verifies() {
        let k = key(1);
        let s = SignedDesiredState::sign(&doc(5, 200), &k);
        let pk = PublicKey::from_signing_key(&k);
        assert_eq!(s.verify(&pk, "dev_1", 150, Some(4)).unwrap().sequence, 5);
        assert_eq!(s.peek_sequence(), Some(5));
    }

    #[test]
    fn replayed_equal_or_older_sequence_is_refused() {
        let k = key(1);
        let pk = PublicKey::from_signing_key(&k);
        let s = SignedDesiredState::sign(&doc(5, 200), &k);
        for last in [5, 6] {
            let e = s.verify(&pk, "dev_1", 150, Some(last)).unwrap_err();
            assert_eq!(e.code(), "replayed_desired_state");
        }
    }

    #[test]
    fn expired_state_is_refused_at_and_after_expiry() {
        let k = key(1);
        let pk = PublicKey::from_signing_key(&k);
        let s = SignedDesiredState::sign(&doc(5, 200), &k);
        for now in [200, 10_000] {
            let e = s.verify(&pk, "dev_1", now, None).unwrap_err();
            assert_eq!(e.code(), "expired_desired_state");
        }
    }

    #[test]
    fn unknown_key_tampering_and_other_device_are_refused() {
        let k = key(1);
        let pk = PublicKey::from_signing_key(&k);
        let other = SignedDesiredState::sign(&doc(5, 200), &key(2));
        assert_eq!(
            other.verify(&pk, "dev_1", 150, None),
            Err(DesiredStateError::BadSignature)
        );
        let mut tampered = SignedDesiredState::sign(&doc(5, 200), &k);
        let last = tampered.document.len() - 1;
        tampered.document[last] ^= 1;
        assert_eq!(
            tampered.verify(&pk, "dev_1", 150, None),
            Err(DesiredStateError::BadSignature)
        );
        let s = SignedDesiredState::sign(&doc(5, 200), &k);
        assert_eq!(
            s.verify(&pk, "dev_2", 150, None).unwrap_err().code(),
            "wrong_device"
        );
    }
}
