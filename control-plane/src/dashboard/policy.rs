//! `/models/{name}/policy`: a model's drift policy (drift, alert rules,
//! the retraining trigger) and the retraining triggers it fired with their
//! webhook delivery, in pages. Read through `telemetry::service` (`policy`,
//! `triggers`), as `GET /api/v1/models/{name}/drift-config` and
//! `GET /api/v1/retrain-triggers` do.
//!
//! Roles that may change the policy get a form `dashboard.js` sends, after
//! a confirmation, to `POST /api/v1/models/{name}/drift-config` (the
//! server validates, authorizes and audits; its refusal is shown as is);
//! others see the policy read-only. The form is made from [`FIELDS`], one
//! row per field of the policy's JSON, whose `data-json` types tell
//! `dashboard.js` how each becomes JSON. The webhook secret is write-only:
//! the page only says whether one is set, and an empty field keeps it.

use super::error::PageResult;
use super::layout::{self, can, Section};
use super::list::ListQuery;
use super::session::Page;
use crate::action::Action;
use crate::api::query::parse_name;
use crate::api::types::Trigger;
use crate::api::{ApiError, AppState};
use crate::telemetry::service;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde_json::{Map, Value};

const PAGE_SIZE: i64 = 20;

/// How a field is edited, and so which `data-json` type it is sent as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A number; empty: the default.
    Number,
    /// Comma-separated names.
    List,
    /// One of these values.
    Choice(&'static [&'static str]),
    /// Text; empty: none.
    Optional,
    /// `class=count` lines; empty: none.
    Counts,
    /// Write-only text (the webhook secret).
    Secret,
}

/// (group, JSON field, label, kind, hint): every field of a drift policy
/// (`telemetry::policy::DriftPolicy`), in the order the form shows them.
const FIELDS: &[(&str, &str, &str, Kind, &str)] = &[
    ("drift", "psi_threshold", "PSI threshold", Kind::Number,
        "A watched feature drifts at or above this PSI (default 0.3)."),
    ("drift", "min_drifted_rows", "Drifted rows needed", Kind::Number,
        "Rows in drifted windows within the lookback before a drift alert (default 100)."),
    ("drift", "features", "Watched features", Kind::List,
        "Comma-separated feature names; empty: all features."),
    ("drift", "aggregation", "Across devices", Kind::Choice(&["any_device", "fleet_fraction"]),
        "any_device: any device's drifted rows count; fleet_fraction: that share of reporting devices must drift."),
    ("drift", "fleet_fraction", "Fleet fraction", Kind::Number,
        "Share of devices, in (0, 1], for fleet_fraction (default 0.5)."),
    ("drift", "lookback_secs", "Lookback (s)", Kind::Number,
        "How far back drifted windows count (default 900)."),
    ("alerts", "error_rate_threshold", "Error rate", Kind::Number,
        "Alert when a window's errors per request reach this, 0 to 1 (default 0.05)."),
    ("alerts", "latency_p99_us_threshold", "p99 latency (µs)", Kind::Number,
        "Alert when a window's p99 latency reaches this; 0: off."),
    ("alerts", "missing_rate_threshold", "Missing-value rate", Kind::Number,
        "Data-quality alert at this missing-value rate, 0 to 1 (default 0.1)."),
    ("alerts", "prediction_shift_threshold", "Prediction shift", Kind::Number,
        "Alert when the class distribution moves this far (total variation, 0 to 1; default 0.3; 0: off)."),
    ("alerts", "prediction_reference", "Expected classes", Kind::Counts,
        "One class=count per line; empty: no prediction-shift alert."),
    ("retrain", "webhook_url", "Webhook URL", Kind::Optional,
        "http(s) URL the retraining trigger posts to; shown by origin only; empty: none."),
    ("retrain", "webhook_secret", "Webhook secret", Kind::Secret,
        "HMAC-SHA256 key of X-Ferry-Signature; write-only: leave empty to keep the stored one."),
    ("retrain", "retrain_schedule", "Schedule (cron, UTC)", Kind::Optional,
        "Five fields, e.g. 0 3 * * 1 for Mondays 03:00; empty: drift-triggered only."),
    ("retrain", "cooldown_secs", "Cooldown (s)", Kind::Number,
        "One drift episode alerts and triggers retraining once per cooldown (default 3600)."),
];

const GROUPS: &[(&str, &str)] = &[
    ("drift", "Drift"),
    ("alerts", "Alert rules"),
    ("retrain", "Retraining trigger"),
];

