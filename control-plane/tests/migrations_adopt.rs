//! Databases created before sqlx's migrator (migrations recorded in
//! `ferry_migrations` by the old hand-written runner) still open: the store
//! adopts what they recorded and applies only what is missing.
#![allow(clippy::unwrap_used)]

mod support;

use ferry::store::Store;
use sqlx::Connection;
use support::Backend;

const SQLITE: [&str; 3] = [
    include_str!("../migrations/sqlite/0001_registry.sql"),
    include_str!("../migrations/sqlite/0002_telemetry.sql"),
    include_str!("../migrations/sqlite/0003_fleet.sql"),
];
const POSTGRES: [&str; 3] = [
    include_str!("../migrations/postgres/0001_registry.sql"),
    include_str!("../migrations/postgres/0002_telemetry.sql"),
    include_str!("../migrations/postgres/0003_fleet.sql"),
];
const NAMES: [&str; 3] = ["registry", "telemetry", "fleet"];

/// What the old runner left after applying the first `applied` migrations,
/// plus one token.
fn legacy_sql(files: &[&str; 3], applied: usize) -> String {
    let mut sql = String::new();
    for f in &files[..applied] {
        sql += f;
        sql += "\n";
    }
    sql += "CREATE TABLE ferry_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL);\n";
    for (i, name) in NAMES.iter().enumerate().take(applied) {
        sql += &format!(
            "INSERT INTO ferry_migrations (version, name, applied_at) VALUES ({}, '{name}', 1);\n",
            i + 1
        );
    }
    sql += "INSERT INTO tenants (name, created_at) VALUES ('acme', 1);\n";
    sql += "INSERT INTO tokens (id, tenant, name, role, hash, created_at, created_by) \
            VALUES ('tok_old', 'acme', 'old', 'admin', 'h', 1, 'bootstrap');\n";
    sql
}

/// A database URL holding the legacy state.
async fn legacy(b: &Backend, dir: &std::path::Path, applied: usize) -> String {
    match b {
        Backend::Sqlite => {
            let url = format!("sqlite://{}?mode=rwc", dir.join("old.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(&legacy_sql(&SQLITE, applied))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            url
        }
        Backend::Postgres(db) => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql(&legacy_sql(&POSTGRES, applied))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            db.url.clone()
        }
    }
}

async fn fully_migrated_legacy_database_opens(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = legacy(&b, dir.path(), 3).await;
    for _ in 0..2 {
        let store = Store::connect(&url, 2).await.unwrap();
        assert_eq!(store.migrations().await.unwrap(), every_migration());
        assert_eq!(store.token_count().await.unwrap(), 1);
        assert!(store.devices("acme").await.unwrap().is_empty());
    }
}

async fn partly_migrated_legacy_database_gets_the_rest(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = legacy(&b, dir.path(), 2).await;
    let store = Store::connect(&url, 2).await.unwrap();
    assert_eq!(store.migrations().await.unwrap(), every_migration());
    assert_eq!(store.token_count().await.unwrap(), 1);
    // Migration 3 (fleet) ran.
    assert!(store.devices("acme").await.unwrap().is_empty());
}

both_backends!(
    fully_migrated_legacy_database_opens,
    partly_migrated_legacy_database_gets_the_rest,
);

/// 1 to the last migration the binary has.
fn every_migration() -> Vec<i64> {
    (1..=ferry::store::MIGRATION_COUNT as i64).collect()
}
