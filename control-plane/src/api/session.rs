//! Dashboard sessions as credentials of the REST API: the `ferry_session`
//! cookie stands for the API token it was made with (looked up again on
//! every request), and an unsafe method must also carry the session's CSRF
//! token in `X-CSRF-Token`. So a button in the dashboard calls the same
//! endpoints, RBAC and audit as the CLI. The dashboard's sign-in and
//! sign-out pages (`crate::dashboard::session`) make and end sessions.

use crate::auth::{self, Principal};
use crate::store::{Store, StoreError};
use axum::http::{header, HeaderMap, Method};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ferry_session";

/// The header an unsafe request made with a session carries its CSRF
/// token in (htmx and the dashboard's script send it).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a session lasts from sign-in (absolute, not sliding).
pub const SESSION_TTL_SECS: i64 = 12 * 3600;

/// A live session: who it is (its token's principal, as of now) and its
/// CSRF token.
#[derive(Clone, Debug)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
    /// What the store keys the session by (SHA-256 of its id).
    pub id_hash: String,
}

/// The session id in a request's `Cookie` headers.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim())
}

/// A fresh session id or CSRF token: 32 random bytes, hex.
pub fn new_secret() -> String {
    auth::random_id("", 32)
}

/// What the store keeps of a session id.
pub fn hash_id(id: &str) -> String {
    auth::hash_token(id)
}

fn well_formed(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The live session the request's cookie names, if any. A malformed id
/// costs no lookup.
pub async fn from_headers(
    store: &Store,
    headers: &HeaderMap,
) -> Result<Option<Session>, StoreError> {
    let Some(id) = session_id(headers).filter(|id| well_formed(id)) else {
        return Ok(None);
    };
    let id_hash = hash_id(id);
    Ok(store.session(&id_hash).await?.map(|row| Session {
        principal: row.principal,
        csrf: row.csrf,
        id_hash,
    }))
}

/// GET, HEAD and OPTIONS change nothing and need no CSRF token.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `given` is the session's CSRF token, compared in constant time.
pub fn csrf_matches(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The CSRF token in the request's `X-CSRF-Token` header ("" when none).
pub fn csrf_header(headers: &HeaderMap) -> &str {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `Set-Cookie` for a new session: HttpOnly (no script reads it),
/// SameSite=Strict (no other site's request carries it), `Secure` when
/// the server runs TLS.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_SECS}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; ferry_session=abc ; b=2"),
        );
        assert_eq!(session_id(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("x=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("ferry_session=def"),
        );
        assert_eq!(session_id(&h), Some("def"));
        assert_eq!(session_id(&HeaderMap::new()), None);
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let t = new_secret();
        assert!(csrf_matches(&t, &t));
        assert!(!csrf_matches(&t, &t[1..]));
        assert!(!csrf_matches(&t, ""));
        assert!(!csrf_matches("", ""));
        assert!(!csrf_matches(&t, &new_secret()));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        let c = set_cookie("abc", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/"));
        assert!(!c.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert!(well_formed(&new_secret()));
        assert!(!well_formed("abc"));
    }
}
