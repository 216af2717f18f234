//! Files below a root directory.
//!
//! Callers always name the absolute path they mean on the node (`/etc/elysium/node.key`);
//! [`RootFs`] maps it below its root. Writes that matter are atomic: a temporary
//! file in the same directory, `fsync`, `rename`, then `fsync` of the directory, so
//! a crash leaves either the old content or the new, never a torn file.
//!
//! Paths that are not the node's (the coordinator's `--data-dir`, recover's state file,
//! a path relative to the working directory) go to the free functions at the end
//! ([`write_atomic`], [`create`], [`rename`]...), which take the path as it is. Every
//! write in the workspace goes through here (clippy's `disallowed-methods` bans the
//! std ones elsewhere), with an [`FsError`] naming the path.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
        make_dirs(&self.resolve(path), mode).map_err(|source| err("create directory", path, source))
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
        stage_at(real, dir, path, parent, contents, mode)
    }

    /// Removes a file (or a symlink), `false` when there was none.
    pub fn remove_file(&self, path: impl AsRef<Path>) -> Result<bool, FsError> {
        let path = path.as_ref();
        remove_file(self.resolve(path)).map_err(|e| e.at(path))
    }

    /// Removes a directory and everything under it, `false` when there was none.
    pub fn remove_tree(&self, path: impl AsRef<Path>) -> Result<bool, FsError> {
        let path = path.as_ref();
        remove_dir_all(self.resolve(path)).map_err(|e| e.at(path))
    }

    /// Renames `from` over `to` (atomic within one file system).
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), FsError> {
        let to = to.as_ref();
        rename(self.resolve(from), self.resolve(to)).map_err(|e| e.at(to))
    }

    /// Creates the symlink `link` pointing to `target` (written as given: a relative
    /// target stays relative to the link's directory).
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<(), FsError> {
        let link = link.as_ref();
        symlink(target, self.resolve(link)).map_err(|e| e.at(link))
    }

    /// Sets a file's permission bits.
    pub fn set_mode(&self, path: impl AsRef<Path>, mode: u32) -> Result<(), FsError> {
        let path = path.as_ref();
        set_permissions(self.resolve(path), mode).map_err(|e| e.at(path))
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

impl FsError {
    /// The same failure, naming the node path rather than the real one.
    fn at(self, node_path: &Path) -> FsError {
        FsError { path: node_path.to_path_buf(), ..self }
    }
}

fn make_dirs(real: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(real)
}

/// The temporary file next to `real`, written and synced; `shown` and `shown_parent`
/// are the paths errors name.
fn stage_at(
    real: PathBuf,
    dir: PathBuf,
    shown: &Path,
    shown_parent: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<StagedFile, FsError> {
    make_dirs(&dir, 0o755).map_err(|source| err("create directory", shown_parent, source))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".elysium-tmp-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(&dir)
        .map_err(|source| err("create a temporary file in", shown_parent, source))?;
    // The umask may have narrowed the mode tempfile asked for; set it exactly.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|source| err("set permissions on", shown, source))?;
    tmp.write_all(contents).map_err(|source| err("write", shown, source))?;
    tmp.as_file().sync_all().map_err(|source| err("sync", shown, source))?;
    Ok(StagedFile { tmp, target: real, node_path: shown.to_path_buf(), dir })
}

// Paths as they are (absolute, or relative to the working directory), for files that
// are not the node's: the same operations as `RootFs`, errors naming the given path.

/// Replaces `path` with `contents` atomically (see [`RootFs::write_atomic`]), mode
/// `mode` from the first byte; creates the parent directory (0755) when missing.
pub fn write_atomic(path: impl AsRef<Path>, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let path = path.as_ref();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    stage_at(path.to_path_buf(), parent.to_path_buf(), path, parent, contents, mode)?.commit()
}

/// Creates `path` and its missing parents with permission bits `mode` (narrowed by the
/// umask, as mkdir(2)); an existing directory is left as it is.
pub fn create_dir_all(path: impl AsRef<Path>, mode: u32) -> Result<(), FsError> {
    let path = path.as_ref();
    make_dirs(path, mode).map_err(|source| err("create directory", path, source))
}

/// Opens `path` for writing, truncated, created with permission bits `mode` (narrowed
/// by the umask, as open(2)) when it does not exist. For streaming writes; a file that
/// must never be seen half-written goes through [`write_atomic`].
pub fn create(path: impl AsRef<Path>, mode: u32) -> Result<File, FsError> {
    open(path.as_ref(), mode, |o| o.truncate(true))
}

/// Like [`create`], but fails (`AlreadyExists`) when `path` exists.
pub fn create_new(path: impl AsRef<Path>, mode: u32) -> Result<File, FsError> {
    open(path.as_ref(), mode, |o| o.create_new(true))
}

/// Opens `path` for appending, created with permission bits `mode` (narrowed by the
/// umask) when it does not exist.
pub fn open_append(path: impl AsRef<Path>, mode: u32) -> Result<File, FsError> {
    open(path.as_ref(), mode, |o| o.append(true))
}

fn open(
    path: &Path,
    mode: u32,
    how: impl FnOnce(&mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions,
) -> Result<File, FsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).mode(mode);
    how(&mut options).open(path).map_err(|source| err("create", path, source))
}

/// Renames `from` over `to`; the error names `to`.
pub fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), FsError> {
    let to = to.as_ref();
    std::fs::rename(from, to).map_err(|source| err("rename into place", to, source))
}

