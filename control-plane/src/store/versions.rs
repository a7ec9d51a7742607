//! Model versions: registration, listing, archiving and deletion.

use super::sql::Sql;
use super::{not_found_model, Filters, Orphans, Result, Store, StoreError, Tx};
use crate::audit::AuditEntry;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug)]
pub struct VersionRow {
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub header: String,
    pub manifest: String,
    pub size: i64,
    pub status: String,
    pub created_at: i64,
    pub created_by: String,
    pub aliases: Vec<String>,
}

impl FromRow<'_, AnyRow> for VersionRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(VersionRow {
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            digest: r.try_get("digest")?,
            header: r.try_get("header")?,
            manifest: r.try_get("manifest")?,
            size: r.try_get("size")?,
            status: r.try_get("status")?,
            created_at: r.try_get("created_at")?,
            created_by: r.try_get("created_by")?,
            aliases: Vec::new(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct ArtifactRow {
    pub name: String,
    pub digest: String,
    pub len: i64,
}

impl FromRow<'_, AnyRow> for ArtifactRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(ArtifactRow {
            name: r.try_get("name")?,
            digest: r.try_get("digest")?,
            len: r.try_get("len")?,
        })
    }
}

/// Everything `register` writes for one version.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub tenant: String,
    pub model: String,
    pub project: String,
    pub version: i64,
    pub digest: String,
    pub header: String,
    pub manifest: String,
    pub size: i64,
    pub artifacts: Vec<ArtifactRow>,
    pub tags: Vec<(String, String)>,
    pub metrics: Vec<(String, f64)>,
    pub created_by: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    Created,
    /// An archived version with the same digest was pushed again.
    Restored,
}

impl VersionRow {
    /// The stored signed manifest (hex of its canonical encoding); `None` if
    /// the row does not decode.
    pub fn signed_manifest(&self) -> Option<ferry_protocol::SignedManifest> {
        let bytes = hex::decode(&self.header).ok()?;
        ferry_protocol::encoding::decode(
            &bytes,
            ferry_protocol::bundle::HEADER_LIMIT,
            "bundle header",
        )
        .ok()
    }

    /// The stored manifest (JSON); `None` if the row does not decode.
    pub fn manifest(&self) -> Option<ferry_protocol::Manifest> {
        serde_json::from_str(&self.manifest).ok()
    }
}

const VERSION_COLS: &str = "SELECT v.model, v.version, v.digest, v.header, v.manifest, v.size, v.status, v.created_at, v.created_by FROM versions v";

/// (alias, version) of `model` (the aliases that keep a version from being
/// archived or deleted), those pointing at `version` when given.
pub(super) async fn aliases_of(
    tx: &mut Tx,
    tenant: &str,
    model: &str,
    version: Option<i64>,
) -> Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT alias, version FROM aliases WHERE tenant = $1 AND model = $2 ORDER BY alias",
    )
    .bind(tenant)
    .bind(model)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, v)| version.is_none_or(|x| x == *v))
        .collect())
}

pub(super) fn deployed_message(model: &str, version: i64, held: &[(String, i64)]) -> String {
    let names: Vec<&str> = held.iter().map(|(a, _)| a.as_str()).collect();
    format!(
        "{model}@{version} is deployed (alias {}); move or remove the alias first",
        names.join(", ")
    )
}

/// Live deployments of `model` (those of `version` when given), as
/// (deployment id, version): they keep a version from being archived or
/// deleted, since devices still fetch its artifacts.
pub(super) async fn deployments_of(
    tx: &mut Tx,
    tenant: &str,
    model: &str,
    version: Option<i64>,
) -> Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, version FROM deployments WHERE tenant = $1 AND model = $2 AND deleted_at IS NULL ORDER BY id",
    )
    .bind(tenant)
    .bind(model)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, v)| version.is_none_or(|x| x == *v))
        .collect())
}

/// The refusal naming the live deployments that hold what would go.
pub(super) fn in_use_message(model: &str, version: Option<i64>, live: &[(String, i64)]) -> String {
    let names: Vec<String> = live
        .iter()
        .map(|(id, v)| match version {
            Some(_) => id.clone(),
            None => format!("{id} (v{v})"),
        })
        .collect();
    let what = match version {
        Some(v) => format!("{model}@{v}"),
        None => format!("model {model}"),
    };
    format!(
        "{what} is used by live deployment {}; devices still fetch it: undeploy first (ferry undeploy ID)",
        names.join(", ")
    )
}

