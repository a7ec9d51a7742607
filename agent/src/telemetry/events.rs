//! Device events: activation-path outcomes for the telemetry events topic,
//! and the sink the serving core hands them to. Defined here, below the
//! serving core, so that serving depends on telemetry and not the reverse.

/// One activation-path outcome, as the events topic reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEvent {
    /// `activated`, `refused`, `rolled_back` or `unloaded`.
    pub kind: &'static str,
    pub model: Option<String>,
    pub version: Option<u64>,
    pub detail: String,
}

/// Where device events go (the telemetry outbox, or a test's list).
pub trait EventSink: Send + Sync {
    fn record(&self, event: DeviceEvent);
}

impl<F: Fn(DeviceEvent) + Send + Sync> EventSink for F {
    fn record(&self, event: DeviceEvent) {
        self(event)
    }
}
