//! `/deployments`: the tenant's live deployments, newest first (model and
//! version, target selector, the matched devices counted per state,
//! created by and when), filtered by model, in pages. Read through
//! `fleet::service::deployments` and `deployment_status`, as
//! `GET /api/v1/deployments` and `GET /api/v1/deployments/{id}` do.
//! Roles that may undeploy get an Undeploy form `dashboard.js` confirms and
//! sends to `DELETE /api/v1/deployments/{id}`.

use super::error::PageResult;
use super::layout::{self, can, Section};
use super::list::ListQuery;
use super::rollouts::selector;
use super::session::Page;
use super::FleetLink;
use crate::action::Action;
use crate::api::ApiError;
use crate::auth::Role;
use crate::fleet::service::{self, DeploymentStatus};
use crate::store::fleet as db;
use axum::extract::RawQuery;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use std::collections::{BTreeMap, HashMap};

const PAGE_SIZE: usize = 25;

/// The per-state device counts of a deployment, in a fixed order (active
/// first, then in progress, then the rest by name); every
/// `downloading N%` counted as `downloading`.
pub fn counts(summary: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for (state, n) in summary {
        let key = if state.starts_with("downloading") {
            "downloading"
        } else {
            state.as_str()
        };
        *merged.entry(key.to_string()).or_default() += n;
    }
    const FIRST: [&str; 3] = ["active", "downloading", "pending"];
    let mut out: Vec<(String, u64)> = FIRST
        .iter()
        .filter_map(|s| merged.remove(*s).map(|n| (s.to_string(), n)))
        .collect();
    out.extend(merged);
    out
}

/// The counts as badges (`none` when no device matches).
pub fn count_badges(summary: &BTreeMap<String, u64>) -> Markup {
    let c = counts(summary);
    html! {
        @if c.is_empty() { span.muted { "no device matches" } }
        @for (state, n) in &c {
            span class=(format!("status {state}")) { (n) " " (state.replace('_', " ")) } " "
        }
    }
}

/// What undeploying `d` would make devices do, said before the operator
/// confirms: the warnings `DELETE` answers with afterwards
/// (`service::rollback_warnings`, over the other live deployments).
pub fn undeploy_warnings(
    d: &db::Deployment,
    live: &[db::Deployment],
    devices: &[db::Device],
) -> Vec<String> {
    let others: Vec<db::Deployment> = live.iter().filter(|l| l.id != d.id).cloned().collect();
    service::rollback_warnings(d, &others, devices)
}

/// The Undeploy form for `id` (`model` v`version`), refreshing `refresh`;
/// the confirmation carries `warnings`.
pub fn undeploy(id: &str, model: &str, version: i64, refresh: &str, warnings: &[String]) -> Markup {
    let mut confirm = format!(
        "Undeploy {model} version {version} ({id})? Its devices fall back to what other deployments give them."
    );
    for w in warnings {
        confirm.push_str(" Warning: ");
        // `{` would be read as a form field by dashboard.js.
        confirm.push_str(&w.replace(['{', '}'], ""));
    }
    html! {
        form.inline
            data-api=(format!("/api/v1/deployments/{id}"))
            data-method="DELETE"
            data-confirm=(confirm)
            data-done=(format!("Deployment {id} undeployed."))
            data-refresh=(refresh) {
            button.secondary type="submit" id=(format!("undeploy-{id}")) {
                "Undeploy" span.vh { " " (model) " version " (version) }
            }
        }
    }
}

