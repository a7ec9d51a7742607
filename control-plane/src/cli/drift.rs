//! `ferry drift config get|set MODEL` (the model's drift policy: thresholds,
//! alerts, cooldown) and `ferry drift series MODEL` (PSI per window).
//!
//! The API replaces a policy whole (fields left out take their defaults),
//! so `set` reads the policy in force, changes what the flags name and
//! sends it back. What the server never shows comes through unchanged: a
//! secret left out keeps the stored one, a webhook URL sent back in its
//! shown (redacted) form keeps the stored URL. `ferry triggers set`
//! changes the retraining fields the same way.

use super::conn::{block_on, enc, Conn};
use super::output::{cell, print_json, table};
use crate::api::types::DriftPolicyView;
use crate::client::Client;
use crate::telemetry::policy::{Aggregation, DriftPolicy};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DriftArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: DriftCmd,
}

#[derive(Subcommand, Debug)]
enum DriftCmd {
    /// The model's drift policy
    #[command(subcommand)]
    Config(ConfigCmd),
    /// PSI per feature per window, as devices reported it
    Series(super::series::SeriesArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Show the policy in force (`default`: none was saved)
    Get { model: String },
    /// Change the policy: the flags given, on top of the one in force (or --file, or --reset)
    Set(Box<SetArgs>),
}

#[derive(Args, Debug)]
struct SetArgs {
    model: String,
    /// Start from this JSON policy document instead of the policy in force
    /// (a webhook secret it leaves out is kept)
    #[arg(long, conflicts_with = "reset")]
    file: Option<PathBuf>,
    /// Start from the defaults instead of the policy in force
    #[arg(long)]
    reset: bool,
    /// A feature with PSI at or over this drifts
    #[arg(long)]
    psi_threshold: Option<f64>,
    /// Drifted rows in the lookback needed before a drift alert
    #[arg(long)]
    min_drifted_rows: Option<u64>,
    /// Features to watch, by name (a,b,c); empty: all
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    features: Option<Vec<String>>,
    /// How drifted windows of several devices combine
    #[arg(long, value_enum)]
    aggregation: Option<AggregationArg>,
    /// With --aggregation fleet-fraction: the share of devices that must drift
    #[arg(long)]
    fleet_fraction: Option<f64>,
    /// How far back drifted windows count (15m)
    #[arg(long, value_parser = super::parse_duration)]
    lookback: Option<std::time::Duration>,
    /// One drift episode alerts and triggers retraining once per this (1h)
    #[arg(long, value_parser = super::parse_duration)]
    cooldown: Option<std::time::Duration>,
    /// Error-rate alert at or over this share of requests (0 to 1)
    #[arg(long)]
    error_rate_threshold: Option<f64>,
    /// Latency alert when a window's p99 reaches this many µs (0: off)
    #[arg(long)]
    latency_p99_us_threshold: Option<u64>,
    /// Data-quality alert at or over this missing-value rate (0 to 1)
    #[arg(long)]
    missing_rate_threshold: Option<f64>,
    /// Prediction-shift alert at or over this total variation distance (0 to 1; 0: off)
    #[arg(long)]
    prediction_shift_threshold: Option<f64>,
    /// The expected class distribution (class=count,class=count)
    #[arg(long, value_parser = parse_reference)]
    prediction_reference: Option<Reference>,
    #[command(flatten)]
    secret: SecretArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AggregationArg {
    AnyDevice,
    FleetFraction,
}

/// `class=count,…`.
#[derive(Clone, Debug)]
struct Reference(BTreeMap<String, u64>);

fn parse_reference(s: &str) -> Result<Reference, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = super::parse_kv(p)?;
            let n = v
                .parse::<u64>()
                .map_err(|_| format!("{p:?}: the count must be a whole number"))?;
            Ok((k, n))
        })
        .collect::<Result<_, String>>()
        .map(Reference)
}

