//! What one device's control-stream frames may write (review M3): reports
//! and refusals come from the device, so their text is cut to
//! [`MAX_TEXT`] bytes, a report must name a model the device is assigned
//! (so `device_models` holds at most one row per assigned model), a report
//! equal to the device's previous one is not written again, and at most
//! [`MAX_RECORDS_PER_MINUTE`] records per device per minute reach the store
//! and the audit chain. Past that, frames are dropped and counted; the
//! first drop of a minute is audited once, with the count of the minute
//! before.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Bytes of device-supplied text kept in a record.
pub const MAX_TEXT: usize = 1024;
/// Records (reports and desired-state refusals) per device per minute.
pub const MAX_RECORDS_PER_MINUTE: u32 = 30;
/// Devices tracked before the table is pruned to the current minute.
const MAX_DEVICES: usize = 100_000;

/// `s` cut to at most [`MAX_TEXT`] bytes at a character boundary.
pub fn truncate(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What to do with one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Store and audit it.
    Record,
    /// The same as the device's previous record: nothing new to write.
    Repeat,
    /// Over the cap: drop it. `audit` on the first drop of the minute, with
    /// the number dropped in the minute before.
    Drop { audit: bool, dropped_before: u64 },
}

#[derive(Default)]
struct PerDevice {
    minute: u64,
    recorded: u32,
    dropped: u64,
    dropped_before: u64,
    last: Option<String>,
}

#[derive(Default)]
pub struct ReportLimiter {
    devices: Mutex<HashMap<String, PerDevice>>,
}

impl ReportLimiter {
    /// The process's limiter (devices are keyed by their unique id).
    pub fn global() -> &'static ReportLimiter {
        static L: OnceLock<ReportLimiter> = OnceLock::new();
        L.get_or_init(ReportLimiter::default)
    }

    /// Admits a frame of `device` whose content is `key` at `now_secs`.
    pub fn admit(&self, device: &str, key: &str, now_secs: u64) -> Admit {
        let minute = now_secs / 60;
        let Ok(mut m) = self.devices.lock() else {
            return Admit::Record;
        };
        if m.len() >= MAX_DEVICES && !m.contains_key(device) {
            m.retain(|_, d| d.minute == minute);
        }
        let d = m.entry(device.to_string()).or_default();
        if d.minute != minute {
            d.dropped_before = d.dropped;
            d.minute = minute;
            d.recorded = 0;
            d.dropped = 0;
        }
        if d.last.as_deref() == Some(key) {
            return Admit::Repeat;
        }
        if d.recorded >= MAX_RECORDS_PER_MINUTE {
            d.dropped += 1;
            return Admit::Drop {
                audit: d.dropped == 1,
                dropped_before: d.dropped_before,
            };
        }
        d.recorded += 1;
        d.last = Some(key.to_string());
        Admit::Record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floods_are_capped_repeats_aggregated_text_cut() {
        let l = ReportLimiter::default();
        assert_eq!(l.admit("d", "a", 0), Admit::Record);
        assert_eq!(l.admit("d", "a", 1), Admit::Repeat);
        for i in 1..MAX_RECORDS_PER_MINUTE {
            assert_eq!(l.admit("d", &format!("k{i}"), 2), Admit::Record);
        }
        assert_eq!(
            l.admit("d", "x", 3),
            Admit::Drop {
                audit: true,
                dropped_before: 0
            }
        );
        assert_eq!(
            l.admit("d", "y", 4),
            Admit::Drop {
                audit: false,
                dropped_before: 0
            }
        );
        // Another device is not held back; the next minute starts afresh.
        assert_eq!(l.admit("e", "x", 4), Admit::Record);
        assert_eq!(l.admit("d", "z", 60), Admit::Record);
        let long = "é".repeat(MAX_TEXT);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_TEXT + "…".len());
        assert_eq!(truncate("short"), "short");
    }
}