/// Checks, in the transaction that creates a deployment, that the version
/// still exists with this digest and is not archived: a delete or archive
/// that committed after the caller resolved the version wins.
pub(super) async fn require_deployable(
    tx: &mut Tx,
    tenant: &str,
    model: &str,
    version: i64,
    digest: &str,
) -> Result<()> {
    let status = version_status(tx, tenant, model, version).await?;
    if status != "ready" {
        return Err(StoreError::Conflict(format!(
            "{model}@{version} is {status} and cannot be deployed"
        )));
    }
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT digest FROM versions WHERE tenant = $1 AND model = $2 AND version = $3",
    )
    .bind(tenant)
    .bind(model)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await?;
    if stored.as_deref() != Some(digest) {
        return Err(StoreError::Conflict(format!(
            "{model}@{version} changed while the deployment was made"
        )));
    }
    Ok(())
}

/// The status of one version, or which of model and version is missing.
pub(super) async fn version_status(
    tx: &mut Tx,
    tenant: &str,
    model: &str,
    version: i64,
) -> Result<String> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM versions WHERE tenant = $1 AND model = $2 AND version = $3",
    )
    .bind(tenant)
    .bind(model)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await?;
    match status {
        Some(s) => Ok(s),
        None => {
            let m = sqlx::query("SELECT 1 AS one FROM models WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(model)
                .fetch_optional(&mut **tx)
                .await?;
            Err(if m.is_some() {
                StoreError::NotFound(format!("model {model:?} has no version {version}"))
            } else {
                not_found_model(model)
            })
        }
    }
}

/// `tenant = … AND model = …[ AND version = …]` with its values bound.
fn version_scope(head: &str, tenant: &str, model: &str, version: Option<i64>) -> Sql {
    let mut sql = Sql::new(head);
    sql.push(" WHERE tenant = ")
        .push_bind(tenant.to_string())
        .push(" AND model = ")
        .push_bind(model.to_string());
    if let Some(v) = version {
        sql.push(" AND version = ").push_bind(v);
    }
    sql
}

impl Store {
    /// Versions of one model matching the version-level filters, newest
    /// first, below `before` when paging.
    pub async fn list_versions(
        &self,
        tenant: &str,
        model: &str,
        f: &Filters,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<VersionRow>> {
        if !self.model_exists(tenant, model).await? {
            return Err(not_found_model(model));
        }
        let mut sql = Sql::new(VERSION_COLS);
        sql.push(" WHERE v.tenant = ")
            .push_bind(tenant.to_string())
            .push(" AND v.model = ")
            .push_bind(model.to_string());
        f.push_version_conditions(&mut sql);
        if let Some(b) = before {
            sql.push(" AND v.version < ").push_bind(b);
        }
        sql.push(" ORDER BY v.version DESC LIMIT ").push_bind(limit);
        let mut rows: Vec<VersionRow> = sql.query_as().fetch_all(self.pool()).await?;
        let aliases = self.aliases(tenant, model).await?;
        for v in &mut rows {
            v.aliases = aliases
                .iter()
                .filter(|a| a.version == v.version)
                .map(|a| a.alias.clone())
                .collect();
        }
        Ok(rows)
    }

    /// One tag of a version (tags come from its signed manifest).
    pub async fn version_tag(
        &self,
        tenant: &str,
        model: &str,
        version: i64,
        key: &str,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT value FROM version_tags WHERE tenant = $1 AND model = $2 AND version = $3 AND key = $4",
        )
        .bind(tenant)
        .bind(model)
        .bind(version)
        .bind(key)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn version(&self, tenant: &str, model: &str, version: i64) -> Result<VersionRow> {
        let row: Option<VersionRow> = sqlx::query_as(&format!(
            "{VERSION_COLS} WHERE v.tenant = $1 AND v.model = $2 AND v.version = $3"
        ))
        .bind(tenant)
        .bind(model)
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        let Some(mut v) = row else {
            return Err(if self.model_exists(tenant, model).await? {
                StoreError::NotFound(format!("model {model:?} has no version {version}"))
            } else {
                not_found_model(model)
            });
        };
        v.aliases = self
            .aliases(tenant, model)
            .await?
            .into_iter()
            .filter(|a| a.version == version)
            .map(|a| a.alias)
            .collect();
        Ok(v)
    }

    pub async fn artifacts(
        &self,
        tenant: &str,
        model: &str,
        version: i64,
    ) -> Result<Vec<ArtifactRow>> {
        Ok(sqlx::query_as(
            "SELECT name, digest, len FROM version_artifacts WHERE tenant = $1 AND model = $2 AND version = $3 ORDER BY idx",
        )
        .bind(tenant)
        .bind(model)
        .bind(version)
        .fetch_all(self.pool())
        .await?)
    }

    /// Records a verified version. `check_blobs` runs under the tenant lock
    /// after the rows are written and before the commit; it makes sure every
    /// artifact blob exists (re-uploading one that a concurrent garbage
    /// collection removed).
    pub async fn register<F, Fut>(
        &self,
        nv: &NewVersion,
        entry: AuditEntry,
        check_blobs: F,
    ) -> Result<Registered>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut m = self.mutation(entry).await?;
        let (tx, entry) = (&mut m.tx, &mut m.entry);
        let out: Result<_> = async {
            self.ensure_tenant(tx, &nv.tenant).await?;
            let outcome = self.write_version(tx, nv, entry).await?;
            check_blobs().await.map_err(StoreError::Corrupt)?;
            Ok(outcome)
        }
        .await;
        m.finish(out).await
    }

