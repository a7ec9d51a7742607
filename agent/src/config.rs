//! Agent configuration: `agent.toml`, overridden by flags and `FERRY_AGENT_*`
//! environment variables (clap reads those), resolved before anything binds.

use crate::batching::{BatchPolicy, BatchingConfig};
use crate::inference_log::Durability;
use crate::plan_cache::CacheBounds;
use crate::serving::Role;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
pub const DEFAULT_LOG_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_KEEP_VERSIONS: usize = 3;
/// Most rows (the first dimension of an input) one infer request may carry.
pub const DEFAULT_MAX_BATCH_ROWS: u64 = 65_536;
/// The admin socket's file name in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// The admin bearer token's file name in the data directory.
pub const ADMIN_TOKEN: &str = "admin.token";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{what} {value:?} is not valid: {reason}")]
    Value {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("no trust root: give --trust or trust_root in the config file")]
    NoTrust,
}

/// `agent.toml`. Every field is optional; see `deploy/agent.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub unix_socket: Option<PathBuf>,
    /// The admin API's Unix socket (default `DATA/admin.sock`, mode 0600).
    pub admin_socket: Option<PathBuf>,
    /// An optional loopback TCP port for the admin API; every request needs
    /// the bearer token in `DATA/admin.token`.
    pub admin_listen: Option<String>,
    /// Host names (besides localhost, 127.0.0.1 and [::1]) the inference
    /// port answers to, e.g. the device's name on the LAN.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub trust_root: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    /// Most rows one infer request may carry, for every model.
    pub max_batch_rows: Option<u64>,
    /// Per-model overrides of `max_batch_rows`.
    #[serde(default)]
    pub model_max_batch_rows: std::collections::BTreeMap<String, u64>,
    pub keep_versions: Option<usize>,
    /// Threads the kernels of a model run on, shared by all requests
    /// (default: one per core).
    pub threads: Option<usize>,
    /// Bounds of the per-shape plan cache of each model whose graph
    /// does not type with symbolic shapes.
    #[serde(default)]
    pub plan_cache: PlanCacheConfig,
    /// `text` or `json`.
    pub log_format: Option<String>,
    #[serde(default)]
    pub inference_log: LogConfig,
    /// Bundles side-loaded at start, in order.
    #[serde(default)]
    pub bundles: Vec<BundleConfig>,
    /// Dynamic batching per model name (`*`: every other model); off for
    /// a model not named.
    #[serde(default)]
    pub batching: std::collections::BTreeMap<String, BatchFile>,
    /// Drift and health telemetry over MQTT (`crate::telemetry`).
    pub telemetry: Option<crate::telemetry::TelemetryFile>,
    /// `auto`, `tract` or `burn` (`crate::engine_choice`).
    pub engine: Option<crate::engine_choice::EngineChoice>,
    /// The burn engine's backend: `cuda`, `wgpu` or `cpu`.
    pub gpu_backend: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub max_bytes: Option<u64>,
    pub sample_rate: Option<f64>,
    pub durability: Option<Durability>,
    pub flush_every_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCacheConfig {
    /// Most plans kept per model.
    pub plans: Option<usize>,
    /// Most bytes of plans kept per model; each plan is charged the model
    /// file's size (the weights it packs for itself).
    pub max_bytes: Option<u64>,
}

/// `[batching."model"]`: see `crate::batching`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    /// Most rows (summed over requests) per run.
    pub max_batch: usize,
    /// Longest the oldest request waits for more, in microseconds
    /// (default 2000).
    pub max_delay_us: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    pub path: PathBuf,
    #[serde(default = "champion")]
    pub role: Role,
    pub split: Option<f64>,
}

fn champion() -> Role {
    Role::Champion
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub admin_socket: PathBuf,
    pub admin_listen: Option<SocketAddr>,
    pub allowed_hosts: Vec<String>,
    pub data_dir: PathBuf,
    pub trust_root: PathBuf,
    pub max_body_bytes: usize,
    pub max_batch_rows: u64,
    pub model_max_batch_rows: std::collections::BTreeMap<String, u64>,
    pub keep_versions: usize,
    pub json_logs: bool,
    pub log_max_bytes: u64,
    pub sample_rate: f64,
    pub durability: Durability,
    pub flush_every_ms: u64,
    /// Kernel threads (at least 1).
    pub threads: usize,
    pub plan_cache: CacheBounds,
    pub bundles: Vec<BundleConfig>,
    pub batching: BatchingConfig,
    pub engine: crate::engine_choice::EngineSelect,
}

