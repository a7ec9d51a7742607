//! `ferry device …`: enrollment tokens, devices (list, show, label,
//! revoke, health) and the fleet CA; the label flags `ferry deploy` shares.

use super::conn::{block_on, enc, Conn};
use super::output::{print_json, table, text, when, when_ms};
use crate::api::types::{
    DeviceDetail, DeviceHealthList, DeviceLabels, DeviceList, DeviceRevoked, DeviceTokenCreated,
    DeviceTokenList, DeviceTokenRequest, DeviceTokenRevoked, LabelsRequest,
};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;
use std::path::PathBuf;

pub(super) fn labels(s: &[(String, String)]) -> Value {
    let m: serde_json::Map<String, Value> = s
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(m)
}

/// Labels as the server's answers print them (`{"k":"v"}`).
pub(super) fn shown<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `k=v,k=v`.
#[derive(Clone, Debug, Default)]
pub struct LabelSet(pub Vec<(String, String)>);

pub(super) fn parse_labels(s: &str) -> Result<LabelSet, String> {
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
    /// The latest health report of every device (online/offline, what it serves, its outbox)
    Health,
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
                    table(
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
                                    when(Some(t.expires_at)),
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
                        &format!("/fleet/devices/tokens/{}", enc(&id)),
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
                    let rows = v
                        .devices
                        .iter()
                        .map(|d| {
                            vec![
                                d.id.clone(),
                                text(&d.hostname),
                                if d.connected { "yes" } else { "no" }.into(),
                                when(d.last_seen),
                                d.revoked_at.map_or("no".into(), |t| when(Some(t))),
                                shown(&d.labels),
                                d.runtimes.as_ref().map_or("-".into(), |r| r.join(",")),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "id",
                            "host",
                            "connected",
                            "last seen",
                            "revoked",
                            "labels",
                            "runtimes",
                        ],
                        rows,
                    );
                    if let Some(dl) = &v.downloads {
                        println!(
                            "\ndownloads: {} in flight, peak {}, limit {}",
                            dl.in_flight, dl.peak, dl.limit
                        );
                    }
                }
            }
            DeviceCmd::Health => {
                let v: DeviceHealthList = c.get("/devices").await?;
                if json_out {
                    print_json(&v)?;
                } else {
                    health_table(&v);
                }
            }
            DeviceCmd::Show { id } => {
                let v: DeviceDetail = c.get(&format!("/fleet/devices/{}", enc(&id))).await?;
                print_json(&v)?;
            }
            DeviceCmd::Label { id, labels: l } => {
                let req = LabelsRequest {
                    labels: Some(labels(&l.0)),
                };
                let v: DeviceLabels = c
                    .call(
                        Method::PUT,
                        &format!("/fleet/devices/{}/labels", enc(&id)),
                        Some(&req),
                    )
                    .await?;
                print_json(&v)?;
            }
            DeviceCmd::Revoke { id } => {
                let v: DeviceRevoked = c
                    .send(Method::POST, &format!("/fleet/devices/{}/revoke", enc(&id)))
                    .await?;
                if json_out {
                    print_json(&v)?;
                } else {
                    println!("device {id} revoked");
                }
            }
            DeviceCmd::Ca => {
                print!("{}", c.get_text("/fleet/devices/ca.pem").await?);
            }
        }
        Ok(())
    })?
}

/// `ferry device health`: one row per device from its last health report
/// (the report's fields read as the agent's typed `Health`; `-` where a
/// device sent none of them).
fn health_table(v: &DeviceHealthList) {
    let rows = v
        .devices
        .iter()
        .map(|d| {
            let h: Option<ferry_protocol::telemetry::Health> =
                serde_json::from_value(d.health.clone()).ok();
            let serving = h.as_ref().map(|h| h.serving.join(",")).unwrap_or_default();
            vec![
                d.device.clone(),
                d.status.clone(),
                when_ms(Some(d.received_at_ms)),
                text(h.as_ref().map_or("", |h| h.agent_version.as_str())),
                text(&serving),
                h.as_ref()
                    .map_or("-".into(), |h| h.outbox_depth.to_string()),
                h.as_ref().map_or("-".into(), |h| h.published.to_string()),
                h.as_ref()
                    .and_then(|h| h.mqtt_protocol)
                    .map_or(
                        "-".into(),
                        |p| if p == 5 { "5".into() } else { "3.1.1".into() },
                    ),
            ]
        })
        .collect();
    table(
        &[
            "device",
            "status",
            "reported",
            "agent",
            "serving",
            "outbox",
            "published",
            "mqtt",
        ],
        rows,
    );
}
