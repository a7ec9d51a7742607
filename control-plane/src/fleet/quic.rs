//! The QUIC endpoint: enrollment (`enrollment`) on connections without a client
//! certificate, the control stream and fetch streams on mutual-TLS ones.

use super::admission::{self, Admission};
use super::report_limit::{truncate, Admit, ReportLimiter, MAX_RECORDS_PER_MINUTE};
use super::stream_io::{read_frame, send};
use super::{db, Fleet, FleetError};
use crate::audit::{OUTCOME_OK, OUTCOME_REFUSED};
use crate::changes::ChangeKind;
use ferry_protocol::frames::{
    ActivationOutcome, AgentFrame, FrameReader, ServerFrame, PROTOCOL_VERSION,
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

fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let id = conn.peer_identity()?;
    let certs = id.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| sha256(c.as_ref()).to_hex())
}

async fn connection(fleet: Arc<Fleet>, conn: quinn::Connection) {
    let Some(fp) = peer_fingerprint(&conn) else {
        super::enrollment::enrollment(fleet, conn).await;
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
    let offered = OfferedRuntimes::default();
    loop {
        let (s, r) = match conn.accept_bi().await {
            Ok(x) => x,
            Err(_) => break,
        };
        let fleet = fleet.clone();
        let device = device.clone();
        let offered = offered.clone();
        tokio::spawn(async move {
            if let Err(e) = stream(fleet, device.clone(), s, r, offered).await {
                tracing::debug!(device = %device.id, error = %e, "stream ended");
            }
        });
    }
    fleet.unregister(&device.id, &conn);
    fleet.close_session(&device.id, &session).await;
    changed();
}

/// The runtimes this connection's `Hello` offered, shared with its fetch
/// streams: a fetch checks the assignment against them, not against what
/// the device offered when the connection was accepted.
type OfferedRuntimes = Arc<std::sync::Mutex<Option<Vec<String>>>>;

async fn stream(
    fleet: Arc<Fleet>,
    device: db::Device,
    mut s: quinn::SendStream,
    mut r: quinn::RecvStream,
    offered: OfferedRuntimes,
) -> Result<(), String> {
    let mut reader = FrameReader::new();
    match read_frame(&mut r, &mut reader).await? {
        Some(AgentFrame::Hello {
            protocol,
            last_sequence,
            runtimes,
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
            // What it offers decides which runtime-bound versions it is
            // sent, from the first desired state on.
            let mut device = device;
            fleet
                .store
                .set_device_runtimes(&device.tenant, &device.id, &runtimes)
                .await
                .map_err(|e| e.to_string())?;
            let runtimes = db::runtimes_from_string(&db::runtimes_to_string(&runtimes));
            if let Ok(mut o) = offered.lock() {
                *o = Some(runtimes.clone());
            }
            device.runtimes = Some(runtimes);
            control(fleet, device, s, r, reader, last_sequence).await
        }
        Some(AgentFrame::Fetch { digest, offset }) => {
            let mut device = device;
            if let Some(r) = offered.lock().ok().and_then(|o| o.clone()) {
                device.runtimes = Some(r);
            }
            fetch(fleet, device, s, digest, offset).await
        }
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
