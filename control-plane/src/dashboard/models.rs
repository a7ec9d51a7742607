//! `/models`: every model of the tenant, across projects, searched by
//! name, project, tag, alias and a metric range, sorted by name or last
//! update, in numbered pages. The search form updates the results in place
//! with htmx and pushes the query into the URL.

use super::error::PageResult;
use super::layout::{self, Section};
use super::list::ListQuery;
use super::session::Page;
use crate::action::Action;
use crate::api::query::parse_metric_filter;
use crate::api::{ApiError, AppState};
use crate::store::{Filters, MetricFilter, ModelSort, ModelSummary};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

const PAGE_SIZE: i64 = 25;

/// The store's filters from the page's query.
fn filters(q: &ListQuery) -> Result<Filters, ApiError> {
    let mut f = Filters {
        query: q.get("q").map(str::to_string),
        project: q.get("project").map(str::to_string),
        include_archived: q.get("archived").is_some(),
        ..Default::default()
    };
    if let Some(t) = q.get("tag") {
        f.tags.push(match t.split_once(':') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (t.to_string(), None),
        });
    }
    if let Some(a) = q.get("alias") {
        f.aliases.push(a.to_string());
    }
    let (min, max) = (q.number("min")?, q.number("max")?);
    match q.get("metric") {
        Some(m) => {
            // The metric's name, checked as the REST filter checks it.
            let key = parse_metric_filter(&format!("{m}>=0"))
                .map_err(ApiError::bad_request)?
                .key;
            let bound = |op: &'static str, value: f64| MetricFilter {
                key: key.clone(),
                op,
                value,
            };
            if min.is_none() && max.is_none() {
                f.metrics.push(bound(">=", f64::MIN));
            }
            f.metrics.extend(min.map(|v| bound(">=", v)));
            f.metrics.extend(max.map(|v| bound("<=", v)));
        }
        None if min.is_some() || max.is_some() => {
            return Err(ApiError::bad_request(
                "a metric range needs the metric's name",
            ))
        }
        None => {}
    }
    Ok(f)
}

/// `GET /models`.
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    pg.auth.authorize(Action::ModelList, "models").await?;
    let q = ListQuery::parse(raw.as_deref());
    let f = filters(&q)?;
    let sort = match q.get("sort") {
        Some("updated") => ModelSort::Updated,
        _ => ModelSort::Name,
    };
    let page = q.page()?;
    let tenant = &pg.auth.p.tenant;
    let total = st.store.count_models(tenant, &f).await?;
    let models = st
        .store
        .model_page(tenant, &f, sort, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        .await?;
    let body = html! {
        (search_form(&q, sort))
        (results(&q, sort, page, total, &models))
    };
    let mut resp = layout::page(&pg.chrome(), Section::Models, "Models", body).into_response();
    // The search form sends its blank fields too; htmx pushes this tidy
    // URL of the same view instead.
    if headers.contains_key("hx-request") {
        if let Ok(v) = HeaderValue::from_str(&q.with("/models", &[])) {
            resp.headers_mut().insert("hx-push-url", v);
        }
    }
    Ok(resp)
}

fn search_form(q: &ListQuery, sort: ModelSort) -> Markup {
    let field = |id: &str, label: &str, kind: &str| {
        html! {
            div.field {
                label for=(id) { (label) }
                input id=(id) name=(id) type=(kind) value=[q.get(id)] step=[(kind == "number").then_some("any")];
            }
        }
    };
    html! {
        form.filters role="search" aria-label="Search models" method="get" action="/models"
            hx-get="/models" hx-target="#results" hx-select="#results" hx-swap="outerHTML"
            hx-push-url="true" {
            (field("q", "Name contains", "search"))
            (field("project", "Project", "text"))
            (field("tag", "Tag (key or key:value)", "text"))
            (field("alias", "Alias", "text"))
            fieldset.range {
                legend { "Metric range" }
                (field("metric", "Metric", "text"))
                (field("min", "At least", "number"))
                (field("max", "At most", "number"))
            }
            div.field {
                label for="sort" { "Sort by" }
                select #sort name="sort" {
                    option value="name" selected[sort == ModelSort::Name] { "Name" }
                    option value="updated" selected[sort == ModelSort::Updated] { "Last updated" }
                }
            }
            div.field.check {
                input #archived type="checkbox" name="archived" value="1" checked[q.get("archived").is_some()];
                label for="archived" { "Include archived versions" }
            }
            div.field { button type="submit" { "Search" } }
        }
    }
}

fn results(
    q: &ListQuery,
    sort: ModelSort,
    page: i64,
    total: i64,
    models: &[ModelSummary],
) -> Markup {
    let pages = (total.max(1) - 1) / PAGE_SIZE + 1;
    let page_link = |p: i64| {
        let p = p.to_string();
        q.with("/models", &[("page", Some(p.as_str()))])
    };
    let sorted = |by: ModelSort| {
        (sort == by).then_some(if by == ModelSort::Name {
            "ascending"
        } else {
            "descending"
        })
    };
    html! {
        div #results {
            p.count {
                (total) " model" @if total != 1 { "s" }
                @if total > 0 { ", page " (page) " of " (pages) }
            }
            @if models.is_empty() {
                p { "No model matches." }
            } @else {
                table {
                    caption.vh { "Models" }
                    thead {
                        tr {
                            th scope="col" aria-sort=[sorted(ModelSort::Name)] {
                                a href=(q.with("/models", &[("sort", Some("name"))])) { "Name" }
                            }
                            th scope="col" { "Project" }
                            th scope="col" { "Latest" }
                            th scope="col" { "Versions" }
                            th scope="col" { "Aliases" }
                            th scope="col" aria-sort=[sorted(ModelSort::Updated)] {
                                a href=(q.with("/models", &[("sort", Some("updated"))])) { "Updated" }
                            }
                        }
                    }
                    tbody {
                        @for m in models {
                            tr {
                                td { a href=(format!("/models/{}", m.name)) { (m.name) } }
                                td { (m.project) }
                                td { @if let Some(v) = m.latest_version { (v) } @else { "—" } }
                                td { (m.versions) }
                                td {
                                    @for (alias, v) in &m.aliases {
                                        span.badge { (alias) " → " (v) } " "
                                    }
                                }
                                td { (layout::when(m.updated_at)) }
                            }
                        }
                    }
                }
            }
            (layout::pager(
                (page > 1).then(|| page_link(page - 1)),
                (page < pages).then(|| page_link(page + 1)),
                "Pages of models",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_range_becomes_two_bounds() {
        let f = filters(&ListQuery::parse(Some("metric=auc&min=0.9&max=0.99"))).unwrap();
        let got: Vec<_> = f
            .metrics
            .iter()
            .map(|m| (m.key.as_str(), m.op, m.value))
            .collect();
        assert_eq!(got, vec![("auc", ">=", 0.9), ("auc", "<=", 0.99)]);
        assert!(filters(&ListQuery::parse(Some("min=0.9"))).is_err());
        assert!(filters(&ListQuery::parse(Some("metric=auc&min=x"))).is_err());
        let f = filters(&ListQuery::parse(Some("tag=team:risk&alias=champion&q=fr"))).unwrap();
        assert_eq!(f.tags, vec![("team".into(), Some("risk".into()))]);
        assert_eq!(f.aliases, vec!["champion".to_string()]);
        assert_eq!(f.query.as_deref(), Some("fr"));
    }
}
