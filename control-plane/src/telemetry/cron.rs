//! Five-field cron expressions (minute hour day-of-month month day-of-week,
//! UTC) for time-based retraining, parsed and evaluated by `croner` (Vixie
//! semantics: when both day fields are restricted, a day matching either
//! fires; names like `MON` and `JAN`, `L` and `#` are accepted too).
//!
//! Pure: [`Cron::next_after`] takes the time.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};

#[derive(Clone, Debug)]
pub struct Cron(croner::Cron);

impl Cron {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.split_whitespace().count() != 5 {
            return Err(format!(
                "{s:?}: expected 5 fields (minute hour day-of-month month day-of-week)"
            ));
        }
        CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(s)
            .map(Self)
            .map_err(|e| format!("{s:?}: {e}"))
    }

    /// The first firing time strictly after `t` (seconds since the epoch),
    /// within five years; `None` for expressions that never fire (`0 0 31 2 *`).
    pub fn next_after(&self, t: u64) -> Option<u64> {
        let start = DateTime::<Utc>::from_timestamp(i64::try_from(t).ok()?, 0)?;
        let next = self.0.find_next_occurrence(&start, false).ok()?;
        let secs = u64::try_from(next.timestamp()).ok()?;
        (secs - t <= 5 * 366 * 86_400).then_some(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 (a Monday) 15:56:00 UTC
    const T: u64 = 1_795_449_360;

    #[test]
    fn next_firings() {
        let every_5 = Cron::parse("*/5 * * * *").unwrap();
        assert_eq!(every_5.next_after(T), Some(T + 4 * 60));
        let hourly = Cron::parse("0 * * * *").unwrap();
        assert_eq!(hourly.next_after(T), Some(T + 4 * 60));
        let daily3 = Cron::parse("0 3 * * *").unwrap();
        // Tomorrow 03:00.
        assert_eq!(
            daily3.next_after(T),
            Some(T - (15 * 3600 + 56 * 60) + 86_400 + 3 * 3600)
        );
        let mondays = Cron::parse("30 2 * * 1").unwrap();
        let n = mondays.next_after(T).unwrap();
        assert_eq!((n - T) / 86_400, 6); // next Monday
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(T), None);
        // Both day fields restricted: either matches (Vixie). The 1st of
        // December 2026 is a Tuesday; Wednesday the 25th of November comes first.
        let either = Cron::parse("0 0 1 * 3").unwrap();
        assert_eq!(either.next_after(T), Some(1_795_564_800));
        // Day-of-week 7 is Sunday, as 0 is.
        let sun7 = Cron::parse("0 0 * * 7").unwrap().next_after(T);
        assert_eq!(sun7, Cron::parse("0 0 * * 0").unwrap().next_after(T));
    }

    #[test]
    fn bad_expressions() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }
}
