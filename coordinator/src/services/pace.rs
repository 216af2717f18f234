//! How much one node's session may cost the coordinator: token buckets for the
//! events and the store writes a node's messages cause.
//!
//! A node decides how often it sends; without a limit one node (a bug, or root on
//! it) turns every message into a store commit or an event, and fills the event
//! log for everyone. An honest agent stays far inside these limits: it reports a
//! change when something changed, a few times a minute at most. Past them,
//! writes are coalesced (the latest state is kept in the session and written when
//! the bucket has a token again, at most [`WRITE_REFILL`] later) and events are
//! dropped, counted, and the count recorded with the next event that passes.
//!
//! Owns only the arithmetic; the session decides what goes through which bucket.
//! Small on purpose: one `Pace` per open session (5,000 of them fit in the
//! coordinator's memory budget, docs/BENCHMARKS-fleet.md).

use std::time::Duration;

use tokio::time::Instant;

/// Store writes a node may cause at once (Hello, hardware, heartbeats that
/// changed something, K3s reports).
pub(crate) const WRITE_BURST: u8 = 8;
/// One more store write per this much time once the burst is spent: also the
/// longest a coalesced change waits before it reaches the store (and so `nodes
/// list` and the rollout driver, which reads K3s versions from the store).
pub(crate) const WRITE_REFILL: Duration = Duration::from_secs(5);
/// Events a node may cause at once.
pub(crate) const EVENT_BURST: u8 = 32;
/// One more event per this much time once the burst is spent.
pub(crate) const EVENT_REFILL: Duration = Duration::from_secs(2);

/// A token bucket holding up to `burst` tokens, one added per `refill`.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: u8,
    /// When the next token is due (meaningful only below the burst).
    next: Instant,
}

impl Bucket {
    fn full(burst: u8, now: Instant) -> Self {
        Self { tokens: burst, next: now }
    }

    fn refill(&mut self, burst: u8, refill: Duration, now: Instant) {
        if self.tokens >= burst {
            return;
        }
        while self.next <= now && self.tokens < burst {
            self.tokens += 1;
            self.next += refill;
        }
        if self.tokens >= burst {
            self.next = now;
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, burst: u8, refill: Duration, now: Instant) -> bool {
        self.refill(burst, refill, now);
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == burst {
            // The first token taken from a full bucket starts the refill clock.
            self.next = now + refill;
        }
        self.tokens -= 1;
        true
    }
}

/// One session's allowances, and what it holds back.
#[derive(Debug)]
pub(crate) struct Pace {
    writes: Bucket,
    events: Bucket,
    /// The node record changed and is not written yet.
    pub(crate) dirty: bool,
    /// The held-back change concerns the rollout driver (a K3s version): wake
    /// it once written.
    pub(crate) kick_rollout: bool,
    /// Events dropped since the last one recorded.
    pub(crate) suppressed: u32,
    /// The session logged a refused or rate-limited message already: once per
    /// session, not once per message.
    pub(crate) warned_refused: bool,
    pub(crate) warned_events: bool,
}

impl Pace {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            writes: Bucket::full(WRITE_BURST, now),
            events: Bucket::full(EVENT_BURST, now),
            dirty: false,
            kick_rollout: false,
            suppressed: 0,
            warned_refused: false,
            warned_events: false,
        }
    }

    /// Whether a store write may happen now (and takes its token).
    pub(crate) fn take_write(&mut self, now: Instant) -> bool {
        self.writes.take(WRITE_BURST, WRITE_REFILL, now)
    }

    /// Whether an event may be recorded now (and takes its token).
    pub(crate) fn take_event(&mut self, now: Instant) -> bool {
        self.events.take(EVENT_BURST, EVENT_REFILL, now)
    }

    /// When a coalesced write can go.
    pub(crate) fn next_write(&self) -> Instant {
        self.writes.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_refill_and_never_more_than_the_burst() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        for _ in 0..WRITE_BURST {
            assert!(p.take_write(t0));
        }
        assert!(!p.take_write(t0));
        assert_eq!(p.next_write(), t0 + WRITE_REFILL);
        assert!(!p.take_write(t0 + WRITE_REFILL / 2));
        assert!(p.take_write(t0 + WRITE_REFILL));
        assert!(!p.take_write(t0 + WRITE_REFILL));
        // A long quiet stretch refills to the burst, not beyond.
        let later = t0 + WRITE_REFILL * 1000;
        let allowed = (0..100).filter(|_| p.take_write(later)).count();
        assert_eq!(allowed, usize::from(WRITE_BURST));
        // Events have their own bucket.
        let allowed = (0..100).filter(|_| p.take_event(later)).count();
        assert_eq!(allowed, usize::from(EVENT_BURST));
    }

    #[test]
    fn a_session_allowance_stays_small() {
        // 5,000 sessions must fit the coordinator's budget: this is per session.
        assert!(std::mem::size_of::<Pace>() <= 64, "{}", std::mem::size_of::<Pace>());
    }
}
