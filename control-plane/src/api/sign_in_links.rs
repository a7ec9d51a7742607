//! `POST /api/v1/session/link`: a one-time dashboard sign-in link for the
//! calling token, so a terminal hands a browser its session without the
//! token being pasted anywhere (`ferry dashboard`, `ferry demo`). The link
//! works once, for ten minutes, and signs in as the same token (no more
//! than it can do); only the SHA-256 of its code is stored.

use super::session;
use super::types::{ErrorBody, SignInLink};
use super::{ApiResult, AppState, Auth};
use crate::action::Action;
use crate::audit::OUTCOME_OK;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// How long a link may wait to be opened.
pub const LINK_TTL_SECS: i64 = 600;

/// A one-time sign-in link for the calling token.
#[utoipa::path(post, path = "/api/v1/session/link", tag = "system",
    responses((status = 201, body = SignInLink), (status = "4XX", body = ErrorBody)))]
pub async fn create_link(
    a: Auth,
    State(st): State<AppState>,
) -> ApiResult<(StatusCode, Json<SignInLink>)> {
    a.authorize(Action::SessionLink, "sign-in link").await?;
    let code = session::new_secret();
    let code_hash = session::hash_id(&code);
    let entry = a.entry(
        Action::SessionLink,
        format!("link {}", &code_hash[..12]),
        OUTCOME_OK,
        "one-time dashboard sign-in link".to_string(),
    );
    let expires_at = st
        .store
        .create_sign_in_link(&code_hash, &a.p.token_id, LINK_TTL_SECS, entry)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SignInLink {
            path: format!("/ui/login/link?code={code}"),
            expires_at,
        }),
    ))
}
