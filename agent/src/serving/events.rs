//! The serving core's side of device events: held until telemetry starts
//! (side-loads happen before it does), then passed straight to its sink.

use crate::telemetry::events::{DeviceEvent, EventSink};
use std::sync::{Arc, Mutex};

/// Events held before telemetry starts; more are dropped (without a broker
/// nobody reads them).
const MAX_PENDING_EVENTS: usize = 100;

enum State {
    Pending(Vec<DeviceEvent>),
    Live(Arc<dyn EventSink>),
}

/// Activations, refusals, rollbacks and unloads on their way to the sink.
pub(super) struct EventQueue(Mutex<State>);

impl Default for EventQueue {
    fn default() -> Self {
        Self(Mutex::new(State::Pending(Vec::new())))
    }
}

impl EventQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends every later event to `sink`, after the ones held so far.
    pub(super) fn set_sink(&self, sink: Arc<dyn EventSink>) {
        let mut g = self.lock();
        if let State::Pending(held) = &mut *g {
            for e in held.drain(..) {
                sink.record(e);
            }
        }
        *g = State::Live(sink);
    }

    pub(super) fn record(&self, e: DeviceEvent) {
        let mut g = self.lock();
        match &mut *g {
            State::Pending(held) if held.len() < MAX_PENDING_EVENTS => held.push(e),
            State::Pending(_) => {}
            State::Live(sink) => sink.record(e),
        }
    }
}
