//! `ferry trust …` on the server: `push` sets the tenant's trust root,
//! `get` shows the one in force; the local commands are in `trust`.

use super::conn::{block_on, Conn};
use super::output::{print_json, table};
use crate::api::types::{TrustRootDoc, TrustRootSet};
use clap::Subcommand;
use reqwest::Method;
use std::path::PathBuf;

/// `ferry trust`: the local commands plus `push` and `get`.
#[derive(Subcommand, Debug)]
pub enum TrustAll {
    /// Set the tenant's trust root on the server (admin); a replacement must
    /// be signed by a threshold of the current root's keys
    Push {
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the tenant's trust root in force on the server
    Get {
        #[command(flatten)]
        conn: Conn,
    },
    #[command(flatten)]
    Local(super::trust::TrustCmd),
}

pub fn trust(cmd: TrustAll) -> anyhow::Result<()> {
    match cmd {
        TrustAll::Local(c) => super::trust::run(c),
        TrustAll::Push { file, conn } => {
            let c = conn.client()?;
            let v: TrustRootSet = block_on(c.put_file(Method::PUT, "/trust-root", &file))??;
            if conn.json {
                return print_json(&v);
            }
            println!(
                "trust root v{} set for tenant {} ({} publishers)",
                v.version,
                v.tenant,
                v.publishers.len()
            );
            Ok(())
        }
        TrustAll::Get { conn } => {
            let c = conn.client()?;
            let v: TrustRootDoc = block_on(c.get("/trust-root"))??;
            if conn.json {
                return print_json(&v);
            }
            let expires = i64::try_from(v.expires_at).ok();
            table(
                &[
                    "tenant",
                    "version",
                    "expires",
                    "root keys",
                    "threshold",
                    "publishers",
                    "publisher threshold",
                    "revoked",
                ],
                vec![vec![
                    v.tenant.clone(),
                    v.version.to_string(),
                    super::output::when(expires),
                    v.root_keys.len().to_string(),
                    v.threshold.to_string(),
                    v.publishers.len().to_string(),
                    v.publisher_threshold.to_string(),
                    v.revoked.len().to_string(),
                ]],
            );
            Ok(())
        }
    }
}
