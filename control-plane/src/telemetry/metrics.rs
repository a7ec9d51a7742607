//! `GET /metrics`: the telemetry ingest's counters in the Prometheus text
//! format (no tenant data: totals over all tenants), including the
//! messages refused because no enrolled device signed them.

use super::engine::Engine;
use axum::routing::get;
use axum::Router;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The counters as Prometheus text.
pub fn render(engine: &Engine) -> String {
    let c = &engine.counters;
    let mut out = String::new();
    for (name, help, v) in [
        (
            "ferry_telemetry_ingested_total",
            "Telemetry messages stored.",
            &c.ingested,
        ),
        (
            "ferry_telemetry_duplicates_total",
            "Telemetry messages already stored (QoS 1 redeliveries).",
            &c.duplicates,
        ),
        (
            "ferry_telemetry_refused_total",
            "Telemetry messages refused, for any reason.",
            &c.refused,
        ),
        (
            "ferry_telemetry_unauthenticated_total",
            "Telemetry messages refused: not signed by the enrolled, unrevoked device their topic names.",
            &c.unauthenticated,
        ),
        (
            "ferry_telemetry_rate_limited_total",
            "Telemetry messages refused: over the per-device cap per minute.",
            &c.rate_limited,
        ),
        (
            "ferry_telemetry_alerts_total",
            "Alerts raised.",
            &c.alerts,
        ),
        (
            "ferry_telemetry_triggers_total",
            "Retraining triggers fired.",
            &c.triggers,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
    out
}

/// The route, when telemetry runs (an empty router otherwise).
pub fn routes(engine: Option<Arc<Engine>>) -> Router {
    match engine {
        Some(engine) => Router::new().route(
            "/metrics",
            get(move || {
                let engine = engine.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        render(&engine),
                    )
                }
            }),
        ),
        None => Router::new(),
    }
}
