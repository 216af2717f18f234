//! The one seam between elysium-node and the machine it manages.
//!
//! Everything that reads or changes the node goes through here: files (always below
//! a configurable root, so a temporary directory or a fixture tree stands in for `/`),
//! systemd (over D-Bus, with a fake that keeps the same contract) and privilege
//! checks. Nothing here decides *what* to change; callers plan, this crate applies.

pub mod clock;
pub mod fs;
pub mod net;
pub mod systemd;

use std::sync::Arc;

pub use clock::{Clock, FakeClock, SystemClock};
pub use fs::{FsError, RootFs};
pub use systemd::{DbusSystemd, FakeSystemd, Systemd, SystemdError, UnitStatus};

/// Handle to one machine: its filesystem root and its service manager.
#[derive(Debug, Clone)]
pub struct Host {
    pub fs: RootFs,
    pub systemd: Arc<dyn Systemd>,
}

impl Host {
    /// The real machine: files under `/`, systemd on the system bus.
    pub fn real() -> Self {
        Self { fs: RootFs::new("/"), systemd: Arc::new(DbusSystemd::new()) }
    }

    /// Files under `root`, systemd as given (a [`FakeSystemd`] in unit tests).
    pub fn with_root(root: impl Into<std::path::PathBuf>, systemd: Arc<dyn Systemd>) -> Self {
        Self { fs: RootFs::new(root), systemd }
    }
}

/// True when the process runs with root's effective uid.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
