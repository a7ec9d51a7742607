//! The REST API under `/api/v1`, one file per resource (models, versions,
//! aliases, projects, tokens, trust, audit), on a shared base: [`error`]
//! (the one error type), [`auth`] (the caller, RBAC through
//! `Auth::authorize(Action)`, audited refusals), [`query`] (parsing) and
//! [`types`] (the request and response bodies the CLI shares).
//!
//! Handlers parse, authorize, call the store or the [`crate::registry`]
//! service, and answer a typed body; every failure is a JSON
//! `{"error": "...", "code": "..."}` with its status. The fleet and
//! telemetry routes live beside their domains and use the same base;
//! `server::app` merges them all.

pub mod auth;
pub mod doc;
pub mod error;
pub mod failed_logins;
pub mod query;
pub mod session;
pub mod state;
pub mod types;

mod aliases;
mod audit;
mod challenger;
mod models;
mod projects;
pub mod rollouts;
mod sign_in_links;
mod tokens;
mod trust;
pub(crate) mod versions;

pub use auth::{Auth, RequestId};
pub use error::{ApiError, ApiResult};
pub use query::json_body;
pub use state::{AppState, Limits};

use crate::action::Action;
use axum::Json;
use types::{ErrorBody, Health, WhoAmI};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The registry's routes (models, versions, aliases, projects, tokens,
/// trust root, audit), with their OpenAPI operations.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(whoami))
        .routes(routes!(sign_in_links::create_link))
        .routes(routes!(models::list_models, models::register))
        .routes(routes!(models::register_compat))
        .routes(routes!(models::show_model, models::delete_model))
        .routes(routes!(versions::list_versions))
        .routes(routes!(versions::show_version, versions::delete_version))
        .routes(routes!(versions::download))
        .routes(routes!(versions::archive))
        .routes(routes!(versions::restore))
        .routes(routes!(versions::compare))
        .routes(routes!(aliases::list_aliases))
        .routes(routes!(aliases::set_alias, aliases::delete_alias))
        .routes(routes!(aliases::promote))
        .routes(routes!(projects::list_projects, projects::create_project))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(trust::get_trust_root, trust::put_trust_root))
        .routes(routes!(audit::list_audit))
        .routes(routes!(challenger::challenger))
}

/// Liveness; needs no token.
#[utoipa::path(get, path = "/api/v1/health", tag = "system", security(()),
    responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The calling token's identity.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "system",
    responses((status = 200, body = WhoAmI), (status = "4XX", body = ErrorBody)))]
async fn whoami(a: Auth) -> ApiResult<Json<WhoAmI>> {
    a.authorize(Action::WhoAmI, "whoami").await?;
    Ok(Json(WhoAmI {
        token_id: a.p.token_id.clone(),
        token_name: a.p.token_name.clone(),
        tenant: a.p.tenant.clone(),
        role: a.p.role,
    }))
}