/// Removes a file (or a symlink), `false` when there was none.
pub fn remove_file(path: impl AsRef<Path>) -> Result<bool, FsError> {
    let path = path.as_ref();
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(err("remove", path, source)),
    }
}

/// Removes an empty directory.
pub fn remove_dir(path: impl AsRef<Path>) -> Result<(), FsError> {
    let path = path.as_ref();
    std::fs::remove_dir(path).map_err(|source| err("remove", path, source))
}

/// Removes a directory and everything under it, `false` when there was none.
pub fn remove_dir_all(path: impl AsRef<Path>) -> Result<bool, FsError> {
    let path = path.as_ref();
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(err("remove", path, source)),
    }
}

/// Copies the file `from` to `to` (contents and permission bits); returns the bytes
/// copied. The error names `to`.
pub fn copy(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<u64, FsError> {
    let to = to.as_ref();
    std::fs::copy(from, to).map_err(|source| err("copy a file to", to, source))
}

/// Makes `link` a hard link to `original`; the error names `link`.
pub fn hard_link(original: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<(), FsError> {
    let link = link.as_ref();
    std::fs::hard_link(original, link).map_err(|source| err("create a hard link at", link, source))
}

/// Creates the symlink `link` pointing to `target`, written as given.
pub fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<(), FsError> {
    let link = link.as_ref();
    std::os::unix::fs::symlink(target, link).map_err(|source| err("create a link at", link, source))
}

/// Sets the permission bits of `path`.
pub fn set_permissions(path: impl AsRef<Path>, mode: u32) -> Result<(), FsError> {
    let path = path.as_ref();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| err("set permissions on", path, source))
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
    fn free_functions_take_paths_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        create_dir_all(&d, 0o700).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        write_atomic(d.join("state.json"), b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(d.join("state.json")).unwrap(), b"{}");
        assert_eq!(std::fs::metadata(d.join("state.json")).unwrap().permissions().mode() & 0o777, 0o600);

        let mut f = create(d.join("stream"), 0o640).unwrap();
        f.write_all(b"one").unwrap();
        drop(f);
        let mut f = open_append(d.join("stream"), 0o640).unwrap();
        f.write_all(b"two").unwrap();
        drop(f);
        assert_eq!(std::fs::read(d.join("stream")).unwrap(), b"onetwo");
        let e = create_new(d.join("stream"), 0o600).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::AlreadyExists);

        assert_eq!(copy(d.join("stream"), d.join("copy")).unwrap(), 6);
        hard_link(d.join("copy"), d.join("link")).unwrap();
        symlink("copy", d.join("sym")).unwrap();
        assert_eq!(std::fs::read_link(d.join("sym")).unwrap(), Path::new("copy"));
        set_permissions(d.join("copy"), 0o604).unwrap();
        assert_eq!(std::fs::metadata(d.join("link")).unwrap().permissions().mode() & 0o777, 0o604);
        rename(d.join("copy"), d.join("moved")).unwrap();
        assert!(remove_file(d.join("moved")).unwrap());
        assert!(!remove_file(d.join("moved")).unwrap(), "already gone");

        let e = rename(d.join("missing"), d.join("target")).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), format!("could not rename into place {}", d.join("target").display()));

        create_dir_all(d.join("empty"), 0o755).unwrap();
        remove_dir(d.join("empty")).unwrap();
        assert!(remove_dir_all(&d).unwrap());
        assert!(!remove_dir_all(&d).unwrap());
    }

    #[test]
    fn root_fs_trees_links_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        fs.write_atomic("/var/lib/x/a/b", b"1", 0o644).unwrap();
        fs.symlink("a", "/var/lib/x/link").unwrap();
        assert_eq!(std::fs::read_link(fs.resolve("/var/lib/x/link")).unwrap(), Path::new("a"));
        fs.set_mode("/var/lib/x/a/b", 0o600).unwrap();
        assert_eq!(fs.mode("/var/lib/x/a/b").unwrap(), 0o600);
        fs.rename("/var/lib/x/a/b", "/var/lib/x/c").unwrap();
        assert_eq!(fs.read("/var/lib/x/c").unwrap(), b"1");
        assert!(fs.remove_tree("/var/lib/x").unwrap());
        assert!(!fs.remove_tree("/var/lib/x").unwrap());
        let e = fs.rename("/nope", "/etc/there").unwrap_err();
        assert_eq!(e.to_string(), "could not rename into place /etc/there");
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
