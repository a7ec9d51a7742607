//! `/models/{name}/aliases…` and `/models/{name}/promote`: named pointers
//! to versions (`production`, `staging`), moved with optional
//! compare-and-set.

use super::auth::Auth;
use super::error::ApiResult;
use super::query::{json_body, parse_alias, parse_name, to_i64};
use super::state::AppState;
use super::types::{
    Alias, AliasList, AliasRemoved, AliasRequest, AliasSet, ErrorBody, PromoteRequest,
};
use crate::action::Action;
use crate::registry;
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;

/// A model's aliases.
#[utoipa::path(get, path = "/api/v1/models/{name}/aliases", tag = "aliases",
    params(("name" = String, Path)),
    responses((status = 200, body = AliasList), (status = "4XX", body = ErrorBody)))]
pub async fn list_aliases(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<AliasList>> {
    let name = parse_name(&name)?;
    a.authorize(Action::AliasList, &name).await?;
    st.store.model(&a.p.tenant, &name).await?;
    let aliases = st
        .store
        .aliases(&a.p.tenant, &name)
        .await?
        .into_iter()
        .map(|r| Alias {
            alias: r.alias,
            version: r.version,
            updated_at: r.updated_at,
            updated_by: r.updated_by,
        })
        .collect();
    Ok(Json(AliasList {
        model: name,
        aliases,
    }))
}

async fn move_alias(
    a: &Auth,
    st: &AppState,
    name: &str,
    alias: &str,
    version: u64,
    expect: Option<Option<u64>>,
) -> ApiResult<Json<AliasSet>> {
    a.authorize(Action::AliasSet, format!("{name}@{alias}"))
        .await?;
    let version = to_i64(version)?;
    let expect = match expect {
        None => None,
        Some(None) => Some(None),
        Some(Some(v)) => Some(Some(to_i64(v)?)),
    };
    let r = registry::set_alias(&st.store, &a.caller(), name, alias, version, expect).await;
    let previous = a
        .audited(Action::AliasSet, &format!("{name}@{alias} -> {version}"), r)
        .await?;
    Ok(Json(AliasSet {
        model: name.to_string(),
        alias: alias.to_string(),
        version,
        previous,
    }))
}

/// Point an alias at a version.
#[utoipa::path(put, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    params(("name" = String, Path), ("alias" = String, Path)),
    request_body = AliasRequest,
    responses((status = 200, body = AliasSet), (status = "4XX", body = ErrorBody)))]
pub async fn set_alias(
    a: Auth,
    State(st): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<AliasSet>> {
    let name = parse_name(&name)?;
    let alias = parse_alias(&alias)?;
    let b: AliasRequest = json_body(&body)?;
    move_alias(&a, &st, &name, &alias, b.version, b.expect_current).await
}

/// Point an alias (default `production`) at a version.
#[utoipa::path(post, path = "/api/v1/models/{name}/promote", tag = "aliases",
    params(("name" = String, Path)),
    request_body = PromoteRequest,
    responses((status = 200, body = AliasSet), (status = "4XX", body = ErrorBody)))]
pub async fn promote(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<AliasSet>> {
    let name = parse_name(&name)?;
    let b: PromoteRequest = json_body(&body)?;
    let alias = parse_alias(b.alias.as_deref().unwrap_or("production"))?;
    move_alias(&a, &st, &name, &alias, b.version, b.expect_current).await
}

/// Remove an alias.
#[utoipa::path(delete, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    params(("name" = String, Path), ("alias" = String, Path)),
    responses((status = 200, body = AliasRemoved), (status = "4XX", body = ErrorBody)))]
pub async fn delete_alias(
    a: Auth,
    State(st): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult<Json<AliasRemoved>> {
    let name = parse_name(&name)?;
    let alias = parse_alias(&alias)?;
    let target = format!("{name}@{alias}");
    a.authorize(Action::AliasDelete, &target).await?;
    let r = st
        .store
        .delete_alias(
            &a.p.tenant,
            &name,
            &alias,
            a.ok(Action::AliasDelete, &target),
        )
        .await;
    let removed_from = a.audited(Action::AliasDelete, &target, r).await?;
    Ok(Json(AliasRemoved {
        model: name,
        alias,
        removed_from,
    }))
}
