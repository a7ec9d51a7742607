//! Drift and health telemetry: windows on the inference path
//! ([`window`]), device events ([`events`]), a bounded sled outbox
//! ([`outbox`]) and the MQTT publisher ([`publisher`]). Payloads are `ferry_protocol::telemetry`'s JSON types,
//! documented in `docs/telemetry.md`.
//!
//! Configuration: the `[telemetry]` table of `agent.toml`, overridden by
//! `--mqtt-url`, `--tenant`, `--device`, `--window-rows`, `--window-secs`
//! (and `FERRY_AGENT_*` variables). Without a broker URL nothing is counted
//! and nothing is published.

pub mod events;
pub mod outbox;
pub mod publisher;
pub mod window;

pub use events::{DeviceEvent, EventSink};
pub use outbox::Outbox;
pub use publisher::{MqttUrl, Stats};
pub use window::{WindowConfig, Windows};

use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

pub const DEFAULT_OUTBOX_MAX: u64 = 10_000;

/// `[telemetry]` in `agent.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// `mqtt://[user[:pass]@]host[:port]`.
    pub mqtt_url: Option<String>,
    pub tenant: Option<String>,
    pub device: Option<String>,
    pub window_rows: Option<u64>,
    pub window_secs: Option<u64>,
    pub outbox_max: Option<u64>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub health_secs: Option<u64>,
    /// PEM CA certificate(s) for an `mqtts://` broker (default: the
    /// system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// `auto` (MQTT 5, falling back to 3.1.1), `5` or `3.1.1`.
    pub mqtt_version: Option<String>,
}

/// Telemetry flags of `ferry-agent run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TelemetryArgs {
    /// MQTT broker for drift and health telemetry: mqtt://[user[:pass]@]host[:port], or mqtts://… for TLS
    #[arg(long, env = "FERRY_AGENT_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// CA certificate(s) (PEM) that signed an mqtts:// broker's certificate (default: the system's roots)
    #[arg(long, env = "FERRY_AGENT_MQTT_CA")]
    pub mqtt_ca: Option<std::path::PathBuf>,
    /// Tenant (topic level `ferry/v1/{tenant}/…`)
    #[arg(long, env = "FERRY_AGENT_TENANT")]
    pub tenant: Option<String>,
    /// Device id (topic level `ferry/v1/{tenant}/{device}/…`; default: host name)
    #[arg(long, env = "FERRY_AGENT_DEVICE")]
    pub device: Option<String>,
    /// Close a drift window after this many rows (0: no row bound)
    #[arg(long, env = "FERRY_AGENT_WINDOW_ROWS")]
    pub window_rows: Option<u64>,
    /// Close a drift window after this many seconds (0: no time bound)
    #[arg(long, env = "FERRY_AGENT_WINDOW_SECS")]
    pub window_secs: Option<u64>,
    /// Most messages kept while the broker is unreachable (oldest dropped, counted)
    #[arg(long, env = "FERRY_AGENT_OUTBOX_MAX")]
    pub outbox_max: Option<u64>,
    /// MQTT version: auto (5, falling back to 3.1.1 when the broker refuses it), 5 or 3.1.1
    #[arg(long, env = "FERRY_AGENT_MQTT_VERSION")]
    pub mqtt_version: Option<ferry_mqtt::Version>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryConfigError {
    #[error("telemetry: {0}")]
    Url(String),
    #[error("telemetry: {what} {value:?} must be 1-128 of [A-Za-z0-9._-], not starting with '.'")]
    Name { what: &'static str, value: String },
    #[error("telemetry: a window needs a row or a time bound (window_rows or window_secs > 0)")]
    NoBound,
    #[error("telemetry: broker CA {path}: {reason}")]
    Ca {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("telemetry: --mqtt-ca needs an mqtts:// broker URL")]
    CaWithoutTls,
    #[error("telemetry: {0}")]
    Version(String),
    #[error("telemetry: device identity {path}: {reason}")]
    Identity {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// The resolved telemetry settings.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    pub url: MqttUrl,
    pub version: ferry_mqtt::Version,
    /// TLS to the broker (`mqtts://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub tenant: String,
    pub device: String,
    pub window: WindowConfig,
    pub outbox_max: u64,
    pub health_secs: u64,
    pub keep_alive_secs: u64,
    pub tick_ms: u64,
    pub max_backoff_secs: u64,
    /// At shutdown, how long to try publishing what is queued.
    pub drain_secs: u64,
    /// The enrolled device key: every message carries its signature
    /// (`"sig"`), which the control plane verifies. Without enrollment
    /// messages go unsigned, and the control plane refuses them.
    pub signer: Option<Arc<ed25519_dalek::SigningKey>>,
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| ferry_protocol::telemetry::is_topic_name(s))
        .unwrap_or_else(|| "device".into())
}

/// What enrollment told this device that telemetry falls back on (the
/// caller reads it from the fleet identity; telemetry does not depend on
/// the fleet module).
#[derive(Clone, Copy, Debug)]
pub struct Enrolled<'a> {
    pub mqtt_url: Option<&'a str>,
    pub tenant: &'a str,
    pub device_id: &'a str,
    /// The enrollment directory (`DATA/fleet`): `device.key` signs every
    /// message, and with `device.der` authenticates to an `mqtts://`
    /// broker, whose certificate `ca.der` (the fleet CA) may have issued.
    pub dir: &'a Path,
}

