//! The desired-state gate: signature, device, expiry and the replay floor.
//! Pure; the floor is persisted in `fleet/sequence` by the session when the
//! reconciler asks ([`super::reconcile::Action::SaveSequence`]).

use super::{fleet_dir, io, write_atomic, FleetError, Identity};
use ferry_protocol::desired::{DesiredState, DesiredStateError, SignedDesiredState};
use std::path::{Path, PathBuf};

/// Verifies desired-state documents for one device and keeps the highest
/// sequence accepted.
#[derive(Clone, Debug)]
pub struct DesiredGate {
    online_key: ferry_protocol::PublicKey,
    device_id: String,
    last: Option<u64>,
}

fn sequence_path(data: &Path) -> PathBuf {
    fleet_dir(data).join("sequence")
}

impl DesiredGate {
    pub fn new(online_key: ferry_protocol::PublicKey, device_id: &str, last: Option<u64>) -> Self {
        Self {
            online_key,
            device_id: device_id.to_string(),
            last,
        }
    }

    /// The gate of the enrolled device in `data`, with its persisted floor.
    pub fn open(data: &Path, id: &Identity) -> Result<Self, FleetError> {
        let path = sequence_path(data);
        let last = match std::fs::read_to_string(&path) {
            Ok(s) => Some(s.trim().parse().map_err(|_| FleetError::Bad {
                path: path.clone(),
                reason: "not a sequence number".into(),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &path)(e)),
        };
        Ok(Self::new(id.online_key, &id.device_id, last))
    }

    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// Verifies `signed` at `now` and moves the floor to its sequence.
    pub fn accept(
        &mut self,
        signed: &SignedDesiredState,
        now: u64,
    ) -> Result<DesiredState, DesiredStateError> {
        let doc = signed.verify(&self.online_key, &self.device_id, now, self.last)?;
        self.last = Some(doc.sequence);
        Ok(doc)
    }
}

/// Persists the replay floor, so a restarted agent refuses older documents.
pub fn save_floor(data: &Path, sequence: u64) -> Result<(), FleetError> {
    write_atomic(&sequence_path(data), sequence.to_string().as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn doc(seq: u64, expires_at: u64) -> DesiredState {
        DesiredState {
            tenant: "t".into(),
            device_id: "dev_a".into(),
            sequence: seq,
            issued_at: 0,
            expires_at,
            assignments: vec![],
        }
    }

    #[test]
    fn gate_refuses_replays_across_restarts_and_expired_states() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(fleet_dir(d.path())).unwrap();
        let k = SigningKey::from_bytes(&[7; 32]);
        let id = Identity {
            device_id: "dev_a".into(),
            tenant: "t".into(),
            server: "127.0.0.1:1".into(),
            server_name: None,
            online_key: ferry_protocol::PublicKey::from_signing_key(&k),
            mqtt_url: None,
        };
        let old = SignedDesiredState::sign(&doc(10, 1000), &k);
        let new = SignedDesiredState::sign(&doc(11, 1000), &k);
        let mut g = DesiredGate::open(d.path(), &id).unwrap();
        g.accept(&old, 500).unwrap();
        let seq = g.accept(&new, 500).unwrap().sequence;
        save_floor(d.path(), seq).unwrap();
        // A restarted agent still refuses the older document.
        let mut g = DesiredGate::open(d.path(), &id).unwrap();
        assert_eq!(g.last(), Some(11));
        assert_eq!(
            g.accept(&old, 500).unwrap_err().code(),
            "replayed_desired_state"
        );
        assert_eq!(
            g.accept(&new, 500).unwrap_err().code(),
            "replayed_desired_state"
        );
        // A fresh sequence that has expired (controlled clock) is refused too.
        let frozen = SignedDesiredState::sign(&doc(12, 1000), &k);
        assert_eq!(
            g.accept(&frozen, 1000).unwrap_err().code(),
            "expired_desired_state"
        );
        assert_eq!(g.last(), Some(11));
        // Signed by another key: refused.
        let forged = SignedDesiredState::sign(&doc(13, 1000), &SigningKey::from_bytes(&[8; 32]));
        assert_eq!(
            g.accept(&forged, 500).unwrap_err().code(),
            "bad_desired_state_signature"
        );
    }
}
