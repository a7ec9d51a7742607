//! Fleet tables (migration 0003): enrollment tokens, devices, deployments
//! and per-device model state.

use super::sql::Sql;
use super::{Result, Store, StoreError};
use crate::audit::AuditEntry;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use std::collections::BTreeMap;

pub use super::device_runtimes::{runtime_offered, runtimes_from_string, runtimes_to_string};

pub type Labels = BTreeMap<String, String>;

pub fn labels_to_string(l: &Labels) -> String {
    serde_json::to_string(l).unwrap_or_else(|_| "{}".into())
}

pub fn labels_from_string(s: &str) -> Labels {
    serde_json::from_str(s).unwrap_or_default()
}

/// Whether every `k=v` of `selector` is among `labels`.
pub fn matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[derive(Clone, Debug)]
pub struct Device {
    pub id: String,
    pub tenant: String,
    pub hostname: String,
    pub labels: Labels,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    /// Until when (milliseconds) some replica's lease on a QUIC session
    /// with the device runs (migration 0010); lapsed or `None`: no session.
    pub session_until: Option<i64>,
    /// The runtimes its last fleet hello offered (migration 0011); `None`
    /// before its first hello.
    pub runtimes: Option<Vec<String>>,
}

/// Whether a session lease running `until` (milliseconds) holds at `now_ms`
/// (the same test as `device_page`'s SQL).
pub fn lease_holds(until: Option<i64>, now_ms: i64) -> bool {
    until.is_some_and(|u| u >= now_ms)
}

impl Device {
    /// Whether a replica held a session with the device at `now_ms`.
    pub fn session_at(&self, now_ms: i64) -> bool {
        lease_holds(self.session_until, now_ms)
    }
}

// Mapped by hand (see `AuditRecord`'s mapper); labels are stored as JSON.
impl FromRow<'_, AnyRow> for Device {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Device {
            id: r.try_get("id")?,
            tenant: r.try_get("tenant")?,
            hostname: r.try_get("hostname")?,
            labels: labels_from_string(&r.try_get::<String, _>("labels")?),
            created_at: r.try_get("created_at")?,
            revoked_at: r.try_get("revoked_at")?,
            last_seen: r.try_get("last_seen")?,
            session_until: r.try_get("session_until")?,
            runtimes: r
                .try_get::<Option<String>, _>("runtimes")?
                .map(|s| runtimes_from_string(&s)),
        })
    }
}

pub(super) const DEVICE_COLS: &str =
    "id, tenant, hostname, labels, created_at, revoked_at, last_seen, session_until, runtimes";

#[derive(Clone, Debug)]
pub struct Deployment {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub selector: Labels,
    pub created_at: i64,
    /// Microseconds, strictly increasing per server (set when stored): the
    /// newest deployment or rollout assignment of a model wins.
    pub created_us: i64,
    pub created_by: String,
    pub deleted_at: Option<i64>,
    /// The runtime the version requires (its signed `ferry.target.runtime`
    /// tag, read from version_tags): only devices that offer it are
    /// targeted.
    pub runtime: Option<String>,
}

impl FromRow<'_, AnyRow> for Deployment {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Deployment {
            id: r.try_get("id")?,
            tenant: r.try_get("tenant")?,
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            digest: r.try_get("digest")?,
            selector: labels_from_string(&r.try_get::<String, _>("selector")?),
            created_at: r.try_get("created_at")?,
            created_us: r.try_get("created_us")?,
            created_by: r.try_get("created_by")?,
            deleted_at: r.try_get("deleted_at")?,
            runtime: r.try_get("runtime")?,
        })
    }
}

/// Deployments with their version's runtime requirement; conditions name
/// the deployment's columns as `d.`.
const DEPLOYMENTS_FROM: &str = "SELECT d.id, d.tenant, d.model, d.version, d.digest, d.selector, \
     d.created_at, d.created_us, d.created_by, d.deleted_at, t.value AS runtime \
     FROM deployments d LEFT JOIN version_tags t ON t.tenant = d.tenant AND t.model = d.model \
     AND t.version = d.version AND t.key = 'ferry.target.runtime'";

/// A new enrollment token, stored by hash.
#[derive(Clone, Debug)]
pub struct NewEnrollmentToken {
    pub id: String,
    pub tenant: String,
    pub hash: String,
    pub labels: Labels,
    pub expires_at: i64,
    pub uses: i64,
    pub created_by: String,
}

/// Why an enrollment token was not accepted.
#[derive(Debug, PartialEq)]
pub enum TokenRefusal {
    Unknown,
    Revoked,
    Expired,
    Used,
}

