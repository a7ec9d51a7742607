//! `/fleet`: the tenant's devices with their labels, whether they are
//! connected (or when last seen) and the trust-root version they hold;
//! filtered by label (`label=site=berlin`, repeatable) and connection
//! state, in pages. Read through `fleet::service::devices` and the REST
//! DTO, as `GET /api/v1/fleet/devices` does.

use super::error::PageResult;
use super::layout::{self, Section};
use super::list::ListQuery;
use super::session::Page;
use super::FleetLink;
use crate::action::Action;
use crate::api::types::Device;
use crate::api::ApiError;
use crate::fleet::{api::device_dto, service};
use axum::extract::RawQuery;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};

const PAGE_SIZE: usize = 50;

/// `GET /fleet` (`label`: `key=value`, every one must match; `state`:
/// `connected` or `disconnected`; `page`).
pub async fn page(
    pg: Page,
    Extension(FleetLink(driver)): Extension<FleetLink>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    pg.auth.authorize(Action::DeviceList, "").await?;
    let Some(driver) = driver else {
        return Ok(
            layout::page(&pg.chrome(), Section::Fleet, "Fleet", layout::no_fleet()).into_response(),
        );
    };
    let q = ListQuery::parse(raw.as_deref());
    let mut labels = Vec::new();
    for l in q.all("label") {
        let (k, v) = l.split_once('=').ok_or_else(|| {
            ApiError::bad_request(format!("label {l:?}: use key=value, e.g. site=berlin"))
        })?;
        labels.push((k.trim().to_string(), v.trim().to_string()));
    }
    let state = match q.get("state") {
        None => None,
        Some("connected") => Some(true),
        Some("disconnected") => Some(false),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "state {s:?}: use connected or disconnected"
            ))
            .into())
        }
    };
    let page_no = q.page()?;
    let fleet = &driver.fleet;
    let mut devices: Vec<Device> = service::devices(fleet, &pg.auth.caller())
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|(d, connected)| device_dto(fleet, d, connected))
        .filter(|d| d.revoked_at.is_none())
        .filter(|d| state.is_none_or(|c| d.connected == c))
        .filter(|d| {
            labels
                .iter()
                .all(|(k, v)| d.labels.get(k).is_some_and(|x| x == v))
        })
        .collect();
    devices.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    let total = devices.len();
    let start = ((page_no - 1) as usize).saturating_mul(PAGE_SIZE);
    let shown: Vec<Device> = devices.into_iter().skip(start).take(PAGE_SIZE).collect();
    let prev = (page_no > 1).then(|| {
        let p = (page_no - 1).to_string();
        q.with("/fleet", &[("page", Some(p.as_str()))])
    });
    let next = (start + PAGE_SIZE < total).then(|| {
        let p = (page_no + 1).to_string();
        q.with("/fleet", &[("page", Some(p.as_str()))])
    });
    let body = html! {
        (filters(&q))
        p #device-count { (total) " devices match." }
        (table(&shown))
        (layout::pager(prev, next, "Pages of devices"))
    };
    Ok(layout::page(&pg.chrome(), Section::Fleet, "Fleet", body).into_response())
}

fn filters(q: &ListQuery) -> Markup {
    let state = q.get("state").unwrap_or("");
    html! {
        form.filters role="search" aria-label="Filter devices" method="get" action="/fleet" {
            div.field {
                label for="label" { "Label (key=value)" }
                input #label name="label" type="search" placeholder="site=berlin" value=[q.get("label")];
            }
            div.field {
                label for="state" { "Connection" }
                select #state name="state" {
                    option value="" selected[state.is_empty()] { "any" }
                    option value="connected" selected[state == "connected"] { "connected" }
                    option value="disconnected" selected[state == "disconnected"] { "disconnected" }
                }
            }
            div.field { button type="submit" { "Filter" } }
        }
    }
}

fn table(devices: &[Device]) -> Markup {
    html! {
        @if devices.is_empty() {
            p { "No device matches." }
        } @else {
            table #devices {
                caption.vh { "Devices" }
                thead {
                    tr {
                        th scope="col" { "Host" }
                        th scope="col" { "Device" }
                        th scope="col" { "Labels" }
                        th scope="col" { "Connection" }
                        th scope="col" { "Trust root" }
                        th scope="col" { "Enrolled" }
                    }
                }
                tbody {
                    @for d in devices {
                        tr {
                            td { (d.hostname) }
                            td { code title=(d.id) { (layout::short(&d.id)) } }
                            td { @for (k, v) in &d.labels { span.badge { (k) "=" (v) } " " } }
                            td {
                                @if d.connected {
                                    span.status.ready { "connected" }
                                } @else {
                                    span.status.archived { "disconnected" }
                                    @if let Some(t) = d.last_seen { br; span.muted { "last seen " (layout::when(t)) } }
                                }
                            }
                            td { @match d.trust_root_version { Some(v) => { "v" (v) }, None => span.muted { "unknown" } } }
                            td { (layout::when(d.created_at)) }
                        }
                    }
                }
            }
        }
    }
}
