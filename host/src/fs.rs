//! Files below a root directory.
//!
//! Callers always name the absolute path they mean on the node (`/etc/elysium/node.key`);
//! [`RootFs`] maps it below its root. Writes that matter are atomic: a temporary
//! file in the same directory, `fsync`, `rename`, then `fsync` of the directory, so
//! a crash leaves either the old content or the new, never a torn file.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// A file operation that failed, with the node path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("could not {op} {}", path.display())]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::NotFound
    }
}

/// The node's filesystem, seen through a root directory (`/` on a real node).
#[derive(Debug, Clone)]
pub struct RootFs {
    root: PathBuf,
}

impl RootFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the node path `path` lives on this machine. `..` components are
    /// dropped so a path can never escape the root.
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for c in path.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }

    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.resolve(path).exists()
    }

    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, FsError> {
        let path = path.as_ref();
        std::fs::read(self.resolve(path)).map_err(|source| err("read", path, source))
    }

    pub fn read_to_string(&self, path: impl AsRef<Path>) -> Result<String, FsError> {
        let path = path.as_ref();
        std::fs::read_to_string(self.resolve(path)).map_err(|source| err("read", path, source))
    }

    /// Reads a file, `None` when it does not exist.
    pub fn read_optional(&self, path: impl AsRef<Path>) -> Result<Option<Vec<u8>>, FsError> {
        match self.read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Permission bits of a file (`0o600`...).
    pub fn mode(&self, path: impl AsRef<Path>) -> Result<u32, FsError> {
        let path = path.as_ref();
        std::fs::metadata(self.resolve(path))
            .map(|m| m.permissions().mode() & 0o7777)
            .map_err(|source| err("stat", path, source))
    }

    pub fn create_dir_all(&self, path: impl AsRef<Path>, mode: u32) -> Result<(), FsError> {
        let path = path.as_ref();
        let real = self.resolve(path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&real)
            .map_err(|source| err("create directory", path, source))
    }

    /// Replaces `path` with `contents` atomically, with permission bits `mode` set
    /// before any byte is written (a secret is never readable by others, not even
    /// for an instant). Creates the parent directory (0755) when missing.
    pub fn write_atomic(&self, path: impl AsRef<Path>, contents: &[u8], mode: u32) -> Result<(), FsError> {
        let staged = self.stage(path.as_ref(), contents, mode)?;
        staged.commit()
    }

    /// Writes `contents` next to `path` under a temporary name and syncs it, without
    /// replacing `path` yet. Several staged files can be committed together at the
    /// end of an operation, so a failure half-way leaves none of them in place.
    pub fn stage(&self, path: &Path, contents: &[u8], mode: u32) -> Result<StagedFile, FsError> {
        let real = self.resolve(path);
        let dir = real.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        let parent = path.parent().unwrap_or(Path::new("/"));
        self.create_dir_all(parent, 0o755)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".elysium-tmp-")
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempfile_in(&dir)
            .map_err(|source| err("create a temporary file in", parent, source))?;
        // The umask may have narrowed the mode tempfile asked for; set it exactly.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|source| err("set permissions on", path, source))?;
        tmp.write_all(contents).map_err(|source| err("write", path, source))?;
        tmp.as_file().sync_all().map_err(|source| err("sync", path, source))?;
        Ok(StagedFile { tmp, target: real, node_path: path.to_path_buf(), dir })
    }

    pub fn remove_file(&self, path: impl AsRef<Path>) -> Result<bool, FsError> {
        let path = path.as_ref();
        match std::fs::remove_file(self.resolve(path)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(err("remove", path, source)),
        }
    }
}

/// A file written and synced under a temporary name, waiting for [`StagedFile::commit`].
/// Dropped without commit, it is removed.
#[derive(Debug)]
pub struct StagedFile {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
    node_path: PathBuf,
    dir: PathBuf,
}

impl StagedFile {
    /// Renames the staged file over its target and syncs the directory.
    pub fn commit(self) -> Result<(), FsError> {
        let StagedFile { tmp, target, node_path, dir } = self;
        tmp.persist(&target).map_err(|e| err("rename into place", &node_path, e.error))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| err("sync the directory of", &node_path, source))
    }
}

fn err(op: &'static str, path: &Path, source: std::io::Error) -> FsError {
    FsError { op, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_never_escapes_the_root() {
        let fs = RootFs::new("/tmp/node");
        assert_eq!(fs.resolve("/etc/elysium/agent.toml"), PathBuf::from("/tmp/node/etc/elysium/agent.toml"));
        assert_eq!(fs.resolve("/../../etc/shadow"), PathBuf::from("/tmp/node/etc/shadow"));
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        fs.write_atomic("/etc/elysium/node.key", b"one", 0o600).unwrap();
        assert_eq!(fs.mode("/etc/elysium/node.key").unwrap(), 0o600);
        fs.write_atomic("/etc/elysium/node.key", b"two", 0o600).unwrap();
        assert_eq!(fs.read("/etc/elysium/node.key").unwrap(), b"two");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("etc/elysium")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn dropped_stage_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        let staged = fs.stage(Path::new("/etc/x.conf"), b"data", 0o644).unwrap();
        drop(staged);
        assert!(!fs.exists("/etc/x.conf"));
        assert_eq!(std::fs::read_dir(dir.path().join("etc")).unwrap().count(), 0);
    }

    #[test]
    fn errors_name_the_node_path() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        let e = fs.read("/etc/missing").unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "could not read /etc/missing");
    }
}
