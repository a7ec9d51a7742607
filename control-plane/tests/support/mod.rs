//! Shared harness for the control plane's integration tests: real `ferry`
//! server processes over SQLite or a fresh PostgreSQL database, real signed
//! bundles built by the `ferry` CLI from the ONNX fixtures, and a small HTTP
//! helper.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

pub const ADMIN: &str = "fy_00000000000000000000000000000000000000000000000000000000000000a1";

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

pub fn ferry(args: &[&str]) -> Output {
    Command::new(ferry_bin()).args(args).output().unwrap()
}

pub fn ok(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A real dependency is missing: fail under `CI=true` (which
/// `scripts/test.sh` sets unless `FERRY_ALLOW_SKIP=1`); otherwise skip,
/// listed in `$FERRY_SKIP_LOG` for the script's summary.
pub fn missing(what: &str) {
    ferry_test_harness::skip_or_fail(what);
}

// ------------------------------------------------------------------ backends

pub enum Backend {
    Sqlite,
    Postgres(PgDb),
}

/// A database created for one test and dropped (with its connections) after.
pub struct PgDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDb {
    fn admin_urls() -> Vec<String> {
        if let Ok(u) = std::env::var("FERRY_TEST_POSTGRES_URL") {
            return vec![u];
        }
        vec![
            "postgres://postgres@127.0.0.1:5432/test".into(),
            "postgres://root@127.0.0.1:5432/test".into(),
        ]
    }

    pub async fn create() -> Option<PgDb> {
        use sqlx::Connection;
        for admin in Self::admin_urls() {
            let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await else {
                continue;
            };
            let name = format!("ferry_test_{}", ferry::auth::random_id("", 6));
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let _ = conn.close().await;
            let (base, _) = admin.rsplit_once('/').unwrap();
            return Some(PgDb {
                url: format!("{base}/{name}"),
                admin_url: admin,
                name,
            });
        }
        None
    }

    /// Runs SQL against the test database directly (to tamper with it).
    pub async fn exec(&self, sql: &str) -> u64 {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let n = sqlx::query(sql)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected();
        let _ = conn.close().await;
        n
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

impl Backend {
    /// A fresh PostgreSQL database, or `None` (after [`missing`]) when no
    /// server answers.
    pub async fn postgres() -> Option<Backend> {
        match PgDb::create().await {
            Some(db) => {
                used_service("PostgreSQL 127.0.0.1:5432");
                Some(Backend::Postgres(db))
            }
            None => {
                missing("PostgreSQL at 127.0.0.1:5432 (database test)");
                None
            }
        }
    }

    pub fn database_args(&self) -> Vec<String> {
        match self {
            Backend::Sqlite => vec![],
            Backend::Postgres(db) => vec!["--database".into(), db.url.clone()],
        }
    }

    /// Runs SQL directly against the server's database.
    pub async fn exec(&self, data: &Path, sql: &str) -> u64 {
        match self {
            Backend::Postgres(db) => db.exec(sql).await,
            Backend::Sqlite => {
                use sqlx::Connection;
                let url = format!("sqlite://{}", data.join("ferry.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                let n = sqlx::query(sql)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected();
                let _ = conn.close().await;
                n
            }
        }
    }
}

/// Generates `sqlite` and `postgres` tests for an `async fn NAME(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(b) = super::support::Backend::postgres().await {
                    super::$name(b).await
                }
            }
        }
    )*};
}

// ------------------------------------------------------------------ servers

pub struct Server {
    child: Child,
    pub url: String,
    pub data: PathBuf,
}

impl Server {
    /// Starts `ferry server` on a free port with `ADMIN` as bootstrap token.
    pub fn start(backend: &Backend, data: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec![
            "server".into(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--data".into(),
            data.display().to_string(),
        ];
        args.extend(backend.database_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, data, &[])
    }

    pub fn spawn(args: &[String], data: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(ferry_bin());
        cmd.args(args)
            .env("FERRY_BOOTSTRAP_TOKEN", ADMIN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        quiet_stderr(&mut child);
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("ferry server listening on ") {
                        break rest.split_whitespace().next().unwrap().to_string();
                    }
                }
                _ => {
                    let status = child.wait().unwrap();
                    panic!("ferry server exited before listening: {status}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url,
            data: data.to_path_buf(),
        }
    }

    pub fn api(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.url.clone(),
        }
    }

    /// Runs a `ferry` CLI command against this server.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        Command::new(ferry_bin())
            .args(args)
            .env("FERRY_SERVER", &self.url)
            .env("FERRY_TOKEN", token)
            .env("FERRY_CONFIG_DIR", self.data.join("cli-config"))
            .output()
            .unwrap()
    }

