//! `ferry rollout start MODEL --version N --selector k=v [--policy NAME |
//! --policy-file F]`, `list`, `show ID`, `pause|resume|approve|abort ID`,
//! and `ferry rollout policy put NAME FILE | list | show NAME`.

use super::conn::{block_on, enc, Conn};
use super::device::{labels, parse_labels, shown, LabelSet};
use super::output::{print_json, table, when};
use crate::api::types::{
    Rollout, RolloutDetail, RolloutList, RolloutPolicyInfo, RolloutPolicyList,
    RolloutPolicyRequest, RolloutRequest,
};
use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct RolloutArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: RolloutCmd,
}

#[derive(Subcommand, Debug)]
enum RolloutCmd {
    /// Roll a version out to the devices matching a selector, wave by wave
    Start {
        model: String,
        /// Version number or alias (production)
        #[arg(long)]
        version: String,
        /// Devices whose labels match all of these (k=v,k=v); empty: every device
        #[arg(long, value_parser = parse_labels, default_value = "")]
        selector: LabelSet,
        /// A stored policy (`ferry rollout policy put`); default: the defaults
        #[arg(long, conflicts_with = "policy_file")]
        policy: Option<String>,
        /// A one-off policy document (TOML or JSON)
        #[arg(long)]
        policy_file: Option<std::path::PathBuf>,
    },
    /// The tenant's rollouts, newest first
    List,
    /// A rollout: devices by wave and the last verdict of its gates
    Show { id: String },
    /// Hold a rollout at its wave
    Pause { id: String },
    /// Resume a paused rollout (the wave's bake starts over)
    Resume { id: String },
    /// Start the next wave of a rollout awaiting approval
    Approve { id: String },
    /// End a rollout: devices given the version go back to what they ran
    Abort { id: String },
    /// Named, versioned rollout policies
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Store FILE (TOML or JSON) as the next version of policy NAME
    Put {
        name: String,
        file: std::path::PathBuf,
    },
    /// The newest version of each policy
    List,
    /// A policy's newest version
    Show { name: String },
}

fn print_summary(r: &Rollout) {
    println!(
        "rollout {}: {} v{} to {}, policy {}: {} at wave {} ({} of {} devices given it, {} active)",
        r.id,
        r.model,
        r.version,
        shown(&r.selector),
        if r.policy.is_empty() {
            "(defaults)".to_string()
        } else {
            format!("{} v{}", r.policy, r.policy_version)
        },
        r.phase,
        r.wave,
        r.assigned,
        r.devices,
        r.active
    );
}

fn print_detail(v: &RolloutDetail) {
    print_summary(&v.rollout);
    if v.rollout.phase == "paused" || v.rollout.phase == "aborted" {
        println!("reason: {}", shown(&v.phase_detail));
    }
    let mut rows = Vec::new();
    for w in &v.waves {
        for d in &w.devices {
            rows.push(vec![
                w.wave.to_string(),
                d.device.clone(),
                d.previous.map(|p| p.to_string()).unwrap_or("-".into()),
                d.version.map(|p| p.to_string()).unwrap_or("-".into()),
                d.outcome.clone(),
                d.detail.clone(),
            ]);
        }
    }
    for d in &v.waiting {
        rows.push(vec![
            "-".into(),
            d.device.clone(),
            "-".into(),
            d.version.map(|p| p.to_string()).unwrap_or("-".into()),
            "waiting".into(),
            String::new(),
        ]);
    }
    table(
        &["wave", "device", "previous", "version", "outcome", "detail"],
        rows,
    );
    if let Some(verdict) = &v.last_verdict {
        let mut rows = Vec::new();
        let gates = std::iter::once(&verdict["install"])
            .chain(verdict["model"].as_array().into_iter().flatten());
        for g in gates {
            rows.push(vec![
                g["gate"].as_str().unwrap_or_default().to_string(),
                g["verdict"].as_str().unwrap_or_default().to_string(),
                g["detail"].as_str().unwrap_or_default().to_string(),
            ]);
        }
        println!(
            "last verdict (wave {}):",
            verdict["wave"].as_u64().unwrap_or(0) + 1
        );
        table(&["gate", "verdict", "detail"], rows);
    }
}

