//! Sign-in and sign-out, and [`Page`]: the extractor every page takes.
//!
//! Sign-in takes an API token (the same tokens as the REST API and the
//! CLI), checks it exactly as the REST `Auth` extractor does (a failure is
//! counted per source like a failed API login), and makes a server-side
//! session: the browser gets only the `ferry_session` cookie (see
//! `api::session`). A one-time link from `ferry dashboard` (`POST
//! /api/v1/session/link`) makes the same session for the token that asked
//! for it. Sign-in and sign-out are audited.

use super::error::{to_login, PageError};
use super::layout::{self, Chrome};
use super::list::ListQuery;
use crate::action::Action;
use crate::api::auth::{failed_login, principal_of_token};
use crate::api::session::{self, SESSION_TTL_SECS};
use crate::api::{ApiError, AppState, Auth, RequestId};
use crate::audit::{AuditEntry, OUTCOME_OK};
use crate::auth::Principal;
use axum::body::to_bytes;
use axum::extract::{FromRef, FromRequestParts, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;

/// The largest sign-in or sign-out form accepted.
const FORM_LIMIT: usize = 16 * 1024;

/// A signed-in page request: the REST `Auth` (so pages authorize with the
/// same `Action` table, audited the same way) and the session's CSRF token
/// to render. Without a live session: a redirect to the sign-in page.
pub struct Page {
    pub auth: Auth,
    pub csrf: String,
}

impl Page {
    pub fn chrome(&self) -> Chrome<'_> {
        Chrome {
            p: &self.auth.p,
            csrf: &self.csrf,
        }
    }
}

impl<S> FromRequestParts<S> for Page
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/models".into());
        match Auth::from_request_parts(parts, state).await {
            Ok(auth) => match auth.session.as_ref().map(|s| s.csrf.clone()) {
                Some(csrf) => Ok(Page { auth, csrf }),
                // A bearer token is for the API; pages need a session.
                None => Err(to_login(&here)),
            },
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(to_login(&here)),
            Err(e) => Err(PageError(e).into_response()),
        }
    }
}

/// Where to go after signing in: a local path only (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/ui/")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/models".into(),
    }
}

/// A form posted from another site (login CSRF): refused. Browsers send
/// `Sec-Fetch-Site` and `Origin` with every form POST.
fn cross_site(headers: &HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, h)| h) != Some(host),
        (Some(_), None) => true,
        _ => false,
    }
}

fn form_field(body: &[u8], key: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        @if let Some(e) = error {
            p.error role="alert" { (e) }
        }
        form.login method="post" action="/ui/login" {
            input type="hidden" name="next" value=(next);
            div.field {
                label for="token" { "API token" }
                input #token type="password" name="token" required autocomplete="off"
                    spellcheck="false" aria-describedby="token-hint";
            }
            p.hint #token-hint {
                "The token you use with the CLI (" code { "ferry token create" } "). "
                "The dashboard can do what its role can do, no more."
            }
            button type="submit" { "Sign in" }
        }
    };
    (status, layout::bare("Sign in", body)).into_response()
}

/// `GET /ui/login`.
pub async fn login_form(RawQuery(raw): RawQuery) -> Response {
    let q = ListQuery::parse(raw.as_deref());
    login_page(StatusCode::OK, &safe_next(q.get("next")), None)
}

/// `POST /ui/login`: token → session cookie, then back to `next`.
pub async fn login(State(st): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if cross_site(&parts.headers) {
        return PageError(ApiError::forbidden("sign-in from another site is refused"))
            .into_response();
    }
    let Ok(body) = to_bytes(body, FORM_LIMIT).await else {
        return PageError(ApiError::bad_request("the sign-in form is too large")).into_response();
    };
    let next = safe_next(form_field(&body, "next").as_deref());
    let token = form_field(&body, "token").unwrap_or_default();
    let rid = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let p = match principal_of_token(&st, token.trim()).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            let e = failed_login(&st, &parts, &rid).await;
            return login_page(e.status, &next, Some(&e.message));
        }
        Err(e) => return PageError(e).into_response(),
    };
    if !st.allow(&p.token_id) {
        let msg = format!(
            "token {} is over its request limit; try again in a minute",
            p.token_id
        );
        return login_page(StatusCode::TOO_MANY_REQUESTS, &next, Some(&msg));
    }
    start(&st, &p, rid, "dashboard sign-in", next).await
}

