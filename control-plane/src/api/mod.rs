//! The REST API under `/api/v1`: registry, aliases, projects, tokens, trust
//! roots and the audit trail.
//!
//! Every handler authenticates first (the [`Auth`] extractor), checks the
//! role it needs (refusals are audited), and maps every failure to a JSON
//! body `{"error": "...", "code": "..."}` with a 4xx status — malformed
//! paths, queries and bodies included.

pub mod doc;

use crate::audit::{AuditEntry, ChainHead, OUTCOME_OK, OUTCOME_REFUSED};
use crate::auth::{self, Principal, Role};
use crate::blobs::Blobs;
use crate::store::{Filters, MetricFilter, NewVersion, Store, StoreError};
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use ferry_protocol::trust::{SignedTrustRoot, TrustRoot};
use ferry_protocol::{bundle, ModelName};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Every route as (method, path template): the OpenAPI document and the
/// RBAC matrix test are checked against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/models"),
    ("POST", "/api/v1/models"),
    ("POST", "/api/v1/models/register"),
    ("GET", "/api/v1/models/{name}"),
    ("DELETE", "/api/v1/models/{name}"),
    ("GET", "/api/v1/models/{name}/versions"),
    ("GET", "/api/v1/models/{name}/versions/{version}"),
    ("DELETE", "/api/v1/models/{name}/versions/{version}"),
    ("GET", "/api/v1/models/{name}/versions/{version}/bundle"),
    ("POST", "/api/v1/models/{name}/versions/{version}/archive"),
    ("POST", "/api/v1/models/{name}/versions/{version}/restore"),
    ("GET", "/api/v1/models/{name}/compare"),
    ("GET", "/api/v1/models/{name}/aliases"),
    ("PUT", "/api/v1/models/{name}/aliases/{alias}"),
    ("DELETE", "/api/v1/models/{name}/aliases/{alias}"),
    ("POST", "/api/v1/models/{name}/promote"),
    ("GET", "/api/v1/projects"),
    ("POST", "/api/v1/projects"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{id}"),
    ("GET", "/api/v1/trust-root"),
    ("PUT", "/api/v1/trust-root"),
    ("GET", "/api/v1/audit"),
];

/// The hand-written OpenAPI 3.1 document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Server-wide settings the handlers need.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted bundle upload, bytes.
    pub max_upload: u64,
    /// Requests per minute per token; 0 disables rate limiting.
    pub rate_per_minute: u32,
    /// The tenant of the bootstrap admin; its admins may create tokens in
    /// other tenants (which creates those tenants).
    pub root_tenant: String,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub blobs: Blobs,
    pub tmp: PathBuf,
    pub limits: Limits,
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl AppState {
    pub fn new(store: Store, blobs: Blobs, tmp: PathBuf, limits: Limits) -> Self {
        Self {
            store,
            blobs,
            tmp,
            limits,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Token bucket per token: `rate_per_minute` capacity, refilled
    /// continuously.
    fn allow(&self, token_id: &str) -> bool {
        let rate = self.limits.rate_per_minute;
        if rate == 0 {
            return true;
        }
        let cap = f64::from(rate);
        let Ok(mut b) = self.buckets.lock() else {
            return true;
        };
        let now = Instant::now();
        let entry = b.entry(token_id.to_string()).or_insert((cap, now));
        let refill = now.duration_since(entry.1).as_secs_f64() * cap / 60.0;
        entry.0 = (entry.0 + refill).min(cap);
        entry.1 = now;
        if entry.0 >= 1.0 {
            entry.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/whoami", get(whoami))
        .route("/models", get(list_models).post(register))
        .route("/models/register", post(register))
        .route("/models/{name}", get(show_model).delete(delete_model))
        .route("/models/{name}/versions", get(list_versions))
        .route(
            "/models/{name}/versions/{version}",
            get(show_version).delete(delete_version),
        )
        .route("/models/{name}/versions/{version}/bundle", get(download))
        .route("/models/{name}/versions/{version}/archive", post(archive))
        .route("/models/{name}/versions/{version}/restore", post(restore))
        .route("/models/{name}/compare", get(compare))
        .route("/models/{name}/aliases", get(list_aliases))
        .route(
            "/models/{name}/aliases/{alias}",
            put(set_alias).delete(delete_alias),
        )
        .route("/models/{name}/promote", post(promote))
        .route("/projects", get(list_projects).post(create_project))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/trust-root", get(get_trust_root).put(put_trust_root))
        .route("/audit", get(list_audit))
        .merge(crate::telemetry::api::routes());
    Router::new()
        .nest("/api/v1", v1)
        .fallback(no_route)
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

// ------------------------------------------------------------------ errors

/// A refusal: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.message, "code": self.code })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            other => ApiError::internal(other),
        }
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
}

// --------------------------------------------------------- request ids, auth

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

async fn request_id(mut req: Request, next: Next) -> Response {
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
    state: AppState,
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
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
        let Some(token) = token else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing Authorization: Bearer TOKEN header",
            ));
        };
        let principal = if auth::well_formed(token) {
            state.store.principal(&auth::hash_token(token)).await?
        } else {
            None
        };
        let Some(p) = principal else {
            // Failed logins are audited in the root tenant's chain.
            let _ = state
                .store
                .audit(AuditEntry {
                    tenant: state.limits.root_tenant.clone(),
                    request_id: rid.clone(),
                    actor: "anonymous".into(),
                    action: "auth.login".into(),
                    target: format!("{} {}", parts.method, parts.uri.path()),
                    outcome: OUTCOME_REFUSED.into(),
                    detail: "unknown or revoked token".into(),
                })
                .await;
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "unknown or revoked token",
            ));
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
            state: state.clone(),
        })
    }
}

