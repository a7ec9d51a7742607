//! `ferry token …`: API tokens (admin).

use super::conn::{block_on, enc, Conn};
use super::output::{print_json, table, when};
use crate::api::types::{TokenCreated, TokenList, TokenRequest, TokenRevoked};
use clap::{Args, Subcommand};
use reqwest::Method;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: TokenCmd,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token (admin); the secret is printed once
    Create {
        #[arg(long)]
        name: String,
        /// viewer, operator, publisher or admin
        #[arg(long)]
        role: String,
        /// Another tenant (root-tenant admins only; creates the tenant)
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List the tenant's tokens
    List,
    /// Revoke a token by id
    Revoke { id: String },
    /// Print a fresh random token (offline), e.g. for FERRY_BOOTSTRAP_TOKEN
    Generate,
}

pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    if let TokenCmd::Generate = args.cmd {
        println!("{}", crate::auth::generate_token());
        return Ok(());
    }
    let c = args.conn.client()?;
    let json_out = args.conn.json;
    block_on(async move {
        match args.cmd {
            TokenCmd::Create { name, role, tenant } => {
                let body = TokenRequest { name, role, tenant };
                let v: TokenCreated = c.call(Method::POST, "/tokens", Some(&body)).await?;
                if json_out {
                    return print_json(&v);
                }
                println!(
                    "token {} ({}, {} in tenant {}):\n{}",
                    v.info.id, v.info.name, v.info.role, v.info.tenant, v.token
                );
            }
            TokenCmd::List => {
                let v: TokenList = c.get("/tokens").await?;
                if json_out {
                    return print_json(&v);
                }
                let rows = v
                    .tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.role.clone(),
                            when(Some(t.created_at)),
                            match t.revoked_at {
                                None => "active".into(),
                                Some(r) => format!("revoked {}", when(Some(r))),
                            },
                        ]
                    })
                    .collect();
                table(&["id", "name", "role", "created", "state"], rows);
            }
            TokenCmd::Revoke { id } => {
                let v: TokenRevoked = c
                    .send(Method::DELETE, &format!("/tokens/{}", enc(&id)))
                    .await?;
                if json_out {
                    return print_json(&v);
                }
                println!("revoked {id}");
            }
            TokenCmd::Generate => {}
        }
        Ok(())
    })?
}
