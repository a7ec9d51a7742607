//! The QUIC endpoint: enrollment on connections without a client
//! certificate, the control stream and fetch streams on mutual-TLS ones.

use super::admission::{self, Admission, ENROLL_FRAME_LIMIT};
use super::report_limit::{truncate, Admit, ReportLimiter, MAX_RECORDS_PER_MINUTE};
use super::{db, Fleet, FleetError};
use crate::audit::{OUTCOME_OK, OUTCOME_REFUSED};
use crate::changes::ChangeKind;
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
    transport.send_window(fleet.opts.send_window);
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
    tokio::spawn(super::sessions::renew_session_leases(Arc::downgrade(
        &fleet,
    )));
    let admission = Arc::new(Admission::from_env());
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            if !admission.admit(ep.open_connections()) {
                tracing::warn!(
                    peer = %incoming.remote_address(),
                    cap = admission.max_connections,
                    "QUIC connection refused: at the connection cap"
                );
                incoming.refuse();
                continue;
            }
            let fleet = fleet.clone();
            let admission = admission.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!(error = %e, "QUIC handshake failed");
                        return;
                    }
                };
                // Unauthenticated (enrolling) connections hold a place
                // under their own cap until they end.
                let _enrolling = if peer_fingerprint(&conn).is_some() {
                    None
                } else {
                    match admission.enrolling() {
                        Some(p) => Some(p),
                        None => {
                            tracing::warn!(
                                peer = %conn.remote_address(),
                                cap = admission.max_enrolling,
                                "enrollment connection refused: too many in progress"
                            );
                            conn.close(
                                quinn::VarInt::from_u32(admission::BUSY),
                                b"too many enrollments in progress; retry later",
                            );
                            return;
                        }
                    }
                };
                connection(fleet, conn).await
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
    // The lease is written before the connection counts here, and before
    // the change below makes listings read it.
    let session = fleet.open_session(&device.id).await;
    fleet.register(&device.id, conn.clone(), session.clone());
    // A revocation between the check above and `register` found no
    // connection to close: check again now that this one is registered.
    if let Ok(d) = fleet.store.device(&device.tenant, &device.id).await {
        if d.revoked_at.is_some() {
            fleet.disconnect(&device.id, "device is revoked");
            return;
        }
    }
    tracing::info!(device = %device.id, tenant = %device.tenant, "device connected");
    let changed = || {
        fleet
            .store
            .changes()
            .send(&device.tenant, ChangeKind::Device(device.id.clone()))
    };
    changed();
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
    fleet.close_session(&device.id, &session).await;
    changed();
}

async fn enrollment(fleet: Arc<Fleet>, conn: quinn::Connection) {
    let Ok(Ok((mut s, mut r))) =
        tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await
    else {
        conn.close(quinn::VarInt::from_u32(1), b"expected an enrollment stream");
        return;
    };
    let read = admission::read_small_frame(&mut r, ENROLL_FRAME_LIMIT);
    let reply = match tokio::time::timeout(Duration::from_secs(10), read).await {
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
        Ok(Err(reason)) => ServerFrame::Refused {
            code: "bad_request".into(),
            reason,
        },
        _ => ServerFrame::Refused {
            code: "bad_request".into(),
            reason: "expected an Enroll frame".into(),
        },
    };
    let tenant = match &reply {
        ServerFrame::Enrolled { tenant, .. } => Some(tenant.clone()),
        _ => None,
    };
    let _ = send(&mut s, &reply).await;
    // Every version of the tenant's root, so a device pinned to an older
    // one can follow the chain to the current one (it verifies each link).
    if let Some(tenant) = tenant {
        match fleet.trust_chain(&tenant, 0).await {
            Ok(chain) => {
                let _ = send(&mut s, &ServerFrame::TrustRoots { chain }).await;
            }
            Err(e) => tracing::error!(tenant, error = %e, "reading the trust-root chain failed"),
        }
    }
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
        session_until: None,
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
        .enroll_device(&device, &sha256(&cert).to_hex(), public_key, entry)
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
        Some(AgentFrame::Hello {
            protocol,
            last_sequence,
            ..
        }) => {
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
            control(fleet, device, s, r, reader, last_sequence).await
        }
        Some(AgentFrame::Fetch { digest, offset }) => fetch(fleet, device, s, digest, offset).await,
        Some(_) => Err("unexpected first frame".into()),
        None => Ok(()),
    }
}

