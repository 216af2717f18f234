//! The coordinator's certificate authority and the identities it hands out.
//!
//! One self-signed CA (ECDSA P-256) signs three kinds of certificates, told apart by
//! their subject common name: the coordinator's server certificate, the admin
//! certificate (`admin:<name>`), and one certificate per node (`node:<id>`). A node
//! certificate is issued from a CSR: the node's private key never leaves the node,
//! and whatever subject the CSR asks for is ignored; the coordinator names the node.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use elysium_host::{Clock, SystemClock};

// The formats both sides share (subject prefixes, fingerprints, the node's CSR)
// live in `elysium-identity`; re-exported for the coordinator's own code.
use elysium_identity::cert::distinguished_name as dn;
pub use elysium_identity::cert::{ADMIN_CN_PREFIX, NODE_CN_PREFIX, fingerprint, key_matches, pem_to_der};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKey, PublicKeyData, SerialNumber,
};

/// Validity of the CA: ten years, what K3s uses for its own CAs. Replacing it
/// (`coordinator certs rotate-ca`) is the operator's decision, see [`Ca::successor`].
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const DAY: u64 = 24 * 3600;

/// How long the certificates the CA issues live. Node and server certificates are
/// renewed when a third of their lifetime remains (nodes over their session, the
/// server certificate by the serving coordinator), so these bound how long a stolen
/// key stays useful, not how long the fleet keeps working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Node client certificates. Default 90 days: renewal starts at 60.
    pub node: Duration,
    /// The coordinator's TLS server certificate. Default 365 days.
    pub server: Duration,
    /// Admin client certificates (not renewed automatically: the operator holds
    /// the file). Default two years.
    pub admin: Duration,
}

impl Lifetimes {
    pub const DEFAULT_NODE: Duration = Duration::from_secs(90 * DAY);
    pub const DEFAULT_SERVER: Duration = Duration::from_secs(365 * DAY);
    pub const DEFAULT_ADMIN: Duration = Duration::from_secs(2 * 365 * DAY);
    /// Shorter lifetimes than this leave no room for renewal between heartbeats
    /// and the one-hour backdating.
    pub const MINIMUM: Duration = Duration::from_secs(60);
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self { node: Self::DEFAULT_NODE, server: Self::DEFAULT_SERVER, admin: Self::DEFAULT_ADMIN }
    }
}

/// When a certificate should be renewed: once a third of its lifetime remains.
/// The lifetime is the certificate's own, from its issue (NotBefore is backdated
/// by [`BACKDATE`]) to NotAfter, so a lifetime changed after issue does not
/// strand certificates issued under the old one.
pub fn renew_after(validity: Validity) -> i64 {
    let issued = validity.not_before_unix.saturating_add(BACKDATE.as_secs() as i64);
    let lifetime = validity.not_after_unix.saturating_sub(issued).max(0);
    validity.not_after_unix - lifetime / 3
}

/// A certificate's validity period, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