/// This device's CPU architecture and OS as health reports it
/// (`aarch64-linux`, `x86_64-linux`).
pub fn device_arch() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Flags win over the file, the file over the enrollment (broker, tenant,
/// device id); `None` when no broker is known.
pub fn resolve(
    file: Option<TelemetryFile>,
    args: &TelemetryArgs,
    enrolled: Option<Enrolled<'_>>,
) -> Result<Option<TelemetryConfig>, TelemetryConfigError> {
    let file = file.unwrap_or_default();
    let Some(url) = args
        .mqtt_url
        .clone()
        .or(file.mqtt_url)
        .or_else(|| enrolled.and_then(|i| i.mqtt_url.map(str::to_string)))
    else {
        return Ok(None);
    };
    let mut url: MqttUrl = url.parse().map_err(TelemetryConfigError::Url)?;
    if url.username.is_none() {
        url.username = file.username;
        url.password = file.password;
    }
    let tenant = args
        .tenant
        .clone()
        .or(file.tenant)
        .or_else(|| enrolled.map(|i| i.tenant.to_string()))
        .unwrap_or_else(|| "default".into());
    let device = args
        .device
        .clone()
        .or(file.device)
        .or_else(|| enrolled.map(|i| i.device_id.to_string()))
        .unwrap_or_else(hostname);
    for (what, value) in [("tenant", &tenant), ("device", &device)] {
        if !ferry_protocol::telemetry::is_topic_name(value) || value.starts_with('_') {
            return Err(TelemetryConfigError::Name {
                what,
                value: value.clone(),
            });
        }
    }
    let identity = enrolled.map(|e| load_identity(e.dir)).transpose()?;
    let ca = args.mqtt_ca.clone().or(file.ca_file);
    let tls = match (url.tls, ca) {
        (true, ca) => Some(tls_config(ca.as_deref(), identity.as_ref())?),
        (false, Some(_)) => return Err(TelemetryConfigError::CaWithoutTls),
        (false, None) => None,
    };
    let window = WindowConfig {
        rows: args.window_rows.or(file.window_rows).unwrap_or(1000),
        secs: args.window_secs.or(file.window_secs).unwrap_or(60),
    };
    if window.rows == 0 && window.secs == 0 {
        return Err(TelemetryConfigError::NoBound);
    }
    let version = match (args.mqtt_version, file.mqtt_version) {
        (Some(v), _) => v,
        (None, Some(v)) => v.parse().map_err(TelemetryConfigError::Version)?,
        (None, None) => ferry_mqtt::Version::Auto,
    };
    Ok(Some(TelemetryConfig {
        url,
        version,
        tls,
        tenant,
        device,
        window,
        outbox_max: args
            .outbox_max
            .or(file.outbox_max)
            .unwrap_or(DEFAULT_OUTBOX_MAX),
        health_secs: file.health_secs.unwrap_or(30),
        keep_alive_secs: 5,
        tick_ms: 100,
        max_backoff_secs: 2,
        drain_secs: 5,
        signer: identity.map(|i| Arc::new(i.key)),
    }))
}

/// An enrolled device's key, certificate and fleet CA.
struct DeviceIdentity {
    key: ed25519_dalek::SigningKey,
    key_der: Vec<u8>,
    cert_der: Vec<u8>,
    ca_der: Vec<u8>,
}

fn load_identity(dir: &Path) -> Result<DeviceIdentity, TelemetryConfigError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| TelemetryConfigError::Identity {
            path,
            reason: e.to_string(),
        })
    };
    let key_der = read("device.key")?;
    let key = ed25519_dalek::SigningKey::from_pkcs8_der(&key_der).map_err(|e| {
        TelemetryConfigError::Identity {
            path: dir.join("device.key"),
            reason: e.to_string(),
        }
    })?;
    Ok(DeviceIdentity {
        key,
        key_der,
        cert_der: read("device.der")?,
        ca_der: read("ca.der")?,
    })
}

