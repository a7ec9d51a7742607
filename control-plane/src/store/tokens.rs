//! API tokens (stored by hash) and the tenants they belong to.

use super::{Result, Store, StoreError};
use crate::audit::AuditEntry;
use crate::auth::{Principal, Role};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

impl FromRow<'_, AnyRow> for TokenInfo {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(TokenInfo {
            id: r.try_get("id")?,
            tenant: r.try_get("tenant")?,
            name: r.try_get("name")?,
            role: r.try_get("role")?,
            created_at: r.try_get("created_at")?,
            created_by: r.try_get("created_by")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    }
}

impl Store {
    pub async fn token_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) AS n FROM tokens")
            .fetch_one(self.pool())
            .await?)
    }

    /// Stores a token (by hash) unless one with that hash exists. Returns
    /// whether it was inserted. Used for the bootstrap token, which several
    /// replicas may try to insert at once.
    pub async fn insert_token_if_absent(
        &self,
        tenant: &str,
        name: &str,
        role: Role,
        hash: &str,
        entry: AuditEntry,
    ) -> Result<bool> {
        let inserted = {
            let mut m = self.mutation(entry).await?;
            let (tx, entry) = (&mut m.tx, &mut m.entry);
            let out: Result<_> = async {
                self.ensure_tenant(tx, tenant).await?;
                let id = crate::auth::random_id("tok_", 8);
                let n = sqlx::query(
                    "INSERT INTO tokens (id, tenant, name, role, hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, 'bootstrap') ON CONFLICT (hash) DO NOTHING",
                )
                .bind(id.as_str())
                .bind(tenant)
                .bind(name)
                .bind(role.as_str())
                .bind(hash)
                .bind(self.now())
                .execute(&mut **tx)
                .await?
                .rows_affected();
                entry.target = format!("token {id}");
                Ok((n == 1).then_some(()))
            }
            .await;
            m.finish_if(out).await
        }?;
        Ok(inserted.is_some())
    }

    /// Looks a token up by hash; revoked tokens and unknown ones are `None`.
    pub async fn principal(&self, hash: &str) -> Result<Option<Principal>> {
        let row: Option<(String, String, String, String)> = sqlx::query_as(
            "SELECT id, tenant, name, role FROM tokens WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(self.pool())
        .await?;
        let Some((token_id, tenant, token_name, role)) = row else {
            return Ok(None);
        };
        Ok(Some(Principal {
            token_id,
            token_name,
            tenant,
            role: role
                .parse()
                .map_err(|e: crate::auth::UnknownRole| StoreError::Corrupt(e.to_string()))?,
        }))
    }

    pub async fn create_token(
        &self,
        tenant: &str,
        name: &str,
        role: Role,
        hash: &str,
        created_by: &str,
        entry: AuditEntry,
    ) -> Result<TokenInfo> {
        let mut m = self.mutation(entry).await?;
        let (tx, entry) = (&mut m.tx, &mut m.entry);
        let out: Result<_> = async {
            self.ensure_tenant(tx, tenant).await?;
            let info = TokenInfo {
                id: crate::auth::random_id("tok_", 8),
                tenant: tenant.into(),
                name: name.into(),
                role: role.as_str().into(),
                created_at: self.now(),
                created_by: created_by.into(),
                revoked_at: None,
            };
            sqlx::query(
                "INSERT INTO tokens (id, tenant, name, role, hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(info.id.as_str())
            .bind(tenant)
            .bind(name)
            .bind(role.as_str())
            .bind(hash)
            .bind(info.created_at)
            .bind(created_by)
            .execute(&mut **tx)
            .await?;
            entry.target = format!("token {} ({name}, {role})", info.id);
            Ok(info)
        }
        .await;
        m.finish(out).await
    }

    pub async fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenInfo>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant, name, role, created_at, created_by, revoked_at FROM tokens WHERE tenant = $1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn revoke_token(&self, tenant: &str, id: &str, entry: AuditEntry) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            let n = sqlx::query(
                "UPDATE tokens SET revoked_at = $1 WHERE tenant = $2 AND id = $3 AND revoked_at IS NULL",
            )
            .bind(self.now())
            .bind(tenant)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("no active token {id:?}")));
            }
            Ok(())
        }
        .await;
        m.finish(out).await
    }
}
