//! A local copy of the K3s GitHub release layout, and a tiny static HTTP server for it.
//!
//! Layout (docs/reference/k3s.md#release-layout, amd64): `<dir>/download/<version>/k3s` and
//! `<dir>/download/<version>/sha256sum-amd64.txt` in `sha256sum` format. The hash file
//! also lists airgap assets, first, so a parser that takes the first line (or matches
//! `k3s` as a prefix) picks the wrong hash. Serve `<dir>` and point the downloader's
//! base URL at `http://ADDR/` (the equivalent of `https://github.com/k3s-io/k3s/releases/`).
//!
//! This module does not implement the channel server (docs/reference/k3s.md#channels) or
//! other architectures.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::artifact::{self, Behaviour};

/// Name of the amd64 binary asset (install.sh: `k3s${SUFFIX}` with an empty suffix).
pub const BINARY_ASSET: &str = "k3s";
/// Name of the amd64 hash file (install.sh: `sha256sum-${ARCH}.txt`).
pub const HASH_ASSET: &str = "sha256sum-amd64.txt";
/// Decoy assets listed in the hash file, as in real releases.
pub const DECOY_ASSETS: [&str; 2] = ["k3s-airgap-images-amd64.tar.zst", "k3s-images.txt"];

/// Builds the release layout under `dir` with one stamped binary per release.
pub fn build_mirror(dir: &Path, base_binary: &Path, releases: &[(&str, Behaviour)]) -> io::Result<()> {
    for (version, behaviour) in releases {
        let rel = dir.join("download").join(version);
        fs::create_dir_all(&rel)?;
        let bin = rel.join(BINARY_ASSET);
        artifact::stamp(base_binary, &bin, version, *behaviour)?;
        let mut lines = Vec::new();
        // The first decoy goes before the binary's line, the second after it.
        let [first, second] = DECOY_ASSETS;
        lines.push(decoy(&rel, first, version)?);
        lines.push(format!("{}  {BINARY_ASSET}\n", sha256_file(&bin)?));
        lines.push(decoy(&rel, second, version)?);
        fs::write(rel.join(HASH_ASSET), lines.concat())?;
    }
    Ok(())
}

/// `[k3s.sha256]` pins for every release under `dir`, read from each release's
/// published hash file, as an operator copies them from the release page. The mirrors
/// of the tests are plain `http://`, which a cluster spec accepts only with pins.
pub fn pins_toml(dir: &Path) -> io::Result<String> {
    let mut out = String::new();
    let mut versions: Vec<_> = fs::read_dir(dir.join("download"))?.filter_map(Result::ok).collect();
    versions.sort_by_key(|e| e.file_name());
    for entry in versions {
        let text = fs::read_to_string(entry.path().join(HASH_ASSET))?;
        let hash = text.lines().find_map(|l| l.strip_suffix(&format!("  {BINARY_ASSET}")).map(str::to_owned));
        if let Some(hash) = hash {
            out.push_str(&format!(
                "\n[k3s.sha256.\"{}\"]\namd64 = \"{hash}\"\n",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    Ok(out)
}

/// Writes a small fake asset and returns its `sha256sum` line.
fn decoy(rel: &Path, name: &str, version: &str) -> io::Result<String> {
    let content = format!("stand-in {name} for {version}\n");
    fs::write(rel.join(name), &content)?;
    Ok(format!("{}  {name}\n", hex::encode(Sha256::digest(content.as_bytes()))))
}

/// Hex SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// A static file server over a directory, on its own thread, stopped on drop.
///
/// `GET /path` serves `<dir>/path` (percent-decoded, so `v1.31.4%2Bk3s1` works);
/// anything else is 404. Requests are not logged: tests assert on results.
#[derive(Debug)]
pub struct MirrorServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MirrorServer {
    /// Serves `dir` on `127.0.0.1` with a free port.
    pub fn start(dir: &Path) -> io::Result<Self> {
        Self::start_on(dir, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves `dir` on `addr` (e.g. a link-local address on a test bridge).
    pub fn start_on(dir: &Path, addr: SocketAddr) -> io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let dir = Arc::new(dir.to_path_buf());
        let (stop, stopped) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("k3s-mirror".into()).spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else { return };
                tokio::select! {
                    _ = stopped => {}
                    _ = accept_loop(listener, dir) => {}
                }
            });
        })?;
        Ok(Self { addr, stop: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base to put in front of `/download/<version>/k3s`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MirrorServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, dir: Arc<PathBuf>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Transient (e.g. EMFILE): back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let dir = dir.clone();
        tokio::spawn(async move {
            let _ = serve_file(stream, &dir).await;
        });
    }
}

async fn serve_file(mut stream: tokio::net::TcpStream, dir: &Path) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let path = percent_decode(target.split('?').next().unwrap_or("/"));
    let file = safe_join(dir, &path);
    let found = match (&file, method) {
        (Some(f), "GET" | "HEAD") => tokio::fs::read(f).await.ok(),
        _ => None,
    };
    let (status, body) = match found {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", b"Not Found\n".to_vec()),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(&body).await?;
    }
    stream.shutdown().await
}

/// `dir` joined with a URL path, refusing anything that leaves `dir`.
pub fn safe_join(dir: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = Path::new(url_path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = dir.join(rel);
    full.is_file().then_some(full)
}

/// Decodes `%XX` escapes (the `+` in versions arrives as `%2B`).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // Two hex digits are at most 0xff.
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_plus_and_stray_percent() {
        assert_eq!(percent_decode("/download/v1.31.4%2Bk3s1/k3s"), "/download/v1.31.4+k3s1/k3s");
        assert_eq!(percent_decode("/a%2"), "/a%2");
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn traversal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(safe_join(dir.path(), "/../etc/passwd").is_none());
    }
}
