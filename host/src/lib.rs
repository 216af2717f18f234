//! The one seam between elysium-node and the machine it manages.
//!
//! Everything that reads or changes the node goes through here: files (always below
//! a configurable root, so a temporary directory or a fixture tree stands in for `/`),
//! systemd (over D-Bus), the programs it runs, signals to processes, the mount table,
//! and privilege checks; each has a fake that keeps the same contract ([`fake`]).
//! Nothing here decides *what* to change; callers plan, this crate applies.

pub mod clock;
pub mod fs;
pub mod memory;
pub mod mounts;
pub mod net;
pub mod notify;
pub mod process;
pub mod sched;
pub mod signal;
pub mod systemd;

// The stand-ins of all of the above, in one place.
pub mod fake;

use std::sync::Arc;

pub use clock::{Clock, FakeClock, SystemClock};
pub use fs::{FsError, RootFs};
pub use mounts::{MountEntry, MountError, Mounts, ProcMounts};
pub use process::{Cmd, Output, ProcessError, Processes, TokioProcesses};
pub use signal::{NixSignals, Signal, SignalError, Signals};
pub use systemd::{DbusSystemd, Systemd, SystemdError, UnitStatus};

pub use fake::{FakeHost, FakeMounts, FakeProcesses, FakeSignals, FakeSystemd};

/// Handle to one machine: its filesystem root, its service manager, the programs it
/// runs, signals to its processes and its mount table.
#[derive(Debug, Clone)]
pub struct Host {
    pub fs: RootFs,
    pub systemd: Arc<dyn Systemd>,
    pub processes: Arc<dyn Processes>,
    pub signals: Arc<dyn Signals>,
    pub mounts: Arc<dyn Mounts>,
}

impl Host {
    /// The real machine: files under `/`, systemd on the system bus.
    pub fn real() -> Self {
        Self::real_at("/")
    }

    /// The real machine with its files (and mount table) below `root`: the
    /// binary's hidden `--root`, for images and tests.
    pub fn real_at(root: impl Into<std::path::PathBuf>) -> Self {
        Self::with_root(root, Arc::new(DbusSystemd::new()))
    }

    /// Files under `root`, systemd as given (a [`FakeSystemd`] in unit tests); real
    /// processes and signals, and the mount table `/proc/self/mountinfo` below `root`
    /// (a fixture file in tests). The `with_*` methods swap in fakes; [`FakeHost`]
    /// has them all.
    pub fn with_root(root: impl Into<std::path::PathBuf>, systemd: Arc<dyn Systemd>) -> Self {
        let fs = RootFs::new(root);
        Self {
            mounts: Arc::new(ProcMounts::new(fs.clone())),
            fs,
            systemd,
            processes: Arc::new(TokioProcesses),
            signals: Arc::new(NixSignals),
        }
    }

    pub fn with_processes(self, processes: Arc<dyn Processes>) -> Self {
        Self { processes, ..self }
    }

    pub fn with_signals(self, signals: Arc<dyn Signals>) -> Self {
        Self { signals, ..self }
    }

    pub fn with_mounts(self, mounts: Arc<dyn Mounts>) -> Self {
        Self { mounts, ..self }
    }
}

/// True when the process runs with root's effective uid.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
