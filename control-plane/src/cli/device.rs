//! `ferry device …` (enrollment tokens, devices) and `ferry deploy` /
//! `ferry deployments` / `ferry undeploy`.

use super::conn::{block_on, print_json, Conn};
use crate::api::types::{
    Deployment, DeploymentDeleted, DeploymentDetail, DeploymentList, DeploymentRequest,
    DeviceDetail, DeviceLabels, DeviceList, DeviceRevoked, DeviceTokenCreated, DeviceTokenList,
    DeviceTokenRequest, DeviceTokenRevoked, LabelsRequest,
};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;

fn labels(s: &[(String, String)]) -> Value {
    let m: serde_json::Map<String, Value> = s
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(m)
}

/// Labels as the server's answers print them (`{"k":"v"}`).
fn shown<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `k=v,k=v`.
#[derive(Clone, Debug, Default)]
pub struct LabelSet(pub Vec<(String, String)>);

fn parse_labels(s: &str) -> Result<LabelSet, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(super::parse_kv)
        .collect::<Result<_, _>>()
        .map(LabelSet)
}

#[derive(Args, Debug)]
pub struct DeviceArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: DeviceCmd,
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Enrollment tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// List devices with labels and connection state
    List,
    /// Show one device and what it should run
    Show { id: String },
    /// Replace a device's labels (k=v,k=v)
    Label {
        id: String,
        #[arg(value_parser = parse_labels)]
        labels: LabelSet,
    },
    /// Revoke a device: its connection is closed and it cannot reconnect
    Revoke { id: String },
    /// Print the control plane's CA certificate (PEM) for `ferry-agent enroll --ca`
    Ca,
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create an enrollment token
    Create {
        /// Labels the enrolled devices get (site=berlin,hw=rpi4)
        #[arg(long, value_parser = parse_labels, default_value = "")]
        labels: LabelSet,
        /// Lifetime (24h, 7d)
        #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
        expires: std::time::Duration,
        /// How many devices may enroll with it
        #[arg(long, default_value_t = 1)]
        uses: u64,
        /// Also write the CA certificate here
        #[arg(long)]
        ca_out: Option<PathBuf>,
    },
    /// List the tenant's enrollment tokens (ids, labels, uses left, state; never the secrets)
    List,
    /// Revoke an enrollment token by id (enr_…): enrollments with it are refused from now on
    Revoke { id: String },
}

