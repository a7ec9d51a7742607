//! Five-field cron expressions (minute hour day-of-month month day-of-week,
//! UTC) for time-based retraining. Supports `*`, `a`, `a-b`, `*/n`, `a-b/n`
//! and comma lists; day-of-week 0-7 (0 and 7 are Sunday). As in Vixie cron,
//! when both day fields are restricted a day matching either fires.
//!
//! Pure: [`Cron::next_after`] takes the time.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    dom: u64,
    months: u64,
    dow: u64,
    dom_star: bool,
    dow_star: bool,
}

fn field(s: &str, lo: u32, hi: u32, name: &str) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let star = s == "*";
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => (
                r,
                st.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name}: bad step {st:?}"))?,
            ),
            None => (part, 1),
        };
        let num = |x: &str| {
            x.parse::<u32>()
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| format!("{name}: {x:?} is not in {lo}-{hi}"))
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("{name}: range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let a = num(range)?;
            (a, if step > 1 { hi } else { a })
        };
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31) (Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Cron {
    pub fn parse(s: &str) -> Result<Self, String> {
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "{s:?}: expected 5 fields (minute hour day-of-month month day-of-week)"
            ));
        }
        let (minutes, _) = field(f[0], 0, 59, "minute")?;
        let (hours, _) = field(f[1], 0, 23, "hour")?;
        let (dom, dom_star) = field(f[2], 1, 31, "day-of-month")?;
        let (months, _) = field(f[3], 1, 12, "month")?;
        let (mut dow, dow_star) = field(f[4], 0, 7, "day-of-week")?;
        if dow & (1 << 7) != 0 {
            dow |= 1;
        }
        Ok(Self {
            minutes,
            hours,
            dom,
            months,
            dow,
            dom_star,
            dow_star,
        })
    }

    fn day_matches(&self, days: i64) -> bool {
        let (_, m, d) = civil(days);
        if self.months & (1 << m) == 0 {
            return false;
        }
        let wd = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
        let dom_ok = self.dom & (1 << d) != 0;
        let dow_ok = self.dow & (1 << wd) != 0;
        match (self.dom_star, self.dow_star) {
            (false, false) => dom_ok || dow_ok,
            _ => dom_ok && dow_ok,
        }
    }

    /// The first firing time strictly after `t` (seconds since the epoch),
    /// within five years; `None` for expressions that never fire (`0 0 31 2 *`).
    pub fn next_after(&self, t: u64) -> Option<u64> {
        let start_min = t / 60 + 1;
        let first_day = (start_min / 1440) as i64;
        for day in first_day..first_day + 366 * 5 {
            let first = day == first_day;
            if self.day_matches(day) {
                let from = if first { start_min % 1440 } else { 0 };
                for minute_of_day in from..1440 {
                    let (h, m) = (minute_of_day / 60, minute_of_day % 60);
                    if self.hours & (1 << h) != 0 && self.minutes & (1 << m) != 0 {
                        return Some((day as u64 * 1440 + minute_of_day) * 60);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 (a Monday) 15:56:00 UTC
    const T: u64 = 1_795_449_360;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil((T / 86_400) as i64), (2026, 11, 23));
    }

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