/// The webhook secret: replaced, cleared, or (neither flag) kept.
#[derive(Args, Debug, Default)]
pub struct SecretArgs {
    /// HMAC-SHA256 key for the retraining webhook's signature (write-only; kept when not given)
    #[arg(
        long,
        env = "FERRY_WEBHOOK_SECRET",
        hide_env_values = true,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub webhook_secret: Option<String>,
    /// Remove the webhook secret the policy has
    #[arg(long, conflicts_with = "webhook_secret")]
    pub no_webhook_secret: bool,
}

/// A policy as the server shows it: the stored fields and whether a
/// webhook secret is set.
#[derive(Deserialize)]
struct Shown {
    #[serde(flatten)]
    policy: DriftPolicy,
    #[serde(default)]
    webhook_secret_set: bool,
}

fn shown(v: &DriftPolicyView) -> anyhow::Result<Shown> {
    serde_json::from_value(serde_json::Value::Object(v.policy.clone()))
        .with_context(|| format!("the server's drift policy for {}", v.model))
}

fn config_path(model: &str) -> String {
    format!("/models/{}/drift-config", enc(model))
}

/// The policy in force, as shown (webhook URL redacted, no secret).
pub async fn current(c: &Client, model: &str) -> anyhow::Result<DriftPolicy> {
    let v: DriftPolicyView = c.get(&config_path(model)).await?;
    Ok(shown(&v)?.policy)
}

/// Sends `p` as the model's policy with the secret `secret` asks for: a
/// new one, cleared (the API's `""`), or left out, which keeps the stored
/// one.
pub async fn save(
    c: &Client,
    model: &str,
    mut p: DriftPolicy,
    secret: &SecretArgs,
) -> anyhow::Result<DriftPolicyView> {
    p.webhook_secret = if secret.no_webhook_secret {
        Some(String::new())
    } else {
        secret.webhook_secret.clone()
    };
    Ok(c.call(Method::POST, &config_path(model), Some(&p)).await?)
}

pub fn drift(args: DriftArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        match args.cmd {
            DriftCmd::Config(ConfigCmd::Get { model }) => {
                let v: DriftPolicyView = c.get(&config_path(&model)).await?;
                print_policy(json_out, &v)
            }
            DriftCmd::Config(ConfigCmd::Set(s)) => {
                let in_force = current(&c, &s.model).await?;
                let base = if let Some(f) = &s.file {
                    let text =
                        std::fs::read(f).with_context(|| format!("--file {}", f.display()))?;
                    serde_json::from_slice(&text)
                        .with_context(|| format!("--file {}", f.display()))?
                } else if s.reset {
                    DriftPolicy::default()
                } else {
                    in_force
                };
                let p = s.apply(base);
                let v = save(&c, &s.model, p, &s.secret).await?;
                print_policy(json_out, &v)
            }
            DriftCmd::Series(a) => super::series::drift(&c, json_out, &a).await,
        }
    })?
}

impl SetArgs {
    fn apply(&self, mut p: DriftPolicy) -> DriftPolicy {
        macro_rules! set {
            ($($f:ident),*) => {$(
                if let Some(v) = &self.$f {
                    p.$f = v.clone();
                }
            )*};
        }
        set!(
            psi_threshold,
            min_drifted_rows,
            features,
            fleet_fraction,
            error_rate_threshold,
            latency_p99_us_threshold,
            missing_rate_threshold,
            prediction_shift_threshold
        );
        if let Some(a) = self.aggregation {
            p.aggregation = match a {
                AggregationArg::AnyDevice => Aggregation::AnyDevice,
                AggregationArg::FleetFraction => Aggregation::FleetFraction,
            };
        }
        if let Some(d) = self.lookback {
            p.lookback_secs = d.as_secs();
        }
        if let Some(d) = self.cooldown {
            p.cooldown_secs = d.as_secs();
        }
        if let Some(r) = &self.prediction_reference {
            p.prediction_reference = Some(r.0.clone());
        }
        p
    }
}

