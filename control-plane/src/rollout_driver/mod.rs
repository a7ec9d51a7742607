//! The rollout driver: the thin async loop that drives the pure engine
//! (`crate::rollout::engine`) in the server.
//!
//! At each rollout's next deadline, on new input (activation reports,
//! telemetry windows, desired-state changes, starts and commands) and at
//! the latest every tick, it takes or renews the lease of each live
//! rollout; for those it holds it
//! loads the stored state, feeds the engine what the fleet knows
//! (`inputs`: matching devices, activation reports, telemetry windows),
//! polls it, carries out the actions (`commit`: rollout assignments that
//! `fleet::assign` weighs against deployments, audit records, the finished
//! rollout's deployment, a retained MQTT state message) and saves the new
//! state, all under a compare-and-set on the rollout's revision.
//!
//! - `inputs`: what the engine is fed.
//! - `commit`: carrying out actions and saving.
//! - `service`: the operations behind REST and the CLI (start, commands,
//!   policies, views).
//!
//! Replicas: each rollout is driven by the one replica holding its lease
//! (`rollouts.lease_holder`, renewed every tick, taken over once expired);
//! every replica watches the rollout assignments and tells its own
//! connected devices when they move.

mod commit;
mod inputs;
pub mod service;

use crate::fleet::Fleet;
use crate::store::rollouts::RolloutRow;
use crate::store::StoreError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use commit::{phase_name, state_topic};

/// Why a rollout step did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rollout(#[from] crate::rollout::engine::RolloutError),
    #[error(transparent)]
    Policy(#[from] crate::rollout::policy::PolicyError),
    #[error("stored rollout state: {0}")]
    State(String),
}

/// Default tick: how often live rollouts are polled at the latest.
const DEFAULT_TICK_MS: u64 = 1_000;
/// Rounds are at least this far apart.
const MIN_GAP: Duration = Duration::from_millis(100);
/// Default lease: a replica that stops renewing loses its rollouts after it.
const DEFAULT_LEASE_MS: i64 = 5_000;

/// Drives every live rollout whose lease this replica holds.
pub struct RolloutDriver {
    pub fleet: Arc<Fleet>,
    /// This replica's lease holder id (random per process).
    pub holder: String,
    /// The telemetry engine, whose MQTT client publishes rollout states.
    mqtt: Option<Arc<crate::telemetry::engine::Engine>>,
    wake: tokio::sync::Notify,
    tick: Duration,
    lease_ms: i64,
    /// The rollout assignments as last seen (rows, newest change).
    targets_mark: Mutex<(i64, i64)>,
    /// Telemetry sums of the rollouts this replica steps, by rollout id.
    telemetry: Mutex<HashMap<String, inputs::TelemetryCache>>,
    /// Rollout steps that failed (for logs and tests).
    pub failures: AtomicI64,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

impl RolloutDriver {
    /// A driver over `fleet`; tick and lease from `FERRY_ROLLOUT_TICK_MS`
    /// (default 1000) and `FERRY_ROLLOUT_LEASE_MS` (default 5000).
    pub fn new(
        fleet: Arc<Fleet>,
        mqtt: Option<Arc<crate::telemetry::engine::Engine>>,
    ) -> Arc<Self> {
        let tick = env_u64("FERRY_ROLLOUT_TICK_MS")
            .unwrap_or(DEFAULT_TICK_MS)
            .clamp(10, 60_000);
        let lease_ms = env_u64("FERRY_ROLLOUT_LEASE_MS")
            .map(|v| v.clamp(100, 600_000) as i64)
            .unwrap_or(DEFAULT_LEASE_MS);
        Arc::new(Self {
            fleet,
            holder: crate::auth::random_id("rep_", 8),
            mqtt,
            wake: tokio::sync::Notify::new(),
            tick: Duration::from_millis(tick),
            lease_ms,
            targets_mark: Mutex::new((0, 0)),
            telemetry: Mutex::new(HashMap::new()),
            failures: AtomicI64::new(0),
        })
    }

