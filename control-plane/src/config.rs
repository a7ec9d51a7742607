//! `ferry server` configuration: a TOML file, overridden by flags and
//! environment variables (clap reads `FERRY_*`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("no data directory: pass --data DIR (or set data = \"DIR\" in the config file)")]
    NoData,
    #[error("tls_cert and tls_key go together: give both or neither (--tls-cert, --tls-key)")]
    HalfTls,
}

/// The file form; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub database: Option<String>,
    pub artifacts: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub max_upload_bytes: Option<u64>,
    pub rate_limit_per_minute: Option<u32>,
    pub root_tenant: Option<String>,
    pub db_max_connections: Option<u32>,
    /// Names and addresses the fleet's QUIC certificate carries
    /// (`--quic-name`); default: this host's name and the `--quic` address.
    pub quic_names: Option<Vec<String>>,
    /// TLS certificate chain (PEM) for the REST API; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the REST API; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Networks (CIDR) retraining webhooks may reach although they are
    /// loopback, private, link-local, unique-local, multicast or
    /// unspecified.
    pub webhook_allow: Option<Vec<String>>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The resolved configuration the server runs with.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub http: SocketAddr,
    pub data: PathBuf,
    /// `sqlite://DATA/ferry.db` unless a PostgreSQL URL is given.
    pub database: String,
    /// `None`: `DATA/artifacts` on the local disk.
    pub artifacts: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub max_upload_bytes: u64,
    pub rate_limit_per_minute: u32,
    pub root_tenant: String,
    pub db_max_connections: u32,
    /// First admin token for an empty database (`FERRY_BOOTSTRAP_TOKEN`).
    pub bootstrap_token: Option<String>,
    /// MQTT broker and telemetry ingest (`crate::telemetry`).
    pub telemetry: crate::telemetry::TelemetryOptions,
    /// Serve the REST API over TLS with this certificate chain and key
    /// (PEM); plain HTTP when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Internal networks (CIDR) retraining webhooks may reach.
    pub webhook_allow: Vec<String>,
}

pub const DEFAULT_HTTP: &str = "127.0.0.1:8470";
pub const DEFAULT_MAX_UPLOAD: u64 = 2 << 30;
pub const DEFAULT_RATE_LIMIT: u32 = 6000;

/// Flags win over the file; the file wins over defaults.
#[allow(clippy::too_many_arguments)]
pub fn resolve(
    file: FileConfig,
    http: Option<SocketAddr>,
    data: Option<PathBuf>,
    database: Option<String>,
    artifacts: Option<String>,
    s3_endpoint: Option<String>,
    max_upload_bytes: Option<u64>,
    rate_limit_per_minute: Option<u32>,
    bootstrap_token: Option<String>,
) -> Result<ServerConfig, ConfigError> {
    let data = data.or(file.data).ok_or(ConfigError::NoData)?;
    let database = database
        .or(file.database)
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data.join("ferry.db").display()));
    let fallback: SocketAddr = DEFAULT_HTTP
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8470)));
    Ok(ServerConfig {
        http: http.or(file.http).unwrap_or(fallback),
        data,
        database,
        artifacts: artifacts.or(file.artifacts),
        s3_endpoint: s3_endpoint.or(file.s3_endpoint),
        s3_region: file.s3_region,
        max_upload_bytes: max_upload_bytes
            .or(file.max_upload_bytes)
            .unwrap_or(DEFAULT_MAX_UPLOAD),
        rate_limit_per_minute: rate_limit_per_minute
            .or(file.rate_limit_per_minute)
            .unwrap_or(DEFAULT_RATE_LIMIT),
        root_tenant: file.root_tenant.unwrap_or_else(|| "default".into()),
        db_max_connections: file.db_max_connections.unwrap_or(16),
        bootstrap_token,
        telemetry: Default::default(),
        tls: tls_pair(file.tls_cert, file.tls_key)?,
        webhook_allow: file.webhook_allow.unwrap_or_default(),
    })
}

/// Both or neither of a certificate and its key.
pub fn tls_pair(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => Err(ConfigError::HalfTls),
    }
}
