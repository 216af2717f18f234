//! [`FakeSignals`]: records signals instead of sending them.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::signal::{Errno, Signal, SignalError, Signals};

/// Records every signal; every pid exists unless marked [`FakeSignals::exited`] or
/// [`FakeSignals::refuse`]d.
#[derive(Debug, Default)]
pub struct FakeSignals {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sent: Vec<(i32, Signal)>,
    exited: BTreeSet<i32>,
    refused: BTreeSet<i32>,
}

impl FakeSignals {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every signal asked for so far, in order (also those to exited pids).
    pub fn sent(&self) -> Vec<(i32, Signal)> {
        self.lock().sent.clone()
    }

    /// `pid` has exited: signals to it answer `Ok(false)`, like `ESRCH`.
    pub fn exited(&self, pid: i32) {
        self.lock().exited.insert(pid);
    }

    /// Signals to `pid` fail with `EPERM` (someone else's process).
    pub fn refuse(&self, pid: i32) {
        self.lock().refused.insert(pid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock already failed the test; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Signals for FakeSignals {
    fn send(&self, pid: i32, signal: Signal) -> Result<bool, SignalError> {
        let mut s = self.lock();
        s.sent.push((pid, signal));
        if pid <= 0 {
            return Err(SignalError { pid, signal, source: Errno::EINVAL });
        }
        if s.refused.contains(&pid) {
            return Err(SignalError { pid, signal, source: Errno::EPERM });
        }
        if signal == Signal::SIGKILL {
            // Killed now: a second kill finds nothing.
            return Ok(s.exited.insert(pid));
        }
        Ok(!s.exited.contains(&pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_answers_like_kill() {
        let f = FakeSignals::new();
        f.exited(7);
        f.refuse(8);
        assert!(f.send(5, Signal::SIGTERM).unwrap());
        assert!(f.send(5, Signal::SIGKILL).unwrap());
        assert!(!f.send(5, Signal::SIGKILL).unwrap(), "killed already");
        assert!(!f.send(7, Signal::SIGTERM).unwrap());
        assert_eq!(f.send(8, Signal::SIGKILL).unwrap_err().to_string(), "could not send SIGKILL to pid 8");
        assert!(f.send(-1, Signal::SIGKILL).is_err());
        assert_eq!(f.sent()[..3], [(5, Signal::SIGTERM), (5, Signal::SIGKILL), (5, Signal::SIGKILL)]);
    }
}
