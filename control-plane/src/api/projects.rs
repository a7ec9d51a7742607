//! `/projects`: groups of models.

use super::auth::Auth;
use super::error::ApiResult;
use super::query::{json_body, parse_project};
use super::state::AppState;
use super::types::{ErrorBody, Project, ProjectList, ProjectRequest};
use crate::action::Action;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;

/// The tenant's projects with their model counts.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects",
    responses((status = 200, body = ProjectList), (status = "4XX", body = ErrorBody)))]
pub async fn list_projects(a: Auth, State(st): State<AppState>) -> ApiResult<Json<ProjectList>> {
    a.authorize(Action::ProjectList, "projects").await?;
    let projects = st
        .store
        .list_projects(&a.p.tenant)
        .await?
        .into_iter()
        .map(|p| Project {
            name: p.name,
            description: p.description,
            created_at: p.created_at,
            models: p.models,
        })
        .collect();
    Ok(Json(ProjectList { projects }))
}

/// Create a project.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects",
    request_body = ProjectRequest,
    responses((status = 201, body = ProjectRequest), (status = "4XX", body = ErrorBody)))]
pub async fn create_project(
    a: Auth,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ProjectRequest>)> {
    let b: ProjectRequest = json_body(&body)?;
    parse_project(&b.name)?;
    let target = format!("project {}", b.name);
    a.authorize(Action::ProjectCreate, &target).await?;
    let r = st
        .store
        .create_project(
            &a.p.tenant,
            &b.name,
            &b.description,
            a.ok(Action::ProjectCreate, &target),
        )
        .await;
    a.audited(Action::ProjectCreate, &target, r).await?;
    Ok((StatusCode::CREATED, Json(b)))
}
