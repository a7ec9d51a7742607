//! Aliases: movable names (`production`) pointing at a model's versions.

use super::{Result, Store, StoreError};
use crate::audit::AuditEntry;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug)]
pub struct AliasRow {
    pub alias: String,
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

impl FromRow<'_, AnyRow> for AliasRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(AliasRow {
            alias: r.try_get("alias")?,
            version: r.try_get("version")?,
            updated_at: r.try_get("updated_at")?,
            updated_by: r.try_get("updated_by")?,
        })
    }
}

impl Store {
    pub async fn aliases(&self, tenant: &str, model: &str) -> Result<Vec<AliasRow>> {
        Ok(sqlx::query_as(
            "SELECT alias, version, updated_at, updated_by FROM aliases WHERE tenant = $1 AND model = $2 ORDER BY alias",
        )
        .bind(tenant)
        .bind(model)
        .fetch_all(self.pool())
        .await?)
    }

    /// Points `alias` at `version` atomically. With `expect_current`, the
    /// move happens only if the alias currently points there (`Some(None)`:
    /// only if it is unset), so of two racing promotions one wins and the
    /// other gets a conflict. Returns the previous version.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_alias(
        &self,
        tenant: &str,
        model: &str,
        alias: &str,
        version: i64,
        expect_current: Option<Option<i64>>,
        by: &str,
        entry: AuditEntry,
    ) -> Result<Option<i64>> {
        let mut m = self.mutation(entry).await?;
        let (tx, entry) = (&mut m.tx, &mut m.entry);
        let out: Result<_> = async {
            let status = super::versions::version_status(tx, tenant, model, version).await?;
            if status != "ready" {
                return Err(StoreError::Conflict(format!(
                    "{model}@{version} is {status}; re-register it before promoting"
                )));
            }
            let current: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM aliases WHERE tenant = $1 AND model = $2 AND alias = $3",
            )
            .bind(tenant)
            .bind(model)
            .bind(alias)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(expected) = expect_current {
                if expected != current {
                    let show =
                        |v: Option<i64>| v.map_or("unset".to_string(), |v| format!("version {v}"));
                    return Err(StoreError::Conflict(format!(
                        "alias {alias:?} of {model} is at {}, not {} as expected",
                        show(current),
                        show(expected)
                    )));
                }
            }
            sqlx::query(
                "INSERT INTO aliases (tenant, model, alias, version, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant, model, alias) DO UPDATE SET version = $4, updated_at = $5, updated_by = $6",
            )
            .bind(tenant)
            .bind(model)
            .bind(alias)
            .bind(version)
            .bind(self.now())
            .bind(by)
            .execute(&mut **tx)
            .await?;
            entry.detail = match current {
                Some(c) => format!("moved from version {c}"),
                None => "set".into(),
            };
            Ok(current)
        }
        .await;
        m.finish(out).await
    }

    /// Removes an alias (undeploy). Returns the version it pointed at.
    pub async fn delete_alias(
        &self,
        tenant: &str,
        model: &str,
        alias: &str,
        entry: AuditEntry,
    ) -> Result<i64> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            let v: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM aliases WHERE tenant = $1 AND model = $2 AND alias = $3",
            )
            .bind(tenant)
            .bind(model)
            .bind(alias)
            .fetch_optional(&mut **tx)
            .await?;
            let Some(v) = v else {
                return Err(StoreError::NotFound(format!(
                    "model {model:?} has no alias {alias:?}"
                )));
            };
            sqlx::query("DELETE FROM aliases WHERE tenant = $1 AND model = $2 AND alias = $3")
                .bind(tenant)
                .bind(model)
                .bind(alias)
                .execute(&mut **tx)
                .await?;
            Ok(v)
        }
        .await;
        m.finish(out).await
    }
}
