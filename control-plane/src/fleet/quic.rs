//! The QUIC endpoint: enrollment on connections without a client
//! certificate, the control stream and fetch streams on mutual-TLS ones.

use super::{db, Fleet, FleetError};
use crate::audit::{OUTCOME_OK, OUTCOME_REFUSED};
use ferry_protocol::frames::{
    length_prefixed, ActivationOutcome, AgentFrame, FrameReader, ServerFrame, PROTOCOL_VERSION,
};
use ferry_protocol::keys::{sha256, Digest};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const ALPN: &[u8] = b"ferry/1";
/// Seconds between heartbeats on the control stream.
const HEARTBEAT_SECS: u64 = 10;

fn tls(e: impl std::fmt::Display) -> FleetError {
    FleetError::Tls(e.to_string())
}

fn server_config(fleet: &Fleet) -> Result<quinn::ServerConfig, FleetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = CertificateDer::from(fleet.ca.cert_der().to_vec());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls)?;
    let (cert, key) = fleet.ca.issue_server(&fleet.opts.server_names)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert), ca],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .map_err(tls)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(tls)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).map_err(tls)?,
    ));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(16));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    sc.transport_config(Arc::new(transport));
    Ok(sc)
}

/// Socket buffer asked for, each way; the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER: usize = 4 << 20;

/// The fleet's UDP socket, with room for bursts: every device's packets
/// (their ACKs, at download rates) arrive on this one socket. With the
/// kernel's default buffer (about 208 KiB) they overflow it, and QUIC reads
/// the drops as congestion.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer only costs speed.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < UDP_BUFFER {
        tracing::warn!(
            got,
            wanted = UDP_BUFFER,
            "QUIC receive buffer capped by net.core.rmem_max; raise it for large fleets"
        );
    }
    Ok(socket.into())
}

pub(super) fn start(fleet: Arc<Fleet>) -> Result<(quinn::Endpoint, SocketAddr), FleetError> {
    let sc = server_config(&fleet)?;
    let bind_err = |source| FleetError::Io {
        what: format!("binding QUIC on {}", fleet.opts.quic),
        source,
    };
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(sc),
        udp_socket(fleet.opts.quic).map_err(bind_err)?,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)?;
    let addr = endpoint.local_addr().map_err(|source| FleetError::Io {
        what: "reading the QUIC address".into(),
        source,
    })?;
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let fleet = fleet.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => connection(fleet, conn).await,
                    Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
                }
            });
        }
    });
    Ok((endpoint, addr))
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    reader: &mut FrameReader,
) -> Result<Option<AgentFrame>, String> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(bytes) = reader.next_frame().map_err(|e| e.to_string())? {
            return AgentFrame::decode(&bytes)
                .map(Some)
                .map_err(|e| e.to_string());
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => reader.push(&buf[..n]),
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn send(send: &mut quinn::SendStream, frame: &ServerFrame) -> Result<(), String> {
    send.write_all(&length_prefixed(&frame.encode()))
        .await
        .map_err(|e| e.to_string())
}

fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let id = conn.peer_identity()?;
    let certs = id.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| sha256(c.as_ref()).to_hex())
}

async fn connection(fleet: Arc<Fleet>, conn: quinn::Connection) {
    let Some(fp) = peer_fingerprint(&conn) else {
        enrollment(fleet, conn).await;
        return;
    };
    let device = match fleet.store.device_by_fingerprint(&fp).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            conn.close(quinn::VarInt::from_u32(3), b"unknown device certificate");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "device lookup failed");
            conn.close(quinn::VarInt::from_u32(1), b"internal error");
            return;
        }
    };
    if device.revoked_at.is_some() {
        fleet
            .audit(
                &device.tenant,
                &format!("device {}", device.id),
                "device.connect",
                &device.id,
                OUTCOME_REFUSED,
                "device is revoked".into(),
            )
            .await;
        conn.close(quinn::VarInt::from_u32(3), b"device is revoked");
        return;
    }
    {
        let _w = fleet.writes.lock().await;
        let _ = fleet.store.touch_device(&device.id).await;
    }
    fleet.register(&device.id, conn.clone());
    tracing::info!(device = %device.id, tenant = %device.tenant, "device connected");
    loop {
        let (s, r) = match conn.accept_bi().await {
            Ok(x) => x,
            Err(_) => break,
        };
        let fleet = fleet.clone();
        let device = device.clone();
        tokio::spawn(async move {
            if let Err(e) = stream(fleet, device.clone(), s, r).await {
                tracing::debug!(device = %device.id, error = %e, "stream ended");
            }
        });
    }
    fleet.unregister(&device.id, &conn);
    let _w = fleet.writes.lock().await;
    let _ = fleet.store.touch_device(&device.id).await;
}