/// Reads a DER certificate's validity period.
pub fn validity(cert_der: &[u8]) -> Result<Validity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|_| PkiError::BadCertificate)?;
    Ok(Validity {
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// Backdating absorbs clock skew between a fresh node and the coordinator.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A PKI operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "the certificate signing request is not valid (it must be DER PKCS#10 with a valid self-signature)"
    )]
    BadCsr(#[source] rcgen::Error),
    #[error("could not load the CA key pair")]
    LoadCa(#[source] rcgen::Error),
    #[error("could not generate or sign a certificate")]
    Sign(#[source] rcgen::Error),
    #[error("the peer certificate is not a valid X.509 certificate")]
    BadCertificate,
    #[error("the peer certificate's common name {0:?} names neither a node nor an admin")]
    UnknownSubject(String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// The private key. Written 0600 and never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The certificate authority.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    /// Dates every certificate it signs: the coordinator's clock (a fake in tests).
    clock: Arc<dyn Clock>,
    lifetimes: Lifetimes,
    /// Certificates signed since this CA was loaded. Signing is the one costly
    /// thing an unauthenticated caller could make the coordinator do; tests
    /// count it to prove a refused enrollment never gets that far.
    signatures: AtomicU64,
}

/// A node's certificate signing request, parsed and its self-signature
/// verified, but not yet signed: the enrollment checks the token between the two.
#[derive(Debug)]
pub struct NodeCsr {
    public_key: PublicKey,
    key_sha256: String,
}

impl NodeCsr {
    pub fn parse(csr_der: &[u8]) -> Result<Self, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).map_err(PkiError::BadCsr)?;
        let key_sha256 = fingerprint(&csr.public_key.subject_public_key_info());
        Ok(Self { public_key: csr.public_key, key_sha256 })
    }

    /// Hex SHA-256 of the DER SubjectPublicKeyInfo: what a repeated enrollment
    /// is recognised by.
    pub fn key_sha256(&self) -> &str {
        &self.key_sha256
    }
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA named after the coordinator.
    pub fn generate(name: &str) -> Result<(Self, Issued), PkiError> {
        Self::generate_at(name, Arc::new(SystemClock))
    }

    /// [`Ca::generate`] dated by `clock`.
    pub fn generate_at(name: &str, clock: Arc<dyn Clock>) -> Result<(Self, Issued), PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Sign)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("elysium-ca@{name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, clock.now(), CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(PkiError::Sign)?;
        let issued =
            Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() };
        let ca = Self::load(&issued.cert_pem, &issued.key_pem)?.with_clock(clock);
        Ok((ca, issued))
    }

    /// A new CA to replace this one, and the new CA's certificate signed by this one
    /// (the *cross* certificate: same subject and key as the new CA, issued by the
    /// old). A client that trusts only the old CA verifies a certificate the new CA
    /// signed through the cross certificate; one that trusts the new CA needs
    /// nothing else. That is what lets a fleet move to a new CA without rejoining.
    ///
    /// The new CA's subject carries the moment it was made: certificate paths are
    /// built by subject, so two CAs of one coordinator must not share one.
    pub fn successor(&self, name: &str) -> Result<(Self, Issued, String), PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Sign)?;
        let now = self.clock.now();
        let mut params = CertificateParams::default();
        let stamp = stamp(unix(now));
        params.distinguished_name = dn(&format!("elysium-ca@{name} {stamp}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, now, CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(PkiError::Sign)?;
        params.serial_number = Some(random_serial());
        self.signatures.fetch_add(1, Ordering::Relaxed);
        let cross = params.signed_by(&key, &self.issuer).map_err(PkiError::Sign)?;
        let issued =
            Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() };
        let next = Self::load(&issued.cert_pem, &issued.key_pem)?
            .with_clock(self.clock.clone())
            .with_lifetimes(self.lifetimes);
        Ok((next, issued, cross.pem()))
    }

    /// Whether this CA signed `cert_der` (its issuer is this CA's subject; CAs of
    /// one coordinator have distinct subjects, see [`Ca::successor`]).
    pub fn issued(&self, cert_der: &[u8]) -> bool {
        issuer_raw(cert_der).is_some_and(|issuer| subject_raw(&self.cert_der) == Some(issuer))
    }

    /// The CA's subject, as text (`elysium-ca@NAME …`).
    pub fn subject(&self) -> String {
        subject_text(&self.cert_der).unwrap_or_default()
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::LoadCa)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(PkiError::LoadCa)?;
        let cert_der =
            pem_to_der(cert_pem).ok_or(PkiError::LoadCa(rcgen::Error::CouldNotParseCertificate))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
            clock: Arc::new(SystemClock),
            lifetimes: Lifetimes::default(),
            signatures: AtomicU64::new(0),
        })
    }

    /// Dates what it signs by `clock` (the coordinator's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The clock it dates certificates by.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Issues certificates with these lifetimes.
    pub fn with_lifetimes(mut self, lifetimes: Lifetimes) -> Self {
        self.lifetimes = lifetimes;
        self
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// The time by the CA's clock, Unix seconds.
    pub fn now_unix(&self) -> i64 {
        unix(self.clock.now())
    }

    /// How many certificates this CA signed since it was loaded.
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The fingerprint join tokens pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// The coordinator's TLS server certificate for the given DNS names and IPs.
    pub fn issue_server(&self, name: &str, sans: &[String]) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(sans.to_vec()).map_err(PkiError::Sign)?;
        params.distinguished_name = dn(&format!("elysium-coordinator@{name}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_with_new_key(params, self.lifetimes.server)
    }

    /// An admin client certificate.
    pub fn issue_admin(&self, name: &str) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("{ADMIN_CN_PREFIX}{name}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_with_new_key(params, self.lifetimes.admin)
    }

    /// Signs an admin's CSR (`coordinator admin create` through the Admin
    /// service): like [`Self::sign_node_csr`], only the public key is used, so the
    /// admin's private key stays where the credentials file is written.
    pub fn sign_admin_csr(&self, csr_der: &[u8], name: &str) -> Result<(String, Vec<u8>), PkiError> {
        let csr =
            CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).map_err(PkiError::BadCsr)?;
        self.sign_client_key(&csr.public_key, &format!("{ADMIN_CN_PREFIX}{name}"), self.lifetimes.admin)
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject is set by
    /// the coordinator so a node cannot name itself after another node or an admin.
    pub fn sign_node_csr(&self, csr_der: &[u8], node_id: &str) -> Result<(String, Vec<u8>), PkiError> {
        self.sign_node(&NodeCsr::parse(csr_der)?, node_id)
    }

    /// Signs a parsed node CSR (see [`Ca::sign_node_csr`]).
    pub fn sign_node(&self, csr: &NodeCsr, node_id: &str) -> Result<(String, Vec<u8>), PkiError> {
        self.sign_client_key(&csr.public_key, &format!("{NODE_CN_PREFIX}{node_id}"), self.lifetimes.node)
    }

    /// A client certificate for someone else's key (from a CSR), named `cn` by
    /// the coordinator. Every such signature is counted ([`Self::signatures`]).
    fn sign_client_key(
        &self,
        public_key: &PublicKey,
        cn: &str,
        lifetime: Duration,
    ) -> Result<(String, Vec<u8>), PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, self.clock.now(), lifetime);
        self.signatures.fetch_add(1, Ordering::Relaxed);
        let cert = params.signed_by(public_key, &self.issuer).map_err(PkiError::Sign)?;
        Ok((cert.pem(), cert.der().to_vec()))
    }

    fn issue_with_new_key(
        &self,
        mut params: CertificateParams,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Sign)?;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, self.clock.now(), validity);
        self.signatures.fetch_add(1, Ordering::Relaxed);
        let cert = params.signed_by(&key, &self.issuer).map_err(PkiError::Sign)?;
        Ok(Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() })
    }
}

