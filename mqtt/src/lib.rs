//! Ferry's MQTT link, shared by the agent's publisher and the control
//! plane's ingest: one client over MQTT 5 and 3.1.1 (rumqttc has a separate
//! client for each), the choice between them, and TLS to the broker.
//!
//! - [`Version::Auto`] (the default) speaks MQTT 5 first. When a broker
//!   hangs up on, or refuses, an MQTT 5 CONNECT before its CONNACK, the next
//!   attempt speaks 3.1.1, and the other way round ([`Negotiation`]). A
//!   broker that is simply down changes nothing.
//! - Under MQTT 5, publishes and the last will say what they carry
//!   (payload format UTF-8, content type `application/json`), a persistent
//!   session asks the broker to keep it (session expiry), and a PUBACK can
//!   refuse a message ([`Event::PubAck`]); 3.1.1 has none of these.
//!
//! Nothing here spawns tasks: [`connect`] returns a [`Client`] handle and a
//! [`Connection`] the caller polls.

use bytes::Bytes;
use ferry_protocol::telemetry::BrokerUrl;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The content type every Ferry payload carries under MQTT 5.
pub const CONTENT_TYPE: &str = "application/json";

/// Which MQTT version to speak (`auto`, `5`, `3.1.1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Version {
    /// MQTT 5, falling back to 3.1.1 when the broker refuses it.
    #[default]
    Auto,
    V5,
    V311,
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Version::Auto),
            "5" | "5.0" => Ok(Version::V5),
            "3.1.1" | "311" | "4" => Ok(Version::V311),
            _ => Err(format!("MQTT version {s:?}: expected auto, 5 or 3.1.1")),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::Auto => "auto",
            Version::V5 => "5",
            Version::V311 => "3.1.1",
        })
    }
}

/// The protocol one connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    V5,
    V311,
}

impl Protocol {
    /// The protocol level in CONNECT (5 or 4), as `/metrics` reports it.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V5 => 5,
            Protocol::V311 => 4,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::V5 => "MQTT 5",
            Protocol::V311 => "MQTT 3.1.1",
        })
    }
}

/// Picks the protocol of each connection attempt from the outcome of the
/// previous ones. Pure: the reconnect loops feed it what happened.
#[derive(Clone, Debug)]
pub struct Negotiation {
    version: Version,
    next: Protocol,
}

impl Negotiation {
    pub fn new(version: Version) -> Self {
        let next = match version {
            Version::V311 => Protocol::V311,
            Version::Auto | Version::V5 => Protocol::V5,
        };
        Negotiation { version, next }
    }

    /// The protocol the next attempt speaks.
    pub fn next(&self) -> Protocol {
        self.next
    }

    /// A connection ended with `e`. Under `auto`, a broker that refused
    /// or hung up on our CONNECT gets the other version next time; one
    /// that could not be reached, or that refused us for another reason
    /// (credentials, TLS), keeps the version that was tried.
    pub fn failed(&mut self, e: &ConnError) {
        if self.version == Version::Auto && e.before_connack && e.version_suspect {
            self.next = match self.next {
                Protocol::V5 => Protocol::V311,
                Protocol::V311 => Protocol::V5,
            };
        }
    }
}

/// A will message (QoS 1), published by the broker when it loses us.
#[derive(Clone, Debug)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// What one connection is opened with.
#[derive(Clone, Debug)]
pub struct Options {
    pub client_id: String,
    pub url: BrokerUrl,
    /// TLS to the broker (`mqtts://`), see [`tls_config`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub keep_alive: Duration,
    /// `false`: a persistent session, kept by the broker while we are away
    /// (under MQTT 5: with a session expiry that never ends).
    pub clean: bool,
    /// Incoming QoS 1 messages are acknowledged only by [`Client::ack`].
    pub manual_acks: bool,
    pub max_packet_bytes: u32,
    /// Most unacknowledged QoS 1 messages in each direction.
    pub inflight: u16,
    /// Requests the client handle may queue before `try_*` refuses.
    pub request_capacity: usize,
    pub will: Option<Will>,
}

impl Options {
    pub fn new(client_id: impl Into<String>, url: BrokerUrl) -> Self {
        Options {
            client_id: client_id.into(),
            url,
            tls: None,
            keep_alive: Duration::from_secs(30),
            clean: true,
            manual_acks: false,
            max_packet_bytes: 1 << 20,
            inflight: 100,
            request_capacity: 64,
            will: None,
        }
    }
}

/// A request the client handle could not queue.
#[derive(Debug, thiserror::Error)]
#[error("MQTT request not queued: {0}")]
pub struct ClientError(String);

