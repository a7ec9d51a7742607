//! `/fleet`: the tenant's devices with their labels, whether they are
//! connected, what their agent last said in its health message (online or
//! offline, agent version, architecture, MQTT protocol, what it serves),
//! the versions they reported installing over QUIC and the trust-root
//! version they hold; filtered by label (`label=site=berlin`, repeatable),
//! connection state and model running (`model=fraud`), sorted by host or
//! last seen (`sort=host|last_seen`), in pages. Read through
//! `fleet::service` and `telemetry::service::device_health` and the REST
//! DTOs, as `GET /api/v1/fleet/devices` and `GET /api/v1/devices` do.

use super::error::PageResult;
use super::layout::{self, Section};
use super::list::ListQuery;
use super::session::Page;
use super::FleetLink;
use crate::action::Action;
use crate::api::types::{Device, DeviceHealth};
use crate::api::{ApiError, AppState};
use crate::fleet::{api::device_dto, service};
use crate::store::fleet::DeviceModelReport;
use crate::telemetry::service as telemetry;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use ferry_protocol::telemetry::Health;
use maud::{html, Markup};
use std::collections::HashMap;

const PAGE_SIZE: usize = 50;

/// What a device's agent last said over MQTT: the stored status and when
/// it arrived, and the message itself when it parses.
#[derive(Clone, Debug)]
pub struct HealthView {
    pub status: String,
    pub received_at_ms: i64,
    pub health: Option<Health>,
}

impl From<DeviceHealth> for HealthView {
    fn from(h: DeviceHealth) -> Self {
        HealthView {
            health: serde_json::from_value::<Health>(h.health).ok(),
            status: h.status,
            received_at_ms: h.received_at_ms,
        }
    }
}

/// One device of the listing.
#[derive(Clone, Debug)]
pub struct Row {
    pub device: Device,
    pub health: Option<HealthView>,
    pub reports: Vec<DeviceModelReport>,
}

impl Row {
    /// When the device was last heard of (seconds), over QUIC or MQTT.
    fn last_seen(&self) -> Option<i64> {
        let mqtt = self.health.as_ref().map(|h| h.received_at_ms / 1000);
        self.device.last_seen.max(mqtt)
    }

    /// Whether it runs `model`: an active report of it, or health naming it.
    fn runs(&self, model: &str) -> bool {
        self.reports
            .iter()
            .any(|r| r.model == model && r.state == "active")
            || self
                .health
                .as_ref()
                .and_then(|h| h.health.as_ref())
                .is_some_and(|h| {
                    h.serving
                        .iter()
                        .any(|s| s.split_once('@').is_some_and(|(m, _)| m == model))
                })
    }
}

/// The listing's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// By host name, then id.
    Host,
    /// Connected devices first, then the most recently heard of.
    LastSeen,
}

impl Sort {
    pub fn parse(v: Option<&str>) -> Result<Sort, ApiError> {
        match v {
            None | Some("host") => Ok(Sort::Host),
            Some("last_seen") => Ok(Sort::LastSeen),
            Some(s) => Err(ApiError::bad_request(format!(
                "sort {s:?}: use host or last_seen"
            ))),
        }
    }
}

/// The filters of the listing, from its query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub labels: Vec<(String, String)>,
    /// `Some(true)`: connected only.
    pub connected: Option<bool>,
    pub model: Option<String>,
}

impl Filter {
    pub fn parse(q: &ListQuery) -> Result<Filter, ApiError> {
        let mut labels = Vec::new();
        for l in q.all("label") {
            let (k, v) = l.split_once('=').ok_or_else(|| {
                ApiError::bad_request(format!("label {l:?}: use key=value, e.g. site=berlin"))
            })?;
            labels.push((k.trim().to_string(), v.trim().to_string()));
        }
        let connected = match q.get("state") {
            None => None,
            Some("connected") => Some(true),
            Some("disconnected") => Some(false),
            Some(s) => {
                return Err(ApiError::bad_request(format!(
                    "state {s:?}: use connected or disconnected"
                )))
            }
        };
        Ok(Filter {
            labels,
            connected,
            model: q.get("model").map(str::to_string),
        })
    }