/// The raw issuer name of a certificate.
fn issuer_raw(cert_der: &[u8]) -> Option<Vec<u8>> {
    x509_parser::parse_x509_certificate(cert_der).ok().map(|(_, c)| c.issuer().as_raw().to_vec())
}

/// The raw subject name of a certificate.
fn subject_raw(cert_der: &[u8]) -> Option<Vec<u8>> {
    x509_parser::parse_x509_certificate(cert_der).ok().map(|(_, c)| c.subject().as_raw().to_vec())
}

/// The issuer of a certificate, as text: which CA signed a node's or an admin's
/// certificate, shown while a CA rotation is under way.
pub fn issuer_text(cert_der: &[u8]) -> Option<String> {
    x509_parser::parse_x509_certificate(cert_der).ok().map(|(_, c)| common_name(c.issuer()))
}

fn subject_text(cert_der: &[u8]) -> Option<String> {
    x509_parser::parse_x509_certificate(cert_der).ok().map(|(_, c)| common_name(c.subject()))
}

fn common_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned()
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC), for CA subjects.
fn stamp(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// Who is on the other end of a mutually authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    Node(String),
    Admin(String),
}

/// Reads the identity from a client certificate that TLS already verified against
/// our CA.
pub fn identify(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|_| PkiError::BadCertificate)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(PkiError::BadCertificate)?
        .to_owned();
    if let Some(id) = cn.strip_prefix(NODE_CN_PREFIX) {
        Ok(PeerIdentity::Node(id.to_owned()))
    } else if let Some(name) = cn.strip_prefix(ADMIN_CN_PREFIX) {
        Ok(PeerIdentity::Admin(name.to_owned()))
    } else {
        Err(PkiError::UnknownSubject(cn))
    }
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    let now = time::OffsetDateTime::from(now);
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