    pub fn cli_ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ http

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    pub async fn raw(&self, token: &str, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(token, "GET", path, None).await
    }

    pub async fn bytes(&self, token: &str, path: &str) -> (u16, Vec<u8>) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    }

    pub async fn push(&self, token: &str, bundle: &Path) -> (u16, Value) {
        self.raw(
            token,
            "POST",
            "/api/v1/models",
            std::fs::read(bundle).unwrap(),
        )
        .await
    }

    /// Creates a token; returns its secret.
    pub async fn token(&self, admin: &str, name: &str, role: &str, tenant: Option<&str>) -> String {
        let mut body = serde_json::json!({ "name": name, "role": role });
        if let Some(t) = tenant {
            body["tenant"] = t.into();
        }
        let (s, v) = self.call(admin, "POST", "/api/v1/tokens", Some(body)).await;
        assert_eq!(s, 201, "token create: {v}");
        v["token"].as_str().unwrap().to_string()
    }

    pub async fn push_trust(&self, token: &str, root: &Path) -> (u16, Value) {
        self.raw(
            token,
            "PUT",
            "/api/v1/trust-root",
            std::fs::read(root).unwrap(),
        )
        .await
    }
}

// ------------------------------------------------------------------ fixtures

/// Keys, trust roots and bundles, built once per test binary by the real
/// `ferry` CLI.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    bundles: Mutex<HashMap<String, PathBuf>>,
}

impl Fixture {
    pub fn get() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let p = |n: &str| dir.path().join(n).display().to_string();
            let keys = p("keys");
            for name in ["root", "root-b", "rogue-root", "pub", "pub-b", "rogue"] {
                ok(&["key", "generate", "--out", &keys, "--name", name]);
            }
            let init = |tenant: &str, root: &str, publisher: &str, version: &str, out: &str| {
                ok(&[
                    "trust",
                    "init",
                    "--root-key",
                    &p(&format!("keys/{root}.key")),
                    "--publisher",
                    &p(&format!("keys/{publisher}.pub")),
                    "--tenant",
                    tenant,
                    "--version",
                    version,
                    "--out",
                    &p(out),
                ]);
            };
            init("default", "root", "pub", "1", "default.root");
            init("default", "root", "pub", "2", "default-v2.root");
            init("default", "rogue-root", "rogue", "3", "forged-v3.root");
            init("beta", "root-b", "pub-b", "1", "beta.root");
            Fixture {
                dir,
                bundles: Mutex::new(HashMap::new()),
            }
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A bundle of `model` at `version`, signed by `key`, built from
    /// `onnx` (a fixture stem: bc_logreg, bc_forest, digits_mlp), with
    /// `extra` CLI arguments (`--metric`, `--tag`, …). Cached.
    pub fn bundle(
        &self,
        onnx: &str,
        model: &str,
        version: u64,
        key: &str,
        extra: &[&str],
    ) -> PathBuf {
        let id = format!(
            "{onnx}-{model}-{version}-{key}-{}",
            extra.join("_").replace(['=', '/', ' ', ':', '>', '<'], "-")
        );
        let mut cache = self.bundles.lock().unwrap();
        if let Some(p) = cache.get(&id) {
            return p.clone();
        }
        let out = self.path(&format!("{id}.ferry"));
        let model_file = fixtures().join(format!("{onnx}.onnx"));
        let baseline = fixtures().join(format!("{onnx}.baseline.csv"));
        let key_file = self.path(&format!("keys/{key}.key"));
        let version = version.to_string();
        let mut args: Vec<String> = vec![
            "bundle".into(),
            "build".into(),
            model_file.display().to_string(),
            "--name".into(),
            model.into(),
            "--version".into(),
            version,
            "--baseline".into(),
            baseline.display().to_string(),
            "--sign-with".into(),
            key_file.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&refs);
        cache.insert(id, out.clone());
        out
    }

    /// A bc_logreg bundle with a metric and a tag.
    pub fn simple(&self, model: &str, version: u64) -> PathBuf {
        self.bundle("bc_logreg", model, version, "pub", &[])
    }
}

pub use ferry_test_harness::{quiet_stderr, used_service};
