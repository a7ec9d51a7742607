//! What may enter the telemetry store. The control plane never trusts the
//! broker: a message counts only when it carries the signature of the
//! enrolled, unrevoked device of the tenant its topic names (device keys
//! are cached briefly and the cache is bounded), and each device may store
//! at most so many drift windows and events per minute of their own time.
//! Refusals are audited at most once per minute per source (tenant and
//! device named on the topic), with the number held back since, so a
//! flood cannot grow an audit chain.

use crate::store::telemetry::DeviceKey;
use crate::store::{Store, StoreError};
use ferry_protocol::telemetry::{verify_payload, TelemetrySigError};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a device's key (or its absence) is believed, ms: a revocation
/// made through another replica applies within it (this replica's own
/// revocations too, as the fleet and telemetry share no cache).
pub const KEY_TTL_MS: u64 = 5_000;
/// Entries any one map holds before it is pruned; attacker-chosen topic
/// names cannot grow memory past this.
pub const MAX_ENTRIES: usize = 10_000;
/// Default cap on drift windows (and, separately, events) stored per device
/// per minute (`ferry server --telemetry-max-per-minute`).
pub const DEFAULT_MAX_PER_MINUTE: u32 = 600;
/// Most sources whose refusals are audited in one minute; past it they are
/// only counted and logged.
pub const MAX_AUDITED_SOURCES_PER_MINUTE: usize = 100;

/// Why a message was refused before it was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("device {device:?} is not enrolled in tenant {tenant:?}")]
    UnknownDevice { tenant: String, device: String },
    #[error("device {0:?} is revoked")]
    Revoked(String),
    #[error(
        "device {0:?} has no recorded key (enrolled before telemetry was signed); enroll it again"
    )]
    NoKey(String),
    #[error("{0}")]
    Signature(#[from] TelemetrySigError),
    #[error("device {device:?} sent more than {limit} {kind} messages for one minute")]
    RateLimited {
        device: String,
        kind: &'static str,
        limit: u32,
    },
}

impl Refusal {
    /// A short label for logs and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownDevice { .. } => "unknown_device",
            Refusal::Revoked(_) => "revoked",
            Refusal::NoKey(_) => "no_key",
            Refusal::Signature(TelemetrySigError::Unsigned) => "unsigned",
            Refusal::Signature(_) => "bad_signature",
            Refusal::RateLimited { .. } => "rate_limited",
        }
    }
}

