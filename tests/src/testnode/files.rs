//! Small filesystem helpers the other submodules share: directory listings, the tail of a log, paths
//! as UTF-8.

use std::fs;
use std::path::Path;

use anyhow::{Result, anyhow};

/// Names of the entries of `dir` (empty when unreadable).
pub(super) fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

pub(super) fn tail_of_file(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<{} unreadable: {e}>", path.display()),
    }
}

pub(super) fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}
