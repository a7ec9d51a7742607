//! Rollout tables (migration 0006): named, versioned policies; rollouts
//! with the engine's state, a revision (compare-and-set) and the lease of
//! the replica driving each; and the per-device assignments rollouts make.

use super::fleet::{labels_from_string, labels_to_string, Deployment, Labels};
use super::{Result, Store, StoreError};
use crate::audit::AuditEntry;
use crate::changes::ChangeKind;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

/// One version of a named rollout policy.
#[derive(Clone, Debug)]
pub struct PolicyRow {
    pub name: String,
    pub version: i64,
    pub document: String,
    /// `toml` or `json`.
    pub format: String,
    pub created_at: i64,
    pub created_by: String,
}

/// A rollout as stored.
#[derive(Clone, Debug)]
pub struct RolloutRow {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub selector: Labels,
    /// '' for the default policy or a one-off document.
    pub policy_name: String,
    pub policy_version: i64,
    pub policy_document: String,
    pub policy_format: String,
    /// `rollout::engine::RolloutState` as JSON.
    pub state: String,
    pub phase: String,
    pub revision: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub lease_holder: String,
    pub lease_expires_ms: i64,
}

impl FromRow<'_, AnyRow> for RolloutRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(RolloutRow {
            id: r.try_get("id")?,
            tenant: r.try_get("tenant")?,
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            digest: r.try_get("digest")?,
            selector: labels_from_string(&r.try_get::<String, _>("selector")?),
            policy_name: r.try_get("policy_name")?,
            policy_version: r.try_get("policy_version")?,
            policy_document: r.try_get("policy_document")?,
            policy_format: r.try_get("policy_format")?,
            state: r.try_get("state")?,
            phase: r.try_get("phase")?,
            revision: r.try_get("revision")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            lease_holder: r.try_get("lease_holder")?,
            lease_expires_ms: r.try_get("lease_expires_ms")?,
        })
    }
}

const ROLLOUT_COLS: &str = "id, tenant, model, version, digest, selector, policy_name, policy_version, policy_document, policy_format, state, phase, revision, created_by, created_at, updated_at, lease_holder, lease_expires_ms";

/// Phases after which a rollout is never driven again.
pub const TERMINAL_PHASES: [&str; 2] = ["finished", "aborted"];

/// What a rollout assigns one device: a version (with its manifest
/// digest), or `None`: the model's assignment is withdrawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutTarget {
    pub rollout_id: String,
    pub device_id: String,
    pub model: String,
    pub version: Option<(i64, String)>,
    /// Microseconds on the deployments' clock: the newer of a target and a
    /// matching deployment wins.
    pub updated_us: i64,
}

/// One saved step of a rollout: its new state, the assignments it made,
/// the deployment that replaces it when it finished.
#[derive(Clone, Debug, Default)]
pub struct RolloutSave {
    pub state: String,
    pub phase: String,
    /// (device, version and digest or `None` to withdraw).
    pub targets: Vec<(String, Option<(i64, String)>)>,
    /// Devices whose target is removed: their deployments decide again.
    pub cleared: Vec<String>,
    /// Remove every target of the rollout (it finished: its deployment
    /// replaces them).
    pub clear_all: bool,
    pub deployment: Option<Deployment>,
}