/// `GET /deployments` (`model`, `page`).
pub async fn page(
    pg: Page,
    Extension(FleetLink(driver)): Extension<FleetLink>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    pg.auth.authorize(Action::DeploymentList, "").await?;
    let Some(driver) = driver else {
        return Ok(layout::page(
            &pg.chrome(),
            Section::Deployments,
            "Deployments",
            layout::no_fleet(),
        )
        .into_response());
    };
    let q = ListQuery::parse(raw.as_deref());
    let model = q.get("model");
    let page_no = q.page()?;
    let caller = pg.auth.caller();
    let fleet = &driver.fleet;
    let live = service::deployments(fleet, &caller)
        .await
        .map_err(ApiError::from)?;
    let mut deps = live.clone();
    deps.retain(|d| model.is_none_or(|m| d.model == m));
    // Newest first: the store lists them in creation order.
    deps.reverse();
    let total = deps.len();
    let start = ((page_no - 1) as usize).saturating_mul(PAGE_SIZE);
    // Every device, for the page's states and undeploy warnings: the
    // snapshot read again only after devices or labels changed.
    let devices = if start < total {
        service::device_snapshot(fleet, &caller)
            .await
            .map_err(ApiError::from)?
    } else {
        Default::default()
    };
    // What devices reported, read once per model on the page.
    let mut states: HashMap<String, BTreeMap<String, db::DeviceModelState>> = HashMap::new();
    let none = BTreeMap::new();
    let mut shown = Vec::new();
    for d in deps.iter().skip(start).take(PAGE_SIZE) {
        if !states.contains_key(&d.model) {
            let s = service::model_states(fleet, &caller, &d.model)
                .await
                .map_err(ApiError::from)?;
            states.insert(d.model.clone(), s);
        }
        let reported = states.get(&d.model).unwrap_or(&none);
        // Counted only for the page shown: each matches every device.
        let status = service::deployment_status_among(fleet, d.clone(), &devices, reported)
            .await
            .map_err(ApiError::from)?;
        shown.push((status, undeploy_warnings(d, &live, &devices)));
    }
    let prev = (page_no > 1).then(|| {
        let p = (page_no - 1).to_string();
        q.with("/deployments", &[("page", Some(p.as_str()))])
    });
    let next = (start + PAGE_SIZE < total).then(|| {
        let p = (page_no + 1).to_string();
        q.with("/deployments", &[("page", Some(p.as_str()))])
    });
    let body = html! {
        form.filters role="search" aria-label="Filter deployments" method="get" action="/deployments" {
            div.field {
                label for="model" { "Model" }
                input #model name="model" type="search" value=[model];
            }
            div.field { button type="submit" { "Filter" } }
        }
        section #deployments-section aria-label="Live deployments" {
            p #deployment-count { (total) " live deployments match." }
            (table(&shown, pg.auth.p.role))
        }
        (layout::pager(prev, next, "Pages of deployments"))
    };
    Ok(layout::page(&pg.chrome(), Section::Deployments, "Deployments", body).into_response())
}

fn table(deps: &[(DeploymentStatus, Vec<String>)], role: Role) -> Markup {
    let may_undeploy = can(role, Action::DeploymentDelete);
    html! {
        @if deps.is_empty() {
            p { "No deployment matches." }
        } @else {
            table #deployments {
                caption.vh { "Live deployments, newest first" }
                thead {
                    tr {
                        th scope="col" { "Deployment" }
                        th scope="col" { "Model" }
                        th scope="col" { "Target" }
                        th scope="col" { "Devices by state" }
                        th scope="col" { "Created" }
                        @if may_undeploy { th scope="col" { "Actions" } }
                    }
                }
                tbody {
                    @for (s, warnings) in deps {
                        @let d = &s.deployment;
                        tr id=(format!("deployment-{}", d.id)) {
                            td { a href=(format!("/deployments/{}", d.id)) { code { (d.id) } } }
                            td { a href=(format!("/models/{}", d.model)) { (d.model) } "@" (d.version) }
                            td { (selector(&d.selector)) }
                            td { (count_badges(&s.summary)) }
                            td { (layout::when(d.created_at)) br; span.muted { (d.created_by) } }
                            @if may_undeploy {
                                td.actions { (undeploy(&d.id, &d.model, d.version, "#deployments-section", warnings)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_counted_in_a_fixed_order() {
        let summary: BTreeMap<String, u64> = [
            ("failed", 1),
            ("downloading 40%", 2),
            ("downloading 90%", 1),
            ("active", 4),
            ("superseded", 3),
            ("pending", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let want: Vec<(String, u64)> = [
            ("active", 4),
            ("downloading", 3),
            ("pending", 1),
            ("failed", 1),
            ("superseded", 3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(counts(&summary), want);
        assert!(counts(&BTreeMap::new()).is_empty());
        let html = undeploy("dep_1", "fraud", 2, "#x", &["{n} older".to_string()]).into_string();
        assert!(html.contains("Warning: n older"), "{html}");
        assert!(html.contains(r#"data-api="/api/v1/deployments/dep_1""#));
        assert!(html.contains(r#"data-method="DELETE""#));
    }

    #[test]
    fn undeploying_warns_of_devices_falling_back_to_an_older_version() {
        let labels: db::Labels = [("site".to_string(), "berlin".to_string())].into();
        let dep = |id: &str, version| db::Deployment {
            id: id.into(),
            tenant: "default".into(),
            model: "fraud".into(),
            version,
            digest: String::new(),
            selector: labels.clone(),
            created_at: 0,
            created_us: 0,
            created_by: "op".into(),
            deleted_at: None,
            runtime: None,
        };
        let device = db::Device {
            id: "dev_1".into(),
            tenant: "default".into(),
            hostname: "h".into(),
            labels: labels.clone(),
            created_at: 0,
            revoked_at: None,
            last_seen: None,
            session_until: None,
            runtimes: None,
        };
        let live = vec![dep("dep_1", 1), dep("dep_2", 2)];
        let w = undeploy_warnings(&live[1], &live, std::slice::from_ref(&device));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("fall back to fraud version 1"), "{w:?}");
        // Undeploying the older one leaves the newer in place: no warning.
        assert!(undeploy_warnings(&live[0], &live, &[device]).is_empty());
    }
}
