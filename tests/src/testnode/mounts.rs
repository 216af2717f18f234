//! Mounts as /proc/self/mountinfo shows them: finding mount points, unmounting, and removing a
//! directory tree only once nothing below it is mounted. Not mounting the overlay (see `rootfs`).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::cmd::run;

/// Mount points in our mount namespace.
pub(super) fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape_mountinfo(p))).collect()
}

/// Decodes the `\ooo` octal escapes of /proc/self/mountinfo: the host seam's
/// parser, so the harness and the agent read the table alike.
pub(super) fn unescape_mountinfo(s: &str) -> String {
    elysium_host::mounts::unescape(s)
}

pub(super) fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Mount points at or below `dir`, deepest first.
pub(super) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_points().into_iter().filter(|m| m.starts_with(dir)).collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v.dedup();
    v
}

/// `umount PATH` (all stacked mounts), falling back to a lazy unmount.
pub(super) fn unmount(path: &Path) -> Result<()> {
    for _ in 0..8 {
        if !is_mounted(path) {
            return Ok(());
        }
        if run("umount", [path.as_os_str()]).is_err() {
            run("umount", [OsStr::new("-l"), path.as_os_str()])
                .with_context(|| format!("unmounting {}", path.display()))?;
        }
    }
    if is_mounted(path) {
        bail!("{} is still mounted", path.display());
    }
    Ok(())
}

/// Unmounts everything below `dir`, then deletes it; refuses to delete while anything stays mounted.
pub(super) fn remove_tree_with_mounts(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        unmount(&m)?;
    }
    if !mounts_under(dir).is_empty() {
        bail!("not removing {}: still has mounts below it", dir.display());
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("removing {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
    }
}
