//! The control plane's MQTT subscriber: a persistent session (under MQTT 5
//! with a session that never expires) subscribed to every tenant's drift,
//! health and event topics at QoS 1, acknowledging each message only after
//! the engine has stored it, so the broker redelivers what a crash
//! interrupted.

use super::engine::Engine;
use ferry_mqtt::{Event, Negotiation, Version};
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
    pub version: Version,
}

/// Reconnect delays: `d` doubles from 200 ms to 5 s and each is drawn
/// from `[d/2, d)` (backon's jitter adds up to the delay again, hence the
/// halved bounds), so replicas cut off by a broker restart do not
/// reconnect in lockstep.
fn reconnect_backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(2500))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs forever, reconnecting with backoff.
pub async fn run(engine: Arc<Engine>, broker: BrokerAddr, client_id: String) {
    let mut backoff = reconnect_backoff();
    let mut negotiation = Negotiation::new(broker.version);
    let mut o = ferry_mqtt::Options::new(client_id, broker.url.clone());
    o.tls = broker.tls.clone();
    o.keep_alive = Duration::from_secs(10);
    o.clean = false;
    o.manual_acks = true;
    o.inflight = 100;
    o.request_capacity = 256;
    let mut announced = None;
    loop {
        let (client, mut conn) = ferry_mqtt::connect(&o, negotiation.next());
        let protocol = conn.protocol();
        // The event loop runs in its own task: acknowledgements wait for
        // room in the client's request queue, which only the event loop
        // drains. (Polling and acking in one task dropped acks under load,
        // and an MQTT 5 broker then stopped at the receive maximum.) The
        // channel is unbounded because a bounded one could deadlock with a
        // full request queue; the broker's flow control (receive maximum,
        // in-flight window) bounds what is unacknowledged.
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                let ev = conn.poll().await;
                let end = ev.is_err();
                if tx.send(ev).is_err() || end {
                    break;
                }
            }
        });
        let ended = loop {
            let Some(ev) = events.recv().await else {
                break None;
            };
            match ev {
                Ok(Event::Connected { session_present }) => {
                    backoff = reconnect_backoff();
                    // A kept session has its subscriptions already;
                    // subscribing again is harmless and covers a broker
                    // that lost them.
                    for t in SUBSCRIPTIONS {
                        if let Err(e) = client.try_subscribe(t) {
                            tracing::error!(topic = t, error = %e, "telemetry subscribe failed");
                        }
                    }
                    if let Ok(mut g) = engine.mqtt.lock() {
                        *g = Some(client.clone());
                    }
                    if announced != Some(client.protocol()) {
                        announced = Some(client.protocol());
                        println!(
                            "ferry server MQTT ingest: connected to {} with {}",
                            broker.url,
                            client.protocol()
                        );
                    }
                    tracing::info!(broker = %broker.url, protocol = %client.protocol(), session_present, "telemetry ingest connected");
                }
                Ok(Event::Message(m)) => {
                    match engine.ingest(&m.topic, &m.payload).await {
                        Ok(_) => {}
                        // A store failure is not acknowledged: the broker
                        // redelivers after reconnect.
                        Err(super::engine::IngestError::Store(e)) => {
                            tracing::error!(topic = %m.topic, error = %e, "telemetry not stored; reconnecting for redelivery");
                            break None;
                        }
                        // Counted in /metrics and audited once per minute
                        // per source: a flood must not flood the log either.
                        Err(e @ super::engine::IngestError::Refused(_)) => {
                            tracing::debug!(topic = %m.topic, error = %e, "telemetry message refused");
                        }
                        Err(e) => {
                            tracing::warn!(topic = %m.topic, error = %e, "telemetry message refused");
                        }
                    }
                    if let Err(e) = client.ack(&m).await {
                        tracing::warn!(error = %e, "telemetry ack not queued; reconnecting for redelivery");
                        break None;
                    }
                }
                Ok(_) => {}
                Err(e) => break Some(e),
            }
        };
        poller.abort();
        if let Some(e) = ended {
            tracing::warn!(error = %e, %protocol, "telemetry ingest disconnected; reconnecting");
            negotiation.failed(&e);
        }
        if let Ok(mut g) = engine.mqtt.lock() {
            *g = None;
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
    }
}
