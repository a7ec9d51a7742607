//! `/fleet/{id}`: one device. Its identity (host, labels, enrollment,
//! trust root), what its agent last said in its health message, what it
//! should run (its desired state) against what it reported installing over
//! QUIC, the deployments that target it (selector and runtime), its events
//! (activations, refusals, rollbacks; newest first, paged by `epage`) and
//! its telemetry windows (newest first, of one model with `model`, paged by
//! `wpage`), with a link to each model's monitoring of this device. Read
//! through `fleet::service` and `telemetry::service`, as
//! `GET /api/v1/fleet/devices/{id}` and the telemetry API do.

use super::error::PageResult;
use super::fleet::{health_status, mqtt_label, report, HealthView};
use super::layout::{self, Section};
use super::list::ListQuery;
use super::rollouts::selector;
use super::session::Page;
use super::FleetLink;
use crate::action::Action;
use crate::api::types::Device;
use crate::api::{ApiError, AppState};
use crate::fleet::{api::device_dto, service};
use crate::store::fleet::{Deployment, DeviceModelReport};
use crate::store::telemetry::WindowRow;
use crate::telemetry::service::{self as telemetry, DeviceEventView};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use ferry_protocol::desired::Assignment;
use maud::{html, Markup};
use std::collections::BTreeSet;

const PAGE_SIZE: i64 = 20;

/// Milliseconds since the epoch as a UTC time to the second (windows are
/// often shorter than a minute).
pub fn when_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Microseconds as milliseconds for people.
fn latency(us: i64) -> String {
    format!("{} ms", layout::num(us as f64 / 1000.0))
}

/// `/fleet/{id}` with the query's listing state changed by `set`.
fn link(id: &str, q: &ListQuery, set: &[(&str, Option<&str>)]) -> String {
    q.with(&format!("/fleet/{id}"), set)
}

/// One page of a listing: previous and next links, from its page key.
fn pager(id: &str, q: &ListQuery, key: &str, page_no: i64, more: bool, label: &str) -> Markup {
    let to = |p: i64| {
        let p = p.to_string();
        link(id, q, &[(key, Some(p.as_str()))])
    };
    layout::pager(
        (page_no > 1).then(|| to(page_no - 1)),
        more.then(|| to(page_no + 1)),
        label,
    )
}

/// `GET /fleet/{id}` (`epage`, `wpage`, `model`).
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    Extension(FleetLink(driver)): Extension<FleetLink>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    pg.auth.authorize(Action::DeviceShow, &id).await?;
    pg.auth.authorize(Action::DeviceHealthList, &id).await?;
    let Some(driver) = driver else {
        return Ok(
            layout::page(&pg.chrome(), Section::Fleet, "Device", layout::no_fleet())
                .into_response(),
        );
    };
    let q = ListQuery::parse(raw.as_deref());
    let (epage, wpage) = (q.page_of("epage")?, q.page_of("wpage")?);
    let model = q.get("model");
    let caller = pg.auth.caller();
    let fleet = &driver.fleet;
    let v = service::device(fleet, &caller, &id)
        .await
        .map_err(ApiError::from)?;
    let (labels, runtimes) = (v.device.labels.clone(), v.device.runtimes.clone());
    let device = device_dto(fleet, v.device, v.connected);
    let health = telemetry::device_health_of(&st.store, &caller, &id)
        .await
        .map_err(ApiError::from)?
        .map(HealthView::from);
    let reports = service::device_reports(fleet, &caller, Some(&id))
        .await
        .map_err(ApiError::from)?;
    let deployments: Vec<Deployment> = service::deployments(fleet, &caller)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|d| {
            crate::fleet::assign::targets(
                d,
                crate::fleet::assign::DeviceView {
                    labels: &labels,
                    runtimes: runtimes.as_deref(),
                },
            )
        })
        .collect();
    // One more than a page shows, to know whether a next page exists.
    let mut events = telemetry::device_events(
        &st.store,
        &caller,
        &id,
        (epage - 1) * PAGE_SIZE,
        PAGE_SIZE + 1,
    )
    .await
    .map_err(ApiError::from)?;
    let more_events = events.len() as i64 > PAGE_SIZE;
    events.truncate(PAGE_SIZE as usize);
    let (mut windows, models) = telemetry::device_windows(
        &st.store,
        &caller,
        &id,
        model,
        (wpage - 1) * PAGE_SIZE,
        PAGE_SIZE + 1,
    )
    .await
    .map_err(ApiError::from)?;
    let more_windows = windows.len() as i64 > PAGE_SIZE;
    windows.truncate(PAGE_SIZE as usize);

    let title = format!("Device {}", device.hostname);
    let body = html! {
        p { a href="/fleet" { "← All devices" } }
        (identity(&device))
        (health_section(health.as_ref()))
        (versions(&v.assignments, &reports))
        (deployments_section(&deployments))
        section aria-labelledby="events-h" {
            h2 #events-h { "Events" }
            (events_table(&events))
            (pager(&id, &q, "epage", epage, more_events, "Pages of events"))
        }
        section aria-labelledby="telemetry-h" {
            h2 #telemetry-h { "Telemetry" }
            (monitoring_links(&id, &q, &models, model))
            (windows_table(&windows))
            (pager(&id, &q, "wpage", wpage, more_windows, "Pages of telemetry windows"))
        }
    };
    Ok(layout::page(&pg.chrome(), Section::Fleet, &title, body).into_response())
}

