//! Enrollment on a QUIC connection without a client certificate: one
//! `Enroll` frame (admitted before authentication, `admission`), the
//! one-use token checked and consumed, a device certificate issued by the
//! fleet CA, and the tenant's trust-root chain sent with the answer.

use super::admission::{self, ENROLL_FRAME_LIMIT};
use super::stream_io::send;
use super::{db, Fleet};
use crate::audit::OUTCOME_OK;
use ferry_protocol::frames::{AgentFrame, ServerFrame, PROTOCOL_VERSION};
use ferry_protocol::keys::sha256;
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn enrollment(fleet: Arc<Fleet>, conn: quinn::Connection) {
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
        runtimes: None,
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
