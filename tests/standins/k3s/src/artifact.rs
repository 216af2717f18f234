//! The stamp that makes one stand-in build into many distinct "K3s releases".
//!
//! The agent under test installs release artifacts and runs them unchanged, so the
//! version and behaviour of an artifact cannot come from flags: they are appended to
//! the executable file itself and read back from `/proc/self/exe` at start.
//!
//! Trailer layout (appended after the ELF image, which the kernel ignores):
//!
//! ```text
//! <original executable bytes>
//! "\n#ELYSIUM-K3S-STANDIN " <one-line JSON> "\n"      <- the block, N bytes
//! N as 8 bytes, unsigned little-endian                 <- the last 8 bytes of the file
//! ```
//!
//! The JSON is `{"version":"v1.31.4+k3s1","commit":"a1b2c3d4","behaviour":"healthy"}`.
//! A file is stamped only if the last 8 bytes give a plausible N and the block starts
//! with the marker and ends with a newline; anything else reads as "no trailer"
//! (version [`UNSTAMPED_VERSION`], healthy). A marker followed by JSON that does not
//! parse is an error: a broken artifact must not silently behave as a healthy one.
//! Stamping an already stamped file replaces its trailer.
//!
//! This module does not own what the behaviours do (see `server` and `agent`).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Marker that opens the trailer block.
pub const TRAILER_MARKER: &[u8] = b"\n#ELYSIUM-K3S-STANDIN ";
/// Upper bound on a trailer block; a larger length field means "not a trailer".
const MAX_TRAILER_LEN: u64 = 64 * 1024;
/// Version reported by a build that carries no trailer.
pub const UNSTAMPED_VERSION: &str = "v0.0.0-standin";
/// Commit reported by a build that carries no trailer.
pub const UNSTAMPED_COMMIT: &str = "00000000";
/// Go version printed on the second line of `--version`; K3s v1.31.4 was built with it.
pub const GO_VERSION: &str = "go1.22.9";

/// What a stand-in artifact does when started as `server` or `agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Serves the contract and notifies systemd `READY=1`.
    Healthy,
    /// Starts and writes its files, but never notifies readiness and never listens
    /// (no `/ping`, no kubelet healthz): a release that hangs during start.
    NeverReady,
    /// Exits 1 about half a second after start with a panic-like message on stderr.
    Crash,
}

impl Behaviour {
    /// The name used in the trailer JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::Healthy => "healthy",
            Behaviour::NeverReady => "never-ready",
            Behaviour::Crash => "crash",
        }
    }
}

impl std::fmt::Display for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity and behaviour of one artifact, as carried by its trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// K3s version string, e.g. `v1.31.4+k3s1`.
    pub version: String,
    /// Short commit printed in parentheses by `--version`.
    pub commit: String,
    pub behaviour: Behaviour,
}

impl Stamp {
    /// A stamp whose commit is derived from the version, so the same version always
    /// reports the same commit.
    pub fn new(version: &str, behaviour: Behaviour) -> Self {
        let digest = Sha256::digest(format!("k3s-standin:{version}").as_bytes());
        Self { version: version.to_owned(), commit: hex::encode(&digest[..4]), behaviour }
    }

    /// What a build without trailer reports.
    pub fn unstamped() -> Self {
        Self {
            version: UNSTAMPED_VERSION.to_owned(),
            commit: UNSTAMPED_COMMIT.to_owned(),
            behaviour: Behaviour::Healthy,
        }
    }

    /// Exactly K3s's `--version` output (two lines).
    pub fn version_text(&self) -> String {
        format!("k3s version {} ({})\ngo version {GO_VERSION}\n", self.version, self.commit)
    }
}

/// Reading or writing an artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("could not read the artifact {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the artifact {path} has a stand-in trailer whose JSON is not valid; re-stamp it")]
    BadTrailer {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The stamp of the running executable (`/proc/self/exe`).
pub fn current() -> Result<Stamp, ArtifactError> {
    read_stamp(Path::new("/proc/self/exe"))
}

/// The stamp of an executable file, or [`Stamp::unstamped`] when it has none.
pub fn read_stamp(path: &Path) -> Result<Stamp, ArtifactError> {
    let read_err = |source| ArtifactError::Read { path: path.display().to_string(), source };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    match read_block(&mut file, len).map_err(read_err)? {
        None => Ok(Stamp::unstamped()),
        Some(block) => parse_block(&block)
            .map_err(|source| ArtifactError::BadTrailer { path: path.display().to_string(), source }),
    }
}

/// The trailer block (marker .. newline) if the file ends with one.
fn read_block(file: &mut fs::File, len: u64) -> io::Result<Option<Vec<u8>>> {
    if len < 8 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(len - 8))?;
    let mut n = [0u8; 8];
    file.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    let min = TRAILER_MARKER.len() as u64 + 1;
    if n < min || n > MAX_TRAILER_LEN || n > len - 8 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(len - 8 - n))?;
    // n <= MAX_TRAILER_LEN, so the cast cannot truncate.
    let mut block = vec![0u8; n as usize];
    file.read_exact(&mut block)?;
    if block.starts_with(TRAILER_MARKER) && block.ends_with(b"\n") { Ok(Some(block)) } else { Ok(None) }
}