fn identity(d: &Device) -> Markup {
    html! {
        dl.props #identity {
            dt { "Device" } dd { code { (d.id) } }
            dt { "Host" } dd { (d.hostname) }
            dt { "Labels" } dd {
                @if d.labels.is_empty() { span.muted { "none" } }
                @for (k, v) in &d.labels { span.badge { (k) "=" (v) } " " }
            }
            dt { "Runtimes" } dd {
                @match &d.runtimes {
                    Some(r) if !r.is_empty() => { @for x in r { code { (x) } " " } },
                    Some(_) => { span.muted { "none" } },
                    None => { span.muted { "unknown (no hello yet)" } },
                }
            }
            dt { "Enrolled" } dd { (layout::when(d.created_at)) }
            @if let Some(t) = d.revoked_at {
                dt { "Revoked" } dd { span.status.archived { (layout::when(t)) } }
            }
            dt { "Connection" } dd {
                @if d.connected { span.status.ready { "connected" } }
                @else { span.status.archived { "disconnected" } }
                @if let Some(t) = d.last_seen { " · last seen " (layout::when(t)) }
            }
            dt { "Trust root" } dd {
                @match d.trust_root_version {
                    Some(v) => {
                        "v" (v)
                        @if let Some(t) = d.trust_root_expires_at { ", expires " (layout::when(t as i64)) }
                    },
                    None => { span.muted { "unknown (not heard since the server started)" } },
                }
            }
        }
    }
}

fn health_section(h: Option<&HealthView>) -> Markup {
    let m = h.and_then(|h| h.health.as_ref());
    html! {
        section aria-labelledby="health-h" {
            h2 #health-h { "Health" }
            dl.props #health {
                dt { "Status" } dd { (health_status(h)) }
                @if let Some(m) = m {
                    dt { "Agent version" } dd { (m.agent_version) }
                    dt { "Architecture" } dd {
                        @match &m.arch { Some(a) => { code { (a) } }, None => { span.muted { "not reported (older agent)" } } }
                    }
                    dt { "MQTT protocol" } dd { (mqtt_label(m.mqtt_protocol)) }
                    dt { "Serving" } dd {
                        @if m.serving.is_empty() { span.muted { "nothing" } }
                        @for s in &m.serving { code { (s) } " " }
                    }
                    dt { "Outbox" } dd {
                        (m.outbox_depth) " waiting, " (m.outbox_dropped) " dropped, "
                        (m.published) " published since the agent started"
                    }
                    @if let Some(s) = m.trust_root_expires_in {
                        dt { "Trust root expires" } dd {
                            @if s < 0 { span.status.error { "expired " (-s / 86_400) " days ago" } }
                            @else { "in " (s / 86_400) " days" }
                        }
                    }
                }
            }
        }
    }
}

