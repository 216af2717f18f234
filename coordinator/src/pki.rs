//! The coordinator's certificate authority and the identities it hands out.
//!
//! One self-signed CA (ECDSA P-256) signs three kinds of certificates, told apart by
//! their subject common name: the coordinator's server certificate, the admin
//! certificate (`admin:<name>`), and one certificate per node (`node:<id>`). A node
//! certificate is issued from a CSR: the node's private key never leaves the node,
//! and whatever subject the CSR asks for is ignored; the coordinator names the node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// The formats both sides share (subject prefixes, fingerprints, the node's CSR)
// live in `elysium-identity`; re-exported for the coordinator's own code.
use elysium_identity::cert::distinguished_name as dn;
pub use elysium_identity::cert::{ADMIN_CN_PREFIX, NODE_CN_PREFIX, fingerprint, pem_to_der};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKey, PublicKeyData, SerialNumber,
};

/// Validity of the CA. Rotation of the CA is out of scope; ten years is what K3s
/// uses for its own CAs.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of leaf certificates (server, admin, nodes).
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
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
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// The private key. Written 0600 and never logged.
    pub key_pem: String,
}

/// The certificate authority.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
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
        let key = KeyPair::generate().map_err(PkiError::Sign)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("elysium-ca@{name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(PkiError::Sign)?;
        let issued =
            Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() };
        let ca = Self::load(&issued.cert_pem, &issued.key_pem)?;
        Ok((ca, issued))
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::LoadCa)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(PkiError::LoadCa)?;
        let cert_der =
            pem_to_der(cert_pem).ok_or(PkiError::LoadCa(rcgen::Error::CouldNotParseCertificate))?;
        Ok(Self { cert_pem: cert_pem.to_owned(), cert_der, issuer, signatures: AtomicU64::new(0) })
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
        self.issue_with_new_key(params)
    }

    /// An admin client certificate.
    pub fn issue_admin(&self, name: &str) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("{ADMIN_CN_PREFIX}{name}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_with_new_key(params)
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject is set by
    /// the coordinator so a node cannot name itself after another node or an admin.
    pub fn sign_node_csr(&self, csr_der: &[u8], node_id: &str) -> Result<(String, Vec<u8>), PkiError> {
        self.sign_node(&NodeCsr::parse(csr_der)?, node_id)
    }

    /// Signs a parsed node CSR (see [`Ca::sign_node_csr`]).
    pub fn sign_node(&self, csr: &NodeCsr, node_id: &str) -> Result<(String, Vec<u8>), PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("{NODE_CN_PREFIX}{node_id}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, LEAF_VALIDITY);
        self.signatures.fetch_add(1, Ordering::Relaxed);
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(PkiError::Sign)?;
        Ok((cert.pem(), cert.der().to_vec()))
    }

    fn issue_with_new_key(&self, mut params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Sign)?;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, LEAF_VALIDITY);
        self.signatures.fetch_add(1, Ordering::Relaxed);
        let cert = params.signed_by(&key, &self.issuer).map_err(PkiError::Sign)?;
        Ok(Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() })
    }
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

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
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
