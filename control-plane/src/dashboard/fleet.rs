//! `/fleet`: the tenant's devices with their labels, whether they are
//! connected, what their agent last said in its health message (online or
//! offline, agent version, architecture, MQTT protocol, what it serves),
//! the versions they reported installing over QUIC and the trust-root
//! version they hold; filtered by label (`label=site=berlin`, repeatable),
//! connection state and model running (`model=fraud`), sorted by host or
//! last seen (`sort=host|last_seen`), in pages. Read through
//! `fleet::service` and `telemetry::service` and the REST DTOs, as
//! `GET /api/v1/fleet/devices` and `GET /api/v1/devices` do: first every
//! device's small sort and filter keys, then the full rows (health
//! message, reports) of the page shown only.

use super::error::PageResult;
use super::layout::{self, Section};
use super::list::ListQuery;
use super::session::Page;
use super::FleetLink;
use crate::action::Action;
use crate::api::types::{Device, DeviceHealth};
use crate::api::{ApiError, AppState};
use crate::fleet::{api::device_dto, service};
use crate::registry::Caller;
use crate::rollout_driver::RolloutDriver;
use crate::store::device_index::{DeviceKey, DeviceOrder, DevicePageQuery};
use crate::store::fleet::{labels_from_string, Device as DbDevice, DeviceModelReport};
use crate::store::telemetry::HealthRow;
use crate::telemetry::service as telemetry;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use ferry_protocol::telemetry::Health;
use maud::{html, Markup};
use std::collections::{HashMap, HashSet};

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

impl From<HealthRow> for HealthView {
    fn from(h: HealthRow) -> Self {
        HealthView {
            health: serde_json::from_str::<Health>(&h.payload).ok(),
            status: h.status,
            received_at_ms: h.received_at_ms,
        }
    }
}

/// One device of the page shown.
#[derive(Clone, Debug)]
pub struct Row {
    pub device: Device,
    pub health: Option<HealthView>,
    pub reports: Vec<DeviceModelReport>,
}

/// A device as the listing filters and sorts it, and whether it is
/// connected now.
pub type Listed = (DeviceKey, bool);

/// When the device was last heard of (seconds), over QUIC or MQTT.
fn last_seen(k: &DeviceKey) -> Option<i64> {
    k.last_seen.max(k.health_at_ms.map(|ms| ms / 1000))
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

    /// Whether the listing keeps `(k, connected)`; `running` holds the
    /// devices that run the filter's model, when it names one.
    fn keeps(&self, (k, connected): &Listed, running: Option<&HashSet<String>>) -> bool {
        self.connected.is_none_or(|c| *connected == c)
            && running.is_none_or(|r| r.contains(&k.id))
            && (self.labels.is_empty() || {
                let labels = labels_from_string(&k.labels);
                self.labels
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|x| x == v))
            })
    }
}

/// The devices `f` keeps, in `sort`'s order. `running`: the devices that
/// run `f.model` (ignored when it names none).
pub fn select(
    keys: Vec<Listed>,
    f: &Filter,
    sort: Sort,
    running: Option<&HashSet<String>>,
) -> Vec<Listed> {
    let running = f.model.as_ref().and(running);
    let mut keys: Vec<Listed> = keys.into_iter().filter(|k| f.keeps(k, running)).collect();
    let by_host =
        |a: &Listed, b: &Listed| a.0.hostname.cmp(&b.0.hostname).then(a.0.id.cmp(&b.0.id));
    match sort {
        Sort::Host => keys.sort_by(by_host),
        Sort::LastSeen => keys.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then(last_seen(&b.0).cmp(&last_seen(&a.0)))
                .then(by_host(a, b))
        }),
    }
    keys
}

/// The devices that run `model`: an active report of it, or health
/// naming it.
async fn running(
    st: &AppState,
    driver: &RolloutDriver,
    caller: &Caller,
    model: &str,
) -> PageResult<HashSet<String>> {
    let mut ids: HashSet<String> = service::devices_with_active(&driver.fleet, caller, model)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .collect();
    ids.extend(
        telemetry::devices_serving(&st.store, caller, model)
            .await
            .map_err(ApiError::from)?,
    );
    Ok(ids)
}

