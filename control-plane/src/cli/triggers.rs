//! `ferry triggers list` (retraining triggers fired and their webhook
//! deliveries) and `ferry triggers set MODEL` (where and when retraining
//! is triggered: the webhook and the schedule, fields of the model's drift
//! policy changed as `ferry drift config set` changes the others).

use super::conn::{block_on, Conn};
use super::drift::{current, print_policy, save, SecretArgs};
use super::output::{print_json, table, text, when_ms};
use super::series::{query, Since};
use crate::api::types::TriggerList;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct TriggersArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: TriggersCmd,
}

#[derive(Subcommand, Debug)]
enum TriggersCmd {
    /// Retraining triggers fired, oldest first, with their webhook delivery
    List {
        /// Only this model's
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        since: Since,
    },
    /// Set the model's retraining webhook and schedule (other policy fields are kept)
    Set(SetArgs),
}

#[derive(Args, Debug)]
struct SetArgs {
    model: String,
    /// The webhook a trigger POSTs to (JSON, signed with the webhook secret)
    #[arg(long)]
    webhook_url: Option<String>,
    /// Remove the webhook
    #[arg(long, conflicts_with = "webhook_url")]
    no_webhook: bool,
    /// Time-based retraining: a 5-field cron expression in UTC ("0 3 * * 1")
    #[arg(long)]
    schedule: Option<String>,
    /// Remove the schedule
    #[arg(long, conflicts_with = "schedule")]
    no_schedule: bool,
    #[command(flatten)]
    secret: SecretArgs,
}

pub fn triggers(args: TriggersArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        match args.cmd {
            TriggersCmd::List { model, since } => {
                let mut q = Vec::new();
                if let Some(m) = model {
                    q.push(("model", m));
                }
                q.extend(since.pairs());
                let v: TriggerList = c.get(&format!("/retrain-triggers{}", query(&q))).await?;
                if json_out {
                    return print_json(&v);
                }
                let rows = v
                    .triggers
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.model.clone(),
                            t.version.to_string(),
                            t.reason.clone(),
                            when_ms(Some(t.fired_at_ms)),
                            if t.delivered { "yes" } else { "no" }.into(),
                            t.attempts.to_string(),
                            text(&t.alert_id),
                            text(&t.last_error),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "id",
                        "model",
                        "version",
                        "reason",
                        "fired",
                        "delivered",
                        "attempts",
                        "alert",
                        "last error",
                    ],
                    rows,
                );
                Ok(())
            }
            TriggersCmd::Set(s) => {
                let mut p = current(&c, &s.model).await?;
                if s.no_webhook {
                    p.webhook_url = None;
                } else if let Some(u) = &s.webhook_url {
                    p.webhook_url = Some(u.clone());
                }
                if s.no_schedule {
                    p.retrain_schedule = None;
                } else if let Some(x) = &s.schedule {
                    p.retrain_schedule = Some(x.clone());
                }
                let v = save(&c, &s.model, p, &s.secret).await?;
                print_policy(json_out, &v)
            }
        }
    })?
}
