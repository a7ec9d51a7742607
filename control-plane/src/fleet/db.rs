//! Fleet tables (migration 0003, run by the store with the others):
//! enrollment tokens, devices, deployments and per-device model state.
//! Plain SQL that runs on SQLite and PostgreSQL.

use crate::store::{Store, StoreError};
use sqlx::Row;
use std::collections::BTreeMap;

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

#[derive(Clone, Debug, serde::Serialize)]
pub struct Device {
    pub id: String,
    pub tenant: String,
    pub hostname: String,
    pub labels: Labels,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
}

fn device_row(r: &sqlx::any::AnyRow) -> Result<Device, sqlx::Error> {
    Ok(Device {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        hostname: r.try_get("hostname")?,
        labels: labels_from_string(&r.try_get::<String, _>("labels")?),
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_seen: r.try_get("last_seen")?,
    })
}

const DEVICE_COLS: &str = "id, tenant, hostname, labels, created_at, revoked_at, last_seen";

#[derive(Clone, Debug, serde::Serialize)]
pub struct Deployment {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub selector: Labels,
    pub created_at: i64,
    pub created_by: String,
    pub deleted_at: Option<i64>,
}

fn deployment_row(r: &sqlx::any::AnyRow) -> Result<Deployment, sqlx::Error> {
    Ok(Deployment {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        model: r.try_get("model")?,
        version: r.try_get("version")?,
        digest: r.try_get("digest")?,
        selector: labels_from_string(&r.try_get::<String, _>("selector")?),
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        deleted_at: r.try_get("deleted_at")?,
    })
}

const DEPLOYMENT_COLS: &str =
    "id, tenant, model, version, digest, selector, created_at, created_by, deleted_at";

#[allow(clippy::too_many_arguments)]
pub async fn insert_token(
    store: &Store,
    id: &str,
    tenant: &str,
    hash: &str,
    labels: &Labels,
    expires_at: i64,
    uses: i64,
    created_by: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO enrollment_tokens (id, tenant, hash, labels, expires_at, uses_left, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(tenant)
    .bind(hash)
    .bind(labels_to_string(labels))
    .bind(expires_at)
    .bind(uses)
    .bind(now)
    .bind(created_by)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Why an enrollment token was not accepted.
#[derive(Debug, PartialEq)]
pub enum TokenRefusal {
    Unknown,
    Expired,
    Used,
}

/// Takes one use of the token with `hash`: its id, tenant and labels.
pub async fn consume_token(
    store: &Store,
    hash: &str,
    now: i64,
) -> Result<Result<(String, String, Labels), TokenRefusal>, StoreError> {
    // Write first: a transaction that reads and then writes cannot upgrade
    // its SQLite snapshot under concurrent enrollments ("database is
    // locked"); one conditional UPDATE takes the write lock at once and is
    // atomic on both databases.
    let mut tx = store.pool().begin().await?;
    let n = sqlx::query(
        "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
         WHERE hash = $1 AND uses_left > 0 AND expires_at > $2",
    )
    .bind(hash)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let row = sqlx::query(
        "SELECT id, tenant, labels, expires_at, uses_left FROM enrollment_tokens WHERE hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Err(TokenRefusal::Unknown));
    };
    if n == 0 {
        let expires_at: i64 = row.try_get("expires_at")?;
        return Ok(Err(if now >= expires_at {
            TokenRefusal::Expired
        } else {
            TokenRefusal::Used
        }));
    }
    tx.commit().await?;
    Ok(Ok((
        row.try_get("id")?,
        row.try_get("tenant")?,
        labels_from_string(&row.try_get::<String, _>("labels")?),
    )))
}

pub async fn insert_device(store: &Store, d: &Device, fingerprint: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO devices (id, tenant, fingerprint, hostname, labels, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(d.id.as_str())
    .bind(d.tenant.as_str())
    .bind(fingerprint)
    .bind(d.hostname.as_str())
    .bind(labels_to_string(&d.labels))
    .bind(d.created_at)
    .execute(store.pool())
    .await?;
    Ok(())
}

pub async fn device_by_fingerprint(
    store: &Store,
    fingerprint: &str,
) -> Result<Option<Device>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {DEVICE_COLS} FROM devices WHERE fingerprint = $1"
    ))
    .bind(fingerprint)
    .fetch_optional(store.pool())
    .await?;
    Ok(row.as_ref().map(device_row).transpose()?)
}

