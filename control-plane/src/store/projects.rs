//! Projects: named groups of models within a tenant.

use super::{Result, Store, StoreError};
use crate::audit::AuditEntry;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug)]
pub struct ProjectRow {
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub models: i64,
}

impl FromRow<'_, AnyRow> for ProjectRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(ProjectRow {
            name: r.try_get("name")?,
            description: r.try_get("description")?,
            created_at: r.try_get("created_at")?,
            models: r.try_get("models")?,
        })
    }
}

impl Store {
    pub async fn list_projects(&self, tenant: &str) -> Result<Vec<ProjectRow>> {
        Ok(sqlx::query_as(
            "SELECT p.name, p.description, p.created_at, \
             (SELECT COUNT(*) FROM models m WHERE m.tenant = p.tenant AND m.project = p.name) AS models \
             FROM projects p WHERE p.tenant = $1 ORDER BY p.name",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn create_project(
        &self,
        tenant: &str,
        name: &str,
        description: &str,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            self.ensure_tenant(tx, tenant).await?;
            let n = sqlx::query(
                "INSERT INTO projects (tenant, name, description, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, name) DO NOTHING",
            )
            .bind(tenant)
            .bind(name)
            .bind(description)
            .bind(self.now())
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(StoreError::Conflict(format!("project {name:?} exists")));
            }
            Ok(())
        }
        .await;
        m.finish(out).await
    }
}
