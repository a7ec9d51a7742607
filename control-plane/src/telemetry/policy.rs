//! Drift policies and the pure checks made on every ingested summary.
//! No I/O and no clock: times are arguments.

use ferry_protocol::telemetry::DriftSummary;
use serde::{Deserialize, Serialize};

pub const DEFAULT_PSI_THRESHOLD: f64 = 0.3;

/// How drifted windows of several devices combine into a drift alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Any device's drifted rows count.
    AnyDevice,
    /// At least `fleet_fraction` of the devices reporting the model in the
    /// lookback have a drifted latest window.
    FleetFraction,
}

/// `POST /api/v1/models/{name}/drift-config` body; every field optional.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftPolicy {
    /// A feature with PSI ≥ this drifts (default 0.3).
    pub psi_threshold: f64,
    /// Drifted rows (summed over drifted windows in the lookback) needed
    /// before a drift alert (default 100).
    pub min_drifted_rows: u64,
    /// Features to watch, by name; empty: all.
    pub features: Vec<String>,
    pub aggregation: Aggregation,
    pub fleet_fraction: f64,
    /// How far back drifted windows count, seconds (default 900).
    pub lookback_secs: u64,
    /// One drift episode alerts and triggers retraining once per cooldown
    /// (default 3600 s).
    pub cooldown_secs: u64,
    /// Retraining webhook (JSON POST, `X-Ferry-Signature: sha256=HMAC`).
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for the webhook signature. Write-only: listings show
    /// whether one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Time-based retraining: a 5-field cron expression (UTC), e.g.
    /// `0 3 * * 1` for Mondays 03:00.
    pub retrain_schedule: Option<String>,
    /// Error-rate alert when a window's errors/requests ≥ this (default 0.05).
    pub error_rate_threshold: f64,
    /// Latency alert when a window's p99 ≥ this many µs (0: off).
    pub latency_p99_us_threshold: u64,
    /// Data-quality alert when the missing-value rate ≥ this (default 0.1).
    pub missing_rate_threshold: f64,
    /// Prediction-shift alert when the total variation distance between a
    /// window's class distribution and `prediction_reference` is ≥ this
    /// (default 0.3; 0: off).
    pub prediction_shift_threshold: f64,
    /// The expected class distribution (class → count or weight), set by
    /// an operator. Never taken from telemetry: a first window seen could
    /// come from anyone. Without it there is no prediction-shift alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_reference: Option<std::collections::BTreeMap<String, u64>>,
}

/// Marks the part of a webhook URL that listings leave out.
const REDACTED: &str = "/…";

/// `scheme://host[:port]`, then `/…` when the URL has a path or query: enough
/// to recognise a webhook target without showing a credential in its path,
/// query or user info.
pub fn redacted_url(u: &str) -> String {
    match reqwest::Url::parse(u) {
        Ok(p) => {
            let origin = p.origin().ascii_serialization();
            if p.path() != "/" || p.query().is_some() {
                format!("{origin}{REDACTED}")
            } else {
                origin
            }
        }
        Err(_) => "(not a URL)".into(),
    }
}

impl Default for DriftPolicy {
    fn default() -> Self {
        Self {
            psi_threshold: DEFAULT_PSI_THRESHOLD,
            min_drifted_rows: 100,
            features: Vec::new(),
            aggregation: Aggregation::AnyDevice,
            fleet_fraction: 0.5,
            lookback_secs: 900,
            cooldown_secs: 3600,
            webhook_url: None,
            webhook_secret: None,
            retrain_schedule: None,
            error_rate_threshold: 0.05,
            latency_p99_us_threshold: 0,
            missing_rate_threshold: 0.1,
            prediction_shift_threshold: 0.3,
            prediction_reference: None,
        }
    }
}

