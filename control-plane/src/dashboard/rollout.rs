//! `/rollouts/{id}`: one rollout's phase (with the gate report that paused
//! or aborted it), progress per wave and device, each gate of the last
//! verdict, the policy document, and the operator commands the phase and
//! the caller's role allow (approve, pause, resume, abort): forms
//! `dashboard.js` confirms and sends to the REST endpoints.
//!
//! The progress section is also served alone (`/rollouts/{id}/progress`)
//! and reloads itself when the change feed names a rollout or device
//! (and every 10 s) while the rollout runs. While the rollout waits for a
//! person (awaiting approval, paused) only a change of the rollout itself
//! reloads it, so the buttons hold still.

use super::error::PageResult;
use super::layout::{self, can, Section};
use super::rollouts::{phase_label, selector};
use super::session::Page;
use super::FleetLink;
use crate::action::Action;
use crate::api::rollouts::detail;
use crate::api::types::{RolloutDetail, RolloutDevice};
use crate::api::ApiError;
use crate::auth::Role;
use crate::rollout::engine::{AbortCause, Hold, Phase, RolloutState};
use crate::rollout::gates::GateReport;
use crate::rollout_driver::service;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};

/// What a page needs: the DTO (shared with REST) and the typed state.
async fn load(
    pg: &Page,
    link: FleetLink,
    id: &str,
) -> PageResult<Option<(RolloutDetail, RolloutState)>> {
    pg.auth.authorize(Action::RolloutShow, id).await?;
    let Some(driver) = link.0 else {
        return Ok(None);
    };
    let v = service::show(&driver, &pg.auth.caller(), id)
        .await
        .map_err(ApiError::from)?;
    Ok(Some((detail(&v.row, &v.state), v.state)))
}

/// `GET /rollouts/{id}`.
pub async fn page(
    pg: Page,
    Extension(link): Extension<FleetLink>,
    Path(id): Path<String>,
) -> PageResult<Response> {
    let Some((d, s)) = load(&pg, link, &id).await? else {
        return Ok(layout::page(
            &pg.chrome(),
            Section::Rollouts,
            "Rollout",
            layout::no_fleet(),
        )
        .into_response());
    };
    let r = &d.rollout;
    let title = format!("Rollout of {} v{}", r.model, r.version);
    let body = html! {
        dl.props {
            dt { "Rollout" } dd { code { (r.id) } }
            dt { "Model" } dd { a href=(format!("/models/{}", r.model)) { (r.model) } " version " (r.version) }
            dt { "Selector" } dd { (selector(&r.selector)) }
            dt { "Policy" } dd {
                @if r.policy.is_empty() { "one-off or defaults" } @else { (r.policy) " v" (r.policy_version) }
            }
            dt { "Created" } dd { (layout::when(r.created_at)) " by " (r.created_by) }
        }
        (progress_section(&d, &s, pg.auth.p.role))
        section aria-labelledby="policy-h" {
            h2 #policy-h { "Policy document" }
            @if d.policy_document.is_empty() {
                p { "The defaults (docs/rollouts.md)." }
            } @else {
                pre.policy tabindex="0" aria-label="Policy document" { (d.policy_document) }
            }
        }
    };
    Ok(layout::page(&pg.chrome(), Section::Rollouts, &title, body).into_response())
}

/// `GET /rollouts/{id}/progress`: the progress section alone, for htmx.
pub async fn progress(
    pg: Page,
    Extension(link): Extension<FleetLink>,
    Path(id): Path<String>,
) -> PageResult<Response> {
    let Some((d, s)) = load(&pg, link, &id).await? else {
        return Ok(layout::no_fleet().into_response());
    };
    Ok(progress_section(&d, &s, pg.auth.p.role).into_response())
}

fn progress_section(d: &RolloutDetail, s: &RolloutState, role: Role) -> Markup {
    let r = &d.rollout;
    // Running: every change of the rollout or a device reloads the section
    // (the change feed, within a second), with a slow poll behind it for
    // changes another replica made. Held for a person: only the rollout's
    // own changes (a command), so the buttons hold still.
    let running = matches!(s.phase, Phase::Running);
    let (live, trigger) = if running {
        (
            "rollout device",
            "ferry:rollout from:body, ferry:device from:body, every 10s",
        )
    } else {
        ("rollout", "ferry:rollout from:body, every 30s")
    };
    let url = format!("/rollouts/{}/progress", r.id);
    html! {
        section #progress aria-labelledby="progress-h" data-live=(live)
            hx-get=(url) hx-trigger=(trigger) hx-swap="outerHTML" {
            h2 #progress-h { "Progress" }
            p #phase {
                "Phase: " strong class=(format!("status {}", r.phase)) { (phase_label(&r.phase)) }
                " · wave " (r.wave) " · " (r.devices) " devices match, "
                (r.assigned) " given the version, " (r.active) " active"
            }
            (phase_detail(&s.phase))
            (commands(&r.id, &s.phase, role))
            (gates(s))
            @for w in &d.waves {
                (devices(&format!("Wave {}", w.wave), &w.devices))
            }
            @if !d.waiting.is_empty() {
                (devices("Not given the version yet", &d.waiting))
            }
        }
    }
}

fn report(r: &GateReport) -> Markup {
    let verdict = serde_json::to_value(r.verdict)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    html! {
        tr {
            td { code { (r.gate) } }
            td { span class=(format!("status verdict-{verdict}")) { (verdict.replace('_', " ")) } }
            td.detail { (r.detail) }
        }
    }
}

