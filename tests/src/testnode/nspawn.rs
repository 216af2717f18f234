//! The `systemd-nspawn` process of a node: its command line, the wrapper that starts it inside the
//! node's own cgroups, and stopping it (orderly, then by force). Waiting for the boot is `TestNode`'s.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::cgroup::{CGROUP_PARENT, cgroup_hierarchies, kill_cgroup_tree};
use super::cmd::{NODE_PATH, tool};
use super::files::path_str;
use super::net::NETNS_DIR;
use super::procs::parent_of;
use super::{NodeOptions, TestNode};
use crate::child::wait_timeout;

/// Per-machine dirs nspawn creates (and only removes on a clean exit).
pub(super) const NSPAWN_PROPAGATE_DIR: &str = "/run/systemd/nspawn/propagate";

pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(20);

impl TestNode {
    /// Starts `systemd-nspawn --boot` inside a fresh per-node cgroup, console captured to a file.
    pub(super) fn spawn(&mut self, opts: &NodeOptions) -> Result<()> {
        let tag = self.netns.clone();
        let mut procs_files = Vec::new();
        for hierarchy in cgroup_hierarchies()? {
            let cg = hierarchy.join(CGROUP_PARENT).join(&tag);
            fs::create_dir_all(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
            self.cgroups.push(cg.clone());
            procs_files.push(cg.join("cgroup.procs"));
        }

        let console = File::create(&self.console)
            .with_context(|| format!("creating console log {}", self.console.display()))?;
        let console_err = console.try_clone().context("duplicating console log handle")?;

        let mut nspawn_args: Vec<String> = vec![
            format!("--directory={}", path_str(&self.root)?),
            "--boot".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            format!("--machine={}", self.machine),
            format!("--hostname={}", self.name),
            format!("--network-namespace-path={NETNS_DIR}/{}", self.netns),
            "--bind=/dev/fuse".into(),
            "--console=passive".into(),
            "--resolv-conf=off".into(),
            "--timezone=off".into(),
            "--link-journal=no".into(),
            "--setenv=SYSTEMD_COLORS=0".into(),
        ];
        for (host, inside) in &opts.binds_ro {
            nspawn_args.push(format!("--bind-ro={}:{}", path_str(host)?, path_str(inside)?));
        }
        for (host, inside) in &opts.binds_rw {
            nspawn_args.push(format!("--bind={}:{}", path_str(host)?, path_str(inside)?));
        }

        // `sh -c` moves itself into the node cgroups, then execs nspawn (same pid, same process group).
        const WRAPPER: &str = r#"n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done
exec "$@""#;
        let mut cmd = Command::new(tool("sh")?);
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(procs_files.len().to_string())
            .args(&procs_files)
            .arg(tool("systemd-nspawn")?)
            .args(&nspawn_args)
            .env("PATH", NODE_PATH)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .process_group(0);
        let child = cmd.spawn().context("spawning systemd-nspawn")?;
        self.nspawn = Some(child);
        Ok(())
    }
}

/// SIGTERM (orderly poweroff), bounded wait, then SIGKILL of the whole node.
pub(super) fn stop_nspawn(child: &mut Child, pid1: Option<i32>, cgroups: &[PathBuf]) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = i32::try_from(child.id()).context("nspawn pid out of range")?;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    if wait_timeout(child, STOP_TIMEOUT)?.is_some() {
        return Ok(());
    }
    eprintln!("elysium-testnode: nspawn {pid} did not stop within {STOP_TIMEOUT:?}; killing it");
    for cg in cgroups {
        kill_cgroup_tree(cg);
    }
    if let Some(p1) = pid1 {
        // Killing a pid namespace's init kills the whole namespace.
        if parent_of(p1) == Some(pid) {
            let _ = kill(Pid::from_raw(p1), Signal::SIGKILL);
        }
    }
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    if wait_timeout(child, Duration::from_secs(10))?.is_none() {
        bail!("nspawn {pid} survived SIGKILL");
    }
    Ok(())
}
