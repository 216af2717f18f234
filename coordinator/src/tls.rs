//! The coordinator's TLS: the server certificate it presents, the CA it checks
//! client certificates against, and how a new server certificate takes effect
//! without dropping a session.
//!
//! Every accepted connection takes the [`rustls::ServerConfig`] current at that
//! moment ([`Acceptor::config`]); replacing it changes what new handshakes see and
//! leaves established connections (every open node session) as they are. The
//! certificate is replaced by [`Acceptor::check`], which the server runs at start,
//! every [`CHECK_PERIOD`] and when asked (`Coordinator::check_certificates_now`,
//! SIGHUP): it re-issues the certificate when a third of its lifetime remains (by
//! the coordinator's clock) or when another CA signed it, and picks up a
//! certificate that `coordinator certs rotate` wrote into the data directory.
//! Before that, [`reload_ca`] takes up the steps of a CA rotation
//! (`coordinator certs rotate-ca`, `crate::datadir::ca_rotation`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use elysium_host::{FsError, RootFs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::datadir::ca_rotation::{self, Rotation};
use crate::datadir::{self, DataDir};
use crate::pki::{self, Ca, PkiError};

/// How often the serving coordinator looks at its server certificate.
pub const CHECK_PERIOD: Duration = Duration::from_secs(60);

/// TLS material of the server.
#[derive(Clone)]
pub struct ServerTls {
    /// Server certificate followed by the CA certificate: joining nodes find the
    /// CA they pinned in the chain. During a CA rotation also the cross
    /// certificate and the previous CA, so that a client trusting only the
    /// previous CA (or a join token pinning it) still verifies the server.
    pub chain_pem: String,
    pub key_pem: String,
    /// The CA(s) client certificates must chain to.
    pub ca_pem: String,
    /// Where the material came from; the server keeps the certificate there
    /// current. `None`: fixed material (tests that build it by hand).
    pub data_dir: Option<PathBuf>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("data_dir", &self.data_dir).finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn from_data_dir(dir: &DataDir) -> Self {
        Self::new(
            &dir.server_cert_pem,
            &dir.server_key_pem,
            dir.ca.cert_pem(),
            dir.rotation.as_ref(),
            Some(dir.path.clone()),
        )
    }

    fn new(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        rotation: Option<&Rotation>,
        data_dir: Option<PathBuf>,
    ) -> Self {
        let mut chain_pem = format!("{cert_pem}{ca_pem}");
        if let Some(r) = rotation {
            chain_pem =
                format!("{}{}{}", ca_rotation::bundle(&chain_pem, None), r.cross_pem, r.previous_ca_pem);
        }
        Self {
            chain_pem,
            key_pem: key_pem.to_owned(),
            ca_pem: ca_rotation::bundle(ca_pem, rotation),
            data_dir,
        }
    }

    /// The server certificate (the chain's first), DER.
    fn leaf_der(&self) -> Option<Vec<u8>> {
        pki::pem_to_der(&self.chain_pem)
    }
}

/// TLS could not be configured, or the server certificate not renewed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the coordinator's TLS material is unusable: {0}")]
    Material(String),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
}

/// Builds the rustls configuration for `tls`: the server chain, and client
/// certificates optional (a joining node has none) but verified against the CA
/// when presented.
pub fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, TlsError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| TlsError::Material(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut tls.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| bad("CA certificate", &e))?;
        roots.add(cert).map_err(|e| bad("CA certificate", &e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad("client verifier", &e))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut tls.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("server certificate", &e))?;
    // The key's parse error is not shown: it could quote key material.
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut tls.key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Material("the server key is not a PEM private key".into()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("server certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration new handshakes use, replaceable while serving.
#[derive(Debug, Clone)]
pub struct Acceptor {
    inner: Arc<RwLock<Current>>,
}

#[derive(Debug)]
struct Current {
    tls: ServerTls,
    config: Arc<ServerConfig>,
}

/// What [`Acceptor::check`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The certificate in use is current.
    Unchanged,
    /// The data directory holds a different certificate (`certs rotate`); now in use.
    Reloaded { fingerprint: String },
    /// A third of the lifetime remained: a new certificate was issued, written and
    /// put in use.
    Renewed { fingerprint: String, not_after_unix: i64 },
}

impl Acceptor {
    pub fn new(tls: ServerTls) -> Result<Self, TlsError> {
        let config = server_config(&tls)?;
        Ok(Self { inner: Arc::new(RwLock::new(Current { tls, config })) })
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).config.clone()
    }

    /// Fingerprint of the server certificate new handshakes get.
    pub fn fingerprint(&self) -> String {
        let current = self.inner.read().unwrap_or_else(|p| p.into_inner());
        current.tls.leaf_der().map(|d| pki::fingerprint(&d)).unwrap_or_default()
    }

    /// Puts `tls` in use for new handshakes.
    fn replace(&self, tls: ServerTls) -> Result<(), TlsError> {
        let config = server_config(&tls)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Current { tls, config };
        Ok(())
    }

    /// The data directory the material comes from, if any.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).tls.data_dir.clone()
    }

    /// Keeps the server certificate current: takes up one the data directory holds
    /// that differs from the one in use, and re-issues it from `ca` once a third of
    /// its lifetime remains by `ca`'s clock, or at once when `ca` did not sign it.
    /// `rotation`: the CA rotation under way, if one is (what else the chain and
    /// the client verifier carry). Without a data directory, nothing.
    pub fn check(&self, ca: &Ca, rotation: Option<&Rotation>) -> Result<CheckOutcome, TlsError> {
        let (tls, dir) = {
            let current = self.inner.read().unwrap_or_else(|p| p.into_inner());
            let Some(dir) = current.tls.data_dir.clone() else { return Ok(CheckOutcome::Unchanged) };
            (current.tls.clone(), dir)
        };
        let fs = RootFs::new("/");
        let mut outcome = CheckOutcome::Unchanged;
        let on_disk = read_pair(&fs, &dir)?;
        let mut in_use = tls;
        if let Some((cert_pem, key_pem)) = on_disk {
            let candidate = ServerTls::new(&cert_pem, &key_pem, ca.cert_pem(), rotation, Some(dir.clone()));
            if candidate.chain_pem != in_use.chain_pem || candidate.key_pem != in_use.key_pem {
                self.replace(candidate.clone())?;
                let fingerprint = candidate.leaf_der().map(|d| pki::fingerprint(&d)).unwrap_or_default();
                tracing::info!(%fingerprint, "server certificate reloaded from the data directory");
                outcome = CheckOutcome::Reloaded { fingerprint };
                in_use = candidate;
            }
        }
        let leaf = in_use.leaf_der().ok_or_else(|| TlsError::Material("no server certificate".into()))?;
        let validity = pki::validity(&leaf)?;
        if ca.now_unix() < pki::renew_after(validity) && ca.issued(&leaf) {
            return Ok(outcome);
        }
        let config = datadir::load_config(&dir)?;
        let issued = datadir::reissue_server(&dir, ca, &config)?;
        let fingerprint = pki::fingerprint(&issued.cert_der);
        let not_after_unix = pki::validity(&issued.cert_der)?.not_after_unix;
        self.replace(ServerTls::new(&issued.cert_pem, &issued.key_pem, ca.cert_pem(), rotation, Some(dir)))?;
        tracing::info!(%fingerprint, not_after_unix, "server certificate renewed");
        Ok(CheckOutcome::Renewed { fingerprint, not_after_unix })
    }
}