impl DriftPolicy {
    /// Refuses values that cannot work, with the reason.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.psi_threshold.is_finite() && self.psi_threshold > 0.0) {
            return Err("psi_threshold must be a positive number".into());
        }
        if !(0.0..=1.0).contains(&self.fleet_fraction) || self.fleet_fraction == 0.0 {
            return Err("fleet_fraction must be in (0, 1]".into());
        }
        for (name, v) in [
            ("error_rate_threshold", self.error_rate_threshold),
            ("missing_rate_threshold", self.missing_rate_threshold),
            (
                "prediction_shift_threshold",
                self.prediction_shift_threshold,
            ),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        if self.lookback_secs == 0 {
            return Err("lookback_secs must be positive".into());
        }
        if let Some(u) = &self.webhook_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "webhook_url {u:?} must be an http:// or https:// URL"
                ));
            }
            if u.contains(REDACTED) {
                return Err(format!(
                    "webhook_url {u:?} is a redacted one (as listings show it); send the full URL"
                ));
            }
        }
        if self.webhook_secret.as_deref() == Some("") {
            return Err("webhook_secret is empty; leave it out to keep the stored one".into());
        }
        if let Some(s) = &self.retrain_schedule {
            super::cron::Cron::parse(s).map_err(|e| format!("retrain_schedule: {e}"))?;
        }
        if self.features.len() > ferry_protocol::telemetry::MAX_FEATURES {
            return Err("too many features".into());
        }
        if let Some(r) = &self.prediction_reference {
            if r.is_empty() || r.len() > 1024 || r.values().all(|n| *n == 0) {
                return Err(
                    "prediction_reference must name 1 to 1024 classes with a positive total".into(),
                );
            }
        }
        Ok(())
    }

    /// Carries over what a client cannot read back, so that a policy as
    /// shown can be posted again without losing it: a secret left out keeps
    /// the stored one (`""` clears it), and the webhook URL sent in its
    /// redacted form keeps the stored URL.
    pub fn keep_write_only(&mut self, stored: Option<&DriftPolicy>) {
        match self.webhook_secret.as_deref() {
            None => self.webhook_secret = stored.and_then(|s| s.webhook_secret.clone()),
            Some("") => self.webhook_secret = None,
            Some(_) => {}
        }
        if let (Some(new), Some(old)) = (
            self.webhook_url.as_deref(),
            stored.and_then(|s| s.webhook_url.as_deref()),
        ) {
            if new != old && new == redacted_url(old) {
                self.webhook_url = Some(old.to_string());
            }
        }
    }

    /// The policy as shown to API callers and written to the audit trail:
    /// the secret replaced by whether one is set, the webhook URL by its
    /// origin (a Slack or Teams hook's path is its credential).
    pub fn public_json(&self) -> serde_json::Value {
        let mut p = self.clone();
        p.webhook_url = p.webhook_url.as_deref().map(redacted_url);
        let has_secret = p.webhook_secret.take().is_some();
        let mut v = serde_json::to_value(&p).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("webhook_secret_set".into(), has_secret.into());
        }
        v
    }

    /// Largest PSI over the watched features (`None` when none has one).
    pub fn max_psi(&self, s: &DriftSummary) -> Option<f64> {
        s.features
            .iter()
            .zip(&s.psi)
            .filter(|(name, _)| self.features.is_empty() || self.features.contains(name))
            .filter_map(|(_, p)| *p)
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))))
    }

    /// Watched features at or over the threshold, with their PSI.
    pub fn drifted_features(&self, s: &DriftSummary) -> Vec<(String, f64)> {
        s.features
            .iter()
            .zip(&s.psi)
            .filter(|(name, _)| self.features.is_empty() || self.features.contains(name))
            .filter_map(|(n, p)| {
                p.filter(|p| *p >= self.psi_threshold)
                    .map(|p| (n.clone(), p))
            })
            .collect()
    }

    pub fn is_drifted(&self, s: &DriftSummary) -> bool {
        !self.drifted_features(s).is_empty()
    }
}

/// Total variation distance between two class-count distributions.
pub fn class_tvd(
    a: &std::collections::BTreeMap<String, u64>,
    b: &std::collections::BTreeMap<String, u64>,
) -> Option<f64> {
    let na: u64 = a.values().sum();
    let nb: u64 = b.values().sum();
    if na == 0 || nb == 0 {
        return None;
    }
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    Some(
        keys.into_iter()
            .map(|k| {
                let pa = *a.get(k).unwrap_or(&0) as f64 / na as f64;
                let pb = *b.get(k).unwrap_or(&0) as f64 / nb as f64;
                (pa - pb).abs()
            })
            .sum::<f64>()
            / 2.0,
    )
}

