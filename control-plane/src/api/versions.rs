//! `/models/{name}/versions…`: list, show (ModelDoc), compare, download the
//! signed bundle, archive, restore, delete.

use super::auth::Auth;
use super::doc;
use super::error::{ApiError, ApiResult};
use super::query::{parse_filters, parse_name, parse_version, query_pairs, VERSION_FILTER_KEYS};
use super::state::AppState;
use super::types::VersionSummary;
use super::types::{Comparison, Deleted, ErrorBody, ModelDoc, VersionList, VersionStatus};
use crate::action::Action;
use crate::registry;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;

fn summary(r: crate::store::VersionRow) -> VersionSummary {
    let m = r.manifest();
    VersionSummary {
        metrics: m.as_ref().map(|m| m.metrics.clone()),
        tags: m.as_ref().map(|m| m.tags.clone()),
        lineage: m.as_ref().map(|m| serde_json::json!(m.lineage)),
        model: r.model,
        version: r.version,
        digest: r.digest,
        size: r.size,
        status: r.status,
        created_at: r.created_at,
        created_by: r.created_by,
        aliases: r.aliases,
    }
}

/// A model's versions, newest first.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions", tag = "versions",
    params(
        ("name" = String, Path),
        ("tag" = Option<String>, Query), ("alias" = Option<String>, Query),
        ("metric" = Option<String>, Query), ("include_archived" = Option<bool>, Query),
        ("limit" = Option<i64>, Query), ("page_token" = Option<String>, Query),
    ),
    responses((status = 200, body = VersionList), (status = "4XX", body = ErrorBody)))]
pub async fn list_versions(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<VersionList>> {
    let name = parse_name(&name)?;
    a.authorize(Action::VersionList, &name).await?;
    let pairs = query_pairs(&q, VERSION_FILTER_KEYS)?;
    let (f, limit, page) = parse_filters(&pairs)?;
    let before = page.as_deref().map(parse_version).transpose()?;
    let rows = st
        .store
        .list_versions(&a.p.tenant, &name, &f, before, limit + 1)
        .await?;
    let more = rows.len() as i64 > limit;
    let versions: Vec<VersionSummary> =
        rows.into_iter().take(limit as usize).map(summary).collect();
    let next_page_token = if more {
        versions.last().map(|r| r.version.to_string())
    } else {
        None
    };
    Ok(Json(VersionList {
        model: name,
        versions,
        next_page_token,
    }))
}

/// One version's full metadata.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "versions",
    params(("name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = ModelDoc), (status = "4XX", body = ErrorBody)))]
pub async fn show_version(
    a: Auth,
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ModelDoc>> {
    let name = parse_name(&name)?;
    let version = parse_version(&version)?;
    a.authorize(Action::VersionShow, format!("{name}@{version}"))
        .await?;
    let row = st.store.version(&a.p.tenant, &name, version).await?;
    let project = st.store.model(&a.p.tenant, &name).await?.project;
    let trust = registry::current_trust(&st.store, &a.p.tenant).await;
    Ok(Json(doc::model_doc(&project, &row, trust.as_ref())))
}

/// Versions side by side, deltas against the first.
#[utoipa::path(get, path = "/api/v1/models/{name}/compare", tag = "versions",
    params(("name" = String, Path), ("versions" = String, Query, description = "2 to 10 versions: 1,2[,3…]")),
    responses((status = 200, body = Comparison), (status = "4XX", body = ErrorBody)))]
pub async fn compare(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Comparison>> {
    let name = parse_name(&name)?;
    a.authorize(Action::VersionCompare, &name).await?;
    let pairs = query_pairs(&q, &["versions"])?;
    let mut versions = Vec::new();
    for (_, v) in &pairs {
        for part in v.split(',').filter(|p| !p.trim().is_empty()) {
            versions.push(parse_version(part.trim())?);
        }
    }
    Ok(Json(
        comparison(&st.store, &a.p.tenant, &name, &versions).await?,
    ))
}

/// Versions of `name` side by side, deltas against the first: the REST
/// compare endpoint and the dashboard's compare page.
pub(crate) async fn comparison(
    store: &crate::store::Store,
    tenant: &str,
    name: &str,
    versions: &[i64],
) -> ApiResult<Comparison> {
    if versions.len() < 2 || versions.len() > 10 {
        return Err(ApiError::bad_request(
            "compare needs 2 to 10 versions: ?versions=1,2[,3…]",
        ));
    }
    let mut rows = Vec::new();
    for v in versions {
        rows.push(store.version(tenant, name, *v).await?);
    }
    Ok(doc::compare(&rows))
}

/// The version's signed bundle, streamed from the artifact store.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/bundle", tag = "versions",
    params(("name" = String, Path), ("version" = u64, Path)),
    responses(
        (status = 200, body = Vec<u8>, content_type = "application/octet-stream"),
        (status = "4XX", body = ErrorBody),
    ))]
pub async fn download(
    a: Auth,
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let name = parse_name(&name)?;
    let version = parse_version(&version)?;
    a.authorize(Action::VersionDownload, format!("{name}@{version}"))
        .await?;
    let row = st.store.version(&a.p.tenant, &name, version).await?;
    let header = row
        .signed_manifest()
        .ok_or_else(|| ApiError::internal("stored bundle header does not decode"))?;
    let preamble = header.to_preamble();
    let artifacts = st.store.artifacts(&a.p.tenant, &name, version).await?;
    let total = preamble.len() as u64 + artifacts.iter().map(|x| x.len as u64).sum::<u64>();
    // Open every blob now so a missing artifact is an error status, not a
    // truncated body.
    let mut streams = Vec::new();
    for art in &artifacts {
        streams.push(
            st.blobs
                .get(&a.p.tenant, &art.digest)
                .await
                .map_err(ApiError::internal)?,
        );
    }
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(preamble)) })
        .chain(futures::stream::iter(streams).flatten());
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"{name}-{version}.ferry\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("sha256:{}", row.digest)) {
        headers.insert("x-ferry-manifest-digest", v);
    }
    Ok((headers, Body::from_stream(body)).into_response())
}

