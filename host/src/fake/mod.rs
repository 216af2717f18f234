//! Fakes of every part of the [`Host`], kept together: in-memory stand-ins with the
//! real implementations' contracts, that record what they were asked to do and answer
//! as a test scripts them. For unit tests of plans and apply code; never on a node.
//!
//! [`FakeHost`] puts them all on one [`Host`] with files under a temporary root, and
//! keeps a handle on each fake to script and inspect it.

mod mounts;
mod processes;
mod signals;
mod systemd;

use std::path::PathBuf;
use std::sync::Arc;

// The clock's fake is a few lines beside the real clock; named here with the rest.
pub use crate::clock::FakeClock;
pub use mounts::FakeMounts;
pub use processes::{FakeProcesses, Reply};
pub use signals::FakeSignals;
pub use systemd::FakeSystemd;

use crate::Host;
use crate::fs::RootFs;

/// A [`Host`] made of fakes, files under `root`.
#[derive(Debug, Clone)]
pub struct FakeHost {
    pub host: Host,
    pub systemd: Arc<FakeSystemd>,
    pub processes: Arc<FakeProcesses>,
    pub signals: Arc<FakeSignals>,
    pub mounts: Arc<FakeMounts>,
}

impl FakeHost {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let fs = RootFs::new(root);
        let systemd = Arc::new(FakeSystemd::new(fs.clone()));
        let processes = Arc::new(FakeProcesses::new());
        let signals = Arc::new(FakeSignals::new());
        let mounts = Arc::new(FakeMounts::new());
        let host = Host::with_root(fs.root(), systemd.clone())
            .with_processes(processes.clone())
            .with_signals(signals.clone())
            .with_mounts(mounts.clone());
        Self { host, systemd, processes, signals, mounts }
    }
}
