//! [`FakeMounts`]: a mount table in memory.

use std::path::Path;
use std::sync::Mutex;

use nix::errno::Errno;

use crate::mounts::{MountEntry, MountError, Mounts, parse};

/// A mount table that tests fill ([`FakeMounts::mount`], [`FakeMounts::from_mountinfo`])
/// and that unmounting shrinks, recording every unmount asked for.
#[derive(Debug, Default)]
pub struct FakeMounts {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    table: Vec<MountEntry>,
    unmounted: Vec<String>,
    busy: Vec<String>,
}

impl FakeMounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table parsed from mountinfo text (the kernel's format, escapes included).
    pub fn from_mountinfo(text: &str) -> Self {
        let f = Self::new();
        f.lock().table = parse(text);
        f
    }

    /// Mounts `fs_type` from `source` at `mount_point`, on top of anything there.
    pub fn mount(&self, mount_point: &str, fs_type: &str, source: &str) {
        self.lock().table.push(MountEntry {
            mount_point: mount_point.to_owned(),
            fs_type: fs_type.to_owned(),
            source: source.to_owned(),
        });
    }

    /// Unmounting `mount_point` fails with `EPERM`, as `umount2` answers a caller
    /// without `CAP_SYS_ADMIN`.
    pub fn refuse_unmount(&self, mount_point: &str) {
        self.lock().busy.push(mount_point.to_owned());
    }

    /// Every unmount asked for so far, in order (also those of paths not mounted).
    pub fn unmounted(&self) -> Vec<String> {
        self.lock().unmounted.clone()
    }

    /// The mount points in the table now.
    pub fn mount_points(&self) -> Vec<String> {
        self.lock().table.iter().map(|e| e.mount_point.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock already failed the test; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mounts for FakeMounts {
    fn table(&self) -> Result<Vec<MountEntry>, MountError> {
        Ok(self.lock().table.clone())
    }

    fn unmount_lazy(&self, path: &Path) -> Result<bool, MountError> {
        let point = path.to_string_lossy().into_owned();
        let mut s = self.lock();
        s.unmounted.push(point.clone());
        if s.busy.contains(&point) {
            return Err(MountError::Unmount { path: path.to_path_buf(), source: Errno::EPERM });
        }
        // The top-most mount comes off; one underneath stays, as with umount2.
        match s.table.iter().rposition(|e| e.mount_point == point) {
            Some(i) => {
                s.table.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounting_takes_off_the_top_most_mount() {
        let f = FakeMounts::from_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:5 / /run/k3s\\040x rw - tmpfs tmpfs rw\n",
        );
        f.mount("/run/k3s x", "overlay", "overlay");
        assert_eq!(f.mount_points(), ["/", "/run/k3s x", "/run/k3s x"]);
        assert!(f.unmount_lazy(Path::new("/run/k3s x")).unwrap());
        assert_eq!(f.table().unwrap()[1].fs_type, "tmpfs", "the mount underneath stays");
        assert!(f.unmount_lazy(Path::new("/run/k3s x")).unwrap());
        assert!(!f.unmount_lazy(Path::new("/run/k3s x")).unwrap(), "nothing left there");
        f.refuse_unmount("/");
        let e = f.unmount_lazy(Path::new("/")).unwrap_err();
        assert_eq!(e.to_string(), "could not unmount /");
        assert_eq!(f.unmounted(), ["/run/k3s x", "/run/k3s x", "/run/k3s x", "/"]);
        assert_eq!(f.mount_points(), ["/"]);
    }
}
