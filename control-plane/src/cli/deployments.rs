//! `ferry deploy` (a model version to the devices matching a selector),
//! `ferry deployments [ID]` (their per-device state), `ferry deployments
//! scale ID` (a new selector) and `ferry undeploy ID`.

use super::conn::{block_on, enc, Conn};
use super::device::{labels, parse_labels, shown, LabelSet};
use super::output::{print_json, table, when};
use crate::api::types::{
    Deployment, DeploymentDeleted, DeploymentDetail, DeploymentList, DeploymentRequest,
    DeploymentScaled, ScaleRequest,
};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

/// `ferry deploy MODEL --version V --selector k=v`
#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    conn: Conn,
    model: String,
    /// Version number or alias (production)
    #[arg(long)]
    version: String,
    /// Devices whose labels match all of these (k=v,k=v); empty: every device
    #[arg(long, value_parser = parse_labels, default_value = "")]
    selector: LabelSet,
    /// Wait until every matched device reports active (or failed), up to this long
    #[arg(long, value_parser = super::parse_duration)]
    wait: Option<std::time::Duration>,
}

/// `ferry deployments [ID]`, `ferry deployments scale ID --selector k=v`
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeploymentsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Show one deployment with per-device state
    id: Option<String>,
    #[command(subcommand)]
    cmd: Option<DeploymentsCmd>,
}

#[derive(Subcommand, Debug)]
enum DeploymentsCmd {
    /// Give a deployment a new selector: devices that stop matching drop it
    Scale {
        id: String,
        /// Devices whose labels match all of these (k=v,k=v); empty: every device
        #[arg(long, value_parser = parse_labels)]
        selector: LabelSet,
    },
}

#[derive(Args, Debug)]
pub struct UndeployArgs {
    #[command(flatten)]
    conn: Conn,
    id: String,
}

fn print_status(v: &DeploymentDetail) {
    let d = &v.deployment;
    println!(
        "deployment {}: {} v{} to {}{}",
        d.id,
        d.model,
        d.version,
        shown(&d.selector),
        d.runtime
            .as_deref()
            .map(|r| format!(" (requires runtime {r})"))
            .unwrap_or_default()
    );
    let rows = v
        .devices
        .iter()
        .map(|d| {
            vec![
                d.device.clone(),
                d.hostname.clone(),
                d.state.clone(),
                d.detail.clone(),
            ]
        })
        .collect();
    table(&["device", "host", "state", "detail"], rows);
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let version: Value = match args.version.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(args.version),
    };
    block_on(async move {
        let req = DeploymentRequest {
            model: args.model,
            version,
            selector: Some(labels(&args.selector.0)),
        };
        let v: Deployment = c.call(Method::POST, "/deployments", Some(&req)).await?;
        let id = v.id.clone();
        if args.conn.json && args.wait.is_none() {
            return print_json(&v);
        }
        println!("{id}");
        if let Some(wait) = args.wait {
            let until = std::time::Instant::now() + wait;
            loop {
                let s: DeploymentDetail = c.get(&format!("/deployments/{}", enc(&id))).await?;
                let settled = s.devices.iter().all(|d| {
                    let st = d.state.as_str();
                    // `unsupported`: the device lacks the version's runtime
                    // and is never sent it.
                    ["active", "failed", "revoked", "superseded", "unsupported"].contains(&st)
                });
                if settled || std::time::Instant::now() >= until {
                    if args.conn.json {
                        print_json(&s)?;
                    } else {
                        print_status(&s);
                    }
                    if !settled {
                        anyhow::bail!("deployment {id} did not settle within {wait:?}");
                    }
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        Ok(())
    })?
}

pub fn deployments(args: DeploymentsArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        if let Some(DeploymentsCmd::Scale { id, selector }) = &args.cmd {
            let req = ScaleRequest {
                selector: Some(labels(&selector.0)),
            };
            let v: DeploymentScaled = c
                .call(
                    Method::PATCH,
                    &format!("/deployments/{}", enc(id)),
                    Some(&req),
                )
                .await?;
            if json_out {
                return print_json(&v);
            }
            println!("deployment {} now selects {}", v.id, shown(&v.selector));
            return Ok(());
        }
        match &args.id {
            Some(id) => {
                let v: DeploymentDetail = c.get(&format!("/deployments/{}", enc(id))).await?;
                if json_out {
                    print_json(&v)?;
                } else {
                    print_status(&v);
                }
            }
            None => {
                let v: DeploymentList = c.get("/deployments").await?;
                if json_out {
                    print_json(&v)?;
                } else {
                    let rows = v
                        .deployments
                        .iter()
                        .map(|d| {
                            vec![
                                d.id.clone(),
                                d.model.clone(),
                                d.version.to_string(),
                                shown(&d.selector),
                                when(Some(d.created_at)),
                                d.created_by.clone(),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "id",
                            "model",
                            "version",
                            "selector",
                            "created",
                            "created by",
                        ],
                        rows,
                    );
                }
            }
        }
        Ok(())
    })?
}

pub fn undeploy(args: UndeployArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    block_on(async move {
        let v: DeploymentDeleted = c
            .send(Method::DELETE, &format!("/deployments/{}", enc(&args.id)))
            .await?;
        if args.conn.json {
            return print_json(&v);
        }
        println!("deployment {} removed", args.id);
        for w in &v.warnings {
            eprintln!("warning: {w}");
        }
        Ok(())
    })?
}
