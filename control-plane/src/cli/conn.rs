//! Where the server is and who we are, for every command that talks to
//! `ferry server`.

use crate::client::{Client, ClientError, Credentials, Transport};
use clap::Args;

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

    /// A client for routes that need no token (health): the token is sent
    /// only when one is configured.
    pub fn client_without_token(&self) -> anyhow::Result<Client> {
        let saved = Credentials::load();
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
        let token = self.token.clone().or(saved.token).unwrap_or_default();
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