    fn keeps(&self, r: &Row) -> bool {
        let d = &r.device;
        d.revoked_at.is_none()
            && self.connected.is_none_or(|c| d.connected == c)
            && self
                .labels
                .iter()
                .all(|(k, v)| d.labels.get(k).is_some_and(|x| x == v))
            && self.model.as_deref().is_none_or(|m| r.runs(m))
    }
}

/// The rows `f` keeps, in `sort`'s order.
pub fn select(rows: Vec<Row>, f: &Filter, sort: Sort) -> Vec<Row> {
    let mut rows: Vec<Row> = rows.into_iter().filter(|r| f.keeps(r)).collect();
    let by_host = |a: &Row, b: &Row| {
        a.device
            .hostname
            .cmp(&b.device.hostname)
            .then(a.device.id.cmp(&b.device.id))
    };
    match sort {
        Sort::Host => rows.sort_by(by_host),
        Sort::LastSeen => rows.sort_by(|a, b| {
            b.device
                .connected
                .cmp(&a.device.connected)
                .then(b.last_seen().cmp(&a.last_seen()))
                .then(by_host(a, b))
        }),
    }
    rows
}

/// Every device of the tenant with its health and reports.
pub async fn rows(pg: &Page, st: &AppState, link: &FleetLink) -> PageResult<Option<Vec<Row>>> {
    let Some(driver) = &link.0 else {
        return Ok(None);
    };
    let caller = pg.auth.caller();
    let fleet = &driver.fleet;
    let mut health: HashMap<String, HealthView> = telemetry::device_health(&st.store, &caller)
        .await
        .map_err(ApiError::from)?
        .devices
        .into_iter()
        .map(|h| (h.device.clone(), HealthView::from(h)))
        .collect();
    let mut reports: HashMap<String, Vec<DeviceModelReport>> = HashMap::new();
    for r in service::device_reports(fleet, &caller, None)
        .await
        .map_err(ApiError::from)?
    {
        reports.entry(r.device.clone()).or_default().push(r);
    }
    Ok(Some(
        service::devices(fleet, &caller)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|(d, connected)| {
                let device = device_dto(fleet, d, connected);
                Row {
                    health: health.remove(&device.id),
                    reports: reports.remove(&device.id).unwrap_or_default(),
                    device,
                }
            })
            .collect(),
    ))
}

/// `GET /fleet` (`label`: `key=value`, every one must match; `state`:
/// `connected` or `disconnected`; `model`; `sort`; `page`).
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    Extension(link): Extension<FleetLink>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    pg.auth.authorize(Action::DeviceList, "").await?;
    pg.auth.authorize(Action::DeviceHealthList, "").await?;
    let q = ListQuery::parse(raw.as_deref());
    let filter = Filter::parse(&q)?;
    let sort = Sort::parse(q.get("sort"))?;
    let page_no = q.page()?;
    let Some(all) = rows(&pg, &st, &link).await? else {
        return Ok(
            layout::page(&pg.chrome(), Section::Fleet, "Fleet", layout::no_fleet()).into_response(),
        );
    };
    let devices = select(all, &filter, sort);
    let total = devices.len();
    let start = ((page_no - 1) as usize).saturating_mul(PAGE_SIZE);
    let shown: Vec<Row> = devices.into_iter().skip(start).take(PAGE_SIZE).collect();
    let prev = (page_no > 1).then(|| {
        let p = (page_no - 1).to_string();
        q.with("/fleet", &[("page", Some(p.as_str()))])
    });
    let next = (start + PAGE_SIZE < total).then(|| {
        let p = (page_no + 1).to_string();
        q.with("/fleet", &[("page", Some(p.as_str()))])
    });
    // Reloads itself when the change feed names a device (health,
    // connection, a report), within a second, and every 30 s.
    let here = q.with("/fleet", &[]);
    let body = html! {
        (filters(&q, sort))
        div #fleet-live data-live="device" hx-get=(here) hx-select="#fleet-live"
            hx-target="this" hx-swap="outerHTML" hx-trigger="ferry:device from:body, every 30s" {
            p #device-count { (total) " devices match." }
            (table(&q, sort, &shown))
            (layout::pager(prev, next, "Pages of devices"))
        }
    };
    Ok(layout::page(&pg.chrome(), Section::Fleet, "Fleet", body).into_response())
}