impl Store {
    /// Stores `document` as the next version of the tenant's policy `name`
    /// (audited as `entry`); returns that version.
    pub async fn put_rollout_policy(
        &self,
        tenant: &str,
        name: &str,
        document: &str,
        format: &str,
        created_by: &str,
        entry: AuditEntry,
    ) -> Result<i64> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<i64> = async {
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM rollout_policies WHERE tenant = $1 AND name = $2",
            )
            .bind(tenant)
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
            let version = last.unwrap_or(0) + 1;
            sqlx::query(
                "INSERT INTO rollout_policies (tenant, name, version, document, format, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(tenant)
            .bind(name)
            .bind(version)
            .bind(document)
            .bind(format)
            .bind(self.now())
            .bind(created_by)
            .execute(&mut **tx)
            .await?;
            Ok(version)
        }
        .await;
        m.finish(out).await
    }

    /// The newest version of each of the tenant's policies, by name.
    pub async fn rollout_policies(&self, tenant: &str) -> Result<Vec<PolicyRow>> {
        let rows: Vec<(String, i64, String, String, i64, String)> = sqlx::query_as(
            "SELECT p.name, p.version, p.document, p.format, p.created_at, p.created_by FROM rollout_policies p \
             WHERE p.tenant = $1 AND p.version = (SELECT MAX(q.version) FROM rollout_policies q WHERE q.tenant = p.tenant AND q.name = p.name) \
             ORDER BY p.name",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(policy_row).collect())
    }

    /// Version `version` (the newest when `None`) of the tenant's policy `name`.
    pub async fn rollout_policy(
        &self,
        tenant: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<PolicyRow> {
        let row: Option<(String, i64, String, String, i64, String)> = sqlx::query_as(
            "SELECT name, version, document, format, created_at, created_by FROM rollout_policies \
             WHERE tenant = $1 AND name = $2 AND ($3 < 0 OR version = $3) ORDER BY version DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(name)
        .bind(version.unwrap_or(-1))
        .fetch_optional(self.pool())
        .await?;
        row.map(policy_row)
            .ok_or_else(|| StoreError::NotFound(format!("rollout policy {name:?}")))
    }

    /// Stores a new rollout (audited as `entry`); its version must exist
    /// and not be archived.
    pub async fn create_rollout(&self, r: &RolloutRow, entry: AuditEntry) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<()> = async {
            super::versions::require_deployable(tx, &r.tenant, &r.model, r.version, &r.digest)
                .await?;
            sqlx::query(&format!(
                "INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
            ))
            .bind(r.id.as_str())
            .bind(r.tenant.as_str())
            .bind(r.model.as_str())
            .bind(r.version)
            .bind(r.digest.as_str())
            .bind(labels_to_string(&r.selector))
            .bind(r.policy_name.as_str())
            .bind(r.policy_version)
            .bind(r.policy_document.as_str())
            .bind(r.policy_format.as_str())
            .bind(r.state.as_str())
            .bind(r.phase.as_str())
            .bind(r.revision)
            .bind(r.created_by.as_str())
            .bind(r.created_at)
            .bind(r.updated_at)
            .bind(r.lease_holder.as_str())
            .bind(r.lease_expires_ms)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
        .await;
        m.finish(out).await?;
        self.changes
            .send(&r.tenant, ChangeKind::Rollout(r.id.clone()));
        Ok(())
    }

    pub async fn rollout(&self, tenant: &str, id: &str) -> Result<RolloutRow> {
        let row: Option<RolloutRow> = sqlx::query_as(&format!(
            "SELECT {ROLLOUT_COLS} FROM rollouts WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("rollout {id:?}")))
    }

    /// The tenant's rollouts, newest first.
    pub async fn rollouts(&self, tenant: &str) -> Result<Vec<RolloutRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ROLLOUT_COLS} FROM rollouts WHERE tenant = $1 ORDER BY created_at DESC, id"
        ))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every tenant's rollouts that are not finished or aborted.
    pub async fn live_rollouts(&self) -> Result<Vec<RolloutRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ROLLOUT_COLS} FROM rollouts WHERE phase <> $1 AND phase <> $2 ORDER BY created_at, id"
        ))
        .bind(TERMINAL_PHASES[0])
        .bind(TERMINAL_PHASES[1])
        .fetch_all(self.pool())
        .await?)
    }

    /// Takes or renews the lease on rollout `id` for `holder` until
    /// `now_ms + ttl_ms`: true when `holder` holds it now (it held it, or
    /// the previous lease expired).
    pub async fn take_rollout_lease(
        &self,
        id: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE rollouts SET lease_holder = $1, lease_expires_ms = $2 WHERE id = $3 AND (lease_holder = $1 OR lease_expires_ms < $4)",
        )
        .bind(holder)
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(id)
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Gives the lease up (a replica shutting down), so another takes over
    /// at once.
    pub async fn release_rollout_lease(&self, id: &str, holder: &str) -> Result<()> {
        sqlx::query(
            "UPDATE rollouts SET lease_holder = '', lease_expires_ms = 0 WHERE id = $1 AND lease_holder = $2",
        )
        .bind(id)
        .bind(holder)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Saves a step of rollout `id` made from revision `revision`, with its
    /// assignments and audit records, in one transaction under the
    /// tenant's write lock. False (nothing written) when the rollout moved
    /// on meanwhile (another replica, an operator command): the caller
    /// starts again from the stored state.
    pub async fn save_rollout(
        &self,
        tenant: &str,
        id: &str,
        revision: i64,
        save: &RolloutSave,
        audits: Vec<AuditEntry>,
    ) -> Result<bool> {
        let mut tx = self.begin_locked(tenant).await?;
        let n = sqlx::query(
            "UPDATE rollouts SET state = $1, phase = $2, revision = revision + 1, updated_at = $3 WHERE tenant = $4 AND id = $5 AND revision = $6",
        )
        .bind(save.state.as_str())
        .bind(save.phase.as_str())
        .bind(self.now())
        .bind(tenant)
        .bind(id)
        .bind(revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if !save.targets.is_empty() {
            let model: String = sqlx::query_scalar("SELECT model FROM rollouts WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            for (device, to) in &save.targets {
                let (version, digest) = to.clone().unwrap_or((-1, String::new()));
                let us = super::fleet::creation_micros(self.clock.now_micros() as i64);
                sqlx::query(
                    "INSERT INTO rollout_targets (rollout_id, tenant, device_id, model, version, digest, updated_us) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (rollout_id, device_id) DO UPDATE SET version = excluded.version, digest = excluded.digest, updated_us = excluded.updated_us",
                )
                .bind(id)
                .bind(tenant)
                .bind(device.as_str())
                .bind(model.as_str())
                .bind(version)
                .bind(digest)
                .bind(us)
                .execute(&mut *tx)
                .await?;
            }
        }
        for device in &save.cleared {
            sqlx::query("DELETE FROM rollout_targets WHERE rollout_id = $1 AND device_id = $2")
                .bind(id)
                .bind(device.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if save.clear_all {
            sqlx::query("DELETE FROM rollout_targets WHERE rollout_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(d) = &save.deployment {
            super::fleet::insert_deployment(self, &mut tx, d).await?;
        }
        for e in audits {
            self.append(&mut tx, e).await?;
        }
        tx.commit().await?;
        self.changes
            .send(tenant, ChangeKind::Rollout(id.to_string()));
        Ok(true)
    }

    /// Every assignment the tenant's rollouts made.
    pub async fn rollout_targets(&self, tenant: &str) -> Result<Vec<RolloutTarget>> {
        let rows: Vec<(String, String, String, i64, String, i64)> = sqlx::query_as(
            "SELECT rollout_id, device_id, model, version, digest, updated_us FROM rollout_targets WHERE tenant = $1",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(rollout_id, device_id, model, version, digest, updated_us)| RolloutTarget {
                    rollout_id,
                    device_id,
                    model,
                    version: (version >= 0).then_some((version, digest)),
                    updated_us,
                },
            )
            .collect())
    }

    /// (rows, newest change) of every tenant's rollout assignments: a
    /// replica that sees it move tells its connected devices.
    pub async fn rollout_targets_mark(&self) -> Result<(i64, i64)> {
        let (n, max): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), MAX(updated_us) FROM rollout_targets")
                .fetch_one(self.pool())
                .await?;
        Ok((n, max.unwrap_or(0)))
    }

    /// (device, seq, received_at_ms, raw summary) of the drift windows of
    /// `model` that devices closed at or after `since_end_ms` and the
    /// control plane received at or after `received_from_ms`, at most
    /// `limit`, in the order received.
    pub async fn rollout_windows(
        &self,
        tenant: &str,
        model: &str,
        since_end_ms: i64,
        received_from_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64, i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT device, seq, received_at_ms, summary FROM telemetry_windows \
             WHERE tenant = $1 AND model = $2 AND window_end_ms >= $3 AND received_at_ms >= $4 \
             ORDER BY received_at_ms, device, seq LIMIT $5",
        )
        .bind(tenant)
        .bind(model)
        .bind(since_end_ms)
        .bind(received_from_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}

fn policy_row(r: (String, i64, String, String, i64, String)) -> PolicyRow {
    PolicyRow {
        name: r.0,
        version: r.1,
        document: r.2,
        format: r.3,
        created_at: r.4,
        created_by: r.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::OUTCOME_OK;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            tenant: "t".into(),
            request_id: String::new(),
            actor: "test".into(),
            action: action.into(),
            target: String::new(),
            outcome: OUTCOME_OK.into(),
            detail: String::new(),
        }
    }

    fn row(digest: &str) -> RolloutRow {
        RolloutRow {
            id: "ro_1".into(),
            tenant: "t".into(),
            model: "fraud".into(),
            version: 2,
            digest: digest.into(),
            selector: Labels::new(),
            policy_name: String::new(),
            policy_version: 0,
            policy_document: String::new(),
            policy_format: "toml".into(),
            state: "{}".into(),
            phase: "running".into(),
            revision: 0,
            created_by: "test".into(),
            created_at: 0,
            updated_at: 0,
            lease_holder: String::new(),
            lease_expires_ms: 0,
        }
    }

    /// One replica holds a rollout's lease until it expires; a save from a
    /// stale revision writes nothing; a save writes its targets and audit
    /// records and moves the assignments' mark.
    #[tokio::test]
    async fn leases_expire_and_saves_compare_and_set() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", d.path().join("ferry.db").display());
        let ms = Arc::new(AtomicU64::new(1_800_000_000_000));
        let m2 = ms.clone();
        let clock: crate::clock::SharedClock = Arc::new(move || m2.load(Ordering::SeqCst));
        let store = Store::connect_with(&url, 2, clock).await.unwrap();
        let digest = ferry_protocol::keys::sha256(b"fraud v2").to_hex();
        let nv = crate::store::NewVersion {
            tenant: "t".into(),
            model: "fraud".into(),
            project: "default".into(),
            version: 2,
            digest: digest.clone(),
            header: String::new(),
            manifest: String::new(),
            size: 0,
            artifacts: vec![],
            tags: vec![],
            metrics: vec![],
            created_by: "test".into(),
        };
        store
            .register(&nv, entry("version.register"), || async { Ok(()) })
            .await
            .unwrap();
        store
            .create_rollout(&row(&digest), entry("rollout.start"))
            .await
            .unwrap();
        let now = || ms.load(Ordering::SeqCst) as i64;
        assert!(store
            .take_rollout_lease("ro_1", "a", now(), 1000)
            .await
            .unwrap());
        assert!(!store
            .take_rollout_lease("ro_1", "b", now(), 1000)
            .await
            .unwrap());
        // A renews; B still waits.
        ms.fetch_add(900, Ordering::SeqCst);
        assert!(store
            .take_rollout_lease("ro_1", "a", now(), 1000)
            .await
            .unwrap());
        ms.fetch_add(900, Ordering::SeqCst);
        assert!(!store
            .take_rollout_lease("ro_1", "b", now(), 1000)
            .await
            .unwrap());
        // A stops renewing: B takes over once it expired.
        ms.fetch_add(200, Ordering::SeqCst);
        assert!(store
            .take_rollout_lease("ro_1", "b", now(), 1000)
            .await
            .unwrap());
        assert!(!store
            .take_rollout_lease("ro_1", "a", now(), 1000)
            .await
            .unwrap());

        let save = RolloutSave {
            state: "{\"x\":1}".into(),
            phase: "running".into(),
            targets: vec![
                ("dev_a".into(), Some((2, digest.clone()))),
                ("dev_b".into(), None),
            ],
            cleared: vec![],
            clear_all: false,
            deployment: None,
        };
        let (n0, _) = store.rollout_targets_mark().await.unwrap();
        assert!(store
            .save_rollout("t", "ro_1", 0, &save, vec![entry("rollout.assign")])
            .await
            .unwrap());
        // Revision 0 is gone: a second save from it writes nothing.
        assert!(!store
            .save_rollout("t", "ro_1", 0, &save, vec![entry("rollout.assign")])
            .await
            .unwrap());
        let r = store.rollout("t", "ro_1").await.unwrap();
        assert_eq!((r.revision, r.state.as_str()), (1, "{\"x\":1}"));
        let mut targets = store.rollout_targets("t").await.unwrap();
        targets.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        assert_eq!(targets[0].version, Some((2, digest.clone())));
        assert_eq!(targets[1].version, None);
        assert!(targets[0].updated_us > 0);
        let (n1, _) = store.rollout_targets_mark().await.unwrap();
        assert_eq!(n1, n0 + 2);
        assert_eq!(store.live_rollouts().await.unwrap().len(), 1);
        // A cleared device falls back to its deployments; clear_all empties
        // the rollout's targets.
        let clear = RolloutSave {
            state: "{}".into(),
            phase: "aborted".into(),
            cleared: vec!["dev_a".into()],
            ..RolloutSave::default()
        };
        assert!(store
            .save_rollout("t", "ro_1", 1, &clear, vec![])
            .await
            .unwrap());
        let left = store.rollout_targets("t").await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].device_id, "dev_b");
        let (n2, _) = store.rollout_targets_mark().await.unwrap();
        assert_eq!(n2, n1 - 1, "a removal moves the mark too");
        let all = RolloutSave {
            clear_all: true,
            ..clear
        };
        assert!(store
            .save_rollout("t", "ro_1", 2, &all, vec![])
            .await
            .unwrap());
        assert!(store.rollout_targets("t").await.unwrap().is_empty());
        assert!(store.live_rollouts().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn policies_are_versioned_by_name() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", d.path().join("ferry.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        for doc in ["bake_secs = 1", "bake_secs = 2"] {
            store
                .put_rollout_policy("t", "quick", doc, "toml", "me", entry("rollout_policy.put"))
                .await
                .unwrap();
        }
        let p = store.rollout_policy("t", "quick", None).await.unwrap();
        assert_eq!((p.version, p.document.as_str()), (2, "bake_secs = 2"));
        let p = store.rollout_policy("t", "quick", Some(1)).await.unwrap();
        assert_eq!(p.document, "bake_secs = 1");
        assert_eq!(store.rollout_policies("t").await.unwrap().len(), 1);
        assert!(matches!(
            store.rollout_policy("t", "nope", None).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