/// `GET /ui/login/link?code=…`: a one-time sign-in link (`ferry
/// dashboard`, `ferry demo`) becomes a session for the token that asked
/// for it; a used, expired or unknown code leads to the sign-in form.
pub async fn login_link(State(st): State<AppState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let q = ListQuery::parse(parts.uri.query());
    let rid = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let code = q.get("code").unwrap_or("");
    // A malformed code costs no lookup.
    let p = if code.len() == 64 && code.bytes().all(|b| b.is_ascii_hexdigit()) {
        match st.store.take_sign_in_link(&session::hash_id(code)).await {
            Ok(p) => p,
            Err(e) => return PageError::from(e).into_response(),
        }
    } else {
        None
    };
    let Some(p) = p else {
        // Counted and limited per source like any failed sign-in.
        let e = failed_login(&st, &parts, &rid).await;
        let msg = if e.status == StatusCode::UNAUTHORIZED {
            "This sign-in link was used already, has expired or is not valid: sign in with a token, or run `ferry dashboard` for a new link.".to_string()
        } else {
            e.message
        };
        return login_page(e.status, "/models", Some(&msg));
    };
    start(
        &st,
        &p,
        rid,
        "dashboard sign-in by one-time link",
        "/models".into(),
    )
    .await
}

/// A new session for `p`: stored and audited, its cookie set, then on to
/// `next`.
async fn start(st: &AppState, p: &Principal, rid: String, detail: &str, next: String) -> Response {
    let id = session::new_secret();
    let id_hash = session::hash_id(&id);
    let entry = AuditEntry {
        tenant: p.tenant.clone(),
        request_id: rid,
        actor: p.actor(),
        action: Action::SessionCreate.audit_name().into(),
        target: format!("session {}", layout::short(&id_hash)),
        outcome: OUTCOME_OK.into(),
        detail: detail.into(),
    };
    let csrf = session::new_secret();
    if let Err(e) = st
        .store
        .create_session(&id_hash, &p.token_id, &csrf, SESSION_TTL_SECS, entry)
        .await
    {
        return PageError::from(e).into_response();
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, next),
            (
                header::SET_COOKIE,
                session::set_cookie(&id, st.limits.secure_cookies),
            ),
        ],
    )
        .into_response()
}

/// `POST /ui/logout`: ends the session (its CSRF token in the form's
/// `_csrf` field or the header), clears the cookie.
pub async fn logout(State(st): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let done = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/login".to_string()),
            (
                header::SET_COOKIE,
                session::clear_cookie(st.limits.secure_cookies),
            ),
        ],
    );
    let s = match session::from_headers(&st.store, &parts.headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return done.into_response(),
        Err(e) => return PageError::from(e).into_response(),
    };
    let Ok(body) = to_bytes(body, FORM_LIMIT).await else {
        return PageError(ApiError::bad_request("the sign-out form is too large")).into_response();
    };
    let field = form_field(&body, "_csrf").unwrap_or_default();
    let header_token = session::csrf_header(&parts.headers);
    if !session::csrf_matches(&s.csrf, &field) && !session::csrf_matches(&s.csrf, header_token) {
        return PageError(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "sign-out must carry the session's CSRF token",
        ))
        .into_response();
    }
    let entry = AuditEntry {
        tenant: s.principal.tenant.clone(),
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        actor: s.principal.actor(),
        action: Action::SessionDelete.audit_name().into(),
        target: format!("session {}", layout::short(&s.id_hash)),
        outcome: OUTCOME_OK.into(),
        detail: "dashboard sign-out".into(),
    };
    if let Err(e) = st.store.delete_session(&s.id_hash, entry).await {
        return PageError::from(e).into_response();
    }
    done.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/models?q=a")), "/models?q=a");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/ui/login",
            "/\\evil",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/models", "{bad}");
        }
        assert_eq!(safe_next(None), "/models");
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(!cross_site(&h(&[("host", "127.0.0.1:8080")])));
        assert!(!cross_site(&h(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(cross_site(&h(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ])));
        assert!(cross_site(&h(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(cross_site(&h(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null")
        ])));
    }
}