fn filters(q: &ListQuery, sort: Sort) -> Markup {
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
            div.field {
                label for="model" { "Running model" }
                input #model name="model" type="search" value=[q.get("model")];
            }
            div.field {
                label for="sort" { "Sort by" }
                select #sort name="sort" {
                    option value="host" selected[sort == Sort::Host] { "Host" }
                    option value="last_seen" selected[sort == Sort::LastSeen] { "Last seen" }
                }
            }
            div.field { button type="submit" { "Filter" } }
        }
    }
}

/// An MQTT protocol level as people name it.
pub fn mqtt_label(level: Option<u8>) -> Markup {
    html! {
        @match level {
            Some(5) => { "5" },
            Some(4) => { "3.1.1" },
            Some(l) => { "level " (l) },
            None => { span.muted { "unknown" } },
        }
    }
}

/// Online or offline as the agent last said, and when that arrived.
pub fn health_status(h: Option<&HealthView>) -> Markup {
    html! {
        @match h {
            None => { span.muted { "no health report" } },
            Some(h) => {
                @if h.status == "online" {
                    span.status.ready { "online" }
                } @else {
                    span.status.archived { (h.status) }
                }
                br; span.muted { "reported " (layout::when(h.received_at_ms / 1000)) }
            }
        }
    }
}

/// A report as `fraud v2 active`.
pub fn report(r: &DeviceModelReport) -> Markup {
    html! {
        span class=(format!("status {}", r.state)) { (r.model) " v" (r.version) " " (r.state.replace('_', " ")) }
    }
}