async fn enrollment(fleet: Arc<Fleet>, conn: quinn::Connection) {
    let Ok(Ok((mut s, mut r))) =
        tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await
    else {
        conn.close(quinn::VarInt::from_u32(1), b"expected an enrollment stream");
        return;
    };
    let mut reader = FrameReader::new();
    let reply = match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut r, &mut reader))
        .await
    {
        Ok(Ok(Some(AgentFrame::Enroll {
            protocol,
            token,
            public_key,
            hostname,
        }))) => enroll(&fleet, protocol, &token, &public_key, &hostname).await,
        Ok(Ok(Some(_))) => ServerFrame::Refused {
            code: "not_enrolled".into(),
            reason: "this connection has no device certificate: only enrollment is possible".into(),
        },
        _ => ServerFrame::Refused {
            code: "bad_request".into(),
            reason: "expected an Enroll frame".into(),
        },
    };
    let _ = send(&mut s, &reply).await;
    let _ = s.finish();
    // Let the reply reach the device before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

async fn enroll(
    fleet: &Fleet,
    protocol: u16,
    token: &str,
    public_key: &[u8],
    hostname: &str,
) -> ServerFrame {
    let refused = |code: &str, reason: String| ServerFrame::Refused {
        code: code.into(),
        reason,
    };
    if protocol != PROTOCOL_VERSION {
        return refused(
            "protocol",
            format!("protocol {protocol} is not supported (this server speaks {PROTOCOL_VERSION})"),
        );
    }
    let now = fleet.store.clock().now_secs() as i64;
    let hash = crate::auth::hash_token(token);
    let (token_id, tenant, labels) = match fleet.store.consume_enrollment_token(&hash).await {
        Ok(Ok(t)) => t,
        Ok(Err(why)) => {
            let reason = match why {
                db::TokenRefusal::Unknown => "unknown enrollment token",
                db::TokenRefusal::Revoked => "enrollment token revoked",
                db::TokenRefusal::Expired => "enrollment token expired",
                db::TokenRefusal::Used => "enrollment token already used up",
            };
            return refused("bad_token", reason.into());
        }
        Err(e) => return refused("internal", e.to_string()),
    };
    let trust = match fleet.store.trust_root(&tenant).await {
        Ok(Some((_, hexed))) => match hex::decode(hexed) {
            Ok(b) => b,
            Err(e) => return refused("internal", format!("stored trust root: {e}")),
        },
        Ok(None) => {
            return refused(
                "no_trust_root",
                format!("tenant {tenant:?} has no trust root yet (ferry trust push)"),
            )
        }
        Err(e) => return refused("internal", e.to_string()),
    };
    let device_id = crate::auth::random_id("dev_", 8);
    let cert = match fleet.ca.issue_device(&device_id, &tenant, public_key) {
        Ok(c) => c,
        Err(e) => return refused("bad_key", e.to_string()),
    };
    let device = db::Device {
        id: device_id.clone(),
        tenant: tenant.clone(),
        hostname: hostname.chars().take(253).collect(),
        labels,
        created_at: now,
        revoked_at: None,
        last_seen: None,
    };
    let entry = Fleet::audit_entry(
        &tenant,
        &format!("enrollment token {token_id}"),
        "device.enroll",
        &device_id,
        OUTCOME_OK,
        format!(
            "hostname {:?}, labels {}",
            device.hostname,
            db::labels_to_string(&device.labels)
        ),
    );
    if let Err(e) = fleet
        .store
        .enroll_device(&device, &sha256(&cert).to_hex(), entry)
        .await
    {
        return refused("internal", e.to_string());
    }
    ServerFrame::Enrolled {
        device_id,
        tenant,
        certificate: cert,
        ca_certificate: fleet.ca.cert_der().to_vec(),
        trust_root: trust,
        online_key: fleet.online_public_key(),
        mqtt_url: fleet.opts.mqtt_url.clone(),
    }
}

