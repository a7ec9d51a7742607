//! `/rollouts`: the tenant's rollouts, newest first (model, version,
//! selector, policy, phase, wave, devices matching / given / active,
//! created by and when), filtered by phase and model, in pages. Read
//! through `rollout_driver::service::list` and the REST DTO, as
//! `GET /api/v1/rollouts` does.

use super::error::PageResult;
use super::layout::{self, Section};
use super::list::ListQuery;
use super::session::Page;
use super::FleetLink;
use crate::action::Action;
use crate::api::rollouts::{parse_state, rollout_dto};
use crate::api::types::{Labels, Rollout};
use crate::api::ApiError;
use crate::rollout_driver::service;
use axum::extract::RawQuery;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};

const PAGE_SIZE: usize = 50;

/// The phases a rollout can be in, as the API names them.
pub const PHASES: &[&str] = &[
    "running",
    "awaiting_approval",
    "paused",
    "finished",
    "aborted",
];

/// `GET /rollouts` (`phase`, `model`, `page`).
pub async fn page(
    pg: Page,
    Extension(FleetLink(driver)): Extension<FleetLink>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    pg.auth.authorize(Action::RolloutList, "").await?;
    let Some(driver) = driver else {
        return Ok(layout::page(
            &pg.chrome(),
            Section::Rollouts,
            "Rollouts",
            layout::no_fleet(),
        )
        .into_response());
    };
    let q = ListQuery::parse(raw.as_deref());
    let phase = q.get("phase");
    if let Some(p) = phase {
        if !PHASES.contains(&p) {
            return Err(ApiError::bad_request(format!(
                "phase {p:?}: use one of {}",
                PHASES.join(", ")
            ))
            .into());
        }
    }
    let model = q.get("model");
    let page_no = q.page()?;
    let rows = service::list(&driver, &pg.auth.caller())
        .await
        .map_err(ApiError::from)?;
    let rollouts: Vec<Rollout> = rows
        .iter()
        .map(|r| rollout_dto(r, parse_state(r).as_ref()))
        .filter(|r| phase.is_none_or(|p| r.phase == p))
        .filter(|r| model.is_none_or(|m| r.model == m))
        .collect();
    let total = rollouts.len();
    let start = ((page_no - 1) as usize).saturating_mul(PAGE_SIZE);
    let shown: Vec<&Rollout> = rollouts.iter().skip(start).take(PAGE_SIZE).collect();
    let prev = (page_no > 1).then(|| {
        let p = (page_no - 1).to_string();
        q.with("/rollouts", &[("page", Some(p.as_str()))])
    });
    let next = (start + PAGE_SIZE < total).then(|| {
        let p = (page_no + 1).to_string();
        q.with("/rollouts", &[("page", Some(p.as_str()))])
    });
    let body = html! {
        (filters(&q))
        (table(&shown))
        (layout::pager(prev, next, "Pages of rollouts"))
    };
    Ok(layout::page(&pg.chrome(), Section::Rollouts, "Rollouts", body).into_response())
}

/// A phase for people (`awaiting_approval` → `awaiting approval`).
pub fn phase_label(p: &str) -> String {
    p.replace('_', " ")
}

/// A selector as `key=value` badges (`all devices` when empty).
pub fn selector(s: &Labels) -> Markup {
    html! {
        @if s.is_empty() { span.muted { "all devices" } }
        @for (k, v) in s { span.badge { (k) "=" (v) } " " }
    }
}

fn filters(q: &ListQuery) -> Markup {
    let phase = q.get("phase").unwrap_or("");
    html! {
        form.filters role="search" aria-label="Filter rollouts" method="get" action="/rollouts" {
            div.field {
                label for="model" { "Model" }
                input #model name="model" type="search" value=[q.get("model")];
            }
            div.field {
                label for="phase" { "Phase" }
                select #phase name="phase" {
                    option value="" selected[phase.is_empty()] { "any" }
                    @for p in PHASES {
                        option value=(p) selected[phase == *p] { (phase_label(p)) }
                    }
                }
            }
            div.field { button type="submit" { "Filter" } }
        }
    }
}

fn table(rollouts: &[&Rollout]) -> Markup {
    html! {
        @if rollouts.is_empty() {
            p { "No rollout matches." }
        } @else {
            table #rollouts {
                caption.vh { "Rollouts, newest first" }
                thead {
                    tr {
                        th scope="col" { "Rollout" }
                        th scope="col" { "Model" }
                        th scope="col" { "Selector" }
                        th scope="col" { "Policy" }
                        th scope="col" { "Phase" }
                        th scope="col" { "Wave" }
                        th scope="col" { "Devices / given / active" }
                        th scope="col" { "Created" }
                    }
                }
                tbody {
                    @for r in rollouts {
                        tr {
                            td { a href=(format!("/rollouts/{}", r.id)) { code { (layout::short(&r.id)) } } }
                            td { (r.model) " v" (r.version) }
                            td { (selector(&r.selector)) }
                            td {
                                @if r.policy.is_empty() { span.muted { "one-off or defaults" } }
                                @else { (r.policy) " v" (r.policy_version) }
                            }
                            td { span class=(format!("status {}", r.phase)) { (phase_label(&r.phase)) } }
                            td { (r.wave) }
                            td { (r.devices) " / " (r.assigned) " / " (r.active) }
                            td { (layout::when(r.created_at)) br; span.muted { (r.created_by) } }
                        }
                    }
                }
            }
        }
    }
}