impl Auth {
    fn entry(
        &self,
        action: &str,
        target: impl Into<String>,
        outcome: &str,
        detail: impl Into<String>,
    ) -> AuditEntry {
        AuditEntry {
            tenant: self.p.tenant.clone(),
            request_id: self.rid.clone(),
            actor: self.p.actor(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: detail.into(),
        }
    }

    /// An `ok` entry for a mutation (the store appends it in the same
    /// transaction).
    fn ok(&self, action: &str, target: impl Into<String>) -> AuditEntry {
        self.entry(action, target, OUTCOME_OK, "")
    }

    /// Appends a refusal and returns the error to send.
    async fn refuse(&self, action: &str, target: impl Into<String>, err: ApiError) -> ApiError {
        let e = self.entry(
            action,
            target,
            OUTCOME_REFUSED,
            format!("{}: {}", err.code, err.message),
        );
        if let Err(x) = self.state.store.audit(e).await {
            tracing::error!("audit append failed: {x}");
        }
        err
    }

    /// Refuses (audited) unless the caller has at least `role`.
    async fn require(&self, role: Role, action: &str, target: impl Into<String>) -> ApiResult<()> {
        if self.p.role >= role {
            return Ok(());
        }
        let msg = format!(
            "role {} may not {action} (needs {role} or above)",
            self.p.role
        );
        Err(self
            .refuse(
                action,
                target,
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg),
            )
            .await)
    }

    /// Runs a mutation's store call; a store refusal (conflict, not found)
    /// is audited.
    async fn audited<T>(
        &self,
        action: &str,
        target: &str,
        r: Result<T, StoreError>,
    ) -> ApiResult<T> {
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
}

// ------------------------------------------------------ request parsing

fn parse_name(s: &str) -> ApiResult<String> {
    ModelName::new(s)
        .map(|n| n.to_string())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

fn parse_version(s: &str) -> ApiResult<i64> {
    s.parse::<u64>()
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("version {s:?} is not a non-negative integer"))
        })
}

fn parse_alias(s: &str) -> ApiResult<String> {
    if ferry_protocol::model::is_safe_name(s) && s.len() <= 64 {
        Ok(s.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "alias {s:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'"
        )))
    }
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty; expected JSON",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Query parameters as ordered pairs; repeated keys allowed.
fn query_pairs(q: &Option<String>, allowed: &[&str]) -> ApiResult<Vec<(String, String)>> {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?} (allowed: {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(pairs)
}

fn parse_limit(v: &str) -> ApiResult<i64> {
    match v.parse::<i64>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit {v:?} must be an integer from 1 to 1000"
        ))),
    }
}

