//! Telemetry at the control plane: the embedded MQTT broker ([`broker`]) or
//! an external one (`--mqtt-url`), the ingest subscriber ([`ingest`]),
//! storage and evaluation ([`engine`]: drift policies, alerts, retraining
//! triggers), the pure policy checks ([`policy`], [`cron`]), webhook
//! delivery ([`webhook`]) and the REST routes ([`api`]).

pub mod admission;
pub mod api;
pub mod broker;
pub mod cron;
pub mod engine;
pub mod ingest;
pub mod metrics;
pub mod monitoring;
pub mod policy;
pub mod rollup;
pub mod service;
pub mod webhook;

use crate::store::Store;
use ferry_protocol::telemetry::BrokerUrl;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the embedded broker listens unless told otherwise (1883 is
/// Mosquitto's on most machines).
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1884";

#[derive(Clone, Debug, Default)]
pub struct TelemetryOptions {
    /// External broker `mqtt://[user[:pass]@]host[:port]` (or `mqtts://`
    /// for TLS); no embedded one.
    pub mqtt_url: Option<String>,
    /// CA (PEM) of an `mqtts://` broker; default: the system's roots.
    pub mqtt_ca: Option<PathBuf>,
    /// Embedded broker address (default [`DEFAULT_MQTT_LISTEN`]; port 0: any).
    pub mqtt_listen: Option<SocketAddr>,
    /// No broker, no ingest.
    pub disabled: bool,
    /// Broker URL for enrolling devices (default: the one in use).
    pub mqtt_advertise: Option<String>,
    /// MQTT version the ingest speaks to an external broker.
    pub mqtt_version: ferry_mqtt::Version,
    /// Client certificate and key (PEM) the ingest presents to an
    /// `mqtts://` broker that requires one (`ferry broker certs`).
    pub mqtt_cert: Option<PathBuf>,
    pub mqtt_key: Option<PathBuf>,
    /// Drift windows (and events) stored per device per minute.
    pub max_per_minute: Option<u32>,
    /// How long raw windows and each roll-up resolution are kept.
    pub retention: rollup::Retention,
    /// How often windows are rolled up (default 2 s).
    pub rollup_every: Option<std::time::Duration>,
}

/// `ferry server` telemetry flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TelemetryArgs {
    /// Use this external MQTT broker (mqtt://[user[:pass]@]host[:port], or mqtts://… for TLS) instead of the embedded one
    #[arg(long, env = "FERRY_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// CA certificate(s) (PEM) that signed an mqtts:// broker's certificate (default: the system's roots)
    #[arg(long, env = "FERRY_MQTT_CA")]
    pub mqtt_ca: Option<PathBuf>,
    /// Address of the embedded MQTT broker (default 127.0.0.1:1884; port 0 picks a free port)
    #[arg(long, env = "FERRY_MQTT_LISTEN")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Broker URL given to devices at enrollment when it differs from the one this server uses (e.g. the embedded broker on 0.0.0.0, or a NAT)
    #[arg(long, env = "FERRY_MQTT_ADVERTISE")]
    pub mqtt_advertise: Option<String>,
    /// Run without MQTT telemetry (no broker, no ingest)
    #[arg(long, env = "FERRY_NO_MQTT")]
    pub no_mqtt: bool,
    /// MQTT version for the external broker: auto (5, falling back to 3.1.1), 5 or 3.1.1
    #[arg(long, env = "FERRY_MQTT_VERSION", default_value = "auto")]
    pub mqtt_version: ferry_mqtt::Version,
    /// Client certificate (PEM) the ingest presents to an mqtts:// broker that requires one (see `ferry broker certs`)
    #[arg(long, env = "FERRY_MQTT_CERT", requires = "mqtt_key")]
    pub mqtt_cert: Option<PathBuf>,
    /// Private key (PKCS#8 PEM) of --mqtt-cert
    #[arg(long, env = "FERRY_MQTT_KEY", requires = "mqtt_cert")]
    pub mqtt_key: Option<PathBuf>,
    /// Most drift windows (and, apart, events) stored per device per minute of their own time; more are refused and counted
    #[arg(long, env = "FERRY_TELEMETRY_MAX_PER_MINUTE")]
    pub telemetry_max_per_minute: Option<u32>,
    /// How long telemetry is kept, in days: raw windows and the per-minute, per-hour and per-day roll-ups the charts read (names left out keep these defaults)
    #[arg(long, env = "FERRY_TELEMETRY_RETENTION", default_value = "raw=7d,minute=14d,hour=90d,day=400d", value_parser = parse_retention)]
    pub telemetry_retention: rollup::Retention,
    /// Milliseconds between roll-ups of new telemetry windows
    #[arg(
        long,
        env = "FERRY_ROLLUP_TICK_MS",
        default_value_t = 2000,
        hide = true
    )]
    pub rollup_tick_ms: u64,
}

