//! What the K3s step keeps on disk so that a crash at any point converges.
//!
//! * `k3s.json`: what is installed (version and SHA-256 of the binary), and the
//!   last version that failed its health gate, so it is not retried in a loop.
//! * `k3s-journal.json`: an operation in flight. Written **before** the binary is
//!   swapped and removed only when the node is healthy again (on the new version or,
//!   after a rollback, the old one). On start-up a journal left behind means the
//!   agent died mid-operation: it finishes it or rolls it back.

use elysium_host::{FsError, RootFs};

use crate::state::StateError;
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "/var/lib/elysium/k3s.json";
pub const JOURNAL_FILE: &str = "/var/lib/elysium/k3s-journal.json";

/// A binary, identified by the version it claims and the hash it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub version: String,
    pub sha256: String,
}

/// A version that did not pass the health gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub version: String,
    pub reason: String,
    pub unix: i64,
    /// The spec generation it failed under; a newer generation may retry it.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K3sState {
    pub installed: Option<Installed>,
    pub last_failed: Option<Failed>,
    /// The hardware (GPU) labels K3s registered the node with. K3s applies
    /// `node-label` only at registration, so later hardware changes show as drift
    /// against these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_gpu_labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Where an operation got to. Each phase is recorded before its work starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The new binary is verified and about to replace the old one.
    Swapping,
    /// The new binary and config are in place; K3s is restarting on them.
    Restarting,
    /// The health gate failed; the previous binary and config are being restored.
    RollingBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub phase: Phase,
    /// `None` for a fresh install (nothing to roll back to).
    pub from: Option<Installed>,
    pub to: Installed,
    pub started_unix: i64,
    /// The spec generation that asked for it.
    #[serde(default)]
    pub generation: u64,
    /// Why a rollback started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the operation's file writes replaced, to put back on rollback. Kept
    /// here, not in memory, so a crash mid-operation can still restore them (the
    /// token file among them: this file is 0600).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileBackup>,
}

/// A file as it was before an operation wrote it. `Debug` shows the size only:
/// the token file is one of them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBackup {
    pub path: String,
    /// `None`: the file did not exist (rollback removes it).
    pub contents: Option<String>,
    pub mode: u32,
}

impl std::fmt::Debug for FileBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBackup")
            .field("path", &self.path)
            .field("bytes", &self.contents.as_ref().map(String::len))
            .field("mode", &format_args!("{:04o}", self.mode))
            .finish()
    }
}

pub fn load_state(fs: &RootFs) -> K3sState {
    read(fs, STATE_FILE).unwrap_or_default()
}

pub fn save_state(fs: &RootFs, state: &K3sState) -> Result<(), StateError> {
    write(fs, STATE_FILE, state)
}

pub fn load_journal(fs: &RootFs) -> Option<Journal> {
    read(fs, JOURNAL_FILE)
}

pub fn save_journal(fs: &RootFs, journal: &Journal) -> Result<(), StateError> {
    write(fs, JOURNAL_FILE, journal)
}

pub fn clear_journal(fs: &RootFs) -> Result<(), FsError> {
    fs.remove_file(JOURNAL_FILE).map(|_| ())
}

fn read<T: for<'de> Deserialize<'de>>(fs: &RootFs, path: &str) -> Option<T> {
    let bytes = fs.read_optional(path).ok()??;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            // A torn write cannot happen (atomic replace); this is corruption or a
            // hand edit. Say so and carry on as if absent.
            tracing::warn!(path, error = %e, "ignoring unreadable K3s state");
            None
        }
    }
}

fn write<T: Serialize>(fs: &RootFs, path: &'static str, value: &T) -> Result<(), StateError> {
    // Serialise first: a failure must keep the file that is there, never write an empty one.
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Serialise { path, source })?;
    Ok(fs.write_atomic(path, &bytes, 0o600)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        assert_eq!(load_state(&fs), K3sState::default());
        assert!(load_journal(&fs).is_none());
        let j = Journal {
            phase: Phase::Restarting,
            from: Some(Installed { version: "v1.30.1+k3s1".into(), sha256: "aa".into() }),
            to: Installed { version: "v1.31.4+k3s1".into(), sha256: "bb".into() },
            started_unix: 5,
            generation: 2,
            reason: None,
            files: vec![FileBackup { path: "/etc/x".into(), contents: None, mode: 0o600 }],
        };
        save_journal(&fs, &j).unwrap();
        assert_eq!(load_journal(&fs), Some(j));
        assert!(fs.read_to_string(JOURNAL_FILE).unwrap().contains("\"restarting\""));
        clear_journal(&fs).unwrap();
        clear_journal(&fs).unwrap();
        assert!(load_journal(&fs).is_none());
        fs.write_atomic(STATE_FILE, b"{", 0o600).unwrap();
        assert_eq!(load_state(&fs), K3sState::default());
    }
}
