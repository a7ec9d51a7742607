//! rustls/quinn client configuration: the control plane's CA as the only
//! root, and the device certificate once enrolled.

use super::FleetError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::Duration;

pub const ALPN: &[u8] = b"ferry/1";

fn tls(e: impl std::fmt::Display) -> FleetError {
    FleetError::Tls(e.to_string())
}

pub fn client_config(
    ca_der: &[u8],
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<quinn::ClientConfig, FleetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(tls)?;
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .map_err(tls)?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(tls)?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(20)).map_err(tls)?,
    ));
    cc.transport_config(Arc::new(t));
    Ok(cc)
}

/// The host part of `HOST:PORT` (the name the server certificate must
/// carry), and the resolved socket address.
pub fn resolve(server: &str) -> Result<(String, std::net::SocketAddr), FleetError> {
    use std::net::ToSocketAddrs;
    let err = |reason: String| FleetError::Connect {
        server: server.to_string(),
        reason,
    };
    let addr = server
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("resolves to no address".into()))?;
    let host = match server.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => server.to_string(),
    };
    Ok((host, addr))
}

/// Connects to `server` (`HOST:PORT`), verifying that the certificate
/// carries `name` (default: the host of `server`). The name is checked in
/// full either way; only which name is expected changes.
pub async fn connect_named(
    endpoint: &quinn::Endpoint,
    server: &str,
    name: Option<&str>,
    cfg: quinn::ClientConfig,
) -> Result<quinn::Connection, FleetError> {
    let (host, addr) = resolve(server)?;
    let host = name.map(str::to_string).unwrap_or(host);
    let err = |reason: String| FleetError::Connect {
        server: server.to_string(),
        reason,
    };
    endpoint
        .connect_with(cfg, addr, &host)
        .map_err(|e| err(e.to_string()))?
        .await
        .map_err(|e| err(e.to_string()))
}

/// Socket buffer asked for, each way. The kernel caps it at
/// `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER: usize = 4 << 20;

/// The QUIC endpoint's UDP socket, with room for bursts. At download rates
/// the kernel's default receive buffer (about 208 KiB) overflows, and QUIC
/// reads the dropped packets as congestion and slows down. One socket
/// carries every simulated device in the fleet simulator, where this
/// matters most.
pub fn client_endpoint() -> Result<quinn::Endpoint, FleetError> {
    let err = |e: std::io::Error| FleetError::Connect {
        server: "(local endpoint)".into(),
        reason: e.to_string(),
    };
    let bind: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(err)?;
    // Best effort: a smaller buffer only costs speed.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&bind.into()).map_err(err)?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < UDP_BUFFER {
        tracing::debug!(
            got,
            wanted = UDP_BUFFER,
            "UDP receive buffer capped by net.core.rmem_max"
        );
    }
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(err)
}
