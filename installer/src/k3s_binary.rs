//! Getting the K3s binary onto a node: resolve the version (pinned or from the
//! channel server), read the published hash, skip the download when the
//! installed binary already matches, otherwise download and verify, keep the
//! replaced binary as `k3s.previous`, and place the new one atomically. Also the
//! `kubectl`/`crictl`/`ctr` symlinks.
//!
//! Not here: deciding whether an upgrade is allowed ([`crate::k3s_version`] has
//! the preflight), the unit ([`crate::k3s_service`]), restarting K3s, and rolling
//! back (which swaps `k3s.previous` back in).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use elysium_host::{FsError, RootFs};

use crate::download::{DownloadError, Fetcher, Progress, TEXT_LIMIT, hash_node_file};
use crate::k3s_release::{
    HashFileError, K3sRelease, Sha256Digest, UrlError, VersionSelector, parse_hash_file,
};
use crate::k3s_version::{K3sVersion, VersionError};

/// The installed binary's file name; install.sh installs every architecture's
/// binary under this name.
pub const BINARY_NAME: &str = "k3s";
/// Appended to the binary's path for the copy kept for rollback.
pub const PREVIOUS_SUFFIX: &str = ".previous";
/// The commands install.sh links to `k3s` (`create_symlinks`).
pub const SYMLINKS: [&str; 3] = ["kubectl", "crictl", "ctr"];

/// What went wrong getting the K3s binary.
#[derive(Debug, thiserror::Error)]
pub enum K3sArtifactError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("the hash file {url} does not give the binary's hash")]
    HashFile {
        url: String,
        #[source]
        source: HashFileError,
    },
    #[error(
        "channel {channel:?} needs a channel server over http(s), and channel_url gives {url}; for an offline \
         mirror pin `version` instead"
    )]
    ChannelNeedsHttp { channel: String, url: String },
    #[error(
        "the channel server sent {channel:?} from {url} to {final_url}, which does not end in a K3s version"
    )]
    ChannelAnswer {
        channel: String,
        url: String,
        final_url: String,
        #[source]
        source: VersionError,
    },
    #[error(
        "K3s {version} for {arch} is not pinned, and release_url or channel_url is http:// (nothing \
         authenticates the binary or its hash file): add [k3s.sha256.\"{version}\"] {arch} = \"<sha256 of the \
         binary>\" to the cluster spec, or use an https:// or file:// mirror"
    )]
    Unpinned { version: String, arch: &'static str },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// What [`ensure_k3s_binary`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryOutcome {
    /// The installed binary already has the published hash; nothing was downloaded.
    AlreadyInstalled { sha256: Sha256Digest },
    /// A new binary is in place. `previous` is where the one it replaced was kept.
    Installed { sha256: Sha256Digest, bytes: u64, resumed_from: u64, previous: Option<PathBuf> },
}

/// The version `release` asks for: the pinned one, or the channel's current
/// release. Like install.sh, the channel server is asked for
/// `{channel_url}/{channel}`; it redirects to `.../releases/tag/<version>`, and
/// the last path segment of the final URL, percent-decoded, is the version.
#[tracing::instrument(skip_all, fields(version = ?release.version))]
pub async fn resolve_version(
    fetcher: &Fetcher,
    release: &K3sRelease,
) -> Result<K3sVersion, K3sArtifactError> {
    let channel = match &release.version {
        VersionSelector::Pinned(v) => return Ok(v.clone()),
        VersionSelector::Channel(c) => c,
    };
    let url = release.channel_request_url(channel)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(K3sArtifactError::ChannelNeedsHttp { channel: channel.clone(), url: url.to_string() });
    }
    let final_url = fetcher.final_url(&url).await?;
    let segment = final_url.path_segments().and_then(|mut s| s.rfind(|s| !s.is_empty())).unwrap_or("");
    // GitHub's tag URLs spell the `+` as %2B.
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    let version = decoded.parse::<K3sVersion>().map_err(|source| K3sArtifactError::ChannelAnswer {
        channel: channel.clone(),
        url: url.to_string(),
        final_url: final_url.to_string(),
        source,
    })?;
    tracing::info!(channel = %channel, version = %version, "resolved channel");
    Ok(version)
}

