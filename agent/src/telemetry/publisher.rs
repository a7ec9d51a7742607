//! The MQTT publisher task: closes windows on time, queues summaries and
//! events in the [`Outbox`], and publishes the outbox in order with QoS 1,
//! one message in flight, deleting each only after the broker's PUBACK.
//!
//! A lost connection drops the client and its event loop whole; the next
//! attempt (with backoff) starts a fresh MQTT session, so no packet id of the
//! old session can acknowledge a message of the new one. The health topic is
//! retained: `online` on connect, the last will (`offline`) when the broker
//! loses the device, `offline` on a clean shutdown.
//!
//! Each attempt speaks MQTT 5 or 3.1.1 as [`ferry_mqtt::Negotiation`]
//! decides. Under MQTT 5 a broker may refuse a message in its PUBACK (an
//! ACL, a quota): the message stays first in the outbox and is offered
//! again after a pause, so nothing is lost and nothing overtakes it.

use super::outbox::{Outbox, OutboxError};
use super::window::Windows;
use super::TelemetryConfig;
use ferry_mqtt::{ConnError, Event as MqttEvent, Negotiation, Protocol};
use ferry_protocol::telemetry::{
    sign_payload, topic, DriftSummary, Event, Health, KIND_DRIFT, KIND_EVENTS, KIND_HEALTH,
    TELEMETRY_SCHEMA,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The broker address (`mqtt://…` or, over TLS, `mqtts://…`).
pub use ferry_protocol::telemetry::BrokerUrl as MqttUrl;

/// Counters shared with `/metrics` and the health message.
#[derive(Default)]
pub struct Stats {
    pub published: AtomicU64,
    pub connected: AtomicU64,
}

enum Tag {
    /// An outbox message, by key.
    Queued(u64),
    /// Health (not queued).
    Other,
}

struct Conn {
    client: ferry_mqtt::Client,
    events: mpsc::UnboundedReceiver<Result<MqttEvent, ConnError>>,
    connected: bool,
    /// After a refused PUBACK: the outbox waits until then.
    hold_until: Option<tokio::time::Instant>,
    /// Publishes handed to the client, in order, awaiting their packet id.
    sent: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    in_flight: Option<u64>,
}

fn health(
    cfg: &TelemetryConfig,
    status: &str,
    protocol: Protocol,
    windows: &Windows,
    outbox: &Outbox,
    stats: &Stats,
) -> Vec<u8> {
    let h = Health {
        schema: TELEMETRY_SCHEMA,
        tenant: cfg.tenant.clone(),
        device: cfg.device.clone(),
        status: status.into(),
        at_ms: if status == "offline-will" {
            0
        } else {
            now_ms()
        },
        agent_version: env!("CARGO_PKG_VERSION").into(),
        serving: windows.open_routes(),
        outbox_depth: outbox.depth(),
        outbox_dropped: outbox.dropped().unwrap_or(0),
        published: stats.published.load(Ordering::Relaxed),
        mqtt_protocol: Some(protocol.level()),
        trust_root_expires_in: windows.trust_expires_in(now_ms() / 1000),
        arch: Some(super::device_arch()),
    };
    let mut h = h;
    if h.status == "offline-will" {
        h.status = "offline".into();
    }
    seal(cfg, KIND_HEALTH, serde_json::to_vec(&h).unwrap_or_default())
}

/// Signs a message of `kind` with the enrolled device key (the `"sig"`
/// field); unsigned without enrollment.
fn seal(cfg: &TelemetryConfig, kind: &str, body: Vec<u8>) -> Vec<u8> {
    match &cfg.signer {
        Some(key) => sign_payload(kind, &body, key).unwrap_or(body),
        None => body,
    }
}

fn connect(cfg: &TelemetryConfig, will: Vec<u8>, protocol: Protocol) -> Conn {
    let mut o = ferry_mqtt::Options::new(
        format!("ferry-{}-{}", cfg.tenant, cfg.device),
        cfg.url.clone(),
    );
    o.keep_alive = Duration::from_secs(cfg.keep_alive_secs.max(5));
    o.clean = true;
    o.tls = cfg.tls.clone();
    o.request_capacity = 16;
    o.will = Some(ferry_mqtt::Will {
        topic: topic(&cfg.tenant, &cfg.device, KIND_HEALTH),
        payload: will,
        retain: true,
    });
    let (client, mut conn) = ferry_mqtt::connect(&o, protocol);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match conn.poll().await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    Conn {
        client,
        events: rx,
        connected: false,
        hold_until: None,
        sent: VecDeque::new(),
        by_pkid: HashMap::new(),
        in_flight: None,
    }
}

/// Moves closed windows' summaries into the outbox, numbering them.
fn queue_closed(
    cfg: &TelemetryConfig,
    windows: &Windows,
    outbox: &Outbox,
) -> Result<(), OutboxError> {
    for mut s in windows.take_closed() {
        let t = topic(&cfg.tenant, &cfg.device, KIND_DRIFT);
        outbox.push(&t, |seq| {
            s.tenant = cfg.tenant.clone();
            s.device = cfg.device.clone();
            s.seq = seq;
            seal(
                cfg,
                KIND_DRIFT,
                serde_json::to_vec::<DriftSummary>(&s).unwrap_or_default(),
            )
        })?;
    }
    Ok(())
}

/// Queues a device event (`started`, `activated`, …).
pub fn queue_event(
    cfg: &TelemetryConfig,
    outbox: &Outbox,
    kind: &str,
    model: Option<String>,
    version: Option<u64>,
    detail: String,
) -> Result<u64, OutboxError> {
    let t = topic(&cfg.tenant, &cfg.device, KIND_EVENTS);
    outbox.push(&t, |seq| {
        let body = serde_json::to_vec(&Event {
            schema: TELEMETRY_SCHEMA,
            tenant: cfg.tenant.clone(),
            device: cfg.device.clone(),
            seq,
            at_ms: now_ms(),
            kind: kind.into(),
            model,
            version,
            detail,
        })
        .unwrap_or_default();
        seal(cfg, KIND_EVENTS, body)
    })
}

/// Runs until `shutdown` turns true; then closes every window, tries for
/// `cfg.drain_secs` to publish what is queued, and publishes `offline`.
pub async fn run(
    cfg: TelemetryConfig,
    windows: Arc<Windows>,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut negotiation = Negotiation::new(cfg.version);
    let mut conn: Option<Conn> = None;
    // Jittered: after a broker restart, devices do not reconnect together.
    let reconnect = || {
        crate::fleet::backoff(
            Duration::from_millis(200),
            Duration::from_secs(cfg.max_backoff_secs.max(1)),
        )
    };
    let mut backoff = reconnect();
    let mut backoff_fresh = true;
    let mut next_attempt = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(cfg.tick_ms.max(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `None`: due now (at every new connection).
    let mut last_health: Option<tokio::time::Instant> = None;
    let mut draining_until: Option<tokio::time::Instant> = None;
    loop {
        if conn.is_none() && tokio::time::Instant::now() >= next_attempt {
            let protocol = negotiation.next();
            let will = health(&cfg, "offline-will", protocol, &windows, &outbox, &stats);
            conn = Some(connect(&cfg, will, protocol));
        }
        tokio::select! {
            _ = ticker.tick() => {
                windows.tick(now_ms());
            }
            _ = windows.closed_notify.notified() => {}
            changed = shutdown.changed(), if draining_until.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    windows.close_all(now_ms());
                    draining_until = Some(tokio::time::Instant::now() + Duration::from_secs(cfg.drain_secs));
                }
            }
            ev = async {
                match conn.as_mut() {
                    Some(c) => c.events.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let lost = match (ev, conn.as_mut()) {
                    (Some(Ok(ev)), Some(c)) => {
                        handle(ev, c, &outbox, &stats);
                        false
                    }
                    (Some(Err(e)), c) => {
                        let protocol = c.map(|c| c.client.protocol());
                        if e.before_connack {
                            tracing::warn!(error = %e, broker = %cfg.url, ?protocol, depth = outbox.depth(), "telemetry broker not connected; queueing in the outbox");
                        } else {
                            tracing::warn!(error = %e, broker = %cfg.url, depth = outbox.depth(), "telemetry broker connection lost; queueing in the outbox");
                        }
                        negotiation.failed(&e);
                        true
                    }
                    _ => true,
                };
                if lost {
                    conn = None;
                    stats.connected.store(0, Ordering::Relaxed);
                    last_health = None;
                    next_attempt = tokio::time::Instant::now()
                        + backoff.next().unwrap_or(Duration::from_secs(cfg.max_backoff_secs.max(1)));
                    backoff_fresh = false;
                }
            }
        }
        if let Err(e) = queue_closed(&cfg, &windows, &outbox) {
            tracing::error!(error = %e, "telemetry: queueing a summary failed");
        }
        if let Some(c) = conn.as_mut().filter(|c| c.connected) {
            if !backoff_fresh {
                backoff = reconnect();
                backoff_fresh = true;
            }
            stats.connected.store(1, Ordering::Relaxed);
            if last_health
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(cfg.health_secs.max(1)))
            {
                last_health = Some(tokio::time::Instant::now());
                publish_health(&cfg, c, "online", &windows, &outbox, &stats);
            }
            let held = c
                .hold_until
                .is_some_and(|t| tokio::time::Instant::now() < t);
            if c.in_flight.is_none() && !held {
                match outbox.first() {
                    Ok(Some(m)) => {
                        if c.client.try_publish(m.topic, m.payload, false).is_ok() {
                            c.sent.push_back(Tag::Queued(m.key));
                            c.in_flight = Some(m.key);
                        }
                    }
                    Ok(None) => {}
                    Err(OutboxError::Corrupt(k)) => {
                        tracing::error!(key = k, "telemetry outbox entry corrupt; dropped");
                        let _ = outbox.discard(k);
                    }
                    Err(e) => tracing::error!(error = %e, "telemetry outbox read failed"),
                }
            }
        }
        if let Some(until) = draining_until {
            let done = outbox.depth() == 0
                && conn
                    .as_ref()
                    .is_some_and(|c| c.connected && c.in_flight.is_none());
            if done || tokio::time::Instant::now() >= until {
                if let Some(c) = conn.as_mut().filter(|c| c.connected) {
                    publish_health(&cfg, c, "offline", &windows, &outbox, &stats);
                    // Let the event loop send it before disconnecting.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                    while !c.sent.is_empty() && tokio::time::Instant::now() < deadline {
                        match tokio::time::timeout_at(deadline, c.events.recv()).await {
                            Ok(Some(Ok(ev))) => handle(ev, c, &outbox, &stats),
                            _ => break,
                        }
                    }
                    let _ = c.client.try_disconnect();
                }
                let _ = outbox.flush();
                if outbox.depth() > 0 {
                    tracing::warn!(depth = outbox.depth(), "telemetry: stopping with messages still queued; they are sent at the next start");
                }
                return;
            }
        }
    }
}

