//! `ferry-agent enroll`: generate the device key here, present the
//! operator's token over a server-authenticated QUIC connection, store the
//! certificate, CA, trust root and online key the control plane returns.

use super::wire::{read_server_frame, send_frame};
use super::{fleet_dir, io, tls, write_atomic, FleetError, Identity};
use ferry_protocol::frames::{AgentFrame, FrameReader, ServerFrame, PROTOCOL_VERSION};
use ferry_protocol::trust::SignedTrustRoot;
use std::path::PathBuf;

pub struct EnrollOptions {
    pub server: String,
    pub token: String,
    /// The control plane's CA certificate (PEM or DER).
    pub ca: PathBuf,
    pub data: PathBuf,
    pub hostname: Option<String>,
}

/// A broker on an unspecified address (an embedded broker on `0.0.0.0`)
/// is reached on the host this device enrolled with.
fn reachable_broker(url: &str, server: &str) -> String {
    let Ok(mut u) = url.parse::<ferry_protocol::telemetry::BrokerUrl>() else {
        return url.to_string();
    };
    let unspecified = u
        .host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    if unspecified {
        if let Some((host, _)) = server.rsplit_once(':') {
            u.host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
        }
    }
    u.to_string()
}

pub async fn enroll(opts: &EnrollOptions) -> Result<Identity, FleetError> {
    let dir = fleet_dir(&opts.data);
    if dir.join("device.json").exists() {
        return Err(FleetError::Bad {
            path: dir.join("device.json"),
            reason: "this data directory is already enrolled; use a fresh one or remove it".into(),
        });
    }
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let ca_bytes = std::fs::read(&opts.ca).map_err(io("reading", &opts.ca))?;
    let ca = super::pem_or_der(&ca_bytes).map_err(|reason| FleetError::Bad {
        path: opts.ca.clone(),
        reason,
    })?;
    // The private key is generated here and never leaves this directory.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| FleetError::Tls(e.to_string()))?;
    let hostname = opts.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    });
    let endpoint = tls::client_endpoint()?;
    let conn = tls::connect(&endpoint, &opts.server, tls::client_config(&ca, None)?).await?;
    let (mut s, mut r) = conn
        .open_bi()
        .await
        .map_err(|e| FleetError::Protocol(e.to_string()))?;
    send_frame(
        &mut s,
        &AgentFrame::Enroll {
            protocol: PROTOCOL_VERSION,
            token: opts.token.clone(),
            public_key: key.public_key_raw().to_vec(),
            hostname,
        },
    )
    .await?;
    let mut reader = FrameReader::new();
    let reply = read_server_frame(&mut r, &mut reader).await?;
    conn.close(quinn::VarInt::from_u32(0), b"enrolled");
    endpoint.wait_idle().await;
    match reply {
        Some(ServerFrame::Enrolled {
            device_id,
            tenant,
            certificate,
            ca_certificate,
            trust_root,
            online_key,
            mqtt_url,
        }) => {
            // The trust root must open before anything is stored.
            let signed = SignedTrustRoot::from_bytes(&trust_root)
                .map_err(|e| FleetError::Protocol(format!("delivered trust root: {e}")))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            signed
                .open(now)
                .map_err(|e| FleetError::Protocol(format!("delivered trust root: {e}")))?;
            write_atomic(&dir.join("device.key"), &key.serialize_der(), true)?;
            write_atomic(&dir.join("device.der"), &certificate, false)?;
            write_atomic(&dir.join("ca.der"), &ca_certificate, false)?;
            write_atomic(&dir.join("trust.root"), &trust_root, false)?;
            let id = Identity {
                device_id,
                tenant,
                server: opts.server.clone(),
                online_key,
                mqtt_url: mqtt_url.map(|u| reachable_broker(&u, &opts.server)),
            };
            let json =
                serde_json::to_vec_pretty(&id).map_err(|e| FleetError::Protocol(e.to_string()))?;
            write_atomic(&dir.join("device.json"), &json, false)?;
            Ok(id)
        }
        Some(ServerFrame::Refused { code, reason }) => Err(FleetError::Refused { code, reason }),
        Some(_) => Err(FleetError::Protocol("unexpected reply to Enroll".into())),
        None => Err(FleetError::Protocol(
            "the control plane closed the stream without a reply".into(),
        )),
    }
}
