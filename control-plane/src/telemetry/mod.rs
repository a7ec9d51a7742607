//! Telemetry at the control plane: the embedded MQTT broker ([`broker`]) or
//! an external one (`--mqtt-url`), the ingest subscriber ([`ingest`]),
//! storage and evaluation ([`engine`]: drift policies, alerts, retraining
//! triggers), the pure policy checks ([`policy`], [`cron`]), webhook
//! delivery ([`webhook`]) and the REST routes ([`api`]).

pub mod api;
pub mod broker;
pub mod cron;
pub mod engine;
pub mod ingest;
pub mod policy;
pub mod webhook;

use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the embedded broker listens unless told otherwise (1883 is
/// Mosquitto's on most machines).
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1884";

#[derive(Clone, Debug, Default)]
pub struct TelemetryOptions {
    /// External broker `mqtt://[user[:pass]@]host[:port]`; no embedded one.
    pub mqtt_url: Option<String>,
    /// Embedded broker address (default [`DEFAULT_MQTT_LISTEN`]; port 0: any).
    pub mqtt_listen: Option<SocketAddr>,
    /// No broker, no ingest.
    pub disabled: bool,
}

/// `ferry server` telemetry flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TelemetryArgs {
    /// Use this external MQTT broker (mqtt://[user[:pass]@]host[:port]) instead of the embedded one
    #[arg(long, env = "FERRY_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// Address of the embedded MQTT broker (default 127.0.0.1:1884; port 0 picks a free port)
    #[arg(long, env = "FERRY_MQTT_LISTEN")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Run without MQTT telemetry (no broker, no ingest)
    #[arg(long, env = "FERRY_NO_MQTT")]
    pub no_mqtt: bool,
}

impl TelemetryArgs {
    pub fn options(&self) -> TelemetryOptions {
        TelemetryOptions {
            mqtt_url: self.mqtt_url.clone(),
            mqtt_listen: self.mqtt_listen,
            disabled: self.no_mqtt,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{0}")]
    Broker(#[from] broker::BrokerError),
    #[error("--mqtt-url {url:?}: {reason}")]
    Url { url: String, reason: String },
}

/// The running telemetry side of a server.
pub struct Telemetry {
    pub engine: Arc<engine::Engine>,
    /// `mqtt://host:port` agents should publish to.
    pub broker_url: String,
    pub embedded: bool,
}

fn parse_url(url: &str) -> Result<ingest::BrokerAddr, TelemetryError> {
    let err = |reason: &str| TelemetryError::Url {
        url: url.into(),
        reason: reason.into(),
    };
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| err("must start with mqtt://"))?
        .trim_end_matches('/');
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (username, password) = match user.map(|u| u.split_once(':')) {
        Some(Some((a, b))) => (Some(a.to_string()), Some(b.to_string())),
        Some(None) => (user.map(str::to_string), None),
        None => (None, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| err("bad port"))?),
        None => (hostport, 1883),
    };
    if host.is_empty() {
        return Err(err("no host"));
    }
    Ok(ingest::BrokerAddr {
        host: host.into(),
        port,
        username,
        password,
    })
}

/// Starts the broker (embedded unless `--mqtt-url`), the ingest subscriber
/// and the scheduler tick, and says on stdout what is in use.
pub async fn start(
    store: &Store,
    opts: &TelemetryOptions,
) -> Result<Option<Telemetry>, TelemetryError> {
    if opts.disabled {
        println!("ferry server MQTT telemetry: off (--no-mqtt)");
        return Ok(None);
    }
    let (addr, url, embedded) = match &opts.mqtt_url {
        Some(u) => {
            let a = parse_url(u)?;
            (a, u.clone(), false)
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
                    host: bound.ip().to_string(),
                    port: bound.port(),
                    username: None,
                    password: None,
                },
                format!("mqtt://{bound}"),
                true,
            )
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
    let engine = engine::Engine::new(store.clone(), engine::system_clock());
    let client_id = format!(
        "ferry-server-{}-{}",
        std::process::id(),
        crate::auth::random_id("", 3)
    );
    tokio::spawn(ingest::run(engine.clone(), addr, client_id));
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
}
