//! Getting software onto a node safely.
//!
//! Owns *how* files land: compare first (so a re-run changes nothing), write to a
//! temporary file in the same directory, sync, rename. It does not decide *what*
//! to install; callers plan and hand it the content.
//!
//! For K3s it also owns getting the release artifact: [`k3s_version`] (versions
//! and upgrade preflight), [`k3s_release`] (URLs, architectures, hash files),
//! [`download`] (verified, resumable streaming downloads) and [`k3s_binary`]
//! (placing the binary with a rollback copy, and its symlinks).

pub mod download;
pub mod k3s_binary;
pub mod k3s_release;
pub mod k3s_service;
pub mod k3s_version;

use std::path::{Path, PathBuf};

use elysium_host::{FsError, RootFs};
use sha2::{Digest, Sha256};

/// What an install step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Created,
    Updated,
}

impl Change {
    pub fn changed(self) -> bool {
        self != Change::Unchanged
    }
}

/// An install step that failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("could not read {} to install it", .path.display())]
    ReadSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`ensure_file`] would do, without doing it.
pub fn file_change(fs: &RootFs, path: &Path, contents: &[u8], mode: u32) -> Result<Change, FsError> {
    match fs.read_optional(path)? {
        None => Ok(Change::Created),
        Some(existing) if existing == contents && fs.mode(path)? == mode => Ok(Change::Unchanged),
        Some(_) => Ok(Change::Updated),
    }
}

/// Makes `path` hold exactly `contents` with `mode`, atomically; writes nothing
/// when it already does.
pub fn ensure_file(fs: &RootFs, path: &Path, contents: &[u8], mode: u32) -> Result<Change, FsError> {
    let change = file_change(fs, path, contents, mode)?;
    if change.changed() {
        fs.write_atomic(path, contents, mode)?;
        tracing::info!(path = %path.display(), ?change, "file installed");
    }
    Ok(change)
}

/// Installs an executable from this machine's `source` (a real path, e.g. the
/// running binary) to the node path `target`, mode 0755. Compared by SHA-256 so
/// an identical binary is left alone.
pub fn ensure_binary(fs: &RootFs, source: &Path, target: &Path) -> Result<Change, InstallError> {
    let bytes = std::fs::read(source)
        .map_err(|e| InstallError::ReadSource { path: source.to_path_buf(), source: e })?;
    if let Some(existing) = fs.read_optional(target)?
        && Sha256::digest(&existing) == Sha256::digest(&bytes)
    {
        return Ok(Change::Unchanged);
    }
    Ok(ensure_file(fs, target, &bytes, 0o755)?)
}

/// Hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_file_is_idempotent_and_fixes_modes() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        let p = Path::new("/etc/systemd/system/x.service");
        assert_eq!(ensure_file(&fs, p, b"a", 0o644).unwrap(), Change::Created);
        assert_eq!(ensure_file(&fs, p, b"a", 0o644).unwrap(), Change::Unchanged);
        assert_eq!(ensure_file(&fs, p, b"a", 0o600).unwrap(), Change::Updated);
        assert_eq!(fs.mode(p).unwrap(), 0o600);
        assert_eq!(ensure_file(&fs, p, b"b", 0o600).unwrap(), Change::Updated);
        assert_eq!(fs.read(p).unwrap(), b"b");
    }

    #[test]
    fn binary_compared_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path().join("root"));
        let src = dir.path().join("bin");
        std::fs::write(&src, b"\x7fELF...").unwrap();
        let target = Path::new("/usr/local/bin/tool");
        assert_eq!(ensure_binary(&fs, &src, target).unwrap(), Change::Created);
        assert_eq!(fs.mode(target).unwrap(), 0o755);
        assert_eq!(ensure_binary(&fs, &src, target).unwrap(), Change::Unchanged);
        let err = ensure_binary(&fs, &dir.path().join("missing"), target).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
