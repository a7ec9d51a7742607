//! `/audit` (admin): the tenant's audit trail, newest first, filtered by
//! actor, action and outcome, in pages; with a badge saying how far the
//! hash chain verifies, computed on the server by the same
//! `audit::verify_chain` that `ferry audit verify` runs (incrementally:
//! the records after the part verified last time, and the whole chain
//! again every 10 minutes; `Store::verified_audit_chain`).

use super::error::PageResult;
use super::layout::{self, Section};
use super::list::ListQuery;
use super::session::Page;
use crate::action::Action;
use crate::api::{ApiError, AppState};
use crate::audit::{AuditRecord, ChainBreak, OUTCOME_OK, OUTCOME_REFUSED};
use crate::store::AuditQuery;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

const PAGE_SIZE: i64 = 50;

/// Audit actions not in the `Action` table (written by the server itself).
const OTHER_ACTIONS: &[&str] = &["auth.login", "auth.csrf", "token.bootstrap"];

/// `GET /audit` (`actor`, `action`, `outcome`, `before`: a sequence number).
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    pg.auth.authorize(Action::AuditList, "audit").await?;
    let q = ListQuery::parse(raw.as_deref());
    let outcome = match q.get("outcome") {
        None => None,
        Some(o) if o == OUTCOME_OK || o == OUTCOME_REFUSED => Some(o.to_string()),
        Some(o) => {
            return Err(ApiError::bad_request(format!("outcome {o:?}: use ok or refused")).into())
        }
    };
    let before =
        match q.get("before") {
            None => None,
            Some(b) => Some(b.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("before {b:?} is not a record number"))
            })?),
        };
    let tenant = &pg.auth.p.tenant;
    let mut records = st
        .store
        .audit_list(
            tenant,
            &AuditQuery {
                action: q.get("action").map(str::to_string),
                outcome,
                actor: q.get("actor").map(str::to_string),
                before_seq: before,
                newest_first: true,
                limit: PAGE_SIZE + 1,
                ..Default::default()
            },
        )
        .await?;
    let more = records.len() as i64 > PAGE_SIZE;
    records.truncate(PAGE_SIZE as usize);
    let verdict = st.store.verified_audit_chain(tenant).await?;
    let older = more
        .then(|| records.last().map(|r| r.seq.to_string()))
        .flatten()
        .map(|s| q.with("/audit", &[("before", Some(s.as_str()))]));
    let newest = before.map(|_| q.with("/audit", &[("before", None)]));
    let body = html! {
        (badge(&verdict))
        (filters(&q))
        (table(&records))
        (layout::pager(newest, older, "Pages of audit records"))
    };
    Ok(layout::page(&pg.chrome(), Section::Audit, "Audit trail", body).into_response())
}

fn badge(verdict: &Result<u64, ChainBreak>) -> Markup {
    html! {
        @match verdict {
            Ok(n) => p.badge.ok #chain { "Chain verified up to record " (n) },
            Err(b) => p.badge.bad #chain { "Chain broken at record " (b.seq) ": " (b.reason) },
        }
    }
}

fn filters(q: &ListQuery) -> Markup {
    let outcome = q.get("outcome").unwrap_or("");
    html! {
        form.filters role="search" aria-label="Filter audit records" method="get" action="/audit" {
            div.field {
                label for="actor" { "Actor contains" }
                input #actor name="actor" type="search" value=[q.get("actor")];
            }
            div.field {
                label for="action" { "Action" }
                input #action name="action" type="text" list="actions" value=[q.get("action")];
                datalist #actions {
                    @for a in Action::ALL { option value=(a.audit_name()) {} }
                    @for a in OTHER_ACTIONS { option value=(a) {} }
                }
            }
            div.field {
                label for="outcome" { "Outcome" }
                select #outcome name="outcome" {
                    option value="" selected[outcome.is_empty()] { "any" }
                    option value="ok" selected[outcome == OUTCOME_OK] { "ok" }
                    option value="refused" selected[outcome == OUTCOME_REFUSED] { "refused" }
                }
            }
            div.field { button type="submit" { "Filter" } }
        }
    }
}

fn table(records: &[AuditRecord]) -> Markup {
    html! {
        @if records.is_empty() {
            p { "No audit record matches." }
        } @else {
            table #audit {
                caption.vh { "Audit records, newest first" }
                thead {
                    tr {
                        th scope="col" { "#" }
                        th scope="col" { "Time" }
                        th scope="col" { "Actor" }
                        th scope="col" { "Action" }
                        th scope="col" { "Target" }
                        th scope="col" { "Outcome" }
                        th scope="col" { "Detail" }
                    }
                }
                tbody {
                    @for r in records {
                        tr {
                            td { (r.seq) }
                            td { (layout::when(r.at)) }
                            td { (r.actor) }
                            td { code { (r.action) } }
                            td { (r.target) }
                            td { span class=(format!("status {}", r.outcome)) { (r.outcome) } }
                            td.detail { (r.detail) }
                        }
                    }
                }
            }
        }
    }
}
