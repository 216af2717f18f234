//! `/proc/self/mountinfo`: which file system is mounted where, for mount readiness.
//!
//! The format is the host seam's ([`elysium_host::mounts`], re-exported here); this
//! module owns the readiness test rclone itself uses (cmd/mountlib/check_linux.go
//! `CheckMountReady`: the entry at the mount point has a file-system type containing
//! `rclone`, normally `fuse.rclone`). Reads go through the host seam's root, so tests
//! use a fixture file.

use std::time::{Duration, Instant};

pub use elysium_host::mounts::{MOUNTINFO, MountEntry, parse, unescape};
use elysium_host::{FsError, RootFs};

/// Readiness, on the host's mount entries.
pub trait RcloneMount {
    /// An rclone file system (`fuse.rclone`) is mounted here.
    fn is_rclone(&self) -> bool;
}

impl RcloneMount for MountEntry {
    fn is_rclone(&self) -> bool {
        self.fs_type.contains("rclone")
    }
}

/// A mount path as mountinfo writes it: absolute, no trailing slash.
pub fn normalize(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }
}

/// What is mounted at `path` now: the last (top-most) entry for it, if any.
pub fn mounted_at<'a>(entries: &'a [MountEntry], path: &str) -> Option<&'a MountEntry> {
    let path = normalize(path);
    entries.iter().rev().find(|e| e.mount_point == path)
}

/// Reads and parses the mount table below `fs`'s root.
pub fn read(fs: &RootFs) -> Result<Vec<MountEntry>, FsError> {
    elysium_host::mounts::read_table(fs)
}

/// The rclone mount at `path`, if one is there now.
pub fn rclone_mount_at(fs: &RootFs, path: &str) -> Result<Option<MountEntry>, FsError> {
    let entries = read(fs)?;
    Ok(mounted_at(&entries, path).filter(|e| e.is_rclone()).cloned())
}

/// `wait-mount` did not see the mount in time.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{path} is not an rclone mount after {waited:?}{}", last.as_ref().map(|l| format!(" (mounted there now: {l})")).unwrap_or_default())]
    Timeout { path: String, waited: Duration, last: Option<String> },
    #[error("could not read the mount table")]
    Read(#[source] FsError),
}

/// Polls the mount table every `interval` until an rclone file system is mounted at
/// `path`, at most `timeout` (`/proc` has no inotify, so polling it is). Returns the
/// entry and how long it took.
pub async fn wait_for_rclone_mount(
    fs: &RootFs,
    path: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<(MountEntry, Duration), WaitError> {
    let started = Instant::now();
    loop {
        let entries = read(fs).map_err(WaitError::Read)?;
        let here = mounted_at(&entries, path);
        if let Some(e) = here.filter(|e| e.is_rclone()) {
            return Ok((e.clone(), started.elapsed()));
        }
        if started.elapsed() >= timeout {
            return Err(WaitError::Timeout {
                path: normalize(path),
                waited: started.elapsed(),
                last: here.map(|e| format!("{} from {}", e.fs_type, e.source)),
            });
        }
        tokio::time::sleep(
            interval.min(timeout.saturating_sub(started.elapsed())).max(Duration::from_millis(10)),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/a
36 22 0:32 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
42 22 0:39 / /mnt/media\\040library rw,nosuid,nodev,relatime shared:20 master:3 - fuse.rclone media-library:media rw,user_id=0,group_id=0,allow_other
43 22 0:40 / /mnt/plain rw,relatime - tmpfs tmpfs rw
44 22 0:41 / /mnt/plain rw,relatime - fuse.rclone other:x rw
45 22 0:42 / /mnt/back\\134slash\\011tab rw - fuse.rclone b:c rw
garbage line
";

    #[test]
    fn parses_fields_escapes_and_optional_fields() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 6, "{entries:?}");
        let media = mounted_at(&entries, "/mnt/media library").unwrap();
        assert_eq!(media.fs_type, "fuse.rclone");
        assert_eq!(media.source, "media-library:media");
        assert!(media.is_rclone());
        assert_eq!(
            mounted_at(&entries, "/mnt/media library/").unwrap(),
            media,
            "a trailing slash is the same path"
        );
        assert!(mounted_at(&entries, "/mnt/back\\slash\ttab").is_some());
        assert!(!mounted_at(&entries, "/").unwrap().is_rclone());
        assert!(mounted_at(&entries, "/mnt/media").is_none());
    }

    #[test]
    fn the_top_most_mount_wins() {
        let entries = parse(SAMPLE);
        assert_eq!(mounted_at(&entries, "/mnt/plain").unwrap().fs_type, "fuse.rclone");
    }

    #[tokio::test]
    async fn waits_until_mounted_or_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        fs.write_atomic(MOUNTINFO, SAMPLE.as_bytes(), 0o444).unwrap();
        let (e, _) =
            wait_for_rclone_mount(&fs, "/mnt/plain", Duration::from_secs(1), Duration::from_millis(10))
                .await
                .unwrap();
        assert_eq!(e.source, "other:x");
        let err =
            wait_for_rclone_mount(&fs, "/mnt/none", Duration::from_millis(50), Duration::from_millis(10))
                .await
                .unwrap_err();
        assert!(err.to_string().contains("/mnt/none is not an rclone mount"), "{err}");
        // It notices a mount that shows up while it waits.
        let fs2 = fs.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let text = format!("{SAMPLE}50 22 0:50 / /mnt/late rw - fuse.rclone late:x rw\n");
            fs2.write_atomic(MOUNTINFO, text.as_bytes(), 0o444).unwrap();
        });
        let (e, took) =
            wait_for_rclone_mount(&fs, "/mnt/late", Duration::from_secs(5), Duration::from_millis(20))
                .await
                .unwrap();
        writer.await.unwrap();
        assert_eq!(e.source, "late:x");
        assert!(took >= Duration::from_millis(80), "{took:?}");
    }
}