async fn stream(
    fleet: Arc<Fleet>,
    device: db::Device,
    mut s: quinn::SendStream,
    mut r: quinn::RecvStream,
) -> Result<(), String> {
    let mut reader = FrameReader::new();
    match read_frame(&mut r, &mut reader).await? {
        Some(AgentFrame::Hello { protocol, .. }) => {
            if protocol != PROTOCOL_VERSION {
                send(
                    &mut s,
                    &ServerFrame::Refused {
                        code: "protocol".into(),
                        reason: format!("protocol {protocol} is not supported"),
                    },
                )
                .await?;
                return Ok(());
            }
            control(fleet, device, s, r, reader).await
        }
        Some(AgentFrame::Fetch { digest, offset }) => fetch(fleet, device, s, digest, offset).await,
        Some(_) => Err("unexpected first frame".into()),
        None => Ok(()),
    }
}

/// The control stream: push desired state now, on every change and before
/// it expires; take reports.
async fn control(
    fleet: Arc<Fleet>,
    device: db::Device,
    mut s: quinn::SendStream,
    mut r: quinn::RecvStream,
    mut reader: FrameReader,
) -> Result<(), String> {
    let mut changes = fleet.subscribe();
    let mut device = device;
    let push = |d: db::Device| {
        let fleet = fleet.clone();
        async move {
            fleet
                .desired_state(&d, fleet.store.clock().now_secs())
                .await
                .map_err(|e| e.to_string())
        }
    };
    let first = push(device.clone()).await?;
    send(&mut s, &ServerFrame::DesiredState(first.clone())).await?;
    let refresh = Duration::from_secs((fleet.opts.desired_ttl / 2).max(1));
    let mut refresh_at = tokio::time::Instant::now() + refresh;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(HEARTBEAT_SECS));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<AgentFrame>(64);
    // Reading and writing run side by side: reports must not wait for a push.
    tokio::spawn(async move {
        while let Ok(Some(f)) = read_frame(&mut r, &mut reader).await {
            if tx.send(f).await.is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() { return Ok(()); }
                // Labels may have changed too.
                if let Ok(d) = fleet.store.device(&device.tenant, &device.id).await {
                    if d.revoked_at.is_some() { return Ok(()); }
                    device = d;
                }
                send(&mut s, &ServerFrame::DesiredState(push(device.clone()).await?)).await?;
                // Failpoint: after every new desired state, send the
                // connection's first one again, as a replaying attacker would.
                if super::failpoint("fleet-replay-desired").is_some() {
                    send(&mut s, &ServerFrame::DesiredState(first.clone())).await?;
                }
                refresh_at = tokio::time::Instant::now() + refresh;
            }
            _ = tokio::time::sleep_until(refresh_at) => {
                send(&mut s, &ServerFrame::DesiredState(push(device.clone()).await?)).await?;
                refresh_at = tokio::time::Instant::now() + refresh;
            }
            _ = heartbeat.tick() => {
                send(&mut s, &ServerFrame::Heartbeat { at: fleet.store.clock().now_secs() }).await?;
            }
            frame = rx.recv() => {
                let Some(frame) = frame else { return Ok(()); };
                tracing::debug!(device = %device.id, frame = ?frame, "control frame");
                report(&fleet, &device, frame).await;
            }
        }
    }
}

