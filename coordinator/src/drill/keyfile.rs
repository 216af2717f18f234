//! The deploy key on disk for exactly as long as git needs it. git's ssh reads a key
//! only from a file (`ssh -i`, which `elysium_recovery::repo` passes in
//! `GIT_SSH_COMMAND`: the path, never the key, reaches git's environment), so the
//! coordinator secret is written 0600 (ssh refuses a key others can read) into a fresh
//! 0700 directory and removed, with the directory, when the drill is done, also when it
//! fails or panics (docs/reference/git-ssh.md#the-key-reaches-ssh-only-as-a-file).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use elysium_host::FsError;
use zeroize::Zeroizing;

/// A private key file that is removed on drop.
#[derive(Debug)]
pub(crate) struct KeyFile {
    path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl KeyFile {
    /// Writes `key` to a new file below `scratch`. ssh refuses a key whose last line
    /// has no newline, which a value pasted into `secret set` often lacks.
    pub(crate) fn write(scratch: &Path, key: &str) -> Result<KeyFile, FsError> {
        let dir =
            tempfile::Builder::new().prefix("elysium-drill-").tempdir_in(scratch).map_err(|source| {
                FsError { op: "create a private directory in", path: scratch.to_owned(), source }
            })?;
        // tempfile makes it 0700; say so rather than rely on it.
        elysium_host::fs::set_permissions(dir.path(), 0o700)?;
        let path = dir.path().join("deploy-key");
        let mut contents = Zeroizing::new(key.trim_end().to_owned());
        contents.push('\n');
        let file = KeyFile { path: path.clone(), dir: Some(dir) };
        let mut f = elysium_host::fs::create_new(&path, 0o600)?;
        // The umask can only narrow 0600; set it exactly anyway.
        elysium_host::fs::set_permissions(&path, 0o600)?;
        f.write_all(contents.as_bytes()).and_then(|()| f.sync_all()).map_err(|source| FsError {
            op: "write",
            path: path.clone(),
            source,
        })?;
        Ok(file)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if let Err(e) = elysium_host::fs::remove_file(&self.path) {
            tracing::error!(error = %e, "could not remove the drill's copy of the deploy key");
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            tracing::warn!(error = %e, "could not remove the drill's private directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_key_is_private_while_it_exists_and_gone_after() {
        let scratch = tempfile::tempdir().unwrap();
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
        let file = KeyFile::write(scratch.path(), key).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(file.path()), 0o600);
        assert_eq!(mode(file.path().parent().unwrap()), 0o700);
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), format!("{key}\n"));
        let path = file.path().to_owned();
        drop(file);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "the directory is gone too");
    }
}
