//! `/tokens`: API tokens of the tenant (admin).

use super::auth::Auth;
use super::error::{ApiError, ApiResult};
use super::query::json_body;
use super::state::AppState;
use super::types::{ErrorBody, Token, TokenCreated, TokenList, TokenRequest, TokenRevoked};
use crate::action::Action;
use crate::auth::{self, Role};
use crate::registry;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;

impl From<crate::store::TokenInfo> for Token {
    fn from(t: crate::store::TokenInfo) -> Self {
        Token {
            id: t.id,
            tenant: t.tenant,
            name: t.name,
            role: t.role,
            created_at: t.created_at,
            created_by: t.created_by,
            revoked_at: t.revoked_at,
        }
    }
}

/// The tenant's tokens, revoked ones included.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenList), (status = "4XX", body = ErrorBody)))]
pub async fn list_tokens(a: Auth, State(st): State<AppState>) -> ApiResult<Json<TokenList>> {
    a.authorize(Action::TokenList, "tokens").await?;
    let tokens = st
        .store
        .list_tokens(&a.p.tenant)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// Create a token; its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = TokenRequest,
    responses((status = 201, body = TokenCreated), (status = "4XX", body = ErrorBody)))]
pub async fn create_token(
    a: Auth,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let b: TokenRequest = json_body(&body)?;
    let role: Role = b
        .role
        .parse()
        .map_err(|e: auth::UnknownRole| ApiError::bad_request(e.to_string()))?;
    if b.name.is_empty() || b.name.len() > 128 || b.name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "token name must be 1-128 printable characters",
        ));
    }
    let tenant = b.tenant.clone().unwrap_or_else(|| a.p.tenant.clone());
    if !ferry_protocol::model::is_safe_name(&tenant) {
        return Err(ApiError::bad_request(format!(
            "tenant {tenant:?}: use 1-128 of [A-Za-z0-9._-]"
        )));
    }
    let target = format!("token {} ({}, {role}) in {tenant}", b.name, role);
    a.authorize(Action::TokenCreate, &target).await?;
    let r = registry::create_token(
        &st.store,
        &a.caller(),
        &st.limits.root_tenant,
        &tenant,
        &b.name,
        role,
        &target,
    )
    .await;
    let (info, token) = a.audited(Action::TokenCreate, &target, r).await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            info: info.into(),
            token,
        }),
    ))
}

/// Revoke a token.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path)),
    responses((status = 200, body = TokenRevoked), (status = "4XX", body = ErrorBody)))]
pub async fn revoke_token(
    a: Auth,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenRevoked>> {
    let target = format!("token {id}");
    a.authorize(Action::TokenRevoke, &target).await?;
    let r = st
        .store
        .revoke_token(&a.p.tenant, &id, a.ok(Action::TokenRevoke, &target))
        .await;
    a.audited(Action::TokenRevoke, &target, r).await?;
    Ok(Json(TokenRevoked { revoked: id }))
}
