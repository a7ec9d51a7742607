//! The web dashboard `ferry server` serves at `/` on its HTTP port:
//! server-rendered HTML (maud, compiled in) with htmx for partial updates,
//! every asset compiled into the binary (no CDN, works air-gapped).
//!
//! It has no rules of its own. Pages read through the same store and
//! service functions as the REST handlers and authorize with the same
//! `Action` table (through the REST `Auth` extractor, which accepts the
//! dashboard's session cookie); lifecycle buttons call the REST endpoints
//! themselves, with the session's CSRF token.
//!
//! One file per page, on a shared base: `session` (sign-in, sign-out, the
//! `Page` extractor), `layout` (the frame, navigation by role), `list`
//! (listing state in the query string), `error` (failures as pages),
//! `assets` (hashed, immutable static files). A new page is a new file, a route here and a row of
//! `layout::NAV`.

mod alerts;
mod assets;
mod audit;
mod compare;
mod deployment;
mod deployments;
mod device;
mod error;
mod fleet;
mod layout;
mod list;
mod live;
mod model;
mod models;
mod monitoring;
mod policy;
mod rollout;
mod rollouts;
mod session;

use crate::api::AppState;
use crate::rollout_driver::RolloutDriver;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use std::sync::Arc;
use tower_http::compression::CompressionLayer;

/// What a dashboard page may load: only this origin's scripts, styles and
/// connections, no inline script or style, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Security headers on every dashboard response; pages (which carry the
/// session's CSRF token) are never cached.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The rollout driver (and through it the fleet) when the server runs
/// `--quic`; the fleet and rollout pages say so when it does not.
#[derive(Clone)]
pub struct FleetLink(pub Option<Arc<RolloutDriver>>);

/// The dashboard's routes: pages, sign-in and sign-out, assets; gzip
/// where the browser takes it.
pub fn routes(fleet: Option<Arc<RolloutDriver>>) -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/models") }))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/login/link", get(session::login_link))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/{hash}/{name}", get(assets::serve))
        .route("/models", get(models::page))
        .route("/models/{name}", get(model::page))
        .route("/models/{name}/compare", get(compare::page))
        .route("/models/{name}/monitoring", get(monitoring::page))
        .route("/ui/events", get(live::events))
        .route("/audit", get(audit::page))
        .route("/fleet", get(fleet::page))
        .route("/rollouts", get(rollouts::page))
        .route("/rollouts/{id}", get(rollout::page))
        .route("/rollouts/{id}/progress", get(rollout::progress))
        .route("/alerts", get(alerts::page))
        .route("/alerts/list", get(alerts::list))
        .route("/models/{name}/policy", get(policy::page))
        .route("/fleet/{id}", get(device::page))
        .route("/deployments", get(deployments::page))
        .route("/deployments/{id}", get(deployment::page))
        .layer(Extension(FleetLink(fleet)))
        .layer(middleware::from_fn(headers))
        .layer(CompressionLayer::new())
}
