//! The embedded MQTT broker (rumqttd, MQTT 3.1.1), so one machine needs
//! nothing else. It listens on a configurable address; 1883 is usually
//! Mosquitto's, so the default is 127.0.0.1:1884.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded MQTT broker: {addr} is in use ({source}); pick another address with --mqtt-listen, or use an external broker with --mqtt-url mqtt://HOST:PORT")]
    InUse {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded MQTT broker: {0} is not a loopback address; the embedded broker has no client certificates or topic ACLs, so it serves this machine only. For devices on the network run Mosquitto with deploy/mosquitto/ (`ferry broker certs`) and pass --mqtt-url mqtts://HOST:8883")]
    NotLoopback(SocketAddr),
    #[error("embedded MQTT broker configuration: {0}")]
    Config(String),
    #[error("embedded MQTT broker on {0} did not accept connections within 10 s")]
    NotUp(SocketAddr),
}

/// Starts rumqttd on `listen` (port 0: a free port) in its own threads and
/// waits until it accepts connections. Returns the address in use.
///
/// Loopback only: rumqttd here authenticates nobody, so on a network any
/// client could read every tenant's telemetry. Ingest verifies device
/// signatures either way; a network-facing broker is Mosquitto with the
/// shipped certificate and ACL config.
pub fn start(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    if !listen.ip().is_loopback() {
        return Err(BrokerError::NotLoopback(listen));
    }
    // rumqttd logs bind failures instead of returning them: check first.
    let probe = TcpListener::bind(listen).map_err(|source| BrokerError::InUse {
        addr: listen,
        source,
    })?;
    let addr = probe.local_addr().map_err(|source| BrokerError::InUse {
        addr: listen,
        source,
    })?;
    drop(probe);
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "ferry-v4"
listen = "{addr}"
next_connection_delay_ms = 0
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max}
max_inflight_count = 500
dynamic_filters = true
"#,
        max = ferry_protocol::telemetry::MAX_PAYLOAD * 4
    );
    let config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))?;
    std::thread::Builder::new()
        .name("ferry-mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotUp(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_facing_embedded_broker_is_refused() {
        for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:1884"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let e = start(addr).unwrap_err();
            assert!(matches!(e, BrokerError::NotLoopback(a) if a == addr), "{e}");
            assert!(e.to_string().contains("deploy/mosquitto"), "{e}");
        }
    }
}
