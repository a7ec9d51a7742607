//! `ferry project list|create`: the tenant's projects (groups of models).

use super::conn::{block_on, Conn};
use super::output::{print_json, table, when};
use crate::api::types::{ProjectList, ProjectRequest};
use clap::{Args, Subcommand};
use reqwest::Method;

#[derive(Args, Debug)]
pub struct ProjectArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: ProjectCmd,
}

#[derive(Subcommand, Debug)]
enum ProjectCmd {
    /// List projects with their model counts
    List,
    /// Create a project (publisher)
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

pub fn project(args: ProjectArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        match args.cmd {
            ProjectCmd::List => {
                let v: ProjectList = c.get("/projects").await?;
                if json_out {
                    return print_json(&v);
                }
                let rows = v
                    .projects
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.models.to_string(),
                            when(Some(p.created_at)),
                            p.description.clone(),
                        ]
                    })
                    .collect();
                table(&["name", "models", "created", "description"], rows);
            }
            ProjectCmd::Create { name, description } => {
                let body = ProjectRequest { name, description };
                let v: ProjectRequest = c.call(Method::POST, "/projects", Some(&body)).await?;
                if json_out {
                    return print_json(&v);
                }
                println!("created project {}", v.name);
            }
        }
        Ok(())
    })?
}
