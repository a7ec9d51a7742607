//! Telemetry payloads published over MQTT as JSON. Consumers read them with
//! any MQTT client; the `schema` field versions the format. `docs/telemetry.md`
//! documents every field with an example per topic.
//!
//! Topics: `ferry/v1/{tenant}/{device}/{kind}` with `kind` one of
//! [`KIND_DRIFT`], [`KIND_HEALTH`] (retained; the last will marks the device
//! offline) and [`KIND_EVENTS`]. The control plane publishes its alerts on
//! `ferry/v1/{tenant}/_control/alerts`.

use crate::baseline::{Baseline, BaselineError, MISSING_BIN};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version written in every payload's `schema` field.
pub const TELEMETRY_SCHEMA: u32 = 1;

pub const KIND_DRIFT: &str = "drift";
pub const KIND_HEALTH: &str = "health";
pub const KIND_EVENTS: &str = "events";
/// The pseudo-device the control plane publishes alerts under.
pub const CONTROL_DEVICE: &str = "_control";
pub const KIND_ALERTS: &str = "alerts";

/// Upper bounds (µs) of the latency histogram buckets; a last bucket counts
/// everything above the final bound.
pub const LATENCY_BOUNDS_US: [u32; 11] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// Largest payload the control plane accepts, bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most features a summary may carry.
pub const MAX_FEATURES: usize = 4096;

/// `ferry/v1/{tenant}/{device}/{kind}`.
pub fn topic(tenant: &str, device: &str, kind: &str) -> String {
    format!("ferry/v1/{tenant}/{device}/{kind}")
}

/// Splits a topic into `(tenant, device, kind)`; `None` for anything that is
/// not a Ferry v1 topic with safe names.
pub fn parse_topic(topic: &str) -> Option<(&str, &str, &str)> {
    let mut it = topic.split('/');
    let (Some("ferry"), Some("v1"), Some(t), Some(d), Some(k), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return None;
    };
    let ok = |s: &str| !s.is_empty() && s.len() <= 128 && is_topic_name(s);
    (ok(t) && ok(d) && ok(k)).then_some((t, d, k))
}

/// Tenant and device names usable as a topic level: `[A-Za-z0-9._-]`, not
/// starting with `.`.
pub fn is_topic_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// An MQTT broker address: `mqtt://[user[:pass]@]host[:port]` (also
/// `tcp://`; port 1883) or, over TLS, `mqtts://…` (also `ssl://`; port
/// 8883). Agents and the control plane parse `--mqtt-url` with this.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: bool,
}

// Never print the password.
impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl std::fmt::Display for BrokerUrl {
    /// Without credentials: safe to log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("MQTT URL {s:?}: {e}"))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => {
                return Err(format!(
                    "MQTT URL {s:?} must start with mqtt:// or, for TLS, mqtts://"
                ))
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("MQTT URL {s:?} has no host")),
        };
        if host.is_empty() {
            return Err(format!("MQTT URL {s:?} has no host"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!("MQTT URL {s:?}: a broker URL has no path or query"));
        }
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|e| format!("MQTT URL {s:?}: credentials: {e}"))
        };
        let username = match url.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = url.password().map(decode).transpose()?;
        Ok(Self {
            host,
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            username,
            password,
            tls,
        })
    }
}

/// Why a window closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClosedBy {
    Rows,
    Time,
    Shutdown,
}

