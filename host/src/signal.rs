//! Signals to other processes by pid: `kill(2)` through nix ([`NixSignals`]), with a
//! fake that records them ([`crate::fake::FakeSignals`]).

use std::fmt;

pub use nix::errno::Errno;
pub use nix::sys::signal::Signal;

/// A signal that could not be delivered.
#[derive(Debug, thiserror::Error)]
#[error("could not send {signal} to pid {pid}")]
pub struct SignalError {
    pub pid: i32,
    pub signal: Signal,
    #[source]
    pub source: Errno,
}

/// Sends signals to processes.
pub trait Signals: Send + Sync + fmt::Debug {
    /// Sends `signal` to process `pid`. `Ok(false)` when there is no such process (it
    /// has exited already, which is what a kill wants anyway).
    fn send(&self, pid: i32, signal: Signal) -> Result<bool, SignalError>;
}

/// The kernel's `kill(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NixSignals;

impl Signals for NixSignals {
    #[tracing::instrument(skip(self), fields(signal = %signal))]
    fn send(&self, pid: i32, signal: Signal) -> Result<bool, SignalError> {
        // 0 and negative pids address process groups (-1: every process we may signal);
        // a pid read from /proc is never one, so such a value is a bug, refused.
        if pid <= 0 {
            return Err(SignalError { pid, signal, source: Errno::EINVAL });
        }
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) => {
                tracing::debug!("signal sent");
                Ok(true)
            }
            Err(Errno::ESRCH) => Ok(false),
            Err(source) => Err(SignalError { pid, signal, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_a_child_and_reports_a_gone_pid() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(NixSignals.send(pid, Signal::SIGKILL).unwrap());
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        // Reaped: the pid is free now.
        assert!(!NixSignals.send(pid, Signal::SIGKILL).unwrap());
    }

    #[test]
    fn group_pids_are_refused() {
        for pid in [0, -1] {
            let e = NixSignals.send(pid, Signal::SIGTERM).unwrap_err();
            assert_eq!(e.to_string(), format!("could not send SIGTERM to pid {pid}"));
        }
    }
}
