//! The control plane's persistence layer: registry, fleet and telemetry
//! metadata on SQLite (embedded default) or PostgreSQL (scaled setup),
//! through one code path: sqlx's `Any` driver with SQL that both dialects
//! accept. Only this module writes SQL; callers get typed methods, one file
//! per noun.
//!
//! Every audited mutation goes through [`Store::mutation`]: one transaction
//! that first takes the tenant's write lock (an update of its audit-chain
//! head row), runs the change and appends the audit record before
//! committing, so the stored state and the audit trail never disagree, and
//! concurrent writers — tasks of one server or several replicas over one
//! PostgreSQL — are serialised per tenant.
//!
//! Time comes from the [`Clock`](crate::clock::Clock) given at connection.

mod alerts;
mod aliases;
mod audit;
pub mod device_index;
mod device_runtimes;
mod device_sessions;
pub mod fleet;
mod gc;
mod migrate;
mod models;
mod projects;
pub mod rollouts;
pub mod rollups;
mod sessions;
mod sql;
pub mod telemetry;
mod tokens;
mod trust;
mod versions;

pub use aliases::AliasRow;
pub use audit::AuditQuery;
pub use gc::Orphans;
pub use migrate::MIGRATION_COUNT;
pub use models::ModelSort;
pub use models::{Filters, MetricFilter, ModelSummary};
pub use projects::ProjectRow;
pub use sessions::SessionRow;
pub use tokens::TokenInfo;
pub use versions::{ArtifactRow, NewVersion, Registered, VersionRow};

use crate::audit::{AuditEntry, ChainHead, GENESIS};
use crate::changes::Changes;
use crate::clock::{SharedClock, SystemClock};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A failpoint fired (test builds with the `failpoints` feature only).
    #[cfg(feature = "failpoints")]
    #[error("injected failure at {0}")]
    Injected(&'static str),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A transaction of the store; inside [`Store::mutation`] it holds the
/// tenant's write lock.
type Tx = Transaction<'static, Any>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    clock: SharedClock,
    changes: Changes,
    /// Per tenant, the last audit record the dashboard's badge verified and
    /// when its full verification ran (`audit::verified_audit_chain`).
    audit_verified: Arc<Mutex<HashMap<String, (ChainHead, i64)>>>,
}

impl Store {
    /// [`Store::connect_with`] on the system clock.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(url, max_connections, SystemClock::shared()).await
    }

    /// Connects and runs pending migrations. `url` is `sqlite://PATH` (the
    /// file is created) or `postgres://…`; `clock` stamps every row and
    /// audit record this store writes.
    pub async fn connect_with(url: &str, max_connections: u32, clock: SharedClock) -> Result<Self> {
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
        let store = Self {
            pool,
            backend,
            clock,
            changes: Changes::new(),
            audit_verified: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Refreshes PostgreSQL's planner statistics, as autovacuum does a
    /// little after a bulk load (the seeders call it so that what they
    /// measure next is planned as a running server's queries are);
    /// nothing on SQLite.
    pub async fn analyze(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("ANALYZE").execute(self.pool()).await?;
        }
        Ok(())
    }

    /// The change feed: what this store just wrote that a live page shows.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Milliseconds since the epoch on the store's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms() as i64
    }

    /// The clock this store (and everything that shares it) reads time from.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Seconds since the epoch on the store's clock.
    fn now(&self) -> i64 {
        self.clock.now_secs() as i64
    }

    // ------------------------------------------------------- locking, audit

    /// Starts a transaction holding `tenant`'s write lock.
    async fn begin_locked(&self, tenant: &str) -> Result<Tx> {
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

    /// The one write path for audited changes: takes the lock of
    /// `entry.tenant` and returns the change in progress. The caller writes
    /// through [`Mutation::tx`] (and may fill in the entry's target or
    /// detail), then [`Mutation::finish`] appends the entry to the tenant's
    /// audit chain and commits. An error anywhere, the audit append
    /// included, or a mutation dropped unfinished, rolls the change back.
    async fn mutation(&self, entry: AuditEntry) -> Result<Mutation<'_>> {
        let tx = self.begin_locked(&entry.tenant).await?;
        Ok(Mutation {
            store: self,
            tx,
            entry,
        })
    }

    /// Creates the tenant row and its default project if missing.
    async fn ensure_tenant(&self, tx: &mut Tx, tenant: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenants (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(tenant)
        .bind(self.now())
        .execute(&mut **tx)
        .await?;
        sqlx::query("INSERT INTO projects (tenant, name, description, created_at) VALUES ($1, 'default', 'default project', $2) ON CONFLICT (tenant, name) DO NOTHING")
            .bind(tenant)
            .bind(self.now())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// An audited change in progress (see [`Store::mutation`]).
struct Mutation<'s> {
    store: &'s Store,
    /// The transaction, holding the tenant's write lock.
    tx: Tx,
    /// The record appended when the change commits.
    entry: AuditEntry,
}

impl Mutation<'_> {
    /// Commits `change`'s result with its audit record, or rolls back on
    /// its error.
    async fn finish<T>(self, change: Result<T>) -> Result<T> {
        let out = change?;
        let Mutation {
            store,
            mut tx,
            entry,
        } = self;
        store.append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// [`Mutation::finish`] for a change that may turn out to have nothing
    /// to do (`Ok(None)`: a cooldown gate held elsewhere, a row already
    /// there): then nothing is audited and the transaction rolls back.
    async fn finish_if<T>(self, change: Result<Option<T>>) -> Result<Option<T>> {
        match change? {
            Some(out) => self.finish(Ok(Some(out))).await,
            None => {
                self.tx.rollback().await?;
                Ok(None)
            }
        }
    }
}

fn not_found_model(name: &str) -> StoreError {
    StoreError::NotFound(format!("no model named {name:?}"))
}
