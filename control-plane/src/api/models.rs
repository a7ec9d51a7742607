//! `/models` and `/models/{name}`: list and search, show, register a
//! bundle, delete a whole model.

use super::auth::Auth;
use super::error::{ApiError, ApiResult};
use super::query::{parse_filters, parse_name, parse_project, query_pairs, FILTER_KEYS};
use super::state::AppState;
use super::types::RegisteredVersion;
use super::types::{Deleted, ErrorBody, LatestVersion, ModelDetail, ModelList, ModelSummary};
use super::versions;
use crate::action::Action;
use crate::registry::{self, RegistryError, Upload};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;

impl From<crate::store::ModelSummary> for ModelSummary {
    fn from(m: crate::store::ModelSummary) -> Self {
        ModelSummary {
            name: m.name,
            project: m.project,
            created_at: m.created_at,
            updated_at: m.updated_at,
            latest_version: m.latest_version,
            versions: m.versions,
            aliases: m.aliases,
        }
    }
}

/// List and search the tenant's models.
#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    params(
        ("name_prefix" = Option<String>, Query, description = "names starting with this"),
        ("q" = Option<String>, Query, description = "substring of the name"),
        ("project" = Option<String>, Query),
        ("tag" = Option<String>, Query, description = "KEY or KEY:VALUE; repeatable"),
        ("alias" = Option<String>, Query, description = "has this alias; repeatable"),
        ("metric" = Option<String>, Query, description = "NAME OP NUMBER (auc>=0.9); repeatable"),
        ("include_archived" = Option<bool>, Query),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100"),
        ("page_token" = Option<String>, Query),
    ),
    responses((status = 200, body = ModelList), (status = "4XX", body = ErrorBody)))]
pub async fn list_models(
    a: Auth,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ModelList>> {
    a.authorize(Action::ModelList, "models").await?;
    let pairs = query_pairs(&q, FILTER_KEYS)?;
    let (f, limit, page) = parse_filters(&pairs)?;
    let after = match page {
        None => None,
        Some(p) => Some(
            hex::decode(&p)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("page_token {p:?} is not one this server issued"))
                })?,
        ),
    };
    let models = st
        .store
        .list_models(&a.p.tenant, &f, after.as_deref(), limit + 1)
        .await?;
    let more = models.len() as i64 > limit;
    let models: Vec<ModelSummary> = models
        .into_iter()
        .take(limit as usize)
        .map(Into::into)
        .collect();
    let next_page_token = if more {
        models.last().map(|m| hex::encode(m.name.as_bytes()))
    } else {
        None
    };
    Ok(Json(ModelList {
        models,
        next_page_token,
    }))
}

/// A model, with its latest ready version's metrics, tags and schema.
#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path)),
    responses((status = 200, body = ModelDetail), (status = "4XX", body = ErrorBody)))]
pub async fn show_model(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ModelDetail>> {
    let name = parse_name(&name)?;
    a.authorize(Action::ModelShow, &name).await?;
    let m = st.store.model(&a.p.tenant, &name).await?;
    let latest = match m.latest_version {
        Some(v) => {
            let row = st.store.version(&a.p.tenant, &name, v).await?;
            let man = row.manifest();
            Some(LatestVersion {
                version: v,
                metrics: man.as_ref().map(|m| m.metrics.clone()),
                tags: man.as_ref().map(|m| m.tags.clone()),
                schema: man.as_ref().map(|m| serde_json::json!(m.schema)),
            })
        }
        None => None,
    };
    Ok(Json(ModelDetail {
        summary: m.into(),
        latest,
    }))
}

/// Upload a signed bundle; the server verifies it against the tenant's
/// trust root before storing anything.
#[utoipa::path(post, path = "/api/v1/models", tag = "models",
    params(("project" = Option<String>, Query, description = "default: the manifest's project tag, else default")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = RegisteredVersion), (status = "4XX", body = ErrorBody)))]
pub async fn register(
    a: Auth,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<RegisteredVersion>)> {
    const ACTION: Action = Action::ModelRegister;
    a.authorize(ACTION, "(upload)").await?;
    let pairs = query_pairs(&q, &["project"])?;
    let project = match pairs.iter().find(|(k, _)| k == "project") {
        Some((_, p)) => Some(parse_project(p)?),
        None => None,
    };
    let max = st.limits.max_upload;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        let err = RegistryError::TooLarge { max };
        return Err(a.refuse(ACTION, "(upload)", err.into()).await);
    }
    let upload = match Upload::receive(&st.tmp, body.into_data_stream(), max).await {
        Ok(u) => u,
        Err(e @ RegistryError::TooLarge { .. }) => {
            return Err(a.refuse(ACTION, "(upload)", e.into()).await)
        }
        Err(e) => return Err(e.into()),
    };
    let r = registry::register_bundle(
        &st.store,
        &st.blobs,
        &a.caller(),
        &upload,
        project,
        st.store.clock().now_secs(),
    )
    .await;
    let reg = match r {
        Ok(r) => r,
        Err(refused) => return Err(a.rejected(ACTION, refused).await),
    };
    Ok((
        StatusCode::CREATED,
        Json(RegisteredVersion {
            model: reg.model,
            version: reg.version,
            digest: reg.digest,
            size: reg.size,
            project: reg.project,
            status: match reg.status {
                crate::store::Registered::Created => "created".into(),
                crate::store::Registered::Restored => "restored".into(),
            },
        }),
    ))
}

/// The same as `POST /models`, kept for older clients.
#[utoipa::path(post, path = "/api/v1/models/register", tag = "models",
    params(("project" = Option<String>, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = RegisteredVersion), (status = "4XX", body = ErrorBody)))]
pub async fn register_compat(
    a: Auth,
    st: State<AppState>,
    q: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<RegisteredVersion>)> {
    register(a, st, q, headers, body).await
}

/// Delete a model with every version; unreferenced artifacts are removed.
#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path)),
    responses((status = 200, body = Deleted), (status = "4XX", body = ErrorBody)))]
pub async fn delete_model(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Deleted>> {
    let name = parse_name(&name)?;
    versions::delete(&a, &st, &name, None).await
}