fn parse_bool(k: &str, v: &str) -> ApiResult<bool> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{k}={v:?}: expected true or false"
        ))),
    }
}

/// `auc>=0.9`, `loss<0.2`, `f1=1`.
pub fn parse_metric_filter(s: &str) -> Result<MetricFilter, String> {
    for op in [">=", "<=", "!=", ">", "<", "="] {
        if let Some((k, v)) = s.split_once(op) {
            let k = k.trim();
            if k.is_empty() {
                break;
            }
            let value: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("metric filter {s:?}: {v:?} is not a number"))?;
            if !value.is_finite() {
                return Err(format!("metric filter {s:?}: value must be finite"));
            }
            let op = if op == "!=" { "<>" } else { op };
            return Ok(MetricFilter {
                key: k.to_string(),
                op,
                value,
            });
        }
    }
    Err(format!(
        "metric filter {s:?}: expected NAME OP NUMBER with OP one of >= <= > < = !="
    ))
}

const FILTER_KEYS: &[&str] = &[
    "name_prefix",
    "q",
    "project",
    "tag",
    "alias",
    "metric",
    "include_archived",
    "limit",
    "page_token",
];

fn parse_filters(pairs: &[(String, String)]) -> ApiResult<(Filters, i64, Option<String>)> {
    let mut f = Filters::default();
    let mut limit = 100;
    let mut page = None;
    for (k, v) in pairs {
        match k.as_str() {
            "name_prefix" => f.name_prefix = Some(v.clone()),
            "q" => f.query = Some(v.clone()),
            "project" => f.project = Some(v.clone()),
            "tag" => f.tags.push(match v.split_once(':') {
                Some((a, b)) => (a.to_string(), Some(b.to_string())),
                None => (v.clone(), None),
            }),
            "alias" => f.aliases.push(v.clone()),
            "metric" => f
                .metrics
                .push(parse_metric_filter(v).map_err(ApiError::bad_request)?),
            "include_archived" => f.include_archived = parse_bool(k, v)?,
            "limit" => limit = parse_limit(v)?,
            "page_token" => page = Some(v.clone()),
            _ => {}
        }
    }
    Ok((f, limit, page))
}

// ---------------------------------------------------------------- handlers

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn whoami(a: Auth) -> Json<Value> {
    Json(json!({
        "token_id": a.p.token_id, "token_name": a.p.token_name,
        "tenant": a.p.tenant, "role": a.p.role,
    }))
}

async fn list_models(
    a: Auth,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
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
    let models: Vec<_> = models.into_iter().take(limit as usize).collect();
    let next = if more {
        models.last().map(|m| hex::encode(m.name.as_bytes()))
    } else {
        None
    };
    Ok(Json(json!({ "models": models, "next_page_token": next })))
}

async fn show_model(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    let m = st.store.model(&a.p.tenant, &name).await?;
    let latest = match m.latest_version {
        Some(v) => {
            let row = st.store.version(&a.p.tenant, &name, v).await?;
            let man = doc::manifest(&row);
            json!({
                "version": v,
                "metrics": man.as_ref().map(|m| json!(m.metrics)),
                "tags": man.as_ref().map(|m| json!(m.tags)),
                "schema": man.as_ref().map(|m| json!(m.schema)),
            })
        }
        None => Value::Null,
    };
    let mut v = json!(m);
    if let Some(o) = v.as_object_mut() {
        o.insert("latest".into(), latest);
    }
    Ok(Json(v))
}

async fn list_versions(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    let pairs = query_pairs(
        &q,
        &[
            "tag",
            "alias",
            "metric",
            "include_archived",
            "limit",
            "page_token",
        ],
    )?;
    let (f, limit, page) = parse_filters(&pairs)?;
    let before = page.as_deref().map(parse_version).transpose()?;
    let rows = st
        .store
        .list_versions(&a.p.tenant, &name, &f, before, limit + 1)
        .await?;
    let more = rows.len() as i64 > limit;
    let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next = if more {
        rows.last().map(|r| r.version.to_string())
    } else {
        None
    };
    let versions: Vec<Value> = rows
        .iter()
        .map(|r| {
            let m = doc::manifest(r);
            let mut v = json!(r);
            if let (Some(o), Some(m)) = (v.as_object_mut(), m) {
                o.insert("metrics".into(), json!(m.metrics));
                o.insert("tags".into(), json!(m.tags));
                o.insert("lineage".into(), json!(m.lineage));
            }
            v
        })
        .collect();
    Ok(Json(
        json!({ "model": name, "versions": versions, "next_page_token": next }),
    ))
}

