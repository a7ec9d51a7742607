//! `ferry audit`: list the tenant's audit records, and verify the whole
//! chain client-side.

use super::conn::{block_on, enc, Conn};
use super::output::{print_json, table, when};
use crate::api::types::AuditList;
use crate::audit::{self, AuditRecord, ChainHead};
use crate::client::Client;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// List audit records (admin)
    List {
        #[arg(long)]
        action: Option<String>,
        /// ok or refused
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        after_seq: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Fetch the whole chain and recompute every hash; names the first
    /// broken record and exits non-zero if any was altered or removed
    Verify,
}

async fn fetch_chain(c: &Client) -> anyhow::Result<(String, ChainHead, Vec<AuditRecord>)> {
    let mut records: Vec<AuditRecord> = Vec::new();
    let mut head: Option<ChainHead> = None;
    let mut tenant = String::new();
    let mut after = 0i64;
    loop {
        let v: AuditList = c
            .get(&format!("/audit?after_seq={after}&limit=1000"))
            .await
            .context("reading audit records")?;
        if head.is_none() {
            head = Some(v.head.into());
            tenant = v.tenant;
        }
        let page: Vec<AuditRecord> = v.records.into_iter().map(Into::into).collect();
        let Some(last) = page.last() else { break };
        after = last.seq;
        let n = page.len();
        records.extend(page);
        if n < 1000 {
            break;
        }
    }
    let head = head.context("no chain head in the response")?;
    records.retain(|r| r.seq <= head.seq);
    Ok((tenant, head, records))
}

pub fn audit_cmd(args: AuditArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        match args.cmd {
            AuditCmd::List {
                action,
                outcome,
                after_seq,
                limit,
            } => {
                let mut q = vec![format!("limit={limit}")];
                if let Some(a) = action {
                    q.push(format!("action={}", enc(&a)));
                }
                if let Some(o) = outcome {
                    q.push(format!("outcome={}", enc(&o)));
                }
                if let Some(s) = after_seq {
                    q.push(format!("after_seq={s}"));
                }
                let v: AuditList = c.get(&format!("/audit?{}", q.join("&"))).await?;
                if json_out {
                    return print_json(&v);
                }
                let rows = v
                    .records
                    .iter()
                    .map(|r| {
                        vec![
                            r.seq.to_string(),
                            when(Some(r.at)),
                            r.actor.clone(),
                            r.action.clone(),
                            r.target.clone(),
                            r.outcome.clone(),
                            r.detail.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "seq", "at", "actor", "action", "target", "outcome", "detail",
                    ],
                    rows,
                );
            }
            AuditCmd::Verify => {
                let (tenant, head, records) = fetch_chain(&c).await?;
                match audit::verify_chain(&records, Some(&head)) {
                    Ok(n) => {
                        if json_out {
                            return print_json(
                                &json!({ "tenant": tenant, "ok": true, "records": n, "head": head }),
                            );
                        }
                        println!(
                            "audit chain of tenant {tenant}: {n} records verified, head {} {}",
                            head.seq, head.hash
                        );
                    }
                    Err(b) => {
                        if json_out {
                            print_json(
                                &json!({ "tenant": tenant, "ok": false, "first_broken": b }),
                            )?;
                        }
                        anyhow::bail!(
                            "audit chain of tenant {tenant} is BROKEN at record {}: {}",
                            b.seq,
                            b.reason
                        );
                    }
                }
            }
        }
        Ok(())
    })?
}
