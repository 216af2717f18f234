//! Fetching release files: small text files, redirects, and large artifacts that
//! are streamed to disk, verified against a known SHA-256 while they arrive and
//! resumed after an interruption.
//!
//! Sources are `http(s)://` URLs (reqwest with rustls, timeouts, redirects
//! followed but never from https down to http) and `file://` paths for offline
//! mirrors. Owns the `.part` file next to a target; placing the verified file
//! over the target is [`VerifiedDownload::commit`], and what else happens around
//! that (keeping the previous binary, symlinks) is the caller's.
//!
//! Memory does not grow with the artifact: chunks go through a bounded channel
//! to a blocking writer task that hashes and writes them, so at most
//! [`CHANNEL_DEPTH`] chunks are in flight while the network side keeps reading.

use std::io::{Read, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use elysium_host::{FsError, RootFs};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::k3s_release::Sha256Digest;

/// Chunks that may wait between the network and the disk writer. HTTP bodies
/// arrive in chunks of at most a few hundred KiB, file sources in [`FILE_CHUNK`]s,
/// so this bounds buffered data to a few MiB whatever the artifact's size.
pub const CHANNEL_DEPTH: usize = 16;
/// Read size for `file://` sources and for hashing files on disk.
pub const FILE_CHUNK: usize = 256 * 1024;
/// Largest hash file or other text accepted by [`Fetcher::fetch_text`]: K3s's
/// hash files are a few hundred bytes; anything near this is not one.
pub const TEXT_LIMIT: usize = 1024 * 1024;

/// Network behaviour of a [`Fetcher`].
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// How long to wait for a TCP + TLS connection.
    pub connect_timeout: Duration,
    /// How long a response may go without sending a byte (headers or body) before
    /// the transfer counts as stalled. Deliberately not a total timeout: a slow
    /// link may take many minutes for a 70 MB binary and still be healthy.
    pub read_timeout: Duration,
    /// Redirects followed per request. GitHub sends release downloads through one
    /// redirect to its object storage; the channel server adds one more.
    pub max_redirects: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            max_redirects: 10,
        }
    }
}

/// Progress of one download, handed to the caller's callback after every chunk.
/// `downloaded` includes bytes resumed from an earlier attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub downloaded: u64,
    /// The artifact's full size when the server said so.
    pub total: Option<u64>,
}

/// A fetch that failed. Every variant names the URL (or path) involved.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("could not set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("{url}: only http://, https:// and file:// URLs are supported")]
    UnsupportedScheme { url: String },
    #[error(
        "could not connect to fetch {url}; check that the server is up and reachable from this node, and the URL"
    )]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "{url} sent nothing for {}s (after {received} bytes); the server or the network stalled, run again to resume",
        timeout.as_secs_f32()
    )]
    Stalled {
        url: String,
        received: u64,
        timeout: Duration,
        #[source]
        source: reqwest::Error,
    },
    #[error("could not follow the redirects from {url}")]
    Redirect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request for {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}; check that the version exists there and that the URL is right")]
    Status { url: String, status: StatusCode },
    #[error("the transfer of {url} broke off after {received} bytes; run again to resume from there")]
    Interrupted {
        url: String,
        received: u64,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the answers from {url} to Range requests contradict each other; delete {} and run again",
        part.display()
    )]
    RangeConfusion { url: String, part: PathBuf },
    #[error("{url} is larger than {limit} bytes, too large for what should be a short text file")]
    TooLarge { url: String, limit: usize },
    #[error("{url} is not UTF-8 text")]
    NotText { url: String },
    #[error("could not read {} (from {url})", path.display())]
    LocalFile {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "SHA-256 of {url} is {actual} but {expected} was published for it; nothing was installed and the \
         partial download was deleted. Run again to download it afresh; if it fails the same way, the mirror \
         serves a different or damaged file: check release_url and the mirror's copy"
    )]
    HashMismatch { url: String, expected: Sha256Digest, actual: Sha256Digest },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("the download's disk writer for {} stopped unexpectedly", path.display())]
    Worker {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Fetches release files. Cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    read_timeout: Duration,
}

