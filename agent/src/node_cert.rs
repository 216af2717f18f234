//! The node's certificate and key, and their renewal.
//!
//! When the coordinator asks (a third of the certificate's lifetime remains), the
//! agent makes a new key, sends a CSR over the open session and writes what comes
//! back *beside* the identity in use: `node.next.key` (0600), then `node.next.crt`.
//! The next session opens with the new pair; once the coordinator accepted it, the
//! new pair is renamed over the old one, key first, then certificate.
//!
//! Every file is replaced atomically, and a reader takes the first pair whose key
//! matches its certificate, newest first ([`CANDIDATES`]). So a crash at any
//! moment leaves at least one pair the coordinator accepts:
//!
//! - before `node.next.crt` is written: the old pair (`node.crt`, `node.key`);
//! - both next files written: the new pair, the old one as well;
//! - between the two renames: `node.next.crt` with `node.key` (now the new key).

use std::sync::Arc;

use elysium_host::{FsError, RootFs};

use crate::paths;
use crate::transport::{self, TransportError};

/// The next certificate and key, until a session opened with them.
pub const NEXT_CERT: &str = "/etc/elysium/node.next.crt";
pub const NEXT_KEY: &str = "/etc/elysium/node.next.key";

/// Pairs (certificate, key) a node may hold, the newest first.
const CANDIDATES: [(&str, &str); 3] =
    [(NEXT_CERT, NEXT_KEY), (NEXT_CERT, paths::NODE_KEY), (paths::NODE_CERT, paths::NODE_KEY)];

/// The node's identity could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NodeCertError {
    #[error(
        "no certificate in {dir} matches a key beside it; the node's identity is lost: join it again with a new token"
    )]
    NoPair { dir: &'static str },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("the node's TLS identity in {dir} is unusable")]
    Tls {
        dir: &'static str,
        #[source]
        source: TransportError,
    },
    #[error("the coordinator sent a certificate that does not match the key made for it")]
    Mismatch,
    #[error(
        "the coordinator sent a CA bundle that is not one or more CA certificates; keeping {}",
        paths::CA_CERT
    )]
    BadBundle,
    #[error(transparent)]
    Csr(#[from] elysium_identity::CsrError),
}

/// The identity a session opens with.
pub struct Identity {
    pub tls: Arc<rustls::ClientConfig>,
    /// Hex SHA-256 of the certificate.
    pub fingerprint: String,
    cert: &'static str,
    key: &'static str,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Whether this is a renewed pair not yet moved into place.
    pub fn is_staged(&self) -> bool {
        self.cert != paths::NODE_CERT || self.key != paths::NODE_KEY
    }
}

/// The newest usable pair.
pub fn load(fs: &RootFs) -> Result<Identity, NodeCertError> {
    let ca = fs.read_to_string(paths::CA_CERT)?;
    for (cert, key) in CANDIDATES {
        let (Some(cert_pem), Some(key_pem)) = (read(fs, cert)?, read(fs, key)?) else { continue };
        let Some(der) = elysium_identity::pem_to_der(&cert_pem) else { continue };
        if !elysium_identity::cert::key_matches(&der, &key_pem) {
            continue;
        }
        let tls = transport::mtls(&ca, &cert_pem, &key_pem)
            .map_err(|source| NodeCertError::Tls { dir: paths::CONFIG_DIR, source })?;
        return Ok(Identity { tls, fingerprint: elysium_identity::fingerprint(&der), cert, key });
    }
    Err(NodeCertError::NoPair { dir: paths::CONFIG_DIR })
}

fn read(fs: &RootFs, path: &str) -> Result<Option<String>, FsError> {
    Ok(fs.read_optional(path)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A new key and a CSR for it (PEM key, DER CSR); the key stays in memory until
/// its certificate arrives, and is lost (harmlessly) if the session ends first.
pub fn new_request() -> Result<(String, Vec<u8>), NodeCertError> {
    Ok(elysium_identity::node_key_and_csr()?)
}

/// Writes a renewed pair beside the one in use, and the CA bundle the
/// coordinator sent (it names every CA its server certificate may come from).
pub fn stage(fs: &RootFs, key_pem: &str, cert_pem: &str, ca_bundle_pem: &str) -> Result<(), NodeCertError> {
    let der = elysium_identity::pem_to_der(cert_pem).ok_or(NodeCertError::Mismatch)?;
    if !elysium_identity::cert::key_matches(&der, key_pem) {
        return Err(NodeCertError::Mismatch);
    }
    // A next certificate left from an interrupted promotion pairs with the key
    // now in node.key: keep the pair that works until the new one is whole.
    if load(fs).is_ok_and(|i| i.cert == NEXT_CERT && i.key == paths::NODE_KEY) {
        promote_files(fs, NEXT_CERT, paths::NODE_KEY)?;
    }
    fs.remove_file(NEXT_CERT)?;
    fs.write_atomic(NEXT_KEY, key_pem.as_bytes(), 0o600)?;
    fs.write_atomic(NEXT_CERT, cert_pem.as_bytes(), 0o644)?;
    if elysium_identity::pem_to_der(ca_bundle_pem).is_some() {
        fs.write_atomic(paths::CA_CERT, ca_bundle_pem.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Largest CA bundle taken: a handful of CA certificates.
const MAX_BUNDLE_BYTES: usize = 64 * 1024;

/// Trusts the CAs the coordinator sent (a CA rotation's steps): replaces the CA
/// file when the bundle differs from it. Refuses anything but one or more CA
/// certificates, so a bad message cannot leave the node trusting nothing.
/// Returns whether the file changed.
pub fn trust(fs: &RootFs, bundle_pem: &str) -> Result<bool, NodeCertError> {
    if bundle_pem.len() > MAX_BUNDLE_BYTES {
        return Err(NodeCertError::BadBundle);
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut bundle_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| NodeCertError::BadBundle)?;
    let all_cas = !certs.is_empty()
        && certs.iter().all(|der| x509_parser::parse_x509_certificate(der).is_ok_and(|(_, c)| c.is_ca()));
    if !all_cas {
        return Err(NodeCertError::BadBundle);
    }
    if fs.read_optional(paths::CA_CERT)?.is_some_and(|held| held == bundle_pem.as_bytes()) {
        return Ok(false);
    }
    fs.write_atomic(paths::CA_CERT, bundle_pem.as_bytes(), 0o644)?;
    Ok(true)
}

/// Moves a staged pair into place once a session opened with it: key first,
/// then certificate (see the module's comment for why that order).
pub fn promote(fs: &RootFs, identity: &Identity) -> Result<(), NodeCertError> {
    promote_files(fs, identity.cert, identity.key)
}

fn promote_files(fs: &RootFs, cert: &str, key: &str) -> Result<(), NodeCertError> {
    if key != paths::NODE_KEY {
        fs.rename(key, paths::NODE_KEY)?;
    }
    if cert != paths::NODE_CERT {
        fs.rename(cert, paths::NODE_CERT)?;
    }
    Ok(())
}

/// Drops a staged pair the coordinator refused (its pending certificate was
/// replaced by a later request); the pair in place is used again.
pub fn discard_staged(fs: &RootFs) -> Result<(), NodeCertError> {
    // A key already moved into node.key is kept: node.crt then no longer
    // matches it, and without node.next.crt nothing would. Only a whole next pair goes.
    if fs.read_optional(NEXT_KEY)?.is_some() {
        fs.remove_file(NEXT_CERT)?;
        fs.remove_file(NEXT_KEY)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
