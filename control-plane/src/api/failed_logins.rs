//! Failed logins (a bearer token that names no live token), counted per
//! source address and audited in aggregate.
//!
//! An anonymous client must not be able to buy an audit write (and with
//! it the tenant's write lock) per request. So each source gets one audit
//! record when its first failure of a minute arrives, its further failures
//! that minute are only counted in memory, and one summary record with the
//! count is written when the minute is over (by the server's sweeper, or
//! at shutdown). A source over [`FAILURES_PER_MINUTE`] is answered 429
//! before anything else is looked at.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;

/// Failed logins one source may make per minute (and in a burst) before
/// it is answered 429 without a lookup.
pub const FAILURES_PER_MINUTE: u32 = 30;

/// The aggregation window.
pub const WINDOW_MS: u64 = 60_000;

/// Sources tracked at once; past it, new sources share one window
/// ([`Source::Other`]), so a spray from many addresses stays bounded too.
const TRACKED_SOURCES: usize = 4096;

/// Longest request line kept as the window's example.
const SAMPLE_CHARS: usize = 120;

/// Where failed logins come from: an IPv4 address, an IPv6 /64 (one
/// host's usual allocation), or anything else.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    Ip(IpAddr),
    Other,
}

impl Source {
    pub fn of(peer: Option<IpAddr>) -> Self {
        match peer {
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::Ip(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source::Ip(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
            Some(ip) => Source::Ip(ip),
            None => Source::Other,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Ip(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Other => f.write_str("(other sources)"),
        }
    }
}

/// What to do with one failed login.
#[derive(Debug, PartialEq, Eq)]
pub struct Noted {
    /// The first of its source's window: audit it now.
    pub first: bool,
    /// The source is over its limit: answer 429.
    pub limited: bool,
}

/// A closed window with failures beyond the first (already audited).
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub source: Source,
    pub opened_ms: u64,
    /// Failures after the first.
    pub more: u64,
    /// Of those, answered 429.
    pub limited: u64,
    /// The first request's method and path (truncated).
    pub sample: String,
}

impl Summary {
    pub fn detail(&self) -> String {
        format!(
            "{} more refused logins (unknown or revoked token) from {} in the minute from {} ms, {} of them over the rate limit; first: {}",
            self.more, self.source, self.opened_ms, self.limited, self.sample
        )
    }
}

struct Window {
    opened_ms: u64,
    more: u64,
    limited: u64,
    sample: String,
}

pub struct FailedLogins {
    limiter: DefaultKeyedRateLimiter<Source>,
    windows: Mutex<HashMap<Source, Window>>,
}

impl Default for FailedLogins {
    fn default() -> Self {
        Self::new(FAILURES_PER_MINUTE)
    }
}

impl FailedLogins {
    pub fn new(per_minute: u32) -> Self {
        let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(rate)),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one failed login of `source` at `now_ms` (`what`: method and
    /// path, kept for the first of a window).
    pub fn note(&self, source: Source, now_ms: u64, what: &str) -> Noted {
        let Ok(mut windows) = self.windows.lock() else {
            // A poisoned lock: refuse without auditing rather than write.
            return Noted {
                first: false,
                limited: true,
            };
        };
        let source = if windows.contains_key(&source) || windows.len() < TRACKED_SOURCES {
            source
        } else {
            Source::Other
        };
        if self.limiter.len() > TRACKED_SOURCES {
            self.limiter.retain_recent();
        }
        let limited = self.limiter.check_key(&source).is_err();
        let open = windows
            .get(&source)
            .is_some_and(|w| now_ms < w.opened_ms.saturating_add(WINDOW_MS));
        if !open {
            // A window that ran out unsummarised (the sweeper has not come
            // by yet) is replaced; the sweeper takes closed windows first.
            windows.insert(
                source,
                Window {
                    opened_ms: now_ms,
                    more: 0,
                    limited: u64::from(limited),
                    sample: what.chars().take(SAMPLE_CHARS).collect(),
                },
            );
            return Noted {
                first: true,
                limited,
            };
        }
        if let Some(w) = windows.get_mut(&source) {
            w.more += 1;
            w.limited += u64::from(limited);
        }
        Noted {
            first: false,
            limited,
        }
    }

    /// Takes the windows closed by `now_ms` (all when `None`, at
    /// shutdown); those with failures beyond the first come back as
    /// summaries to audit.
    pub fn take_closed(&self, now_ms: Option<u64>) -> Vec<Summary> {
        let Ok(mut windows) = self.windows.lock() else {
            return Vec::new();
        };
        let closed: Vec<Source> = windows
            .iter()
            .filter(|(_, w)| now_ms.is_none_or(|n| n >= w.opened_ms.saturating_add(WINDOW_MS)))
            .map(|(s, _)| *s)
            .collect();
        let mut out = Vec::new();
        for source in closed {
            if let Some(w) = windows.remove(&source) {
                if w.more > 0 {
                    out.push(Summary {
                        source,
                        opened_ms: w.opened_ms,
                        more: w.more,
                        limited: w.limited,
                        sample: w.sample,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Source {
        Source::of(Some(s.parse().unwrap()))
    }

    #[test]
    fn one_record_then_a_count_per_source_and_window() {
        let f = FailedLogins::new(1000);
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        assert!(f.note(a, 0, "GET /x").first);
        for t in 1..50 {
            assert!(!f.note(a, t, "GET /y").first);
        }
        assert!(f.note(b, 10, "GET /z").first);
        // Nothing closed yet.
        assert!(f.take_closed(Some(WINDOW_MS - 1)).is_empty());
        let s = f.take_closed(Some(WINDOW_MS + 10));
        // b had only its first (already audited): no summary.
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].source, a);
        assert_eq!(s[0].more, 49);
        assert_eq!(s[0].sample, "GET /x");
        // A new window opens with a new first record.
        assert!(f.note(a, WINDOW_MS + 20, "GET /x").first);
    }

    #[test]
    fn over_the_limit_is_refused_and_counted() {
        let f = FailedLogins::new(3);
        let a = ip("192.0.2.1");
        let limited = (0..10).filter(|t| f.note(a, *t, "GET /").limited).count();
        assert!(limited >= 6, "{limited}");
        let s = f.take_closed(None);
        assert_eq!(s[0].more, 9);
        assert_eq!(s[0].limited as usize, limited);
    }

    #[test]
    fn ipv6_hosts_count_by_their_64() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::2"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn sources_past_the_cap_share_one_window() {
        let f = FailedLogins::new(1_000_000);
        for i in 0..TRACKED_SOURCES as u32 {
            let a = Source::Ip(IpAddr::V4(std::net::Ipv4Addr::from(i + 1)));
            assert!(f.note(a, 0, "GET /").first);
        }
        let extra = Source::Ip(IpAddr::V4(std::net::Ipv4Addr::from(u32::MAX)));
        assert!(f.note(extra, 0, "GET /").first);
        let extra2 = Source::Ip(IpAddr::V4(std::net::Ipv4Addr::from(u32::MAX - 1)));
        assert!(!f.note(extra2, 0, "GET /").first);
        let s = f.take_closed(None);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].source, Source::Other);
    }
}