/// Raised by the redirect policy; reqwest wraps it as the source of a redirect error.
#[derive(Debug, thiserror::Error)]
enum RedirectRefused {
    #[error("refusing to follow a redirect from https to http ({to}): the file could be replaced in transit")]
    Downgrade { to: Url },
    #[error("more than {0} redirects")]
    TooMany(usize),
}

/// Whether to follow a redirect to `next` after visiting `previous` (the
/// original URL first). Never from https down to http: the hash file and the
/// binary would then both travel unprotected, and a matching pair could be
/// forged in transit.
fn redirect_verdict(previous: &[Url], next: &Url, max: usize) -> Result<(), RedirectRefused> {
    if previous.iter().any(|u| u.scheme() == "https") && next.scheme() == "http" {
        return Err(RedirectRefused::Downgrade { to: next.clone() });
    }
    if previous.len() > max {
        return Err(RedirectRefused::TooMany(max));
    }
    Ok(())
}

impl Fetcher {
    pub fn new(options: &HttpOptions) -> Result<Fetcher, DownloadError> {
        let max = options.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            match redirect_verdict(attempt.previous(), attempt.url(), max) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .redirect(policy)
            .user_agent(concat!("elysium-node/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(DownloadError::Client)?;
        Ok(Fetcher { client, read_timeout: options.read_timeout })
    }

    /// Fetches a short text file (a hash file), refusing anything over `limit` bytes.
    #[tracing::instrument(skip(self), fields(url = %url))]
    pub async fn fetch_text(&self, url: &Url, limit: usize) -> Result<String, DownloadError> {
        let mut body = Vec::new();
        let mut source = self.open(url, 0).await?;
        while let Some(chunk) = source.chunk(url, body.len() as u64).await? {
            if body.len() + chunk.len() > limit {
                return Err(DownloadError::TooLarge { url: url.to_string(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| DownloadError::NotText { url: url.to_string() })
    }

    /// Requests `url` and follows its redirects, returning where they ended.
    /// The final response's body is not read. When no redirect happened the
    /// answer must be a success, so a missing page is an error rather than a
    /// URL that merely looks resolved.
    #[tracing::instrument(skip(self), fields(url = %url))]
    pub async fn final_url(&self, url: &Url) -> Result<Url, DownloadError> {
        let response = self.send(url, 0).await?;
        let last = response.url().clone();
        if last == *url && !response.status().is_success() {
            return Err(DownloadError::Status { url: url.to_string(), status: response.status() });
        }
        Ok(last)
    }

    /// Downloads `url` next to the node path `target` and verifies it against
    /// `expected` while it streams. Returns a verified, synced file waiting for
    /// [`VerifiedDownload::commit`]; until then `target` is untouched.
    ///
    /// A `.part` file left by an interrupted attempt for the same hash is re-hashed
    /// and continued with an HTTP Range request; a server that ignores the Range
    /// (200 instead of 206) restarts the transfer from byte 0. On a hash mismatch
    /// the part is deleted (when it had been resumed, one fresh attempt follows,
    /// since the old part may be what was damaged). On an interruption the part is
    /// kept for the next attempt.
    #[tracing::instrument(skip(self, fs, progress), fields(url = %url, target = %target.display()))]
    pub async fn download_verified(
        &self,
        fs: &RootFs,
        url: &Url,
        target: &Path,
        expected: &Sha256Digest,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<VerifiedDownload, DownloadError> {
        let parent = target.parent().unwrap_or(Path::new("/"));
        fs.create_dir_all(parent, 0o755)?;
        let real_target = fs.resolve(target);
        let part = part_path(&real_target, expected);
        let mut state = PartState::resume(&part, target).await?;
        if state.len > 0 {
            tracing::info!(bytes = state.len, part = %part.display(), "found a partial download");
        }
        // Each round finishes, fails, or deletes the part and goes again from byte 0.
        // From byte 0 only a server that contradicts itself (a 206 for a range never
        // asked for) can cause another round, so three rounds are enough for every
        // honest server and the limit turns a confused one into an error.
        for _round in 0..3 {
            let (mut source, start, total) = match self.open_from(url, state.len).await? {
                Opened::Body { source, start, total } => (source, start, total),
                Opened::NothingLeft => {
                    // The server says the part already holds the whole file.
                    if state.len > 0 && state.hasher.clone().finalize().as_slice() == expected.0 {
                        let kept = state.len;
                        return VerifiedDownload::finish(state, target, real_target, *expected, kept).await;
                    }
                    tracing::warn!(
                        bytes = state.len,
                        "server has nothing past the partial file; starting over"
                    );
                    state = state.restart(target)?;
                    continue;
                }
            };
            if start != state.len {
                if start != 0 {
                    // A 206 for a range we did not ask for; ask again for everything.
                    state = state.restart(target)?;
                    continue;
                }
                tracing::warn!(
                    bytes = state.len,
                    "server ignored the Range request; downloading from the start"
                );
                state = state.restart(target)?;
            }
            let kept = state.len;
            if kept > 0 {
                tracing::info!(bytes = kept, "resuming");
            }
            progress(Progress { downloaded: kept, total });
            state = stream_to_part(state, &mut source, url, target, total, &mut progress).await?;
            let actual = Sha256Digest(state.hasher.clone().finalize().into());
            if actual == *expected {
                return VerifiedDownload::finish(state, target, real_target, *expected, kept).await;
            }
            let was_resumed = state.resumed;
            state.discard(target)?;
            if !was_resumed {
                return Err(DownloadError::HashMismatch {
                    url: url.to_string(),
                    expected: *expected,
                    actual,
                });
            }
            tracing::warn!(%actual, %expected, "resumed download does not verify; starting over");
            state = PartState::fresh(&part);
        }
        Err(DownloadError::RangeConfusion { url: url.to_string(), part })
    }

    /// Opens `url` for reading from byte `offset`.
    async fn open_from(&self, url: &Url, offset: u64) -> Result<Opened, DownloadError> {
        if url.scheme() == "file" {
            let path = local_path(url)?;
            let local =
                |source| DownloadError::LocalFile { url: url.to_string(), path: path.clone(), source };
            let mut file = tokio::fs::File::open(&path).await.map_err(local)?;
            let len = file.metadata().await.map_err(local)?.len();
            let start = if offset <= len { offset } else { 0 };
            if start == len && len > 0 {
                return Ok(Opened::NothingLeft);
            }
            tokio::io::AsyncSeekExt::seek(&mut file, SeekFrom::Start(start)).await.map_err(local)?;
            return Ok(Opened::Body { source: Source::File { file, path }, start, total: Some(len) });
        }
        let response = self.send(url, offset).await?;
        let status = response.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
            return Ok(Opened::NothingLeft);
        }
        if !status.is_success() {
            return Err(DownloadError::Status { url: url.to_string(), status });
        }
        let (start, total) = if status == StatusCode::PARTIAL_CONTENT {
            let range =
                response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(content_range);
            match range {
                Some((start, total)) => (start, total.or(response.content_length().map(|n| start + n))),
                // A 206 without a usable Content-Range cannot be placed; treat it
                // as an answer for a range we did not ask for.
                None => (u64::MAX, None),
            }
        } else {
            (0, response.content_length())
        };
        Ok(Opened::Body { source: Source::Http { response, read_timeout: self.read_timeout }, start, total })
    }

    async fn open(&self, url: &Url, offset: u64) -> Result<Source, DownloadError> {
        match self.open_from(url, offset).await? {
            Opened::Body { source, .. } => Ok(source),
            Opened::NothingLeft => Ok(Source::Empty),
        }
    }

    async fn send(&self, url: &Url, offset: u64) -> Result<reqwest::Response, DownloadError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(DownloadError::UnsupportedScheme { url: url.to_string() });
        }
        let mut request = self.client.get(url.clone());
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        request.send().await.map_err(|e| self.classify(url, 0, e))
    }

    fn classify(&self, url: &Url, received: u64, source: reqwest::Error) -> DownloadError {
        let url = url.to_string();
        // Connect first: a connect timeout is also a timeout, but "could not
        // connect" is the more useful thing to say about it.
        if source.is_connect() {
            DownloadError::Connect { url, source }
        } else if source.is_timeout() {
            DownloadError::Stalled { url, received, timeout: self.read_timeout, source }
        } else if source.is_redirect() {
            DownloadError::Redirect { url, source }
        } else if source.is_body() || source.is_decode() {
            DownloadError::Interrupted { url, received, source }
        } else {
            DownloadError::Request { url, source }
        }
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL); TOTAL may be `*` (unknown).
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((start.parse().ok()?, total))
}

fn local_path(url: &Url) -> Result<PathBuf, DownloadError> {
    url.to_file_path().map_err(|()| DownloadError::UnsupportedScheme { url: url.to_string() })
}

/// Where the part file for `target` with hash `expected` lives: hidden, in the
/// target's directory (so the final rename is atomic), named after the hash so
/// that a part of another version is never continued.
pub fn part_path(real_target: &Path, expected: &Sha256Digest) -> PathBuf {
    let name = real_target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let hash = expected.to_string();
    real_target.with_file_name(format!(".{name}.{}.part", &hash[..16]))
}

enum Opened {
    Body {
        source: Source,
        start: u64,
        total: Option<u64>,
    },
    /// 416 to a Range request, or a `file://` source no longer than the part.
    NothingLeft,
}

enum Source {
    Http { response: reqwest::Response, read_timeout: Duration },
    File { file: tokio::fs::File, path: PathBuf },
    Empty,
}

impl Source {
    async fn chunk(&mut self, url: &Url, received: u64) -> Result<Option<Bytes>, DownloadError> {
        match self {
            Source::Http { response, read_timeout } => {
                response.chunk().await.map_err(|e| classify_body(url, received, *read_timeout, e))
            }
            Source::File { file, path } => {
                let mut buf = bytes::BytesMut::with_capacity(FILE_CHUNK);
                let n = tokio::io::AsyncReadExt::read_buf(file, &mut buf).await.map_err(|source| {
                    DownloadError::LocalFile { url: url.to_string(), path: path.clone(), source }
                })?;
                Ok((n > 0).then(|| buf.freeze()))
            }
            Source::Empty => Ok(None),
        }
    }
}

/// Errors while reading a body: a read timeout is a stall, anything else a
/// transfer that broke off (connection reset, closed early, bad chunking).
fn classify_body(url: &Url, received: u64, timeout: Duration, source: reqwest::Error) -> DownloadError {
    if source.is_timeout() {
        DownloadError::Stalled { url: url.to_string(), received, timeout, source }
    } else {
        DownloadError::Interrupted { url: url.to_string(), received, source }
    }
}

/// The part file and the hash of what it holds so far.
struct PartState {
    path: PathBuf,
    len: u64,
    hasher: Sha256,
    /// Whether the bytes in the part came from an earlier attempt.
    resumed: bool,
}

impl PartState {
    fn fresh(path: &Path) -> PartState {
        PartState { path: path.to_path_buf(), len: 0, hasher: Sha256::new(), resumed: false }
    }

    /// Picks up an existing part by hashing it (a SHA-256 state cannot be saved,
    /// so continuing means reading the prefix once more).
    async fn resume(path: &Path, node_target: &Path) -> Result<PartState, DownloadError> {
        let owned = path.to_path_buf();
        let hashed = tokio::task::spawn_blocking(move || hash_prefix(&owned))
            .await
            .map_err(|source| DownloadError::Worker { path: path.to_path_buf(), source })?;
        match hashed {
            Ok((hasher, len)) => Ok(PartState { path: path.to_path_buf(), len, hasher, resumed: len > 0 }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PartState::fresh(path)),
            Err(source) => {
                Err(FsError { op: "read the partial download of", path: node_target.to_path_buf(), source }
                    .into())
            }
        }
    }

    fn discard(self, node_target: &Path) -> Result<(), FsError> {
        match elysium_host::fs::remove_file(&self.path) {
            Ok(_) => Ok(()),
            Err(e) => Err(FsError {
                op: "delete the partial download of",
                path: node_target.to_path_buf(),
                source: e.source,
            }),
        }
    }

    fn restart(self, node_target: &Path) -> Result<PartState, FsError> {
        let path = self.path.clone();
        self.discard(node_target)?;
        Ok(PartState::fresh(&path))
    }
}

/// Appends the source's chunks to the part file, hashing them on the way, with
/// the disk side on a blocking thread fed through a bounded channel.
async fn stream_to_part(
    state: PartState,
    source: &mut Source,
    url: &Url,
    node_target: &Path,
    total: Option<u64>,
    progress: &mut (impl FnMut(Progress) + Send),
) -> Result<PartState, DownloadError> {
    let fs_err = |op, source| FsError { op, path: node_target.to_path_buf(), source };
    // Mode 0755 from the start: the file becomes the binary by a rename.
    let file = elysium_host::fs::open_append(&state.path, 0o755)
        .map_err(|e| fs_err("create the partial download of", e.source))?;
    // The umask may have narrowed the mode; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fs_err("set permissions on the partial download of", e))?;

    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let PartState { path, len, mut hasher, resumed } = state;
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut written = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        Ok::<_, std::io::Error>((hasher, written))
    });

    let mut received = len;
    let read_result = loop {
        match source.chunk(url, received).await {
            Ok(Some(chunk)) => {
                received += chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    // The writer stopped; its own error says why.
                    break Ok(());
                }
                progress(Progress { downloaded: received, total });
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let written =
        writer.await.map_err(|source| DownloadError::Worker { path: node_target.to_path_buf(), source })?;
    let (hasher, written) = written.map_err(|e| fs_err("write the partial download of", e))?;
    read_result?;
    Ok(PartState { path, len: len + written, hasher, resumed })
}

/// A downloaded file whose hash matched, synced to disk next to its target.
#[derive(Debug)]
pub struct VerifiedDownload {
    part: PathBuf,
    real_target: PathBuf,
    node_target: PathBuf,
    pub sha256: Sha256Digest,
    pub bytes: u64,
    /// Bytes taken over from an earlier, interrupted attempt.
    pub resumed_from: u64,
}

impl VerifiedDownload {
    async fn finish(
        state: PartState,
        node_target: &Path,
        real_target: PathBuf,
        sha256: Sha256Digest,
        resumed_from: u64,
    ) -> Result<VerifiedDownload, DownloadError> {
        let part = state.path.clone();
        let synced =
            tokio::task::spawn_blocking(move || std::fs::File::open(&part).and_then(|f| f.sync_all()))
                .await
                .map_err(|source| DownloadError::Worker { path: node_target.to_path_buf(), source })?;
        synced.map_err(|source| FsError {
            op: "sync the download of",
            path: node_target.to_path_buf(),
            source,
        })?;
        Ok(VerifiedDownload {
            part: state.path,
            real_target,
            node_target: node_target.to_path_buf(),
            sha256,
            bytes: state.len,
            resumed_from,
        })
    }

    /// The node path this download will replace.
    pub fn target(&self) -> &Path {
        &self.node_target
    }

    /// Renames the verified file over its target (atomic: same directory), syncs
    /// the directory, and deletes parts of other versions left in it. Dropped
    /// without a commit, the verified part stays and a later download of the same
    /// hash picks it up without fetching it again.
    pub fn commit(self) -> Result<(), FsError> {
        let err = |op, source| FsError { op, path: self.node_target.clone(), source };
        elysium_host::fs::rename(&self.part, &self.real_target)
            .map_err(|e| err("rename into place", e.source))?;
        let dir = self.real_target.parent().unwrap_or(Path::new("/"));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err("sync the directory of", e))?;
        remove_stale_parts(&self.real_target);
        Ok(())
    }
}

/// Best effort: a stale part only wastes space, so failing to delete one is
/// logged, not an error.
fn remove_stale_parts(real_target: &Path) {
    let (Some(dir), Some(name)) = (real_target.parent(), real_target.file_name()) else { return };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with(&prefix)
            && file_name.ends_with(".part")
            && let Err(e) = elysium_host::fs::remove_file(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "could not delete a stale partial download");
        }
    }
}

/// SHA-256 of a file on this machine, read in [`FILE_CHUNK`]s.
pub fn hash_file(path: &Path) -> std::io::Result<Sha256Digest> {
    let (hasher, _) = hash_prefix(path)?;
    Ok(Sha256Digest(hasher.finalize().into()))
}

fn hash_prefix(path: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; FILE_CHUNK];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher, len))
}

