//! The API authenticator's limit on failed authentications per source address. It takes the
//! current instant from the caller, so its tests move a clock forward instead of sleeping.
//!
//! Hand-written rather than taken from a crate: [`FailureLimiter`] counts *failures* only and
//! must be checked before the apiserver is asked (without spending anything) and refunded when
//! the token turns out valid. `governor`'s keyed limiter spends a cell on every check, has no
//! peek or refund, and its keyed store has no size cap (only a manual `retain_recent`). (The
//! authenticator's TTL caches are `moka`'s.)

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Where failures are counted: one address (an IPv6 address by its /64, which one host usually
/// owns whole), or the shared overflow bucket for callers whose address is unknown or that
/// arrive while the table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Addr(IpAddr),
    Overflow,
}

impl Source {
    pub fn of(peer: Option<IpAddr>) -> Source {
        match peer {
            None => Source::Overflow,
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::Addr(IpAddr::V4(v4)),
                None => {
                    let mut seg = v6.segments();
                    seg[4..].fill(0);
                    Source::Addr(IpAddr::V6(seg.into()))
                }
            },
            Some(v4) => Source::Addr(v4),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// Leave to ask the apiserver about one unknown token; give it back with
/// [`FailureLimiter::refund`] when the token was valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    source: Source,
    window_start: Instant,
}

/// At most `max` failed (or still pending) authentications per source per fixed window. A
/// fixed window (not a sliding one) is enough here: it bounds apiserver load to `max` reviews
/// per source per window, at worst twice that across a window boundary, with two numbers of
/// state per source.
#[derive(Debug)]
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    cap: usize,
    sources: HashMap<Source, Window>,
}

impl FailureLimiter {
    /// `cap` bounds the number of addresses tracked; past it, new addresses share one bucket.
    pub fn new(max: u32, window: Duration, cap: usize) -> FailureLimiter {
        FailureLimiter {
            max,
            window,
            cap: cap.max(1),
            sources: HashMap::new(),
        }
    }

    /// Is `source` under its limit? If so, one attempt is counted now (so concurrent requests
    /// cannot all slip under the limit before the first failure is recorded). Else how long
    /// until its window ends.
    pub fn try_acquire(&mut self, source: Source, now: Instant) -> Result<Permit, Duration> {
        let source = self.bucket(source, now);
        let window = self.window;
        let w = self.sources.entry(source).or_insert(Window {
            start: now,
            count: 0,
        });
        let age = now.saturating_duration_since(w.start);
        if age >= window {
            *w = Window {
                start: now,
                count: 0,
            };
        }
        if w.count >= self.max {
            return Err(window.saturating_sub(now.saturating_duration_since(w.start)));
        }
        w.count = w.count.saturating_add(1);
        Ok(Permit {
            source,
            window_start: w.start,
        })
    }

    /// Give back an attempt that succeeded (valid tokens are not failures). Nothing if the
    /// window has moved on since.
    pub fn refund(&mut self, permit: Permit) {
        if let Some(w) = self.sources.get_mut(&permit.source)
            && w.start == permit.window_start
        {
            w.count = w.count.saturating_sub(1);
        }
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// The key to count under: the source itself if known or there is room (after dropping
    /// finished windows), else the overflow bucket. Memory stays at `cap` + 1 windows.
    fn bucket(&mut self, source: Source, now: Instant) -> Source {
        if source == Source::Overflow || self.sources.contains_key(&source) {
            return source;
        }
        if self.sources.len() >= self.cap {
            let window = self.window;
            self.sources
                .retain(|_, w| now.saturating_duration_since(w.start) < window);
        }
        if self.sources.len() >= self.cap {
            Source::Overflow
        } else {
            source
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const S: Duration = Duration::from_secs(1);

    fn ip(last: u8) -> Source {
        Source::of(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))))
    }

    #[test]
    fn failures_beyond_the_limit_are_refused_until_the_window_ends() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3, 60 * S, 100);
        for i in 0..3 {
            assert!(l.try_acquire(ip(1), t0 + i * S).is_ok());
        }
        assert_eq!(l.try_acquire(ip(1), t0 + 10 * S), Err(50 * S));
        // Another address is not affected.
        assert!(l.try_acquire(ip(2), t0 + 10 * S).is_ok());
        // A new window starts after 60 s.
        assert!(l.try_acquire(ip(1), t0 + 60 * S).is_ok());
    }

    #[test]
    fn successes_are_refunded_and_failures_count() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(2, 60 * S, 100);
        for _ in 0..10 {
            let p = l.try_acquire(ip(1), t0).expect("under the limit");
            l.refund(p);
        }
        // Failures (permits kept) count.
        assert!(l.try_acquire(ip(1), t0).is_ok());
        assert!(l.try_acquire(ip(1), t0).is_ok());
        assert!(l.try_acquire(ip(1), t0).is_err());
        // A refund from an earlier window does not lower the new one's count.
        let mut l = FailureLimiter::new(1, 60 * S, 100);
        let old = l.try_acquire(ip(1), t0).expect("first");
        let _new = l.try_acquire(ip(1), t0 + 61 * S).expect("new window");
        l.refund(old);
        assert!(l.try_acquire(ip(1), t0 + 62 * S).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_overflow_shares_one_bucket() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(2, 60 * S, 3);
        for i in 1..=3 {
            assert!(l.try_acquire(ip(i), t0).is_ok());
        }
        // Full: new addresses share the overflow bucket, which has the same limit.
        assert!(l.try_acquire(ip(4), t0).is_ok());
        assert!(l.try_acquire(ip(5), t0).is_ok());
        assert!(l.try_acquire(ip(6), t0).is_err());
        assert_eq!(l.tracked(), 4);
        // Once the old windows end, a new address gets its own entry again.
        assert!(l.try_acquire(ip(7), t0 + 60 * S).is_ok());
        assert!(l.try_acquire(ip(7), t0 + 60 * S).is_ok());
        assert!(l.try_acquire(ip(7), t0 + 60 * S).is_err());
        assert!(l.try_acquire(ip(8), t0 + 60 * S).is_ok());
        assert!(l.tracked() <= 4);
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_v4_as_v4() {
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(
            Source::of(Some(IpAddr::V6(a))),
            Source::of(Some(IpAddr::V6(b)))
        );
        assert_ne!(
            Source::of(Some(IpAddr::V6(a))),
            Source::of(Some(IpAddr::V6(c)))
        );
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        assert_eq!(Source::of(Some(IpAddr::V6(mapped))), ip(1));
        assert_eq!(Source::of(None), Source::Overflow);
    }
}