async fn current_trust(st: &AppState, tenant: &str) -> Option<TrustRoot> {
    let (_, hexed) = st.store.trust_root(tenant).await.ok()??;
    let bytes = hex::decode(hexed).ok()?;
    let signed = SignedTrustRoot::from_bytes(&bytes).ok()?;
    // Show publisher names even from an expired root.
    signed.open(0).ok()
}

async fn show_version(
    a: Auth,
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    let version = parse_version(&version)?;
    let row = st.store.version(&a.p.tenant, &name, version).await?;
    let project = st.store.model(&a.p.tenant, &name).await?.project;
    let trust = current_trust(&st, &a.p.tenant).await;
    Ok(Json(doc::model_doc(&project, &row, trust.as_ref())))
}

async fn compare(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    let pairs = query_pairs(&q, &["versions"])?;
    let mut versions = Vec::new();
    for (_, v) in &pairs {
        for part in v.split(',').filter(|p| !p.trim().is_empty()) {
            versions.push(parse_version(part.trim())?);
        }
    }
    if versions.len() < 2 || versions.len() > 10 {
        return Err(ApiError::bad_request(
            "compare needs 2 to 10 versions: ?versions=1,2[,3…]",
        ));
    }
    let mut rows = Vec::new();
    for v in versions {
        rows.push(st.store.version(&a.p.tenant, &name, v).await?);
    }
    Ok(Json(doc::compare(&rows)))
}

async fn list_aliases(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    st.store.model(&a.p.tenant, &name).await?;
    let aliases = st.store.aliases(&a.p.tenant, &name).await?;
    Ok(Json(json!({ "model": name, "aliases": aliases })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    version: u64,
    /// `null` means "only if unset"; absent means "whatever it is now".
    #[serde(default, deserialize_with = "deserialize_some")]
    expect_current: Option<Option<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    version: u64,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default, deserialize_with = "deserialize_some")]
    expect_current: Option<Option<u64>>,
}

fn deserialize_some<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

fn to_i64(v: u64) -> ApiResult<i64> {
    i64::try_from(v).map_err(|_| ApiError::bad_request(format!("version {v} is out of range")))
}

async fn do_set_alias(
    a: &Auth,
    st: &AppState,
    name: &str,
    alias: &str,
    version: u64,
    expect: Option<Option<u64>>,
) -> ApiResult<Json<Value>> {
    let target = format!("{name}@{alias}");
    a.require(Role::Publisher, "alias.set", &target).await?;
    let version = to_i64(version)?;
    let expect = match expect {
        None => None,
        Some(None) => Some(None),
        Some(Some(v)) => Some(Some(to_i64(v)?)),
    };
    let entry = a.ok("alias.set", format!("{name}@{alias} -> {version}"));
    let r = st
        .store
        .set_alias(
            &a.p.tenant,
            name,
            alias,
            version,
            expect,
            &a.p.actor(),
            entry,
        )
        .await;
    let previous = a
        .audited("alias.set", &format!("{name}@{alias} -> {version}"), r)
        .await?;
    Ok(Json(
        json!({ "model": name, "alias": alias, "version": version, "previous": previous }),
    ))
}

async fn set_alias(
    a: Auth,
    State(st): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    let alias = parse_alias(&alias)?;
    let b: AliasBody = json_body(&body)?;
    do_set_alias(&a, &st, &name, &alias, b.version, b.expect_current).await
}

async fn promote(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    let b: PromoteBody = json_body(&body)?;
    let alias = parse_alias(b.alias.as_deref().unwrap_or("production"))?;
    do_set_alias(&a, &st, &name, &alias, b.version, b.expect_current).await
}

