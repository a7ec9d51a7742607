//! The frame every page shares: head (CSRF token, assets), skip link,
//! navigation (only what the caller's role may do, read from the
//! `Action` table), `<main>` with the page's `<h1>`, a live status region
//! and the confirmation dialog lifecycle actions use; plus small
//! formatting helpers.

use super::assets;
use crate::action::Action;
use crate::auth::{Principal, Role};
use maud::{html, Markup, DOCTYPE};

/// The dashboard's sections, in navigation order. A new page adds a variant and a row of [`NAV`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Models,
    Rollouts,
    Fleet,
    Alerts,
    Audit,
    Deployments,
}

/// (section, path, label, the action whose role the link needs).
const NAV: &[(Section, &str, &str, Action)] = &[
    (Section::Models, "/models", "Models", Action::ModelList),
    (
        Section::Rollouts,
        "/rollouts",
        "Rollouts",
        Action::RolloutList,
    ),
    (Section::Fleet, "/fleet", "Fleet", Action::DeviceList),
    (
        Section::Deployments,
        "/deployments",
        "Deployments",
        Action::DeploymentList,
    ),
    (Section::Alerts, "/alerts", "Alerts", Action::AlertList),
    (Section::Audit, "/audit", "Audit", Action::AuditList),
];

/// Whether `role` may do `action`: the UI hides what the server would
/// refuse (and the server refuses it anyway).
pub fn can(role: Role, action: Action) -> bool {
    role >= action.required_role()
}

/// Who is signed in, and the session's CSRF token for the page.
pub struct Chrome<'a> {
    pub p: &'a Principal,
    pub csrf: &'a str,
}

/// htmx's settings: no inline indicator styles (the CSP forbids inline
/// styles), no eval, requests to this origin only. `style` is not among
/// the attributes settled across a swap: copying it (Chromium gives form
/// fields an empty `style` when it restores them on a reload) is an
/// inline style the CSP refuses.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"selfRequestsOnly":true,"attributesToSettle":["class","width","height"]}"#;

fn head(title: &str, csrf: Option<&str>, styles: &[&str], scripts: &[&str]) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · Ferry" }
        @if let Some(csrf) = csrf {
            meta name="csrf-token" content=(csrf);
        }
        meta name="htmx-config" content=(HTMX_CONFIG);
        link rel="icon" href="data:,";
        link rel="stylesheet" href=(assets::url("dashboard.css"));
        @for s in styles { link rel="stylesheet" href=(assets::url(s)); }
        script src=(assets::url("htmx.min.js")) defer {}
        script src=(assets::url("dashboard.js")) defer {}
        @for s in scripts { script src=(assets::url(s)) defer {} }
    }
}

/// A signed-in page: navigation for `c`'s role, `title` as the `<h1>`.
pub fn page(c: &Chrome, current: Section, title: &str, body: Markup) -> Markup {
    page_with(c, current, title, &[], &[], body)
}

/// [`page`] with the page's own stylesheets and scripts (assets by name),
/// loaded after the shared ones.
pub fn page_with(
    c: &Chrome,
    current: Section,
    title: &str,
    styles: &[&str],
    scripts: &[&str],
    body: Markup,
) -> Markup {
    // htmx sends the CSRF token with every request it makes.
    let hx_headers = format!(r#"{{"X-CSRF-Token":"{}"}}"#, c.csrf);
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title, Some(c.csrf), styles, scripts)) }
            body hx-headers=(hx_headers) {
                a.skip href="#main" { "Skip to main content" }
                header.top {
                    a.brand href="/models" { "Ferry" }
                    nav aria-label="Main" {
                        ul {
                            @for (section, href, label, action) in NAV {
                                @if can(c.p.role, *action) {
                                    li {
                                        a href=(href) aria-current=[(*section == current).then_some("page")] {
                                            (label)
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { (c.p.token_name) " · " (c.p.role) " · tenant " (c.p.tenant) }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="_csrf" value=(c.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    div #status .status role="status" aria-live="polite" {}
                    (body)
                }
                (confirm_dialog())
            }
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title, None, &[], &[])) }
            body {
                a.skip href="#main" { "Skip to main content" }
                header.top { a.brand href="/models" { "Ferry" } }
                main #main .narrow tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The dialog `dashboard.js` opens before a lifecycle action; Confirm has
/// the focus, Escape or Cancel backs out.
fn confirm_dialog() -> Markup {
    html! {
        dialog #confirm aria-labelledby="confirm-title" {
            form method="dialog" {
                h2 #confirm-title { "Please confirm" }
                p data-message {}
                div.buttons {
                    button type="submit" value="confirm" autofocus { "Confirm" }
                    button type="submit" value="cancel" .secondary { "Cancel" }
                }
            }
        }
    }
}

/// Previous/next links of a listing (`None`: no such page).
pub fn pager(prev: Option<String>, next: Option<String>, label: &str) -> Markup {
    html! {
        nav.pager aria-label=(label) {
            @if let Some(href) = prev {
                a href=(href) rel="prev" { "← Previous" }
            }
            @if let Some(href) = next {
                a href=(href) rel="next" { "Next →" }
            }
        }
    }
}

/// Seconds since the epoch as a UTC date and time.
pub fn when(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// The page a fleet or rollout page shows when the server runs without
/// the fleet (no `--quic`).
pub fn no_fleet() -> Markup {
    html! {
        p.badge #no-fleet {
            "The fleet is not enabled on this server: devices and rollouts need "
            code { "ferry server --quic" } "."
        }
    }
}

/// A byte count for people (binary units).
pub fn size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes.abs() < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v.abs() < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// A metric value: at most 4 decimals, trailing zeros dropped.
pub fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// A signed difference (`+0.012`, `-3`).
pub fn delta(v: f64) -> String {
    if v > 0.0 {
        format!("+{}", num(v))
    } else {
        num(v)
    }
}

/// The first 12 characters of a digest or key id.
pub fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(0.91), "0.91");
        assert_eq!(num(1.0), "1");
        assert_eq!(num(0.123456), "0.1235");
        assert_eq!(num(-0.00001), "0");
        assert_eq!(delta(0.02), "+0.02");
        assert_eq!(delta(-0.5), "-0.5");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
    }

    #[test]
    fn the_nav_shows_only_what_the_role_may_open() {
        let p = |role| Principal {
            token_id: "tok_1".into(),
            token_name: "n".into(),
            tenant: "default".into(),
            role,
        };
        let viewer = p(Role::Viewer);
        let html = page(
            &Chrome {
                p: &viewer,
                csrf: "c",
            },
            Section::Models,
            "Models",
            html! {},
        )
        .into_string();
        assert!(html.contains(r#"href="/models""#));
        assert!(!html.contains(r#"href="/audit""#));
        assert!(html.contains(r#"<meta name="csrf-token" content="c">"#));
        let admin = p(Role::Admin);
        let html = page(
            &Chrome {
                p: &admin,
                csrf: "c",
            },
            Section::Audit,
            "Audit",
            html! {},
        )
        .into_string();
        assert!(html.contains(r#"<a href="/audit" aria-current="page">"#));
    }
}
