//! The node's root filesystem: the cached Debian base built once with `debootstrap`, and each node's
//! overlay on it with the node's identity files. Not the scratch dir's removal (see `mounts`).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::TestNode;
use super::cmd::{host_path, lock_file, run, tool};
use super::files::{path_str, tail_of_file};
use super::mounts::remove_tree_with_mounts;
use super::procs::kill_processes_using;

/// Debian suite of the base root filesystem.
pub(super) const SUITE: &str = "bookworm";

/// debootstrap variant.
pub(super) const VARIANT: &str = "minbase";

/// Packages added to the minbase variant.
pub(super) const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "ca-certificates",
    "fuse3",
    "python3-minimal",
    "curl",
    "procps",
];

/// Bump when the post-processing of the base changes, to force a rebuild.
pub(super) const BASE_FORMAT: &str = "elysium-testnode-base-v1";

/// Marker written into a finished base (the base is only ever visible complete, via rename).
pub(super) const BASE_MARKER: &str = ".elysium-testnode-base";

pub(super) const DEFAULT_CACHE: &str = "/var/cache/elysium-testnode";

/// Returns the cached base root filesystem, building it with `debootstrap` when missing.
///
/// The cache dir is keyed on a hash of the debootstrap arguments. The build runs under an exclusive
/// `flock` into a temporary sibling dir which is renamed into place only when complete, so concurrent
/// test processes and interrupted builds are safe.
pub fn base_rootfs() -> Result<PathBuf> {
    let cache = cache_dir();
    let spec = base_spec();
    let key = hex::encode(Sha256::digest(spec.as_bytes()));
    let stem = format!("base-{SUITE}-{}", &key[..16]);
    let dir = cache.join(&stem);
    if dir.join(BASE_MARKER).is_file() {
        return Ok(dir);
    }
    fs::create_dir_all(&cache).with_context(|| format!("creating cache dir {}", cache.display()))?;
    let _lock = lock_file(&cache.join(format!(".{stem}.lock")))?;
    if dir.join(BASE_MARKER).is_file() {
        return Ok(dir); // built by someone else while we waited for the lock
    }
    // Leftovers of interrupted builds. Holding the lock, we know their builder is gone, but an orphaned
    // debootstrap may still be writing there and may have left proc/sys mounted inside. Removal is best
    // effort: we build in a fresh directory anyway.
    let tmp_prefix = format!("{stem}.tmp-");
    for entry in fs::read_dir(&cache).with_context(|| format!("reading {}", cache.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&tmp_prefix) {
            let stale = entry.path();
            kill_processes_using(&stale);
            if let Err(e) = remove_tree_with_mounts(&stale) {
                eprintln!("elysium-testnode: warning: could not remove interrupted build: {e:#}");
            }
        }
    }
    if dir.exists() {
        // Present but without marker: not ours / corrupt. Rebuild.
        remove_tree_with_mounts(&dir)?;
    }

    let tmp = cache.join(format!("{tmp_prefix}{}", std::process::id()));
    let log_path = cache.join(format!("{stem}.build.log"));
    eprintln!(
        "elysium-testnode: building base rootfs {} with debootstrap (log: {}); this takes a minute or two",
        dir.display(),
        log_path.display()
    );
    let started = Instant::now();
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone()?;
    let mut cmd = Command::new(tool("debootstrap")?);
    cmd.arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&tmp);
    if let Ok(mirror) = std::env::var("ELYSIUM_TESTNODE_MIRROR") {
        cmd.arg(mirror);
    }
    let status = cmd
        .env("PATH", host_path())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        let _ = remove_tree_with_mounts(&tmp);
        bail!(
            "debootstrap failed ({status}); tail of {}:\n{}",
            log_path.display(),
            tail_of_file(&log_path, 40)
        );
    }
    // Nodes get their own machine-id in their upper layer; keep the base free of one.
    write_file(&tmp.join("etc/machine-id"), "")?;
    if let Ok(entries) = fs::read_dir(tmp.join("var/cache/apt/archives")) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "deb") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    write_file(&tmp.join(BASE_MARKER), &spec)?;
    fs::rename(&tmp, &dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    eprintln!("elysium-testnode: base rootfs built in {:.1?}", started.elapsed());
    Ok(dir)
}

pub(super) fn cache_dir() -> PathBuf {
    std::env::var_os("ELYSIUM_TESTNODE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// Parent of the per-node scratch dirs: on the cache's filesystem (a regular one, not overlayfs).
pub(super) fn nodes_dir() -> PathBuf {
    cache_dir().join("nodes")
}

/// The exact debootstrap invocation the cache is keyed on.
pub(super) fn base_spec() -> String {
    format!("{BASE_FORMAT}\n--variant={VARIANT}\n--include={}\n{SUITE}\n", PACKAGES.join(","))
}

pub(super) fn overlay_supported() -> bool {
    fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.split_whitespace().last() == Some("overlay")))
}

pub(super) fn write_file(path: &Path, contents: &str) -> Result<()> {
    // Replace rather than write through: the base's file may be a symlink or read-only.
    let _ = fs::remove_file(path);
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub(super) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("reading /dev/urandom")?;
    Ok(hex::encode(buf))
}

impl TestNode {
    /// Scratch dir + overlay on the base + per-node identity files in the upper layer.
    pub(super) fn setup_rootfs(&mut self, base: &Path) -> Result<()> {
        if self.scratch.exists() {
            // Left by a dead process that had our pid: it cannot be in use.
            remove_tree_with_mounts(&self.scratch)?;
        }
        let upper = self.scratch.join("upper");
        let work = self.scratch.join("work");
        for dir in [&upper, &work, &self.root] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        self.have_scratch = true;
        let fs_type = nix::sys::statfs::statfs(&self.scratch)
            .with_context(|| format!("statfs {}", self.scratch.display()))?
            .filesystem_type();
        if fs_type == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC {
            bail!(
                "{} is on overlayfs, which cannot hold an overlay upperdir; set ELYSIUM_TESTNODE_CACHE \
                 to a directory on a regular filesystem",
                self.scratch.display()
            );
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            path_str(base)?,
            path_str(&upper)?,
            path_str(&work)?
        );
        run(
            "mount",
            [
                OsStr::new("-t"),
                "overlay".as_ref(),
                "overlay".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                self.root.as_os_str(),
            ],
        )?;
        self.mounted = true;

        let etc = self.root.join("etc");
        write_file(&etc.join("hostname"), &format!("{}\n", self.name))?;
        write_file(&etc.join("machine-id"), &format!("{}\n", random_hex(16)?))?;
        write_file(
            &etc.join("hosts"),
            &format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                self.addr, self.name
            ),
        )?;
        Ok(())
    }
}