/// The prediction distribution of a window: class counts for integer or
/// string outputs, moments for numeric ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Predictions {
    /// Output the distribution is taken from.
    pub output: String,
    /// Class label (decimal text) → count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, u64>,
    /// For numeric outputs: count, mean, min, max of the first value per row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericStats>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    pub n: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Per-window drift summary of one model version and variant on one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftSummary {
    pub schema: u32,
    pub tenant: String,
    pub device: String,
    /// Per-device message sequence number (shared with events), increasing
    /// by one per queued message; consumers de-duplicate QoS 1 redeliveries
    /// and detect gaps with it.
    pub seq: u64,
    pub model: String,
    pub version: u64,
    pub variant: String,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub closed_by: ClosedBy,
    /// Rows (not requests) seen in the window.
    pub rows: u64,
    /// Feature names, baseline order (empty when the bundle has no baseline).
    pub features: Vec<String>,
    /// PSI per feature against the bundle baseline (`null` when a feature
    /// had no present values in the window).
    pub psi: Vec<Option<f64>>,
    /// Missing (NaN / unparseable) values per feature.
    pub missing: Vec<u64>,
    /// Values outside the reference `[min, max]` per feature.
    pub out_of_range: Vec<u64>,
    pub predictions: Predictions,
    /// Counts per [`LATENCY_BOUNDS_US`] bucket, plus one for "above".
    pub latency_us: Vec<u64>,
    pub latency_p50_us: u32,
    pub latency_p99_us: u32,
    /// Requests that failed in the model.
    pub errors: u64,
    /// Requests in the window.
    pub requests: u64,
    /// Labels fed back for predictions of this window's version, and how many
    /// matched the prediction.
    pub labelled: u64,
    pub correct: u64,
}

impl DriftSummary {
    /// Checks what a consumer relies on; the control plane refuses anything
    /// else with this message.
    pub fn validate(&self) -> Result<(), String> {
        if self.schema != TELEMETRY_SCHEMA {
            return Err(format!(
                "schema {} is not supported (expected {TELEMETRY_SCHEMA})",
                self.schema
            ));
        }
        if !is_topic_name(&self.tenant) || !is_topic_name(&self.device) {
            return Err("tenant and device must be [A-Za-z0-9._-] names".into());
        }
        if self.model.is_empty() || self.model.len() > 128 {
            return Err("model name is empty or too long".into());
        }
        let n = self.features.len();
        if n > MAX_FEATURES {
            return Err(format!("{n} features, at most {MAX_FEATURES}"));
        }
        if self.psi.len() != n || self.missing.len() != n || self.out_of_range.len() != n {
            return Err(format!(
                "features ({n}), psi ({}), missing ({}) and out_of_range ({}) differ in length",
                self.psi.len(),
                self.missing.len(),
                self.out_of_range.len()
            ));
        }
        if self
            .psi
            .iter()
            .flatten()
            .any(|p| !p.is_finite() || *p < 0.0)
        {
            return Err("psi values must be finite and non-negative".into());
        }
        if self.window_end_ms < self.window_start_ms {
            return Err("window ends before it starts".into());
        }
        if self.correct > self.labelled {
            return Err("more correct predictions than labels".into());
        }
        Ok(())
    }

    /// Missing values as a fraction of all feature values in the window.
    pub fn missing_rate(&self) -> f64 {
        let cells = self.rows.saturating_mul(self.features.len() as u64);
        if cells == 0 {
            return 0.0;
        }
        self.missing.iter().sum::<u64>() as f64 / cells as f64
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Per-feature counts of one window, the input to a summary's PSI.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureCounts {
    /// `bins[f][b]`: rows of feature `f` in bin `b`.
    pub bins: Vec<Vec<u64>>,
    pub missing: Vec<u64>,
    pub out_of_range: Vec<u64>,
}

impl FeatureCounts {
    pub fn new(baseline: &Baseline) -> Self {
        let n = baseline.features.len();
        Self {
            bins: baseline
                .features
                .iter()
                .map(|f| vec![0; f.bins()])
                .collect(),
            missing: vec![0; n],
            out_of_range: vec![0; n],
        }
    }

    /// Counts one row of bin indices (as [`Baseline::bin_row`] makes them).
    pub fn add_bins(&mut self, row: &[u8]) {
        for ((counts, missing), &b) in self.bins.iter_mut().zip(&mut self.missing).zip(row) {
            if b == MISSING_BIN {
                *missing += 1;
            } else if let Some(c) = counts.get_mut(usize::from(b)) {
                *c += 1;
            }
        }
    }