/// The non-drift alerts one summary raises on its own: `(kind, evidence)`.
pub fn window_alerts(p: &DriftPolicy, s: &DriftSummary) -> Vec<(&'static str, serde_json::Value)> {
    let mut out = Vec::new();
    if s.requests > 0 && s.errors > 0 && s.error_rate() >= p.error_rate_threshold {
        out.push((
            "error_rate",
            serde_json::json!({"error_rate": s.error_rate(), "errors": s.errors, "requests": s.requests, "threshold": p.error_rate_threshold}),
        ));
    }
    if p.latency_p99_us_threshold > 0 && u64::from(s.latency_p99_us) >= p.latency_p99_us_threshold {
        out.push((
            "latency_p99",
            serde_json::json!({"latency_p99_us": s.latency_p99_us, "threshold_us": p.latency_p99_us_threshold}),
        ));
    }
    let mr = s.missing_rate();
    if mr > 0.0 && mr >= p.missing_rate_threshold {
        out.push((
            "data_quality",
            serde_json::json!({"missing_rate": mr, "missing": s.missing, "threshold": p.missing_rate_threshold}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(psi: Vec<Option<f64>>) -> DriftSummary {
        let n = psi.len();
        DriftSummary {
            schema: 1,
            tenant: "t".into(),
            device: "d".into(),
            seq: 0,
            model: "m".into(),
            version: 1,
            variant: "champion".into(),
            window_start_ms: 0,
            window_end_ms: 1,
            closed_by: ferry_protocol::telemetry::ClosedBy::Rows,
            rows: 10,
            features: (0..n).map(|i| format!("f{i}")).collect(),
            psi,
            missing: vec![0; n],
            out_of_range: vec![0; n],
            predictions: Default::default(),
            latency_us: vec![],
            latency_p50_us: 0,
            latency_p99_us: 0,
            errors: 0,
            requests: 10,
            labelled: 0,
            correct: 0,
        }
    }

    #[test]
    fn threshold_and_feature_selection() {
        let s = summary(vec![Some(0.1), Some(0.5), None]);
        let mut p = DriftPolicy::default();
        assert_eq!(p.drifted_features(&s), vec![("f1".to_string(), 0.5)]);
        assert_eq!(p.max_psi(&s), Some(0.5));
        p.features = vec!["f0".into()];
        assert!(!p.is_drifted(&s));
        assert_eq!(p.max_psi(&s), Some(0.1));
    }

    #[test]
    fn bad_policies_are_refused() {
        let p = DriftPolicy {
            psi_threshold: -1.0,
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let p = DriftPolicy {
            webhook_url: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let p = DriftPolicy {
            retrain_schedule: Some("61 * * * *".into()),
            ..Default::default()
        };
        assert!(p.validate().is_err());
        assert!(DriftPolicy::default().validate().is_ok());
        let j: Result<DriftPolicy, _> = serde_json::from_str(r#"{"psi_treshold": 0.2}"#);
        assert!(j.is_err());
    }

    #[test]
    fn tvd() {
        let a = [("0".to_string(), 50u64), ("1".to_string(), 50)].into();
        let b = [("0".to_string(), 100u64)].into();
        assert_eq!(class_tvd(&a, &b), Some(0.5));
    }

    #[test]
    fn webhook_urls_are_shown_by_origin_only() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T0/B0/secret",
                "https://hooks.slack.com/…",
            ),
            (
                "https://user:pw@ci.example:8443/?token=x",
                "https://ci.example:8443/…",
            ),
            ("https://ci.example", "https://ci.example"),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
            let p = DriftPolicy {
                webhook_url: Some(url.into()),
                webhook_secret: Some("k".into()),
                ..Default::default()
            };
            let v = p.public_json();
            assert_eq!(v["webhook_url"], shown);
            assert_eq!(v["webhook_secret_set"], true);
            assert!(v.get("webhook_secret").is_none());
        }
    }

    #[test]
    fn a_policy_posted_back_as_shown_keeps_its_secret_and_url() {
        let stored = DriftPolicy {
            webhook_url: Some("https://hooks.slack.com/services/T0/B0/secret".into()),
            webhook_secret: Some("k".into()),
            ..Default::default()
        };
        let mut shown = stored.public_json();
        shown.as_object_mut().unwrap().remove("webhook_secret_set");
        let mut back: DriftPolicy = serde_json::from_value(shown).unwrap();
        back.psi_threshold = 0.5;
        back.keep_write_only(Some(&stored));
        assert!(back.validate().is_ok());
        assert_eq!(back.webhook_url, stored.webhook_url);
        assert_eq!(back.webhook_secret.as_deref(), Some("k"));
        // "" clears the secret; a new one replaces it; a new URL is taken.
        let mut cleared = DriftPolicy {
            webhook_secret: Some(String::new()),
            webhook_url: Some("https://other.example/hook".into()),
            ..Default::default()
        };
        cleared.keep_write_only(Some(&stored));
        assert_eq!(cleared.webhook_secret, None);
        assert_eq!(
            cleared.webhook_url.as_deref(),
            Some("https://other.example/hook")
        );
        // A redacted URL that is not the stored one's is refused, not saved.
        let mut guess = DriftPolicy {
            webhook_url: Some("https://elsewhere.example/…".into()),
            ..Default::default()
        };
        guess.keep_write_only(Some(&stored));
        assert!(guess.validate().unwrap_err().contains("redacted"));
    }
}
