//! `/trust-root`: which keys may sign which of the tenant's models.

use super::auth::Auth;
use super::error::{ApiError, ApiResult};
use super::state::AppState;
use super::types::{ErrorBody, PublisherInfo, TrustRootDoc, TrustRootSet};
use crate::action::Action;
use crate::registry;
use axum::extract::State;
use axum::Json;
use bytes::Bytes;

/// The tenant's trust root.
#[utoipa::path(get, path = "/api/v1/trust-root", tag = "trust",
    responses((status = 200, body = TrustRootDoc), (status = "4XX", body = ErrorBody)))]
pub async fn get_trust_root(a: Auth, State(st): State<AppState>) -> ApiResult<Json<TrustRootDoc>> {
    a.authorize(Action::TrustShow, "trust root").await?;
    let Some(root) = registry::current_trust(&st.store, &a.p.tenant).await else {
        return Err(ApiError::not_found(format!(
            "tenant {:?} has no trust root",
            a.p.tenant
        )));
    };
    let doc = serde_json::to_value(&root)
        .and_then(serde_json::from_value)
        .map_err(ApiError::internal)?;
    Ok(Json(doc))
}

/// Set the tenant's trust root (its signed encoding as the body); a
/// replacement must be signed by a threshold of the current root's keys.
#[utoipa::path(put, path = "/api/v1/trust-root", tag = "trust",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = TrustRootSet), (status = "4XX", body = ErrorBody)))]
pub async fn put_trust_root(
    a: Auth,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<TrustRootSet>> {
    a.authorize(Action::TrustPush, "trust root").await?;
    let root =
        match registry::put_trust_root(&st.store, &a.caller(), &body, st.store.clock().now_secs())
            .await
        {
            Ok(r) => r,
            Err(refused) => return Err(a.rejected(Action::TrustPush, refused).await),
        };
    Ok(Json(TrustRootSet {
        tenant: root.tenant.clone(),
        version: root.version,
        expires_at: root.expires_at,
        publishers: root
            .publishers
            .iter()
            .map(|p| PublisherInfo {
                name: p.name.clone(),
                key_id: p.key.id().to_hex(),
                scopes: p.scopes.clone(),
            })
            .collect(),
    }))
}
