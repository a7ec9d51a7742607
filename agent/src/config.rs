//! Agent configuration: `agent.toml`, overridden by flags and `FERRY_AGENT_*`
//! environment variables (clap reads those), resolved before anything binds.

use crate::inference_log::Durability;
use crate::serving::Role;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
pub const DEFAULT_LOG_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_KEEP_VERSIONS: usize = 3;

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
    pub data_dir: Option<PathBuf>,
    pub trust_root: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    pub keep_versions: Option<usize>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    #[serde(default)]
    pub inference_log: LogConfig,
    /// Bundles side-loaded at start, in order.
    #[serde(default)]
    pub bundles: Vec<BundleConfig>,
    /// Drift and health telemetry over MQTT (`crate::telemetry`).
    pub telemetry: Option<crate::telemetry::TelemetryFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub max_bytes: Option<u64>,
    pub sample_rate: Option<f64>,
    pub durability: Option<Durability>,
    pub flush_every_ms: Option<u64>,
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
    pub data_dir: PathBuf,
    pub trust_root: PathBuf,
    pub max_body_bytes: usize,
    pub keep_versions: usize,
    pub json_logs: bool,
    pub log_max_bytes: u64,
    pub sample_rate: f64,
    pub durability: Durability,
    pub flush_every_ms: u64,
    pub bundles: Vec<BundleConfig>,
}

/// Values given on the command line or in the environment; `None` = not
/// given, fall back to the file, then the default.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub unix_socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub trust_root: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    pub keep_versions: Option<usize>,
    pub json_logs: Option<bool>,
    pub log_max_bytes: Option<u64>,
    pub sample_rate: Option<f64>,
    pub durability: Option<Durability>,
    pub flush_every_ms: Option<u64>,
    pub bundles: Vec<BundleConfig>,
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
    Ok(AgentConfig {
        listen,
        unix_socket: o.unix_socket.or(file.unix_socket),
        data_dir: o
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("ferry-agent-data")),
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
        bundles,
    })
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
}
