//! `/alerts`: the tenant's alerts, oldest first (model, version, kind,
//! device, when opened, when and by whom acknowledged, the evidence),
//! filtered by state (open, acknowledged, all) and model, in pages. Read
//! through `telemetry::service::alerts`, as `GET /api/v1/alerts` does.
//!
//! The listing is also served alone (`/alerts/list`) and, while it shows
//! open alerts, reloads itself when the change feed names an alert (a new
//! alert appears within a second, without a reload), and every 10 s. Roles that may acknowledge get an Acknowledge form
//! `dashboard.js` confirms and sends to `POST /api/v1/alerts/{id}/ack`.

use super::error::PageResult;
use super::layout::{self, can, Section};
use super::list::ListQuery;
use super::session::Page;
use crate::action::Action;
use crate::api::types::Alert;
use crate::api::{ApiError, AppState};
use crate::auth::Role;
use crate::store::telemetry::AlertQuery;
use crate::telemetry::service;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde_json::Value;

const PAGE_SIZE: i64 = 50;

/// The states a listing can show; the first is the default.
const STATES: &[(&str, &str)] = &[
    ("open", "open"),
    ("acknowledged", "acknowledged"),
    ("all", "open or acknowledged"),
];

/// One page of the listing, and whether a next page exists.
struct Listing {
    q: ListQuery,
    alerts: Vec<Alert>,
    page_no: i64,
    more: bool,
}

async fn load(pg: &Page, st: &AppState, raw: Option<&str>) -> PageResult<Listing> {
    pg.auth.authorize(Action::AlertList, "alerts").await?;
    let q = ListQuery::parse(raw);
    let open = match q.get("state").unwrap_or("open") {
        "open" => Some(true),
        "acknowledged" => Some(false),
        "all" => None,
        s => {
            return Err(ApiError::bad_request(format!(
                "state {s:?}: use open, acknowledged or all"
            ))
            .into())
        }
    };
    let page_no = q.page()?;
    let skip = (page_no - 1) * PAGE_SIZE;
    let aq = AlertQuery {
        model: q.get("model").map(str::to_string),
        open,
        // One more than the page shows, to know whether a next page exists.
        limit: skip + PAGE_SIZE + 1,
        ..Default::default()
    };
    let list = service::alerts(&st.store, &pg.auth.caller(), &aq)
        .await
        .map_err(ApiError::from)?;
    let mut alerts: Vec<Alert> = list.alerts.into_iter().skip(skip as usize).collect();
    let more = alerts.len() as i64 > PAGE_SIZE;
    alerts.truncate(PAGE_SIZE as usize);
    Ok(Listing {
        q,
        alerts,
        page_no,
        more,
    })
}

/// `GET /alerts` (`state`, `model`, `page`).
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let l = load(&pg, &st, raw.as_deref()).await?;
    let body = html! {
        (filters(&l.q))
        (section(&l, pg.auth.p.role))
    };
    Ok(layout::page(&pg.chrome(), Section::Alerts, "Alerts", body).into_response())
}

/// `GET /alerts/list`: the listing alone, for htmx.
pub async fn list(
    pg: Page,
    State(st): State<AppState>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let l = load(&pg, &st, raw.as_deref()).await?;
    Ok(section(&l, pg.auth.p.role).into_response())
}

fn filters(q: &ListQuery) -> Markup {
    let state = q.get("state").unwrap_or("open");
    html! {
        form.filters role="search" aria-label="Filter alerts" method="get" action="/alerts" {
            div.field {
                label for="state" { "State" }
                select #state name="state" {
                    @for (v, label) in STATES {
                        option value=(v) selected[state == *v] { (label) }
                    }
                }
            }
            div.field {
                label for="model" { "Model" }
                input #model name="model" type="search" value=[q.get("model")];
            }
            div.field { button type="submit" { "Filter" } }
        }
    }
}

