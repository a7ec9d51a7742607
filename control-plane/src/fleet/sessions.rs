//! Each QUIC session a replica holds is a lease on the device's row
//! (`devices.session_id`, `session_until`; migration 0010): written at
//! connect, renewed for all sessions every [`SESSION_RENEW_EVERY`], cleared
//! when the session ends if it is still the device's. Listings on every
//! replica read connection from there, and page by it in SQL.

use super::Fleet;

/// A QUIC session this replica holds with a device.
pub(super) struct Session {
    pub(super) conn: quinn::Connection,
    /// Random per connection: names the lease in `devices.session_id`.
    pub(super) id: String,
}

/// How long a session lease runs unless renewed (milliseconds): how long a
/// replica that died without closing its sessions leaves devices listed as
/// connected.
pub(super) const SESSION_LEASE_MS: i64 = 60_000;

/// How often a replica renews the leases of the sessions it holds.
const SESSION_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Renews the leases of `fleet`'s sessions every [`SESSION_RENEW_EVERY`]
/// until the fleet is dropped.
pub(super) async fn renew_session_leases(fleet: std::sync::Weak<Fleet>) {
    let mut tick = tokio::time::interval(SESSION_RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(fleet) = fleet.upgrade() else { return };
        let sessions = fleet.sessions();
        if sessions.is_empty() {
            continue;
        }
        let until = fleet.store.now_ms() + SESSION_LEASE_MS;
        let _w = fleet.writes.lock().await;
        if let Err(e) = fleet.store.renew_device_sessions(&sessions, until).await {
            // The next round tries again, well within the lease.
            tracing::warn!(error = %e, "renewing device session leases failed");
        }
    }
}

impl Fleet {
    /// The (device, session id) of every session this replica holds.
    pub(super) fn sessions(&self) -> Vec<(String, String)> {
        self.connections
            .lock()
            .map(|m| m.iter().map(|(d, s)| (d.clone(), s.id.clone())).collect())
            .unwrap_or_default()
    }

    /// Opens a lease on a new session with `device`; its id. A failed
    /// write is logged: the device is served, only listed as disconnected
    /// until the next renewal.
    pub(super) async fn open_session(&self, device: &str) -> String {
        let session = crate::auth::random_id("ses_", 12);
        let _w = self.writes.lock().await;
        let until = self.store.now_ms() + SESSION_LEASE_MS;
        if let Err(e) = self
            .store
            .open_device_session(device, &session, until)
            .await
        {
            tracing::warn!(device = %device, error = %e, "recording the session failed");
        }
        session
    }

    /// Ends the lease of `session` with `device`, if it is still its session.
    pub(super) async fn close_session(&self, device: &str, session: &str) {
        let _w = self.writes.lock().await;
        if let Err(e) = self.store.close_device_session(device, session).await {
            // The lease lapses on its own.
            tracing::warn!(device = %device, error = %e, "recording the session's end failed");
        }
    }
}
