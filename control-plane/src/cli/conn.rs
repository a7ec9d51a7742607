//! Where the server is and who we are, for every command that talks to
//! `ferry server`, and the helpers those commands share.

use crate::client::{Client, ClientError, Credentials, Transport};
use clap::Args;
use serde::Serialize;

/// Flags beat FERRY_* variables, which beat what `ferry login` stored.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Control plane URL (https://HOST:PORT; http:// only to this machine unless --insecure-http)
    #[arg(long, env = "FERRY_SERVER", global = true)]
    pub server: Option<String>,
    /// CA certificate (PEM) that signed the server's TLS certificate; only it is trusted then
    #[arg(long, env = "FERRY_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// Send the token over plain http:// to another machine anyway (it crosses the network in clear)
    #[arg(long, env = "FERRY_INSECURE_HTTP", global = true)]
    pub insecure_http: bool,
    /// Reach HOST at ADDR instead of asking DNS (HOST=ADDR, repeatable); the
    /// TLS name check still uses HOST
    #[arg(long, env = "FERRY_RESOLVE", global = true, value_delimiter = ',', value_parser = parse_resolve)]
    pub resolve: Vec<(String, std::net::IpAddr)>,
    /// API token
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
}

impl Conn {
    pub fn client(&self) -> anyhow::Result<Client> {
        let saved = Credentials::load();
        // The saved CA goes with the saved server only.
        let saved_ca = if self.server.is_none() {
            saved.ca
        } else {
            None
        };
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
        Ok(Client::connect(&server, &token, &self.transport(saved_ca))?)
    }

    /// `--ca` (else `saved`) and `--insecure-http`.
    pub fn transport(&self, saved: Option<std::path::PathBuf>) -> Transport {
        Transport {
            ca: self.ca.clone().or(saved),
            insecure_http: self.insecure_http,
            resolve: self.resolve.clone(),
        }
    }
}

/// `HOST=ADDR` for `--resolve`.
fn parse_resolve(s: &str) -> Result<(String, std::net::IpAddr), String> {
    let (host, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected HOST=ADDR, e.g. cp.example=10.0.0.5"))?;
    let ip = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    if host.is_empty() {
        return Err(format!("{s:?}: the host name is empty"));
    }
    Ok((host.to_string(), ip))
}

/// Runs `f` on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A value as one table cell: `-` for nothing, JSON for structures.
pub fn cell<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Null) | Err(_) => "-".into(),
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
    }
}

/// Seconds since the epoch as RFC 3339, `-` for none.
pub fn when(t: Option<i64>) -> String {
    t.and_then(|t| u64::try_from(t).ok())
        .map(|t| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// Prints rows under headers, columns padded.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}