pub fn rollout(args: RolloutArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        match args.cmd {
            RolloutCmd::Start {
                model,
                version,
                selector,
                policy,
                policy_file,
            } => {
                let version: Value = match version.parse::<i64>() {
                    Ok(n) => json!(n),
                    Err(_) => json!(version),
                };
                let policy_document = match policy_file {
                    Some(p) => Some(
                        std::fs::read_to_string(&p)
                            .with_context(|| format!("reading {}", p.display()))?,
                    ),
                    None => None,
                };
                let req = RolloutRequest {
                    model,
                    version,
                    selector: Some(labels(&selector.0)),
                    policy,
                    policy_document,
                };
                let v: Rollout = c.call(Method::POST, "/rollouts", Some(&req)).await?;
                if json_out {
                    return print_json(&v);
                }
                println!("{}", v.id);
            }
            RolloutCmd::List => {
                let v: RolloutList = c.get("/rollouts").await?;
                if json_out {
                    return print_json(&v);
                }
                let rows = v
                    .rollouts
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.model.clone(),
                            r.version.to_string(),
                            shown(&r.selector),
                            r.phase.clone(),
                            r.wave.to_string(),
                            format!("{}/{}", r.assigned, r.devices),
                            when(Some(r.created_at)),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "id", "model", "version", "selector", "phase", "wave", "assigned",
                        "created",
                    ],
                    rows,
                );
            }
            RolloutCmd::Show { id } => {
                let v: RolloutDetail = c.get(&format!("/rollouts/{}", enc(&id))).await?;
                if json_out {
                    return print_json(&v);
                }
                print_detail(&v);
            }
            RolloutCmd::Pause { id } => command(&c, &id, "pause", json_out).await?,
            RolloutCmd::Resume { id } => command(&c, &id, "resume", json_out).await?,
            RolloutCmd::Approve { id } => command(&c, &id, "approve", json_out).await?,
            RolloutCmd::Abort { id } => command(&c, &id, "abort", json_out).await?,
            RolloutCmd::Policy(p) => policy(&c, p, json_out).await?,
        }
        Ok(())
    })?
}

async fn command(
    c: &crate::client::Client,
    id: &str,
    verb: &str,
    json_out: bool,
) -> anyhow::Result<()> {
    let v: RolloutDetail = c
        .send(Method::POST, &format!("/rollouts/{}/{verb}", enc(id)))
        .await?;
    if json_out {
        return print_json(&v);
    }
    print_summary(&v.rollout);
    Ok(())
}

async fn policy(c: &crate::client::Client, p: PolicyCmd, json_out: bool) -> anyhow::Result<()> {
    match p {
        PolicyCmd::Put { name, file } => {
            let document = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let v: RolloutPolicyInfo = c
                .call(
                    Method::PUT,
                    &format!("/rollouts/policies/{}", enc(&name)),
                    Some(&RolloutPolicyRequest { document }),
                )
                .await?;
            if json_out {
                return print_json(&v);
            }
            println!("rollout policy {} v{} stored", v.name, v.version);
        }
        PolicyCmd::List => {
            let v: RolloutPolicyList = c.get("/rollouts/policies").await?;
            if json_out {
                return print_json(&v);
            }
            let rows = v
                .policies
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.version.to_string(),
                        p.format.clone(),
                        when(Some(p.created_at)),
                        p.created_by.clone(),
                    ]
                })
                .collect();
            table(
                &["name", "version", "format", "created", "created by"],
                rows,
            );
        }
        PolicyCmd::Show { name } => {
            let v: RolloutPolicyInfo = c.get(&format!("/rollouts/policies/{}", enc(&name))).await?;
            if json_out {
                return print_json(&v);
            }
            println!("# rollout policy {} v{} ({})", v.name, v.version, v.format);
            println!("{}", v.document);
        }
    }
    Ok(())
}
