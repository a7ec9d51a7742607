//! What the QUIC endpoint lets in before anyone is authenticated: a cap on
//! open connections, a cap on connections enrolling at once (those without
//! a client certificate), and a small limit on the one frame such a
//! connection may send.

use ferry_protocol::frames::AgentFrame;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The largest `Enroll` frame read (a token, a 32-byte key and a hostname
/// of at most 253 characters fit in well under 1 KiB).
pub(crate) const ENROLL_FRAME_LIMIT: usize = 8 * 1024;

/// Connection close code: the server is at a connection cap, retry later.
pub(crate) const BUSY: u32 = 4;

fn env_parse(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

pub(crate) struct Admission {
    /// Open connections, devices included (`FERRY_FLEET_MAX_CONNECTIONS`,
    /// default 10,000); further handshakes are refused.
    pub max_connections: usize,
    /// Connections without a client certificate at once
    /// (`FERRY_FLEET_MAX_ENROLLING`, default 64); more are closed at once.
    pub max_enrolling: usize,
    enrolling: Arc<Semaphore>,
}

impl Admission {
    pub fn from_env() -> Self {
        let max_enrolling = env_parse("FERRY_FLEET_MAX_ENROLLING").unwrap_or(64).max(1);
        Self {
            max_connections: env_parse("FERRY_FLEET_MAX_CONNECTIONS")
                .unwrap_or(10_000)
                .max(1),
            max_enrolling,
            enrolling: Arc::new(Semaphore::new(max_enrolling)),
        }
    }

    /// Whether a new handshake may start with `open` connections open.
    pub fn admit(&self, open: usize) -> bool {
        open < self.max_connections
    }

    /// A place among the enrolling connections, held until the connection
    /// ends; `None` when all are taken.
    pub fn enrolling(&self) -> Option<OwnedSemaphorePermit> {
        self.enrolling.clone().try_acquire_owned().ok()
    }
}

/// Reads one frame of at most `limit` bytes: the declared length is
/// checked before anything past it is read or buffered.
pub(crate) async fn read_small_frame(
    r: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Option<AgentFrame>, String> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > limit {
        return Err(format!(
            "a {n}-byte frame is over this connection's {limit}-byte limit"
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    AgentFrame::decode(&buf)
        .map(Some)
        .map_err(|e| e.to_string())
}
