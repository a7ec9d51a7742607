//! Trust roots on the fleet: the chain of a tenant's signed roots that
//! devices follow from the version they hold, what each connected device
//! holds, and alerts before a tenant's root expires.
//!
//! Devices accept a root only as a valid successor chain of the one they
//! hold (`ferry_protocol::trust::follow_chain`), so nothing here is
//! trusted by them: a root this server made up is refused on the device.

use super::{db, Fleet};
use crate::audit::{AuditEntry, OUTCOME_OK, OUTCOME_REFUSED};
use crate::store::telemetry::NewAlert;
use crate::store::{Store, StoreError};
use ferry_protocol::frames::{AgentFrame, ServerFrame};
use ferry_protocol::trust::SignedTrustRoot;
use std::time::{Duration, Instant};

/// How long a tenant's current root version is read from the cache: bounds
/// how late a `ferry trust push` (through any replica) reaches devices.
pub(crate) const TRUST_VERSION_MAX_AGE: Duration = Duration::from_secs(5);

/// Alert this long before a tenant's trust root expires.
pub const EXPIRY_WARNING_SECS: u64 = 30 * 86_400;
/// The alert is raised again at most this often per root version.
const EXPIRY_ALERT_COOLDOWN_MS: i64 = 7 * 86_400 * 1000;
/// How often the expiry check runs.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Decodes stored rows (version, hex), skipping any that do not decode
/// (a device would refuse them anyway).
fn decode_rows(tenant: &str, rows: Vec<(i64, String)>) -> Vec<SignedTrustRoot> {
    rows.into_iter()
        .filter_map(|(v, hexed)| {
            let s = hex::decode(hexed)
                .ok()
                .and_then(|b| SignedTrustRoot::from_bytes(&b).ok());
            if s.is_none() {
                tracing::error!(tenant, version = v, "stored trust root does not decode");
            }
            s
        })
        .collect()
}

/// The trust root a device holds, as its control stream reported it, and
/// the newest version already offered to it on this stream.
#[derive(Default)]
pub(crate) struct TrustView {
    held: Option<u64>,
    offered: Option<u64>,
}

impl Fleet {
    /// The frame that brings `device` to the tenant's current root: the
    /// roots after the one it holds, once per current version. Only devices
    /// that said which root they hold (`AgentFrame::TrustRoot`) get one, so
    /// older agents never see the frame.
    pub(crate) async fn trust_offer(
        &self,
        device: &db::Device,
        view: &mut TrustView,
    ) -> Result<Option<ServerFrame>, StoreError> {
        let Some(held) = view.held else {
            return Ok(None);
        };
        let Some(current) = self.current_trust_version(&device.tenant).await else {
            return Ok(None);
        };
        if current <= held || view.offered == Some(current) {
            return Ok(None);
        }
        let chain = self.trust_chain(&device.tenant, held).await?;
        view.offered = Some(current);
        if chain.is_empty() {
            return Ok(None);
        }
        tracing::info!(device = %device.id, held, current, "offering the trust-root chain");
        Ok(Some(ServerFrame::TrustRoots { chain }))
    }

    /// A trust-root frame from the device: the root it holds now (kept for
    /// the device status; audited when it changed), or a chain it refused
    /// (audited with the reason).
    pub(crate) async fn trust_report(
        &self,
        device: &db::Device,
        view: &mut TrustView,
        frame: AgentFrame,
    ) {
        let actor = format!("device {}", device.id);
        match frame {
            AgentFrame::TrustRoot {
                version,
                expires_at,
            } => {
                let before = self.set_held_root(&device.id, version, expires_at);
                if let Some((old, _)) = before.filter(|(old, _)| *old != version) {
                    self.audit(
                        &device.tenant,
                        &actor,
                        "device.trust_root",
                        &format!("trust root v{version}"),
                        OUTCOME_OK,
                        format!("now holds v{version} (was v{old}), expires at {expires_at}"),
                    )
                    .await;
                }
                if view.held != Some(version) {
                    view.offered = None;
                }
                view.held = Some(version);
            }
            AgentFrame::TrustRootRefused { code, reason } => {
                self.audit(
                    &device.tenant,
                    &actor,
                    "device.trust_root",
                    &view.held.map(|v| format!("held v{v}")).unwrap_or_default(),
                    OUTCOME_REFUSED,
                    format!("{code}: {reason}"),
                )
                .await;
            }
            _ => {}
        }
    }

