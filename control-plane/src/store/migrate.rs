//! Schema migrations, run by sqlx's migrator at connection.
//!
//! Each backend has its own files (`migrations/sqlite`, `migrations/postgres`;
//! they differ in key collation), embedded in the binary. Databases created
//! before the switch recorded their migrations in `ferry_migrations`; the
//! first open adopts those into sqlx's `_sqlx_migrations` (same versions,
//! same schema) so the migrator does not run them again. `ferry_migrations`
//! is left in place, unused.

use super::{Backend, Result, Store};
use sqlx::migrate::{Migrate, Migration, MigrationType, Migrator};
use std::borrow::Cow;

/// (version, description, SQLite file, PostgreSQL file), in order.
const FILES: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../../migrations/sqlite/0001_registry.sql"),
        include_str!("../../migrations/postgres/0001_registry.sql"),
    ),
    (
        2,
        "telemetry",
        include_str!("../../migrations/sqlite/0002_telemetry.sql"),
        include_str!("../../migrations/postgres/0002_telemetry.sql"),
    ),
    (
        3,
        "fleet",
        include_str!("../../migrations/sqlite/0003_fleet.sql"),
        include_str!("../../migrations/postgres/0003_fleet.sql"),
    ),
    (
        4,
        "device_keys",
        include_str!("../../migrations/sqlite/0004_device_keys.sql"),
        include_str!("../../migrations/postgres/0004_device_keys.sql"),
    ),
    (
        5,
        "enrollment_token_revoke",
        include_str!("../../migrations/sqlite/0005_enrollment_token_revoke.sql"),
        include_str!("../../migrations/postgres/0005_enrollment_token_revoke.sql"),
    ),
    (
        6,
        "rollouts",
        include_str!("../../migrations/sqlite/0006_rollouts.sql"),
        include_str!("../../migrations/postgres/0006_rollouts.sql"),
    ),
    (
        7,
        "dashboard_sessions",
        include_str!("../../migrations/sqlite/0007_dashboard_sessions.sql"),
        include_str!("../../migrations/postgres/0007_dashboard_sessions.sql"),
    ),
    (
        8,
        "telemetry_rollups",
        include_str!("../../migrations/sqlite/0008_telemetry_rollups.sql"),
        include_str!("../../migrations/postgres/0008_telemetry_rollups.sql"),
    ),
    (
        9,
        "sign_in_links",
        include_str!("../../migrations/sqlite/0009_sign_in_links.sql"),
        include_str!("../../migrations/postgres/0009_sign_in_links.sql"),
    ),
    (
        10,
        "device_sessions",
        include_str!("../../migrations/sqlite/0010_device_sessions.sql"),
        include_str!("../../migrations/postgres/0010_device_sessions.sql"),
    ),
    (
        11,
        "device_runtimes",
        include_str!("../../migrations/sqlite/0011_device_runtimes.sql"),
        include_str!("../../migrations/postgres/0011_device_runtimes.sql"),
    ),
];

/// Migrations the store runs at start, in order.
pub const MIGRATION_COUNT: usize = FILES.len();

/// Serialises adopting replicas on PostgreSQL (the key the old runner used).
const ADOPT_LOCK: i64 = 7_261_906;

fn migrator(backend: Backend) -> Migrator {
    let migrations = FILES
        .iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

impl Store {
    pub(super) async fn migrate(&self) -> Result<()> {
        let migrator = migrator(self.backend);
        self.adopt_legacy(&migrator).await?;
        migrator.run(self.pool()).await?;
        Ok(())
    }

    /// Marks the migrations the old runner applied (`ferry_migrations`) as
    /// applied for sqlx, with the checksums of today's files.
    async fn adopt_legacy(&self, migrator: &Migrator) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(ADOPT_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let legacy = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'ferry_migrations'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'ferry_migrations'"
            }
        };
        let exists: i64 = sqlx::query_scalar(legacy).fetch_one(&mut *tx).await?;
        if exists == 0 {
            return Ok(());
        }
        tx.ensure_migrations_table().await?;
        let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM ferry_migrations")
            .fetch_all(&mut *tx)
            .await?;
        for m in migrator.iter().filter(|m| done.contains(&m.version)) {
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES ($1, $2, TRUE, $3, 0) ON CONFLICT (version) DO NOTHING",
            )
            .bind(m.version)
            .bind(m.description.to_string())
            .bind(m.checksum.to_vec())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applied migration versions, for `ferry server` start-up logs and tests.
    pub async fn migrations(&self) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
        )
        .fetch_all(self.pool())
        .await?)
    }
}
