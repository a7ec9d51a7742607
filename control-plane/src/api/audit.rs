//! `/audit`: the tenant's tamper-evident audit chain (admin).

use super::auth::Auth;
use super::error::{ApiError, ApiResult};
use super::query::{parse_limit, query_pairs};
use super::state::AppState;
use super::types::{AuditList, ErrorBody};
use crate::action::Action;
use axum::extract::{RawQuery, State};
use axum::Json;

/// Audit records in chain order, with the chain head to verify against.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(
        ("action" = Option<String>, Query), ("outcome" = Option<String>, Query, description = "ok or refused"),
        ("after_seq" = Option<i64>, Query), ("limit" = Option<i64>, Query, description = "1 to 1000"),
    ),
    responses((status = 200, body = AuditList), (status = "4XX", body = ErrorBody)))]
pub async fn list_audit(
    a: Auth,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<AuditList>> {
    a.authorize(Action::AuditList, "audit").await?;
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
    let head = st.store.audit_head(&a.p.tenant).await?;
    let records = st.store.audit_list(&a.p.tenant, &query).await?;
    Ok(Json(AuditList {
        tenant: a.p.tenant.clone(),
        head: head.into(),
        records: records.into_iter().map(Into::into).collect(),
    }))
}
