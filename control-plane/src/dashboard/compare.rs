//! `/models/{name}/compare?v=1&v=2[&v=3…]`: versions side by side, from
//! the REST compare endpoint's own function: metrics with deltas, tags,
//! size, schema and baseline differences. Deltas are taken against the
//! oldest version chosen.

use super::error::PageResult;
use super::layout::{self, Section};
use super::list::ListQuery;
use super::session::Page;
use crate::action::Action;
use crate::api::query::{parse_name, parse_version};
use crate::api::types::Comparison;
use crate::api::versions::comparison;
use crate::api::{ApiResult, AppState};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use std::collections::BTreeMap;

/// `GET /models/{name}/compare`.
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let name = parse_name(&name)?;
    pg.auth.authorize(Action::VersionCompare, &name).await?;
    let q = ListQuery::parse(raw.as_deref());
    let mut versions = q
        .all("v")
        .into_iter()
        .map(parse_version)
        .collect::<ApiResult<Vec<i64>>>()?;
    versions.sort_unstable();
    versions.dedup();
    let c = comparison(&st.store, &pg.auth.p.tenant, &name, &versions).await?;
    let title = format!("Compare {name}");
    Ok(layout::page(&pg.chrome(), Section::Models, &title, body(&name, &c)).into_response())
}

fn key(v: i64) -> String {
    v.to_string()
}

/// Per-version lists of differences from the base (schema, baseline).
fn changes(title: &str, c: &Comparison, by: &BTreeMap<String, Vec<String>>) -> Markup {
    let base = c.base.unwrap_or_default();
    html! {
        h2 { (title) }
        @for v in c.versions.iter().filter(|v| Some(v.version) != c.base) {
            h3 { "Version " (v.version) " against " (base) }
            @match by.get(&key(v.version)) {
                Some(list) if !list.is_empty() => ul { @for x in list { li { (x) } } },
                _ => p { "No differences." },
            }
        }
    }
}

fn body(name: &str, c: &Comparison) -> Markup {
    let base = c.base.unwrap_or_default();
    html! {
        p {
            "Deltas are against version " (base) ", the oldest chosen. "
            a href=(format!("/models/{name}")) { "Back to " (name) }
        }
        h2 { "Versions" }
        table {
            caption.vh { "The versions compared" }
            thead {
                tr {
                    th scope="col" { "Property" }
                    @for v in &c.versions { th scope="col" { "Version " (v.version) } }
                }
            }
            tbody {
                tr {
                    th scope="row" { "Status" }
                    @for v in &c.versions { td { (v.status) } }
                }
                tr {
                    th scope="row" { "Aliases" }
                    @for v in &c.versions { td { @for a in &v.aliases { span.badge { (a) } " " } } }
                }
                tr {
                    th scope="row" { "Size" }
                    @for v in &c.versions {
                        td {
                            (layout::size(v.size))
                            @if let Some(d) = c.size_delta.get(&key(v.version)) {
                                " " span.delta { "(" @if *d > 0 { "+" } (layout::size(*d)) ")" }
                            }
                        }
                    }
                }
                tr {
                    th scope="row" { "Registered" }
                    @for v in &c.versions { td { (layout::when(v.registered_at)) } }
                }
                tr {
                    th scope="row" { "Digest" }
                    @for v in &c.versions { td { code title=(v.digest) { (layout::short(&v.digest)) } } }
                }
            }
        }
        h2 { "Metrics" }
        @if c.metrics.is_empty() {
            p { "No version records metrics." }
        } @else {
            table {
                caption.vh { "Metrics with deltas against version " (base) }
                thead {
                    tr {
                        th scope="col" { "Metric" }
                        @for v in &c.versions { th scope="col" { "Version " (v.version) } }
                    }
                }
                tbody {
                    @for m in &c.metrics {
                        tr {
                            th scope="row" { (m.name) }
                            @for v in &c.versions {
                                td {
                                    @match m.values.get(&key(v.version)).copied().flatten() {
                                        Some(x) => (layout::num(x)),
                                        None => "—",
                                    }
                                    @if let Some(d) = m.delta.get(&key(v.version)) {
                                        " " span.delta { "(" (layout::delta(*d)) ")" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !c.tags.is_empty() {
            h2 { "Tags" }
            table {
                caption.vh { "Tags" }
                thead {
                    tr {
                        th scope="col" { "Tag" }
                        @for v in &c.versions { th scope="col" { "Version " (v.version) } }
                    }
                }
                tbody {
                    @for t in &c.tags {
                        tr {
                            th scope="row" { (t.name) }
                            @for v in &c.versions {
                                td {
                                    @match t.values.get(&key(v.version)).cloned().flatten() {
                                        Some(x) => (x),
                                        None => "—",
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (changes("Schema differences", c, &c.schema_changes))
        (changes("Baseline differences", c, &c.baseline_changes))
    }
}
