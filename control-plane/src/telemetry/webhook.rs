//! Webhook delivery: a JSON POST signed with HMAC-SHA256 over the exact
//! body bytes (`X-Ferry-Signature: sha256=<hex>`), retried with backoff on
//! network errors and non-2xx answers.
//!
//! A tenant operator chooses the URL, so the server must not become a way
//! into its own network: loopback, private, link-local, unique-local,
//! multicast, reserved and unspecified addresses are refused unless the
//! operator allowed the network (`--webhook-allow CIDR`). The check runs on
//! the addresses the host name resolves to when the delivery is made, and
//! the request connects to exactly those (a DNS rebinding gains nothing);
//! redirects are not followed and no proxy is used. What viewers see of a
//! failure is coarse.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header in constant time (for receivers written in Rust).
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// A delay of the configured schedule, drawn from `[d/2, d]`: alerts raised
/// together (one drift across a fleet) do not retry against the receiver
/// in lockstep. The schedule is the operator's list, not a formula, which
/// backon's builders cannot express; the jitter is the same as theirs.
fn jittered(ms: u64) -> std::time::Duration {
    let half = ms / 2;
    std::time::Duration::from_millis(half + rand::random::<u64>() % (ms - half + 1))
}

/// Networks retraining webhooks may reach although [`internal`] names
/// them: the operator's `--webhook-allow` / `webhook_allow`, set once at
/// start.
static ALLOWED: RwLock<Vec<Cidr>> = RwLock::new(Vec::new());

/// Sets the networks (CIDR; a bare address is one host) webhooks may reach
/// although they are internal.
pub fn allow_networks(list: &[String]) -> Result<(), String> {
    let parsed = list
        .iter()
        .map(|s| s.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()?;
    match ALLOWED.write() {
        Ok(mut a) => {
            *a = parsed;
            Ok(())
        }
        Err(_) => Err("the webhook allow list is poisoned".into()),
    }
}

/// A network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a network (CIDR such as 10.20.0.0/16 or fd00::/8)");
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is the IPv4 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The kind of internal range `ip` is in, if it is in one: the addresses a
/// webhook may not reach unless the operator allowed them.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if a.is_loopback() {
                Some("loopback")
            } else if a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                // RFC 1918, and RFC 6598 shared (carrier-grade NAT) space.
                Some("private")
            } else if a.is_link_local() {
                Some("link-local")
            } else if a.is_multicast() {
                Some("multicast")
            } else if a.is_broadcast() || o[0] >= 240 {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let seg = a.segments();
            if a.is_unspecified() {
                Some("unspecified")
            } else if a.is_loopback() {
                Some("loopback")
            } else if (seg[0] & 0xfe00) == 0xfc00 {
                Some("unique-local")
            } else if (seg[0] & 0xffc0) == 0xfe80 || (seg[0] & 0xffc0) == 0xfec0 {
                Some("link-local")
            } else if a.is_multicast() {
                Some("multicast")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
                // NAT64: the IPv4 address it carries decides.
                let v4 = std::net::Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                internal(IpAddr::V4(v4))
            } else {
                None
            }
        }
    }
}

/// Why a destination address is refused, if it is: internal and not in
/// the operator's allow list.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    let kind = internal(ip)?;
    let allowed = ALLOWED
        .read()
        .map(|a| a.iter().any(|c| c.contains(ip)))
        .unwrap_or(false);
    (!allowed).then_some(kind)
}

/// The coarse reason a delivery failed, as viewers see it: the detail
/// (which says what answers where inside the network) only goes to the
/// server's log.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Refused,
    Resolve,
    Timeout,
    Connect,
    Status(u16),
    Other,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused => f.write_str(
                "destination not allowed: an internal address (the server's --webhook-allow can permit a network)",
            ),
            Failure::Resolve => f.write_str("the host name did not resolve"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Connect => f.write_str("could not connect"),
            Failure::Status(s) => write!(f, "HTTP {s}"),
            Failure::Other => f.write_str("request failed"),
        }
    }
}

/// The addresses `url` may be delivered to, resolved now and checked:
/// the request then connects to exactly these (no second lookup a DNS
/// rebinding could answer differently). Internal ones are dropped; none
/// left is a refusal.
async fn destinations(url: &reqwest::Url) -> Result<(String, Vec<SocketAddr>), (Failure, String)> {
    let port = url.port_or_known_default().unwrap_or(443);
    let Some(host) = url.host_str() else {
        return Err((Failure::Other, "no host in the URL".into()));
    };
    // An address literal is checked as it is (no lookup happens for it).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return check_all(String::new(), vec![SocketAddr::new(ip, port)]);
    }
    let host = host.to_string();
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| (Failure::Resolve, e.to_string()))?
        .collect();
    if found.is_empty() {
        return Err((Failure::Resolve, "no addresses".into()));
    }
    check_all(host, found)
}