/// The hash `version`'s binary must have: the operator's pin, or else the one
/// published in its `sha256sum-<arch>.txt` (refused when only pins may be trusted).
pub async fn published_hash(
    fetcher: &Fetcher,
    release: &K3sRelease,
    version: &K3sVersion,
) -> Result<Sha256Digest, K3sArtifactError> {
    if let Some(pin) = release.pins.by_version.get(&version.to_string()) {
        tracing::debug!(%version, "using the pinned SHA-256 instead of the release's hash file");
        return Ok(*pin);
    }
    if release.pins.required {
        return Err(K3sArtifactError::Unpinned {
            version: version.to_string(),
            arch: release.arch.hash_file_arch(),
        });
    }
    let url = release.hash_file_url(version)?;
    let text = fetcher.fetch_text(&url, TEXT_LIMIT).await?;
    parse_hash_file(&text, &release.arch.binary_name())
        .map_err(|source| K3sArtifactError::HashFile { url: url.to_string(), source })
}

/// Makes `{bin_dir}/k3s` the published binary of `version`: skips the download
/// when the installed file already has the published hash (fixing its mode if
/// needed); otherwise downloads and verifies it (resuming an interrupted
/// attempt), keeps the binary it replaces as `k3s.previous`, and renames the new
/// one into place. On any error before that rename, `{bin_dir}` is as it was,
/// apart from a `.part` file that an interrupted transfer leaves for resuming.
#[tracing::instrument(skip(fetcher, fs, release, progress), fields(version = %version, bin_dir = %bin_dir.display()))]
pub async fn ensure_k3s_binary(
    fetcher: &Fetcher,
    fs: &RootFs,
    release: &K3sRelease,
    version: &K3sVersion,
    bin_dir: &Path,
    progress: impl FnMut(Progress) + Send,
) -> Result<BinaryOutcome, K3sArtifactError> {
    let expected = published_hash(fetcher, release, version).await?;
    let target = bin_dir.join(BINARY_NAME);
    if hash_node_file(fs, &target).await? == Some(expected) {
        if fs.mode(&target)? != 0o755 {
            fs.set_mode(&target, 0o755)?;
        }
        tracing::info!(sha256 = %expected, "installed k3s matches the published hash; skipping the download");
        return Ok(BinaryOutcome::AlreadyInstalled { sha256: expected });
    }
    let url = release.binary_url(version)?;
    let verified = fetcher.download_verified(fs, &url, &target, &expected, progress).await?;
    let (bytes, resumed_from) = (verified.bytes, verified.resumed_from);
    let previous = keep_previous(fs, &target)?;
    verified.commit()?;
    tracing::info!(sha256 = %expected, bytes, resumed_from, "k3s installed");
    Ok(BinaryOutcome::Installed { sha256: expected, bytes, resumed_from, previous })
}

/// Where the copy of `binary` kept for rollback lives: `k3s` → `k3s.previous`.
pub fn previous_path(binary: &Path) -> PathBuf {
    let mut name = binary.as_os_str().to_owned();
    name.push(PREVIOUS_SUFFIX);
    PathBuf::from(name)
}