/// Why a stored token cannot be used at `now`, if it cannot.
fn token_refusal(
    now: i64,
    expires_at: i64,
    uses_left: i64,
    revoked_at: Option<i64>,
) -> Option<TokenRefusal> {
    if revoked_at.is_some() {
        Some(TokenRefusal::Revoked)
    } else if now >= expires_at {
        Some(TokenRefusal::Expired)
    } else if uses_left <= 0 {
        Some(TokenRefusal::Used)
    } else {
        None
    }
}

/// (id, tenant, labels, expires_at, uses_left, revoked_at).
type ConsumeRow = (String, String, String, i64, i64, Option<i64>);

/// (id, labels, expires_at, uses_left, created_at, created_by, revoked_at).
type TokenRow = (String, String, i64, i64, i64, String, Option<i64>);

/// An enrollment token as listed (its secret is never stored).
#[derive(Clone, Debug)]
pub struct EnrollmentToken {
    pub id: String,
    pub labels: Labels,
    pub expires_at: i64,
    pub uses_left: i64,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

/// One device's latest activation report on one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceModelReport {
    pub device: String,
    pub model: String,
    pub version: i64,
    /// `active`, `failed`, `rolled_back`, ...
    pub state: String,
    pub detail: String,
    pub updated_at: i64,
}

// Mapped by hand, as `Device` is; read from `device_models m`.
impl FromRow<'_, AnyRow> for DeviceModelReport {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(DeviceModelReport {
            device: r.try_get("device_id")?,
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            state: r.try_get("state")?,
            detail: r.try_get("detail")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

/// One device's report on one model: (version, state, detail).
pub type DeviceModelState = (i64, String, String);

/// Strictly increasing microseconds in this process, from `now_us`, so
/// deployments created in one burst keep their order.
pub(super) fn creation_micros(now_us: i64) -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let prev = LAST.fetch_max(now_us, Ordering::SeqCst);
    if prev >= now_us {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now_us
    }
}