    /// The tenant's signed roots after version `after`, oldest first.
    pub(crate) async fn trust_chain(
        &self,
        tenant: &str,
        after: u64,
    ) -> Result<Vec<SignedTrustRoot>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self.store.trust_roots_after(tenant, after).await?;
        Ok(decode_rows(tenant, rows))
    }

    /// The version of the tenant's current root (cached for
    /// [`TRUST_VERSION_MAX_AGE`]).
    pub(crate) async fn current_trust_version(&self, tenant: &str) -> Option<u64> {
        let mut cache = self.trust_versions.lock().await;
        if let Some((at, v)) = cache.get(tenant) {
            if at.elapsed() < TRUST_VERSION_MAX_AGE {
                return *v;
            }
        }
        let v = match self.store.trust_root(tenant).await {
            Ok(r) => r.and_then(|(v, _)| u64::try_from(v).ok()),
            Err(e) => {
                tracing::error!(tenant, error = %e, "reading the current trust root failed");
                return None;
            }
        };
        cache.insert(tenant.to_string(), (Instant::now(), v));
        v
    }

    /// Records the root `device` reports holding: (version, expires_at).
    /// Returns what it reported before, if anything.
    pub(crate) fn set_held_root(
        &self,
        device: &str,
        version: u64,
        expires_at: u64,
    ) -> Option<(u64, u64)> {
        self.held_roots
            .lock()
            .ok()?
            .insert(device.to_string(), (version, expires_at))
    }

    /// The trust root a device reported holding (version, expires_at), as
    /// last heard by this replica.
    pub fn held_root(&self, device: &str) -> Option<(u64, u64)> {
        self.held_roots.lock().ok()?.get(device).copied()
    }

    /// Raises the expiry alerts now, then every hour, for ever.
    pub(crate) fn spawn_expiry_alerts(&self) {
        let store = self.store.clone();
        tokio::spawn(async move {
            loop {
                let now = store.clock().now_secs();
                if let Err(e) = raise_expiry_alerts(&store, now).await {
                    tracing::error!(error = %e, "trust root expiry check failed");
                }
                tokio::time::sleep(EXPIRY_CHECK_EVERY).await;
            }
        });
    }
}

