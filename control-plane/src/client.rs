//! HTTP client for the control plane API, used by the operator CLI: typed
//! JSON calls (the bodies of [`crate::api::types`]), streamed bundle upload
//! and download.

use crate::api::types::ErrorBody;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{status}: {message} ({code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("cannot reach {server}: {source}")]
    Transport {
        server: String,
        source: reqwest::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server sent an unreadable response: {0}")]
    BadResponse(String),
    #[error("no server configured: run `ferry login --server URL --token TOKEN`, or set FERRY_SERVER and FERRY_TOKEN")]
    NotLoggedIn,
    #[error("{server} is plain http:// to another machine: the token would cross the network in clear; use https:// (with --ca CA.pem for a private CA), or --insecure-http to send it anyway")]
    Plaintext { server: String },
    #[error("--server {0:?} is not an http:// or https:// URL")]
    BadServer(String),
    #[error("--ca {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
}

/// How the CLI reaches the server: the CA that signed its certificate
/// (only that CA is trusted then), and whether a token may go over plain
/// HTTP to a host that is not this machine.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    pub ca: Option<PathBuf>,
    pub insecure_http: bool,
    /// Host names to reach at a given address instead of asking DNS (as
    /// curl's `--resolve`): the URL, and so the TLS name check, keep the
    /// name.
    pub resolve: Vec<(String, std::net::IpAddr)>,
}

/// Whether `host` (as a URL writes it) names this machine.
fn loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What `ferry login` stores (mode 0600).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Credentials {
    pub server: Option<String>,
    pub token: Option<String>,
    /// The CA (PEM) `--ca` named at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// `$FERRY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/ferry`, else `~/.config/ferry`.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(d).join("ferry");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config").join("ferry")
}

impl Credentials {
    pub fn path() -> PathBuf {
        config_dir().join("credentials.toml")
    }

    pub fn load() -> Self {
        std::fs::read_to_string(Self::path())
            .ok()
            .and_then(|s| toml::from_str(&s).ok())
            .unwrap_or_default()
    }

    pub fn save(&self) -> Result<PathBuf, ClientError> {
        let path = Self::path();
        self.save_to(&path)?;
        Ok(path)
    }

    /// Writes these credentials to `path`, readable by the owner only.
    pub fn save_to(&self, path: &Path) -> Result<(), ClientError> {
        let path = path.to_path_buf();
        let io = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = toml::to_string(self).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write;
        let mut f = opts.open(&path).map_err(io)?;
        // `mode` only applies when the file is created: a file that was
        // there before (written by an older version, or by hand) is made
        // private before the token goes into it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        f.write_all(text.as_bytes()).map_err(io)?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client for `server` over `transport`: https:// trusts only the
    /// given CA when there is one (the system's roots otherwise); http://
    /// is refused for a host other than this machine unless
    /// `insecure_http`, since the token would cross the network in clear.
    pub fn connect(server: &str, token: &str, transport: &Transport) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(server).map_err(|_| ClientError::BadServer(server.into()))?;
        let mut b = reqwest::Client::builder();
        match url.scheme() {
            "https" => {}
            "http" => {
                if !url.host_str().is_some_and(loopback_host) {
                    if !transport.insecure_http {
                        return Err(ClientError::Plaintext {
                            server: server.into(),
                        });
                    }
                    eprintln!(
                        "warning: sending the token to {server} over plain HTTP (--insecure-http)"
                    );
                }
            }
            _ => return Err(ClientError::BadServer(server.into())),
        }
        for (name, ip) in &transport.resolve {
            // reqwest takes the port from the URL when this one is 0.
            b = b.resolve(name, std::net::SocketAddr::new(*ip, 0));
        }
        if let Some(path) = &transport.ca {
            let ca_err = |reason: String| ClientError::Ca {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no CERTIFICATE in the file".into()));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| ClientError::BadResponse(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn transport(&self, source: reqwest::Error) -> ClientError {
        ClientError::Transport {
            server: self.base.clone(),
            source,
        }
    }

    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => ClientError::Api {
                status,
                code: e.code,
                message: e.error,
            },
            Err(_) => ClientError::Api {
                status,
                code: "unknown".into(),
                message: text,
            },
        })
    }

    async fn read<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ClientError> {
        let resp = self.check(resp).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// A JSON request; `body` is sent as JSON when given.
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            let text =
                serde_json::to_string(b).map_err(|e| ClientError::BadResponse(e.to_string()))?;
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(text);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        self.read(resp).await
    }

    /// A request without a body.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        self.call::<(), T>(method, path, None).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::GET, path).await
    }

    /// A GET whose answer is text (the CA certificate).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let resp = self.check(resp).await?;
        resp.text().await.map_err(|e| self.transport(e))
    }

    /// Streams a file as the request body.
    pub async fn put_file<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        file: &Path,
    ) -> Result<T, ClientError> {
        let io = |source| ClientError::Io {
            path: file.to_path_buf(),
            source,
        };
        let f = tokio::fs::File::open(file).await.map_err(io)?;
        let len = f.metadata().await.map_err(io)?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let resp = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.read(resp).await
    }

    /// Streams a GET response into `out` (written beside it, then renamed).
    pub async fn download(&self, path: &str, out: &Path) -> Result<u64, ClientError> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let resp = self.check(resp).await?;
        let tmp = crate::keyfile::tmp_path(out);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ClientError::Io { path: p, source }
        };
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        let mut stream = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            n += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(io(&tmp))?;
        }
        f.sync_all().await.map_err(io(&tmp))?;
        drop(f);
        tokio::fs::rename(&tmp, out).await.map_err(io(out))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_this_machine_only() {
        let t = Transport::default();
        for ok in [
            "http://127.0.0.1:8470",
            "http://localhost:8470",
            "http://[::1]:8470",
            "https://cp.example:8470",
        ] {
            assert!(Client::connect(ok, "t", &t).is_ok(), "{ok}");
        }
        for bad in ["http://cp.example:8470", "http://10.0.0.5:8470"] {
            let e = Client::connect(bad, "t", &t).err().unwrap();
            assert!(matches!(e, ClientError::Plaintext { .. }), "{bad}: {e}");
        }
        let insecure = Transport {
            insecure_http: true,
            ..Default::default()
        };
        assert!(Client::connect("http://cp.example:8470", "t", &insecure).is_ok());
        assert!(matches!(
            Client::connect("ftp://x", "t", &t),
            Err(ClientError::BadServer(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_world_readable_credentials_file_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Credentials {
            server: Some("https://x".into()),
            token: Some("fy_secret".into()),
            ca: None,
        };
        c.save_to(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("fy_secret"));
    }
}