fn phase_detail(p: &Phase) -> Markup {
    let (what, gate) = match p {
        Phase::Paused {
            reason: Hold::Operator,
        } => ("Paused by an operator.", None),
        Phase::Paused {
            reason: Hold::Gate { report },
        } => ("Paused: a gate failed.", Some(report)),
        Phase::Aborted {
            cause: AbortCause::Operator,
        } => ("Aborted by an operator; devices went back.", None),
        Phase::Aborted {
            cause: AbortCause::Gate { report },
        } => (
            "Aborted: a gate failed and the policy rolled back.",
            Some(report),
        ),
        Phase::AwaitingApproval => ("The wave passed; the next waits for approval.", None),
        Phase::Running | Phase::Finished => return html! {},
    };
    html! {
        div #cause .card {
            p { (what) }
            @if let Some(g) = gate {
                table.compact {
                    caption { "The gate report" }
                    thead { tr { th scope="col" { "Gate" } th scope="col" { "Verdict" } th scope="col" { "Detail" } } }
                    tbody { (report(g)) }
                }
            }
        }
    }
}

/// The commands the phase allows and the role may use.
fn commands(id: &str, p: &Phase, role: Role) -> Markup {
    let mut shown: Vec<(&str, &str, &str, Action)> = Vec::new();
    if matches!(p, Phase::AwaitingApproval) {
        shown.push((
            "approve",
            "Approve",
            "Approve the next wave of this rollout?",
            Action::RolloutApprove,
        ));
    }
    if matches!(p, Phase::Running | Phase::AwaitingApproval) {
        shown.push((
            "pause",
            "Pause",
            "Pause this rollout?",
            Action::RolloutPause,
        ));
    }
    if matches!(p, Phase::Paused { .. }) {
        shown.push((
            "resume",
            "Resume",
            "Resume this rollout? The wave's bake starts over.",
            Action::RolloutResume,
        ));
    }
    if !p.is_terminal() {
        shown.push((
            "abort",
            "Abort",
            "Abort this rollout? Every device given the version goes back to what it ran before.",
            Action::RolloutAbort,
        ));
    }
    shown.retain(|(.., a)| can(role, *a));
    html! {
        @if !shown.is_empty() {
            div #commands .buttons {
                @for (verb, label, confirm, _) in &shown {
                    form.inline
                        data-api=(format!("/api/v1/rollouts/{id}/{verb}"))
                        data-confirm=(confirm)
                        data-done=(format!("{label}: done."))
                        data-refresh="#progress" {
                        button id=(format!("{verb}-button")) type="submit"
                            .secondary[*verb == "abort" || *verb == "pause"] { (label) }
                    }
                }
            }
        }
    }
}

fn gates(s: &RolloutState) -> Markup {
    html! {
        @if let Some(v) = &s.last_verdict {
            table.compact #gates {
                caption {
                    "Last verdict, wave " (v.wave + 1) ": " (v.active_devices) " active of "
                    (v.min_devices) " needed"
                }
                thead { tr { th scope="col" { "Gate" } th scope="col" { "Verdict" } th scope="col" { "Value against limit" } } }
                tbody {
                    (report(&v.install))
                    @for g in &v.model { (report(g)) }
                }
            }
        }
    }
}

fn devices(caption: &str, devs: &[RolloutDevice]) -> Markup {
    html! {
        table.compact.wave {
            caption { (caption) }
            thead {
                tr {
                    th scope="col" { "Device" } th scope="col" { "Outcome" }
                    th scope="col" { "Active version" } th scope="col" { "Previous" } th scope="col" { "Detail" }
                }
            }
            tbody {
                @for d in devs {
                    tr {
                        td { code title=(d.device) { (layout::short(&d.device)) } }
                        td {
                            @if d.outcome.is_empty() { span.muted { "waiting" } }
                            @else { span class=(format!("status {}", d.outcome)) { (d.outcome) } }
                            @if !d.present { " " span.muted { "(no longer matches)" } }
                        }
                        td { @if let Some(v) = d.version { (v) } }
                        td { @if let Some(v) = d.previous { (v) } }
                        td.detail { (d.detail) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buttons(p: &Phase, role: Role) -> Vec<&'static str> {
        let html = commands("ro_1", p, role).into_string();
        ["approve", "pause", "resume", "abort"]
            .into_iter()
            .filter(|v| html.contains(&format!("id=\"{v}-button\"")))
            .collect()
    }

    #[test]
    fn commands_follow_the_phase_and_the_role() {
        let op = Role::Operator;
        assert_eq!(buttons(&Phase::Running, op), ["pause", "abort"]);
        assert_eq!(
            buttons(&Phase::AwaitingApproval, op),
            ["approve", "pause", "abort"]
        );
        let paused = Phase::Paused {
            reason: Hold::Operator,
        };
        assert_eq!(buttons(&paused, op), ["resume", "abort"]);
        assert!(buttons(&Phase::Finished, Role::Admin).is_empty());
        assert!(buttons(&Phase::AwaitingApproval, Role::Viewer).is_empty());
        let html = commands("ro_1", &Phase::AwaitingApproval, op).into_string();
        assert!(html.contains(r#"data-api="/api/v1/rollouts/ro_1/approve""#));
    }
}
