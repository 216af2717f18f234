//! Replacing the coordinator's CA without rejoining a node.
//!
//! A rotation has two steps, each a command the operator runs
//! (`coordinator certs rotate-ca`, then `… --finish`), with the coordinator
//! serving all along:
//!
//! 1. **Begin.** A new CA is made and becomes the one that signs (`ca.crt`,
//!    `ca.key`); the old one's certificate stays trusted (`ca-previous.crt`), and
//!    the old CA signs the new one's certificate once (`ca-cross.crt`). The server
//!    certificate is re-issued by the new CA. A client that still trusts only the
//!    old CA (an agent not yet told, an admin file, a join token pinning the old CA)
//!    verifies the server through the cross certificate; client certificates of
//!    either CA are accepted. Every node is sent the bundle of both CAs and asked to
//!    renew its certificate, which the new CA signs.
//! 2. **Finish.** Once every node and admin holds a certificate of the new CA, the
//!    old CA is dropped: `ca-previous.crt` and `ca-cross.crt` are removed, the
//!    server trusts and presents only the new CA, and the nodes are sent the bundle
//!    without the old one.
//!
//! The serving coordinator takes up each step from these files
//! (`tls::Acceptor::check`, every minute and on SIGHUP).
//!
//! Every write is one atomic file replacement, in an order that leaves a usable
//! CA after a crash at any point: [`load`] completes a begin that got as far as
//! replacing the CA key, and forgets one that did not.

use std::path::Path;

use elysium_host::{FsError, RootFs};

use crate::datadir::{CA_CERT, CA_KEY, DataDirError};
use crate::pki::{self, Ca, Issued};

/// The previous CA's certificate, trusted while a rotation is under way.
pub const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
/// The current CA's certificate signed by the previous CA.
pub const CROSS_CERT: &str = "ca-cross.crt";
/// The new CA, written before it replaces `ca.crt`/`ca.key`.
pub(crate) const NEXT_CA_CERT: &str = "ca.next.crt";
pub(crate) const NEXT_CA_KEY: &str = "ca.next.key";

/// What a data directory trusts besides its CA: set while a rotation is under way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotation {
    /// The previous CA's certificate (PEM).
    pub previous_ca_pem: String,
    /// The current CA's certificate signed by the previous CA (PEM).
    pub cross_pem: String,
}

/// The CA and, during a rotation, the old one, as read from a data directory.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub rotation: Option<Rotation>,
}

impl CaFiles {
    /// The CA certificates clients must chain to, current first.
    pub fn bundle_pem(&self) -> String {
        bundle(&self.cert_pem, self.rotation.as_ref())
    }
}

/// The trust bundle for a CA and a rotation under way: the current CA first.
pub fn bundle(ca_pem: &str, rotation: Option<&Rotation>) -> String {
    match rotation {
        Some(r) => format!("{}{}", with_newline(ca_pem), with_newline(&r.previous_ca_pem)),
        None => with_newline(ca_pem),
    }
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') { pem.to_owned() } else { format!("{pem}\n") }
}

