//! The mount table and unmounting: `/proc/self/mountinfo` read below the host's root and
//! `umount2(2)` through nix ([`ProcMounts`]), with an in-memory fake
//! ([`crate::fake::FakeMounts`]).
//!
//! Owns the mountinfo format (proc(5): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
//! [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`, with space, tab, newline and backslash
//! written as `\040`, `\011`, `\012`, `\134`). Reading through the root lets tests use a
//! fixture file.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::fs::{FsError, RootFs};
use nix::errno::Errno;

/// The kernel's mount table for the reading process.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo, the fields elysium-node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let mount_point = fields.get(4)?;
    // Optional fields (shared:N, master:N...) run until a lone "-".
    let dash = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    Some(MountEntry {
        mount_point: unescape(mount_point),
        fs_type: unescape(fields.get(dash + 1)?),
        source: unescape(fields.get(dash + 2)?),
    })
}

/// Undoes the kernel's octal escapes (`\040` → space).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads and parses the mount table below `fs`'s root.
pub fn read_table(fs: &RootFs) -> Result<Vec<MountEntry>, FsError> {
    Ok(parse(&fs.read_to_string(MOUNTINFO)?))
}

/// A mount operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("could not read the mount table")]
    Table(#[source] FsError),
    #[error("could not unmount {}", path.display())]
    Unmount {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// What is mounted, and taking it off.
pub trait Mounts: Send + Sync + fmt::Debug {
    /// The mount table, in the kernel's order (a later entry at the same mount point
    /// is on top of an earlier one).
    fn table(&self) -> Result<Vec<MountEntry>, MountError>;

    /// Detaches whatever is mounted at the node path `path` now and lets the kernel
    /// finish when it is no longer busy (`umount2(MNT_DETACH)`, `umount -l`). `Ok(false)`
    /// when nothing is mounted there or the path does not exist.
    fn unmount_lazy(&self, path: &Path) -> Result<bool, MountError>;
}

/// The kernel's mount table, read below a root, and `umount2(2)`.
#[derive(Debug, Clone)]
pub struct ProcMounts {
    fs: RootFs,
}

impl ProcMounts {
    pub fn new(fs: RootFs) -> Self {
        Self { fs }
    }
}

impl Mounts for ProcMounts {
    fn table(&self) -> Result<Vec<MountEntry>, MountError> {
        read_table(&self.fs).map_err(MountError::Table)
    }

    #[tracing::instrument(skip(self), fields(path = %path.display()))]
    fn unmount_lazy(&self, path: &Path) -> Result<bool, MountError> {
        match nix::mount::umount2(&self.fs.resolve(path), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {
                tracing::debug!("unmounted");
                Ok(true)
            }
            // EINVAL: not a mount point (any more).
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
            Err(source) => Err(MountError::Unmount { path: path.to_path_buf(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/a
42 22 0:39 / /mnt/media\\040library rw,nosuid shared:20 master:3 - fuse.rclone media-library:media rw
45 22 0:42 / /mnt/back\\134slash\\011tab rw - tmpfs b:c rw
garbage line
";

    #[test]
    fn parses_the_table_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        let mounts = ProcMounts::new(fs.clone());
        assert!(matches!(mounts.table(), Err(MountError::Table(e)) if e.is_not_found()));
        fs.write_atomic(MOUNTINFO, SAMPLE.as_bytes(), 0o444).unwrap();
        let table = mounts.table().unwrap();
        let points: Vec<&str> = table.iter().map(|e| e.mount_point.as_str()).collect();
        assert_eq!(points, ["/", "/mnt/media library", "/mnt/back\\slash\ttab"]);
        assert_eq!(
            table[1],
            MountEntry {
                mount_point: "/mnt/media library".into(),
                fs_type: "fuse.rclone".into(),
                source: "media-library:media".into()
            }
        );
    }

    #[test]
    fn unmounting_what_is_not_mounted_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = ProcMounts::new(RootFs::new(dir.path()));
        std::fs::create_dir(dir.path().join("plain")).unwrap();
        // EINVAL (not a mount point) as root, EPERM otherwise: both are the kernel's answer.
        match mounts.unmount_lazy(Path::new("/plain")) {
            Ok(false) => {}
            Err(MountError::Unmount { path, source: Errno::EPERM }) => assert_eq!(path, Path::new("/plain")),
            other => panic!("{other:?}"),
        }
        assert!(!mounts.unmount_lazy(Path::new("/missing")).unwrap_or(false));
    }

    #[test]
    fn unescape_leaves_other_backslashes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\0"), r"/a\0");
        assert_eq!(unescape(r"/a\999"), r"/a\999");
        assert_eq!(unescape(r"/a\134"), r"/a\");
    }
}
