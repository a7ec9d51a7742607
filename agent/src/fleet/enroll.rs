//! `ferry-agent enroll`: generate the device key here, present the
//! operator's token over a server-authenticated QUIC connection, store the
//! certificate, CA, trust root and online key the control plane returns.
//!
//! The trust root is pinned out of band (`--trust FILE` or
//! `--root-fingerprint`): the delivered root must be the pinned one or a
//! valid successor chain of it, for the tenant the device enrolls in.
//! Otherwise nothing is stored and enrollment fails: a control plane (or a
//! write to its database) cannot hand the device a root of its own making.

use super::wire::{read_server_frame, send_frame};
use super::{fleet_dir, io, tls, write_atomic, FleetError, Identity};
use ferry_protocol::frames::{AgentFrame, FrameReader, ServerFrame, PROTOCOL_VERSION};
use ferry_protocol::trust::{fingerprint, follow_chain, parse_fingerprint, SignedTrustRoot};
use std::path::PathBuf;

/// The trust root an enrolling device accepts, given out of band.
#[derive(Clone, Debug)]
pub enum RootPin {
    /// The root file as `ferry trust init` wrote it.
    File(PathBuf),
    /// Its SHA-256 fingerprint (hex, optionally `sha256:`-prefixed).
    Fingerprint(String),
}

pub struct EnrollOptions {
    pub server: String,
    /// The name the server certificate must carry, if not the host of
    /// `server` (kept in `device.json` for later sessions).
    pub server_name: Option<String>,
    pub token: String,
    /// The control plane's CA certificate (PEM or DER).
    pub ca: PathBuf,
    pub pin: RootPin,
    pub data: PathBuf,
    pub hostname: Option<String>,
}

fn refused(reason: String) -> FleetError {
    FleetError::Untrusted {
        code: "trust_root_not_pinned",
        reason,
    }
}