fn parse_block(block: &[u8]) -> Result<Stamp, serde_json::Error> {
    let json = &block[TRAILER_MARKER.len()..block.len() - 1];
    serde_json::from_slice(json)
}

/// The bytes appended to a base executable for `stamp`.
pub fn trailer_bytes(stamp: &Stamp) -> Vec<u8> {
    let mut block = TRAILER_MARKER.to_vec();
    // Serialising a struct of strings and a unit enum cannot fail.
    block.extend_from_slice(serde_json::to_string(stamp).unwrap_or_default().as_bytes());
    block.push(b'\n');
    let n = block.len() as u64;
    block.extend_from_slice(&n.to_le_bytes());
    block
}

/// Writes `out`: a copy of `base_binary` (without any trailer it already had) with a
/// trailer for `version` and `behaviour`, mode 0755. The commit is derived from the
/// version. Distinct (version, behaviour) pairs give distinct SHA-256s.
pub fn stamp(base_binary: &Path, out: &Path, version: &str, behaviour: Behaviour) -> io::Result<()> {
    stamp_with(base_binary, out, &Stamp::new(version, behaviour))
}

/// Like [`stamp`] with a caller-chosen [`Stamp`] (e.g. a specific commit).
pub fn stamp_with(base_binary: &Path, out: &Path, stamp: &Stamp) -> io::Result<()> {
    let mut base = fs::File::open(base_binary)?;
    let len = base.metadata()?.len();
    let body_len = match read_block(&mut base, len)? {
        Some(block) => len - 8 - block.len() as u64,
        None => len,
    };
    base.seek(SeekFrom::Start(0))?;
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    // Write next to the target and rename, so a concurrent reader (or an exec) never
    // sees a half-written executable.
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("k3s"),
        std::process::id()
    ));
    let result = (|| {
        let mut dst = fs::File::create(&tmp)?;
        io::copy(&mut (&mut base).take(body_len), &mut dst)?;
        dst.write_all(&trailer_bytes(stamp))?;
        dst.set_permissions(fs::Permissions::from_mode(0o755))?;
        dst.sync_all()?;
        drop(dst);
        fs::rename(&tmp, out)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trips_and_restamping_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        fs::write(&base, b"\x7fELF pretend executable").unwrap();
        assert_eq!(read_stamp(&base).unwrap(), Stamp::unstamped());

        let a = dir.path().join("a/k3s");
        stamp(&base, &a, "v1.31.4+k3s1", Behaviour::NeverReady).unwrap();
        let s = read_stamp(&a).unwrap();
        assert_eq!(s.version, "v1.31.4+k3s1");
        assert_eq!(s.behaviour, Behaviour::NeverReady);
        assert_eq!(s.commit.len(), 8);
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o755);

        let b = dir.path().join("b");
        stamp(&a, &b, "v1.32.0+k3s1", Behaviour::Crash).unwrap();
        let bytes = fs::read(&b).unwrap();
        assert!(bytes.starts_with(b"\x7fELF pretend executable\n#ELYSIUM-K3S-STANDIN {"));
        assert_eq!(bytes.windows(TRAILER_MARKER.len()).filter(|w| *w == TRAILER_MARKER).count(), 1);
        assert_eq!(read_stamp(&b).unwrap().behaviour, Behaviour::Crash);
    }

    #[test]
    fn corrupt_trailer_json_is_an_error_not_a_healthy_default() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k3s");
        let mut bytes = b"binary".to_vec();
        let block = [TRAILER_MARKER, b"{not json}\n"].concat();
        bytes.extend_from_slice(&block);
        bytes.extend_from_slice(&(block.len() as u64).to_le_bytes());
        fs::write(&f, bytes).unwrap();
        assert!(matches!(read_stamp(&f), Err(ArtifactError::BadTrailer { .. })));
    }

    #[test]
    fn version_text_matches_k3s() {
        let s = Stamp {
            version: "v1.31.4+k3s1".into(),
            commit: "a1b2c3d4".into(),
            behaviour: Behaviour::Healthy,
        };
        assert_eq!(s.version_text(), "k3s version v1.31.4+k3s1 (a1b2c3d4)\ngo version go1.22.9\n");
    }
}
