//! `wait-mount PATH`: block until an rclone mount is up at PATH. The media mounts can
//! take minutes to come up after a boot; pods (init containers) and units that need
//! them wait with this instead of starting over an empty directory.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use elysium_host::RootFs;

use elysium_agent::steps::mounts::mountinfo::{self, WaitError};

pub const WAIT_MOUNT_HELP: &str = "\
Polls /proc/self/mountinfo (of the calling process: in a container, mount the host
path with HostToContainer propagation) until the entry at PATH is an rclone file
system (fuse.rclone). Exit status: 0 mounted, 1 not mounted within --timeout, 2 the
mount table could not be read.

Examples:
  elysium-node wait-mount /mnt/media-library
  elysium-node wait-mount /media --timeout 10m --interval 5s
  # a unit that needs the mount:  ExecStartPre=/usr/local/bin/elysium-node wait-mount /mnt/media-library";

#[derive(Debug, Args)]
pub struct WaitMountArgs {
    /// The mount point (absolute), as in the spec's `[[mounts]] path`.
    pub path: String,
    /// Give up after this long (e.g. 90s, 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Time between two looks at the mount table.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

pub async fn wait_mount(root: &Path, args: WaitMountArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.path.starts_with('/'), "PATH must be absolute, got {:?}", args.path);
    let fs = RootFs::new(root);
    match mountinfo::wait_for_rclone_mount(&fs, &args.path, args.timeout, args.interval).await {
        Ok((entry, took)) => {
            println!(
                "{} is mounted ({} from {}) after {:.1}s",
                mountinfo::normalize(&args.path),
                entry.fs_type,
                entry.source,
                took.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ WaitError::Timeout { .. }) => {
            eprintln!(
                "wait-mount: {e}; check the mount's unit (`systemctl status elysium-mount-NAME.service`) \
                 and its condition (`elysium-node nodes get NODE`)"
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("wait-mount: {:#}", anyhow::Error::new(e));
            Ok(ExitCode::from(2))
        }
    }
}
