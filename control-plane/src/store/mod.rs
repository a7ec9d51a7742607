//! Registry metadata on SQLite (embedded default) or PostgreSQL (scaled
//! setup), through one code path: sqlx's `Any` driver with SQL that both
//! dialects accept.
//!
//! Every mutation runs in a transaction that first takes the tenant's write
//! lock (an update of its audit-chain head row) and appends its audit record
//! before committing, so the registry state and the audit trail never
//! disagree, and concurrent writers — tasks of one server or several
//! replicas over one PostgreSQL — are serialised per tenant.

use crate::audit::{AuditEntry, AuditRecord, ChainHead, GENESIS};
use crate::auth::{Principal, Role};
use serde::Serialize;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row, Transaction};
use std::collections::BTreeMap;

/// Migrations the store runs at start, in order; each is recorded once in
/// `ferry_migrations`.
pub const MIGRATION_COUNT: usize = MIGRATIONS.len();

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../../migrations/0001_registry.sql"),
    ),
    (
        2,
        "telemetry",
        include_str!("../../migrations/0002_telemetry.sql"),
    ),
    (3, "fleet", include_str!("../../migrations/0003_fleet.sql")),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration {version} ({name}): {source}")]
    Migration {
        version: i64,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// A bound parameter of a query assembled at run time.
#[derive(Clone, Debug)]
enum P {
    S(String),
    I(i64),
    F(f64),
}

fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    ps: &'q [P],
) -> Query<'q, Any, AnyArguments<'q>> {
    for p in ps {
        q = match p {
            P::S(s) => q.bind(s.as_str()),
            P::I(i) => q.bind(*i),
            P::F(f) => q.bind(*f),
        };
    }
    q
}

/// Placeholder list builder: `ph.push(P::S(..))` returns `$n`.
#[derive(Default)]
struct Params(Vec<P>);
impl Params {
    fn push(&mut self, p: P) -> String {
        self.0.push(p);
        format!("${}", self.0.len())
    }
}

fn now() -> i64 {
    crate::now_unix() as i64
}

// ---------------------------------------------------------------- rows