/// Keeps the current `binary` as [`previous_path`] before it is replaced: a hard
/// link made under a temporary name and renamed over any older copy, so
/// `binary` itself never disappears and `k3s.previous` is always whole. Returns
/// the node path of the copy, `None` when there is no binary yet.
pub fn keep_previous(fs: &RootFs, binary: &Path) -> Result<Option<PathBuf>, FsError> {
    let previous = previous_path(binary);
    let real = fs.resolve(binary);
    let real_previous = fs.resolve(&previous);
    let tmp = temp_sibling(&real_previous);
    let err = |op, source| FsError { op, path: previous.clone(), source };
    remove_if_present(&tmp).map_err(|e| err("clear a temporary file for", e))?;
    match elysium_host::fs::hard_link(&real, &tmp) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => return Ok(None),
        // Some filesystems (FUSE, some network mounts) have no hard links: copy.
        Err(_) => {
            elysium_host::fs::copy(&real, &tmp).map_err(|e| err("copy the current binary to", e.source))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| err("sync", e))?;
        }
    }
    if let Err(e) = elysium_host::fs::rename(&tmp, &real_previous) {
        // Best effort: do not leave the temporary link behind.
        let _ = elysium_host::fs::remove_file(&tmp);
        return Err(err("rename into place", e.source));
    }
    Ok(Some(previous))
}

/// `INSTALL_K3S_SYMLINK`: what to do about `kubectl`, `crictl` and `ctr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SymlinkPolicy {
    /// Create missing links; leave any existing file or foreign link alone.
    #[default]
    Create,
    /// Touch nothing (`skip`).
    Skip,
    /// Replace whatever is there with a link to `k3s` (`force`).
    Force,
}

/// What happened to one command's symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymlinkAction {
    Created,
    /// Already a link to `k3s`.
    Unchanged,
    /// Something else was there and [`SymlinkPolicy::Force`] replaced it.
    Replaced,
    /// Something else is there (a real `kubectl`, a link elsewhere); left alone.
    KeptExisting,
    /// [`SymlinkPolicy::Skip`].
    Skipped,
}

/// Links `kubectl`, `crictl` and `ctr` in `bin_dir` to `k3s` (relative, as
/// install.sh's `ln -sf k3s`), idempotently and atomically (a new link is made
/// under a temporary name and renamed into place).
pub fn ensure_symlinks(
    fs: &RootFs,
    bin_dir: &Path,
    policy: SymlinkPolicy,
) -> Result<Vec<(PathBuf, SymlinkAction)>, FsError> {
    let mut done = Vec::new();
    for command in SYMLINKS {
        let node_path = bin_dir.join(command);
        let action = ensure_symlink(fs, &node_path, policy)?;
        if matches!(action, SymlinkAction::Created | SymlinkAction::Replaced) {
            tracing::info!(path = %node_path.display(), ?action, "symlink to k3s");
        }
        done.push((node_path, action));
    }
    Ok(done)
}

fn ensure_symlink(fs: &RootFs, node_path: &Path, policy: SymlinkPolicy) -> Result<SymlinkAction, FsError> {
    if policy == SymlinkPolicy::Skip {
        return Ok(SymlinkAction::Skipped);
    }
    let real = fs.resolve(node_path);
    let err = |op, source| FsError { op, path: node_path.to_path_buf(), source };
    let action = match std::fs::symlink_metadata(&real) {
        Err(e) if e.kind() == ErrorKind::NotFound => SymlinkAction::Created,
        Err(e) => return Err(err("inspect", e)),
        Ok(meta) if meta.file_type().is_symlink() => {
            let points_to = std::fs::read_link(&real).map_err(|e| err("read the link", e))?;
            if points_to == Path::new(BINARY_NAME)
                || points_to == fs.resolve(node_path.with_file_name(BINARY_NAME))
            {
                return Ok(SymlinkAction::Unchanged);
            }
            if policy == SymlinkPolicy::Force { SymlinkAction::Replaced } else { SymlinkAction::KeptExisting }
        }
        Ok(_) if policy == SymlinkPolicy::Force => SymlinkAction::Replaced,
        Ok(_) => SymlinkAction::KeptExisting,
    };
    if action == SymlinkAction::KeptExisting {
        return Ok(action);
    }
    let tmp = temp_sibling(&real);
    remove_if_present(&tmp).map_err(|e| err("clear a temporary link for", e))?;
    elysium_host::fs::symlink(BINARY_NAME, &tmp).map_err(|e| err("create a link for", e.source))?;
    if let Err(e) = elysium_host::fs::rename(&tmp, &real) {
        let _ = elysium_host::fs::remove_file(&tmp);
        return Err(err("rename a link into place at", e.source));
    }
    Ok(action)
}

