//! The bound on shadow copies: each unpinned request to a model with a
//! shadow runs once more off the caller's path. A shadow slower than the
//! champion would otherwise queue copies without limit (blocking tasks and
//! their inputs), so past the bound a copy is dropped and counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Shadow copies running or waiting at once, per agent.
pub const MAX_SHADOW_IN_FLIGHT: usize = 16;

#[derive(Default)]
pub struct ShadowSlots {
    in_flight: AtomicUsize,
}

/// One copy's slot, given back when it is dropped (the copy finished, or
/// it never started because its thread could not be made).
pub struct ShadowSlot(Arc<ShadowSlots>);

impl ShadowSlots {
    /// A slot, or `None` when [`MAX_SHADOW_IN_FLIGHT`] copies are in flight.
    pub fn try_take(self: &Arc<Self>) -> Option<ShadowSlot> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SHADOW_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| ShadowSlot(self.clone()))
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Drop for ShadowSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_past_the_bound_are_refused_until_one_finishes() {
        let slots = Arc::new(ShadowSlots::default());
        let mut held: Vec<ShadowSlot> = (0..MAX_SHADOW_IN_FLIGHT)
            .map(|_| slots.try_take().unwrap())
            .collect();
        assert!(slots.try_take().is_none());
        assert_eq!(slots.in_flight(), MAX_SHADOW_IN_FLIGHT);
        held.pop();
        assert_eq!(slots.in_flight(), MAX_SHADOW_IN_FLIGHT - 1);
        let again = slots.try_take();
        assert!(again.is_some());
        assert!(slots.try_take().is_none());
        drop(held);
        drop(again);
        assert_eq!(slots.in_flight(), 0);
    }
}