/// `GET /models/{name}/policy` (`page`: the triggers' page).
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let name = parse_name(&name)?;
    pg.auth.authorize(Action::DriftPolicyShow, &name).await?;
    pg.auth.authorize(Action::TriggerList, &name).await?;
    let caller = pg.auth.caller();
    let view = service::policy(&st.store, &caller, &name)
        .await
        .map_err(ApiError::from)?;
    let q = ListQuery::parse(raw.as_deref());
    let page_no = q.page()?;
    let skip = (page_no - 1) * PAGE_SIZE;
    // One more than the page shows, to know whether a next page exists.
    let list = service::triggers(
        &st.store,
        &caller,
        Some(name.as_str()),
        0,
        skip + PAGE_SIZE + 1,
    )
    .await
    .map_err(ApiError::from)?;
    let mut triggers: Vec<Trigger> = list.triggers.into_iter().skip(skip as usize).collect();
    let more = triggers.len() as i64 > PAGE_SIZE;
    triggers.truncate(PAGE_SIZE as usize);
    let base = format!("/models/{name}/policy");
    let link = |n: i64| {
        let p = n.to_string();
        format!("{}#triggers", q.with(&base, &[("page", Some(p.as_str()))]))
    };
    let prev = (page_no > 1).then(|| link(page_no - 1));
    let next = more.then(|| link(page_no + 1));
    let editable = can(pg.auth.p.role, Action::DriftPolicySet);
    let body = html! {
        p { a href=(format!("/models/{name}")) { "← " (name) } " · " a href=(format!("/alerts?state=all&model={name}")) { "Alerts of " (name) } }
        section #policy .card aria-labelledby="policy-h" {
            h2 #policy-h { "Policy" }
            @if view.default == Some(true) {
                p.hint #policy-default { "No policy was saved for " (name) ": these are the defaults." }
            }
            @if editable { (form(&name, &view.policy)) } @else { (read_only(&view.policy)) }
        }
        (trigger_section(&name, &triggers, prev, next))
    };
    let title = format!("{name}: drift policy and retraining");
    Ok(layout::page(&pg.chrome(), Section::Models, &title, body).into_response())
}

/// A field's value as the form shows it.
fn shown(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(v) => v.to_string(),
    }
}

fn secret_set(p: &Map<String, Value>) -> bool {
    p.get("webhook_secret_set").and_then(Value::as_bool) == Some(true)
}

fn form(name: &str, p: &Map<String, Value>) -> Markup {
    html! {
        form #policy-form
            data-api=(format!("/api/v1/models/{name}/drift-config"))
            data-confirm=(format!("Save the drift policy of {name}? It applies to the next telemetry window."))
            data-done=(format!("The drift policy of {name} is saved."))
            data-refresh="#policy" {
            @for (group, legend) in GROUPS {
                fieldset.group {
                    legend { (legend) }
                    @for (g, field, label, kind, hint) in FIELDS {
                        @if g == group { (input(p, field, label, *kind, hint)) }
                    }
                }
            }
            div.field { button #policy-save type="submit" { "Save policy" } }
        }
    }
}

fn input(p: &Map<String, Value>, field: &str, label: &str, kind: Kind, hint: &str) -> Markup {
    let id = format!("p-{field}");
    let hint_id = format!("{id}-hint");
    let value = shown(p.get(field));
    html! {
        div.field.policy {
            label for=(id) { (label) }
            @match kind {
                Kind::Number => {
                    input id=(id) name=(field) type="number" step="any" value=(value)
                        data-json="number" aria-describedby=(hint_id);
                }
                Kind::List => {
                    input id=(id) name=(field) value=(value) data-json="list"
                        aria-describedby=(hint_id);
                }
                Kind::Optional => {
                    input id=(id) name=(field) value=(value) data-json="opt"
                        aria-describedby=(hint_id);
                }
                Kind::Choice(options) => {
                    select id=(id) name=(field) aria-describedby=(hint_id) {
                        @for o in options { option value=(o) selected[value == *o] { (o) } }
                    }
                }
                Kind::Counts => {
                    textarea id=(id) name=(field) rows="3" data-json="map"
                        aria-describedby=(hint_id) { (value) }
                }
                Kind::Secret => {
                    input id=(id) name=(field) type="password" autocomplete="new-password"
                        data-json="keep" aria-describedby=(format!("secret-state {hint_id}"));
                    " "
                    span #secret-state .muted {
                        "Stored: " @if secret_set(p) { "set" } @else { "not set" }
                    }
                    @if secret_set(p) {
                        span.check {
                            input #p-secret-clear type="checkbox" name=(field) data-json="clear";
                            label for="p-secret-clear" { "Remove the stored secret" }
                        }
                    }
                }
            }
            p.hint id=(hint_id) { (hint) }
        }
    }
}

