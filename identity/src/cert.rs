//! Certificate facts both sides rely on: the fingerprint format, the subject names
//! of node and admin certificates, and the key pair a node makes for itself.
//!
//! The node's private key is generated here, on the node; only the CSR leaves it.
//! The coordinator ignores the CSR's subject and names the node itself.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use sha2::{Digest, Sha256};

/// Common-name prefix of node certificates: `node:<node id>`.
pub const NODE_CN_PREFIX: &str = "node:";
/// Common-name prefix of admin certificates: `admin:<name>`.
pub const ADMIN_CN_PREFIX: &str = "admin:";
/// Organisation name written into every subject we make.
pub const ORGANIZATION: &str = "elysium-node";

/// The node's key pair or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[error("could not generate a key pair and certificate signing request")]
pub struct CsrError(#[source] rcgen::Error);

/// Hex SHA-256 of a certificate's DER bytes: the CA fingerprint carried by join
/// tokens and the certificate id shown in node records.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A subject with `cn` as common name and our organisation.
pub fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

/// Generates a node key pair and a CSR for it (on the node, at join).
/// Returns (key PEM, CSR DER). The key is a secret: write it 0600, never log it.
pub fn node_key_and_csr() -> Result<(String, Vec<u8>), CsrError> {
    let key = KeyPair::generate().map_err(CsrError)?;
    let mut params = CertificateParams::default();
    // The coordinator overrides the subject; this one only documents intent.
    params.distinguished_name = distinguished_name("elysium-node");
    let csr = params.serialize_request(&key).map_err(CsrError)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Generates an admin's key pair and a CSR for it, where the credentials file is
/// written (`coordinator admin create`). Returns (key PEM, CSR DER). The key is a
/// secret: write it 0600, never log it.
pub fn admin_key_and_csr() -> Result<(String, Vec<u8>), CsrError> {
    let key = KeyPair::generate().map_err(CsrError)?;
    let mut params = CertificateParams::default();
    // The coordinator sets the subject (`admin:<name>`); this one only documents intent.
    params.distinguished_name = distinguished_name("elysium-admin");
    let csr = params.serialize_request(&key).map_err(CsrError)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Whether the PEM private key `key_pem` belongs to the DER certificate: the key's
/// SubjectPublicKeyInfo appears verbatim in the certificate. A certificate and key
/// replaced as two files can be caught half-way; this is how a reader tells.
pub fn key_matches(cert_der: &[u8], key_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else { return false };
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    !spki.is_empty() && cert_der.windows(spki.len()).any(|w| w == spki.as_slice())
}

/// A CSR for a key made earlier by [`node_key_and_csr`] (PEM): a join that
/// repeats an enrollment whose answer was lost asks with the same key.
pub fn csr_for_key(key_pem: &str) -> Result<Vec<u8>, CsrError> {
    let key = KeyPair::from_pem(key_pem).map_err(CsrError)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("elysium-node");
    Ok(params.serialize_request(&key).map_err(CsrError)?.der().to_vec())
}

/// First certificate of a PEM document, as DER.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    rustls_pemfile::certs(&mut reader).next()?.ok().map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_csr_is_der_and_its_key_is_pem() {
        let (key, csr) = node_key_and_csr().unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{}", &key[..20]);
        // DER SEQUENCE.
        assert_eq!(csr[0], 0x30);
        assert!(CertificateParams::default().serialize_request(&KeyPair::from_pem(&key).unwrap()).is_ok());
    }

    #[test]
    fn the_fingerprint_is_lowercase_hex_sha256() {
        assert_eq!(fingerprint(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn pem_to_der_reads_the_first_certificate_and_refuses_garbage() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["x".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(pem_to_der(&cert.pem()).unwrap(), cert.der().to_vec());
        assert!(pem_to_der("not pem").is_none());
    }
}
