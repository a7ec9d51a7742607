//! Fleet membership: enrollment, the QUIC session with the control plane,
//! desired-state checks, resumable downloads and activation.
//!
//! Files under `DATA/fleet/`:
//! - `device.key` (PKCS#8, generated here, never sent), `device.der` (the
//!   certificate the control plane's device CA issued for it), `ca.der`;
//! - `device.json`: device id, tenant, server address, online public key;
//! - `trust.root`: the tenant's signed trust root: the pinned one (or its
//!   successor) at enrollment, replaced atomically by each verified
//!   successor the control plane sends;
//! - `sequence`: highest desired-state sequence applied (replay floor);
//! - `managed.json`: models the control plane put here, which it may also
//!   take away again (undeploy); side-loaded models are never in it;
//! - `partial/DIGEST.part`: downloads in progress (resumed by length).
//!
//! Nothing from the network is activated unless `serving::Agent::install`
//! verified it completely (signatures, lengths, digests, test vectors)
//! against the enrolled trust root.
//!
//! Modules: `reconcile` decides (pure: no I/O, no clock, no tokio);
//! `session` runs the QUIC session and executes its actions, with
//! `download` (resumable fetches) and `activator` (the serving core's
//! install path); `gate` checks desired-state documents, `target` a
//! bundle's target constraints; `enroll`, `tls` and `wire` are the
//! transport. `sim` (feature `sim`) is the fleet simulator and probes for
//! tests.

pub mod activator;
pub mod download;
pub mod enroll;
pub mod gate;
pub mod reconcile;
pub mod session;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "sim")]
pub mod sim_telemetry;
pub mod target;
mod tls;
mod wire;

use ferry_protocol::keys::PublicKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use activator::{precheck, Activator, AgentActivator};
pub use enroll::{accept_delivered_root, enroll, EnrollOptions, RootPin};
pub use session::{run, run_with, ClientOptions};
pub use target::{check_runtime, check_target};

/// Why a bundle was not activated: a stable code and a sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub code: String,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: &str, reason: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

/// Reconnect delays: `d` doubles from `min` to `max`, and each delay is
/// drawn from `[d/2, d)`, so devices cut off together (a broker or
/// control-plane restart) do not come back in lockstep, and no delay
/// exceeds `max`. Never ends.
pub fn backoff(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    // backon's jitter adds up to the delay again: halve both bounds.
    backon::ExponentialBuilder::default()
        .with_min_delay(min / 2)
        .with_max_delay(max / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The mutual-TLS client configuration of the enrolled device in `data`.
pub(crate) fn device_client_config(data: &Path) -> Result<quinn::ClientConfig, FleetError> {
    let dir = fleet_dir(data);
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(io("reading", &p))
    };
    tls::client_config(
        &read("ca.der")?,
        Some((read("device.der")?, read("device.key")?)),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("connecting to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("the control plane refused enrollment ({code}): {reason}")]
    Refused { code: String, reason: String },
    #[error("this device refused the control plane's trust root ({code}): {reason}")]
    Untrusted { code: &'static str, reason: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
}

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> FleetError + 'a {
    move |source| FleetError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `device.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub device_id: String,
    pub tenant: String,
    /// `HOST:PORT` of the control plane's QUIC endpoint.
    pub server: String,
    /// The name its certificate must carry, when not the host of `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    pub online_key: PublicKey,
    /// The telemetry broker the control plane named at enrollment; used
    /// when the agent's own configuration names none.
    #[serde(default)]
    pub mqtt_url: Option<String>,
}

pub fn fleet_dir(data: &Path) -> PathBuf {
    data.join("fleet")
}

/// The trust root delivered at enrollment, if this device is enrolled.
pub fn enrolled_trust_root(data: &Path) -> Option<PathBuf> {
    let p = fleet_dir(data).join("trust.root");
    p.exists().then_some(p)
}

impl Identity {
    pub fn load(data: &Path) -> Result<Option<Self>, FleetError> {
        let p = fleet_dir(data).join("device.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| FleetError::Bad {
                    path: p,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &p)(e)),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// crash leaves the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), FleetError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = o.open(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming", path))
}

/// Decodes a PEM certificate (or passes DER through).
pub fn pem_or_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(bytes.to_vec());
    };
    if !text.contains("-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect::<Vec<_>>()
        .concat();
    base64_decode(b64.trim()).ok_or_else(|| "PEM body is not valid base64".to_string())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for q in bytes.chunks(4) {
        let pad = q.iter().rev().take_while(|b| **b == b'=').count();
        let mut n = 0u32;
        for (i, b) in q.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { val(*b)? };
            n = (n << 6) | v;
        }
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut b = backoff(min, max);
        let mut cap = min;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..12 {
            let d = b.next().unwrap();
            // (backon computes the jitter in f32: allow its rounding.)
            let slack = Duration::from_micros(10);
            assert!(d >= cap / 2 && d <= cap + slack, "{d:?} vs {cap:?}");
            seen.insert(d);
            cap = (cap * 2).min(max);
        }
        // Jittered: the delays at the cap are not all the same.
        assert!(seen.len() > 6, "{seen:?}");
        let d = backoff(min, max).next().unwrap();
        assert!(
            d <= min + Duration::from_micros(10),
            "a fresh backoff starts small: {d:?}"
        );
    }

    #[test]
    fn pem_decodes_and_der_passes_through() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC/w==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_or_der(pem.as_bytes()).unwrap(), vec![0, 1, 2, 255]);
        assert_eq!(pem_or_der(&[0x30, 0x82]).unwrap(), vec![0x30, 0x82]);
        assert!(pem_or_der(b"-----BEGIN X-----\n!!!\n-----END X-----\n").is_err());
    }
}
