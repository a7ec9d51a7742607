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

pub async fn connect(
    endpoint: &quinn::Endpoint,
    server: &str,
    cfg: quinn::ClientConfig,
) -> Result<quinn::Connection, FleetError> {
    let (host, addr) = resolve(server)?;
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

pub fn client_endpoint() -> Result<quinn::Endpoint, FleetError> {
    let bind: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
    quinn::Endpoint::client(bind).map_err(|e| FleetError::Connect {
        server: "(local endpoint)".into(),
        reason: e.to_string(),
    })
}
