//! The change feed: what the control plane just stored that a watching
//! dashboard shows (a rollout moved, a device's health or connection
//! changed, an alert opened or was acknowledged, a model's charts gained
//! data). It carries names only, never data: a page that hears of a change
//! reads it again through the same handlers and RBAC as any request.
//!
//! In-process (a broadcast channel held by the `Store`): with several
//! replicas, a page hears only the changes its own replica made and
//! catches up with the others by its slow poll.

use tokio::sync::broadcast;

/// Changes a slow listener may fall behind by before it is told to resync.
const CAPACITY: usize = 1024;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The rollout with this id.
    Rollout(String),
    /// The device with this id (health, connection, reported state).
    Device(String),
    /// The alert with this id.
    Alert(String),
    /// New roll-ups for this model.
    Telemetry(String),
}

impl ChangeKind {
    /// The server-sent event's name.
    pub fn topic(&self) -> &'static str {
        match self {
            ChangeKind::Rollout(_) => "rollout",
            ChangeKind::Device(_) => "device",
            ChangeKind::Alert(_) => "alert",
            ChangeKind::Telemetry(_) => "telemetry",
        }
    }

    /// The id or name it is about.
    pub fn subject(&self) -> &str {
        match self {
            ChangeKind::Rollout(s)
            | ChangeKind::Device(s)
            | ChangeKind::Alert(s)
            | ChangeKind::Telemetry(s) => s,
        }
    }
}

/// A change within one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub tenant: String,
    pub kind: ChangeKind,
}

/// The feed's sending side; cheap to clone.
#[derive(Clone)]
pub struct Changes {
    tx: broadcast::Sender<Change>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

impl Changes {
    pub fn new() -> Self {
        Changes {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// Tells every listener; nobody listening is fine.
    pub fn send(&self, tenant: &str, kind: ChangeKind) {
        let _ = self.tx.send(Change {
            tenant: tenant.to_string(),
            kind,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_hear_changes_sent_after_they_subscribe() {
        let c = Changes::new();
        c.send("t", ChangeKind::Alert("before".into()));
        let mut rx = c.subscribe();
        c.send("t", ChangeKind::Rollout("ro_1".into()));
        let got = rx.recv().await.unwrap();
        assert_eq!(got.kind.topic(), "rollout");
        assert_eq!(got.kind.subject(), "ro_1");
        assert_eq!(got.tenant, "t");
    }
}