fn publish_health(
    cfg: &TelemetryConfig,
    c: &mut Conn,
    status: &str,
    windows: &Windows,
    outbox: &Outbox,
    stats: &Stats,
) {
    let payload = health(cfg, status, c.client.protocol(), windows, outbox, stats);
    if c.client
        .try_publish(topic(&cfg.tenant, &cfg.device, KIND_HEALTH), payload, true)
        .is_ok()
    {
        c.sent.push_back(Tag::Other);
    }
}

fn handle(ev: MqttEvent, c: &mut Conn, outbox: &Outbox, stats: &Stats) {
    match ev {
        MqttEvent::Connected { .. } => {
            c.connected = true;
            tracing::info!(protocol = %c.client.protocol(), "telemetry broker connected");
        }
        MqttEvent::Sent { pkid } => {
            if let Some(tag) = c.sent.pop_front() {
                c.by_pkid.insert(pkid, tag);
            }
        }
        MqttEvent::PubAck { pkid, refused } => {
            let Some(tag) = c.by_pkid.remove(&pkid) else {
                return;
            };
            let Tag::Queued(key) = tag else {
                return;
            };
            if c.in_flight == Some(key) {
                c.in_flight = None;
            }
            if let Some(reason) = refused {
                // Kept first in the outbox; offered again after a pause.
                c.hold_until = Some(tokio::time::Instant::now() + REFUSED_PAUSE);
                tracing::warn!(key, %reason, "telemetry: the broker refused a message; it stays queued");
                return;
            }
            if let Err(e) = outbox.remove(key) {
                tracing::error!(error = %e, "telemetry outbox: removing an acknowledged message failed");
            }
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        MqttEvent::Message(_) | MqttEvent::Other => {}
    }
}

/// How long a message the broker refused waits before it is offered again.
const REFUSED_PAUSE: Duration = Duration::from_secs(2);
