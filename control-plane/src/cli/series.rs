//! The time series devices report, as the server shapes them from stored
//! windows: `ferry model metrics` (latency, throughput, errors, accuracy)
//! and `ferry drift series` (PSI per feature); and the filters they share
//! with `ferry alerts list` and `ferry triggers list`.

use super::conn::enc;
use super::output::{cell, print_json, table, when_ms};
use crate::api::types::{DriftSeries, MetricSeries, Monitoring};
use crate::client::Client;
use clap::Args;

/// Which windows (or alerts, triggers): since when, how many.
#[derive(Args, Debug, Clone, Default)]
pub struct Since {
    /// Only those newer than this long ago (15m, 24h, 7d)
    #[arg(long, value_parser = super::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// At most this many (the server's default: 500)
    #[arg(long)]
    pub limit: Option<u32>,
}

impl Since {
    /// `since_ms` and `limit` as query pairs.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(d) = self.since {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let ms = now.saturating_sub(d).as_millis();
            q.push(("since_ms", ms.to_string()));
        }
        if let Some(n) = self.limit {
            q.push(("limit", n.to_string()));
        }
        q
    }
}

/// `k=v&k=v` with the values percent-encoded; empty for no pairs.
pub fn query(pairs: &[(&str, String)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// One model's windows: of a version, a device, since when.
#[derive(Args, Debug, Clone)]
pub struct SeriesArgs {
    pub model: String,
    /// Only this version's windows
    #[arg(long)]
    pub version: Option<u64>,
    /// Only this device's windows
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub since: Since,
}

impl SeriesArgs {
    fn path(&self, what: &str) -> String {
        let mut q = Vec::new();
        if let Some(v) = self.version {
            q.push(("version", v.to_string()));
        }
        if let Some(d) = &self.device {
            q.push(("device", d.clone()));
        }
        q.extend(self.since.pairs());
        format!("/models/{}/{what}{}", enc(&self.model), query(&q))
    }
}

/// One model's roll-ups over a time range: fleet-wide or one device.
#[derive(Args, Debug, Clone)]
pub struct MonitoringArgs {
    pub model: String,
    /// 1h, 6h, 24h, 7d or 30d
    #[arg(long, default_value = "24h")]
    pub range: String,
    /// Only this version
    #[arg(long)]
    pub version: Option<u64>,
    /// Only this device (default: the whole fleet)
    #[arg(long)]
    pub device: Option<String>,
}

/// `ferry model monitoring MODEL`: each version and variant over the
/// range (`--json`: every point of every chart, as the dashboard reads it).
pub async fn monitoring(c: &Client, json_out: bool, args: &MonitoringArgs) -> anyhow::Result<()> {
    let mut q = vec![("range", args.range.clone())];
    if let Some(v) = args.version {
        q.push(("version", v.to_string()));
    }
    if let Some(d) = &args.device {
        q.push(("device", d.clone()));
    }
    let path = format!("/models/{}/monitoring{}", enc(&args.model), query(&q));
    let m: Monitoring = c.get(&path).await?;
    if json_out {
        return print_json(&m);
    }
    let pct = |x: Option<f64>| x.map_or_else(|| "-".into(), |x| format!("{:.2} %", x * 100.0));
    let ms = |x: Option<f64>| x.map_or_else(|| "-".into(), |x| format!("{:.2} ms", x / 1000.0));
    let rows = m
        .series
        .iter()
        .map(|s| {
            let t = &s.totals;
            vec![
                format!("v{}", s.version),
                s.variant.clone(),
                t.windows.to_string(),
                t.requests.to_string(),
                pct(t.error_rate),
                ms(t.latency_p50_us),
                ms(t.latency_p99_max_us.map(|v| v as f64)),
                pct(t.accuracy),
                fixed(t.max_psi, 3),
                t.drifted_rows.to_string(),
            ]
        })
        .collect();
    println!(
        "{} over the last {} ({}, {} roll-ups; PSI threshold {})",
        m.model,
        m.range,
        m.device.as_deref().unwrap_or("the whole fleet"),
        m.resolution,
        m.psi_threshold
    );
    table(
        &[
            "version",
            "variant",
            "windows",
            "requests",
            "error rate",
            "p50",
            "worst p99",
            "accuracy",
            "max PSI",
            "drifted rows",
        ],
        rows,
    );
    Ok(())
}

fn fixed(x: Option<f64>, places: usize) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.places$}"))
}

/// `ferry model metrics MODEL`.
pub async fn metrics(c: &Client, json_out: bool, args: &SeriesArgs) -> anyhow::Result<()> {
    let v: MetricSeries = c.get(&args.path("metrics")).await?;
    if json_out {
        return print_json(&v);
    }
    let rows = v
        .windows
        .iter()
        .map(|w| {
            vec![
                w.device.clone(),
                format!("v{}", w.version),
                w.variant.clone(),
                when_ms(Some(w.window_end_ms)),
                w.requests.to_string(),
                w.errors.to_string(),
                fixed(w.throughput_rps, 1),
                format!("{} µs", w.latency_p50_us),
                format!("{} µs", w.latency_p99_us),
                fixed(w.accuracy, 3),
            ]
        })
        .collect();
    table(
        &[
            "device",
            "version",
            "variant",
            "window end",
            "requests",
            "errors",
            "req/s",
            "latency p50",
            "latency p99",
            "accuracy",
        ],
        rows,
    );
    Ok(())
}

/// `ferry drift series MODEL`.
pub async fn drift(c: &Client, json_out: bool, args: &SeriesArgs) -> anyhow::Result<()> {
    let v: DriftSeries = c.get(&args.path("drift")).await?;
    if json_out {
        return print_json(&v);
    }
    let rows = v
        .windows
        .iter()
        .map(|w| {
            vec![
                w.device.clone(),
                format!("v{}", w.version),
                w.variant.clone(),
                when_ms(i64::try_from(w.window_end_ms).ok()),
                w.rows.to_string(),
                fixed(w.max_psi, 4),
                if w.drifted { "yes" } else { "no" }.into(),
                cell(&w.missing.iter().sum::<u64>()),
            ]
        })
        .collect();
    table(
        &[
            "device",
            "version",
            "variant",
            "window end",
            "rows",
            "max psi",
            "drifted",
            "missing",
        ],
        rows,
    );
    println!("\npsi threshold {}", v.psi_threshold);
    Ok(())
}