fn section(l: &Listing, role: Role) -> Markup {
    let polls = l.q.get("state") != Some("acknowledged");
    let url = l.q.with("/alerts/list", &[]);
    let prev = (l.page_no > 1).then(|| {
        let p = (l.page_no - 1).to_string();
        l.q.with("/alerts", &[("page", Some(p.as_str()))])
    });
    let next = l.more.then(|| {
        let p = (l.page_no + 1).to_string();
        l.q.with("/alerts", &[("page", Some(p.as_str()))])
    });
    let ack = can(role, Action::AlertAck);
    html! {
        section #alerts-section aria-label="Alerts"
            data-live=[polls.then_some("alert")]
            hx-get=[polls.then_some(url.as_str())]
            hx-trigger=[polls.then_some("ferry:alert from:body, every 10s")]
            hx-swap=[polls.then_some("outerHTML")] {
            @if l.alerts.is_empty() {
                p #no-alerts { "No alert matches." }
            } @else {
                table #alerts {
                    caption.vh { "Alerts, oldest first" }
                    thead {
                        tr {
                            th scope="col" { "Alert" }
                            th scope="col" { "Model" }
                            th scope="col" { "Kind" }
                            th scope="col" { "Device" }
                            th scope="col" { "Opened" }
                            th scope="col" { "Evidence" }
                            th scope="col" { "Acknowledged" }
                        }
                    }
                    tbody {
                        @for a in &l.alerts { (row(a, ack)) }
                    }
                }
            }
            (layout::pager(prev, next, "Pages of alerts"))
        }
    }
}

fn row(a: &Alert, may_ack: bool) -> Markup {
    html! {
        tr id=(format!("alert-{}", a.id)) {
            td { code title=(a.id) { (layout::short(&a.id)) } }
            td {
                a href=(format!("/models/{}", a.model)) { (a.model) } " v" (a.version)
                @if !a.model.is_empty() {
                    br;
                    a.policy href=(format!("/models/{}/policy", a.model)) {
                        "Drift policy" span.vh { " of " (a.model) }
                    }
                }
            }
            td { span.badge { (a.kind) } }
            td {
                @if a.device.is_empty() { span.muted { "the fleet" } }
                @else { code title=(a.device) { (layout::short(&a.device)) } }
            }
            td { (layout::when(a.opened_at_ms / 1000)) }
            td.detail { (evidence(&a.evidence)) }
            td {
                @if a.acknowledged {
                    span.status.ok { "acknowledged" } " "
                    @if let Some(at) = a.acknowledged_at_ms { (layout::when(at / 1000)) }
                    br; span.muted { "by " (a.acknowledged_by) }
                } @else if may_ack {
                    form.inline
                        data-api=(format!("/api/v1/alerts/{}/ack", a.id))
                        data-confirm=(format!("Acknowledge the {} alert on {} v{}?", a.kind, a.model, a.version))
                        data-done="Acknowledged."
                        data-refresh="#alerts-section" {
                        button.ack type="submit" { "Acknowledge" }
                    }
                } @else {
                    span.status { "open" }
                }
            }
        }
    }
}

/// The evidence an alert carries: for drift the largest PSI (and its
/// feature) and the drifted rows against the policy's minimum; for
/// other kinds its numbers as `key value` pairs.
fn evidence(e: &Value) -> Markup {
    if let Some(psi) = e.get("psi").and_then(Value::as_object) {
        let max = psi
            .iter()
            .filter_map(|(f, v)| v.as_f64().map(|v| (f, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        return html! {
            @if let Some((f, v)) = max {
                "max PSI " strong { (layout::num(v)) } " (" code { (f) } ")"
                @if let Some(t) = e.get("psi_threshold").and_then(Value::as_f64) {
                    " > " (layout::num(t))
                }
                br;
            }
            @if let Some(r) = e.get("drifted_rows").and_then(Value::as_i64) {
                (r) " drifted rows"
                @if let Some(m) = e.get("min_drifted_rows").and_then(Value::as_i64) {
                    " (policy needs " (m) ")"
                }
            }
        };
    }
    let pairs: Vec<(&String, String)> = e
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| match v {
                    Value::Number(n) => n.as_f64().map(|x| (k, layout::num(x))),
                    Value::String(s) => Some((k, s.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        @for (k, v) in &pairs { (k.replace('_', " ")) " " strong { (v) } br; }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evidence_shows_the_largest_psi_and_the_drifted_rows() {
        let html = evidence(&json!({
            "psi": {"a": 0.1, "b": 0.92},
            "psi_threshold": 0.2,
            "drifted_rows": 300,
            "min_drifted_rows": 100,
        }))
        .into_string();
        assert!(html.contains("max PSI <strong>0.92</strong> (<code>b</code>)"));
        assert!(html.contains("300 drifted rows (policy needs 100)"));
        let html = evidence(&json!({"error_rate": 0.5, "threshold": 0.1})).into_string();
        assert!(html.contains("error rate <strong>0.5</strong>"));
    }
}