/// Values given on the command line or in the environment; `None` = not
/// given, fall back to the file, then the default.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub unix_socket: Option<PathBuf>,
    pub admin_socket: Option<PathBuf>,
    pub admin_listen: Option<String>,
    /// Added to the file's list.
    pub allowed_hosts: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub trust_root: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    pub max_batch_rows: Option<u64>,
    pub keep_versions: Option<usize>,
    pub json_logs: Option<bool>,
    pub log_max_bytes: Option<u64>,
    pub sample_rate: Option<f64>,
    pub durability: Option<Durability>,
    pub flush_every_ms: Option<u64>,
    pub threads: Option<usize>,
    pub plan_cache_plans: Option<usize>,
    pub plan_cache_bytes: Option<u64>,
    pub bundles: Vec<BundleConfig>,
    /// `--batch MODEL=ROWS[:DELAY_US]`, over the file's entries.
    pub batch: Vec<String>,
    pub engine: Option<crate::engine_choice::EngineChoice>,
    pub gpu_backend: Option<String>,
}

pub fn resolve(file: FileConfig, o: Overrides) -> Result<AgentConfig, ConfigError> {
    let listen = o.listen.or(file.listen);
    let listen = match listen.as_deref() {
        // An explicit "none" serves on the Unix socket only.
        Some("none") | Some("") => None,
        Some(s) => Some(
            s.parse()
                .map_err(|e: std::net::AddrParseError| ConfigError::Value {
                    what: "listen address",
                    value: s.into(),
                    reason: e.to_string(),
                })?,
        ),
        None => Some(
            DEFAULT_LISTEN
                .parse()
                .map_err(|e: std::net::AddrParseError| ConfigError::Value {
                    what: "listen address",
                    value: DEFAULT_LISTEN.into(),
                    reason: e.to_string(),
                })?,
        ),
    };
    let sample_rate = o
        .sample_rate
        .or(file.inference_log.sample_rate)
        .unwrap_or(0.0);
    if !(0.0..=1.0).contains(&sample_rate) {
        return Err(ConfigError::Value {
            what: "sample rate",
            value: sample_rate.to_string(),
            reason: "must be between 0 and 1".into(),
        });
    }
    let json_logs = match o.json_logs {
        Some(b) => b,
        None => match file.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::Value {
                    what: "log_format",
                    value: other.into(),
                    reason: "use text or json".into(),
                })
            }
        },
    };
    let mut bundles = file.bundles;
    bundles.extend(o.bundles);
    let data_dir = o
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("ferry-agent-data"));
    let admin_listen = match o.admin_listen.or(file.admin_listen).as_deref() {
        None | Some("") | Some("none") => None,
        Some(s) => Some(loopback_admin(s)?),
    };
    let mut allowed_hosts = file.allowed_hosts;
    allowed_hosts.extend(o.allowed_hosts);
    for h in &allowed_hosts {
        if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return Err(ConfigError::Value {
                what: "allowed host",
                value: h.clone(),
                reason: "a host name, optionally with :port".into(),
            });
        }
    }
    let max_batch_rows = o
        .max_batch_rows
        .or(file.max_batch_rows)
        .unwrap_or(DEFAULT_MAX_BATCH_ROWS);
    if max_batch_rows == 0 || file.model_max_batch_rows.values().any(|n| *n == 0) {
        return Err(ConfigError::Value {
            what: "max_batch_rows",
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    let threads = o
        .threads
        .or(file.threads)
        .unwrap_or_else(crate::executor::default_threads);
    let defaults = CacheBounds::default();
    let plan_cache = CacheBounds {
        plans: o
            .plan_cache_plans
            .or(file.plan_cache.plans)
            .unwrap_or(defaults.plans),
        bytes: o
            .plan_cache_bytes
            .or(file.plan_cache.max_bytes)
            .unwrap_or(defaults.bytes),
    };
    for (what, zero) in [
        ("threads", threads == 0),
        ("plan_cache.plans", plan_cache.plans == 0),
    ] {
        if zero {
            return Err(ConfigError::Value {
                what,
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
    }
    let batching = batching(file.batching, &o.batch)?;
    let engine = crate::engine_choice::EngineSelect {
        choice: o
            .engine
            .or(file.engine)
            .unwrap_or(crate::engine_choice::EngineChoice::Auto),
        gpu_backend: o.gpu_backend.or(file.gpu_backend),
    };
    Ok(AgentConfig {
        batching,
        engine,
        listen,
        unix_socket: o.unix_socket.or(file.unix_socket),
        admin_socket: o
            .admin_socket
            .or(file.admin_socket)
            .unwrap_or_else(|| data_dir.join(ADMIN_SOCKET)),
        admin_listen,
        allowed_hosts,
        data_dir,
        max_batch_rows,
        model_max_batch_rows: file.model_max_batch_rows,
        trust_root: o
            .trust_root
            .or(file.trust_root)
            .ok_or(ConfigError::NoTrust)?,
        max_body_bytes: o
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY),
        keep_versions: o
            .keep_versions
            .or(file.keep_versions)
            .unwrap_or(DEFAULT_KEEP_VERSIONS),
        json_logs,
        log_max_bytes: o
            .log_max_bytes
            .or(file.inference_log.max_bytes)
            .unwrap_or(DEFAULT_LOG_MAX_BYTES),
        sample_rate,
        durability: o
            .durability
            .or(file.inference_log.durability)
            .unwrap_or_default(),
        flush_every_ms: o
            .flush_every_ms
            .or(file.inference_log.flush_every_ms)
            .unwrap_or(100),
        threads,
        plan_cache,
        bundles,
    })
}

/// The file's `[batching]` entries, then the `--batch` flags over them.
fn batching(
    file: std::collections::BTreeMap<String, BatchFile>,
    flags: &[String],
) -> Result<BatchingConfig, ConfigError> {
    let mut cfg = BatchingConfig::default();
    for (name, b) in file {
        let delay = b
            .max_delay_us
            .map_or(crate::batching::DEFAULT_MAX_DELAY, Duration::from_micros);
        let policy = BatchPolicy::new(b.max_batch, delay).map_err(|reason| ConfigError::Value {
            what: "batching",
            value: name.clone(),
            reason,
        })?;
        cfg.models.insert(name, policy);
    }
    for f in flags {
        let (name, policy) =
            BatchingConfig::parse_flag(f).map_err(|reason| ConfigError::Value {
                what: "--batch",
                value: f.clone(),
                reason,
            })?;
        cfg.models.insert(name, policy);
    }
    Ok(cfg)
}

/// The admin TCP address: loopback only (the token is not a reason to put
/// the admin API on the network).
fn loopback_admin(s: &str) -> Result<SocketAddr, ConfigError> {
    let bad = |reason: String| ConfigError::Value {
        what: "admin listen address",
        value: s.into(),
        reason,
    };
    let a: SocketAddr = s
        .parse()
        .map_err(|e: std::net::AddrParseError| bad(e.to_string()))?;
    if !a.ip().is_loopback() {
        return Err(bad("the admin port must be on a loopback address".into()));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_in() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            trust_root = "/etc/ferry/trust.root"
            [inference_log]
            max_bytes = 1000
            durability = "sync"
            [[bundles]]
            path = "a.ferry"
            [[bundles]]
            path = "b.ferry"
            role = "challenger"
            split = 0.25
            "#,
        )
        .unwrap();
        let c = resolve(
            file,
            Overrides {
                listen: Some("127.0.0.1:9001".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.unwrap().port(), 9001);
        assert_eq!(c.log_max_bytes, 1000);
        assert_eq!(c.durability, Durability::Sync);
        assert_eq!(c.bundles.len(), 2);
        assert_eq!(c.bundles[1].role, Role::Challenger);
        assert_eq!(c.keep_versions, DEFAULT_KEEP_VERSIONS);
    }

    #[test]
    fn batching_comes_from_the_file_and_flags_override_it() {
        let file: FileConfig = toml::from_str(
            r#"
            trust_root = "/etc/ferry/trust.root"
            [batching."resnet"]
            max_batch = 32
            [batching."*"]
            max_batch = 8
            max_delay_us = 500
            "#,
        )
        .unwrap();
        let c = resolve(
            file,
            Overrides {
                batch: vec!["resnet=64:100".into(), "yolo=16".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let p = |n: &str| {
            c.batching
                .for_model(n)
                .map(|p| (p.max_rows, p.max_delay.as_micros()))
        };
        assert_eq!(p("resnet"), Some((64, 100)));
        assert_eq!(p("yolo"), Some((16, 2000)));
        assert_eq!(p("anything-else"), Some((8, 500)));
        // Off unless configured.
        let none = resolve(
            toml::from_str(r#"trust_root = "/t""#).unwrap(),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(none.batching.for_model("resnet"), None);
        for bad in [
            "resnet",
            "resnet=1",
            "resnet=x",
            "=8",
            "resnet=8:2000000",
            "resnet=8:-1",
        ] {
            let e = resolve(
                toml::from_str(r#"trust_root = "/t""#).unwrap(),
                Overrides {
                    batch: vec![bad.into()],
                    ..Default::default()
                },
            );
            assert!(e.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_sample_config_parses() {
        let file: FileConfig = toml::from_str(include_str!("../../deploy/agent.toml")).unwrap();
        let c = resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.listen.unwrap().port(), 8081);
        assert_eq!(c.sample_rate, 0.01);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<FileConfig>("listn = \"x\"").is_err());
        let bad = resolve(
            FileConfig::default(),
            Overrides {
                listen: Some("localhost".into()),
                trust_root: Some("t".into()),
                ..Default::default()
            },
        );
        assert!(matches!(bad, Err(ConfigError::Value { .. })));
    }

    #[test]
    fn admin_defaults_to_a_socket_in_the_data_dir_and_tcp_only_on_loopback() {
        let c = resolve(
            FileConfig::default(),
            Overrides {
                data_dir: Some("/d".into()),
                trust_root: Some("t".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.admin_socket, Path::new("/d/admin.sock"));
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.max_batch_rows, DEFAULT_MAX_BATCH_ROWS);
        for (addr, ok) in [
            ("127.0.0.1:9100", true),
            ("[::1]:9100", true),
            ("0.0.0.0:9100", false),
            ("192.168.1.5:9100", false),
        ] {
            let r = resolve(
                FileConfig::default(),
                Overrides {
                    admin_listen: Some(addr.into()),
                    trust_root: Some("t".into()),
                    ..Default::default()
                },
            );
            assert_eq!(r.is_ok(), ok, "{addr}: {r:?}");
        }
        let file: FileConfig = toml::from_str(
            r#"
            allowed_hosts = ["edge-7.local"]
            max_batch_rows = 100
            [model_max_batch_rows]
            fraud = 10
            "#,
        )
        .unwrap();
        let c = resolve(
            file,
            Overrides {
                trust_root: Some("t".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.allowed_hosts, vec!["edge-7.local".to_string()]);
        assert_eq!(
            (c.max_batch_rows, c.model_max_batch_rows["fraud"]),
            (100, 10)
        );
    }

    #[test]
    fn threads_and_plan_cache_bounds_come_from_file_then_flags() {
        let t = || Some(PathBuf::from("t"));
        let c = resolve(
            FileConfig::default(),
            Overrides {
                trust_root: t(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.threads, crate::executor::default_threads());
        assert_eq!(c.plan_cache, CacheBounds::default());
        let file = || -> FileConfig {
            toml::from_str(
                r#"
                threads = 2
                [plan_cache]
                plans = 4
                max_bytes = 1048576
                "#,
            )
            .unwrap()
        };
        let c = resolve(
            file(),
            Overrides {
                trust_root: t(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(
            c.plan_cache,
            CacheBounds {
                plans: 4,
                bytes: 1 << 20
            }
        );
        let c = resolve(
            file(),
            Overrides {
                trust_root: t(),
                threads: Some(1),
                plan_cache_plans: Some(9),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((c.threads, c.plan_cache.plans), (1, 9));
        for o in [
            Overrides {
                threads: Some(0),
                ..Default::default()
            },
            Overrides {
                plan_cache_plans: Some(0),
                ..Default::default()
            },
        ] {
            let r = resolve(
                FileConfig::default(),
                Overrides {
                    trust_root: t(),
                    ..o
                },
            );
            assert!(matches!(r, Err(ConfigError::Value { .. })), "{r:?}");
        }
    }
}
