//! Cgroups of test nodes: finding the hierarchies nspawn uses, killing and removing a node's cgroup
//! subtree. Creating a node's cgroups is part of starting nspawn (see `nspawn`).

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::files::dir_names;

/// Name of the cgroup (in each hierarchy) under which node cgroups are created.
pub(super) const CGROUP_PARENT: &str = "elysium-testnode";

/// Cgroup hierarchies that systemd-nspawn manages: the unified (v2) one and, on hybrid/legacy hosts,
/// the v1 `name=systemd` one.
pub(super) fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    let is_cgroup2 = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    let root = Path::new("/sys/fs/cgroup");
    if is_cgroup2(root) {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut found = Vec::new();
    let unified = root.join("unified");
    if is_cgroup2(&unified) {
        found.push(unified);
    }
    let systemd = root.join("systemd");
    if systemd.join("cgroup.procs").exists() {
        found.push(systemd);
    }
    if found.is_empty() {
        bail!("no usable cgroup hierarchy under /sys/fs/cgroup (need cgroup2 or name=systemd)");
    }
    Ok(found)
}

/// SIGKILLs every process in a cgroup subtree (`cgroup.kill` on v2, per-pid on v1).
pub(super) fn kill_cgroup_tree(cg: &Path) {
    let kill_file = cg.join("cgroup.kill");
    if kill_file.exists() && fs::write(&kill_file, "1").is_ok() {
        return;
    }
    for dir in subdirs_depth_first(cg) {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Removes a cgroup and its children (rmdir, deepest first), killing stragglers if some stay busy.
pub(super) fn remove_cgroup_tree(cg: &Path) -> Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut last_err = None;
        for dir in subdirs_depth_first(cg) {
            if let Err(e) = fs::remove_dir(&dir)
                && dir.exists()
            {
                last_err = Some(anyhow!("rmdir {}: {e}", dir.display()));
            }
        }
        match last_err {
            None => return Ok(()),
            Some(e) if Instant::now() >= deadline => return Err(e),
            Some(_) => {
                kill_cgroup_tree(cg);
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `dir` and all directories below it, deepest first (does not follow symlinks).
pub(super) fn subdirs_depth_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for name in dir_names(dir) {
        let p = dir.join(name);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            out.extend(subdirs_depth_first(&p));
        }
    }
    if dir.is_dir() {
        out.push(dir.to_path_buf());
    }
    out
}
