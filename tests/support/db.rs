//! The control plane's database for one end-to-end test: SQLite in the data
//! directory (the embedded default) or a fresh PostgreSQL database on
//! 127.0.0.1:5432, created with `psql` and dropped after the test.

use std::process::Command;

/// Which database a test's control plane runs on.
pub enum Db {
    Sqlite,
    Postgres(PgDb),
}

impl Db {
    /// Environment for `ferry server`: empty for SQLite (its default).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Db::Sqlite => Vec::new(),
            Db::Postgres(pg) => vec![("FERRY_DATABASE", pg.url.clone())],
        }
    }

    /// `env` plus this database's variable, for [`crate::fleet::Server::start`].
    pub fn with<'a>(&'a self, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = env.to_vec();
        if let Db::Postgres(pg) = self {
            v.push(("FERRY_DATABASE", pg.url.as_str()));
        }
        v
    }

    /// Another, empty database of the same kind (for a second server).
    pub fn fresh(&self) -> Db {
        match self {
            Db::Sqlite => Db::Sqlite,
            Db::Postgres(_) => match PgDb::create() {
                Some(pg) => Db::Postgres(pg),
                None => panic!("PostgreSQL went away during the test"),
            },
        }
    }

    /// `ferry server` arguments selecting this database (none for SQLite).
    pub fn args(&self) -> Vec<&str> {
        match self {
            Db::Sqlite => Vec::new(),
            Db::Postgres(pg) => vec!["--database", pg.url.as_str()],
        }
    }

    /// A fresh PostgreSQL database, or `None` when no server answers
    /// outside CI (under `CI=true` a missing server fails the test).
    pub fn postgres() -> Option<Db> {
        match PgDb::create() {
            Some(pg) => {
                crate::used_service("PostgreSQL 127.0.0.1:5432");
                Some(Db::Postgres(pg))
            }
            None => {
                crate::skip_or_fail("PostgreSQL on 127.0.0.1:5432 (trust auth, database test)");
                None
            }
        }
    }
}

/// A database created for one test and dropped (with its connections) after.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

fn psql(admin: &str, sql: &str) -> bool {
    Command::new("psql")
        .args([admin, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl PgDb {
    fn create() -> Option<PgDb> {
        let admins = match std::env::var("FERRY_TEST_POSTGRES_URL") {
            Ok(u) => vec![u],
            Err(_) => vec![
                "postgres://postgres@127.0.0.1:5432/test".to_string(),
                "postgres://root@127.0.0.1:5432/test".to_string(),
            ],
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("ferry_e2e_{}_{nanos}", std::process::id());
        for admin in admins {
            if psql(&admin, &format!("CREATE DATABASE {name}")) {
                let (base, _) = admin.rsplit_once('/')?;
                return Some(PgDb {
                    url: format!("{base}/{name}"),
                    admin,
                    name,
                });
            }
        }
        None
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Runs test bodies `fn NAME(db: Db)` once on SQLite and once
/// on PostgreSQL: `on_both_databases!(NAME);` makes `NAME::sqlite` and
/// `NAME::postgres`.
#[macro_export]
macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::db::Db::Sqlite);
            }

            #[test]
            fn postgres() {
                if let Some(db) = $crate::db::Db::postgres() {
                    super::$name(db);
                }
            }
        }
    };
}
