//! Request ids, the [`Auth`] extractor (bearer token, or a dashboard
//! session cookie with its CSRF token on unsafe methods; rate limit) and
//! the one RBAC check, [`Auth::authorize`], which audits every refusal.

use super::error::{ApiError, ApiResult};
use super::failed_logins::{Source, Summary};
use super::session::{self, Session};
use super::state::AppState;
use crate::action::Action;
use crate::audit::{AuditEntry, OUTCOME_OK, OUTCOME_REFUSED};
use crate::auth::{self, Principal};
use crate::registry::{Caller, Refused};
use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The address a request came from (connect info the server's listeners
/// attach; absent when a test serves the router without it).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Takes the caller's `x-request-id` when it is sane, else makes one, and
/// echoes it on the response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| auth::random_id("req_", 8));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The authenticated caller and the request id, for audit records.
pub struct Auth {
    pub p: Principal,
    pub rid: String,
    /// The dashboard session the request came with (no bearer token).
    pub session: Option<Session>,
    state: AppState,
}

/// The principal of an API token, looked up exactly as the `Auth`
/// extractor does (a malformed token costs no lookup); `None` for an
/// unknown or revoked one.
pub(crate) async fn principal_of_token(
    state: &AppState,
    token: &str,
) -> ApiResult<Option<Principal>> {
    if !auth::well_formed(token) {
        return Ok(None);
    }
    Ok(state.store.principal(&auth::hash_token(token)).await?)
}

impl<S> FromRequestParts<S> for Auth
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let rid = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let (p, session) = match token {
            Some(token) => match principal_of_token(&state, token).await? {
                Some(p) => (p, None),
                None => return Err(failed_login(&state, parts, &rid).await),
            },
            // No bearer token: a dashboard session, if the cookie names one.
            None => match session::from_headers(&state.store, &parts.headers).await? {
                Some(s) => {
                    if !session::is_safe(&parts.method)
                        && !session::csrf_matches(&s.csrf, session::csrf_header(&parts.headers))
                    {
                        return Err(csrf_refused(&state, parts, &rid, &s.principal).await);
                    }
                    (s.principal.clone(), Some(s))
                }
                None if session::session_id(&parts.headers).is_some() => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "the dashboard session has ended; sign in again",
                    ))
                }
                None => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "missing Authorization: Bearer TOKEN header",
                    ))
                }
            },
        };
        if !state.allow(&p.token_id) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "token {} is over its limit of {} requests per minute",
                    p.token_id, state.limits.rate_per_minute
                ),
            ));
        }
        Ok(Auth {
            p,
            rid,
            session,
            state,
        })
    }
}

/// A session's unsafe request without its CSRF token: refused (403) and
/// audited, like any refusal of a known caller.
async fn csrf_refused(
    state: &AppState,
    parts: &axum::http::request::Parts,
    rid: &str,
    p: &Principal,
) -> ApiError {
    let err = ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf",
        "a dashboard session's unsafe request must carry its CSRF token (X-CSRF-Token)",
    );
    if state.allow(&p.token_id) {
        let entry = AuditEntry {
            tenant: p.tenant.clone(),
            request_id: rid.to_string(),
            actor: p.actor(),
            action: "auth.csrf".into(),
            target: format!("{} {}", parts.method, parts.uri.path())
                .chars()
                .take(160)
                .collect(),
            outcome: OUTCOME_REFUSED.into(),
            detail: format!("{}: {}", err.code, err.message),
        };
        if let Err(e) = state.store.audit(entry).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }
    err
}