pub fn device(args: DeviceArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        match args.cmd {
            DeviceCmd::Token(TokenCmd::Create {
                labels: l,
                expires,
                uses,
                ca_out,
            }) => {
                let req = DeviceTokenRequest {
                    labels: Some(labels(&l.0)),
                    expires_in: Some(expires.as_secs()),
                    uses: Some(uses),
                };
                let v: DeviceTokenCreated = c
                    .call(Method::POST, "/fleet/devices/tokens", Some(&req))
                    .await?;
                if let Some(p) = &ca_out {
                    std::fs::write(p, &v.ca_pem)?;
                }
                if json_out {
                    print_json(&v)?;
                } else {
                    println!("{}", v.token);
                    let pin = v.root_fingerprint.as_deref().unwrap_or(
                        "FINGERPRINT (the tenant has no trust root yet: ferry trust push)",
                    );
                    eprintln!(
                        "enrollment token {} for tenant {} (labels {}, {} use(s), expires at {}); trust root fingerprint {}; enroll with:\n  ferry-agent enroll --server {} --token TOKEN --ca {} --root-fingerprint {}\n(check the fingerprint against the one `ferry trust init` printed)",
                        v.id,
                        v.tenant,
                        shown(&v.labels),
                        v.uses,
                        v.expires_at,
                        pin,
                        v.quic,
                        ca_out.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "ca.pem (ferry device ca > ca.pem)".into()),
                        pin
                    );
                }
            }
            DeviceCmd::Token(TokenCmd::List) => {
                let v: DeviceTokenList = c.get("/fleet/devices/tokens").await?;
                if json_out {
                    print_json(&v)?;
                } else {
                    super::conn::table(
                        &[
                            "id",
                            "state",
                            "uses left",
                            "expires",
                            "labels",
                            "created by",
                        ],
                        v.tokens
                            .iter()
                            .map(|t| {
                                vec![
                                    t.id.clone(),
                                    t.state.clone(),
                                    t.uses_left.to_string(),
                                    super::conn::when(Some(t.expires_at)),
                                    shown(&t.labels),
                                    t.created_by.clone(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            DeviceCmd::Token(TokenCmd::Revoke { id }) => {
                let v: DeviceTokenRevoked = c
                    .send(
                        Method::DELETE,
                        &format!("/fleet/devices/tokens/{}", super::conn::enc(&id)),
                    )
                    .await?;
                if json_out {
                    print_json(&v)?;
                } else {
                    println!("revoked enrollment token {}", v.id);
                }
            }
            DeviceCmd::List => {
                let v: DeviceList = c.get("/fleet/devices").await?;
                if json_out {
                    print_json(&v)?;
                } else {
                    println!(
                        "{:<22} {:<10} {:<9} {:<8} LABELS",
                        "ID", "HOST", "CONNECTED", "REVOKED"
                    );
                    for d in &v.devices {
                        println!(
                            "{:<22} {:<10} {:<9} {:<8} {}",
                            d.id,
                            d.hostname,
                            d.connected,
                            d.revoked_at.is_some(),
                            shown(&d.labels)
                        );
                    }
                    if let Some(dl) = &v.downloads {
                        println!(
                            "downloads: {} in flight, peak {}, limit {}",
                            dl.in_flight, dl.peak, dl.limit
                        );
                    }
                }
            }
            DeviceCmd::Show { id } => {
                let v: DeviceDetail = c.get(&format!("/fleet/devices/{id}")).await?;
                print_json(&v)?;
            }
            DeviceCmd::Label { id, labels: l } => {
                let req = LabelsRequest {
                    labels: Some(labels(&l.0)),
                };
                let v: DeviceLabels = c
                    .call(
                        Method::PUT,
                        &format!("/fleet/devices/{id}/labels"),
                        Some(&req),
                    )
                    .await?;
                print_json(&v)?;
            }
            DeviceCmd::Revoke { id } => {
                let _: DeviceRevoked = c
                    .send(Method::POST, &format!("/fleet/devices/{id}/revoke"))
                    .await?;
                println!("device {id} revoked");
            }
            DeviceCmd::Ca => {
                print!("{}", c.get_text("/fleet/devices/ca.pem").await?);
            }
        }
        Ok(())
    })?
}

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

/// `ferry deployments [ID]`, `ferry undeploy ID`, `ferry deployments scale`
#[derive(Args, Debug)]
pub struct DeploymentsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Show one deployment with per-device state
    id: Option<String>,
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
        "deployment {}: {} v{} to {}",
        d.id,
        d.model,
        d.version,
        shown(&d.selector)
    );
    for d in &v.devices {
        println!("  {:<22} {:<16} {}", d.device, d.state, d.detail);
    }
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
                let s: DeploymentDetail = c.get(&format!("/deployments/{id}")).await?;
                let settled = s.devices.iter().all(|d| {
                    let st = d.state.as_str();
                    st == "active" || st == "failed" || st == "revoked" || st == "superseded"
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
    block_on(async move {
        match &args.id {
            Some(id) => {
                let v: DeploymentDetail = c.get(&format!("/deployments/{id}")).await?;
                if args.conn.json {
                    print_json(&v)?;
                } else {
                    print_status(&v);
                }
            }
            None => {
                let v: DeploymentList = c.get("/deployments").await?;
                if args.conn.json {
                    print_json(&v)?;
                } else {
                    for d in &v.deployments {
                        println!(
                            "{:<16} {} v{} {}",
                            d.id,
                            d.model,
                            d.version,
                            shown(&d.selector)
                        );
                    }
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
            .send(Method::DELETE, &format!("/deployments/{}", args.id))
            .await?;
        println!("deployment {} removed", args.id);
        for w in &v.warnings {
            eprintln!("warning: {w}");
        }
        Ok(())
    })?
}