/// SHA-256 of the node path `path`, `None` when it does not exist. Runs on the
/// blocking pool: hashing a 70 MB binary takes tens of milliseconds.
pub async fn hash_node_file(fs: &RootFs, path: &Path) -> Result<Option<Sha256Digest>, DownloadError> {
    let real = fs.resolve(path);
    let hashed = tokio::task::spawn_blocking(move || hash_file(&real))
        .await
        .map_err(|source| DownloadError::Worker { path: path.to_path_buf(), source })?;
    match hashed {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FsError { op: "hash", path: path.to_path_buf(), source }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_never_downgrade_to_http_and_are_bounded() {
        let u = |s: &str| Url::parse(s).unwrap();
        let github = u("https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/k3s");
        let storage = u("https://objects.githubusercontent.com/x");
        assert!(redirect_verdict(std::slice::from_ref(&github), &storage, 10).is_ok());
        let err =
            redirect_verdict(std::slice::from_ref(&github), &u("http://objects.example/x"), 10).unwrap_err();
        assert!(err.to_string().contains("from https to http"), "{err}");
        // Plain http mirrors may redirect within http (or up to https).
        let mirror = u("http://mirror.lan/k3s");
        assert!(redirect_verdict(std::slice::from_ref(&mirror), &u("http://mirror.lan/other"), 10).is_ok());
        assert!(redirect_verdict(std::slice::from_ref(&mirror), &storage, 10).is_ok());
        let many = vec![storage.clone(); 11];
        assert!(matches!(redirect_verdict(&many, &storage, 10), Err(RedirectRefused::TooMany(10))));
    }

    #[test]
    fn content_range_header() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(content_range("bytes */200"), None);
        assert_eq!(content_range("items 1-2/3"), None);
    }

    #[test]
    fn part_file_is_hidden_next_to_the_target_and_named_by_hash() {
        let digest: Sha256Digest =
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".parse().unwrap();
        assert_eq!(
            part_path(Path::new("/root/usr/local/bin/k3s"), &digest),
            Path::new("/root/usr/local/bin/.k3s.0011223344556677.part")
        );
    }

    #[test]
    fn hash_file_matches_a_one_shot_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Spans several read chunks and ends mid-chunk.
        let data: Vec<u8> = (0..FILE_CHUNK * 3 + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(hash_file(&path).unwrap().0, <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