    pub fn clear(&mut self) {
        for c in &mut self.bins {
            c.iter_mut().for_each(|x| *x = 0);
        }
        self.missing.iter_mut().for_each(|x| *x = 0);
        self.out_of_range.iter_mut().for_each(|x| *x = 0);
    }

    /// PSI per feature with `ferry-protocol`'s function; `None` where a
    /// feature had no present values.
    pub fn psi(&self, baseline: &Baseline) -> Result<Vec<Option<f64>>, BaselineError> {
        if self.bins.len() != baseline.features.len() {
            return Err(BaselineError::FeatureMismatch {
                expected: baseline.features.len(),
                got: self.bins.len(),
            });
        }
        baseline
            .features
            .iter()
            .zip(&self.bins)
            .map(
                |(f, c)| match crate::baseline::psi_from_fractions(f.expected(), c) {
                    Ok(p) => Ok(Some(p)),
                    Err(BaselineError::EmptyWindow) => Ok(None),
                    Err(e) => Err(e),
                },
            )
            .collect()
    }
}

/// Quantile of a bucketed latency histogram: the upper bound of the bucket
/// holding the `q`-th observation (the last bound for the overflow bucket).
pub fn histogram_quantile(counts: &[u64], q: f64) -> u32 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return LATENCY_BOUNDS_US
                .get(i)
                .copied()
                .unwrap_or(LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1]);
        }
    }
    LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1]
}

/// Bucket index of a latency in µs.
pub fn latency_bucket(us: u32) -> usize {
    LATENCY_BOUNDS_US.partition_point(|b| *b < us)
}

/// `online` / `offline`, retained on the health topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub schema: u32,
    pub tenant: String,
    pub device: String,
    /// `online`, or `offline` (the last will, or a clean shutdown).
    pub status: String,
    /// Milliseconds since the epoch; 0 in the last will (set at connect).
    pub at_ms: u64,
    pub agent_version: String,
    /// What the device serves: `model@version/variant`.
    #[serde(default)]
    pub serving: Vec<String>,
    /// Summaries waiting in the outbox.
    #[serde(default)]
    pub outbox_depth: u64,
    /// Summaries dropped because the outbox was full, since the agent started.
    #[serde(default)]
    pub outbox_dropped: u64,
    /// Summaries published and acknowledged since the agent started.
    #[serde(default)]
    pub published: u64,
    /// MQTT protocol level of the device's connection: 5, or 4 for 3.1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_protocol: Option<u8>,
    /// Seconds until the device's trust root expires (negative: expired;
    /// it then refuses every new bundle but keeps serving what it has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_root_expires_in: Option<i64>,
    /// The device's CPU architecture and OS, `ARCH-OS` (`aarch64-linux`);
    /// absent from agents older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

/// Something that happened on the device: `started`, `activated`,
/// `refused`, `rolled_back`, `stopped`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema: u32,
    pub tenant: String,
    pub device: String,
    /// Shares the device's sequence with drift summaries.
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default)]
    pub detail: String,
}

/// Domain tag signed in front of every telemetry message (then the topic's
/// kind and a NUL), so a telemetry signature is never valid as a manifest,
/// trust-root or desired-state signature, nor across kinds.
const SIG_DOMAIN: &[u8] = b"ferry/v1/telemetry\0";
/// What a signed payload ends with: `,"sig":"` + 128 hex digits + `"}`.
const SIG_FIELD: &[u8] = b",\"sig\":\"";
const SIG_HEX: usize = 128;
const SIG_SUFFIX: usize = SIG_FIELD.len() + SIG_HEX + 2;