async fn report(fleet: &Fleet, device: &db::Device, frame: AgentFrame) {
    let actor = format!("device {}", device.id);
    match frame {
        AgentFrame::Report {
            model,
            version,
            outcome,
        } => {
            fleet.clear_progress(&device.id);
            let _w = fleet.writes.lock().await;
            let target = format!("{model} v{version}");
            let (state, detail, outcome_s) = match &outcome {
                ActivationOutcome::Activated => ("active".to_string(), String::new(), OUTCOME_OK),
                ActivationOutcome::Refused { code, reason } => (
                    "failed".to_string(),
                    format!("{code}: {reason}"),
                    OUTCOME_REFUSED,
                ),
                ActivationOutcome::RolledBack { to, reason } => (
                    "rolled_back".to_string(),
                    format!("to v{to}: {reason}"),
                    OUTCOME_REFUSED,
                ),
            };
            let entry = Fleet::audit_entry(
                &device.tenant,
                &actor,
                "device.activate",
                &target,
                outcome_s,
                detail.clone(),
            );
            if let Err(e) = fleet
                .store
                .report_device_model(
                    &device.id,
                    model.as_str(),
                    version as i64,
                    &state,
                    &detail,
                    entry,
                )
                .await
            {
                tracing::error!(device = %device.id, error = %e, "storing an activation report failed");
            }
        }
        AgentFrame::Progress {
            manifest_digest,
            received,
            total,
        } => {
            let pct = (received.min(total) * 100)
                .checked_div(total)
                .unwrap_or(100);
            fleet.set_progress(&device.id, &manifest_digest.to_hex(), pct);
        }
        AgentFrame::DesiredStateRefused {
            sequence,
            code,
            reason,
        } => {
            fleet
                .audit(
                    &device.tenant,
                    &actor,
                    "device.desired_state",
                    &sequence.map(|s| format!("#{s}")).unwrap_or_default(),
                    OUTCOME_REFUSED,
                    format!("{code}: {reason}"),
                )
                .await;
        }
        AgentFrame::Heartbeat { .. } => {
            let _w = fleet.writes.lock().await;
            let _ = fleet.store.touch_device(&device.id).await;
        }
        AgentFrame::Hello { .. } | AgentFrame::Fetch { .. } | AgentFrame::Enroll { .. } => {}
    }
}

/// A fetch stream: the bundle `digest` from `offset`, if it is assigned to
/// this device.
async fn fetch(
    fleet: Arc<Fleet>,
    device: db::Device,
    mut s: quinn::SendStream,
    digest: Digest,
    offset: u64,
) -> Result<(), String> {
    let hexd = digest.to_hex();
    let assigned = fleet
        .assignments(&device)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|a| a.manifest_digest == digest);
    let Some(a) = assigned else {
        let reason = format!("bundle {hexd} is not assigned to device {}", device.id);
        fleet
            .audit(
                &device.tenant,
                &format!("device {}", device.id),
                "device.fetch",
                &hexd,
                OUTCOME_REFUSED,
                reason.clone(),
            )
            .await;
        send(&mut s, &ServerFrame::FetchRefused { digest, reason }).await?;
        let _ = s.finish();
        return Ok(());
    };
    let _slot = fleet.download_slot().await.map_err(|e| e.to_string())?;
    let bytes = match fleet
        .bundle_bytes(&device.tenant, a.model.as_str(), a.version as i64, &hexd)
        .await
    {
        Ok(b) => b,
        Err(reason) => {
            send(&mut s, &ServerFrame::FetchRefused { digest, reason }).await?;
            let _ = s.finish();
            return Ok(());
        }
    };
    let total = bytes.len() as u64;
    let start = offset.min(total) as usize;
    send(
        &mut s,
        &ServerFrame::FetchStart {
            digest,
            offset: start as u64,
            total,
        },
    )
    .await?;
    if start > 0 {
        fleet
            .audit(
                &device.tenant,
                &format!("device {}", device.id),
                "device.fetch",
                &hexd,
                OUTCOME_OK,
                format!("resumed at byte {start} of {total}"),
            )
            .await;
    }
    // Failpoint `fleet-corrupt-model=return(MODEL)`: serve MODEL's bundles
    // with their last byte flipped, as a tampering network or disk would.
    let corrupt = super::failpoint("fleet-corrupt-model").as_deref() == Some(a.model.as_str());
    let mut pos = start;
    while pos < bytes.len() {
        let end = (pos + fleet.opts.chunk_bytes).min(bytes.len());
        let mut data = bytes[pos..end].to_vec();
        if corrupt && end == bytes.len() {
            // Failpoint: flip the last byte of the bundle.
            if let Some(b) = data.last_mut() {
                *b ^= 0x55;
            }
        }
        send(
            &mut s,
            &ServerFrame::Chunk {
                digest,
                offset: pos as u64,
                data,
            },
        )
        .await?;
        pos = end;
    }
    let _ = s.finish();
    let _ = s.stopped().await;
    Ok(())
}
