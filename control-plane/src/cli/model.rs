//! `ferry model …`: the registry's models and versions, their aliases, and
//! the serving metrics devices report for them.

use super::conn::{block_on, enc, Conn};
use super::output::{cell, print_json, table, when};
use crate::api::types::{
    AliasList, AliasRemoved, AliasRequest, AliasSet, Comparison, Deleted, ModelDetail, ModelDoc,
    ModelList, RegisteredVersion, VersionList, VersionStatus,
};
use crate::client::Client;
use clap::{Args, Subcommand};
use reqwest::Method;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: ModelCmd,
}

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Upload a signed bundle (the server verifies it against the tenant's trust root)
    Push {
        bundle: PathBuf,
        #[arg(long)]
        project: Option<String>,
    },
    /// List and search models
    List {
        #[arg(long)]
        name_prefix: Option<String>,
        /// Substring of the name
        #[arg(long)]
        query: Option<String>,
        #[arg(long)]
        project: Option<String>,
        /// KEY or KEY:VALUE
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// NAME OP NUMBER, e.g. auc>=0.9
        #[arg(long = "metric")]
        metrics: Vec<String>,
        #[arg(long)]
        include_archived: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show a model
    Show { name: String },
    /// List a model's versions
    Versions {
        name: String,
        #[arg(long)]
        include_archived: bool,
    },
    /// Show one version's full metadata (ModelDoc)
    Describe { name: String, version: u64 },
    /// Compare versions side by side (deltas against the first)
    Compare {
        name: String,
        #[arg(required = true, num_args = 2..)]
        versions: Vec<u64>,
    },
    /// Point an alias (default production) at a version
    Promote {
        name: String,
        version: u64,
        #[arg(long, default_value = "production")]
        alias: String,
        /// Only move the alias if it currently points at this version
        #[arg(long)]
        expect_current: Option<u64>,
    },
    /// Remove an alias (undeploy)
    Unalias {
        name: String,
        #[arg(long)]
        alias: String,
    },
    /// Archive a version (hidden, not deployable)
    Archive { name: String, version: u64 },
    /// Re-register an archived version
    Restore { name: String, version: u64 },
    /// Delete a version, or the whole model without VERSION
    Delete { name: String, version: Option<u64> },
    /// A model's aliases and the versions they point at
    Aliases { name: String },
    /// Serving metrics devices reported per window: requests, errors, latency, accuracy
    Metrics(super::series::SeriesArgs),
    /// Each version and variant over a time range, from the telemetry roll-ups (what the dashboard's charts read)
    Monitoring(super::series::MonitoringArgs),
    /// The challenger (A/B) or shadow against the champion: error rate, latency, accuracy, tests, and whether it is ready to promote
    Challenger(super::challenger::ChallengerArgs),
    /// Download a version's signed bundle
    Download {
        name: String,
        version: u64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn model(args: ModelArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(model_async(c, json_out, args.cmd))?
}

async fn model_async(c: Client, json_out: bool, cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Push { bundle, project } => {
            let path = match &project {
                Some(p) => format!("/models?project={}", enc(p)),
                None => "/models".into(),
            };
            let v: RegisteredVersion = c.put_file(Method::POST, &path, &bundle).await?;
            if json_out {
                return print_json(&v);
            }
            println!(
                "{} {}@{} sha256:{} ({} bytes, project {})",
                if v.status == "restored" {
                    "re-registered"
                } else {
                    "registered"
                },
                v.model,
                v.version,
                v.digest,
                v.size,
                v.project
            );
        }
        ModelCmd::List {
            name_prefix,
            query,
            project,
            tags,
            aliases,
            metrics,
            include_archived,
            limit,
            page_token,
        } => {
            let mut q = vec![format!("limit={limit}")];
            let mut add = |k: &str, v: &str| q.push(format!("{k}={}", enc(v)));
            if let Some(x) = &name_prefix {
                add("name_prefix", x);
            }
            if let Some(x) = &query {
                add("q", x);
            }
            if let Some(x) = &project {
                add("project", x);
            }
            for x in &tags {
                add("tag", x);
            }
            for x in &aliases {
                add("alias", x);
            }
            for x in &metrics {
                add("metric", x);
            }
            if let Some(x) = &page_token {
                add("page_token", x);
            }
            if include_archived {
                add("include_archived", "true");
            }
            let v: ModelList = c.get(&format!("/models?{}", q.join("&"))).await?;
            if json_out {
                return print_json(&v);
            }
            let rows = v
                .models
                .iter()
                .map(|m| {
                    let aliases = m
                        .aliases
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![
                        m.name.clone(),
                        m.project.clone(),
                        cell(&m.latest_version),
                        m.versions.to_string(),
                        if aliases.is_empty() {
                            "-".into()
                        } else {
                            aliases
                        },
                        when(Some(m.updated_at)),
                    ]
                })
                .collect();
            table(
                &[
                    "name", "project", "latest", "versions", "aliases", "updated",
                ],
                rows,
            );
            if let Some(t) = &v.next_page_token {
                println!("more: --page-token {t}");
            }
        }
        ModelCmd::Show { name } => {
            let v: ModelDetail = c.get(&format!("/models/{}", enc(&name))).await?;
            if json_out {
                return print_json(&v);
            }
            let m = &v.summary;
            println!("model     {}", m.name);
            println!("project   {}", m.project);
            println!(
                "versions  {} (latest ready: {})",
                m.versions,
                cell(&m.latest_version)
            );
            println!("aliases   {}", cell(&m.aliases));
            println!("created   {}", when(Some(m.created_at)));
            println!("updated   {}", when(Some(m.updated_at)));
            if let Some(latest) = &v.latest {
                println!("metrics   {}", cell(&latest.metrics));
                println!("tags      {}", cell(&latest.tags));
            }
        }
        ModelCmd::Versions {
            name,
            include_archived,
        } => {
            let v: VersionList = c
                .get(&format!(
                    "/models/{}/versions?limit=1000&include_archived={include_archived}",
                    enc(&name)
                ))
                .await?;
            if json_out {
                return print_json(&v);
            }
            let rows = v
                .versions
                .iter()
                .map(|r| {
                    vec![
                        r.version.to_string(),
                        r.status.clone(),
                        Some(r.aliases.join(","))
                            .filter(|x| !x.is_empty())
                            .unwrap_or_else(|| "-".into()),
                        cell(&r.metrics),
                        r.size.to_string(),
                        when(Some(r.created_at)),
                        r.digest.chars().take(12).collect(),
                    ]
                })
                .collect();
            table(
                &[
                    "version",
                    "status",
                    "aliases",
                    "metrics",
                    "size",
                    "registered",
                    "digest",
                ],
                rows,
            );
        }
        ModelCmd::Describe { name, version } => {
            let v: ModelDoc = c
                .get(&format!("/models/{}/versions/{version}", enc(&name)))
                .await?;
            print_json(&v)?;
        }
        ModelCmd::Compare { name, versions } => {
            let list: Vec<String> = versions.iter().map(u64::to_string).collect();
            let v: Comparison = c
                .get(&format!(
                    "/models/{}/compare?versions={}",
                    enc(&name),
                    list.join(",")
                ))
                .await?;
            if json_out {
                return print_json(&v);
            }
            let mut headers = vec!["metric".to_string()];
            headers.extend(list.iter().map(|x| format!("v{x}")));
            headers.extend(list.iter().skip(1).map(|x| format!("Δv{x}")));
            let rows = v
                .metrics
                .iter()
                .map(|m| {
                    let mut r = vec![m.name.clone()];
                    r.extend(
                        list.iter()
                            .map(|x| cell(&m.values.get(x).copied().flatten())),
                    );
                    r.extend(list.iter().skip(1).map(|x| match m.delta.get(x) {
                        Some(d) => format!("{d:+.6}"),
                        None => "-".into(),
                    }));
                    r
                })
                .collect();
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            table(&h, rows);
            for x in list.iter().skip(1) {
                println!(
                    "\nv{} -> v{x}: size {:+} bytes",
                    list[0],
                    v.size_delta.get(x).copied().unwrap_or(0)
                );
                for change in v.schema_changes.get(x).into_iter().flatten() {
                    println!("  schema: {change}");
                }
                for change in v.baseline_changes.get(x).into_iter().flatten() {
                    println!("  baseline: {change}");
                }
            }
        }
        ModelCmd::Promote {
            name,
            version,
            alias,
            expect_current,
        } => {
            let body = AliasRequest {
                version,
                expect_current: expect_current.map(Some),
            };
            let v: AliasSet = c
                .call(
                    Method::PUT,
                    &format!("/models/{}/aliases/{}", enc(&name), enc(&alias)),
                    Some(&body),
                )
                .await?;
            if json_out {
                return print_json(&v);
            }
            println!(
                "{name}@{alias} -> {version} (was {})",
                v.previous.map_or("unset".into(), |p| p.to_string())
            );
        }
        ModelCmd::Unalias { name, alias } => {
            let v: AliasRemoved = c
                .send(
                    Method::DELETE,
                    &format!("/models/{}/aliases/{}", enc(&name), enc(&alias)),
                )
                .await?;
            if json_out {
                return print_json(&v);
            }
            println!("removed {name}@{alias} (was {})", v.removed_from);
        }
        ModelCmd::Archive { name, version } => {
            archive_or_restore(&c, json_out, &name, version, true).await?;
        }
        ModelCmd::Restore { name, version } => {
            archive_or_restore(&c, json_out, &name, version, false).await?;
        }
        ModelCmd::Delete { name, version } => {
            let path = match version {
                Some(v) => format!("/models/{}/versions/{v}", enc(&name)),
                None => format!("/models/{}", enc(&name)),
            };
            let v: Deleted = c.send(Method::DELETE, &path).await?;
            if json_out {
                return print_json(&v);
            }
            println!(
                "deleted {} ({} unreferenced artifacts removed)",
                v.deleted,
                v.artifacts_removed.len()
            );
        }
        ModelCmd::Aliases { name } => {
            let v: AliasList = c.get(&format!("/models/{}/aliases", enc(&name))).await?;
            if json_out {
                return print_json(&v);
            }
            let rows = v
                .aliases
                .iter()
                .map(|a| {
                    vec![
                        a.alias.clone(),
                        a.version.to_string(),
                        when(Some(a.updated_at)),
                        a.updated_by.clone(),
                    ]
                })
                .collect();
            table(&["alias", "version", "updated", "updated by"], rows);
        }
        ModelCmd::Metrics(args) => super::series::metrics(&c, json_out, &args).await?,
        ModelCmd::Monitoring(args) => super::series::monitoring(&c, json_out, &args).await?,
        ModelCmd::Challenger(args) => super::challenger::challenger(&c, json_out, &args).await?,
        ModelCmd::Download { name, version, out } => {
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}-{version}.ferry")));
            let n = c
                .download(
                    &format!("/models/{}/versions/{version}/bundle", enc(&name)),
                    &out,
                )
                .await?;
            println!("{name}@{version}: {n} bytes -> {}", out.display());
        }
    }
    Ok(())
}

async fn archive_or_restore(
    c: &Client,
    json_out: bool,
    name: &str,
    version: u64,
    archive: bool,
) -> anyhow::Result<()> {
    let verb = if archive { "archive" } else { "restore" };
    let v: VersionStatus = c
        .send(
            Method::POST,
            &format!("/models/{}/versions/{version}/{verb}", enc(name)),
        )
        .await?;
    if json_out {
        return print_json(&v);
    }
    println!("{name}@{version}: {}", v.status);
    Ok(())
}