pub async fn device(store: &Store, tenant: &str, id: &str) -> Result<Device, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {DEVICE_COLS} FROM devices WHERE tenant = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(store.pool())
    .await?;
    match row {
        Some(r) => Ok(device_row(&r)?),
        None => Err(StoreError::NotFound(format!("device {id:?}"))),
    }
}

pub async fn devices(store: &Store, tenant: &str) -> Result<Vec<Device>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {DEVICE_COLS} FROM devices WHERE tenant = $1 ORDER BY id"
    ))
    .bind(tenant)
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(device_row).collect::<Result<_, _>>()?)
}

pub async fn set_labels(
    store: &Store,
    tenant: &str,
    id: &str,
    labels: &Labels,
) -> Result<(), StoreError> {
    let n = sqlx::query("UPDATE devices SET labels = $1 WHERE tenant = $2 AND id = $3")
        .bind(labels_to_string(labels))
        .bind(tenant)
        .bind(id)
        .execute(store.pool())
        .await?
        .rows_affected();
    if n == 0 {
        return Err(StoreError::NotFound(format!("device {id:?}")));
    }
    Ok(())
}

pub async fn revoke(store: &Store, tenant: &str, id: &str, now: i64) -> Result<(), StoreError> {
    let n = sqlx::query(
        "UPDATE devices SET revoked_at = $1 WHERE tenant = $2 AND id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(tenant)
    .bind(id)
    .execute(store.pool())
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "device {id:?} (or already revoked)"
        )));
    }
    Ok(())
}

pub async fn touch(store: &Store, id: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Strictly increasing microseconds in this process (see `created_us`).
fn creation_micros() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    if prev >= now {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now
    }
}

pub async fn insert_deployment(store: &Store, d: &Deployment) -> Result<(), StoreError> {
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
    .bind(creation_micros())
    .bind(d.created_by.as_str())
    .execute(store.pool())
    .await?;
    Ok(())
}

pub async fn deployment(store: &Store, tenant: &str, id: &str) -> Result<Deployment, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE tenant = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(store.pool())
    .await?;
    match row {
        Some(r) => Ok(deployment_row(&r)?),
        None => Err(StoreError::NotFound(format!("deployment {id:?}"))),
    }
}

/// Live (not deleted) deployments of `tenant`, oldest first.
pub async fn live_deployments(store: &Store, tenant: &str) -> Result<Vec<Deployment>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE tenant = $1 AND deleted_at IS NULL ORDER BY created_us, id"
    ))
    .bind(tenant)
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(deployment_row).collect::<Result<_, _>>()?)
}

pub async fn update_selector(
    store: &Store,
    tenant: &str,
    id: &str,
    selector: &Labels,
) -> Result<(), StoreError> {
    let n = sqlx::query(
        "UPDATE deployments SET selector = $1 WHERE tenant = $2 AND id = $3 AND deleted_at IS NULL",
    )
    .bind(labels_to_string(selector))
    .bind(tenant)
    .bind(id)
    .execute(store.pool())
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::NotFound(format!("deployment {id:?}")));
    }
    Ok(())
}

pub async fn delete_deployment(
    store: &Store,
    tenant: &str,
    id: &str,
    now: i64,
) -> Result<(), StoreError> {
    let n = sqlx::query(
        "UPDATE deployments SET deleted_at = $1 WHERE tenant = $2 AND id = $3 AND deleted_at IS NULL",
    )
    .bind(now)
    .bind(tenant)
    .bind(id)
    .execute(store.pool())
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::NotFound(format!("deployment {id:?}")));
    }
    Ok(())
}

pub async fn set_device_model(
    store: &Store,
    device_id: &str,
    model: &str,
    version: i64,
    state: &str,
    detail: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO device_models (device_id, model, version, state, detail, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (device_id, model) DO UPDATE SET version = excluded.version, state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at",
    )
    .bind(device_id)
    .bind(model)
    .bind(version)
    .bind(state)
    .bind(detail)
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// (version, state, detail) of `model` on each device of `tenant`.
pub async fn device_models(
    store: &Store,
    tenant: &str,
    model: &str,
) -> Result<BTreeMap<String, (i64, String, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT m.device_id, m.version, m.state, m.detail FROM device_models m JOIN devices d ON d.id = m.device_id \
         WHERE d.tenant = $1 AND m.model = $2",
    )
    .bind(tenant)
    .bind(model)
    .fetch_all(store.pool())
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(
            r.try_get::<String, _>("device_id")?,
            (
                r.try_get::<i64, _>("version")?,
                r.try_get::<String, _>("state")?,
                r.try_get::<String, _>("detail")?,
            ),
        );
    }
    Ok(out)
}