/// Raises a `trust_root_expiring` alert (with its audit record) for every
/// tenant whose current trust root expires within
/// [`EXPIRY_WARNING_SECS`] of `now` or has expired: devices refuse every new
/// bundle after expiry. Once per root version and week. Returns how many
/// were raised.
pub async fn raise_expiry_alerts(store: &Store, now: u64) -> Result<usize, StoreError> {
    let mut raised = 0;
    for (tenant, version, hexed) in store.current_trust_roots().await? {
        let Some(signed) = decode_rows(&tenant, vec![(version, hexed)]).pop() else {
            continue;
        };
        let Ok(root) = signed.open_any_time() else {
            continue;
        };
        if root.expires_at > now.saturating_add(EXPIRY_WARNING_SECS) {
            continue;
        }
        let left = root.expires_at as i64 - now as i64;
        let id = crate::auth::random_id("alr_", 8);
        let detail = if left > 0 {
            format!(
                "trust root v{} expires in {} day(s) at {}: push a successor (ferry trust push) before devices refuse new bundles",
                root.version,
                left / 86_400,
                root.expires_at
            )
        } else {
            format!(
                "trust root v{} expired at {}: devices refuse every new bundle until a successor is pushed",
                root.version, root.expires_at
            )
        };
        let alert = NewAlert {
            id: id.clone(),
            tenant: tenant.clone(),
            model: String::new(),
            version,
            kind: "trust_root_expiring".into(),
            device: String::new(),
            evidence: serde_json::json!({
                "trust_root_version": root.version,
                "expires_at": root.expires_at,
                "expires_in": left,
            })
            .to_string(),
            gate_key: format!("alert:trust_root_expiring:v{}", root.version),
        };
        let entry = AuditEntry {
            tenant: tenant.clone(),
            request_id: id.clone(),
            actor: "ferry fleet".into(),
            action: "alert.raise".into(),
            target: format!("trust root v{}", root.version),
            outcome: OUTCOME_OK.into(),
            detail: detail.clone(),
        };
        let now_ms = (now as i64).saturating_mul(1000);
        if store
            .raise_alert(&alert, now_ms, EXPIRY_ALERT_COOLDOWN_MS, entry)
            .await?
        {
            tracing::warn!(tenant, alert = %id, "{detail}");
            raised += 1;
        }
    }
    Ok(raised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::telemetry::AlertQuery;
    use ed25519_dalek::SigningKey;
    use ferry_protocol::trust::TrustRoot;
    use ferry_protocol::PublicKey;

    async fn store_with_root(expires_at: u64) -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", d.path().join("ferry.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        let k = SigningKey::from_bytes(&[1; 32]);
        let root = TrustRoot {
            tenant: "acme".into(),
            version: 1,
            expires_at,
            threshold: 1,
            root_keys: vec![PublicKey::from_signing_key(&k)],
            publishers: vec![],
            publisher_threshold: 1,
            revoked: vec![],
        };
        let signed = SignedTrustRoot::sign(&root, &[&k]);
        let entry = AuditEntry {
            tenant: "acme".into(),
            request_id: String::new(),
            actor: "test".into(),
            action: "trust.push".into(),
            target: "trust root v1".into(),
            outcome: OUTCOME_OK.into(),
            detail: String::new(),
        };
        store
            .put_trust_root(
                "acme",
                1,
                &hex::encode(signed.to_bytes()),
                None,
                "test",
                entry,
            )
            .await
            .unwrap();
        (d, store)
    }

    async fn expiry_alerts(store: &Store) -> usize {
        let q = AlertQuery {
            kind: Some("trust_root_expiring".into()),
            limit: 100,
            ..AlertQuery::default()
        };
        store.alerts("acme", &q).await.unwrap().len()
    }

    #[tokio::test]
    async fn an_alert_is_raised_30_days_before_a_root_expires_once() {
        let now = 1_800_000_000;
        let (_d, store) = store_with_root(now + 10 * 86_400).await;
        assert_eq!(raise_expiry_alerts(&store, now).await.unwrap(), 1);
        // Not again on the next hourly check.
        assert_eq!(raise_expiry_alerts(&store, now + 3600).await.unwrap(), 0);
        assert_eq!(expiry_alerts(&store).await, 1);
        // With its audit record, which says what to do.
        let q = crate::store::AuditQuery {
            action: Some("alert.raise".into()),
            limit: 10,
            ..Default::default()
        };
        let records = store.audit_list("acme", &q).await.unwrap();
        assert_eq!(records.len(), 1);
        assert!(
            records[0].detail.contains("expires in 10 day(s)"),
            "{:?}",
            records[0]
        );
    }

    #[tokio::test]
    async fn no_alert_for_a_root_far_from_expiry() {
        let now = 1_800_000_000;
        let (_d, store) = store_with_root(now + 60 * 86_400).await;
        assert_eq!(raise_expiry_alerts(&store, now).await.unwrap(), 0);
        assert_eq!(expiry_alerts(&store).await, 0);
    }
}
