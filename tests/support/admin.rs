//! The agent's admin API over its Unix socket (`DATA/admin.sock`), and raw
//! HTTP/1.1 requests whose every header the test chooses (Host, Origin,
//! Content-Type), for the admin-surface attacks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The admin socket of an agent whose data directory is `data`.
pub fn admin_socket(data: &Path) -> PathBuf {
    data.join("admin.sock")
}

/// Splits a whole `Connection: close` response into (status, body text).
fn parse(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

fn head(method: &str, path: &str, headers: &[(&str, &str)], len: usize) -> String {
    let mut h = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!(
        "content-length: {len}\r\nconnection: close\r\n\r\n"
    ));
    h
}

/// One request to the admin socket: `host: localhost`, JSON unless
/// `content_type` says otherwise; (status, body text).
pub fn admin_request(
    sock: &Path,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("admin socket {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let h = head(
        method,
        path,
        &[("host", "localhost"), ("content-type", content_type)],
        body.len(),
    );
    s.write_all(h.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

/// A JSON request to the admin socket.
pub fn admin_json(sock: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (s, b) = admin_request(sock, method, path, "application/json", body.as_bytes());
    (
        s,
        serde_json::from_str(&b).unwrap_or(serde_json::Value::Null),
    )
}

/// One request over TCP with exactly `headers` (plus content-length and
/// connection: close); (status, body text).
pub fn raw_tcp(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head(method, path, headers, body.len()).as_bytes())
        .unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}
