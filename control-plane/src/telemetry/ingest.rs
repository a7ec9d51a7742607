//! The control plane's MQTT subscriber: a persistent session
//! (`clean_session = false`) subscribed to every tenant's drift, health and
//! event topics at QoS 1, acknowledging each message only after the engine
//! has stored it, so the broker redelivers what a crash interrupted.

use super::engine::Engine;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;

pub const SUBSCRIPTIONS: [&str; 3] = [
    "ferry/v1/+/+/drift",
    "ferry/v1/+/+/health",
    "ferry/v1/+/+/events",
];

/// Broker address for the ingest client.
#[derive(Clone, Debug)]
pub struct BrokerAddr {
    pub url: ferry_protocol::telemetry::BrokerUrl,
    /// TLS to the broker (`mqtts://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Runs forever, reconnecting with backoff.
pub async fn run(engine: Arc<Engine>, broker: BrokerAddr, client_id: String) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut o = MqttOptions::new(client_id.clone(), broker.url.host.clone(), broker.url.port);
        if let Some(tls) = &broker.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_session(false);
        o.set_manual_acks(true);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(100);
        if let Some(u) = &broker.url.username {
            o.set_credentials(u.clone(), broker.url.password.clone().unwrap_or_default());
        }
        let (client, mut el) = AsyncClient::new(o, 256);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(200);
                    for t in SUBSCRIPTIONS {
                        if let Err(e) = client.try_subscribe(t, QoS::AtLeastOnce) {
                            tracing::error!(topic = t, error = %e, "telemetry subscribe failed");
                        }
                    }
                    if let Ok(mut g) = engine.mqtt.lock() {
                        *g = Some(client.clone());
                    }
                    tracing::info!(broker = %broker.url, "telemetry ingest connected");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    match engine.ingest(&p.topic, &p.payload).await {
                        Ok(_) => {}
                        // A store failure is not acknowledged: the broker
                        // redelivers after reconnect.
                        Err(super::engine::IngestError::Store(e)) => {
                            tracing::error!(topic = %p.topic, error = %e, "telemetry not stored; reconnecting for redelivery");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(topic = %p.topic, error = %e, "telemetry message refused");
                        }
                    }
                    if let Err(e) = client.try_ack(&p) {
                        tracing::warn!(error = %e, "telemetry ack not queued");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry ingest disconnected; reconnecting");
                    break;
                }
            }
        }
        if let Ok(mut g) = engine.mqtt.lock() {
            *g = None;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