/// The root this device stores: the pinned one, followed along `chain`
/// (the delivered root and every version the control plane sent) to the
/// newest valid successor. Refuses a delivered root that is neither, or
/// whose tenant is not `tenant`.
pub fn accept_delivered_root(
    pin: &RootPin,
    delivered: &SignedTrustRoot,
    chain: &[SignedTrustRoot],
    tenant: &str,
    now: u64,
) -> Result<SignedTrustRoot, FleetError> {
    let mut all: Vec<SignedTrustRoot> = chain.to_vec();
    all.push(delivered.clone());
    let anchor = match pin {
        RootPin::File(path) => {
            let bytes = std::fs::read(path).map_err(io("reading", path))?;
            SignedTrustRoot::from_bytes(&bytes).map_err(|e| FleetError::Bad {
                path: path.clone(),
                reason: e.to_string(),
            })?
        }
        RootPin::Fingerprint(fp) => {
            let want = parse_fingerprint(fp).ok_or_else(|| {
                FleetError::Protocol(format!("--root-fingerprint {fp:?}: expected 64 hex digits"))
            })?;
            all.iter()
                .find(|s| fingerprint(s) == want)
                .cloned()
                .ok_or_else(|| {
                    refused(format!(
                        "the control plane delivered trust root {} and no root with the pinned fingerprint {}",
                        fingerprint(delivered).to_hex(),
                        want.to_hex()
                    ))
                })?
        }
    };
    let pinned = anchor
        .open_any_time()
        .map_err(|e| refused(format!("pinned trust root: {e}")))?;
    if pinned.tenant != tenant {
        return Err(refused(format!(
            "the pinned trust root is for tenant {:?}, the enrollment for {tenant:?}",
            pinned.tenant
        )));
    }
    let delivered_root = delivered
        .peek()
        .map_err(|e| refused(format!("delivered trust root: {e}")))?;
    let (root, signed) = match follow_chain(&pinned, &all, now) {
        Ok(Some((root, signed))) => (root, signed),
        Ok(None) => (pinned.clone(), anchor.clone()),
        Err(e) => {
            return Err(refused(format!(
            "the delivered trust root v{} is not the pinned v{} nor a valid successor of it: {e}",
            delivered_root.version, pinned.version
        )))
        }
    };
    // What the control plane says is current must be what the chain led
    // to: a different root at the pinned version, or one the chain does
    // not reach, is a lie.
    if signed != *delivered {
        return Err(refused(format!(
            "the delivered trust root v{} is not the pinned v{} nor a valid successor of it",
            delivered_root.version, pinned.version
        )));
    }
    root.check_expiry(now)
        .map_err(|e| refused(format!("trust root: {e}")))?;
    Ok(signed)
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
    let conn = tls::connect_named(
        &endpoint,
        &opts.server,
        opts.server_name.as_deref(),
        tls::client_config(&ca, None)?,
    )
    .await?;
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
    // Every version of the tenant's root follows (an older control plane
    // sends none and ends the stream).
    let chain = match reply {
        Some(ServerFrame::Enrolled { .. }) => match read_server_frame(&mut r, &mut reader).await {
            Ok(Some(ServerFrame::TrustRoots { chain })) => chain,
            _ => vec![],
        },
        _ => vec![],
    };
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
            // The trust root must follow from the pinned one before
            // anything is stored.
            let signed = SignedTrustRoot::from_bytes(&trust_root)
                .map_err(|e| refused(format!("delivered trust root: {e}")))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let held = accept_delivered_root(&opts.pin, &signed, &chain, &tenant, now)?;
            write_atomic(&dir.join("device.key"), &key.serialize_der(), true)?;
            write_atomic(&dir.join("device.der"), &certificate, false)?;
            write_atomic(&dir.join("ca.der"), &ca_certificate, false)?;
            write_atomic(&dir.join("trust.root"), &held.to_bytes(), false)?;
            let id = Identity {
                device_id,
                tenant,
                server: opts.server.clone(),
                server_name: opts.server_name.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use ferry_protocol::trust::TrustRoot;
    use ferry_protocol::PublicKey;

    fn signed(tenant: &str, version: u64, root_seed: u8, signers: &[u8]) -> SignedTrustRoot {
        let root = TrustRoot {
            tenant: tenant.into(),
            version,
            expires_at: 10_000,
            threshold: 1,
            root_keys: vec![PublicKey::from_signing_key(&SigningKey::from_bytes(
                &[root_seed; 32],
            ))],
            publishers: vec![],
            publisher_threshold: 1,
            revoked: vec![],
        };
        let keys: Vec<SigningKey> = signers
            .iter()
            .map(|s| SigningKey::from_bytes(&[*s; 32]))
            .collect();
        let refs: Vec<&SigningKey> = keys.iter().collect();
        SignedTrustRoot::sign(&root, &refs)
    }

    fn fp(s: &SignedTrustRoot) -> RootPin {
        RootPin::Fingerprint(fingerprint(s).to_hex())
    }

    #[test]
    fn the_pinned_root_or_its_successor_chain_is_accepted() {
        let v1 = signed("acme", 1, 1, &[1]);
        let v2 = signed("acme", 2, 1, &[1]);
        let got =
            accept_delivered_root(&fp(&v1), &v1, std::slice::from_ref(&v1), "acme", 5).unwrap();
        assert_eq!(got, v1);
        let got =
            accept_delivered_root(&fp(&v1), &v2, &[v1.clone(), v2.clone()], "acme", 5).unwrap();
        assert_eq!(got, v2);
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("v1.root");
        std::fs::write(&file, v1.to_bytes()).unwrap();
        let got = accept_delivered_root(&RootPin::File(file), &v2, &[], "acme", 5).unwrap();
        assert_eq!(got, v2);
    }

    #[test]
    fn a_forged_foreign_or_unpinned_root_is_refused() {
        let v1 = signed("acme", 1, 1, &[1]);
        let forged2 = signed("acme", 2, 9, &[9]);
        let forged1 = signed("acme", 1, 9, &[9]);
        let code = |r: Result<SignedTrustRoot, FleetError>| match r {
            Err(FleetError::Untrusted { code, reason }) => format!("{code}: {reason}"),
            other => panic!("{other:?}"),
        };
        // A forged successor of the pinned root.
        let e = code(accept_delivered_root(
            &fp(&v1),
            &forged2,
            &[v1.clone(), forged2.clone()],
            "acme",
            5,
        ));
        assert!(e.contains("not the pinned v1"), "{e}");
        // Another root at the pinned version.
        let e = code(accept_delivered_root(&fp(&v1), &forged1, &[], "acme", 5));
        assert!(e.contains("no root with the pinned fingerprint"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("v1.root");
        std::fs::write(&file, v1.to_bytes()).unwrap();
        let e = code(accept_delivered_root(
            &RootPin::File(file),
            &forged1,
            std::slice::from_ref(&forged1),
            "acme",
            5,
        ));
        assert!(e.contains("not the pinned v1"), "{e}");
        // The pinned root, but the enrollment is for another tenant.
        let e = code(accept_delivered_root(&fp(&v1), &v1, &[], "other", 5));
        assert!(e.contains("tenant"), "{e}");
        // Expired by now.
        let e = code(accept_delivered_root(&fp(&v1), &v1, &[], "acme", 20_000));
        assert!(e.contains("expired"), "{e}");
    }
}
