//! `ferry alerts list|ack`: alerts the telemetry engine raised (drift,
//! error rate, latency, data quality, prediction shift, trust-root expiry).

use super::conn::{block_on, enc, Conn};
use super::output::{print_json, table, text, when_ms};
use super::series::{query, Since};
use crate::api::types::{Alert, AlertList};
use clap::{Args, Subcommand};
use reqwest::Method;

#[derive(Args, Debug)]
pub struct AlertsArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: AlertsCmd,
}

#[derive(Subcommand, Debug)]
enum AlertsCmd {
    /// Alerts, oldest first
    List(ListArgs),
    /// Acknowledge an alert (operator)
    Ack { id: String },
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Only this model's
    #[arg(long)]
    model: Option<String>,
    /// Only this kind (drift, error_rate, latency, data_quality, prediction_shift, …)
    #[arg(long)]
    kind: Option<String>,
    /// Only this device's
    #[arg(long)]
    device: Option<String>,
    /// Only alerts not acknowledged yet
    #[arg(long, conflicts_with = "acknowledged")]
    open: bool,
    /// Only acknowledged alerts
    #[arg(long)]
    acknowledged: bool,
    #[command(flatten)]
    since: Since,
}

impl ListArgs {
    fn path(&self) -> String {
        let mut q = Vec::new();
        for (k, v) in [
            ("model", &self.model),
            ("kind", &self.kind),
            ("device", &self.device),
        ] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        if self.open || self.acknowledged {
            q.push(("open", self.open.to_string()));
        }
        q.extend(self.since.pairs());
        format!("/alerts{}", query(&q))
    }
}

fn state(a: &Alert) -> String {
    if a.acknowledged {
        format!("acknowledged by {}", text(&a.acknowledged_by))
    } else {
        "open".into()
    }
}

pub fn alerts(args: AlertsArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        match args.cmd {
            AlertsCmd::List(l) => {
                let v: AlertList = c.get(&l.path()).await?;
                if json_out {
                    return print_json(&v);
                }
                let rows = v
                    .alerts
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.kind.clone(),
                            a.model.clone(),
                            a.version.to_string(),
                            text(&a.device),
                            when_ms(Some(a.opened_at_ms)),
                            state(a),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "id", "kind", "model", "version", "device", "opened", "state",
                    ],
                    rows,
                );
            }
            AlertsCmd::Ack { id } => {
                let a: Alert = c
                    .send(Method::POST, &format!("/alerts/{}/ack", enc(&id)))
                    .await?;
                if json_out {
                    return print_json(&a);
                }
                println!(
                    "acknowledged alert {} ({} on {} v{}, opened {})",
                    a.id,
                    a.kind,
                    a.model,
                    a.version,
                    when_ms(Some(a.opened_at_ms))
                );
            }
        }
        Ok(())
    })?
}