/// Why a telemetry message's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelemetrySigError {
    #[error("message is not signed (no trailing \"sig\" field)")]
    Unsigned,
    #[error("message signature does not verify with the device's enrolled key")]
    BadSignature,
    #[error("only a JSON object with at least one field can be signed")]
    NotAnObject,
}

fn signed_message(kind: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIG_DOMAIN.len() + kind.len() + 1 + body.len());
    m.extend_from_slice(SIG_DOMAIN);
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

/// Signs a message of `kind` (`drift`, `health`, `events`): `body` is the
/// compact JSON object without a signature; the result is the same object
/// with `"sig"` (hex ed25519 over the domain tag, the kind and `body`'s
/// exact bytes) appended as its last field. Consumers that ignore `sig`
/// read it as before.
pub fn sign_payload(
    kind: &str,
    body: &[u8],
    key: &ed25519_dalek::SigningKey,
) -> Result<Vec<u8>, TelemetrySigError> {
    use ed25519_dalek::Signer;
    if body.len() < 3 || body.first() != Some(&b'{') || body.last() != Some(&b'}') {
        return Err(TelemetrySigError::NotAnObject);
    }
    let sig = key.sign(&signed_message(kind, body));
    let mut out = Vec::with_capacity(body.len() + SIG_SUFFIX);
    out.extend_from_slice(&body[..body.len() - 1]);
    out.extend_from_slice(SIG_FIELD);
    out.extend_from_slice(hex::encode(sig.to_bytes()).as_bytes());
    out.extend_from_slice(b"\"}");
    Ok(out)
}

/// Splits a signed payload into the bytes that were signed (the object
/// without its trailing `"sig"` field) and the signature.
pub fn split_signed(payload: &[u8]) -> Result<(Vec<u8>, [u8; 64]), TelemetrySigError> {
    let n = payload.len();
    if n < SIG_SUFFIX + 2 || !payload.ends_with(b"\"}") {
        return Err(TelemetrySigError::Unsigned);
    }
    let start = n - SIG_SUFFIX;
    if &payload[start..start + SIG_FIELD.len()] != SIG_FIELD {
        return Err(TelemetrySigError::Unsigned);
    }
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&payload[start + SIG_FIELD.len()..n - 2], &mut sig)
        .map_err(|_| TelemetrySigError::Unsigned)?;
    let mut body = Vec::with_capacity(start + 1);
    body.extend_from_slice(&payload[..start]);
    body.push(b'}');
    Ok((body, sig))
}

/// Checks a signed payload of `kind` against a device's raw ed25519
/// public key.
pub fn verify_payload(
    kind: &str,
    payload: &[u8],
    public_key: &[u8; 32],
) -> Result<(), TelemetrySigError> {
    let (body, sig) = split_signed(payload)?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(public_key)
        .map_err(|_| TelemetrySigError::BadSignature)?;
    vk.verify_strict(
        &signed_message(kind, &body),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| TelemetrySigError::BadSignature)
}

#[cfg(test)]
mod url_tests {
    use super::BrokerUrl;