async fn delete_alias(
    a: Auth,
    State(st): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    let alias = parse_alias(&alias)?;
    let target = format!("{name}@{alias}");
    a.require(Role::Publisher, "alias.delete", &target).await?;
    let r = st
        .store
        .delete_alias(&a.p.tenant, &name, &alias, a.ok("alias.delete", &target))
        .await;
    let v = a.audited("alias.delete", &target, r).await?;
    Ok(Json(
        json!({ "model": name, "alias": alias, "removed_from": v }),
    ))
}

async fn set_archived(
    a: &Auth,
    st: &AppState,
    name: &str,
    version: &str,
    archived: bool,
) -> ApiResult<Json<Value>> {
    let name = parse_name(name)?;
    let version = parse_version(version)?;
    let action = if archived {
        "version.archive"
    } else {
        "version.restore"
    };
    let target = format!("{name}@{version}");
    a.require(Role::Publisher, action, &target).await?;
    let r = st
        .store
        .set_archived(&a.p.tenant, &name, version, archived, a.ok(action, &target))
        .await;
    a.audited(action, &target, r).await?;
    Ok(Json(json!({
        "model": name, "version": version,
        "status": if archived { "archived" } else { "ready" },
    })))
}

async fn archive(
    a: Auth,
    State(st): State<AppState>,
    Path((n, v)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    set_archived(&a, &st, &n, &v, true).await
}

async fn restore(
    a: Auth,
    State(st): State<AppState>,
    Path((n, v)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    set_archived(&a, &st, &n, &v, false).await
}

async fn do_delete(
    a: &Auth,
    st: &AppState,
    name: &str,
    version: Option<i64>,
) -> ApiResult<Json<Value>> {
    let (action, target) = match version {
        Some(v) => ("version.delete", format!("{name}@{v}")),
        None => ("model.delete", name.to_string()),
    };
    a.require(Role::Admin, action, &target).await?;
    let r = st
        .store
        .delete(&a.p.tenant, name, version, a.ok(action, &target))
        .await;
    let orphans = a.audited(action, &target, r).await?;
    let blobs = st.blobs.clone();
    let tenant = a.p.tenant.clone();
    let removed = st
        .store
        .collect_garbage(&a.p.tenant, orphans, move |d| {
            let blobs = blobs.clone();
            let tenant = tenant.clone();
            async move { blobs.delete(&tenant, &d).await.map_err(|e| e.to_string()) }
        })
        .await?;
    Ok(Json(
        json!({ "deleted": target, "artifacts_removed": removed }),
    ))
}

async fn delete_version(
    a: Auth,
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    let version = parse_version(&version)?;
    do_delete(&a, &st, &name, Some(version)).await
}

async fn delete_model(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let name = parse_name(&name)?;
    do_delete(&a, &st, &name, None).await
}

async fn download(
    a: Auth,
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let name = parse_name(&name)?;
    let version = parse_version(&version)?;
    let row = st.store.version(&a.p.tenant, &name, version).await?;
    let header = doc::header(&row)
        .ok_or_else(|| ApiError::internal("stored bundle header does not decode"))?;
    let preamble = header.to_preamble();
    let artifacts = st.store.artifacts(&a.p.tenant, &name, version).await?;
    let total = preamble.len() as u64 + artifacts.iter().map(|x| x.len as u64).sum::<u64>();
    // Open the first blob now so a missing artifact is an error status, not
    // a truncated body.
    let blobs = st.blobs.clone();
    let tenant = a.p.tenant.clone();
    let mut streams = Vec::new();
    for art in &artifacts {
        streams.push(
            blobs
                .get(&tenant, &art.digest)
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

/// Deletes the upload's temporary file however the request ends.
struct TempFile(PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn register(
    a: Auth,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    const ACTION: &str = "model.register";
    a.require(Role::Publisher, ACTION, "(upload)").await?;
    let pairs = query_pairs(&q, &["project"])?;
    let project = match pairs.iter().find(|(k, _)| k == "project") {
        Some((_, p)) => Some(
            ferry_protocol::model::is_safe_name(p)
                .then(|| p.clone())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("project {p:?}: use 1-128 of [A-Za-z0-9._-]"))
                })?,
        ),
        None => None,
    };
    let max = st.limits.max_upload;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("bundle exceeds the server's upload limit of {max} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max {
            return Err(a.refuse(ACTION, "(upload)", too_large()).await);
        }
    }
    // Stream the body to a temporary file, counting bytes.
    let tmp = TempFile(st.tmp.join(auth::random_id("upload-", 8)));
    let mut file = tokio::fs::File::create(&tmp.0)
        .await
        .map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading upload: {e}")))?;
        total += chunk.len() as u64;
        if total > max {
            drop(file);
            return Err(a.refuse(ACTION, "(upload)", too_large()).await);
        }
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    drop(file);

    // Name what the upload claims to be, for the audit record, before
    // anything is verified.
    let claimed = {
        let path = tmp.0.clone();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(path).ok()?;
            let h = bundle::read_header(&mut std::io::BufReader::new(f)).ok()?;
            let m = h.peek_manifest().ok()?;
            Some(format!("{}@{}", m.model, m.version))
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "(upload)".into())
    };
    let Some(root) = current_trust(&st, &a.p.tenant).await else {
        return Err(a
            .refuse(
                ACTION,
                &claimed,
                ApiError::new(
                    StatusCode::CONFLICT,
                    "no_trust_root",
                    format!(
                        "tenant {:?} has no trust root; an admin must run `ferry trust push` first",
                        a.p.tenant
                    ),
                ),
            )
            .await);
    };
    let now = crate::now_unix();
    let path = tmp.0.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(path)
            .map_err(|e| ferry_protocol::VerifyError::Io(e.to_string()))?;
        bundle::read_verified(&mut std::io::BufReader::new(f), &root, now, None, |_, _| {
            Ok(())
        })
    })
    .await
    .map_err(ApiError::internal)?;
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            let err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.code(),
                format!("bundle refused: {e}"),
            );
            return Err(a.refuse(ACTION, &claimed, err).await);
        }
    };
    let manifest = verified.manifest.manifest().clone();
    let preamble_len = verified.header.to_preamble().len() as u64;
    if preamble_len + manifest.total_len() != total {
        let err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_header",
            "bundle header is not in canonical encoding",
        );
        return Err(a.refuse(ACTION, &claimed, err).await);
    }
    let tenant = a.p.tenant.clone();
    // Upload each artifact (content-addressed; skipped when present).
    let mut offsets = Vec::new();
    let mut offset = preamble_len;
    for art in &manifest.artifacts {
        offsets.push((art.sha256.to_hex(), offset, art.len));
        offset += art.len;
    }
    for (digest, off, len) in &offsets {
        if !st
            .blobs
            .exists(&tenant, digest)
            .await
            .map_err(ApiError::internal)?
        {
            st.blobs
                .put_range(&tenant, digest, &tmp.0, *off, *len)
                .await
                .map_err(ApiError::internal)?;
        }
    }
    let name = manifest.model.to_string();
    let version = to_i64(manifest.version)?;
    let project = project
        .or_else(|| {
            manifest
                .tags
                .get("project")
                .filter(|p| ferry_protocol::model::is_safe_name(p))
                .cloned()
        })
        .unwrap_or_else(|| "default".into());
    let nv = NewVersion {
        tenant: tenant.clone(),
        model: name.clone(),
        project,
        version,
        digest: verified.manifest.digest().to_hex(),
        header: hex::encode(ferry_protocol::encoding::encode(&verified.header)),
        manifest: serde_json::to_string(&manifest).map_err(ApiError::internal)?,
        size: total as i64,
        artifacts: manifest
            .artifacts
            .iter()
            .map(|x| crate::store::ArtifactRow {
                name: x.name.clone(),
                digest: x.sha256.to_hex(),
                len: x.len as i64,
            })
            .collect(),
        tags: manifest
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metrics: manifest
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        created_by: a.p.actor(),
    };
    let target = format!("{name}@{version}");
    let mut entry = a.ok(ACTION, &target);
    entry.detail = format!("sha256:{}", nv.digest);
    let blobs = st.blobs.clone();
    let tmp_path = tmp.0.clone();
    let check = move || async move {
        for (digest, off, len) in &offsets {
            let present = blobs
                .exists(&tenant, digest)
                .await
                .map_err(|e| e.to_string())?;
            if !present {
                blobs
                    .put_range(&tenant, digest, &tmp_path, *off, *len)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    };
    let r = st.store.register(&nv, entry, check).await;
    let outcome = a.audited(ACTION, &target, r).await?;
    drop(tmp);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "model": name, "version": version, "digest": nv.digest,
            "size": nv.size, "project": nv.project, "status": outcome,
        })),
    )
        .into_response())
}

