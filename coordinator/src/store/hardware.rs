//! The nodes' hardware inventory documents: one file per node,
//! `DATA_DIR/hardware/<node id>.json`, beside the redb store rather than in it.
//!
//! A document is a few KiB that agents report and nothing in the coordinator
//! reads except `nodes get`. In redb, every document written or read stayed in
//! its page cache, in the coordinator's heap: 13 MiB for 5,000 enrollments
//! (docs/BENCHMARKS-fleet.md). As files they live in the kernel's page cache,
//! which gives them back under pressure.
//!
//! The files are outside the store's transactions, and not synced: the node
//! record keeps the document's hash, a session checks the file against it
//! when it opens ([`HardwareDocs::matches`]), and the agent re-sends the
//! document whenever the hashes differ (`Hello.hardware_sha256`). So a file
//! lost or torn by a crash, or removed by hand, comes back at the node's next
//! connection, and enrollment does not pay two more fsyncs per node.

use std::path::{Path, PathBuf};

use elysium_host::{FsError, RootFs};

use super::StoreError;

/// Names of documents being written ([`HardwareDocs::write`]); a crash can leave one.
const TMP_PREFIX: &str = ".elysium-tmp-";

#[derive(Debug)]
pub(super) struct HardwareDocs {
    fs: RootFs,
}

fn fs_error(source: FsError) -> StoreError {
    StoreError::Hardware(Box::new(source))
}

impl HardwareDocs {
    /// The directory is created (0700) when missing.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        let fs = RootFs::new(dir);
        fs.create_dir_all("/", 0o700).map_err(fs_error)?;
        Ok(Self { fs })
    }

    /// Node ids are `n-` and hex (enrollment makes them); anything else would
    /// not be a file name of ours.
    fn path(id: &str) -> Result<PathBuf, StoreError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(StoreError::BadNodeId(id.to_owned()));
        }
        Ok(Path::new("/").join(format!("{id}.json")))
    }

    pub fn read(&self, id: &str) -> Result<Option<String>, StoreError> {
        let path = Self::path(id)?;
        match self.fs.read_optional(&path).map_err(fs_error)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| StoreError::CorruptHardware { path: self.fs.resolve(&path) }),
        }
    }

    /// Whether the file holds the document whose hash is `sha256`.
    pub fn matches(&self, id: &str, sha256: &str) -> Result<bool, StoreError> {
        Ok(match self.fs.read_optional(Self::path(id)?).map_err(fs_error)? {
            Some(bytes) => {
                std::str::from_utf8(&bytes).is_ok_and(|doc| elysium_proto::hardware_sha256(doc) == sha256)
            }
            None => false,
        })
    }

    /// Replaces the document: a temporary file renamed over it, so a reader
    /// sees the old document or the new one. Not synced (module docs).
    pub fn write(&self, id: &str, doc: &str) -> Result<(), StoreError> {
        use std::io::Write;
        let path = Self::path(id)?;
        let (real, tmp) = (self.fs.resolve(&path), self.fs.resolve(format!("/{TMP_PREFIX}{id}")));
        let io = |op, source| fs_error(FsError { op, path: real.clone(), source });
        let mut file = elysium_host::fs::create(&tmp, 0o600).map_err(|e| io("create", e.source))?;
        file.write_all(doc.as_bytes()).map_err(|e| io("write", e))?;
        elysium_host::fs::rename(&tmp, &real).map_err(|e| io("rename into place", e.source))
    }

    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.fs.remove_file(Self::path(id)?).map(|_| ()).map_err(fs_error)
    }

    /// Removes the documents of nodes that are not in `known` (a crash between
    /// removing a node and its file, or an enrollment that was refused after
    /// its document was written) and temporary files of interrupted writes.
    /// Returns how many files went.
    pub fn sweep(&self, known: &dyn Fn(&str) -> bool) -> Result<usize, StoreError> {
        let dir = self.fs.root();
        let entries = std::fs::read_dir(dir)
            .map_err(|source| fs_error(FsError { op: "list", path: dir.to_path_buf(), source }))?;
        let mut removed = 0;
        for entry in entries {
            let entry =
                entry.map_err(|source| fs_error(FsError { op: "list", path: dir.to_path_buf(), source }))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = match name.strip_suffix(".json") {
                _ if name.starts_with(TMP_PREFIX) => true,
                Some(id) => !known(id),
                None => false,
            };
            if stale {
                self.fs.remove_file(Path::new("/").join(name)).map_err(fs_error)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