/// The rows of the devices `ids`, in that order, with health and reports.
async fn rows(
    st: &AppState,
    driver: &RolloutDriver,
    caller: &Caller,
    ids: &[String],
) -> PageResult<Vec<Row>> {
    let fleet = &driver.fleet;
    let mut devices: HashMap<String, (DbDevice, bool)> = service::devices_by_id(fleet, caller, ids)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|(d, c)| (d.id.clone(), (d, c)))
        .collect();
    let mut health: HashMap<String, HealthView> =
        telemetry::device_health_of_each(&st.store, caller, ids)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|h| (h.device.clone(), HealthView::from(h)))
            .collect();
    let mut reports: HashMap<String, Vec<DeviceModelReport>> = HashMap::new();
    for r in service::device_reports_of_each(fleet, caller, ids)
        .await
        .map_err(ApiError::from)?
    {
        reports.entry(r.device.clone()).or_default().push(r);
    }
    // A device revoked between the two reads is left out.
    Ok(ids
        .iter()
        .filter_map(|id| {
            let (d, connected) = devices.remove(id)?;
            Some(Row {
                health: health.remove(id),
                reports: reports.remove(id).unwrap_or_default(),
                device: device_dto(fleet, d, connected),
            })
        })
        .collect())
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
    let Some(driver) = &link.0 else {
        return Ok(
            layout::page(&pg.chrome(), Section::Fleet, "Fleet", layout::no_fleet()).into_response(),
        );
    };
    let caller = pg.auth.caller();
    let start = ((page_no - 1) as usize).saturating_mul(PAGE_SIZE);
    let (total, ids) = if filter.model.is_none() {
        // Labels, connection (session leases) and both orders are columns:
        // the database filters, sorts and pages, and only the page's ids
        // come back.
        let q = DevicePageQuery {
            labels: filter.labels.clone(),
            connected: filter.connected,
            order: match sort {
                Sort::Host => DeviceOrder::Host,
                Sort::LastSeen => DeviceOrder::LastSeen,
            },
        };
        let (total, ids) =
            service::device_page(&driver.fleet, &caller, &q, start as i64, PAGE_SIZE as i64)
                .await
                .map_err(ApiError::from)?;
        (usize::try_from(total).unwrap_or(0), ids)
    } else {
        // What a device runs is not a column (reports and health messages
        // both say it): sort, filter and page on every device's small keys.
        let keys = service::device_keys(&driver.fleet, &caller, sort == Sort::LastSeen)
            .await
            .map_err(ApiError::from)?;
        let run = match &filter.model {
            Some(m) => Some(running(&st, driver, &caller, m).await?),
            None => None,
        };
        let listed = select(keys, &filter, sort, run.as_ref());
        let total = listed.len();
        let ids = listed
            .into_iter()
            .skip(start)
            .take(PAGE_SIZE)
            .map(|(k, _)| k.id)
            .collect();
        (total, ids)
    };
    let shown = rows(&st, driver, &caller, &ids).await?;
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

    fn key(host: &str, connected: bool, last_seen: Option<i64>, site: &str) -> Listed {
        (
            DeviceKey {
                id: format!("dev_{host}"),
                hostname: host.into(),
                labels: format!(r#"{{"site":"{site}"}}"#),
                last_seen,
                health_at_ms: None,
                session_until: None,
            },
            connected,
        )
    }

    fn hosts(keys: &[Listed]) -> Vec<&str> {
        keys.iter().map(|k| k.0.hostname.as_str()).collect()
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
        let mut late = key("c", false, Some(50), "berlin");
        late.0.health_at_ms = Some(90_000);
        let keys = vec![
            key("b", false, Some(80), "berlin"),
            late,
            key("a", false, None, "berlin"),
            key("d", true, Some(10), "oslo"),
        ];
        let f = Filter::default();
        assert_eq!(
            hosts(&select(keys.clone(), &f, Sort::Host, None)),
            ["a", "b", "c", "d"]
        );
        // c was heard of over MQTT (90 s) after b over QUIC (80 s).
        assert_eq!(
            hosts(&select(keys.clone(), &f, Sort::LastSeen, None)),
            ["d", "c", "b", "a"]
        );
        let oslo = Filter {
            labels: vec![("site".into(), "oslo".into())],
            ..Default::default()
        };
        assert_eq!(hosts(&select(keys.clone(), &oslo, Sort::Host, None)), ["d"]);
        let offline = Filter {
            connected: Some(false),
            ..Default::default()
        };
        assert_eq!(
            hosts(&select(keys, &offline, Sort::Host, None)),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn a_model_filter_keeps_the_devices_that_run_it() {
        let keys = vec![
            key("a", true, None, "berlin"),
            key("b", true, None, "berlin"),
            key("c", true, None, "berlin"),
        ];
        let running: HashSet<String> = ["dev_a".to_string(), "dev_c".to_string()].into();
        let f = Filter {
            model: Some("fraud".into()),
            ..Default::default()
        };
        assert_eq!(
            hosts(&select(keys.clone(), &f, Sort::Host, Some(&running))),
            ["a", "c"]
        );
        // Without a model in the filter, the set is not consulted.
        assert_eq!(
            hosts(&select(
                keys,
                &Filter::default(),
                Sort::Host,
                Some(&running)
            )),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn a_health_row_reads_as_its_message() {
        let payload = serde_json::json!({
            "schema": 1, "tenant": "default", "device": "dev_c", "status": "online",
            "at_ms": 1, "agent_version": "0.1.0", "serving": ["fraud@3/champion"],
            "arch": "aarch64-linux"
        });
        let h = HealthView::from(HealthRow {
            device: "dev_c".into(),
            status: "online".into(),
            payload: payload.to_string(),
            received_at_ms: 1,
        });
        let msg = h.health.expect("parses");
        assert_eq!(msg.arch.as_deref(), Some("aarch64-linux"));
        assert_eq!(msg.serving, ["fraud@3/champion"]);
    }
}