    /// Runs the loop in the background until the runtime ends. A round
    /// runs when a held rollout's next deadline (`next_deadline_ms`) comes,
    /// on new input (an activation report or a telemetry window stored
    /// here, a change of desired state, a start or a command), and at the
    /// latest every tick (leases, what other replicas wrote); rounds are at
    /// least [`MIN_GAP`] apart, so a burst of reports makes few rounds.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut changes = me.fleet.subscribe();
            let mut reports = me.fleet.subscribe_reports();
            let mut windows = me.mqtt.as_ref().map(|e| e.windows_stored.subscribe());
            loop {
                let next = me.round().await;
                let now = me.fleet.store.clock().now_ms();
                let wait = match next {
                    Some(at) if at > now => me.tick.min(Duration::from_millis(at - now)),
                    _ => me.tick,
                };
                let telemetry = async {
                    match windows.as_mut() {
                        Some(w) => {
                            if w.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = me.wake.notified() => {}
                    _ = changes.changed() => {}
                    _ = reports.changed() => {}
                    _ = telemetry => {}
                }
                tokio::time::sleep(MIN_GAP).await;
            }
        })
    }

    /// Polls at once (a rollout was created or commanded).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One pass: tells connected devices about assignments another replica
    /// made, then steps every live rollout this replica holds. Returns the
    /// earliest deadline of those rollouts (ms), if any.
    pub async fn round(&self) -> Option<u64> {
        match self.fleet.store.rollout_targets_mark().await {
            Ok(mark) => {
                let moved = self
                    .targets_mark
                    .lock()
                    .map(|mut m| std::mem::replace(&mut *m, mark) != mark)
                    .unwrap_or(false);
                if moved {
                    self.fleet.changed();
                }
            }
            Err(e) => tracing::error!(error = %e, "reading rollout assignments failed"),
        }
        let live = match self.fleet.store.live_rollouts().await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "listing live rollouts failed");
                return None;
            }
        };
        // Forget the telemetry of rollouts that ended.
        if let Ok(mut t) = self.telemetry.lock() {
            t.retain(|id, _| live.iter().any(|r| r.id == *id));
        }
        let now = self.fleet.store.clock().now_ms() as i64;
        let mut next: Option<u64> = None;
        for row in live {
            match self
                .fleet
                .store
                .take_rollout_lease(&row.id, &self.holder, now, self.lease_ms)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(rollout = %row.id, error = %e, "rollout lease failed");
                    continue;
                }
            }
            let id = row.id.clone();
            match self.step(row).await {
                Ok(Some(at)) => next = Some(next.map_or(at, |n: u64| n.min(at))),
                Ok(None) => {}
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(rollout = %id, error = %e, "rollout step failed");
                }
            }
        }
        next
    }

    /// Feeds one rollout what the fleet knows, polls it, carries out and
    /// saves; its next deadline.
    async fn step(&self, row: RolloutRow) -> Result<Option<u64>, DriverError> {
        let mut rollout = commit::load(&row)?;
        let now = self.fleet.store.clock().now_ms();
        // The cache is taken out for the step (no lock across awaits) and
        // put back only when the step read everything it holds.
        let mut cache = self
            .telemetry
            .lock()
            .ok()
            .and_then(|mut t| t.remove(&row.id))
            .unwrap_or_default();
        inputs::feed(&self.fleet.store, &row, &mut rollout, &mut cache).await?;
        if let Ok(mut t) = self.telemetry.lock() {
            t.insert(row.id.clone(), cache);
        }
        let actions = rollout.poll(now);
        commit::commit(self, &row, &rollout, &actions, None).await?;
        Ok(rollout.next_deadline_ms())
    }

    /// Publishes `payload` retained on `topic`, when the server has a broker.
    fn publish_retained(&self, topic: String, payload: String) {
        let Some(engine) = &self.mqtt else { return };
        if let Ok(g) = engine.mqtt.lock() {
            if let Some(c) = g.as_ref() {
                if let Err(e) = c.try_publish(topic, payload, true) {
                    tracing::warn!(error = %e, "rollout state not published");
                }
            }
        }
    }
}