/// Why a rotation step could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(
        "a CA rotation is already under way (since {since}); finish it first with `elysium-node coordinator certs rotate-ca --finish`"
    )]
    UnderWay { since: String },
    #[error("no CA rotation is under way; start one with `elysium-node coordinator certs rotate-ca`")]
    NotUnderWay,
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Reads the CA files of `dir`, healing an interrupted [`begin`] or [`finish`]
/// first. `missing` turns a missing file into the caller's error.
pub fn load(
    fs: &RootFs,
    dir: &Path,
    missing: impl Fn(&'static str) -> DataDirError,
) -> Result<CaFiles, DataDirError> {
    let read = |file: &'static str| -> Result<String, DataDirError> {
        fs.read_to_string(dir.join(file)).map_err(|e| if e.is_not_found() { missing(file) } else { e.into() })
    };
    let optional = |file: &str| -> Result<Option<String>, DataDirError> {
        Ok(fs.read_optional(dir.join(file))?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    let key_pem = read(CA_KEY)?;
    if let Some(next) = optional(NEXT_CA_CERT)? {
        if matches_key(&next, &key_pem) {
            // Crashed between the key's and the certificate's replacement: the
            // new key is in place, so the new certificate goes with it.
            tracing::warn!(dir = %dir.display(), "completing an interrupted CA rotation");
            elysium_host::fs::rename(dir.join(NEXT_CA_CERT), dir.join(CA_CERT))?;
        } else {
            // Crashed before the switch: the old CA is whole and still the one.
            tracing::warn!(dir = %dir.display(), "forgetting a CA rotation interrupted before it began");
            let current = read(CA_CERT)?;
            for file in [NEXT_CA_CERT, NEXT_CA_KEY, CROSS_CERT] {
                remove_if_present(dir, file)?;
            }
            if optional(PREVIOUS_CA_CERT)?.is_some_and(|p| p == current) {
                remove_if_present(dir, PREVIOUS_CA_CERT)?;
            }
        }
    }
    let cert_pem = read(CA_CERT)?;
    let rotation = match (optional(PREVIOUS_CA_CERT)?, optional(CROSS_CERT)?) {
        (Some(previous_ca_pem), Some(cross_pem)) if previous_ca_pem != cert_pem => {
            Some(Rotation { previous_ca_pem, cross_pem })
        }
        (None, None) => None,
        // Half of a finish (the cross certificate goes first), or the leftover of a
        // begin that never switched: no rotation.
        _ => {
            for file in [CROSS_CERT, PREVIOUS_CA_CERT] {
                remove_if_present(dir, file)?;
            }
            None
        }
    };
    Ok(CaFiles { cert_pem, key_pem, rotation })
}

fn matches_key(cert_pem: &str, key_pem: &str) -> bool {
    pki::pem_to_der(cert_pem).is_some_and(|der| pki::key_matches(&der, key_pem))
}

fn remove_if_present(dir: &Path, file: &str) -> Result<(), FsError> {
    elysium_host::fs::remove_file(dir.join(file)).map(|_| ())
}

/// What [`begin`] made.
#[derive(Debug)]
pub struct Begun {
    pub ca: Ca,
    pub previous_fingerprint: String,
    /// The server certificate the new CA issued.
    pub server: Issued,
}

/// Step 1: a new CA for `dir` whose current CA is `current`. Writes the new CA,
/// the cross certificate and the old CA's certificate, then switches `ca.key`
/// and `ca.crt` to the new CA and re-issues the server certificate with it.
pub fn begin(dir: &crate::datadir::DataDir) -> Result<Begun, RotationError> {
    let fs = RootFs::new("/");
    if let Some(r) = &dir.rotation {
        let since = pki::pem_to_der(&r.cross_pem)
            .and_then(|der| pki::validity(&der).ok())
            .map(|v| pki::format_unix(v.not_before_unix))
            .unwrap_or_else(|| "an earlier run".into());
        return Err(RotationError::UnderWay { since });
    }
    let (next, issued, cross_pem) = dir.ca.successor(&dir.config.name)?;
    let path = &dir.path;
    // Everything the switch needs is on disk before `ca.key` changes.
    fs.write_atomic(path.join(NEXT_CA_KEY), issued.key_pem.as_bytes(), 0o600)?;
    fs.write_atomic(path.join(NEXT_CA_CERT), issued.cert_pem.as_bytes(), 0o644)?;
    fs.write_atomic(path.join(CROSS_CERT), cross_pem.as_bytes(), 0o644)?;
    fs.write_atomic(path.join(PREVIOUS_CA_CERT), dir.ca.cert_pem().as_bytes(), 0o644)?;
    // The switch: key, then certificate (`load` completes it from here).
    elysium_host::fs::rename(path.join(NEXT_CA_KEY), path.join(CA_KEY))?;
    elysium_host::fs::rename(path.join(NEXT_CA_CERT), path.join(CA_CERT))?;
    let server = crate::datadir::reissue_server(path, &next, &dir.config)?;
    let rotation = Rotation { previous_ca_pem: dir.ca.cert_pem().to_owned(), cross_pem };
    update_admin_file(path, &bundle(next.cert_pem(), Some(&rotation)))?;
    tracing::info!(ca = %next.fingerprint(), previous = %dir.ca.fingerprint(), "CA rotation begun");
    Ok(Begun { previous_fingerprint: dir.ca.fingerprint(), ca: next, server })
}

/// Step 2: stops trusting the previous CA. The cross certificate goes first, so a
/// crash in between leaves no cross certificate without its CA.
pub fn finish(dir: &crate::datadir::DataDir) -> Result<(), RotationError> {
    if dir.rotation.is_none() {
        return Err(RotationError::NotUnderWay);
    }
    remove_if_present(&dir.path, CROSS_CERT)?;
    remove_if_present(&dir.path, PREVIOUS_CA_CERT)?;
    update_admin_file(&dir.path, &bundle(dir.ca.cert_pem(), None))?;
    tracing::info!(ca = %dir.ca.fingerprint(), "CA rotation finished: the previous CA is no longer trusted");
    Ok(())
}

/// The data directory's own `admin.toml` trusts the new bundle (its certificate
/// is renewed through the coordinator: `elysium-node admin renew`).
fn update_admin_file(dir: &Path, bundle_pem: &str) -> Result<(), DataDirError> {
    let path = dir.join(crate::datadir::ADMIN_FILE);
    if !RootFs::new("/").exists(&path) {
        return Ok(());
    }
    let mut cfg = crate::datadir::load_admin_config(&path)?;
    cfg.ca_pem = bundle_pem.to_owned();
    crate::datadir::replace_admin_config(&path, &cfg)
}

// Tested with the TLS it configures: tls/ca_rotation_tests.rs.