/// The handle publishes, subscribes and acknowledges through.
#[derive(Clone)]
pub enum Client {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

fn json_props() -> p5::PublishProperties {
    p5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some(CONTENT_TYPE.into()),
        ..Default::default()
    }
}

impl Client {
    pub fn protocol(&self) -> Protocol {
        match self {
            Client::V5(_) => Protocol::V5,
            Client::V311(_) => Protocol::V311,
        }
    }

    /// Queues a QoS 1 publish of a JSON payload.
    pub fn try_publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<(), ClientError> {
        let e = |e: &dyn std::fmt::Display| ClientError(e.to_string());
        match self {
            Client::V5(c) => c
                .try_publish_with_properties(
                    topic.into(),
                    QoS5::AtLeastOnce,
                    retain,
                    payload.into(),
                    json_props(),
                )
                .map_err(|x| e(&x)),
            Client::V311(c) => c
                .try_publish(
                    topic.into(),
                    rumqttc::QoS::AtLeastOnce,
                    retain,
                    payload.into(),
                )
                .map_err(|x| e(&x)),
        }
    }

    /// Queues a QoS 1 subscription.
    pub fn try_subscribe(&self, filter: &str) -> Result<(), ClientError> {
        match self {
            Client::V5(c) => c
                .try_subscribe(filter, QoS5::AtLeastOnce)
                .map_err(|e| ClientError(e.to_string())),
            Client::V311(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    /// Acknowledges a message received with [`Options::manual_acks`],
    /// waiting for room in the request queue. The connection must be
    /// polled by another task meanwhile (a full queue only drains there).
    pub async fn ack(&self, m: &Message) -> Result<(), ClientError> {
        match (self, &m.raw) {
            (Client::V5(c), Raw::V5(p)) => c.ack(p).await.map_err(|e| ClientError(e.to_string())),
            (Client::V311(c), Raw::V311(p)) => {
                c.ack(p).await.map_err(|e| ClientError(e.to_string()))
            }
            _ => Err(ClientError(
                "message from a connection of the other protocol".into(),
            )),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), ClientError> {
        match self {
            Client::V5(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
            Client::V311(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
        }
    }
}

#[derive(Debug)]
enum Raw {
    V5(p5::Publish),
    V311(rumqttc::Publish),
}

/// A message received on a subscription.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    raw: Raw,
}

/// What a [`Connection`] reports, in the order it happens.
#[derive(Debug)]
pub enum Event {
    /// The broker accepted the CONNECT.
    Connected {
        session_present: bool,
    },
    /// A publish went out with this packet id (queue order is kept).
    Sent {
        pkid: u16,
    },
    /// The broker acknowledged the publish with this packet id; under
    /// MQTT 5 it may have refused it (`refused` says why).
    PubAck {
        pkid: u16,
        refused: Option<String>,
    },
    Message(Box<Message>),
    Other,
}

/// Why a connection ended.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConnError {
    pub message: String,
    /// Before the broker's CONNACK.
    pub before_connack: bool,
    /// The broker may not speak the version we tried: it refused the
    /// protocol version, answered with something that was not a CONNACK,
    /// or hung up on the CONNECT.
    pub version_suspect: bool,
}

// Boxed: the two event loops differ in size, and one lives per connection.
enum Loop {
    V5(Box<rumqttc::v5::EventLoop>),
    V311(Box<rumqttc::EventLoop>),
}

/// One connection's event loop; dropping it drops the connection.
pub struct Connection {
    inner: Loop,
    connected: bool,
}

// The broker hung up on us (versus: could not be reached at all).
fn hung_up(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | InvalidData
    )
}

fn suspect_v5(e: &rumqttc::v5::ConnectionError) -> bool {
    use rumqttc::v5::{ConnectionError as C, StateError as S};
    match e {
        C::ConnectionRefused(code) => {
            matches!(code, p5::ConnectReturnCode::UnsupportedProtocolVersion)
        }
        C::NotConnAck(_) => true,
        C::Io(io) => hung_up(io),
        C::MqttState(S::Io(io)) => hung_up(io),
        C::MqttState(S::ConnFail { reason }) => {
            matches!(reason, p5::ConnectReturnCode::UnsupportedProtocolVersion)
        }
        C::MqttState(S::Deserialization(_) | S::ConnectionAborted) => true,
        _ => false,
    }
}

fn suspect_v311(e: &rumqttc::ConnectionError) -> bool {
    use rumqttc::{ConnectionError as C, StateError as S};
    match e {
        C::ConnectionRefused(code) => {
            matches!(code, rumqttc::ConnectReturnCode::RefusedProtocolVersion)
        }
        C::NotConnAck(_) => true,
        C::Io(io) => hung_up(io),
        C::MqttState(S::Io(io)) => hung_up(io),
        C::MqttState(S::Deserialization(_) | S::ConnectionAborted) => true,
        _ => false,
    }
}

impl Connection {
    pub fn protocol(&self) -> Protocol {
        match self.inner {
            Loop::V5(_) => Protocol::V5,
            Loop::V311(_) => Protocol::V311,
        }
    }

    /// The next event. After an error the connection is finished: open a
    /// new one (with backoff) rather than polling this one again.
    pub async fn poll(&mut self) -> Result<Event, ConnError> {
        let before_connack = !self.connected;
        let ev = match &mut self.inner {
            Loop::V5(el) => match el.poll().await {
                Ok(ev) => v5_event(ev),
                Err(e) => {
                    return Err(ConnError {
                        message: e.to_string(),
                        before_connack,
                        version_suspect: suspect_v5(&e),
                    })
                }
            },
            Loop::V311(el) => match el.poll().await {
                Ok(ev) => v311_event(ev),
                Err(e) => {
                    return Err(ConnError {
                        message: e.to_string(),
                        before_connack,
                        version_suspect: suspect_v311(&e),
                    })
                }
            },
        };
        if let Event::Connected { .. } = ev {
            self.connected = true;
        }
        Ok(ev)
    }
}

fn v5_event(ev: rumqttc::v5::Event) -> Event {
    use rumqttc::v5::Event as E;
    match ev {
        E::Incoming(p5::Packet::ConnAck(a)) => Event::Connected {
            session_present: a.session_present,
        },
        E::Incoming(p5::Packet::PubAck(a)) => Event::PubAck {
            pkid: a.pkid,
            refused: match a.reason {
                p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => None,
                other => Some(format!("{other:?}")),
            },
        },
        E::Incoming(p5::Packet::Publish(p)) => Event::Message(Box::new(Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.clone(),
            raw: Raw::V5(p),
        })),
        E::Outgoing(rumqttc::Outgoing::Publish(pkid)) => Event::Sent { pkid },
        _ => Event::Other,
    }
}

fn v311_event(ev: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Packet as P};
    match ev {
        E::Incoming(P::ConnAck(a)) => Event::Connected {
            session_present: a.session_present,
        },
        E::Incoming(P::PubAck(a)) => Event::PubAck {
            pkid: a.pkid,
            refused: None,
        },
        E::Incoming(P::Publish(p)) => Event::Message(Box::new(Message {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            raw: Raw::V311(p),
        })),
        E::Outgoing(rumqttc::Outgoing::Publish(pkid)) => Event::Sent { pkid },
        _ => Event::Other,
    }
}

/// A client and its (not yet started) connection; nothing touches the
/// network until the connection is polled.
pub fn connect(o: &Options, protocol: Protocol) -> (Client, Connection) {
    let transport = o.tls.as_ref().map(|tls| {
        rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone()))
    });
    match protocol {
        Protocol::V5 => {
            let mut m =
                rumqttc::v5::MqttOptions::new(o.client_id.clone(), o.url.host.clone(), o.url.port);
            m.set_keep_alive(o.keep_alive);
            m.set_clean_start(o.clean);
            if !o.clean {
                // 0xFFFFFFFF: the session never expires (MQTT 5, 3.1.2.11.2).
                m.set_session_expiry_interval(Some(u32::MAX));
            }
            m.set_manual_acks(o.manual_acks);
            m.set_max_packet_size(Some(o.max_packet_bytes));
            m.set_receive_maximum(Some(o.inflight.max(1)));
            m.set_outgoing_inflight_upper_limit(o.inflight.max(1));
            if let Some(t) = transport {
                m.set_transport(t);
            }
            if let Some(u) = &o.url.username {
                m.set_credentials(u.clone(), o.url.password.clone().unwrap_or_default());
            }
            if let Some(w) = &o.will {
                m.set_last_will(p5::LastWill::new(
                    w.topic.clone(),
                    w.payload.clone(),
                    QoS5::AtLeastOnce,
                    w.retain,
                    Some(p5::LastWillProperties {
                        delay_interval: None,
                        payload_format_indicator: Some(1),
                        message_expiry_interval: None,
                        content_type: Some(CONTENT_TYPE.into()),
                        response_topic: None,
                        correlation_data: None,
                        user_properties: Vec::new(),
                    }),
                ));
            }
            let (c, el) = rumqttc::v5::AsyncClient::new(m, o.request_capacity);
            (
                Client::V5(c),
                Connection {
                    inner: Loop::V5(Box::new(el)),
                    connected: false,
                },
            )
        }
        Protocol::V311 => {
            let mut m =
                rumqttc::MqttOptions::new(o.client_id.clone(), o.url.host.clone(), o.url.port);
            m.set_keep_alive(o.keep_alive);
            m.set_clean_session(o.clean);
            m.set_manual_acks(o.manual_acks);
            let max = o.max_packet_bytes as usize;
            m.set_max_packet_size(max, max);
            m.set_inflight(o.inflight.max(1));
            if let Some(t) = transport {
                m.set_transport(t);
            }
            if let Some(u) = &o.url.username {
                m.set_credentials(u.clone(), o.url.password.clone().unwrap_or_default());
            }
            if let Some(w) = &o.will {
                m.set_last_will(rumqttc::LastWill::new(
                    w.topic.clone(),
                    w.payload.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    w.retain,
                ));
            }
            let (c, el) = rumqttc::AsyncClient::new(m, o.request_capacity);
            (
                Client::V311(c),
                Connection {
                    inner: Loop::V311(Box::new(el)),
                    connected: false,
                },
            )
        }
    }
}

