//! `ferry login`: where the server is and who we are, stored for the
//! other commands; `ferry whoami` and `ferry health` ask the server again;
//! `ferry dashboard` prints a one-time sign-in link for the browser.

use super::conn::{block_on, Conn};
use super::output::print_json;
use crate::api::types::{Health, SignInLink, WhoAmI};
use crate::client::{Client, Credentials};
use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn login(args: LoginArgs) -> anyhow::Result<()> {
    let server = args
        .conn
        .server
        .clone()
        .context("--server URL is required")?;
    let token = args
        .conn
        .token
        .clone()
        .context("--token TOKEN is required")?;
    let client = Client::connect(&server, &token, &args.conn.transport(None))?;
    let who: WhoAmI = block_on(client.get("/whoami"))??;
    let ca = match &args.conn.ca {
        Some(p) => Some(std::path::absolute(p).with_context(|| format!("--ca {}", p.display()))?),
        None => None,
    };
    let path = Credentials {
        server: Some(server.clone()),
        token: Some(token),
        ca,
    }
    .save()?;
    println!(
        "logged in to {server} as {} (tenant {}, role {}); saved to {}",
        who.token_name,
        who.tenant,
        who.role,
        path.display()
    );
    Ok(())
}

/// `ferry whoami`: the token's name, tenant and role, as the server sees it.
#[derive(Args, Debug)]
pub struct WhoamiArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn whoami(args: WhoamiArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let who: WhoAmI = block_on(c.get("/whoami"))??;
    if args.conn.json {
        return print_json(&who);
    }
    println!(
        "{} ({}) in tenant {}, role {}, on {}",
        who.token_name,
        who.token_id,
        who.tenant,
        who.role,
        c.server()
    );
    Ok(())
}

/// `ferry dashboard`: the dashboard's address as a one-time sign-in link
/// for this token (works once, for ten minutes).
#[derive(Args, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    let c = args.conn.client()?;
    let link: SignInLink = block_on(c.send(reqwest::Method::POST, "/session/link"))??;
    let url = format!("{}{}", c.server().trim_end_matches('/'), link.path);
    if args.conn.json {
        return print_json(&serde_json::json!({ "url": url, "expires_at": link.expires_at }));
    }
    println!("{url}");
    eprintln!("(opens the dashboard signed in as this token; it works once, within 10 minutes)");
    Ok(())
}

/// `ferry health`: whether the server answers (needs no token).
#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn health(args: HealthArgs) -> anyhow::Result<()> {
    let c = args.conn.client_without_token()?;
    let h: Health = block_on(c.get("/health"))??;
    if args.conn.json {
        return print_json(&h);
    }
    println!("{}: {}", c.server(), h.status);
    Ok(())
}
