//! Cleanup of stale leftovers: whatever earlier test processes created and did not remove because
//! they died. A live node's own teardown is `TestNode`'s (mod.rs).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cgroup::{CGROUP_PARENT, cgroup_hierarchies, kill_cgroup_tree, remove_cgroup_tree};
use super::cmd::runtime_lock;
use super::files::dir_names;
use super::mounts::remove_tree_with_mounts;
use super::net::{NETNS_DIR, delete_link, delete_netns, owner_of_link};
use super::nspawn::NSPAWN_PROPAGATE_DIR;
use super::procs::{all_pids, children_of, pid_alive};
use super::rootfs::nodes_dir;

/// Removes leftovers of earlier test processes that died without cleaning up: their nspawn processes and
/// containers, cgroups, overlay mounts, scratch dirs, network namespaces, veths and bridges. Only objects
/// carrying our name prefix whose owning pid no longer exists are touched. Returns how many were removed.
pub fn cleanup_stale() -> Result<usize> {
    let _lock = runtime_lock()?;
    cleanup_stale_locked()
}

pub(super) fn cleanup_stale_locked() -> Result<usize> {
    let mut removed = 0usize;
    let mut errors: Vec<String> = Vec::new();
    let stale = |owner: Option<u32>| owner.is_some_and(|pid| !pid_alive(pid));

    // 1. Node cgroups of dead owners: killing them stops nspawn and its container in one go.
    if let Ok(hierarchies) = cgroup_hierarchies() {
        for hierarchy in hierarchies {
            let parent = hierarchy.join(CGROUP_PARENT);
            for name in dir_names(&parent) {
                if stale(owner_of_tag(&name)) {
                    let cg = parent.join(&name);
                    kill_cgroup_tree(&cg);
                    match remove_cgroup_tree(&cg) {
                        Ok(()) => removed += 1,
                        Err(e) => errors.push(format!("cgroup {}: {e:#}", cg.display())),
                    }
                }
            }
        }
    }

    // 2. nspawn processes (and their children) pointing at a stale netns, in case they escaped step 1.
    let marker = format!("--network-namespace-path={NETNS_DIR}/");
    for pid in all_pids() {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let owner = cmdline
            .split(|b| *b == 0)
            .filter_map(|arg| std::str::from_utf8(arg).ok())
            .find_map(|arg| arg.strip_prefix(marker.as_str()))
            .and_then(owner_of_tag);
        if stale(owner) {
            for child in children_of(pid) {
                let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            removed += 1;
        }
    }

    // 3. Network namespaces: kill whatever still lives in them, then delete them.
    for name in dir_names(Path::new(NETNS_DIR)) {
        if !stale(owner_of_tag(&name)) {
            continue;
        }
        let ns_path = Path::new(NETNS_DIR).join(&name);
        if let Ok(meta) = fs::metadata(&ns_path) {
            for pid in all_pids() {
                if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net"))
                    && m.dev() == meta.dev()
                    && m.ino() == meta.ino()
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        match delete_netns(&name) {
            Ok(()) => removed += 1,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }

    // 4. Scratch dirs (with their overlay mounts).
    let nodes = nodes_dir();
    for name in dir_names(&nodes) {
        if stale(owner_of_tag(&name)) {
            match remove_tree_with_mounts(&nodes.join(&name)) {
                Ok(()) => removed += 1,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }

    // 5. Links: host veth ends and bridges.
    for name in dir_names(Path::new("/sys/class/net")) {
        if stale(owner_of_link(&name)) {
            match delete_link(&name) {
                Ok(()) => removed += 1,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }

    // 6. nspawn's per-machine propagation dirs (machine names start with the node tag).
    let propagate = Path::new(NSPAWN_PROPAGATE_DIR);
    for name in dir_names(propagate) {
        if stale(owner_of_tag(&name)) {
            match remove_tree_with_mounts(&propagate.join(&name)) {
                Ok(()) => removed += 1,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }

    if errors.is_empty() { Ok(removed) } else { Err(anyhow!("{}", errors.join("; "))) }
}

/// Owner pid of `ely-{pid}-{seq}[-...]`.
pub(super) fn owner_of_tag(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix("ely-")?.split('-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_parsing() {
        assert_eq!(owner_of_tag("ely-1234-7"), Some(1234));
        assert_eq!(owner_of_tag("ely-1234-7-node-a"), Some(1234));
        assert_eq!(owner_of_tag("ely-x-7"), None);
        assert_eq!(owner_of_tag("base-bookworm"), None);
    }
}
