//! `ferry-agent admin …`: the device's own tooling for the admin API, over
//! the admin Unix socket (never the inference port). One HTTP/1.1 request
//! per connection; an upload is streamed from its file.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("admin socket {path}: {source} (is the agent running with this data directory?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent's answer is not HTTP: {0:?}")]
    Malformed(String),
}

/// What the agent answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// A request body.
pub enum Body<'a> {
    None,
    Json(&'a str),
    /// A file streamed as `application/octet-stream`.
    File(&'a Path),
}

/// Sends one request to the admin socket at `socket`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Body<'_>,
) -> Result<Answer, AdminClientError> {
    let mut s = UnixStream::connect(socket).map_err(|source| AdminClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let (ctype, len, file) = match body {
        Body::None => ("application/json", 0, None),
        Body::Json(j) => ("application/json", j.len() as u64, None),
        Body::File(p) => {
            let file_err = |source| AdminClientError::File {
                path: p.to_path_buf(),
                source,
            };
            let f = std::fs::File::open(p).map_err(file_err)?;
            let len = f.metadata().map_err(file_err)?.len();
            ("application/octet-stream", len, Some(f))
        }
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: {ctype}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes())?;
    match (body, file) {
        (Body::Json(j), _) => s.write_all(j.as_bytes())?,
        (_, Some(mut f)) => {
            std::io::copy(&mut f, &mut s)?;
        }
        _ => {}
    }
    s.flush()?;
    read_answer(BufReader::new(s))
}

/// Reads a response with a `content-length` body, or one that ends at EOF.
fn read_answer(mut r: impl BufRead) -> Result<Answer, AdminClientError> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| AdminClientError::Malformed(line.trim_end().to_string()))?;
    let mut len = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked" {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| AdminClientError::Malformed(line.trim_end().to_string()))?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            chunk.truncate(n);
            body.extend_from_slice(&chunk);
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `ferry-agent admin`: which agent, and what to ask it.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The agent's data directory; its admin socket is `DATA/admin.sock`.
    #[arg(long, env = "FERRY_AGENT_DATA", default_value = "ferry-agent-data")]
    pub data: PathBuf,
    /// The admin socket, when the agent was given another
    /// (`--admin-socket`).
    #[arg(long, env = "FERRY_AGENT_ADMIN_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub op: AdminOp,
}

#[derive(clap::Subcommand, Debug)]
pub enum AdminOp {
    /// Activation state of every model (`GET /v1/models`).
    Models,
    /// Verify a bundle and activate it (uploaded over the socket).
    Activate {
        bundle: PathBuf,
        /// champion, challenger or shadow.
        #[arg(long, default_value = "champion")]
        role: String,
        /// The challenger's share of traffic.
        #[arg(long)]
        split: Option<f64>,
    },
    /// Put a model's previous champion back.
    Rollback { model: String },
    /// Stop a model's challenger or shadow.
    Clear {
        model: String,
        /// challenger or shadow.
        role: String,
    },
    /// Inference log counters.
    LogStats,
    /// Read inference log records from a sequence number.
    Log {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Delete inference log records up to and including a sequence number.
    Ack { upto: u64 },
}

impl AdminArgs {
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.data.join(crate::config::ADMIN_SOCKET))
    }
}

/// Sends what `args` asks for to the agent's admin socket.
pub fn run(args: &AdminArgs) -> Result<Answer, AdminClientError> {
    let socket = args.socket();
    match &args.op {
        AdminOp::Models => request(&socket, "GET", "/v1/models", Body::None),
        AdminOp::Activate {
            bundle,
            role,
            split,
        } => {
            let mut path = format!("/v1/models/activate?role={}", encode(role));
            if let Some(s) = split {
                path.push_str(&format!("&split={s}"));
            }
            request(&socket, "POST", &path, Body::File(bundle))
        }
        AdminOp::Rollback { model } => request(
            &socket,
            "POST",
            &format!("/v1/models/{}/rollback", encode(model)),
            Body::None,
        ),
        AdminOp::Clear { model, role } => request(
            &socket,
            "DELETE",
            &format!("/v1/models/{}/{}", encode(model), encode(role)),
            Body::None,
        ),
        AdminOp::LogStats => request(&socket, "GET", "/v1/log/stats", Body::None),
        AdminOp::Log { from, limit } => request(
            &socket,
            "GET",
            &format!("/v1/log?from={from}&limit={limit}"),
            Body::None,
        ),
        AdminOp::Ack { upto } => request(
            &socket,
            "POST",
            "/v1/log/ack",
            Body::Json(&format!("{{\"upto\": {upto}}}")),
        ),
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_length_chunks_or_eof() {
        let a = read_answer(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"[..]).unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "{}"));
        let a = read_answer(
            &b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        )
        .unwrap();
        assert_eq!((a.status, a.body.as_str()), (404, "abc"));
        assert!(read_answer(&b"garbage"[..]).is_err());
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