/// The policy as `setting  value` lines (the secret only as set or not).
pub fn print_policy(json_out: bool, v: &DriftPolicyView) -> anyhow::Result<()> {
    if json_out {
        return print_json(v);
    }
    let s = shown(v)?;
    let p = &s.policy;
    let secs = |n: u64| humantime::format_duration(std::time::Duration::from_secs(n)).to_string();
    let aggregation = match p.aggregation {
        Aggregation::AnyDevice => "any-device",
        Aggregation::FleetFraction => "fleet-fraction",
    };
    let features = if p.features.is_empty() {
        "all".to_string()
    } else {
        p.features.join(",")
    };
    let reference = p.prediction_reference.as_ref().map(|r| {
        r.iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let rows: Vec<(&str, String)> = vec![
        ("model", v.model.clone()),
        (
            "source",
            if v.default == Some(true) {
                "defaults (no policy saved)".into()
            } else {
                "saved".into()
            },
        ),
        ("psi threshold", p.psi_threshold.to_string()),
        ("min drifted rows", p.min_drifted_rows.to_string()),
        ("features", features),
        ("aggregation", aggregation.into()),
        ("fleet fraction", p.fleet_fraction.to_string()),
        ("lookback", secs(p.lookback_secs)),
        ("cooldown", secs(p.cooldown_secs)),
        ("error rate threshold", p.error_rate_threshold.to_string()),
        (
            "latency p99 threshold µs",
            p.latency_p99_us_threshold.to_string(),
        ),
        (
            "missing rate threshold",
            p.missing_rate_threshold.to_string(),
        ),
        (
            "prediction shift threshold",
            p.prediction_shift_threshold.to_string(),
        ),
        ("prediction reference", cell(&reference)),
        ("webhook url", cell(&p.webhook_url)),
        (
            "webhook secret",
            if s.webhook_secret_set { "set" } else { "-" }.into(),
        ),
        ("retrain schedule", cell(&p.retrain_schedule)),
    ];
    table(
        &["setting", "value"],
        rows.into_iter().map(|(k, v)| vec![k.into(), v]).collect(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The server's view of a policy (its `public_json` plus `model` and
    /// `default`) reads back as the same typed policy.
    #[test]
    fn the_shown_policy_reads_back_typed() {
        let p = DriftPolicy {
            psi_threshold: 0.2,
            features: vec!["a".into()],
            webhook_url: Some("https://h.example".into()),
            webhook_secret: Some("s".into()),
            ..Default::default()
        };
        let serde_json::Value::Object(policy) = p.public_json() else {
            panic!("not an object")
        };
        let view = DriftPolicyView {
            model: "m".into(),
            default: Some(false),
            policy,
        };
        let text = serde_json::to_string(&view).unwrap();
        let back: DriftPolicyView = serde_json::from_str(&text).unwrap();
        let s = shown(&back).unwrap();
        assert!(s.webhook_secret_set);
        assert_eq!(
            s.policy,
            DriftPolicy {
                webhook_secret: None,
                ..p
            }
        );
    }

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: SetArgs,
    }

    #[test]
    fn flags_change_only_what_they_name() {
        let t = T::try_parse_from([
            "t",
            "m",
            "--psi-threshold",
            "0.25",
            "--lookback",
            "30m",
            "--aggregation",
            "fleet-fraction",
            "--prediction-reference",
            "0=60,1=40",
        ])
        .unwrap();
        let base = DriftPolicy {
            min_drifted_rows: 7,
            ..Default::default()
        };
        let p = t.s.apply(base);
        assert_eq!(p.psi_threshold, 0.25);
        assert_eq!(p.lookback_secs, 1800);
        assert_eq!(p.min_drifted_rows, 7);
        assert_eq!(p.aggregation, Aggregation::FleetFraction);
        assert_eq!(p.prediction_reference.unwrap()["1"], 40);
        assert!(T::try_parse_from(["t", "m", "--prediction-reference", "a=x"]).is_err());
    }
}