async fn set_archived(
    a: &Auth,
    st: &AppState,
    name: &str,
    version: &str,
    archived: bool,
) -> ApiResult<Json<VersionStatus>> {
    let name = parse_name(name)?;
    let version = parse_version(version)?;
    let action = if archived {
        Action::VersionArchive
    } else {
        Action::VersionRestore
    };
    let target = format!("{name}@{version}");
    a.authorize(action, &target).await?;
    let r = st
        .store
        .set_archived(&a.p.tenant, &name, version, archived, a.ok(action, &target))
        .await;
    a.audited(action, &target, r).await?;
    Ok(Json(VersionStatus {
        model: name,
        version,
        status: if archived { "archived" } else { "ready" }.into(),
    }))
}

/// Hide a version: not listed by default, not deployable.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/archive", tag = "versions",
    params(("name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = VersionStatus), (status = "4XX", body = ErrorBody)))]
pub async fn archive(
    a: Auth,
    State(st): State<AppState>,
    Path((n, v)): Path<(String, String)>,
) -> ApiResult<Json<VersionStatus>> {
    set_archived(&a, &st, &n, &v, true).await
}

/// Make an archived version ready again.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/restore", tag = "versions",
    params(("name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = VersionStatus), (status = "4XX", body = ErrorBody)))]
pub async fn restore(
    a: Auth,
    State(st): State<AppState>,
    Path((n, v)): Path<(String, String)>,
) -> ApiResult<Json<VersionStatus>> {
    set_archived(&a, &st, &n, &v, false).await
}

/// Deletes a version, or the model without one (admin).
pub(super) async fn delete(
    a: &Auth,
    st: &AppState,
    name: &str,
    version: Option<i64>,
) -> ApiResult<Json<Deleted>> {
    let (action, target) = registry::delete_target(name, version);
    a.authorize(action, &target).await?;
    let r = registry::delete(&st.store, &st.blobs, &a.caller(), name, version).await;
    let artifacts_removed = a.audited(action, &target, r).await?;
    Ok(Json(Deleted {
        deleted: target,
        artifacts_removed,
    }))
}

/// Delete one version; unreferenced artifacts are removed.
#[utoipa::path(delete, path = "/api/v1/models/{name}/versions/{version}", tag = "versions",
    params(("name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = Deleted), (status = "4XX", body = ErrorBody)))]
pub async fn delete_version(
    a: Auth,
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Deleted>> {
    let name = parse_name(&name)?;
    let version = parse_version(&version)?;
    delete(&a, &st, &name, Some(version)).await
}
