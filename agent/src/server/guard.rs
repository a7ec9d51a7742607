//! What a request to a TCP port must look like before any handler sees it:
//!
//! - its `Host` names a loopback host (`localhost`, `127.0.0.1`, `[::1]`,
//!   with any port) or one the operator allowed: a page whose DNS name was
//!   rebound to 127.0.0.1 sends its own name, and is refused;
//! - if it carries an `Origin` (every browser POST does, cross-origin ones
//!   always), that origin's host passes the same test;
//! - a POST's body is JSON (`application/json`) or binary tensors
//!   (`application/octet-stream`). A web page can POST cross-origin without
//!   a preflight only as `text/plain`, a form or multipart, so those are
//!   refused. A POST with no `Content-Type` (tritonclient sends none) is
//!   accepted only from a client that sent no `Origin`, which no browser
//!   does on a POST.
//!
//! Each refusal is answered with a JSON error naming the reason and logged
//! as a warning.

use super::error;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use std::sync::Arc;

/// The host names a request may name.
#[derive(Debug, Clone)]
pub(super) struct Hosts {
    /// Lower-case names (without port) besides the loopback ones.
    extra: Vec<String>,
}

const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl Hosts {
    pub(super) fn new(extra: &[String]) -> Self {
        Self {
            extra: extra
                .iter()
                .map(|h| strip_port(h.trim()).to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `authority` (`host[:port]`) names an allowed host.
    fn allows(&self, authority: &str) -> bool {
        if authority.contains(['@', '/', ' ']) {
            return false;
        }
        let host = strip_port(authority).to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        LOOPBACK.contains(&host) || self.extra.iter().any(|h| h == host)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NoHost,
    ForeignHost,
    ForeignOrigin,
    ContentType,
}

impl Refusal {
    fn respond(self, detail: &str) -> Response {
        let (status, code, msg) = match self {
            Refusal::NoHost => (
                StatusCode::BAD_REQUEST,
                "no_host",
                "the request names no host".to_string(),
            ),
            Refusal::ForeignHost => (
                StatusCode::MISDIRECTED_REQUEST,
                "foreign_host",
                format!("host {detail:?} is not served here (allowed: loopback names and allowed_hosts)"),
            ),
            Refusal::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                "foreign_origin",
                format!("requests from origin {detail:?} are refused"),
            ),
            Refusal::ContentType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                format!(
                    "content type {detail:?} is refused: send application/json (or application/octet-stream with binary tensors)"
                ),
            ),
        };
        tracing::warn!(code, detail, "request refused");
        error(status, code, msg)
    }
}

/// The request's authority: the `Host` header, or the URI's (HTTP/2).
fn authority<'a>(headers: &'a HeaderMap, uri: &'a axum::http::Uri) -> Option<&'a str> {
    match headers.get(header::HOST) {
        Some(h) => h.to_str().ok(),
        None => uri.authority().map(|a| a.as_str()),
    }
}

/// The host part of an `Origin` value (`scheme://host[:port]`), or `None`
/// for an opaque origin (`null`) or anything else that is not one.
fn origin_authority(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// Whether a POST's content type is one the API reads (media type only,
/// parameters such as `charset` ignored).
fn accepted_content_type(value: &str) -> bool {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "application/octet-stream"
}

fn check(
    hosts: &Hosts,
    method: &Method,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<(), (Refusal, String)> {
    let Some(host) = authority(headers, uri) else {
        return Err((Refusal::NoHost, String::new()));
    };
    if !hosts.allows(host) {
        return Err((Refusal::ForeignHost, host.to_string()));
    }
    let origin = headers.get(header::ORIGIN);
    if let Some(o) = origin {
        let text = o.to_str().unwrap_or("");
        if !origin_authority(text).is_some_and(|a| hosts.allows(a)) {
            return Err((Refusal::ForeignOrigin, text.to_string()));
        }
    }
    if method == Method::POST || method == Method::PUT || method == Method::PATCH {
        match headers.get(header::CONTENT_TYPE) {
            Some(ct) => {
                let text = ct.to_str().unwrap_or("");
                if !accepted_content_type(text) {
                    return Err((Refusal::ContentType, text.to_string()));
                }
            }
            // No browser POSTs without an Origin.
            None if origin.is_none() => {}
            None => return Err((Refusal::ContentType, "(none, from a browser)".into())),
        }
    }
    Ok(())
}

async fn guard(State(hosts): State<Arc<Hosts>>, req: Request, next: Next) -> Response {
    match check(&hosts, req.method(), req.headers(), req.uri()) {
        Ok(()) => next.run(req).await,
        Err((r, detail)) => r.respond(&detail),
    }
}

/// `app` behind the checks above.
pub(super) fn layer(app: Router, hosts: Arc<Hosts>) -> Router {
    app.layer(axum::middleware::from_fn_with_state(hosts, guard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Uri};

    fn run(hosts: &Hosts, method: Method, h: &[(&str, &str)]) -> Result<(), Refusal> {
        let mut headers = HeaderMap::new();
        for (k, v) in h {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        check(
            hosts,
            &method,
            &headers,
            &Uri::from_static("/v2/models/m/infer"),
        )
        .map_err(|e| e.0)
    }

    #[test]
    fn loopback_and_allowed_hosts_pass_others_do_not() {
        let hosts = Hosts::new(&["Edge-7.local".into()]);
        for ok in [
            "localhost",
            "localhost:8081",
            "127.0.0.1:8081",
            "[::1]:8081",
            "[::1]",
            "LOCALHOST.",
            "edge-7.local:8081",
        ] {
            assert_eq!(run(&hosts, Method::GET, &[("host", ok)]), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8081",
            "127.0.0.1.evil.example",
            "localhost@evil.example",
            "10.0.0.5:8081",
            "[::2]:8081",
        ] {
            assert_eq!(
                run(&hosts, Method::GET, &[("host", bad)]),
                Err(Refusal::ForeignHost),
                "{bad}"
            );
        }
        assert_eq!(run(&hosts, Method::GET, &[]), Err(Refusal::NoHost));
    }

    #[test]
    fn browser_bodies_and_foreign_origins_are_refused() {
        let hosts = Hosts::new(&[]);
        let h = ("host", "127.0.0.1:8081");
        for ct in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ] {
            assert_eq!(
                run(&hosts, Method::POST, &[h, ("content-type", ct)]),
                Err(Refusal::ContentType),
                "{ct}"
            );
        }
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/octet-stream",
        ] {
            assert_eq!(
                run(&hosts, Method::POST, &[h, ("content-type", ct)]),
                Ok(()),
                "{ct}"
            );
        }
        // tritonclient: no content type, no origin.
        assert_eq!(run(&hosts, Method::POST, &[h]), Ok(()));
        // A browser's blob POST: no content type, but an origin.
        assert_eq!(
            run(
                &hosts,
                Method::POST,
                &[h, ("origin", "http://127.0.0.1:8081")]
            ),
            Err(Refusal::ContentType)
        );
        for o in [
            "https://evil.example",
            "null",
            "http://localhost.evil.example:80",
        ] {
            assert_eq!(
                run(&hosts, Method::GET, &[h, ("origin", o)]),
                Err(Refusal::ForeignOrigin),
                "{o}"
            );
        }
        assert_eq!(
            run(
                &hosts,
                Method::POST,
                &[
                    h,
                    ("origin", "http://localhost:3000"),
                    ("content-type", "application/json")
                ]
            ),
            Ok(())
        );
    }
}
