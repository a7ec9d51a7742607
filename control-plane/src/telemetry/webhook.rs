//! Webhook delivery: a JSON POST signed with HMAC-SHA256 over the exact
//! body bytes (`X-Ferry-Signature: sha256=<hex>`), retried with backoff on
//! network errors and non-2xx answers.

use hmac::{Hmac, Mac};
use sha2::Sha256;

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

/// Posts `body` to `url`: the first try, then one more after each delay in
/// `retry_ms` (jittered). Returns (delivered, attempts, last error).
pub async fn deliver(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    delivery_id: &str,
    body: &[u8],
    retry_ms: &[u64],
) -> (bool, u32, String) {
    let sig = signature(secret, body);
    let mut attempts = 0;
    let mut last = String::new();
    for delay in std::iter::once(&0).chain(retry_ms) {
        if *delay > 0 {
            tokio::time::sleep(jittered(*delay)).await;
        }
        attempts += 1;
        let r = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-ferry-event", "retrain")
            .header("x-ferry-delivery", delivery_id)
            .header("x-ferry-signature", sig.as_str())
            .body(body.to_vec())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => return (true, attempts, String::new()),
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(url, attempt = attempts, error = %last, "retraining webhook not delivered; retrying");
    }
    tracing::error!(url, attempts, error = %last, "retraining webhook gave up");
    (false, attempts, last)
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