/// TLS to the broker: `ca` (or the system's roots), plus, on an enrolled
/// device, the fleet CA and the device certificate as client certificate.
fn tls_config(
    ca: Option<&Path>,
    identity: Option<&DeviceIdentity>,
) -> Result<Arc<rustls::ClientConfig>, TelemetryConfigError> {
    let (roots, client) = match identity {
        Some(i) => (
            vec![i.ca_der.clone()],
            Some(ferry_mqtt::ClientIdentity {
                cert_der: i.cert_der.clone(),
                key_pkcs8_der: i.key_der.clone(),
            }),
        ),
        None => (Vec::new(), None),
    };
    ferry_mqtt::tls_client_config(ca, &roots, client).map_err(|e| TelemetryConfigError::Ca {
        path: e.path,
        reason: e.reason,
    })
}

/// A running telemetry task.
pub struct Running {
    pub outbox: Arc<Outbox>,
    /// Queues a device event (for `Agent::set_event_sink`).
    pub events: Arc<dyn EventSink>,
    pub stats: Arc<Stats>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Closes the windows, publishes what it can within the drain time, and
    /// marks the device offline.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Opens the outbox under `data_dir/telemetry`, enables the windows and
/// starts the publisher on the current runtime; queues a `started` event.
pub fn start(
    cfg: TelemetryConfig,
    windows: Arc<Windows>,
    data_dir: &Path,
) -> Result<Running, outbox::OutboxError> {
    let outbox = Arc::new(Outbox::open(&data_dir.join("telemetry"), cfg.outbox_max)?);
    windows.enable(cfg.window);
    publisher::queue_event(
        &cfg,
        &outbox,
        "started",
        None,
        None,
        format!("ferry-agent {}", env!("CARGO_PKG_VERSION")),
    )?;
    let stats = Arc::new(Stats::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let events = Arc::new(OutboxEvents {
        cfg: cfg.clone(),
        outbox: outbox.clone(),
    });
    println!(
        "ferry-agent telemetry to {} (MQTT version {}) as {}/{} (window: {} rows / {} s)",
        cfg.url, cfg.version, cfg.tenant, cfg.device, cfg.window.rows, cfg.window.secs
    );
    let task = tokio::spawn(publisher::run(
        cfg,
        windows,
        outbox.clone(),
        stats.clone(),
        rx,
    ));
    Ok(Running {
        outbox,
        events,
        stats,
        stop,
        task,
    })
}

/// Device events into the outbox, as `events` messages.
struct OutboxEvents {
    cfg: TelemetryConfig,
    outbox: Arc<Outbox>,
}

impl EventSink for OutboxEvents {
    fn record(&self, e: DeviceEvent) {
        if let Err(err) = publisher::queue_event(
            &self.cfg,
            &self.outbox,
            e.kind,
            e.model,
            e.version,
            e.detail,
        ) {
            tracing::error!(error = %err, kind = e.kind, "telemetry: queueing an event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enrollment writes the device key as rcgen (ring) serialises it; the
    /// telemetry signer reads the same key.
    #[test]
    fn the_enrollment_key_signs_telemetry() {
        let d = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(d.path().join("device.key"), key.serialize_der()).unwrap();
        std::fs::write(d.path().join("device.der"), b"cert").unwrap();
        std::fs::write(d.path().join("ca.der"), b"ca").unwrap();
        let id = load_identity(d.path()).unwrap();
        assert_eq!(
            id.key.verifying_key().to_bytes().as_slice(),
            key.public_key_raw()
        );
        let signed =
            ferry_protocol::telemetry::sign_payload("drift", b"{\"a\":1}", &id.key).unwrap();
        let pk: [u8; 32] = key.public_key_raw().try_into().unwrap();
        assert!(ferry_protocol::telemetry::verify_payload("drift", &signed, &pk).is_ok());
    }
}