    #[test]
    fn broker_urls_parse() {
        let u: BrokerUrl = "mqtt://127.0.0.1:1883".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 1883, false));
        let u: BrokerUrl = "mqtt://dev:s3cret@broker.local".parse().unwrap();
        assert_eq!(u.port, 1883);
        assert_eq!(u.username.as_deref(), Some("dev"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert!(!format!("{u:?}{u}").contains("s3cret"));
        let u: BrokerUrl = "mqtts://broker.local".parse().unwrap();
        assert_eq!((u.port, u.tls), (8883, true));
        assert_eq!(u.to_string(), "mqtts://broker.local:8883");
        let u: BrokerUrl = "ssl://b:1".parse().unwrap();
        assert!(u.tls);
        assert!("http://x".parse::<BrokerUrl>().is_err());
        assert!("mqtt://x:99999".parse::<BrokerUrl>().is_err());
        assert!("mqtt://:1883".parse::<BrokerUrl>().is_err());
        // What the hand-written parser got wrong: percent-encoded
        // credentials, and an IPv6 literal without a port.
        let u: BrokerUrl = "mqtt://dev%40site:p%3Ass@b".parse().unwrap();
        assert_eq!(u.username.as_deref(), Some("dev@site"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        let u: BrokerUrl = "mqtt://[::1]".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1883));
        assert_eq!(u.to_string(), "mqtt://[::1]:1883");
        let u: BrokerUrl = "mqtts://[::1]:8884/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("::1", 8884, true));
        assert!("mqtt://b:1/some/path".parse::<BrokerUrl>().is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_refuse_wildcards() {
        let t = topic("acme", "dev-1", KIND_DRIFT);
        assert_eq!(t, "ferry/v1/acme/dev-1/drift");
        assert_eq!(parse_topic(&t), Some(("acme", "dev-1", "drift")));
        assert_eq!(parse_topic("ferry/v1/acme/+/drift"), None);
        assert_eq!(parse_topic("ferry/v1/acme/dev/drift/x"), None);
        assert_eq!(parse_topic("other/v1/a/b/c"), None);
    }

    #[test]
    fn health_from_an_agent_without_arch_still_parses() {
        let old = br#"{"schema":1,"tenant":"t","device":"d","status":"online","at_ms":5,"agent_version":"0.1.0"}"#;
        let h: Health = serde_json::from_slice(old).unwrap();
        assert_eq!((h.arch, h.mqtt_protocol), (None, None));
        let h = Health {
            arch: Some("aarch64-linux".into()),
            ..h
        };
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains(r#""arch":"aarch64-linux""#), "{json}");
        let back: Health = serde_json::from_str(&json).unwrap();
        assert_eq!(back.arch.as_deref(), Some("aarch64-linux"));
        let none = serde_json::to_string(&Health { arch: None, ..back }).unwrap();
        assert!(!none.contains("arch"), "{none}");
    }

    #[test]
    fn signed_payloads_verify_and_stay_json() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pk = key.verifying_key().to_bytes();
        let body = br#"{"device":"d","schema":1,"x":1.5}"#;
        let signed = sign_payload(KIND_DRIFT, body, &key).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&signed).unwrap();
        assert_eq!(v["x"], 1.5);
        assert_eq!(v["sig"].as_str().unwrap().len(), 128);
        assert_eq!(verify_payload(KIND_DRIFT, &signed, &pk), Ok(()));
        // Another kind, another key, a changed byte, no signature.
        assert_eq!(
            verify_payload(KIND_EVENTS, &signed, &pk),
            Err(TelemetrySigError::BadSignature)
        );
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        assert_eq!(
            verify_payload(KIND_DRIFT, &signed, &other.verifying_key().to_bytes()),
            Err(TelemetrySigError::BadSignature)
        );
        let mut bad = signed.clone();
        bad[10] ^= 1;
        assert_eq!(
            verify_payload(KIND_DRIFT, &bad, &pk),
            Err(TelemetrySigError::BadSignature)
        );
        assert_eq!(
            verify_payload(KIND_DRIFT, body, &pk),
            Err(TelemetrySigError::Unsigned)
        );
        assert_eq!(
            sign_payload(KIND_DRIFT, b"{}", &key),
            Err(TelemetrySigError::NotAnObject)
        );
    }

    #[test]
    fn latency_buckets_and_quantiles() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(50), 0);
        assert_eq!(latency_bucket(51), 1);
        assert_eq!(latency_bucket(1_000_000), LATENCY_BOUNDS_US.len());
        let mut h = vec![0u64; LATENCY_BOUNDS_US.len() + 1];
        h[1] = 99;
        h[4] = 1;
        assert_eq!(histogram_quantile(&h, 0.5), 100);
        assert_eq!(histogram_quantile(&h, 0.99), 100);
        assert_eq!(histogram_quantile(&h, 1.0), 1_000);
    }
}