/// A CA file that cannot be trusted.
#[derive(Debug, thiserror::Error)]
#[error("broker CA {path}: {reason}")]
pub struct TlsError {
    pub path: PathBuf,
    pub reason: String,
}

/// A rustls client configuration (ring) trusting the PEM certificates in
/// `ca`, or the system's roots without one.
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    tls_client_config(ca, &[], None)
}

/// A client certificate (DER) and its PKCS#8 private key (DER), presented
/// to a broker that requires one (Mosquitto's `require_certificate`).
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_der: Vec<u8>,
    pub key_pkcs8_der: Vec<u8>,
}

// Never print the key.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_der", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

/// Like [`tls_config`], also trusting the DER certificates `extra_roots`
/// (an enrolled device's fleet CA) and presenting `identity` when given.
pub fn tls_client_config(
    ca: Option<&Path>,
    extra_roots: &[Vec<u8>],
    identity: Option<ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let err = |reason: String| TlsError {
        path: ca.map(Path::to_path_buf).unwrap_or_default(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = match ca {
        Some(path) => CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let mut roots = rustls::RootCertStore::empty();
    for der in extra_roots {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| err(format!("fleet CA: {e}")))?;
    }
    for c in certs {
        // A system store may hold certificates rustls cannot use; a file
        // given to us must be usable whole.
        match roots.add(c) {
            Ok(()) => {}
            Err(e) if ca.is_some() => return Err(err(e.to_string())),
            Err(_) => {}
        }
    }
    if roots.is_empty() {
        return Err(err("no CA certificate to trust".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match identity {
        Some(id) => cfg
            .with_client_auth_cert(
                vec![CertificateDer::from(id.cert_der)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(
                    rustls::pki_types::PrivatePkcs8KeyDer::from(id.key_pkcs8_der),
                ),
            )
            .map_err(|e| err(format!("client certificate: {e}")))?,
        None => cfg.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(before_connack: bool, version_suspect: bool) -> ConnError {
        ConnError {
            message: String::new(),
            before_connack,
            version_suspect,
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!("auto".parse::<Version>(), Ok(Version::Auto));
        assert_eq!("5".parse::<Version>(), Ok(Version::V5));
        assert_eq!("3.1.1".parse::<Version>(), Ok(Version::V311));
        assert!("3".parse::<Version>().is_err());
        assert_eq!(Version::V311.to_string(), "3.1.1");
    }

    #[test]
    fn auto_falls_back_and_forth_only_on_version_trouble() {
        let mut n = Negotiation::new(Version::Auto);
        assert_eq!(n.next(), Protocol::V5);
        // Broker down: nothing learnt.
        n.failed(&err(true, false));
        assert_eq!(n.next(), Protocol::V5);
        // Lost after a CONNACK: the version worked.
        n.failed(&err(false, true));
        assert_eq!(n.next(), Protocol::V5);
        // Hung up on the CONNECT: try 3.1.1, and keep it while it works.
        n.failed(&err(true, true));
        assert_eq!(n.next(), Protocol::V311);
        n.failed(&err(false, false));
        assert_eq!(n.next(), Protocol::V311);
        // A broker that now refuses 3.1.1 gets MQTT 5 again.
        n.failed(&err(true, true));
        assert_eq!(n.next(), Protocol::V5);
    }

    #[test]
    fn pinned_versions_never_change() {
        for (v, p) in [(Version::V5, Protocol::V5), (Version::V311, Protocol::V311)] {
            let mut n = Negotiation::new(v);
            n.failed(&err(true, true));
            assert_eq!(n.next(), p);
        }
    }

    #[test]
    fn ca_files_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        assert!(tls_config(Some(&p)).is_err());
        let missing = tls_config(Some(&d.path().join("missing.pem"))).unwrap_err();
        assert!(missing.to_string().contains("missing.pem"), "{missing}");
    }
}