/// Takes up a CA rotation's step from the data directory: when its CA files
/// differ from what `coordinator` uses, the CA they hold signs from now on and
/// the trust bundle changes (`Coordinator::set_trust` tells every session).
/// Returns whether anything changed.
pub fn reload_ca(coordinator: &crate::state::Coordinator, dir: &Path) -> Result<bool, TlsError> {
    let fs = RootFs::new("/");
    let files = ca_rotation::load(&fs, dir, |file| datadir::DataDirError::NotInitialised {
        dir: dir.to_path_buf(),
        file,
    })?;
    let current = coordinator.ca();
    if files.cert_pem == current.cert_pem() && files.rotation == coordinator.rotation() {
        return Ok(false);
    }
    let ca = Ca::load(&files.cert_pem, &files.key_pem)?
        .with_clock(current.clock())
        .with_lifetimes(current.lifetimes());
    let fingerprint = ca.fingerprint();
    let rotating = files.rotation.is_some();
    coordinator.set_trust(ca, files.rotation);
    tracing::info!(ca = %fingerprint, rotating, "trust reloaded from the data directory");
    Ok(true)
}

/// Runs [`reload_ca`] and [`Acceptor::check`] at once, every [`CHECK_PERIOD`] and
/// when asked to, until `stop`.
pub async fn keep_current(
    coordinator: Arc<crate::state::Coordinator>,
    acceptor: Acceptor,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
            () = coordinator.certs_kick.notified() => {}
        }
        // Signing and file writes: off the async workers.
        let (c, a) = (coordinator.clone(), acceptor.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let reloaded = match a.data_dir() {
                Some(dir) => reload_ca(&c, &dir)?,
                None => false,
            };
            let outcome = a.check(&c.ca(), c.rotation().as_ref())?;
            Ok::<_, TlsError>((reloaded, outcome))
        })
        .await;
        if let Ok(Ok((true, _))) = &checked {
            let message = match coordinator.rotation() {
                Some(_) => format!(
                    "CA rotation under way: {} signs, the previous CA is still trusted",
                    coordinator.ca().subject()
                ),
                None => format!("{} is the only CA trusted", coordinator.ca().subject()),
            };
            coordinator.event("certs.ca_changed", "coordinator", &message);
        }
        match checked.map(|r| r.map(|(_, outcome)| outcome)) {
            Ok(Ok(CheckOutcome::Unchanged)) => {}
            Ok(Ok(CheckOutcome::Reloaded { fingerprint })) => {
                coordinator.event(
                    "certs.server_reloaded",
                    "coordinator",
                    &format!("server certificate {fingerprint}"),
                );
            }
            Ok(Ok(CheckOutcome::Renewed { fingerprint, not_after_unix })) => coordinator.event(
                "certs.server_renewed",
                "coordinator",
                &format!(
                    "server certificate {fingerprint}, valid until {}",
                    crate::pki::format_unix(not_after_unix)
                ),
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not keep the server certificate current; retrying")
            }
            Err(e) => tracing::error!(error = %e, "the server certificate check panicked"),
        }
    }
}

/// The server certificate and key in `dir`, when both are there and belong
/// together. A pair caught between its two writes is skipped: the next check,
/// or the coordinator's start (`datadir::load`), sees it whole.
fn read_pair(fs: &RootFs, dir: &Path) -> Result<Option<(String, String)>, TlsError> {
    let (Some(cert), Some(key)) =
        (fs.read_optional(dir.join(datadir::SERVER_CERT))?, fs.read_optional(dir.join(datadir::SERVER_KEY))?)
    else {
        return Ok(None);
    };
    let (cert, key) =
        (String::from_utf8_lossy(&cert).into_owned(), String::from_utf8_lossy(&key).into_owned());
    let matches = pki::pem_to_der(&cert).is_some_and(|der| pki::key_matches(&der, &key));
    Ok(matches.then_some((cert, key)))
}

#[cfg(test)]
mod ca_rotation_tests;
#[cfg(test)]
mod tests;