/// `2026-12-04T18:00:00Z` for Unix seconds (certificate dates in events and status).
pub fn format_unix(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive INTEGER: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_csr_subject_is_ignored_and_identity_is_read_back() {
        let (ca, _) = Ca::generate("test").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        // A malicious node asks to be the admin.
        params.distinguished_name = dn("admin:root");
        let csr = params.serialize_request(&key).unwrap();
        let (_, der) = ca.sign_node_csr(csr.der(), "n-123").unwrap();
        assert_eq!(identify(&der).unwrap(), PeerIdentity::Node("n-123".into()));
        assert_eq!(ca.signatures(), 1);
    }

    #[test]
    fn a_csr_is_known_by_its_key() {
        let key = KeyPair::generate().unwrap();
        let a = CertificateParams::default().serialize_request(&key).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("another subject");
        let b = params.serialize_request(&key).unwrap();
        let other = CertificateParams::default().serialize_request(&KeyPair::generate().unwrap()).unwrap();
        let (a, b, other) = (
            NodeCsr::parse(a.der()).unwrap(),
            NodeCsr::parse(b.der()).unwrap(),
            NodeCsr::parse(other.der()).unwrap(),
        );
        assert_eq!(a.key_sha256(), b.key_sha256(), "the same key in two CSRs");
        assert_ne!(a.key_sha256(), other.key_sha256());
        assert_eq!(a.key_sha256(), fingerprint(&key.subject_public_key_info()));
    }

    #[test]
    fn certificates_are_dated_by_the_injected_clock_and_lifetimes() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let clock = elysium_host::FakeClock::new(start);
        let lifetimes = Lifetimes {
            node: Duration::from_secs(3600),
            server: Duration::from_secs(7200),
            admin: Duration::from_secs(60),
        };
        let (ca, _) = Ca::generate_at("test", Arc::new(clock.clone())).unwrap();
        let ca = ca.with_lifetimes(lifetimes);
        clock.advance(Duration::from_secs(100));
        let now = 1_900_000_100;
        let server = validity(&ca.issue_server("test", &["localhost".into()]).unwrap().cert_der).unwrap();
        assert_eq!(server, Validity { not_before_unix: now - 3600, not_after_unix: now + 7200 });
        let (_, csr) = elysium_identity::node_key_and_csr().unwrap();
        let (_, node) = ca.sign_node_csr(&csr, "n-1").unwrap();
        let node = validity(&node).unwrap();
        assert_eq!(node.not_after_unix, now + 3600);
        // Renewal starts when a third of the lifetime (from issue, not the backdated start) remains.
        assert_eq!(renew_after(node), now + 2400);
        // Three minutes: renewed after two.
        let short = Validity { not_before_unix: now - 3600, not_after_unix: now + 180 };
        assert_eq!(renew_after(short), now + 120);
        assert_eq!(ca.now_unix(), now);
    }

    #[test]
    fn a_key_matches_only_its_own_certificate() {
        let (ca, _) = Ca::generate("test").unwrap();
        let a = ca.issue_admin("a").unwrap();
        let b = ca.issue_admin("b").unwrap();
        assert!(key_matches(&a.cert_der, &a.key_pem));
        assert!(!key_matches(&a.cert_der, &b.key_pem));
        assert!(!key_matches(&a.cert_der, "not a key"));
    }

    #[test]
    fn garbage_csr_is_a_clear_error() {
        let (ca, _) = Ca::generate("test").unwrap();
        let err = ca.sign_node_csr(b"not a csr", "n-1").unwrap_err();
        assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
        assert_eq!(ca.signatures(), 0);
    }

    #[test]
    fn reloaded_ca_keeps_its_fingerprint_and_signs() {
        let (ca, issued) = Ca::generate("test").unwrap();
        let again = Ca::load(&issued.cert_pem, &issued.key_pem).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let admin = again.issue_admin("ops").unwrap();
        assert_eq!(identify(&admin.cert_der).unwrap(), PeerIdentity::Admin("ops".into()));
        assert!(!format!("{again:?}").contains("PRIVATE"));
    }
}