fn read_only(p: &Map<String, Value>) -> Markup {
    html! {
        p.hint { "Your role may read this policy; operators and above change it." }
        @for (group, legend) in GROUPS {
            h3 { (legend) }
            dl.props {
                @for (g, field, label, kind, _) in FIELDS {
                    @if g == group {
                        dt { (label) }
                        dd id=(format!("p-{field}")) {
                            @if *kind == Kind::Secret {
                                @if secret_set(p) { "set" } @else { "not set" }
                            } @else {
                                @let v = shown(p.get(*field));
                                @if v.is_empty() { span.muted { "none" } } @else { (v) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A trigger's webhook delivery, in words.
fn delivery(t: &Trigger) -> Markup {
    html! {
        @if t.delivered {
            span.status.ok { "delivered" } " after " (t.attempts) " attempt(s)"
        } @else if t.attempts > 0 {
            span.status.error { "not delivered" } " after " (t.attempts) " attempt(s)"
            @if !t.last_error.is_empty() { br; span.muted { (t.last_error) } }
        } @else {
            span.muted { "not sent (no webhook configured, or delivery under way)" }
        }
    }
}

fn trigger_section(
    name: &str,
    triggers: &[Trigger],
    prev: Option<String>,
    next: Option<String>,
) -> Markup {
    html! {
        section #triggers aria-labelledby="triggers-h" {
            h2 #triggers-h { "Retraining triggers" }
            @if triggers.is_empty() {
                p #no-triggers { "No retraining trigger has fired for " (name) "." }
            } @else {
                table #trigger-list {
                    caption.vh { "Retraining triggers of " (name) ", oldest first" }
                    thead {
                        tr {
                            th scope="col" { "Trigger" }
                            th scope="col" { "Version" }
                            th scope="col" { "Reason" }
                            th scope="col" { "Fired" }
                            th scope="col" { "Alert" }
                            th scope="col" { "Webhook delivery" }
                        }
                    }
                    tbody {
                        @for t in triggers {
                            tr id=(format!("trigger-{}", t.id)) {
                                td { code title=(t.id) { (layout::short(&t.id)) } }
                                td { (t.version) }
                                td { span.badge { (t.reason) } }
                                td { (layout::when(t.fired_at_ms / 1000)) }
                                td {
                                    @if t.alert_id.is_empty() { span.muted { "none" } }
                                    @else {
                                        a href=(format!("/alerts?state=all&model={name}#alert-{}", t.alert_id)) {
                                            code { (layout::short(&t.alert_id)) }
                                        }
                                    }
                                }
                                td { (delivery(t)) }
                            }
                        }
                    }
                }
            }
            (layout::pager(prev, next, "Pages of retraining triggers"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::policy::DriftPolicy;

    /// The form covers the whole policy: a field added to `DriftPolicy`
    /// must get a row here.
    #[test]
    fn every_policy_field_has_a_form_field() {
        let p = DriftPolicy {
            webhook_url: Some("https://ci.example".into()),
            retrain_schedule: Some("0 3 * * 1".into()),
            prediction_reference: Some([("0".to_string(), 1u64)].into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&p).unwrap_or_default();
        let mut keys: Vec<&str> = json
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.push("webhook_secret");
        keys.sort_unstable();
        let mut fields: Vec<&str> = FIELDS.iter().map(|f| f.1).collect();
        fields.sort_unstable();
        assert_eq!(keys, fields);
    }

    #[test]
    fn a_triggers_delivery_in_words() {
        let t = |delivered: bool, attempts: i64, last_error: &str| Trigger {
            id: "trg_1".into(),
            model: "m".into(),
            version: 1,
            reason: "drift".into(),
            alert_id: String::new(),
            fired_at_ms: 0,
            payload: Value::Null,
            delivered,
            attempts,
            last_error: last_error.into(),
        };
        let html = delivery(&t(true, 2, "")).into_string();
        assert!(
            html.contains("delivered</span> after 2 attempt(s)"),
            "{html}"
        );
        let html = delivery(&t(false, 5, "HTTP 500")).into_string();
        assert!(
            html.contains("not delivered") && html.contains("HTTP 500"),
            "{html}"
        );
        assert!(delivery(&t(false, 0, ""))
            .into_string()
            .contains("not sent"));
    }

    #[test]
    fn values_are_shown_as_the_form_sends_them() {
        let p = DriftPolicy {
            features: vec!["a".into(), "b".into()],
            prediction_reference: Some([("0".to_string(), 3u64), ("1".to_string(), 1)].into()),
            webhook_secret: Some("k".into()),
            ..Default::default()
        };
        let Value::Object(m) = p.public_json() else {
            panic!("not an object")
        };
        assert_eq!(shown(m.get("features")), "a, b");
        assert_eq!(shown(m.get("prediction_reference")), "0=3\n1=1");
        assert_eq!(shown(m.get("psi_threshold")), "0.3");
        assert_eq!(shown(m.get("webhook_url")), "");
        assert!(secret_set(&m));
        let html = form("fraud", &m).into_string();
        assert!(html.contains(r#"data-api="/api/v1/models/fraud/drift-config""#));
        assert!(
            !html.contains(">k<") && !html.contains(r#"value="k""#),
            "{html}"
        );
        let html = read_only(&m).into_string();
        assert!(!html.contains("<form") && html.contains(">set<"), "{html}");
    }
}