fn check_all(
    host: String,
    addrs: Vec<SocketAddr>,
) -> Result<(String, Vec<SocketAddr>), (Failure, String)> {
    let (ok, bad): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| refused(a.ip()).is_none());
    if ok.is_empty() {
        let why = bad
            .iter()
            .map(|a| format!("{} ({})", a.ip(), refused(a.ip()).unwrap_or("internal")))
            .collect::<Vec<_>>()
            .join(", ");
        return Err((Failure::Refused, why));
    }
    Ok((host, ok))
}

/// One POST to exactly the checked addresses: no proxy, no redirects.
async fn post_once(
    url: &reqwest::Url,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), (Failure, String)> {
    let (host, addrs) = destinations(url).await?;
    let mut b = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if !host.is_empty() {
        b = b.resolve_to_addrs(&host, &addrs);
    }
    let http = b.build().map_err(|e| (Failure::Other, e.to_string()))?;
    let mut req = http.post(url.clone()).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err((
            Failure::Status(resp.status().as_u16()),
            format!("HTTP {}", resp.status()),
        )),
        Err(e) if e.is_timeout() => Err((Failure::Timeout, e.to_string())),
        Err(e) if e.is_connect() => Err((Failure::Connect, e.to_string())),
        Err(e) => Err((Failure::Other, e.to_string())),
    }
}

/// Posts `body` to `url`: the first try, then one more after each delay in
/// `retry_ms` (jittered). Returns (delivered, attempts, last error); the
/// error is coarse (viewers see it), its detail is logged. A destination
/// that resolves only to internal addresses the operator did not allow is
/// refused without a connection, and not retried.
pub async fn deliver(
    url: &str,
    secret: Option<&str>,
    delivery_id: &str,
    body: &[u8],
    retry_ms: &[u64],
) -> (bool, u32, String) {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return (false, 0, Failure::Other.to_string());
    };
    // No secret, no signature: an HMAC under an empty key proves nothing,
    // and a receiver checking for the header should see it missing.
    let sig = secret.filter(|s| !s.is_empty()).map(|s| signature(s, body));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("x-ferry-event", "retrain"),
        ("x-ferry-delivery", delivery_id),
    ];
    if let Some(sig) = &sig {
        headers.push(("x-ferry-signature", sig.as_str()));
    }
    let mut attempts = 0;
    let mut last = Failure::Other;
    for delay in std::iter::once(&0).chain(retry_ms) {
        if *delay > 0 {
            tokio::time::sleep(jittered(*delay)).await;
        }
        attempts += 1;
        match post_once(&parsed, &headers, body).await {
            Ok(()) => return (true, attempts, String::new()),
            Err((Failure::Refused, detail)) => {
                tracing::error!(url, addresses = %detail, "retraining webhook refused: internal destination not allowed (--webhook-allow)");
                return (false, attempts, Failure::Refused.to_string());
            }
            Err((kind, detail)) => {
                tracing::warn!(url, attempt = attempts, error = %detail, "retraining webhook not delivered; retrying");
                last = kind;
            }
        }
    }
    tracing::error!(url, attempts, error = %last, "retraining webhook gave up");
    (false, attempts, last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_are_jittered_within_the_schedule() {
        let seen: std::collections::HashSet<_> = (0..50).map(|_| jittered(1000)).collect();
        assert!(seen
            .iter()
            .all(|d| d.as_millis() >= 500 && d.as_millis() <= 1000));
        assert!(seen.len() > 5, "{seen:?}");
        assert!(jittered(1) <= std::time::Duration::from_millis(1));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_named() {
        for (a, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(internal(ip(a)), Some(kind), "{a}");
        }
        for a in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert_eq!(internal(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let n: Cidr = "10.20.0.0/16".parse().unwrap();
        assert!(n.contains(ip("10.20.3.4")));
        assert!(!n.contains(ip("10.21.0.1")));
        assert!(n.contains(ip("::ffff:10.20.0.9")));
        let h: Cidr = "127.0.0.1".parse().unwrap();
        assert!(h.contains(ip("127.0.0.1")) && !h.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn failures_read_coarsely() {
        assert_eq!(Failure::Status(503).to_string(), "HTTP 503");
        assert_eq!(Failure::Connect.to_string(), "could not connect");
    }

    #[test]
    fn rfc4231_case_2() {
        // HMAC-SHA256("Jefe", "what do ya want for nothing?")
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(
            "Jefe",
            b"what do ya want for nothing?",
            &signature("Jefe", b"what do ya want for nothing?")
        ));
        assert!(!verify("Jefe", b"tampered", &signature("Jefe", b"x")));
    }
}