/// Sends the device the tenant's roots after the one it holds, if it holds
/// an older one ([`Fleet::trust_offer`]).
async fn offer_trust(
    fleet: &Fleet,
    device: &db::Device,
    view: &mut super::trust::TrustView,
    s: &mut quinn::SendStream,
) -> Result<(), String> {
    match fleet.trust_offer(device, view).await {
        Ok(Some(frame)) => send(s, &frame).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The control stream: push desired state now, on every change and before
/// it expires; offer newer trust roots; take reports.
async fn control(
    fleet: Arc<Fleet>,
    device: db::Device,
    mut s: quinn::SendStream,
    mut r: quinn::RecvStream,
    mut reader: FrameReader,
    last_sequence: Option<u64>,
) -> Result<(), String> {
    let mut changes = fleet.subscribe();
    let mut device = device;
    let mut trust = super::trust::TrustView::default();
    // The device's replay floor: every document goes above it.
    let mut floor = last_sequence;
    let push = |d: db::Device, floor: Option<u64>| {
        let fleet = fleet.clone();
        async move {
            fleet
                .desired_state(&d, fleet.store.clock().now_secs(), floor)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let (first, seq) = push(device.clone(), floor).await?;
    floor = Some(seq);
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
                let (doc, seq) = push(device.clone(), floor).await?;
                floor = Some(seq);
                send(&mut s, &ServerFrame::DesiredState(doc)).await?;
                // Failpoint: after every new desired state, send the
                // connection's first one again, as a replaying attacker would.
                if super::failpoint("fleet-replay-desired").is_some() {
                    send(&mut s, &ServerFrame::DesiredState(first.clone())).await?;
                }
                offer_trust(&fleet, &device, &mut trust, &mut s).await?;
                refresh_at = tokio::time::Instant::now() + refresh;
            }
            _ = tokio::time::sleep_until(refresh_at) => {
                let (doc, seq) = push(device.clone(), floor).await?;
                floor = Some(seq);
                send(&mut s, &ServerFrame::DesiredState(doc)).await?;
                refresh_at = tokio::time::Instant::now() + refresh;
            }
            _ = heartbeat.tick() => {
                send(&mut s, &ServerFrame::Heartbeat { at: fleet.store.clock().now_secs() }).await?;
                // A `ferry trust push` (through any replica) reaches the
                // devices within a heartbeat or two.
                offer_trust(&fleet, &device, &mut trust, &mut s).await?;
            }
            frame = rx.recv() => {
                let Some(frame) = frame else { return Ok(()); };
                tracing::debug!(device = %device.id, frame = ?frame, "control frame");
                match frame {
                    f @ (AgentFrame::TrustRoot { .. } | AgentFrame::TrustRootRefused { .. }) => {
                        fleet.trust_report(&device, &mut trust, f).await;
                        offer_trust(&fleet, &device, &mut trust, &mut s).await?;
                    }
                    f => report(&fleet, &device, f).await,
                }
            }
        }
    }
}

/// Handles a frame from the device's control stream. Reports and refusals
/// are the device's words: cut to size, checked against its assignment,
/// written once per change and capped per minute ([`report_limit`]).
async fn report(fleet: &Fleet, device: &db::Device, frame: AgentFrame) {
    let actor = format!("device {}", device.id);
    let now = fleet.store.clock().now_secs();
    match frame {
        AgentFrame::Report {
            model,
            version,
            outcome,
        } => {
            fleet.clear_progress(&device.id);
            let target = format!("{} v{version}", truncate(model.as_str()));
            let (state, detail, outcome_s) = match &outcome {
                ActivationOutcome::Activated => ("active".to_string(), String::new(), OUTCOME_OK),
                ActivationOutcome::Refused { code, reason } => (
                    "failed".to_string(),
                    truncate(&format!("{code}: {reason}")),
                    OUTCOME_REFUSED,
                ),
                ActivationOutcome::RolledBack { to, reason } => (
                    "rolled_back".to_string(),
                    truncate(&format!("to v{to}: {reason}")),
                    OUTCOME_REFUSED,
                ),
            };
            // Only a model the device is assigned gets a row.
            let assigned = match fleet.assignments(device).await {
                Ok(a) => a.iter().any(|a| a.model == model),
                Err(e) => {
                    tracing::error!(device = %device.id, error = %e, "reading assignments failed");
                    return;
                }
            };
            let key = if assigned {
                format!("report\0{target}\0{state}\0{detail}")
            } else {
                "report\0unassigned".to_string()
            };
            if !admitted(fleet, device, &actor, &key, now).await {
                return;
            }
            let _w = fleet.writes.lock().await;
            if !assigned {
                fleet
                    .audit(
                        &device.tenant,
                        &actor,
                        "device.activate",
                        &target,
                        OUTCOME_REFUSED,
                        "report for a model this device is not assigned; not recorded".into(),
                    )
                    .await;
                return;
            }
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
            } else {
                fleet.reported();
                fleet
                    .store
                    .changes()
                    .send(&device.tenant, ChangeKind::Device(device.id.clone()));
            }
        }
        AgentFrame::Progress {
            manifest_digest,
            received,
            total,
        } => {
            let pct = super::bundle_serve::percent(received, total);
            fleet.set_progress(&device.id, &manifest_digest.to_hex(), pct);
        }
        AgentFrame::DesiredStateRefused {
            sequence,
            code,
            reason,
        } => {
            let detail = truncate(&format!("{code}: {reason}"));
            let target = sequence.map(|s| format!("#{s}")).unwrap_or_default();
            let key = format!("refused\0{target}\0{detail}");
            if !admitted(fleet, device, &actor, &key, now).await {
                return;
            }
            fleet
                .audit(
                    &device.tenant,
                    &actor,
                    "device.desired_state",
                    &target,
                    OUTCOME_REFUSED,
                    detail,
                )
                .await;
        }
        AgentFrame::Heartbeat { .. } => {
            let _w = fleet.writes.lock().await;
            let _ = fleet.store.touch_device(&device.id).await;
        }
        AgentFrame::Hello { .. }
        | AgentFrame::Fetch { .. }
        | AgentFrame::Enroll { .. }
        | AgentFrame::TrustRoot { .. }
        | AgentFrame::TrustRootRefused { .. } => {}
    }
}

/// Whether a record keyed `key` from `device` may be written now; a flood
/// is audited once per minute, as one record.
async fn admitted(fleet: &Fleet, device: &db::Device, actor: &str, key: &str, now: u64) -> bool {
    match ReportLimiter::global().admit(&device.id, key, now) {
        Admit::Record => true,
        Admit::Repeat => false,
        Admit::Drop {
            audit,
            dropped_before,
        } => {
            if audit {
                fleet
                    .audit(
                        &device.tenant,
                        actor,
                        "device.report_flood",
                        &device.id,
                        OUTCOME_REFUSED,
                        format!(
                            "over {MAX_RECORDS_PER_MINUTE} reports this minute; further ones are dropped until the next ({dropped_before} dropped the minute before)"
                        ),
                    )
                    .await;
            }
            false
        }
    }
}

/// A fetch stream: served from the artifact store by `bundle_serve`.
async fn fetch(
    fleet: Arc<Fleet>,
    device: db::Device,
    s: quinn::SendStream,
    digest: Digest,
    offset: u64,
) -> Result<(), String> {
    super::bundle_serve::fetch(fleet, device, s, digest, offset).await
}
