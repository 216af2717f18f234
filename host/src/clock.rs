//! Wall-clock time behind a seam, so decisions that depend on the date (a token's
//! expiry, how long ago a key was last seen, a maintenance window) can be tested by
//! moving time instead of waiting for it.
//!
//! Owns only reading the time: [`SystemClock`] asks the operating system, and
//! [`FakeClock`] says what a test set it to. Does not own monotonic waiting
//! (sleeps, timeouts): that stays with `tokio::time`, which has its own test clock.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The current wall-clock time.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until a test sets or advances it.
///
/// Clones share one time: a test keeps a clone and moves the time that the code
/// under test, holding another, reads.
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<Mutex<SystemTime>>,
}

impl FakeClock {
    /// A clock that reads `start` until it is changed.
    pub fn new(start: SystemTime) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// Makes the clock read `time` (earlier than before is allowed: wall clocks jump).
    pub fn set(&self, time: SystemTime) {
        *self.lock() = time;
    }

    /// Moves the clock `by` forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        // Past the end of SystemTime's range the clock stays at its last time
        // rather than panicking in a test's arithmetic.
        *now = now.checked_add(by).unwrap_or(*now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SystemTime> {
        // The guarded value is a plain time, valid whatever a panicking holder did.
        self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_stands_still_until_moved_and_clones_share_it() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = FakeClock::new(start);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        assert_eq!(shared.now(), start);
        clock.advance(Duration::from_secs(61));
        assert_eq!(shared.now(), start + Duration::from_secs(61));
        clock.set(start);
        assert_eq!(shared.now(), start);
    }

    #[test]
    fn system_clock_reads_the_system_time() {
        let before = SystemTime::now();
        let read = SystemClock.now();
        assert!(read >= before);
        assert!(read <= SystemTime::now());
    }

    #[test]
    fn fake_clock_is_shared_across_threads() {
        let clock = FakeClock::new(SystemTime::UNIX_EPOCH);
        let moved = clock.clone();
        std::thread::spawn(move || moved.advance(Duration::from_secs(5))).join().unwrap();
        assert_eq!(clock.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(5));
    }
}