/// (tenant, device).
type Source = (String, String);
/// (tenant, device, kind) → (minute, messages stored in it), a few recent
/// minutes each.
type Counts = HashMap<(String, String, &'static str), Vec<(u64, u32)>>;

pub struct Admission {
    keys: Mutex<HashMap<Source, (Option<DeviceKey>, u64)>>,
    counts: Mutex<Counts>,
    /// Source → (minute of its last audited refusal, refusals since).
    audited: Mutex<HashMap<Source, (u64, u64)>>,
    pub max_per_minute: u32,
}

/// Minutes remembered per source and kind.
const MINUTES_KEPT: usize = 16;

impl Admission {
    pub fn new(max_per_minute: u32) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
            audited: Mutex::new(HashMap::new()),
            max_per_minute: max_per_minute.max(1),
        }
    }

    async fn device_key(
        &self,
        store: &Store,
        tenant: &str,
        device: &str,
        now_ms: u64,
    ) -> Result<Option<DeviceKey>, StoreError> {
        let source = (tenant.to_string(), device.to_string());
        if let Ok(m) = self.keys.lock() {
            if let Some((k, at)) = m.get(&source) {
                if now_ms.saturating_sub(*at) < KEY_TTL_MS {
                    return Ok(k.clone());
                }
            }
        }
        let k = store.device_key(tenant, device).await?;
        if let Ok(mut m) = self.keys.lock() {
            if m.len() >= MAX_ENTRIES {
                m.retain(|_, (_, at)| now_ms.saturating_sub(*at) < KEY_TTL_MS);
                if m.len() >= MAX_ENTRIES {
                    m.clear();
                }
            }
            m.insert(source, (k.clone(), now_ms));
        }
        Ok(k)
    }

    /// Checks that `payload` (a message of `kind` on the topic of `tenant`
    /// and `device`) is signed by that enrolled, unrevoked device.
    pub async fn verify(
        &self,
        store: &Store,
        tenant: &str,
        device: &str,
        kind: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let Some(k) = self.device_key(store, tenant, device, now_ms).await? else {
            return Ok(Err(Refusal::UnknownDevice {
                tenant: tenant.into(),
                device: device.into(),
            }));
        };
        if k.revoked {
            return Ok(Err(Refusal::Revoked(device.into())));
        }
        let Some(pk) = k.public_key else {
            return Ok(Err(Refusal::NoKey(device.into())));
        };
        Ok(verify_payload(kind, payload, &pk).map_err(Refusal::from))
    }

    /// Counts one message of `kind` for the minute of `at_ms` (the
    /// message's own time); refused past the cap.
    pub fn count(
        &self,
        tenant: &str,
        device: &str,
        kind: &'static str,
        at_ms: u64,
    ) -> Result<(), Refusal> {
        let minute = at_ms / 60_000;
        let limit = self.max_per_minute;
        let Ok(mut m) = self.counts.lock() else {
            return Ok(());
        };
        if m.len() >= MAX_ENTRIES {
            m.clear();
        }
        let minutes = m
            .entry((tenant.to_string(), device.to_string(), kind))
            .or_default();
        let slot = match minutes.iter().position(|(min, _)| *min == minute) {
            Some(i) => i,
            None => {
                if minutes.len() >= MINUTES_KEPT {
                    // Forget the oldest minute.
                    if let Some(i) = minutes
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (min, _))| *min)
                        .map(|(i, _)| i)
                    {
                        minutes.swap_remove(i);
                    }
                }
                minutes.push((minute, 0));
                minutes.len() - 1
            }
        };
        let Some(entry) = minutes.get_mut(slot) else {
            return Ok(());
        };
        if entry.1 >= limit {
            return Err(Refusal::RateLimited {
                device: device.into(),
                kind,
                limit,
            });
        }
        entry.1 += 1;
        Ok(())
    }

    /// Whether a refusal from `tenant`/`device` is audited now: the first
    /// of its minute is, with the number held back since the last audited
    /// one; the others are only counted.
    pub fn audit_due(&self, tenant: &str, device: &str, now_ms: u64) -> Option<u64> {
        let minute = now_ms / 60_000;
        let mut m = self.audited.lock().ok()?;
        let source = (tenant.to_string(), device.to_string());
        if let Some((last, held)) = m.get_mut(&source) {
            if *last == minute {
                *held += 1;
                return None;
            }
            let since = *held;
            *last = minute;
            *held = 0;
            return Some(since);
        }
        let this_minute = m.values().filter(|(last, _)| *last == minute).count();
        if this_minute >= MAX_AUDITED_SOURCES_PER_MINUTE {
            return None;
        }
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, (last, _)| *last == minute);
        }
        m.insert(source, (minute, 0));
        Some(0)
    }

    /// Entries held (tests check that floods stay bounded).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.keys.lock().map(|m| m.len()).unwrap_or(0),
            self.counts.lock().map(|m| m.len()).unwrap_or(0),
            self.audited.lock().map(|m| m.len()).unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_capped_per_device_and_minute() {
        let a = Admission::new(2);
        assert!(a.count("t", "d", "drift", 60_000).is_ok());
        assert!(a.count("t", "d", "drift", 61_000).is_ok());
        assert!(matches!(
            a.count("t", "d", "drift", 119_999),
            Err(Refusal::RateLimited { limit: 2, .. })
        ));
        // Another minute, device, kind: counted apart.
        assert!(a.count("t", "d", "drift", 120_000).is_ok());
        assert!(a.count("t", "e", "drift", 60_000).is_ok());
        assert!(a.count("t", "d", "events", 60_000).is_ok());
        // A backlog after an outage spans its own minutes.
        for i in 0..100u64 {
            assert!(a.count("t", "b", "drift", i * 60_000).is_ok());
        }
    }

    #[test]
    fn refusals_are_audited_once_per_minute_per_source() {
        let a = Admission::new(1);
        assert_eq!(a.audit_due("t", "d", 0), Some(0));
        assert_eq!(a.audit_due("t", "d", 1), None);
        assert_eq!(a.audit_due("t", "d", 59_999), None);
        assert_eq!(a.audit_due("t", "d", 60_000), Some(2));
        assert_eq!(a.audit_due("t", "x", 60_000), Some(0));
        // Many sources in one minute: bounded.
        let audited = (0..1000)
            .filter(|i| a.audit_due("t", &format!("s{i}"), 120_000).is_some())
            .count();
        assert_eq!(audited, MAX_AUDITED_SOURCES_PER_MINUTE);
        for i in 0..(3 * MAX_ENTRIES) {
            let _ = a.count("t", &format!("f{i}"), "drift", 0);
        }
        let (_, counts, audited) = a.sizes();
        assert!(counts <= MAX_ENTRIES && audited <= MAX_ENTRIES);
    }
}