fn versions(assignments: &[Assignment], reports: &[DeviceModelReport]) -> Markup {
    let models: BTreeSet<&str> = assignments
        .iter()
        .map(|a| a.model.as_str())
        .chain(reports.iter().map(|r| r.model.as_str()))
        .collect();
    html! {
        section aria-labelledby="versions-h" {
            h2 #versions-h { "Desired and installed versions" }
            @if models.is_empty() {
                p { "Nothing is assigned to this device and it reported nothing." }
            } @else {
                table #versions .compact {
                    caption.vh { "Per model: what the device should run and what it reported" }
                    thead { tr {
                        th scope="col" { "Model" }
                        th scope="col" { "Desired" }
                        th scope="col" { "Reported" }
                        th scope="col" { "Detail" }
                        th scope="col" { "Reported at" }
                    } }
                    tbody {
                        @for m in &models {
                            @let r = reports.iter().find(|r| r.model == *m);
                            tr {
                                td { a href=(format!("/models/{m}")) { (m) } }
                                td {
                                    @for a in assignments.iter().filter(|a| a.model.as_str() == *m) {
                                        "v" (a.version) " " span.muted { (format!("{:?}", a.variant).to_lowercase()) } br;
                                    }
                                    @if !assignments.iter().any(|a| a.model.as_str() == *m) { span.muted { "not assigned" } }
                                }
                                td { @match r { Some(r) => { (report(r)) }, None => { span.muted { "no report" } } } }
                                td.detail { @if let Some(r) = r { (r.detail) } }
                                td { @if let Some(r) = r { (layout::when(r.updated_at)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn deployments_section(deps: &[Deployment]) -> Markup {
    html! {
        section aria-labelledby="deployments-h" {
            h2 #deployments-h { "Deployments that target it" }
            @if deps.is_empty() {
                p { "No live deployment targets this device (selector and runtime)." }
            } @else {
                table #device-deployments .compact {
                    caption.vh { "Live deployments that target this device" }
                    thead { tr {
                        th scope="col" { "Deployment" }
                        th scope="col" { "Model" }
                        th scope="col" { "Target" }
                        th scope="col" { "Created" }
                    } }
                    tbody {
                        @for d in deps {
                            tr {
                                td { a href=(format!("/deployments/{}", d.id)) { code { (d.id) } } }
                                td { (d.model) "@" (d.version) }
                                td { (selector(&d.selector)) }
                                td { (layout::when(d.created_at)) br; span.muted { (d.created_by) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn events_table(events: &[DeviceEventView]) -> Markup {
    html! {
        @if events.is_empty() {
            p { "No event on this page." }
        } @else {
            table #events {
                caption.vh { "Device events, newest first" }
                thead { tr {
                    th scope="col" { "When" }
                    th scope="col" { "Event" }
                    th scope="col" { "Model" }
                    th scope="col" { "Detail" }
                } }
                tbody {
                    @for e in events {
                        tr {
                            td { (when_ms(e.at_ms)) }
                            td { span class=(format!("status {}", e.kind)) { (e.kind.replace('_', " ")) } }
                            td {
                                @if let Some(m) = &e.model { (m) }
                                @if let Some(v) = e.version { " v" (v) }
                            }
                            td.detail { (e.detail) }
                        }
                    }
                }
            }
        }
    }
}

fn monitoring_links(id: &str, q: &ListQuery, models: &[String], shown: Option<&str>) -> Markup {
    html! {
        @if !models.is_empty() {
            ul #monitoring {
                @for m in models {
                    li {
                        a href=(format!("/models/{m}/monitoring?device={id}")) { "Monitoring of " (m) " on this device" }
                        " · "
                        @if shown == Some(m.as_str()) {
                            a href=(link(id, q, &[("model", None), ("wpage", None)])) { "show every model's windows" }
                        } @else {
                            a href=(link(id, q, &[("model", Some(m.as_str())), ("wpage", None)])) { "only " (m) "'s windows below" }
                        }
                    }
                }
            }
        }
    }
}

fn windows_table(windows: &[(String, WindowRow)]) -> Markup {
    html! {
        @if windows.is_empty() {
            p { "No telemetry window on this page." }
        } @else {
            table #windows {
                caption.vh { "Telemetry windows, newest first" }
                thead { tr {
                    th scope="col" { "Model" }
                    th scope="col" { "Version" }
                    th scope="col" { "Window end" }
                    th scope="col" { "Requests" }
                    th scope="col" { "Error rate" }
                    th scope="col" { "p50" }
                    th scope="col" { "p99" }
                    th scope="col" { "Max PSI" }
                    th scope="col" { "Drifted" }
                } }
                tbody {
                    @for (m, w) in windows {
                        tr {
                            td { (m) }
                            td { (w.version) @if w.variant != "champion" { " " span.muted { (w.variant) } } }
                            td { (when_ms(w.window_end_ms)) }
                            td { (w.requests) }
                            td {
                                @if w.requests > 0 { (layout::num(w.errors as f64 / w.requests as f64)) }
                                @else { span.muted { "–" } }
                            }
                            td { (latency(w.latency_p50_us)) }
                            td { (latency(w.latency_p99_us)) }
                            td { @if w.max_psi < 0.0 { span.muted { "–" } } @else { (layout::num(w.max_psi)) } }
                            td { @if w.drifted { span.status.error { "drifted" } } @else { "no" } }
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
    fn times_and_latencies_read_well() {
        assert_eq!(when_ms(1_500), "1970-01-01 00:00:01 UTC");
        assert_eq!(latency(400), "0.4 ms");
        assert_eq!(latency(2_000), "2 ms");
        let q = ListQuery::parse(Some("model=fraud&epage=2&wpage=3"));
        // Paging one listing keeps the other's page.
        assert_eq!(
            link("dev_1", &q, &[("epage", Some("3"))]),
            "/fleet/dev_1?model=fraud&wpage=3&epage=3"
        );
        assert_eq!(q.page_of("wpage").unwrap(), 3);
        assert!(ListQuery::parse(Some("epage=0")).page_of("epage").is_err());
    }
}
