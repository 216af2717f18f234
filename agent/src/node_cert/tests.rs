use super::*;
use rcgen::{BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair};

/// A CA that signs node CSRs, like the coordinator's.
struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        Self { issuer: Issuer::from_ca_cert_pem(&cert_pem, key).unwrap(), cert_pem }
    }

    fn sign(&self, csr_der: &[u8]) -> String {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).unwrap();
        CertificateParams::default().signed_by(&csr.public_key, &self.issuer).unwrap().pem()
    }
}

/// A joined node: CA, certificate and key in place.
fn joined(ca: &TestCa) -> (tempfile::TempDir, RootFs, String) {
    let dir = tempfile::tempdir().unwrap();
    let fs = RootFs::new(dir.path());
    let (key, csr) = new_request().unwrap();
    let cert = ca.sign(&csr);
    fs.create_dir_all(paths::CONFIG_DIR, 0o755).unwrap();
    fs.write_atomic(paths::CA_CERT, ca.cert_pem.as_bytes(), 0o644).unwrap();
    fs.write_atomic(paths::NODE_KEY, key.as_bytes(), 0o600).unwrap();
    fs.write_atomic(paths::NODE_CERT, cert.as_bytes(), 0o644).unwrap();
    let fp = fingerprint_of(&cert);
    (dir, fs, fp)
}

fn fingerprint_of(cert_pem: &str) -> String {
    elysium_identity::fingerprint(&elysium_identity::pem_to_der(cert_pem).unwrap())
}

#[test]
fn a_renewed_pair_is_used_first_then_moved_into_place() {
    let ca = TestCa::new();
    let (_dir, fs, old) = joined(&ca);
    let current = load(&fs).unwrap();
    assert_eq!((current.fingerprint.as_str(), current.is_staged()), (old.as_str(), false));

    let (key, csr) = new_request().unwrap();
    let cert = ca.sign(&csr);
    stage(&fs, &key, &cert, &ca.cert_pem).unwrap();
    assert_eq!(fs.mode(NEXT_KEY).unwrap(), 0o600);
    let next = load(&fs).unwrap();
    assert_eq!(next.fingerprint, fingerprint_of(&cert));
    assert!(next.is_staged());
    // The old pair is still there for as long as the new one has not opened a session.
    assert_eq!(fingerprint_of(&fs.read_to_string(paths::NODE_CERT).unwrap()), old);

    promote(&fs, &next).unwrap();
    let after = load(&fs).unwrap();
    assert_eq!((after.fingerprint.as_str(), after.is_staged()), (next.fingerprint.as_str(), false));
    assert_eq!(fs.mode(paths::NODE_KEY).unwrap(), 0o600);
    assert!(fs.read_optional(NEXT_CERT).unwrap().is_none() && fs.read_optional(NEXT_KEY).unwrap().is_none());
}

#[test]
fn every_crash_point_leaves_a_usable_pair() {
    let ca = TestCa::new();
    let (_dir, fs, old) = joined(&ca);
    let (key, csr) = new_request().unwrap();
    let cert = ca.sign(&csr);
    let new = fingerprint_of(&cert);

    // Crash after the next key, before the next certificate: the old pair.
    fs.write_atomic(NEXT_KEY, key.as_bytes(), 0o600).unwrap();
    assert_eq!(load(&fs).unwrap().fingerprint, old);
    // Both written: the new pair.
    fs.write_atomic(NEXT_CERT, cert.as_bytes(), 0o644).unwrap();
    assert_eq!(load(&fs).unwrap().fingerprint, new);
    // Crash between the two renames of the promotion: node.key is new, node.crt
    // old; node.next.crt pairs with node.key.
    fs.rename(NEXT_KEY, paths::NODE_KEY).unwrap();
    let between = load(&fs).unwrap();
    assert_eq!(between.fingerprint, new);
    // The next start finishes the promotion.
    promote(&fs, &between).unwrap();
    let done = load(&fs).unwrap();
    assert_eq!((done.fingerprint.as_str(), done.is_staged()), (new.as_str(), false));
}

#[test]
fn a_certificate_for_another_key_is_refused_and_a_refused_pair_is_dropped() {
    let ca = TestCa::new();
    let (_dir, fs, old) = joined(&ca);
    let (key, _) = new_request().unwrap();
    let (_, other_csr) = new_request().unwrap();
    let err = stage(&fs, &key, &ca.sign(&other_csr), &ca.cert_pem).unwrap_err();
    assert!(matches!(err, NodeCertError::Mismatch), "{err}");
    assert!(fs.read_optional(NEXT_KEY).unwrap().is_none());

    let (key, csr) = new_request().unwrap();
    stage(&fs, &key, &ca.sign(&csr), &ca.cert_pem).unwrap();
    discard_staged(&fs).unwrap();
    let back = load(&fs).unwrap();
    assert_eq!((back.fingerprint.as_str(), back.is_staged()), (old.as_str(), false));
}
