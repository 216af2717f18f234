//! Failed enrollments per source address: a token bucket each, in a small
//! bounded map.
//!
//! `Enroll` is the one call that anyone who reaches the port may make. Refusing
//! is cheap (no signature, no write lock), but a caller guessing tokens should
//! still be slowed down, and the map that remembers callers must not grow with
//! the number of addresses an attacker has (IPv6 gives one a /64 of them, which
//! is why IPv6 sources are keyed by their /64). Only failures take from the
//! bucket: 5,000 nodes behind one NAT that enroll with good tokens are never
//! limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How failed enrollments are limited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnrollLimits {
    /// Failures a source may make in a burst.
    pub burst: u32,
    /// Failures per second a source regains, up to `burst`.
    pub per_second: f64,
    /// Sources remembered at most; past that, those that have regained their
    /// whole burst are forgotten first, then the least recently seen.
    pub max_sources: usize,
}

impl Default for EnrollLimits {
    fn default() -> Self {
        // A mistyped token retried by hand, or a few dozen nodes behind one NAT
        // started with a revoked token, stay well inside this; a guessing loop
        // is down to two attempts a second within a moment.
        Self { burst: 32, per_second: 2.0, max_sources: 4096 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The per-source buckets.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    limits: EnrollLimits,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailureLimiter {
    pub fn new(limits: EnrollLimits) -> Self {
        Self { limits, buckets: Mutex::new(HashMap::new()) }
    }

    /// `Err(retry_after)` when `source` has used up its failures.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = source_key(source);
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(&key) {
            Some(b) if self.level(b, now) < 1.0 => Err(self.wait_for_one(b, now)),
            _ => Ok(()),
        }
    }

    /// Counts one failed enrollment from `source`.
    pub fn failed(&self, source: IpAddr, now: Instant) {
        let key = source_key(source);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.limits.max_sources {
            self.evict(&mut buckets, now);
        }
        let burst = f64::from(self.limits.burst);
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: burst, updated: now });
        bucket.tokens = (self.level(bucket, now) - 1.0).max(0.0);
        bucket.updated = now;
    }

    /// Sources remembered (for tests: the map stays bounded).
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let regained = now.saturating_duration_since(b.updated).as_secs_f64() * self.limits.per_second;
        (b.tokens + regained).min(f64::from(self.limits.burst))
    }

    fn wait_for_one(&self, b: &Bucket, now: Instant) -> Duration {
        let missing = 1.0 - self.level(b, now);
        Duration::from_secs_f64((missing / self.limits.per_second.max(f64::MIN_POSITIVE)).max(0.0))
    }

    fn evict(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let burst = f64::from(self.limits.burst);
        buckets.retain(|_, b| self.level(b, now) < burst);
        if buckets.len() >= self.limits.max_sources
            && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.updated).map(|(k, _)| *k)
        {
            buckets.remove(&oldest);
        }
    }
}

/// The unit limits count by: IPv4 addresses as they are; IPv6 by their /64,
/// what one host or site holds.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_is_limited_after_its_burst_and_regains_over_time() {
        let limiter = FailureLimiter::new(EnrollLimits { burst: 3, per_second: 1.0, max_sources: 10 });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(ip("10.0.0.1"), t0).is_ok());
            limiter.failed(ip("10.0.0.1"), t0);
        }
        let wait = limiter.check(ip("10.0.0.1"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(limiter.check(ip("10.0.0.2"), t0).is_ok(), "another source is not limited");
        assert!(limiter.check(ip("10.0.0.1"), t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn ipv6_sources_share_their_slash_64() {
        let limiter = FailureLimiter::new(EnrollLimits { burst: 1, per_second: 1.0, max_sources: 10 });
        let t0 = Instant::now();
        limiter.failed(ip("2001:db8:1:2::1"), t0);
        assert!(limiter.check(ip("2001:db8:1:2::ffff"), t0).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1"), t0).is_ok());
    }

    #[test]
    fn the_map_stays_bounded() {
        let limiter = FailureLimiter::new(EnrollLimits { burst: 2, per_second: 1.0, max_sources: 100 });
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            limiter.failed(IpAddr::V4(i.into()), t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(limiter.sources() <= 100, "{}", limiter.sources());
        // The most recent source is remembered.
        limiter.failed(IpAddr::V4(9_999u32.into()), t0 + Duration::from_millis(9_999));
        assert!(limiter.check(IpAddr::V4(9_999u32.into()), t0 + Duration::from_millis(9_999)).is_err());
    }
}