#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub project: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub latest_version: Option<i64>,
    pub versions: i64,
    pub aliases: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VersionRow {
    pub model: String,
    pub version: i64,
    pub digest: String,
    #[serde(skip)]
    pub header: String,
    #[serde(skip)]
    pub manifest: String,
    pub size: i64,
    pub status: String,
    pub created_at: i64,
    pub created_by: String,
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ArtifactRow {
    pub name: String,
    pub digest: String,
    pub len: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AliasRow {
    pub alias: String,
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProjectRow {
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub models: i64,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registered {
    Created,
    /// An archived version with the same digest was pushed again.
    Restored,
}

/// A comparison on a version metric (`auc>=0.9`).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFilter {
    pub key: String,
    pub op: &'static str,
    pub value: f64,
}

/// Filters shared by model and version listings.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub name_prefix: Option<String>,
    pub query: Option<String>,
    pub project: Option<String>,
    /// `(key, Some(value))` or `(key, None)` for "has the tag".
    pub tags: Vec<(String, Option<String>)>,
    pub aliases: Vec<String>,
    pub metrics: Vec<MetricFilter>,
    pub include_archived: bool,
}

#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub after_seq: Option<i64>,
    pub limit: i64,
}

/// Blob paths that no version references any more, to delete under the
/// tenant lock (see [`Store::collect_garbage`]).
pub type Orphans = Vec<String>;

impl Store {
    /// Connects and runs pending migrations. `url` is `sqlite://PATH` (the
    /// file is created) or `postgres://…`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let mut opts = AnyPoolOptions::new().max_connections(max_connections);
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA busy_timeout = 30000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let store = Self { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<()> {
        // Serialise migrating replicas on PostgreSQL.
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7261906)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS ferry_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let done: Vec<i64> = sqlx::query("SELECT version FROM ferry_migrations")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("version"))
            .collect::<Result<_, _>>()?;
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            let key_type = match self.backend {
                Backend::Postgres => "TEXT COLLATE \"C\"",
                Backend::Sqlite => "TEXT",
            };
            let sql = sql.replace("{{TEXT_KEY}}", key_type);
            for stmt in split_sql(&sql) {
                sqlx::query(&stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| StoreError::Migration {
                        version: *version,
                        name,
                        source,
                    })?;
            }
            sqlx::query(
                "INSERT INTO ferry_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(*version)
            .bind(*name)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applied migration versions, for `ferry server` start-up logs and tests.
    pub async fn migrations(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT version FROM ferry_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>("version").map_err(Into::into))
            .collect()
    }

    // ------------------------------------------------------- locking, audit

    /// Starts a transaction holding `tenant`'s write lock.
    async fn begin_locked(&self, tenant: &str) -> Result<Transaction<'static, Any>> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("UPDATE audit_heads SET seq = seq WHERE tenant = $1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            sqlx::query(
                "INSERT INTO audit_heads (tenant, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (tenant) DO NOTHING",
            )
            .bind(tenant)
            .bind(GENESIS)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE audit_heads SET seq = seq WHERE tenant = $1")
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    async fn append(tx: &mut Transaction<'static, Any>, entry: AuditEntry) -> Result<AuditRecord> {
        let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE tenant = $1")
            .bind(entry.tenant.as_str())
            .fetch_one(&mut **tx)
            .await?;
        let seq: i64 = row.try_get("seq")?;
        let prev: String = row.try_get("hash")?;
        let r = entry.seal(seq + 1, now(), &prev);
        sqlx::query(
            "INSERT INTO audit (tenant, seq, at, request_id, actor, action, target, outcome, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(r.tenant.as_str())
        .bind(r.seq)
        .bind(r.at)
        .bind(r.request_id.as_str())
        .bind(r.actor.as_str())
        .bind(r.action.as_str())
        .bind(r.target.as_str())
        .bind(r.outcome.as_str())
        .bind(r.detail.as_str())
        .bind(r.prev_hash.as_str())
        .bind(r.hash.as_str())
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE audit_heads SET seq = $1, hash = $2 WHERE tenant = $3")
            .bind(r.seq)
            .bind(r.hash.as_str())
            .bind(r.tenant.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(r)
    }

    /// Appends one record on its own (refusals, and actions with nothing
    /// else to write).
    pub async fn audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let mut tx = self.begin_locked(&entry.tenant.clone()).await?;
        let r = Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(r)
    }

    pub async fn audit_head(&self, tenant: &str) -> Result<ChainHead> {
        let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => ChainHead {
                seq: r.try_get("seq")?,
                hash: r.try_get("hash")?,
            },
            None => ChainHead {
                seq: 0,
                hash: GENESIS.to_string(),
            },
        })
    }

    pub async fn audit_list(&self, tenant: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut ps = Params::default();
        let mut sql = format!(
            "SELECT tenant, seq, at, request_id, actor, action, target, outcome, detail, prev_hash, hash FROM audit WHERE tenant = {}",
            ps.push(P::S(tenant.into()))
        );
        if let Some(a) = &q.action {
            sql += &format!(" AND action = {}", ps.push(P::S(a.clone())));
        }
        if let Some(o) = &q.outcome {
            sql += &format!(" AND outcome = {}", ps.push(P::S(o.clone())));
        }
        if let Some(s) = q.after_seq {
            sql += &format!(" AND seq > {}", ps.push(P::I(s)));
        }
        sql += &format!(" ORDER BY seq LIMIT {}", ps.push(P::I(q.limit)));
        let rows = bind_all(sqlx::query(&sql), &ps.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_row).collect()
    }

    // ------------------------------------------------------ tenants, tokens

    pub async fn token_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM tokens")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    async fn ensure_tenant(tx: &mut Transaction<'static, Any>, tenant: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenants (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(tenant)
        .bind(now())
        .execute(&mut **tx)
        .await?;
        sqlx::query("INSERT INTO projects (tenant, name, description, created_at) VALUES ($1, 'default', 'default project', $2) ON CONFLICT (tenant, name) DO NOTHING")
            .bind(tenant)
            .bind(now())
            .execute(&mut **tx)
            .await?;
        Ok(())
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
        let mut tx = self.begin_locked(tenant).await?;
        Self::ensure_tenant(&mut tx, tenant).await?;
        let id = crate::auth::random_id("tok_", 8);
        let n = sqlx::query(
            "INSERT INTO tokens (id, tenant, name, role, hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, 'bootstrap') ON CONFLICT (hash) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(tenant)
        .bind(name)
        .bind(role.as_str())
        .bind(hash)
        .bind(now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            let mut entry = entry;
            entry.target = format!("token {id}");
            Self::append(&mut tx, entry).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Looks a token up by hash; revoked tokens and unknown ones are `None`.
    pub async fn principal(&self, hash: &str) -> Result<Option<Principal>> {
        let row = sqlx::query(
            "SELECT id, tenant, name, role FROM tokens WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let role: String = r.try_get("role")?;
        Ok(Some(Principal {
            token_id: r.try_get("id")?,
            token_name: r.try_get("name")?,
            tenant: r.try_get("tenant")?,
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
        mut entry: AuditEntry,
    ) -> Result<TokenInfo> {
        let mut tx = self.begin_locked(tenant).await?;
        Self::ensure_tenant(&mut tx, tenant).await?;
        let info = TokenInfo {
            id: crate::auth::random_id("tok_", 8),
            tenant: tenant.into(),
            name: name.into(),
            role: role.as_str().into(),
            created_at: now(),
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
        .execute(&mut *tx)
        .await?;
        entry.target = format!("token {} ({name}, {role})", info.id);
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(info)
    }

    pub async fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, tenant, name, role, created_at, created_by, revoked_at FROM tokens WHERE tenant = $1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant")?,
                    name: r.try_get("name")?,
                    role: r.try_get("role")?,
                    created_at: r.try_get("created_at")?,
                    created_by: r.try_get("created_by")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    pub async fn revoke_token(&self, tenant: &str, id: &str, entry: AuditEntry) -> Result<()> {
        let mut tx = self.begin_locked(tenant).await?;
        let n = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE tenant = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("no active token {id:?}")));
        }
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    // ----------------------------------------------------------- trust roots

    /// The tenant's current trust root: (version, signed bytes as hex).
    pub async fn trust_root(&self, tenant: &str) -> Result<Option<(i64, String)>> {
        let row = sqlx::query(
            "SELECT version, signed FROM trust_roots WHERE tenant = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("version")?, r.try_get("signed")?)))
            .transpose()
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
        let mut tx = self.begin_locked(tenant).await?;
        Self::ensure_tenant(&mut tx, tenant).await?;
        let current: Option<i64> =
            sqlx::query("SELECT MAX(version) AS v FROM trust_roots WHERE tenant = $1")
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?
                .try_get("v")?;
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
        .bind(now())
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    // -------------------------------------------------------------- projects

    pub async fn list_projects(&self, tenant: &str) -> Result<Vec<ProjectRow>> {
        let rows = sqlx::query(
            "SELECT p.name, p.description, p.created_at, \
             (SELECT COUNT(*) FROM models m WHERE m.tenant = p.tenant AND m.project = p.name) AS models \
             FROM projects p WHERE p.tenant = $1 ORDER BY p.name",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProjectRow {
                    name: r.try_get("name")?,
                    description: r.try_get("description")?,
                    created_at: r.try_get("created_at")?,
                    models: r.try_get("models")?,
                })
            })
            .collect()
    }

    pub async fn create_project(
        &self,
        tenant: &str,
        name: &str,
        description: &str,
        entry: AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin_locked(tenant).await?;
        Self::ensure_tenant(&mut tx, tenant).await?;
        let n = sqlx::query(
            "INSERT INTO projects (tenant, name, description, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, name) DO NOTHING",
        )
        .bind(tenant)
        .bind(name)
        .bind(description)
        .bind(now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(format!("project {name:?} exists")));
        }
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---------------------------------------------------------------- models

    /// Appends the filter conditions on a version alias `v` (columns
    /// `v.tenant`, `v.model`, `v.version`, `v.status`).
    fn version_conditions(f: &Filters, ps: &mut Params, sql: &mut String) {
        if !f.include_archived {
            *sql += " AND v.status = 'ready'";
        }
        for (k, v) in &f.tags {
            let k = ps.push(P::S(k.clone()));
            match v {
                Some(v) => {
                    let v = ps.push(P::S(v.clone()));
                    *sql += &format!(
                        " AND EXISTS (SELECT 1 FROM version_tags t WHERE t.tenant = v.tenant AND t.model = v.model AND t.version = v.version AND t.key = {k} AND t.value = {v})"
                    );
                }
                None => {
                    *sql += &format!(
                        " AND EXISTS (SELECT 1 FROM version_tags t WHERE t.tenant = v.tenant AND t.model = v.model AND t.version = v.version AND t.key = {k})"
                    );
                }
            }
        }
        for m in &f.metrics {
            let k = ps.push(P::S(m.key.clone()));
            let x = ps.push(P::F(m.value));
            *sql += &format!(
                " AND EXISTS (SELECT 1 FROM version_metrics mt WHERE mt.tenant = v.tenant AND mt.model = v.model AND mt.version = v.version AND mt.key = {k} AND mt.value {} {x})",
                m.op
            );
        }
        for a in &f.aliases {
            let a = ps.push(P::S(a.clone()));
            *sql += &format!(
                " AND EXISTS (SELECT 1 FROM aliases al WHERE al.tenant = v.tenant AND al.model = v.model AND al.version = v.version AND al.alias = {a})"
            );
        }
    }

    fn name_conditions(f: &Filters, ps: &mut Params, sql: &mut String, col: &str) {
        if let Some(p) = &f.name_prefix {
            let len = ps.push(P::I(p.chars().count() as i64));
            let p = ps.push(P::S(p.clone()));
            *sql += &format!(" AND substr({col}, 1, CAST({len} AS INTEGER)) = {p}");
        }
        if let Some(q) = &f.query {
            // Names use [A-Za-z0-9._-]; `_` is the only LIKE wildcard among them.
            let pat = format!("%{}%", q.to_lowercase().replace('_', "!_"));
            let p = ps.push(P::S(pat));
            *sql += &format!(" AND LOWER({col}) LIKE {p} ESCAPE '!'");
        }
    }

    /// Models matching `f`, by name, after `page_token` (a name), at most
    /// `limit`. A model matches when it has a version matching every
    /// version-level filter.
    pub async fn list_models(
        &self,
        tenant: &str,
        f: &Filters,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ModelSummary>> {
        let mut ps = Params::default();
        let t = ps.push(P::S(tenant.into()));
        let mut sql = format!(
            "SELECT m.name, m.project, m.created_at, m.updated_at, \
             (SELECT MAX(x.version) FROM versions x WHERE x.tenant = m.tenant AND x.model = m.name AND x.status = 'ready') AS latest, \
             (SELECT COUNT(*) FROM versions x WHERE x.tenant = m.tenant AND x.model = m.name) AS n \
             FROM models m WHERE m.tenant = {t}"
        );
        Self::name_conditions(f, &mut ps, &mut sql, "m.name");
        if let Some(p) = &f.project {
            sql += &format!(" AND m.project = {}", ps.push(P::S(p.clone())));
        }
        if let Some(a) = after {
            sql += &format!(" AND m.name > {}", ps.push(P::S(a.into())));
        }
        let mut vsql = String::from(
            " AND EXISTS (SELECT 1 FROM versions v WHERE v.tenant = m.tenant AND v.model = m.name",
        );
        Self::version_conditions(f, &mut ps, &mut vsql);
        sql += &vsql;
        sql += ")";
        sql += &format!(" ORDER BY m.name LIMIT {}", ps.push(P::I(limit)));
        let rows = bind_all(sqlx::query(&sql), &ps.0)
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<ModelSummary> = rows
            .iter()
            .map(|r| {
                Ok(ModelSummary {
                    name: r.try_get("name")?,
                    project: r.try_get("project")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                    latest_version: r.try_get("latest")?,
                    versions: r.try_get("n")?,
                    aliases: BTreeMap::new(),
                })
            })
            .collect::<Result<_>>()?;
        if let (Some(first), Some(last)) = (out.first(), out.last()) {
            let rows = sqlx::query(
                "SELECT model, alias, version FROM aliases WHERE tenant = $1 AND model >= $2 AND model <= $3",
            )
            .bind(tenant)
            .bind(first.name.as_str())
            .bind(last.name.as_str())
            .fetch_all(&self.pool)
            .await?;
            let mut by_model: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
            for r in &rows {
                by_model
                    .entry(r.try_get("model")?)
                    .or_default()
                    .insert(r.try_get("alias")?, r.try_get("version")?);
            }
            for m in &mut out {
                if let Some(a) = by_model.remove(&m.name) {
                    m.aliases = a;
                }
            }
        }
        Ok(out)
    }

    pub async fn model(&self, tenant: &str, name: &str) -> Result<ModelSummary> {
        // A model with only archived versions still shows.
        let row = sqlx::query(
            "SELECT m.name, m.project, m.created_at, m.updated_at, \
             (SELECT MAX(x.version) FROM versions x WHERE x.tenant = m.tenant AND x.model = m.name AND x.status = 'ready') AS latest, \
             (SELECT COUNT(*) FROM versions x WHERE x.tenant = m.tenant AND x.model = m.name) AS n \
             FROM models m WHERE m.tenant = $1 AND m.name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Err(not_found_model(name));
        };
        let aliases = self
            .aliases(tenant, name)
            .await?
            .into_iter()
            .map(|a| (a.alias, a.version))
            .collect();
        Ok(ModelSummary {
            name: r.try_get("name")?,
            project: r.try_get("project")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            latest_version: r.try_get("latest")?,
            versions: r.try_get("n")?,
            aliases,
        })
    }

    pub async fn aliases(&self, tenant: &str, model: &str) -> Result<Vec<AliasRow>> {
        let rows = sqlx::query(
            "SELECT alias, version, updated_at, updated_by FROM aliases WHERE tenant = $1 AND model = $2 ORDER BY alias",
        )
        .bind(tenant)
        .bind(model)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AliasRow {
                    alias: r.try_get("alias")?,
                    version: r.try_get("version")?,
                    updated_at: r.try_get("updated_at")?,
                    updated_by: r.try_get("updated_by")?,
                })
            })
            .collect()
    }

    async fn model_exists(&self, tenant: &str, model: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 AS one FROM models WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(model)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

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
        let mut ps = Params::default();
        let t = ps.push(P::S(tenant.into()));
        let m = ps.push(P::S(model.into()));
        let mut sql = format!(
            "SELECT v.model, v.version, v.digest, v.header, v.manifest, v.size, v.status, v.created_at, v.created_by \
             FROM versions v WHERE v.tenant = {t} AND v.model = {m}"
        );
        Self::version_conditions(f, &mut ps, &mut sql);
        if let Some(b) = before {
            sql += &format!(" AND v.version < {}", ps.push(P::I(b)));
        }
        sql += &format!(" ORDER BY v.version DESC LIMIT {}", ps.push(P::I(limit)));
        let rows = bind_all(sqlx::query(&sql), &ps.0)
            .fetch_all(&self.pool)
            .await?;
        let aliases = self.aliases(tenant, model).await?;
        rows.iter()
            .map(|r| {
                let mut v = version_row(r)?;
                v.aliases = aliases
                    .iter()
                    .filter(|a| a.version == v.version)
                    .map(|a| a.alias.clone())
                    .collect();
                Ok(v)
            })
            .collect()
    }

    pub async fn version(&self, tenant: &str, model: &str, version: i64) -> Result<VersionRow> {
        let row = sqlx::query(
            "SELECT model, version, digest, header, manifest, size, status, created_at, created_by \
             FROM versions WHERE tenant = $1 AND model = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(model)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Err(if self.model_exists(tenant, model).await? {
                StoreError::NotFound(format!("model {model:?} has no version {version}"))
            } else {
                not_found_model(model)
            });
        };
        let mut v = version_row(&r)?;
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
        let rows = sqlx::query(
            "SELECT name, digest, len FROM version_artifacts WHERE tenant = $1 AND model = $2 AND version = $3 ORDER BY idx",
        )
        .bind(tenant)
        .bind(model)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ArtifactRow {
                    name: r.try_get("name")?,
                    digest: r.try_get("digest")?,
                    len: r.try_get("len")?,
                })
            })
            .collect()
    }

    /// Records a verified version. `check_blobs` runs under the tenant lock
    /// after the rows are written and before the commit; it makes sure every
    /// artifact blob exists (re-uploading one that a concurrent garbage
    /// collection removed).
    pub async fn register<F, Fut>(
        &self,
        nv: &NewVersion,
        mut entry: AuditEntry,
        check_blobs: F,
    ) -> Result<Registered>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut tx = self.begin_locked(&nv.tenant).await?;
        Self::ensure_tenant(&mut tx, &nv.tenant).await?;
        let existing = sqlx::query(
            "SELECT digest, status FROM versions WHERE tenant = $1 AND model = $2 AND version = $3",
        )
        .bind(nv.tenant.as_str())
        .bind(nv.model.as_str())
        .bind(nv.version)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = if let Some(r) = existing {
            let digest: String = r.try_get("digest")?;
            let status: String = r.try_get("status")?;
            if digest == nv.digest && status == "archived" {
                sqlx::query(
                    "UPDATE versions SET status = 'ready' WHERE tenant = $1 AND model = $2 AND version = $3",
                )
                .bind(nv.tenant.as_str())
                .bind(nv.model.as_str())
                .bind(nv.version)
                .execute(&mut *tx)
                .await?;
                entry.detail = "re-registered an archived version".into();
                Registered::Restored
            } else if digest == nv.digest {
                return Err(StoreError::Conflict(format!(
                    "{}@{} is already registered with this bundle",
                    nv.model, nv.version
                )));
            } else {
                return Err(StoreError::Conflict(format!(
                    "{}@{} is already registered with a different bundle (sha256:{}); versions are immutable, publish a higher version",
                    nv.model, nv.version, digest
                )));
            }
        } else {
            sqlx::query("INSERT INTO projects (tenant, name, description, created_at) VALUES ($1, $2, '', $3) ON CONFLICT (tenant, name) DO NOTHING")
                .bind(nv.tenant.as_str())
                .bind(nv.project.as_str())
                .bind(now())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO models (tenant, name, project, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
                 ON CONFLICT (tenant, name) DO UPDATE SET updated_at = $4",
            )
            .bind(nv.tenant.as_str())
            .bind(nv.model.as_str())
            .bind(nv.project.as_str())
            .bind(now())
            .execute(&mut *tx)
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
            .bind(now())
            .bind(nv.created_by.as_str())
            .execute(&mut *tx)
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
                .execute(&mut *tx)
                .await?;
            }
            for (k, v) in &nv.tags {
                sqlx::query("INSERT INTO version_tags (tenant, model, version, key, value) VALUES ($1, $2, $3, $4, $5)")
                    .bind(nv.tenant.as_str())
                    .bind(nv.model.as_str())
                    .bind(nv.version)
                    .bind(k.as_str())
                    .bind(v.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            for (k, v) in &nv.metrics {
                sqlx::query("INSERT INTO version_metrics (tenant, model, version, key, value) VALUES ($1, $2, $3, $4, $5)")
                    .bind(nv.tenant.as_str())
                    .bind(nv.model.as_str())
                    .bind(nv.version)
                    .bind(k.as_str())
                    .bind(*v)
                    .execute(&mut *tx)
                    .await?;
            }
            Registered::Created
        };
        check_blobs().await.map_err(StoreError::Corrupt)?;
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn version_status(
        tx: &mut Transaction<'static, Any>,
        tenant: &str,
        model: &str,
        version: i64,
    ) -> Result<String> {
        let row = sqlx::query(
            "SELECT status FROM versions WHERE tenant = $1 AND model = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(model)
        .bind(version)
        .fetch_optional(&mut **tx)
        .await?;
        match row {
            Some(r) => Ok(r.try_get("status")?),
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

    async fn aliases_of(
        tx: &mut Transaction<'static, Any>,
        tenant: &str,
        model: &str,
        version: Option<i64>,
    ) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT alias, version FROM aliases WHERE tenant = $1 AND model = $2 ORDER BY alias",
        )
        .bind(tenant)
        .bind(model)
        .fetch_all(&mut **tx)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let v: i64 = r.try_get("version")?;
            if version.is_none_or(|x| x == v) {
                out.push((r.try_get("alias")?, v));
            }
        }
        Ok(out)
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
        mut entry: AuditEntry,
    ) -> Result<Option<i64>> {
        let mut tx = self.begin_locked(tenant).await?;
        let status = Self::version_status(&mut tx, tenant, model, version).await?;
        if status != "ready" {
            return Err(StoreError::Conflict(format!(
                "{model}@{version} is {status}; re-register it before promoting"
            )));
        }
        let current: Option<i64> = sqlx::query(
            "SELECT version FROM aliases WHERE tenant = $1 AND model = $2 AND alias = $3",
        )
        .bind(tenant)
        .bind(model)
        .bind(alias)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("version"))
        .transpose()?;
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
        .bind(now())
        .bind(by)
        .execute(&mut *tx)
        .await?;
        entry.detail = match current {
            Some(c) => format!("moved from version {c}"),
            None => "set".into(),
        };
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(current)
    }

    /// Removes an alias (undeploy). Returns the version it pointed at.
    pub async fn delete_alias(
        &self,
        tenant: &str,
        model: &str,
        alias: &str,
        entry: AuditEntry,
    ) -> Result<i64> {
        let mut tx = self.begin_locked(tenant).await?;
        let row = sqlx::query(
            "SELECT version FROM aliases WHERE tenant = $1 AND model = $2 AND alias = $3",
        )
        .bind(tenant)
        .bind(model)
        .bind(alias)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else {
            return Err(StoreError::NotFound(format!(
                "model {model:?} has no alias {alias:?}"
            )));
        };
        let v: i64 = r.try_get("version")?;
        sqlx::query("DELETE FROM aliases WHERE tenant = $1 AND model = $2 AND alias = $3")
            .bind(tenant)
            .bind(model)
            .bind(alias)
            .execute(&mut *tx)
            .await?;
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(v)
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
        let mut tx = self.begin_locked(tenant).await?;
        let status = Self::version_status(&mut tx, tenant, model, version).await?;
        let want = if archived { "archived" } else { "ready" };
        if status == want {
            return Err(StoreError::Conflict(format!(
                "{model}@{version} is already {want}"
            )));
        }
        if archived {
            let held = Self::aliases_of(&mut tx, tenant, model, Some(version)).await?;
            if !held.is_empty() {
                return Err(StoreError::Conflict(deployed_message(
                    model, version, &held,
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
        .execute(&mut *tx)
        .await?;
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes one version (or, with `version = None`, every version and the
    /// model), refused while any alias points at what would go. Returns the
    /// blob digests no version of the tenant references any more.
    pub async fn delete(
        &self,
        tenant: &str,
        model: &str,
        version: Option<i64>,
        entry: AuditEntry,
    ) -> Result<Orphans> {
        let mut tx = self.begin_locked(tenant).await?;
        match version {
            Some(v) => {
                Self::version_status(&mut tx, tenant, model, v).await?;
            }
            None => {
                let m = sqlx::query("SELECT 1 AS one FROM models WHERE tenant = $1 AND name = $2")
                    .bind(tenant)
                    .bind(model)
                    .fetch_optional(&mut *tx)
                    .await?;
                if m.is_none() {
                    return Err(not_found_model(model));
                }
            }
        }
        let held = Self::aliases_of(&mut tx, tenant, model, version).await?;
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
        let mut ps = Params::default();
        let t = ps.push(P::S(tenant.into()));
        let m = ps.push(P::S(model.into()));
        let mut cond = format!("tenant = {t} AND model = {m}");
        if let Some(v) = version {
            cond += &format!(" AND version = {}", ps.push(P::I(v)));
        }
        let digests: Vec<String> = bind_all(
            sqlx::query(&format!(
                "SELECT DISTINCT digest FROM version_artifacts WHERE {cond}"
            )),
            &ps.0,
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("digest"))
        .collect::<Result<_, _>>()?;
        for table in [
            "version_artifacts",
            "version_tags",
            "version_metrics",
            "versions",
        ] {
            bind_all(
                sqlx::query(&format!("DELETE FROM {table} WHERE {cond}")),
                &ps.0,
            )
            .execute(&mut *tx)
            .await?;
        }
        let left: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM versions WHERE tenant = $1 AND model = $2")
                .bind(tenant)
                .bind(model)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
        if left == 0 {
            sqlx::query("DELETE FROM models WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(model)
                .execute(&mut *tx)
                .await?;
        }
        let mut orphans = Vec::new();
        for d in digests {
            if !Self::blob_referenced(&mut tx, tenant, &d).await? {
                orphans.push(d);
            }
        }
        Self::append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(orphans)
    }

    async fn blob_referenced(
        tx: &mut Transaction<'static, Any>,
        tenant: &str,
        digest: &str,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 AS one FROM version_artifacts WHERE tenant = $1 AND digest = $2 LIMIT 1",
        )
        .bind(tenant)
        .bind(digest)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
    }

    /// Deletes each orphaned blob under the tenant lock, re-checking that no
    /// version registered since references it. `delete` removes one blob.
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
            if !Self::blob_referenced(&mut tx, tenant, &d).await? {
                delete(d.clone()).await.map_err(StoreError::Corrupt)?;
                removed.push(d);
            }
        }
        tx.commit().await?;
        Ok(removed)
    }
}

fn deployed_message(model: &str, version: i64, held: &[(String, i64)]) -> String {
    let names: Vec<&str> = held.iter().map(|(a, _)| a.as_str()).collect();
    format!(
        "{model}@{version} is deployed (alias {}); move or remove the alias first",
        names.join(", ")
    )
}

fn not_found_model(name: &str) -> StoreError {
    StoreError::NotFound(format!("no model named {name:?}"))
}

fn version_row(r: &AnyRow) -> Result<VersionRow> {
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

fn audit_row(r: &AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        tenant: r.try_get("tenant")?,
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        request_id: r.try_get("request_id")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// Splits a migration file into statements at `;` line ends, dropping
/// comment-only chunks.
fn split_sql(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if trimmed.ends_with(';') {
            out.push(cur.trim().trim_end_matches(';').to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}
