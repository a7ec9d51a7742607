//! `/deployments/{id}`: one deployment: model and version, target
//! selector, digest, who created it and when (or when it was undeployed),
//! the matched devices counted per state and each device's state (linking
//! to its page). Read through `fleet::service::deployment_status`, as
//! `GET /api/v1/deployments/{id}` does; roles that may undeploy get the
//! Undeploy form (`DELETE /api/v1/deployments/{id}`).

use super::deployments::{count_badges, undeploy, undeploy_warnings};
use super::error::PageResult;
use super::layout::{self, can, Section};
use super::rollouts::selector;
use super::session::Page;
use super::FleetLink;
use crate::action::Action;
use crate::api::ApiError;
use crate::fleet::service::{self, DeploymentStatus};
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};

/// `GET /deployments/{id}`.
pub async fn page(
    pg: Page,
    Extension(FleetLink(driver)): Extension<FleetLink>,
    Path(id): Path<String>,
) -> PageResult<Response> {
    pg.auth.authorize(Action::DeploymentShow, &id).await?;
    let Some(driver) = driver else {
        return Ok(layout::page(
            &pg.chrome(),
            Section::Deployments,
            "Deployment",
            layout::no_fleet(),
        )
        .into_response());
    };
    let fleet = &driver.fleet;
    let caller = pg.auth.caller();
    let mut s = service::deployment_status(fleet, &caller, &id)
        .await
        .map_err(ApiError::from)?;
    s.devices
        .sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.device.cmp(&b.device)));
    let warnings = if s.deployment.deleted_at.is_none() {
        let live = service::deployments(fleet, &caller)
            .await
            .map_err(ApiError::from)?;
        let devices: Vec<_> = service::devices(fleet, &caller)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        undeploy_warnings(&s.deployment, &live, &devices)
    } else {
        Vec::new()
    };
    let d = &s.deployment;
    let title = format!("Deployment of {} v{}", d.model, d.version);
    let may_undeploy = can(pg.auth.p.role, Action::DeploymentDelete);
    let body = html! {
        p { a href="/deployments" { "← All deployments" } }
        (section(&s, may_undeploy, &warnings))
    };
    Ok(layout::page(&pg.chrome(), Section::Deployments, &title, body).into_response())
}

fn section(s: &DeploymentStatus, may_undeploy: bool, warnings: &[String]) -> Markup {
    let d = &s.deployment;
    html! {
        section #deployment-section aria-label="Deployment" {
            dl.props {
                dt { "Deployment" } dd { code { (d.id) } }
                dt { "Model" } dd { a href=(format!("/models/{}", d.model)) { (d.model) } " version " (d.version) }
                dt { "Target" } dd { (selector(&d.selector)) }
                dt { "Bundle digest" } dd { code title=(d.digest) { (layout::short(&d.digest)) } }
                dt { "Created" } dd { (layout::when(d.created_at)) " by " (d.created_by) }
                dt { "State" } dd #deployment-state {
                    @match d.deleted_at {
                        Some(t) => { span.status.archived { "undeployed " (layout::when(t)) } },
                        None => { span.status.ready { "live" } },
                    }
                }
                dt { "Devices" } dd #deployment-counts { (count_badges(&s.summary)) }
            }
            @if may_undeploy && d.deleted_at.is_none() {
                div.buttons { (undeploy(&d.id, &d.model, d.version, "#deployment-section", warnings)) }
            }
            h2 { "Devices" }
            @if s.devices.is_empty() {
                p { "No device matches the target." }
            } @else {
                table #deployment-devices {
                    caption.vh { "Each matched device's state" }
                    thead { tr {
                        th scope="col" { "Host" }
                        th scope="col" { "Device" }
                        th scope="col" { "Connection" }
                        th scope="col" { "State" }
                        th scope="col" { "Detail" }
                    } }
                    tbody {
                        @for x in &s.devices {
                            tr {
                                td { a href=(format!("/fleet/{}", x.device)) { (x.hostname) } }
                                td { code title=(x.device) { (layout::short(&x.device)) } }
                                td {
                                    @if x.connected { span.status.ready { "connected" } }
                                    @else { span.status.archived { "disconnected" } }
                                }
                                td { span class=(format!("status {}", x.state.split(' ').next().unwrap_or(""))) { (x.state.replace('_', " ")) } }
                                td.detail { (x.detail) }
                            }
                        }
                    }
                }
            }
        }
    }
}
