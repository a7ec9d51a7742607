//! Garbage collection of artifact blobs no version references any more.

use super::{Result, Store, StoreError, Tx};

/// Blob paths that no version references any more, to delete under the
/// tenant lock (see [`Store::collect_garbage`]).
pub type Orphans = Vec<String>;

pub(super) async fn blob_referenced(tx: &mut Tx, tenant: &str, digest: &str) -> Result<bool> {
    Ok(sqlx::query(
        "SELECT 1 AS one FROM version_artifacts WHERE tenant = $1 AND digest = $2 LIMIT 1",
    )
    .bind(tenant)
    .bind(digest)
    .fetch_optional(&mut **tx)
    .await?
    .is_some())
}

impl Store {
    /// Deletes each orphaned blob under the tenant lock, re-checking that no
    /// version registered since references it. `delete` removes one blob.
    /// Nothing in the database changes, so nothing is audited (the deletion
    /// that orphaned the blobs was).
    pub async fn collect_garbage<F, Fut>(
        &self,
        tenant: &str,
        orphans: Orphans,
        delete: F,
    ) -> Result<Vec<String>>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut removed = Vec::new();
        if orphans.is_empty() {
            return Ok(removed);
        }
        let mut tx = self.begin_locked(tenant).await?;
        for d in orphans {
            if !blob_referenced(&mut tx, tenant, &d).await? {
                delete(d.clone()).await.map_err(StoreError::Corrupt)?;
                removed.push(d);
            }
        }
        tx.commit().await?;
        Ok(removed)
    }
}
