use crate::config::{self, FileConfig};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `ferry server`: the control plane.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TOML configuration file; flags and FERRY_* variables override it
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address for the REST API (port 0 picks a free port)
    #[arg(long, env = "FERRY_HTTP")]
    http: Option<SocketAddr>,
    /// Data directory: SQLite database, local artifacts, upload scratch
    #[arg(long, env = "FERRY_DATA")]
    data: Option<PathBuf>,
    /// PostgreSQL URL for the scaled setup (default: SQLite in --data)
    #[arg(long, env = "FERRY_DATABASE")]
    database: Option<String>,
    /// s3://BUCKET[/PREFIX] for artifacts (default: DATA/artifacts)
    #[arg(long, env = "FERRY_ARTIFACTS")]
    artifacts: Option<String>,
    /// S3 endpoint URL (MinIO, moto, …); AWS_ENDPOINT_URL works too
    #[arg(long, env = "FERRY_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// Largest bundle upload accepted, in bytes
    #[arg(long, env = "FERRY_MAX_UPLOAD_BYTES")]
    max_upload_bytes: Option<u64>,
    /// Requests per minute per token (0: unlimited)
    #[arg(long, env = "FERRY_RATE_LIMIT_PER_MINUTE")]
    rate_limit_per_minute: Option<u32>,
    /// Serve the REST API over TLS with this certificate chain (PEM); needs --tls-key
    #[arg(long, env = "FERRY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, env = "FERRY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// A network (CIDR, e.g. 10.20.0.0/16) retraining webhooks may reach
    /// although it is loopback, private, link-local, unique-local,
    /// multicast or unspecified (all refused otherwise); repeatable, or
    /// comma-separated in the variable
    #[arg(
        long = "webhook-allow",
        env = "FERRY_WEBHOOK_ALLOW",
        value_delimiter = ','
    )]
    webhook_allow: Vec<String>,
    /// Serve the fleet (device enrollment, desired state, downloads) over
    /// QUIC on this UDP address (port 0 picks a free port)
    #[arg(long, env = "FERRY_QUIC")]
    quic: Option<SocketAddr>,
    /// A DNS name or address the fleet's QUIC certificate is valid for
    /// (repeatable; FERRY_QUIC_NAME takes a comma-separated list). Devices
    /// verify it against the host they enroll with. Default: this host's
    /// name, the --quic address and loopback
    #[arg(long = "quic-name", env = "FERRY_QUIC_NAME", value_delimiter = ',')]
    quic_names: Vec<String>,
    #[command(flatten)]
    telemetry: crate::telemetry::TelemetryArgs,
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let quic_names = if args.quic_names.is_empty() {
        file.quic_names.take().unwrap_or_default()
    } else {
        args.quic_names.clone()
    };
    let mut cfg = config::resolve(
        file,
        args.http,
        args.data,
        args.database,
        args.artifacts,
        args.s3_endpoint,
        args.max_upload_bytes,
        args.rate_limit_per_minute,
        std::env::var("FERRY_BOOTSTRAP_TOKEN")
            .ok()
            .filter(|s| !s.is_empty()),
    )?;
    cfg.telemetry = args.telemetry.options();
    // Flags (and their variables) win over the file, as a pair.
    if args.tls_cert.is_some() || args.tls_key.is_some() {
        cfg.tls = config::tls_pair(args.tls_cert, args.tls_key)?;
    }
    if !args.webhook_allow.is_empty() {
        cfg.webhook_allow = args.webhook_allow;
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(crate::server::serve_with(
        cfg,
        args.quic
            .map(|q| crate::fleet::FleetOptions::new(q).with_names(&quic_names)),
    ))?;
    Ok(())
}