fn table(q: &ListQuery, sort: Sort, rows: &[Row]) -> Markup {
    let sorted = |by: Sort| {
        (sort == by).then_some(if by == Sort::Host {
            "ascending"
        } else {
            "descending"
        })
    };
    html! {
        @if rows.is_empty() {
            p { "No device matches." }
        } @else {
            table #devices {
                caption.vh { "Devices" }
                thead {
                    tr {
                        th scope="col" aria-sort=[sorted(Sort::Host)] {
                            a href=(q.with("/fleet", &[("sort", Some("host"))])) { "Host" }
                        }
                        th scope="col" { "Labels" }
                        th scope="col" { "Connection" }
                        th scope="col" aria-sort=[sorted(Sort::LastSeen)] {
                            a href=(q.with("/fleet", &[("sort", Some("last_seen"))])) { "Health, last seen" }
                        }
                        th scope="col" { "Agent" }
                        th scope="col" { "Architecture" }
                        th scope="col" { "MQTT" }
                        th scope="col" { "Versions (installed, serving)" }
                        th scope="col" { "Trust root" }
                    }
                }
                tbody {
                    @for r in rows {
                        @let d = &r.device;
                        @let h = r.health.as_ref().and_then(|h| h.health.as_ref());
                        tr {
                            td {
                                a href=(format!("/fleet/{}", d.id)) { (d.hostname) }
                                br; code.muted title=(d.id) { (layout::short(&d.id)) }
                            }
                            td { @for (k, v) in &d.labels { span.badge { (k) "=" (v) } " " } }
                            td {
                                @if d.connected {
                                    span.status.ready { "connected" }
                                } @else {
                                    span.status.archived { "disconnected" }
                                    @if let Some(t) = d.last_seen { br; span.muted { "last seen " (layout::when(t)) } }
                                }
                            }
                            td { (health_status(r.health.as_ref())) }
                            td { @match h { Some(h) => { (h.agent_version) }, None => { span.muted { "unknown" } } } }
                            td { @match h.and_then(|h| h.arch.as_deref()) { Some(a) => { code { (a) } }, None => { span.muted { "unknown" } } } }
                            td { (mqtt_label(h.and_then(|h| h.mqtt_protocol))) }
                            td {
                                @for rep in &r.reports { (report(rep)) br; }
                                @if let Some(h) = h {
                                    @for s in &h.serving { span.muted { "serving " (s) } br; }
                                }
                                @if r.reports.is_empty() && h.is_none_or(|h| h.serving.is_empty()) { span.muted { "none" } }
                            }
                            td { @match d.trust_root_version { Some(v) => { "v" (v) }, None => span.muted { "unknown" } } }
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

    fn row(host: &str, connected: bool, last_seen: Option<i64>, site: &str) -> Row {
        Row {
            device: Device {
                id: format!("dev_{host}"),
                tenant: "default".into(),
                hostname: host.into(),
                labels: [("site".to_string(), site.to_string())].into(),
                created_at: 0,
                revoked_at: None,
                last_seen,
                connected,
                trust_root_version: None,
                trust_root_expires_at: None,
            },
            health: None,
            reports: vec![],
        }
    }

    fn hosts(rows: &[Row]) -> Vec<&str> {
        rows.iter().map(|r| r.device.hostname.as_str()).collect()
    }

    #[test]
    fn filters_and_sorts_parse_from_the_query() {
        let q = ListQuery::parse(Some(
            "label=site%3Dberlin&label=tier=edge&state=connected&model=fraud&sort=last_seen",
        ));
        let f = Filter::parse(&q).unwrap();
        assert_eq!(
            f.labels,
            vec![
                ("site".to_string(), "berlin".to_string()),
                ("tier".to_string(), "edge".to_string())
            ]
        );
        assert_eq!(f.connected, Some(true));
        assert_eq!(f.model.as_deref(), Some("fraud"));
        assert_eq!(Sort::parse(q.get("sort")).unwrap(), Sort::LastSeen);
        assert_eq!(Sort::parse(None).unwrap(), Sort::Host);
        assert!(Sort::parse(Some("age")).is_err());
        assert!(Filter::parse(&ListQuery::parse(Some("label=berlin"))).is_err());
        assert!(Filter::parse(&ListQuery::parse(Some("state=up"))).is_err());
    }

    #[test]
    fn last_seen_puts_connected_devices_first_then_the_most_recent() {
        let mut late = row("c", false, Some(50), "berlin");
        late.health = Some(HealthView {
            status: "offline".into(),
            received_at_ms: 90_000,
            health: None,
        });
        let rows = vec![
            row("b", false, Some(80), "berlin"),
            late,
            row("a", false, None, "berlin"),
            row("d", true, Some(10), "oslo"),
        ];
        let f = Filter::default();
        assert_eq!(
            hosts(&select(rows.clone(), &f, Sort::Host)),
            ["a", "b", "c", "d"]
        );
        // c was heard of over MQTT (90 s) after b over QUIC (80 s).
        assert_eq!(
            hosts(&select(rows.clone(), &f, Sort::LastSeen)),
            ["d", "c", "b", "a"]
        );
        let oslo = Filter {
            labels: vec![("site".into(), "oslo".into())],
            ..Default::default()
        };
        assert_eq!(hosts(&select(rows.clone(), &oslo, Sort::Host)), ["d"]);
        let offline = Filter {
            connected: Some(false),
            ..Default::default()
        };
        assert_eq!(hosts(&select(rows, &offline, Sort::Host)), ["a", "b", "c"]);
    }

    #[test]
    fn a_model_runs_where_it_is_active_or_health_serves_it() {
        let mut a = row("a", true, None, "berlin");
        a.reports.push(DeviceModelReport {
            device: "dev_a".into(),
            model: "fraud".into(),
            version: 2,
            state: "active".into(),
            detail: String::new(),
            updated_at: 0,
        });
        let mut b = row("b", true, None, "berlin");
        b.reports.push(DeviceModelReport {
            state: "failed".into(),
            ..a.reports[0].clone()
        });
        let mut c = row("c", true, None, "berlin");
        let health = serde_json::json!({
            "schema": 1, "tenant": "default", "device": "dev_c", "status": "online",
            "at_ms": 1, "agent_version": "0.1.0", "serving": ["fraud@3/champion"],
            "arch": "aarch64-linux"
        });
        c.health = Some(HealthView::from(DeviceHealth {
            device: "dev_c".into(),
            status: "online".into(),
            received_at_ms: 1,
            health,
        }));
        assert_eq!(
            c.health
                .as_ref()
                .and_then(|h| h.health.as_ref())
                .and_then(|h| h.arch.as_deref()),
            Some("aarch64-linux")
        );
        let f = Filter {
            model: Some("fraud".into()),
            ..Default::default()
        };
        assert_eq!(
            hosts(&select(vec![a.clone(), b, c.clone()], &f, Sort::Host)),
            ["a", "c"]
        );
        let frau = Filter {
            model: Some("frau".into()),
            ..Default::default()
        };
        assert!(select(vec![a, c], &frau, Sort::Host).is_empty());
    }
}
