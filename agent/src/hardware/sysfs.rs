//! Small readers for sysfs/procfs attributes below a [`RootFs`]: trimmed text, directory
//! listings and symlink targets, with "does not exist" kept apart from real failures.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use elysium_host::RootFs;

use super::HardwareError;

/// The attribute's text without surrounding whitespace; `None` when the file (or a
/// directory on its path) does not exist.
pub(crate) fn read_optional(fs: &RootFs, path: impl AsRef<Path>) -> Result<Option<String>, HardwareError> {
    match fs.read_to_string(path.as_ref()) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if absent(&e.source) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// For attributes the kernel may refuse to produce (`speed` of a link that is down answers
/// EINVAL; debugfs is root-only): any failure reads as "not known".
pub(crate) fn read_best_effort(fs: &RootFs, path: impl AsRef<Path>) -> Option<String> {
    match fs.read_to_string(path.as_ref()) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) => {
            if !absent(&e.source) {
                tracing::debug!(path = %path.as_ref().display(), error = %e.source, "attribute not readable");
            }
            None
        }
    }
}

/// A hexadecimal attribute (`0x8086`, `0x030000`).
pub(crate) fn parse_hex(path: &Path, text: &str) -> Result<u32, HardwareError> {
    let digits = text.trim().trim_start_matches("0x");
    u32::from_str_radix(digits, 16).map_err(|_| HardwareError::Parse {
        path: path.to_path_buf(),
        value: text.trim().to_owned(),
        expected: "a hexadecimal number",
    })
}

/// A hexadecimal attribute that must be there (a PCI function always has `vendor`).
pub(crate) fn read_hex(fs: &RootFs, path: &Path) -> Result<u32, HardwareError> {
    let text = fs.read_to_string(path)?;
    parse_hex(path, &text)
}

pub(crate) fn read_hex_optional(fs: &RootFs, path: &Path) -> Result<Option<u32>, HardwareError> {
    read_optional(fs, path)?.map(|t| parse_hex(path, &t)).transpose()
}

/// Names in a directory, sorted; empty when the directory does not exist.
pub(crate) fn list_dir(fs: &RootFs, path: impl AsRef<Path>) -> Result<Vec<String>, HardwareError> {
    let path = path.as_ref();
    let list_err = |source| HardwareError::ListDir { path: path.to_path_buf(), source };
    let entries = match std::fs::read_dir(fs.resolve(path)) {
        Ok(entries) => entries,
        Err(e) if absent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Where a symlink points, as written (relative in sysfs); `None` when there is no such
/// file or it is not a link.
pub(crate) fn link_target(fs: &RootFs, path: impl AsRef<Path>) -> Result<Option<PathBuf>, HardwareError> {
    let path = path.as_ref();
    match std::fs::read_link(fs.resolve(path)) {
        Ok(target) => Ok(Some(target)),
        // EINVAL: a regular file or directory (snapshots flatten some links into directories).
        Err(e) if absent(&e) || e.kind() == ErrorKind::InvalidInput => Ok(None),
        Err(source) => Err(HardwareError::ReadLink { path: path.to_path_buf(), source }),
    }
}

/// The last component of a link's target: the driver name for `…/driver`, the way the
/// Intel plugin reads it (`filepath.Base(os.Readlink(…))`, pluginutils/devicedriver.go).
pub(crate) fn link_basename(fs: &RootFs, path: impl AsRef<Path>) -> Result<Option<String>, HardwareError> {
    Ok(link_target(fs, path)?.and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned())))
}

/// NotFound, or ENOTDIR when a path component is a file: either way the thing is not here.
fn absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}
