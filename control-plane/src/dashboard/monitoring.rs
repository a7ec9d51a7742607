//! `/models/{name}/monitoring`: a model's health over a time range (1 h …
//! 30 d), fleet-wide or for one device, one version or all: requests/s,
//! error rate, p50/p99 latency, accuracy from feedback labels, max PSI
//! against the policy's threshold, drifted rows (uPlot charts drawn by
//! `monitoring.js` from the data embedded in the page), each version and
//! variant side by side (champion against challenger), and the
//! per-feature PSI heat map. Read through `telemetry::monitoring`, as
//! `GET /api/v1/models/{name}/monitoring` does; the charts refresh when
//! the change feed says the model's roll-ups moved.

use super::error::PageResult;
use super::layout::{self, Section};
use super::session::Page;
use crate::action::Action;
use crate::api::query::parse_name;
use crate::api::types::{FeatureHeat, Monitoring, MonitoringSeries};
use crate::api::{ApiError, AppState};
use crate::store::Filters;
use crate::telemetry::monitoring::{self, MonitoringQuery, Range};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped};

/// Columns of the heat map, whatever the range (cells are the largest PSI
/// of the heat buckets they cover).
const HEAT_COLUMNS: usize = 24;

/// The charts: (metric in the data, title, unit shown after values).
const CHARTS: &[(&str, &str)] = &[
    ("requests_per_s", "Requests per second"),
    ("error_rate", "Error rate"),
    ("latency", "Latency p50 and p99 (ms)"),
    ("accuracy", "Accuracy (feedback labels)"),
    ("max_psi", "Largest PSI"),
    ("drifted_rows", "Rows in drifted windows"),
];

/// `GET /models/{name}/monitoring`.
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let name = parse_name(&name)?;
    pg.auth.authorize(Action::MetricSeries, &name).await?;
    let mq = MonitoringQuery::parse(raw.as_deref()).map_err(ApiError::from)?;
    let tenant = &pg.auth.p.tenant;
    // The model must exist (404 otherwise), and its versions fill the filter.
    st.store.model(tenant, &name).await?;
    let all = Filters {
        include_archived: true,
        ..Default::default()
    };
    let versions: Vec<i64> = st
        .store
        .list_versions(tenant, &name, &all, None, 200)
        .await?
        .into_iter()
        .map(|v| v.version)
        .collect();
    let m = monitoring::monitoring(&st.store, &pg.auth.caller(), &name, &mq)
        .await
        .map_err(ApiError::from)?;
    // `<` escaped so no string in the data can close the script element.
    let data = serde_json::to_string(&m)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .replace('<', "\\u003c");
    let body = html! {
        p {
            a href={ "/models/" (name) } { "← " (name) }
            " · " (describe(&mq)) " · points of " (span(m.bucket_ms)) " from the " (m.resolution) " roll-ups"
        }
        (filters(&name, &mq, &versions))
        div #monitoring data-live="telemetry" data-model=(name) {
            (tables(&m))
            @if m.series.is_empty() {
                p #no-telemetry { "No telemetry for this selection yet: devices send a window per minute while they serve." }
            } @else {
                div.charts {
                    @for (metric, title) in CHARTS {
                        figure.chart {
                            figcaption #{ "cap-" (metric) } { (title) }
                            div.plot data-metric=(metric) role="img" aria-labelledby={ "cap-" (metric) } {}
                        }
                    }
                }
            }
        }
        script #monitoring-data type="application/json" { (PreEscaped(data)) }
    };
    Ok(layout::page_with(
        &pg.chrome(),
        Section::Models,
        &format!("Monitoring: {name}"),
        &["uPlot.min.css"],
        &["uPlot.iife.min.js", "monitoring.js"],
        body,
    )
    .into_response())
}

fn span(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{} h", ms / 3_600_000)
    } else {
        format!("{} min", ms / 60_000)
    }
}

fn describe(q: &MonitoringQuery) -> String {
    let who = match &q.device {
        Some(d) => format!("device {}", layout::short(d)),
        None => "the whole fleet".to_string(),
    };
    let which = match q.version {
        Some(v) => format!("version {v}"),
        None => "every version".to_string(),
    };
    format!("last {}, {who}, {which}", q.range.as_str())
}

fn filters(name: &str, q: &MonitoringQuery, versions: &[i64]) -> Markup {
    html! {
        form.filters role="search" aria-label="Choose what the charts show" method="get" action={ "/models/" (name) "/monitoring" } {
            div.field {
                label for="range" { "Time range" }
                select #range name="range" {
                    @for r in Range::ALL {
                        option value=(r.as_str()) selected[r == q.range] { (r.as_str()) }
                    }
                }
            }
            div.field {
                label for="version" { "Version" }
                select #version name="version" {
                    option value="" selected[q.version.is_none()] { "all" }
                    @for v in versions {
                        option value=(v) selected[q.version == Some(*v)] { "v" (v) }
                    }
                }
            }
            div.field {
                label for="device" { "Device id (empty: whole fleet)" }
                input #device name="device" type="search" value=[q.device.as_deref()];
            }
            div.field { button type="submit" { "Show" } }
        }
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:.2} %", v * 100.0))
}

fn ms(us: Option<f64>) -> String {
    us.map_or_else(|| "–".into(), |v| format!("{:.2} ms", v / 1000.0))
}

