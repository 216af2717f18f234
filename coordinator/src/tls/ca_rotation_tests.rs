use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

use elysium_host::RootFs;

use crate::datadir::ca_rotation::*;
use crate::datadir::{self, InitOptions};
use crate::pki;
use crate::tls::ServerTls;

fn init() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    datadir::init(&dir, &InitOptions { name: "lab".into(), ..InitOptions::default() }).unwrap();
    (tmp, dir)
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

fn roots(pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for der in ders(pem) {
        roots.add(der).unwrap();
    }
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a client trusting `trusted_pem` accepts the chain the server presents.
fn client_accepts(tls: &ServerTls, trusted_pem: &str) -> bool {
    let chain = ders(&tls.chain_pem);
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots(trusted_pem), provider()).build().unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from("localhost").unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// Whether the server accepts a client certificate `cert_pem`.
fn server_accepts(tls: &ServerTls, cert_pem: &str) -> bool {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&tls.ca_pem), provider()).build().unwrap();
    verifier.verify_client_cert(&ders(cert_pem)[0], &[], UnixTime::now()).is_ok()
}

#[test]
fn a_rotation_is_trusted_both_ways_until_it_finishes() {
    let (_tmp, path) = init();
    let before = datadir::load(&path).unwrap();
    let old_ca = before.ca.cert_pem().to_owned();
    let old_node = before.ca.issue_admin("old").unwrap().cert_pem;

    let begun = begin(&before).unwrap();
    assert!(begun.ca.issued(&begun.server.cert_der), "the new CA issues the server certificate");
    let during = datadir::load(&path).unwrap();
    assert_eq!(during.ca.fingerprint(), begun.ca.fingerprint(), "the new CA signs");
    assert_ne!(during.ca.subject(), before.ca.subject(), "CAs of one coordinator differ by subject");
    let rotation = during.rotation.clone().expect("under way");
    assert_eq!(rotation.previous_ca_pem, old_ca);
    let new_ca = during.ca.cert_pem().to_owned();
    let new_node = during.ca.issue_admin("new").unwrap().cert_pem;
    let tls = ServerTls::from_data_dir(&during);

    // A client knowing only the old CA reaches the new server certificate through
    // the cross certificate; one knowing the new CA directly.
    assert!(client_accepts(&tls, &old_ca), "old-CA clients verify the server during the rotation");
    assert!(client_accepts(&tls, &new_ca));
    // Client certificates of both CAs are accepted.
    assert!(server_accepts(&tls, &old_node));
    assert!(server_accepts(&tls, &new_node));
    // The data directory's admin file trusts both.
    let admin = datadir::load_admin_config(&path.join(datadir::ADMIN_FILE)).unwrap();
    assert_eq!(ders(&admin.ca_pem).len(), 2);

    // A second begin is refused and changes nothing.
    let err = begin(&during).unwrap_err();
    assert!(matches!(err, RotationError::UnderWay { .. }), "{err}");
    assert_eq!(datadir::load(&path).unwrap().ca.fingerprint(), during.ca.fingerprint());

    finish(&during).unwrap();
    let after = datadir::load(&path).unwrap();
    assert!(after.rotation.is_none());
    assert_eq!(after.ca.fingerprint(), during.ca.fingerprint());
    let tls = ServerTls::from_data_dir(&after);
    assert!(!client_accepts(&tls, &old_ca), "the old CA alone no longer verifies the server");
    assert!(client_accepts(&tls, &new_ca));
    assert!(!server_accepts(&tls, &old_node), "certificates of the old CA are refused");
    assert!(server_accepts(&tls, &new_node));
    let admin = datadir::load_admin_config(&path.join(datadir::ADMIN_FILE)).unwrap();
    assert_eq!(ders(&admin.ca_pem).len(), 1);
    assert!(matches!(finish(&after).unwrap_err(), RotationError::NotUnderWay));
}

#[test]
fn a_begin_interrupted_before_the_switch_is_forgotten() {
    let (_tmp, path) = init();
    let dir = datadir::load(&path).unwrap();
    let (_next, issued, cross) = dir.ca.successor("lab").unwrap();
    let fs = RootFs::new("/");
    // Everything written but `ca.key` not replaced yet.
    fs.write_atomic(path.join(NEXT_CA_KEY), issued.key_pem.as_bytes(), 0o600).unwrap();
    fs.write_atomic(path.join(NEXT_CA_CERT), issued.cert_pem.as_bytes(), 0o644).unwrap();
    fs.write_atomic(path.join(CROSS_CERT), cross.as_bytes(), 0o644).unwrap();
    fs.write_atomic(path.join(PREVIOUS_CA_CERT), dir.ca.cert_pem().as_bytes(), 0o644).unwrap();

    let loaded = datadir::load(&path).unwrap();
    assert_eq!(loaded.ca.fingerprint(), dir.ca.fingerprint(), "the old CA is still the one");
    assert!(loaded.rotation.is_none());
    for file in [NEXT_CA_KEY, NEXT_CA_CERT, CROSS_CERT, PREVIOUS_CA_CERT] {
        assert!(!path.join(file).exists(), "{file} left behind");
    }
    // And a rotation can be begun again.
    begin(&loaded).unwrap();
}

#[test]
fn a_begin_interrupted_between_key_and_certificate_is_completed() {
    let (_tmp, path) = init();
    let dir = datadir::load(&path).unwrap();
    let (next, issued, cross) = dir.ca.successor("lab").unwrap();
    let fs = RootFs::new("/");
    fs.write_atomic(path.join(NEXT_CA_CERT), issued.cert_pem.as_bytes(), 0o644).unwrap();
    fs.write_atomic(path.join(CROSS_CERT), cross.as_bytes(), 0o644).unwrap();
    fs.write_atomic(path.join(PREVIOUS_CA_CERT), dir.ca.cert_pem().as_bytes(), 0o644).unwrap();
    // The key replaced, the certificate not: the server certificate is the old CA's.
    fs.write_atomic(path.join(datadir::CA_KEY), issued.key_pem.as_bytes(), 0o600).unwrap();

    let loaded = datadir::load(&path).unwrap();
    assert_eq!(loaded.ca.fingerprint(), next.fingerprint(), "the switch is completed");
    assert!(loaded.rotation.is_some());
    let server = pki::pem_to_der(&loaded.server_cert_pem).unwrap();
    assert!(loaded.ca.issued(&server), "a server certificate of the new CA is issued at load");
    assert!(client_accepts(&ServerTls::from_data_dir(&loaded), dir.ca.cert_pem()));
}

#[test]
fn a_finish_interrupted_halfway_is_no_rotation() {
    let (_tmp, path) = init();
    begin(&datadir::load(&path).unwrap()).unwrap();
    // The cross certificate removed, the previous CA not yet.
    std::fs::remove_file(path.join(CROSS_CERT)).unwrap();
    let loaded = datadir::load(&path).unwrap();
    assert!(loaded.rotation.is_none());
    assert!(!path.join(PREVIOUS_CA_CERT).exists());
}