async fn list_projects(a: Auth, State(st): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "projects": st.store.list_projects(&a.p.tenant).await? }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    name: String,
    #[serde(default)]
    description: String,
}

async fn create_project(a: Auth, State(st): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let b: ProjectBody = json_body(&body)?;
    if !ferry_protocol::model::is_safe_name(&b.name) {
        return Err(ApiError::bad_request(format!(
            "project {:?}: use 1-128 of [A-Za-z0-9._-]",
            b.name
        )));
    }
    let target = format!("project {}", b.name);
    a.require(Role::Publisher, "project.create", &target)
        .await?;
    let r = st
        .store
        .create_project(
            &a.p.tenant,
            &b.name,
            &b.description,
            a.ok("project.create", &target),
        )
        .await;
    a.audited("project.create", &target, r).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": b.name, "description": b.description })),
    )
        .into_response())
}

async fn list_tokens(a: Auth, State(st): State<AppState>) -> ApiResult<Json<Value>> {
    a.require(Role::Admin, "token.list", "tokens").await?;
    Ok(Json(
        json!({ "tokens": st.store.list_tokens(&a.p.tenant).await? }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    role: String,
    #[serde(default)]
    tenant: Option<String>,
}

async fn create_token(a: Auth, State(st): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let b: TokenBody = json_body(&body)?;
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
    a.require(Role::Admin, "token.create", &target).await?;
    if tenant != a.p.tenant && a.p.tenant != st.limits.root_tenant {
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "only admins of the root tenant {:?} may create tokens in other tenants",
                st.limits.root_tenant
            ),
        );
        return Err(a.refuse("token.create", &target, err).await);
    }
    let token = auth::generate_token();
    let mut entry = a.ok("token.create", &target);
    if tenant != a.p.tenant {
        // Recorded in the new token's tenant too.
        entry.detail = format!("created by {} of tenant {}", a.p.actor(), a.p.tenant);
        entry.tenant = tenant.clone();
    }
    let r = st
        .store
        .create_token(
            &tenant,
            &b.name,
            role,
            &auth::hash_token(&token),
            &a.p.actor(),
            entry,
        )
        .await;
    let info = a.audited("token.create", &target, r).await?;
    if tenant != a.p.tenant {
        st.store
            .audit(a.ok(
                "token.create",
                format!("token {} in tenant {tenant}", info.id),
            ))
            .await?;
    }
    let mut v = json!(info);
    if let Some(o) = v.as_object_mut() {
        o.insert("token".into(), json!(token));
    }
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn revoke_token(
    a: Auth,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let target = format!("token {id}");
    a.require(Role::Admin, "token.revoke", &target).await?;
    let r = st
        .store
        .revoke_token(&a.p.tenant, &id, a.ok("token.revoke", &target))
        .await;
    a.audited("token.revoke", &target, r).await?;
    Ok(Json(json!({ "revoked": id })))
}

async fn get_trust_root(a: Auth, State(st): State<AppState>) -> ApiResult<Json<Value>> {
    match current_trust(&st, &a.p.tenant).await {
        Some(root) => Ok(Json(json!(root))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("tenant {:?} has no trust root", a.p.tenant),
        )),
    }
}

async fn put_trust_root(
    a: Auth,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    const ACTION: &str = "trust.push";
    a.require(Role::Admin, ACTION, "trust root").await?;
    let now = crate::now_unix();
    let signed = match SignedTrustRoot::from_bytes(&body) {
        Ok(s) => s,
        Err(e) => {
            let err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "trust_root",
                format!("trust root refused: {e}"),
            );
            return Err(a.refuse(ACTION, "trust root", err).await);
        }
    };
    let current = st.store.trust_root(&a.p.tenant).await?;
    let opened = match &current {
        None => signed.open(now),
        Some((_, hexed)) => {
            let cur = hex::decode(hexed)
                .ok()
                .and_then(|b| SignedTrustRoot::from_bytes(&b).ok())
                .and_then(|s| s.open(0).ok())
                .ok_or_else(|| ApiError::internal("the stored trust root does not open"))?;
            signed.open_as_successor(&cur, now)
        }
    };
    let root = match opened {
        Ok(r) => r,
        Err(e) => {
            let err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "trust_root",
                format!("trust root refused: {e}"),
            );
            return Err(a.refuse(ACTION, "trust root", err).await);
        }
    };
    let target = format!("trust root v{}", root.version);
    if root.tenant != a.p.tenant {
        let err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "trust_root",
            format!(
                "trust root is for tenant {:?}, this token's tenant is {:?}",
                root.tenant, a.p.tenant
            ),
        );
        return Err(a.refuse(ACTION, &target, err).await);
    }
    let version = to_i64(root.version)?;
    let r = st
        .store
        .put_trust_root(
            &a.p.tenant,
            version,
            &hex::encode(signed.to_bytes()),
            current.map(|c| c.0),
            &a.p.actor(),
            a.ok(ACTION, &target),
        )
        .await;
    a.audited(ACTION, &target, r).await?;
    Ok(Json(json!({
        "tenant": root.tenant, "version": root.version, "expires_at": root.expires_at,
        "publishers": root.publishers.iter().map(|p| json!({"name": p.name, "key_id": p.key.id().to_hex(), "scopes": p.scopes})).collect::<Vec<_>>(),
    })))
}

