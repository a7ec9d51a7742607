//! Version negotiation against real brokers: Mosquitto (MQTT 5) on
//! 127.0.0.1:1883 and an in-process rumqttd whose only listener speaks
//! 3.1.1.
#![allow(clippy::unwrap_used)]

use ferry_mqtt::{connect, Event, Negotiation, Options, Protocol, Version};
use ferry_protocol::telemetry::BrokerUrl;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn url(addr: SocketAddr) -> BrokerUrl {
    BrokerUrl {
        host: addr.ip().to_string(),
        port: addr.port(),
        username: None,
        password: None,
        tls: false,
    }
}

/// Connects as `Negotiation` decides until a CONNACK; the protocols tried.
async fn attempts(addr: SocketAddr, version: Version) -> Vec<(Protocol, bool)> {
    let mut n = Negotiation::new(version);
    let mut o = Options::new(format!("ferry-mqtt-test-{}", std::process::id()), url(addr));
    o.keep_alive = Duration::from_secs(5);
    let mut tried = Vec::new();
    for _ in 0..4 {
        let (client, mut conn) = connect(&o, n.next());
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match conn.poll().await {
                    Ok(Event::Connected { .. }) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .expect("a CONNACK or an error within 10 s");
        tried.push((client.protocol(), outcome.is_ok()));
        match outcome {
            Ok(()) => {
                let _ = client.try_disconnect();
                break;
            }
            Err(e) => n.failed(&e),
        }
    }
    tried
}

fn v311_only_broker() -> SocketAddr {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config: rumqttd::Config = toml::from_str(&format!(
        r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 1048576
max_segment_count = 10
[v4.1]
name = "v4"
listen = "{addr}"
next_connection_delay_ms = 0
[v4.1.connections]
connection_timeout_ms = 5000
max_payload_size = 65536
max_inflight_count = 100
dynamic_filters = true
"#
    ))
    .unwrap();
    std::thread::spawn(move || {
        let _ = rumqttd::Broker::new(config).start();
    });
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return addr;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("rumqttd did not listen on {addr}");
}

#[tokio::test]
async fn auto_falls_back_to_3_1_1_on_a_broker_without_mqtt_5() {
    let addr = v311_only_broker();
    assert_eq!(
        attempts(addr, Version::Auto).await,
        [(Protocol::V5, false), (Protocol::V311, true)]
    );
    // Pinned to 5, it never falls back.
    assert!(attempts(addr, Version::V5)
        .await
        .iter()
        .all(|&(p, ok)| p == Protocol::V5 && !ok));
}

#[tokio::test]
async fn auto_speaks_mqtt_5_to_mosquitto() {
    let addr: SocketAddr = "127.0.0.1:1883".parse().unwrap();
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        ferry_test_harness::skip_or_fail("Mosquitto on 127.0.0.1:1883");
        return;
    }
    ferry_test_harness::used_service("Mosquitto 127.0.0.1:1883");
    assert_eq!(attempts(addr, Version::Auto).await, [(Protocol::V5, true)]);
    assert_eq!(
        attempts(addr, Version::V311).await,
        [(Protocol::V311, true)]
    );
}

#[tokio::test]
async fn a_broker_that_is_down_does_not_change_the_version() {
    // Nothing listens on a port just released.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tried = attempts(addr, Version::Auto).await;
    assert_eq!(tried.len(), 4);
    assert!(
        tried.iter().all(|&(p, ok)| p == Protocol::V5 && !ok),
        "{tried:?}"
    );
}