/// Inserts a deployment row in `tx`, stamped with the deployments' clock.
pub(super) async fn insert_deployment(
    store: &Store,
    tx: &mut super::Tx,
    d: &Deployment,
) -> Result<()> {
    let created_us = creation_micros(store.clock.now_micros() as i64);
    sqlx::query(
        "INSERT INTO deployments (id, tenant, model, version, digest, selector, created_at, created_us, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(d.id.as_str())
    .bind(d.tenant.as_str())
    .bind(d.model.as_str())
    .bind(d.version)
    .bind(d.digest.as_str())
    .bind(labels_to_string(&d.selector))
    .bind(d.created_at)
    .bind(created_us)
    .bind(d.created_by.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Stores an enrollment token (audited as `entry`).
    pub async fn create_enrollment_token(
        &self,
        t: &NewEnrollmentToken,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            sqlx::query(
                "INSERT INTO enrollment_tokens (id, tenant, hash, labels, expires_at, uses_left, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(t.id.as_str())
            .bind(t.tenant.as_str())
            .bind(t.hash.as_str())
            .bind(labels_to_string(&t.labels))
            .bind(t.expires_at)
            .bind(t.uses)
            .bind(self.now())
            .bind(t.created_by.as_str())
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
        .await;
        m.finish(out).await
    }

    /// Takes one use of the token with `hash`: its id, tenant and labels.
    ///
    /// An unknown, revoked, expired or used-up token is refused by a read
    /// alone: a stream of refused enrollments never takes the write lock
    /// the registry, the fleet and telemetry share.
    pub async fn consume_enrollment_token(
        &self,
        hash: &str,
    ) -> Result<Result<(String, String, Labels), TokenRefusal>> {
        let now = self.now();
        let row: Option<ConsumeRow> = sqlx::query_as(
            "SELECT id, tenant, labels, expires_at, uses_left, revoked_at FROM enrollment_tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(self.pool())
        .await?;
        let Some((id, tenant, labels, expires_at, uses_left, revoked_at)) = row else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        if let Some(refusal) = token_refusal(now, expires_at, uses_left, revoked_at) {
            return Ok(Err(refusal));
        }
        // Write only for a token that was usable a moment ago, and only
        // through one conditional UPDATE: it takes the write lock at once
        // (a read-then-write transaction cannot upgrade its SQLite snapshot
        // under concurrent enrollments) and is atomic on both databases.
        let n = sqlx::query(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
             WHERE hash = $1 AND uses_left > 0 AND expires_at > $2 AND revoked_at IS NULL",
        )
        .bind(hash)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            // Taken, revoked or expired since the read: say which.
            let row: Option<(i64, i64, Option<i64>)> = sqlx::query_as(
                "SELECT expires_at, uses_left, revoked_at FROM enrollment_tokens WHERE hash = $1",
            )
            .bind(hash)
            .fetch_optional(self.pool())
            .await?;
            return Ok(Err(row
                .and_then(|(e, u, r)| token_refusal(now, e, u, r))
                .unwrap_or(TokenRefusal::Used)));
        }
        Ok(Ok((id, tenant, labels_from_string(&labels))))
    }

    /// The tenant's enrollment tokens, newest first (never their secrets).
    pub async fn enrollment_tokens(&self, tenant: &str) -> Result<Vec<EnrollmentToken>> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, labels, expires_at, uses_left, created_at, created_by, revoked_at \
             FROM enrollment_tokens WHERE tenant = $1 ORDER BY created_at DESC, id",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, labels, expires_at, uses_left, created_at, created_by, revoked_at)| {
                    EnrollmentToken {
                        id,
                        labels: labels_from_string(&labels),
                        expires_at,
                        uses_left,
                        created_at,
                        created_by,
                        revoked_at,
                    }
                },
            )
            .collect())
    }

    /// Revokes the tenant's enrollment token `id` (audited as `entry`); a
    /// token of another tenant, or one already revoked, is not found.
    pub async fn revoke_enrollment_token(
        &self,
        tenant: &str,
        id: &str,
        entry: AuditEntry,
    ) -> Result<()> {
        self.mark_revoked("enrollment_tokens", "enrollment token", tenant, id, entry)
            .await
    }

    /// Records an enrolled device (audited as `entry`).
    /// `public_key`: the raw ed25519 key the device generated, which
    /// verifies its telemetry.
    pub async fn enroll_device(
        &self,
        d: &Device,
        fingerprint: &str,
        public_key: &[u8],
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            sqlx::query(
                "INSERT INTO devices (id, tenant, fingerprint, hostname, labels, created_at, public_key) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(d.id.as_str())
            .bind(d.tenant.as_str())
            .bind(fingerprint)
            .bind(d.hostname.as_str())
            .bind(labels_to_string(&d.labels))
            .bind(d.created_at)
            .bind(hex::encode(public_key))
            .execute(&mut **tx)
            .await?;
            super::device_sessions::bump_device_generation(tx, &d.tenant, &d.id).await
        }
        .await;
        m.finish(out).await
    }

    pub async fn device_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Device>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE fingerprint = $1"
        ))
        .bind(fingerprint)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn device(&self, tenant: &str, id: &str) -> Result<Device> {
        let row: Option<Device> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("device {id:?}")))
    }

    pub async fn devices(&self, tenant: &str) -> Result<Vec<Device>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE tenant = $1 ORDER BY id"
        ))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn set_device_labels(
        &self,
        tenant: &str,
        id: &str,
        labels: &Labels,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            let n = sqlx::query("UPDATE devices SET labels = $1 WHERE tenant = $2 AND id = $3")
                .bind(labels_to_string(labels))
                .bind(tenant)
                .bind(id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("device {id:?}")));
            }
            super::device_sessions::bump_device_generation(tx, tenant, id).await
        }
        .await;
        m.finish(out).await
    }

    pub async fn revoke_device(&self, tenant: &str, id: &str, entry: AuditEntry) -> Result<()> {
        self.mark_revoked("devices", "device", tenant, id, entry)
            .await
    }

    /// Sets `revoked_at` on the tenant's live row `id` of `table` (a fixed
    /// table name, never input), audited as `entry`; one of another tenant,
    /// or one already revoked, is not found.
    async fn mark_revoked(
        &self,
        table: &'static str,
        what: &str,
        tenant: &str,
        id: &str,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let sql = format!(
            "UPDATE {table} SET revoked_at = $1 WHERE tenant = $2 AND id = $3 AND revoked_at IS NULL"
        );
        let out: Result<_> = async {
            let n = sqlx::query(&sql)
                .bind(self.now())
                .bind(tenant)
                .bind(id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "{what} {id:?} (or already revoked)"
                )));
            }
            if table == "devices" {
                // A revoked device is disconnected at once: its session's
                // lease ends with the revocation, not when the replica
                // holding it notices.
                sqlx::query(
                    "UPDATE devices SET session_id = NULL, session_until = NULL WHERE tenant = $1 AND id = $2",
                )
                .bind(tenant)
                .bind(id)
                .execute(&mut **tx)
                .await?;
                super::device_sessions::bump_device_generation(tx, tenant, id).await?;
            }
            Ok(())
        }
        .await;
        m.finish(out).await
    }

    /// Records that the device was seen now (not audited).
    pub async fn touch_device(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
            .bind(self.now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Stores a deployment (audited as `entry`).
    pub async fn create_deployment(&self, d: &Deployment, entry: AuditEntry) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let out: Result<_> = async {
            super::versions::require_deployable(
                &mut m.tx, &d.tenant, &d.model, d.version, &d.digest,
            )
            .await?;
            insert_deployment(self, &mut m.tx, d).await
        }
        .await;
        m.finish(out).await
    }

    pub async fn deployment(&self, tenant: &str, id: &str) -> Result<Deployment> {
        let row: Option<Deployment> = sqlx::query_as(&format!(
            "{DEPLOYMENTS_FROM} WHERE d.tenant = $1 AND d.id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("deployment {id:?}")))
    }

    /// Live (not deleted) deployments of `tenant`, oldest first.
    pub async fn live_deployments(&self, tenant: &str) -> Result<Vec<Deployment>> {
        Ok(sqlx::query_as(&format!(
            "{DEPLOYMENTS_FROM} WHERE d.tenant = $1 AND d.deleted_at IS NULL ORDER BY d.created_us, d.id"
        ))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    /// Replaces a live deployment's selector (audited as `entry`).
    pub async fn scale_deployment(
        &self,
        tenant: &str,
        id: &str,
        selector: &Labels,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            let n = sqlx::query(
                "UPDATE deployments SET selector = $1 WHERE tenant = $2 AND id = $3 AND deleted_at IS NULL",
            )
            .bind(labels_to_string(selector))
            .bind(tenant)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("deployment {id:?}")));
            }
            Ok(())
        }
        .await;
        m.finish(out).await
    }

    /// Marks a deployment deleted (audited as `entry`); returns it as it
    /// was.
    pub async fn delete_deployment(
        &self,
        tenant: &str,
        id: &str,
        entry: AuditEntry,
    ) -> Result<Deployment> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            let gone: Option<Deployment> = sqlx::query_as(&format!(
                "{DEPLOYMENTS_FROM} WHERE d.tenant = $1 AND d.id = $2"
            ))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
            let n = sqlx::query(
                "UPDATE deployments SET deleted_at = $1 WHERE tenant = $2 AND id = $3 AND deleted_at IS NULL",
            )
            .bind(self.now())
            .bind(tenant)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            match gone {
                Some(d) if n == 1 => Ok(d),
                _ => Err(StoreError::NotFound(format!("deployment {id:?}"))),
            }
        }
        .await;
        m.finish(out).await
    }

    /// Records a device's activation report on `model` (audited as
    /// `entry`).
    pub async fn report_device_model(
        &self,
        device_id: &str,
        model: &str,
        version: i64,
        state: &str,
        detail: &str,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            sqlx::query(
                "INSERT INTO device_models (device_id, model, version, state, detail, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (device_id, model) DO UPDATE SET version = excluded.version, state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at",
            )
            .bind(device_id)
            .bind(model)
            .bind(version)
            .bind(state)
            .bind(detail)
            .bind(self.now())
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
        .await;
        m.finish(out).await
    }

    /// The activation reports of `tenant`'s devices (of one device when
    /// `device` is given), by device and model.
    pub async fn device_model_reports(
        &self,
        tenant: &str,
        device: Option<&str>,
    ) -> Result<Vec<DeviceModelReport>> {
        let mut sql = Sql::new(
            "SELECT m.device_id, m.model, m.version, m.state, m.detail, m.updated_at FROM device_models m JOIN devices d ON d.id = m.device_id WHERE d.tenant = ",
        );
        sql.push_bind(tenant.to_string());
        if let Some(id) = device {
            sql.push(" AND m.device_id = ").push_bind(id.to_string());
        }
        sql.push(" ORDER BY m.device_id, m.model");
        Ok(sql.query_as().fetch_all(self.pool()).await?)
    }

    /// (version, state, detail) of `model` on each device of `tenant`.
    pub async fn device_models(
        &self,
        tenant: &str,
        model: &str,
    ) -> Result<BTreeMap<String, DeviceModelState>> {
        let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
            "SELECT m.device_id, m.version, m.state, m.detail FROM device_models m JOIN devices d ON d.id = m.device_id \
             WHERE d.tenant = $1 AND m.model = $2",
        )
        .bind(tenant)
        .bind(model)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(d, v, s, det)| (d, (v, s, det)))
            .collect())
    }
}