/// A bearer token that names no live token: counted against its source,
/// audited only as the first of its source's minute (the rest are summed
/// up by [`audit_failed_logins`]), and answered 429 once the source is
/// over its limit.
pub(crate) async fn failed_login(
    state: &AppState,
    parts: &axum::http::request::Parts,
    rid: &str,
) -> ApiError {
    let peer = parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0 .0.ip());
    let source = Source::of(peer);
    let what = format!("{} {}", parts.method, parts.uri.path());
    let now = state.store.clock().now_ms();
    let noted = state.failed_logins.note(source, now, &what);
    if noted.first {
        let entry = AuditEntry {
            tenant: state.limits.root_tenant.clone(),
            request_id: rid.to_string(),
            actor: "anonymous".into(),
            action: "auth.login".into(),
            target: source.to_string(),
            outcome: OUTCOME_REFUSED.into(),
            detail: format!(
                "unknown or revoked token: {} (further failures from this source this minute are counted in one summary)",
                what.chars().take(120).collect::<String>()
            ),
        };
        if let Err(e) = state.store.audit(entry).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }
    if noted.limited {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins from this address; try again later",
        );
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "unknown or revoked token",
    )
}

/// Audits the summaries of failed-login windows closed by now (all of
/// them when `all`, at shutdown): one record per source and minute, with
/// the count.
pub async fn audit_failed_logins(state: &AppState, all: bool) {
    let now = state.store.clock().now_ms();
    let summaries: Vec<Summary> =
        state
            .failed_logins
            .take_closed(if all { None } else { Some(now) });
    for s in summaries {
        let entry = AuditEntry {
            tenant: state.limits.root_tenant.clone(),
            request_id: String::new(),
            actor: "anonymous".into(),
            action: "auth.login".into(),
            target: s.source.to_string(),
            outcome: OUTCOME_REFUSED.into(),
            detail: s.detail(),
        };
        if let Err(e) = state.store.audit(entry).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }
}

impl Auth {
    /// An audit entry of this caller.
    pub fn entry(
        &self,
        action: Action,
        target: impl Into<String>,
        outcome: &str,
        detail: impl Into<String>,
    ) -> AuditEntry {
        AuditEntry {
            tenant: self.p.tenant.clone(),
            request_id: self.rid.clone(),
            actor: self.p.actor(),
            action: action.audit_name().into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: detail.into(),
        }
    }

    /// An `ok` entry for a mutation (the store appends it in the same
    /// transaction).
    pub fn ok(&self, action: Action, target: impl Into<String>) -> AuditEntry {
        self.entry(action, target, OUTCOME_OK, "")
    }

    /// Refuses (audited) unless the caller's role is at least the one
    /// `action` needs. The refusal reads the same for every route.
    pub async fn authorize(&self, action: Action, target: impl Into<String>) -> ApiResult<()> {
        if self.p.role >= action.required_role() {
            return Ok(());
        }
        let err = ApiError::forbidden(action.refusal(self.p.role));
        Err(self.refuse(action, target, err).await)
    }

    /// Appends a refusal and returns the error to send.
    pub async fn refuse(
        &self,
        action: Action,
        target: impl Into<String>,
        err: ApiError,
    ) -> ApiError {
        let e = self.entry(
            action,
            target,
            OUTCOME_REFUSED,
            format!("{}: {}", err.code, err.message),
        );
        if let Err(x) = self.state.store.audit(e).await {
            tracing::error!(error = %x, "audit append failed");
        }
        err
    }

    /// Passes a mutation's result through; a refusal (any 4xx: conflict,
    /// not found, a refused bundle) is audited.
    pub async fn audited<T, E>(&self, action: Action, target: &str, r: Result<T, E>) -> ApiResult<T>
    where
        ApiError: From<E>,
    {
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = ApiError::from(e);
                if err.status.is_client_error() {
                    Err(self.refuse(action, target, err).await)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The error for a registry refusal; a 4xx is audited with the target
    /// the refusal names.
    pub async fn rejected(&self, action: Action, r: Refused) -> ApiError {
        let err = ApiError::from(r.error);
        if err.status.is_client_error() {
            self.refuse(action, r.target, err).await
        } else {
            err
        }
    }

    /// Who this caller is, for the registry's operations.
    pub fn caller(&self) -> Caller {
        Caller {
            tenant: self.p.tenant.clone(),
            actor: self.p.actor(),
            request_id: self.rid.clone(),
        }
    }
}