/// The series side by side, then the heat map; refreshed with the charts.
fn tables(m: &Monitoring) -> Markup {
    html! {
        div #monitoring-tables {
            @if !m.series.is_empty() {
                table #series-totals {
                    caption { "Each version and variant over the range" }
                    thead {
                        tr {
                            th scope="col" { "Version" }
                            th scope="col" { "Variant" }
                            th scope="col" { "Requests" }
                            th scope="col" { "Error rate" }
                            th scope="col" { "p50" }
                            th scope="col" { "Worst p99" }
                            th scope="col" { "Accuracy (labelled)" }
                            th scope="col" { "Largest PSI" }
                            th scope="col" { "Drifted rows" }
                        }
                    }
                    tbody {
                        @for s in &m.series { (totals_row(s, m.psi_threshold)) }
                    }
                }
            }
            @if !m.features.is_empty() {
                (heat_map(m))
            }
        }
    }
}

fn totals_row(s: &MonitoringSeries, threshold: f64) -> Markup {
    let t = &s.totals;
    html! {
        tr {
            th scope="row" { "v" (s.version) }
            td { (s.variant) }
            td { (t.requests) }
            td { (pct(t.error_rate)) }
            td { (ms(t.latency_p50_us)) }
            td { (ms(t.latency_p99_max_us.map(|v| v as f64))) }
            td { (pct(t.accuracy)) " (" (t.labelled) ")" }
            td {
                @match t.max_psi {
                    Some(p) if p >= threshold => span.status.error { (format!("{p:.3}")) " drift" },
                    Some(p) => { (format!("{p:.3}")) },
                    None => span.muted { "–" },
                }
            }
            td { (t.drifted_rows) }
        }
    }
}

/// Column `c` of `n` covers buckets `[c*len/n, (c+1)*len/n)`.
fn columns(len: usize) -> Vec<(usize, usize)> {
    let n = HEAT_COLUMNS.min(len).max(1);
    (0..n).map(|c| (c * len / n, (c + 1) * len / n)).collect()
}

fn cell_class(psi: f64, threshold: f64) -> &'static str {
    if psi >= threshold {
        "heat h3"
    } else if psi >= threshold / 2.0 {
        "heat h2"
    } else if psi >= threshold / 4.0 {
        "heat h1"
    } else {
        "heat h0"
    }
}

fn heat_map(m: &Monitoring) -> Markup {
    let cols = columns(m.heat_buckets.len());
    let label = |b: i64| {
        let f = if m.heat_bucket_ms >= 3_600_000 {
            "%m-%d %H:00"
        } else {
            "%H:%M"
        };
        chrono::DateTime::from_timestamp_millis(b)
            .map(|d| d.format(f).to_string())
            .unwrap_or_default()
    };
    html! {
        // Focusable: a keyboard can scroll the wide table (axe: scrollable-region-focusable).
        div.heat-wrap tabindex="0" role="region" aria-label="PSI heat map" {
            table #psi-heat {
                caption { "Largest PSI per feature (threshold " (layout::num(m.psi_threshold)) "), UTC" }
                thead {
                    tr {
                        th scope="col" { "Feature" }
                        @for (a, _) in &cols {
                            th scope="col" { (m.heat_buckets.get(*a).map(|b| label(*b)).unwrap_or_default()) }
                        }
                    }
                }
                tbody {
                    @for f in &m.features { (heat_row(f, &cols, m.psi_threshold)) }
                }
            }
        }
    }
}

fn heat_row(f: &FeatureHeat, cols: &[(usize, usize)], threshold: f64) -> Markup {
    html! {
        tr {
            th scope="row" { (f.feature) }
            @for (a, b) in cols {
                @let v = f.psi.get(*a..*b).unwrap_or_default().iter().flatten().fold(None, |m: Option<f64>, x| Some(m.map_or(*x, |m| m.max(*x))));
                @match v {
                    Some(p) => td class=(cell_class(p, threshold)) { (format!("{p:.2}")) },
                    None => td.heat { span.vh { "no data" } },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_columns_cover_every_bucket_once() {
        for len in [1, 5, 24, 60, 720, 1440] {
            let cols = columns(len);
            assert!(cols.len() <= HEAT_COLUMNS);
            assert_eq!(cols[0].0, 0);
            assert_eq!(cols.last().unwrap().1, len);
            for w in cols.windows(2) {
                assert_eq!(w[0].1, w[1].0);
                assert!(w[0].1 > w[0].0);
            }
        }
    }

    /// The heat map's columns come from its own (hourly) buckets, not the
    /// charts' 4-minute points: a day is 24 columns of an hour each, the
    /// last the current hour.
    #[test]
    fn heat_map_columns_follow_the_heat_buckets() {
        let h = 3_600_000;
        let now = 1_000 * h + 90_000;
        let heat_buckets: Vec<i64> = (0..24).map(|i| 977 * h + i * h).collect();
        let mut psi = vec![None; 24];
        psi[0] = Some(0.01);
        psi[23] = Some(0.9);
        let m = Monitoring {
            model: "fraud".into(),
            range: "24h".into(),
            resolution: "minute".into(),
            bucket_ms: 240_000,
            buckets: (0..360).map(|i| now - 86_400_000 + i * 240_000).collect(),
            device: None,
            psi_threshold: 0.2,
            series: Vec::new(),
            heat_bucket_ms: h,
            heat_buckets,
            features: vec![FeatureHeat {
                feature: "amount".into(),
                psi,
            }],
        };
        let html = heat_map(&m).into_string();
        assert_eq!(html.matches("<th scope=\"col\">").count(), 1 + HEAT_COLUMNS);
        assert_eq!(html.matches("<td").count(), HEAT_COLUMNS);
        // 1000 h after the epoch is 16:00 on day 41 (02-11); the last
        // column is that hour, holding the current PSI.
        assert!(html.contains("02-11 16:00"), "{html}");
        assert!(
            html.contains("<td class=\"heat h3\">0.90</td></tr>"),
            "{html}"
        );
        assert!(html.contains("<td class=\"heat h0\">0.01</td>"), "{html}");
    }
}
