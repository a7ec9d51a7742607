//! `GET /ui/events`: the change feed as server-sent events, for the pages
//! that update live (rollout progress, device health, alerts, charts). An
//! event names what changed (`event: rollout`, `data: ro_…`), never its
//! data: the page fetches that again through its own handler and RBAC.
//! Only the caller's tenant, and only topics its role may read.

use super::layout::can;
use super::session::Page;
use crate::action::Action;
use crate::api::AppState;
use crate::changes::{Change, ChangeKind};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// The action whose role reading a topic needs (the page that shows it).
fn needs(kind: &ChangeKind) -> Action {
    match kind {
        ChangeKind::Rollout(_) => Action::RolloutList,
        ChangeKind::Device(_) => Action::DeviceList,
        ChangeKind::Alert(_) => Action::AlertList,
        ChangeKind::Telemetry(_) => Action::MetricSeries,
    }
}

pub async fn events(
    pg: Page,
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let tenant = pg.auth.p.tenant.clone();
    let role = pg.auth.p.role;
    let rx = st.store.changes().subscribe();
    let wanted = move |c: &Change| c.tenant == tenant && can(role, needs(&c.kind));
    let events = stream::unfold((rx, wanted), |(mut rx, wanted)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(c) if wanted(&c) => Event::default()
                    .event(c.kind.topic())
                    .data(c.kind.subject()),
                Ok(_) => continue,
                // Fell behind: the page reloads what it shows.
                Err(RecvError::Lagged(_)) => Event::default().event("resync").data(""),
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok(event), (rx, wanted)));
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
