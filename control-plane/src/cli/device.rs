//! `ferry device …` (enrollment tokens, devices) and `ferry deploy` /
//! `ferry deployments` / `ferry undeploy`.

use crate::client::{Client, ClientError, Credentials};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Control plane URL (http://HOST:PORT)
    #[arg(long, env = "FERRY_SERVER", global = true)]
    server: Option<String>,
    /// API token
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    fn client(&self) -> anyhow::Result<Client> {
        let saved = Credentials::load();
        let server = self
            .server
            .clone()
            .or(saved.server)
            .ok_or(ClientError::NotLoggedIn)?;
        let token = self
            .token
            .clone()
            .or(saved.token)
            .ok_or(ClientError::NotLoggedIn)?;
        Ok(Client::new(&server, &token))
    }
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

fn labels(s: &[(String, String)]) -> Value {
    let m: serde_json::Map<String, Value> = s
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(m)
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
                let l = l.0;
                let v = c
                    .call(
                        Method::POST,
                        "/fleet/devices/tokens",
                        Some(&json!({"labels": labels(&l), "expires_in": expires.as_secs(), "uses": uses})),
                    )
                    .await?;
                if let Some(p) = &ca_out {
                    std::fs::write(p, v["ca_pem"].as_str().unwrap_or_default())?;
                }
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("{}", v["token"].as_str().unwrap_or_default());
                    eprintln!(
                        "enrollment token {} for tenant {} (labels {}, {} use(s), expires at {}); enroll with:\n  ferry-agent enroll --server {} --token TOKEN --ca {}",
                        v["id"].as_str().unwrap_or_default(),
                        v["tenant"].as_str().unwrap_or_default(),
                        v["labels"],
                        v["uses"],
                        v["expires_at"],
                        v["quic"].as_str().unwrap_or_default(),
                        ca_out.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "ca.pem (ferry device ca > ca.pem)".into())
                    );
                }
            }
            DeviceCmd::List => {
                let v = c.get("/fleet/devices").await?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!(
                        "{:<22} {:<10} {:<9} {:<8} LABELS",
                        "ID", "HOST", "CONNECTED", "REVOKED"
                    );
                    for d in v["devices"].as_array().cloned().unwrap_or_default() {
                        println!(
                            "{:<22} {:<10} {:<9} {:<8} {}",
                            d["id"].as_str().unwrap_or_default(),
                            d["hostname"].as_str().unwrap_or_default(),
                            d["connected"],
                            !d["revoked_at"].is_null(),
                            d["labels"]
                        );
                    }
                    if let Some(dl) = v.get("downloads") {
                        println!(
                            "downloads: {} in flight, peak {}, limit {}",
                            dl["in_flight"], dl["peak"], dl["limit"]
                        );
                    }
                }
            }
            DeviceCmd::Show { id } => {
                let v = c.get(&format!("/fleet/devices/{id}")).await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            DeviceCmd::Label { id, labels: l } => {
                let v = c
                    .call(
                        Method::PUT,
                        &format!("/fleet/devices/{id}/labels"),
                        Some(&json!({"labels": labels(&l.0)})),
                    )
                    .await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            DeviceCmd::Revoke { id } => {
                c.call(Method::POST, &format!("/fleet/devices/{id}/revoke"), None)
                    .await?;
                println!("device {id} revoked");
            }
            DeviceCmd::Ca => {
                let resp = reqwest::Client::new()
                    .get(format!("{}/api/v1/fleet/devices/ca.pem", c.server()))
                    .bearer_auth(
                        args.conn
                            .token
                            .clone()
                            .or(Credentials::load().token)
                            .unwrap_or_default(),
                    )
                    .send()
                    .await?
                    .error_for_status()?;
                print!("{}", resp.text().await?);
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

fn print_status(v: &Value) {
    println!(
        "deployment {}: {} v{} to {}",
        v["id"].as_str().unwrap_or_default(),
        v["model"].as_str().unwrap_or_default(),
        v["version"],
        v["selector"]
    );
    for d in v["devices"].as_array().cloned().unwrap_or_default() {
        let detail = d["detail"].as_str().unwrap_or_default();
        println!(
            "  {:<22} {:<16} {}",
            d["device"].as_str().unwrap_or_default(),
            d["state"].as_str().unwrap_or_default(),
            detail
        );
    }
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let version: Value = match args.version.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(args.version),
    };
    block_on(async move {
        let l = args.selector.0;
        let v = c
            .call(
                Method::POST,
                "/deployments",
                Some(&json!({"model": args.model, "version": version, "selector": labels(&l)})),
            )
            .await?;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if args.conn.json && args.wait.is_none() {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!("{id}");
        if let Some(wait) = args.wait {
            let until = std::time::Instant::now() + wait;
            loop {
                let s = c.get(&format!("/deployments/{id}")).await?;
                let devs = s["devices"].as_array().cloned().unwrap_or_default();
                let settled = devs.iter().all(|d| {
                    let st = d["state"].as_str().unwrap_or_default();
                    st == "active" || st == "failed" || st == "revoked" || st == "superseded"
                });
                if settled || std::time::Instant::now() >= until {
                    if args.conn.json {
                        println!("{}", serde_json::to_string_pretty(&s)?);
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
                let v = c.get(&format!("/deployments/{id}")).await?;
                if args.conn.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print_status(&v);
                }
            }
            None => {
                let v = c.get("/deployments").await?;
                if args.conn.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for d in v["deployments"].as_array().cloned().unwrap_or_default() {
                        println!(
                            "{:<16} {} v{} {}",
                            d["id"].as_str().unwrap_or_default(),
                            d["model"].as_str().unwrap_or_default(),
                            d["version"],
                            d["selector"]
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
        let v = c
            .call(Method::DELETE, &format!("/deployments/{}", args.id), None)
            .await?;
        println!("deployment {} removed", args.id);
        for w in v["warnings"].as_array().into_iter().flatten() {
            eprintln!("warning: {}", w.as_str().unwrap_or_default());
        }
        Ok(())
    })?
}
