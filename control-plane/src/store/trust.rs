//! Tenant trust roots (signed, versioned; the newest is current).

use super::{Result, Store, StoreError};
use crate::audit::AuditEntry;

impl Store {
    /// The tenant's current trust root: (version, signed bytes as hex).
    pub async fn trust_root(&self, tenant: &str) -> Result<Option<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT version, signed FROM trust_roots WHERE tenant = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(tenant)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Every stored version of the tenant's trust root after `after`, oldest
    /// first: (version, signed bytes as hex). Devices follow this chain.
    pub async fn trust_roots_after(&self, tenant: &str, after: i64) -> Result<Vec<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT version, signed FROM trust_roots WHERE tenant = $1 AND version > $2 ORDER BY version",
        )
        .bind(tenant)
        .bind(after)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every tenant's current trust root: (tenant, version, signed hex).
    pub async fn current_trust_roots(&self) -> Result<Vec<(String, i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT t.tenant, t.version, t.signed FROM trust_roots t \
             WHERE t.version = (SELECT MAX(u.version) FROM trust_roots u WHERE u.tenant = t.tenant) \
             ORDER BY t.tenant",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Stores a new trust root; `expect_current` is the version the caller
    /// checked succession against (a concurrent replacement makes this fail).
    pub async fn put_trust_root(
        &self,
        tenant: &str,
        version: i64,
        signed_hex: &str,
        expect_current: Option<i64>,
        created_by: &str,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            self.ensure_tenant(tx, tenant).await?;
            let current: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) AS v FROM trust_roots WHERE tenant = $1")
                    .bind(tenant)
                    .fetch_one(&mut **tx)
                    .await?;
            if current != expect_current {
                return Err(StoreError::Conflict(
                    "the trust root changed while this one was checked; retry".into(),
                ));
            }
            sqlx::query(
                "INSERT INTO trust_roots (tenant, version, signed, created_at, created_by) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(tenant)
            .bind(version)
            .bind(signed_hex)
            .bind(self.now())
            .bind(created_by)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
        .await;
        m.finish(out).await
    }
}