impl TelemetryArgs {
    pub fn options(&self) -> TelemetryOptions {
        TelemetryOptions {
            mqtt_url: self.mqtt_url.clone(),
            mqtt_ca: self.mqtt_ca.clone(),
            mqtt_listen: self.mqtt_listen,
            disabled: self.no_mqtt,
            mqtt_advertise: self.mqtt_advertise.clone(),
            mqtt_version: self.mqtt_version,
            mqtt_cert: self.mqtt_cert.clone(),
            mqtt_key: self.mqtt_key.clone(),
            max_per_minute: self.telemetry_max_per_minute,
            retention: self.telemetry_retention,
            rollup_every: (self.rollup_tick_ms > 0)
                .then(|| std::time::Duration::from_millis(self.rollup_tick_ms)),
        }
    }
}

fn parse_retention(s: &str) -> Result<rollup::Retention, String> {
    rollup::Retention::parse(s)
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{0}")]
    Broker(#[from] broker::BrokerError),
    #[error("--mqtt-url: {reason}")]
    Url { reason: String },
    #[error("--mqtt-ca {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("--mqtt-ca needs an mqtts:// broker URL")]
    CaWithoutTls,
    #[error("--mqtt-cert/--mqtt-key {path}: {reason}")]
    ClientCert { path: PathBuf, reason: String },
    #[error("--mqtt-cert and --mqtt-key need an mqtts:// broker URL")]
    CertWithoutTls,
    #[error("MQTT client id file {path}: {source}")]
    ClientId {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The running telemetry side of a server.
pub struct Telemetry {
    pub engine: Arc<engine::Engine>,
    /// The broker as printed (never with a password).
    pub broker_url: String,
    /// `mqtt://host:port` (no credentials) that enrolling devices are
    /// given: `--mqtt-advertise`, else the broker in use.
    pub advertised_url: String,
    pub embedded: bool,
}

fn parse_url(url: &str) -> Result<BrokerUrl, TelemetryError> {
    url.parse().map_err(|reason| TelemetryError::Url { reason })
}

fn tls_config(
    ca: Option<&Path>,
    identity: Option<ferry_mqtt::ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, TelemetryError> {
    ferry_mqtt::tls_client_config(ca, &[], identity).map_err(|e| TelemetryError::Ca {
        path: e.path,
        reason: e.reason,
    })
}

/// The ingest's client certificate and PKCS#8 key, from PEM files.
fn client_identity(cert: &Path, key: &Path) -> Result<ferry_mqtt::ClientIdentity, TelemetryError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let bad = |path: &Path, e: rustls::pki_types::pem::Error| TelemetryError::ClientCert {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let cert_der = CertificateDer::from_pem_file(cert).map_err(|e| bad(cert, e))?;
    let key_der = PrivatePkcs8KeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
    Ok(ferry_mqtt::ClientIdentity {
        cert_der: cert_der.to_vec(),
        key_pkcs8_der: key_der.secret_pkcs8_der().to_vec(),
    })
}

/// The ingest's MQTT client id, kept in `DATA/telemetry/client-id`: its
/// persistent session (what the broker queued while this server was away)
/// is found again after a restart. Replicas have their own data
/// directories, hence their own sessions.
fn client_id(data: &Path) -> Result<String, TelemetryError> {
    let path = data.join("telemetry").join("client-id");
    let io = |source| TelemetryError::ClientId {
        path: path.clone(),
        source,
    };
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() && s.len() <= 64 {
            return Ok(s.to_string());
        }
    }
    let id = format!("ferry-server-{}", crate::auth::random_id("", 6));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&path, &id).map_err(io)?;
    Ok(id)
}

/// Starts the broker (embedded unless `--mqtt-url`), the ingest subscriber
/// and the scheduler tick, and says on stdout what is in use.
pub async fn start(
    store: &Store,
    opts: &TelemetryOptions,
    data: &Path,
) -> Result<Option<Telemetry>, TelemetryError> {
    if opts.disabled {
        println!("ferry server MQTT telemetry: off (--no-mqtt)");
        return Ok(None);
    }
    let (addr, url, embedded) = match &opts.mqtt_url {
        Some(u) => {
            let url = parse_url(u)?;
            let identity = match (&opts.mqtt_cert, &opts.mqtt_key) {
                (Some(c), Some(k)) if url.tls => Some(client_identity(c, k)?),
                (None, None) => None,
                _ => return Err(TelemetryError::CertWithoutTls),
            };
            let tls = match (url.tls, &opts.mqtt_ca) {
                (true, ca) => Some(tls_config(ca.as_deref(), identity)?),
                (false, Some(_)) => return Err(TelemetryError::CaWithoutTls),
                (false, None) => None,
            };
            let shown = url.to_string();
            (
                ingest::BrokerAddr {
                    url,
                    tls,
                    version: opts.mqtt_version,
                },
                shown,
                false,
            )
        }
        None => {
            let default: SocketAddr = DEFAULT_MQTT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 1884)));
            let listen = opts.mqtt_listen.unwrap_or(default);
            let bound = match broker::start(listen) {
                Ok(a) => a,
                // The default being taken is no reason to refuse to start.
                Err(broker::BrokerError::InUse { .. }) if opts.mqtt_listen.is_none() => {
                    let any = SocketAddr::new(listen.ip(), 0);
                    let a = broker::start(any)?;
                    println!("ferry server MQTT: {listen} is in use; embedded broker moved to {a}");
                    a
                }
                Err(e) => return Err(e.into()),
            };
            (
                ingest::BrokerAddr {
                    url: BrokerUrl {
                        host: bound.ip().to_string(),
                        port: bound.port(),
                        username: None,
                        password: None,
                        tls: false,
                    },
                    tls: None,
                    // rumqttd's listener here speaks 3.1.1 only.
                    version: ferry_mqtt::Version::V311,
                },
                format!("mqtt://{bound}"),
                true,
            )
        }
    };
    let advertised = match &opts.mqtt_advertise {
        Some(u) => {
            let mut a = parse_url(u)?;
            a.username = None;
            a.password = None;
            a.to_string()
        }
        None => {
            // The server's own credentials are not the devices'.
            let mut a = addr.url.clone();
            a.username = None;
            a.password = None;
            a.to_string()
        }
    };
    println!(
        "ferry server MQTT telemetry: {} broker at {url}",
        if embedded {
            "embedded (rumqttd)"
        } else {
            "external"
        }
    );
    let engine = engine::Engine::with_limit(
        store.clone(),
        store.clock().clone(),
        opts.max_per_minute
            .unwrap_or(admission::DEFAULT_MAX_PER_MINUTE),
    );
    let client_id = client_id(data)?;
    tokio::spawn(ingest::run(engine.clone(), addr, client_id));
    tokio::spawn(rollup::run(
        store.clone(),
        opts.retention,
        opts.rollup_every
            .unwrap_or(std::time::Duration::from_secs(2)),
    ));
    let e2 = engine.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = e2.tick().await {
                tracing::error!(error = %e, "telemetry schedule tick failed");
            }
        }
    });
    Ok(Some(Telemetry {
        engine,
        broker_url: url,
        advertised_url: advertised,
        embedded,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let a = parse_url("mqtt://u:p@127.0.0.1:1883").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 1883));
        assert_eq!(a.username.as_deref(), Some("u"));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://x:y").is_err());
    }

    #[test]
    fn client_id_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let a = client_id(d.path()).unwrap();
        assert!(a.starts_with("ferry-server-"));
        assert_eq!(client_id(d.path()).unwrap(), a);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(client_id(other.path()).unwrap(), a);
    }
}
