//! The apply phase's progress, on disk: which objects were applied with which content, to
//! which cluster, from which commit. A re-run skips what the ledger records *and* the
//! cluster still has, so an interrupted recovery picks up where it stopped and nothing is
//! applied twice. Written atomically (temporary file, fsync, rename) with
//! mode 0600, a generation number bumped on every write. It holds object names and
//! SHA-256 hashes, never object contents.
//!
//! A ledger for another cluster (the `kube-system` namespace's UID differs: the cluster was
//! reinstalled) or another commit is not used: everything is applied again, which
//! server-side apply makes harmless.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `elysium-node recover` keeps its progress by default.
pub const DEFAULT_PATH: &str = "/var/lib/elysium/recover-state.json";
/// Format version of the file.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("could not write the recovery state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the recovery state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which cluster and commit a ledger is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// UID of the `kube-system` namespace: changes when the cluster is reinstalled.
    pub cluster_uid: String,
    pub server: String,
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct File {
    format: u32,
    generation: u64,
    scope: Scope,
    /// Object key → SHA-256 of the body applied.
    applied: BTreeMap<String, String>,
    /// The operator confirmed the generated deploy key is on the Git host.
    deploy_key_confirmed: bool,
    /// Hash of the sealing keys for which the running controller was dealt with
    /// (restarted, or found not running).
    controller_done_for: Option<String>,
}

/// The progress of one recovery.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
}

/// What loading found, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No earlier run.
    New,
    /// An earlier run of this recovery: its progress is used.
    Resumed { applied: usize },
    /// An earlier run against another cluster or commit, or an unreadable file: ignored.
    Discarded { why: String },
}

impl Ledger {
    /// Loads the ledger at `path` for `scope`.
    pub fn load(path: &Path, scope: Scope) -> Result<(Ledger, Loaded), LedgerError> {
        let fresh = |scope: Scope| File {
            format: FORMAT,
            generation: 0,
            scope,
            applied: BTreeMap::new(),
            deploy_key_confirmed: false,
            controller_done_for: None,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Ledger { path: path.to_owned(), file: fresh(scope) }, Loaded::New));
            }
            Err(source) => return Err(LedgerError::Read { path: path.to_owned(), source }),
        };
        let (file, loaded) = match serde_json::from_slice::<File>(&bytes) {
            Err(e) => (fresh(scope), Loaded::Discarded { why: format!("it is not readable ({e})") }),
            Ok(f) if f.format != FORMAT => {
                (fresh(scope), Loaded::Discarded { why: format!("it has format {}, not {FORMAT}", f.format) })
            }
            Ok(f) if f.scope.cluster_uid != scope.cluster_uid => (
                fresh(scope),
                Loaded::Discarded { why: format!("it is about another cluster ({})", f.scope.server) },
            ),
            Ok(f) if f.scope.commit != scope.commit => (
                fresh(scope),
                Loaded::Discarded {
                    why: format!("it is about commit {}", f.scope.commit.as_deref().unwrap_or("(none)")),
                },
            ),
            Ok(mut f) => {
                let n = f.applied.len();
                f.scope = scope;
                (f, Loaded::Resumed { applied: n })
            }
        };
        Ok((Ledger { path: path.to_owned(), file }, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this content of this object was applied by an earlier run.
    pub fn was_applied(&self, key: &str, hash: &str) -> bool {
        self.file.applied.get(key).is_some_and(|h| h == hash)
    }

    /// Whether some content of this object was applied by an earlier run.
    pub fn has_applied(&self, key: &str) -> bool {
        self.file.applied.contains_key(key)
    }

    pub fn record_applied(&mut self, key: String, hash: String) -> Result<(), LedgerError> {
        self.file.applied.insert(key, hash);
        self.save()
    }

    pub fn deploy_key_confirmed(&self) -> bool {
        self.file.deploy_key_confirmed
    }

    pub fn record_deploy_key_confirmed(&mut self) -> Result<(), LedgerError> {
        self.file.deploy_key_confirmed = true;
        self.save()
    }

    pub fn controller_done_for(&self, keys_hash: &str) -> bool {
        self.file.controller_done_for.as_deref() == Some(keys_hash)
    }

    pub fn record_controller_done(&mut self, keys_hash: String) -> Result<(), LedgerError> {
        self.file.controller_done_for = Some(keys_hash);
        self.save()
    }

    pub fn generation(&self) -> u64 {
        self.file.generation
    }

    /// Writes the whole file: temporary file (0600) in the same directory, fsync, rename,
    /// fsync of the directory.
    fn save(&mut self) -> Result<(), LedgerError> {
        self.file.generation += 1;
        let err = |source| LedgerError::Write { path: self.path.clone(), source };
        // The error names the state file, whichever step failed.
        let host_err = |e: elysium_host::FsError| err(e.source);
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.exists() {
            // Parents the usual way (0777 less the umask); the state's own directory 0700.
            elysium_host::fs::create_dir_all(dir, 0o777).map_err(host_err)?;
            elysium_host::fs::set_permissions(dir, 0o700).map_err(host_err)?;
        }
        let bytes = serde_json::to_vec_pretty(&self.file).map_err(|e| err(std::io::Error::other(e)))?;
        let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("recover-state.json");
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = elysium_host::fs::create(&tmp, 0o600).map_err(host_err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        elysium_host::fs::rename(&tmp, &self.path).map_err(host_err)?;
        if let Ok(d) = std::fs::File::open(dir) {
            // Best effort: some filesystems refuse fsync on directories.
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn scope(uid: &str, commit: &str) -> Scope {
        Scope {
            cluster_uid: uid.into(),
            server: "https://127.0.0.1:6443".into(),
            commit: Some(commit.into()),
        }
    }

    #[test]
    fn progress_survives_a_restart_for_the_same_cluster_and_commit_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/recover-state.json");
        let (mut l, loaded) = Ledger::load(&path, scope("u1", "c1")).expect("load");
        assert_eq!(loaded, Loaded::New);
        l.record_applied("v1/Namespace//flux-system".into(), "h1".into()).expect("save");
        l.record_controller_done("keys".into()).expect("save");
        assert_eq!(l.generation(), 2);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let (l, loaded) = Ledger::load(&path, scope("u1", "c1")).expect("load");
        assert_eq!(loaded, Loaded::Resumed { applied: 1 });
        assert!(l.was_applied("v1/Namespace//flux-system", "h1"));
        assert!(!l.was_applied("v1/Namespace//flux-system", "h2"), "changed content is applied again");
        assert!(l.controller_done_for("keys") && !l.controller_done_for("other"));

        let (l, loaded) = Ledger::load(&path, scope("u2", "c1")).expect("load");
        assert!(matches!(loaded, Loaded::Discarded { why } if why.contains("another cluster")));
        assert!(!l.was_applied("v1/Namespace//flux-system", "h1"));
        let (_, loaded) = Ledger::load(&path, scope("u1", "c2")).expect("load");
        assert!(matches!(loaded, Loaded::Discarded { why } if why.contains("commit c1")));

        std::fs::write(&path, "{not json").expect("write");
        let (_, loaded) = Ledger::load(&path, scope("u1", "c1")).expect("load");
        assert!(matches!(loaded, Loaded::Discarded { .. }));
    }
}