async fn list_audit(
    a: Auth,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    a.require(Role::Admin, "audit.list", "audit").await?;
    let pairs = query_pairs(&q, &["action", "outcome", "after_seq", "limit"])?;
    let mut query = crate::store::AuditQuery {
        limit: 1000,
        ..Default::default()
    };
    for (k, v) in &pairs {
        match k.as_str() {
            "action" => query.action = Some(v.clone()),
            "outcome" => query.outcome = Some(v.clone()),
            "after_seq" => {
                query.after_seq = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!("after_seq {v:?} is not an integer"))
                })?)
            }
            "limit" => query.limit = parse_limit(v)?,
            _ => {}
        }
    }
    let head: ChainHead = st.store.audit_head(&a.p.tenant).await?;
    let records = st.store.audit_list(&a.p.tenant, &query).await?;
    Ok(Json(
        json!({ "tenant": a.p.tenant, "head": head, "records": records }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_filters_parse() {
        let f = parse_metric_filter("auc>=0.9").unwrap();
        assert_eq!((f.key.as_str(), f.op, f.value), ("auc", ">=", 0.9));
        assert_eq!(parse_metric_filter("loss<0.2").unwrap().op, "<");
        assert_eq!(parse_metric_filter("x!=1").unwrap().op, "<>");
        assert!(parse_metric_filter("auc>=high").is_err());
        assert!(parse_metric_filter(">=1").is_err());
        assert!(parse_metric_filter("auc").is_err());
    }

    #[test]
    fn openapi_lists_every_route() {
        let spec: Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = spec["paths"].as_object().unwrap();
        let all: Vec<(&str, &str)> = ROUTES
            .iter()
            .chain(crate::fleet::api::ROUTES)
            .chain(crate::telemetry::api::ROUTES)
            .copied()
            .collect();
        for (method, path) in &all {
            let item = paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} missing from openapi.json"));
            assert!(
                item.get(method.to_lowercase()).is_some(),
                "{method} {path} missing from openapi.json"
            );
        }
        let mut n = 0;
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    n += 1;
                    assert!(
                        all.contains(&(method.to_uppercase().as_str(), path.as_str())),
                        "openapi.json lists {method} {path}, which is not a route"
                    );
                }
            }
        }
        assert_eq!(n, all.len());
    }
}