/// A hidden name next to `real` for building a file or link before renaming it
/// over `real`. The pid keeps two processes from sharing one.
fn temp_sibling(real: &Path) -> PathBuf {
    let name = real.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    real.with_file_name(format!(".{name}.elysium-tmp-{}", std::process::id()))
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    elysium_host::fs::remove_file(path).map(|_| ()).map_err(|e| e.source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, RootFs) {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        (dir, fs)
    }

    #[test]
    fn keep_previous_links_the_current_binary_and_replaces_an_older_copy() {
        let (_dir, fs) = root();
        let bin = Path::new("/usr/local/bin/k3s");
        assert_eq!(keep_previous(&fs, bin).unwrap(), None);
        assert!(!fs.exists("/usr/local/bin/k3s.previous"));

        fs.write_atomic(bin, b"old", 0o755).unwrap();
        fs.write_atomic("/usr/local/bin/k3s.previous", b"older", 0o755).unwrap();
        let kept = keep_previous(&fs, bin).unwrap();
        assert_eq!(kept.as_deref(), Some(Path::new("/usr/local/bin/k3s.previous")));
        assert_eq!(fs.read("/usr/local/bin/k3s.previous").unwrap(), b"old");
        // The binary itself is still there, and no temporary name is left.
        assert_eq!(fs.read(bin).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(fs.resolve("/usr/local/bin")).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn symlinks_are_idempotent_and_respect_existing_files() {
        let (_dir, fs) = root();
        let bin = Path::new("/usr/local/bin");
        fs.write_atomic("/usr/local/bin/k3s", b"k3s", 0o755).unwrap();
        fs.write_atomic("/usr/local/bin/kubectl", b"a real kubectl", 0o755).unwrap();
        std::os::unix::fs::symlink("/opt/crictl", fs.resolve("/usr/local/bin/crictl")).unwrap();

        let actions = |policy| -> Vec<SymlinkAction> {
            ensure_symlinks(&fs, bin, policy).unwrap().into_iter().map(|(_, a)| a).collect()
        };
        use SymlinkAction::*;
        assert_eq!(actions(SymlinkPolicy::Skip), [Skipped, Skipped, Skipped]);
        assert!(!fs.exists("/usr/local/bin/ctr"));
        assert_eq!(actions(SymlinkPolicy::Create), [KeptExisting, KeptExisting, Created]);
        assert_eq!(fs.read("/usr/local/bin/kubectl").unwrap(), b"a real kubectl");
        assert_eq!(
            std::fs::read_link(fs.resolve("/usr/local/bin/crictl")).unwrap(),
            Path::new("/opt/crictl")
        );
        assert_eq!(std::fs::read_link(fs.resolve("/usr/local/bin/ctr")).unwrap(), Path::new("k3s"));
        assert_eq!(fs.read("/usr/local/bin/ctr").unwrap(), b"k3s");
        assert_eq!(actions(SymlinkPolicy::Create), [KeptExisting, KeptExisting, Unchanged]);
        assert_eq!(actions(SymlinkPolicy::Force), [Replaced, Replaced, Unchanged]);
        assert_eq!(fs.read("/usr/local/bin/kubectl").unwrap(), b"k3s");
        assert_eq!(actions(SymlinkPolicy::Force), [Unchanged, Unchanged, Unchanged]);
        // k3s plus three links, nothing temporary left over.
        assert_eq!(std::fs::read_dir(fs.resolve(bin)).unwrap().count(), 4);
    }
}