    async fn write_version(
        &self,
        tx: &mut Tx,
        nv: &NewVersion,
        entry: &mut AuditEntry,
    ) -> Result<Registered> {
        let existing: Option<(String, String)> = sqlx::query_as(
            "SELECT digest, status FROM versions WHERE tenant = $1 AND model = $2 AND version = $3",
        )
        .bind(nv.tenant.as_str())
        .bind(nv.model.as_str())
        .bind(nv.version)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some((digest, status)) = existing {
            if digest == nv.digest && status == "archived" {
                sqlx::query(
                    "UPDATE versions SET status = 'ready' WHERE tenant = $1 AND model = $2 AND version = $3",
                )
                .bind(nv.tenant.as_str())
                .bind(nv.model.as_str())
                .bind(nv.version)
                .execute(&mut **tx)
                .await?;
                entry.detail = "re-registered an archived version".into();
                return Ok(Registered::Restored);
            }
            return Err(StoreError::Conflict(if digest == nv.digest {
                format!(
                    "{}@{} is already registered with this bundle",
                    nv.model, nv.version
                )
            } else {
                format!(
                    "{}@{} is already registered with a different bundle (sha256:{}); versions are immutable, publish a higher version",
                    nv.model, nv.version, digest
                )
            }));
        }
        let now = self.now();
        sqlx::query("INSERT INTO projects (tenant, name, description, created_at) VALUES ($1, $2, '', $3) ON CONFLICT (tenant, name) DO NOTHING")
            .bind(nv.tenant.as_str())
            .bind(nv.project.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO models (tenant, name, project, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (tenant, name) DO UPDATE SET updated_at = $4",
        )
        .bind(nv.tenant.as_str())
        .bind(nv.model.as_str())
        .bind(nv.project.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO versions (tenant, model, version, digest, header, manifest, size, status, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'ready', $8, $9)",
        )
        .bind(nv.tenant.as_str())
        .bind(nv.model.as_str())
        .bind(nv.version)
        .bind(nv.digest.as_str())
        .bind(nv.header.as_str())
        .bind(nv.manifest.as_str())
        .bind(nv.size)
        .bind(now)
        .bind(nv.created_by.as_str())
        .execute(&mut **tx)
        .await?;
        for (i, a) in nv.artifacts.iter().enumerate() {
            sqlx::query(
                "INSERT INTO version_artifacts (tenant, model, version, idx, name, digest, len) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(nv.tenant.as_str())
            .bind(nv.model.as_str())
            .bind(nv.version)
            .bind(i as i64)
            .bind(a.name.as_str())
            .bind(a.digest.as_str())
            .bind(a.len)
            .execute(&mut **tx)
            .await?;
        }
        for (k, v) in &nv.tags {
            sqlx::query("INSERT INTO version_tags (tenant, model, version, key, value) VALUES ($1, $2, $3, $4, $5)")
                .bind(nv.tenant.as_str())
                .bind(nv.model.as_str())
                .bind(nv.version)
                .bind(k.as_str())
                .bind(v.as_str())
                .execute(&mut **tx)
                .await?;
        }
        for (k, v) in &nv.metrics {
            sqlx::query("INSERT INTO version_metrics (tenant, model, version, key, value) VALUES ($1, $2, $3, $4, $5)")
                .bind(nv.tenant.as_str())
                .bind(nv.model.as_str())
                .bind(nv.version)
                .bind(k.as_str())
                .bind(*v)
                .execute(&mut **tx)
                .await?;
        }
        Ok(Registered::Created)
    }

    /// Archives (`archived = true`) or restores a version. An archived
    /// version cannot hold an alias.
    pub async fn set_archived(
        &self,
        tenant: &str,
        model: &str,
        version: i64,
        archived: bool,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            let status = version_status(tx, tenant, model, version).await?;
            let want = if archived { "archived" } else { "ready" };
            if status == want {
                return Err(StoreError::Conflict(format!(
                    "{model}@{version} is already {want}"
                )));
            }
            if archived {
                let held = aliases_of(tx, tenant, model, Some(version)).await?;
                if !held.is_empty() {
                    return Err(StoreError::Conflict(deployed_message(
                        model, version, &held,
                    )));
                }
                let live = deployments_of(tx, tenant, model, Some(version)).await?;
                if !live.is_empty() {
                    return Err(StoreError::Conflict(in_use_message(
                        model,
                        Some(version),
                        &live,
                    )));
                }
            }
            sqlx::query(
                "UPDATE versions SET status = $1 WHERE tenant = $2 AND model = $3 AND version = $4",
            )
            .bind(want)
            .bind(tenant)
            .bind(model)
            .bind(version)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
        .await;
        m.finish(out).await
    }

    /// Deletes one version (or, with `version = None`, every version and the
    /// model), refused while any alias or live deployment points at what
    /// would go (under the tenant lock, which deployments are created
    /// under too, so neither can slip past the other). Returns the
    /// blob digests no version of the tenant references any more.
    pub async fn delete(
        &self,
        tenant: &str,
        model: &str,
        version: Option<i64>,
        entry: AuditEntry,
    ) -> Result<Orphans> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            match version {
                Some(v) => {
                    version_status(tx, tenant, model, v).await?;
                }
                None => {
                    let m =
                        sqlx::query("SELECT 1 AS one FROM models WHERE tenant = $1 AND name = $2")
                            .bind(tenant)
                            .bind(model)
                            .fetch_optional(&mut **tx)
                            .await?;
                    if m.is_none() {
                        return Err(not_found_model(model));
                    }
                }
            }
            let held = aliases_of(tx, tenant, model, version).await?;
            if !held.is_empty() {
                return Err(StoreError::Conflict(match version {
                    Some(v) => deployed_message(model, v, &held),
                    None => format!(
                        "model {model} is deployed ({}); remove its aliases first",
                        held.iter()
                            .map(|(a, v)| format!("{a} -> {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }));
            }
            let live = deployments_of(tx, tenant, model, version).await?;
            if !live.is_empty() {
                return Err(StoreError::Conflict(in_use_message(model, version, &live)));
            }
            let digests: Vec<String> = version_scope(
                "SELECT DISTINCT digest FROM version_artifacts",
                tenant,
                model,
                version,
            )
            .query_scalar()
            .fetch_all(&mut **tx)
            .await?;
            for table in [
                "version_artifacts",
                "version_tags",
                "version_metrics",
                "versions",
            ] {
                version_scope(&format!("DELETE FROM {table}"), tenant, model, version)
                    .query()
                    .execute(&mut **tx)
                    .await?;
            }
            let left: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) AS n FROM versions WHERE tenant = $1 AND model = $2",
            )
            .bind(tenant)
            .bind(model)
            .fetch_one(&mut **tx)
            .await?;
            if left == 0 {
                sqlx::query("DELETE FROM models WHERE tenant = $1 AND name = $2")
                    .bind(tenant)
                    .bind(model)
                    .execute(&mut **tx)
                    .await?;
            }
            let mut orphans = Vec::new();
            for d in digests {
                if !super::gc::blob_referenced(tx, tenant, &d).await? {
                    orphans.push(d);
                }
            }
            Ok(orphans)
        }
        .await;
        m.finish(out).await
    }
}

impl Store {
    /// The highest version number of `model`, archived ones included.
    pub async fn max_version(&self, tenant: &str, model: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(version) AS v FROM versions WHERE tenant = $1 AND model = $2",
        )
        .bind(tenant)
        .bind(model)
        .fetch_one(self.pool())
        .await?)
    }
}
