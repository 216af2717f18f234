//! The sealed-secrets format: seal/open round trips in every scope with a 2048-bit key, the
//! scope label binding, and a value sealed by an independent implementation.

mod common;

use base64::Engine as _;
use common::*;
use elysium_recovery::sealed::{self, OpenError, Scope};
use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;

const SCOPES: [Scope; 3] = [Scope::Strict, Scope::NamespaceWide, Scope::ClusterWide];

#[test]
fn round_trip_in_each_scope_and_only_that_scope() {
    let (a, b) = keys();
    for scope in SCOPES {
        let label = scope.label("apps", "db-credentials");
        let sealed = sealed::seal(&a.public(), b"s3cr3t value", &label).expect("seal");
        assert_eq!(sealed::open(&a.private, &sealed, &label).expect("open").as_slice(), b"s3cr3t value");
        assert_eq!(
            sealed::open(&b.private, &sealed, &label),
            Err(OpenError::SessionKey),
            "{scope}: other key"
        );
        for other in SCOPES.into_iter().filter(|s| *s != scope) {
            let wrong = other.label("apps", "db-credentials");
            assert_eq!(
                sealed::open(&a.private, &sealed, &wrong),
                Err(OpenError::SessionKey),
                "{scope} opened as {other}"
            );
        }
    }
}

#[test]
fn strict_and_namespace_wide_bind_the_names() {
    let (a, _) = keys();
    let strict = sealed::seal(&a.public(), b"v", &Scope::Strict.label("apps", "one")).expect("seal");
    assert!(sealed::open(&a.private, &strict, &Scope::Strict.label("apps", "two")).is_err(), "another name");
    assert!(
        sealed::open(&a.private, &strict, &Scope::Strict.label("other", "one")).is_err(),
        "another namespace"
    );

    let ns_wide = sealed::seal(&a.public(), b"v", &Scope::NamespaceWide.label("apps", "one")).expect("seal");
    assert!(
        sealed::open(&a.private, &ns_wide, &Scope::NamespaceWide.label("apps", "renamed")).is_ok(),
        "any name"
    );
    assert!(sealed::open(&a.private, &ns_wide, &Scope::NamespaceWide.label("other", "one")).is_err());

    let anywhere = sealed::seal(&a.public(), b"v", &Scope::ClusterWide.label("apps", "one")).expect("seal");
    assert!(sealed::open(&a.private, &anywhere, &Scope::ClusterWide.label("x", "y")).is_ok());
}

#[test]
fn opens_a_value_sealed_by_an_independent_implementation() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interop");
    let key_pem = std::fs::read_to_string(dir.join("test-only-key.pem")).expect("key");
    let key = RsaPrivateKey::from_pkcs1_pem(&key_pem).expect("PKCS#1");
    let sealed_b64 = std::fs::read_to_string(dir.join("sealed.b64")).expect("vector");
    let sealed = base64::engine::general_purpose::STANDARD.decode(sealed_b64.trim()).expect("base64");

    let label = Scope::Strict.label("flux-system", "cluster-secret-vars");
    assert_eq!(sealed::open(&key, &sealed, &label).expect("open").as_slice(), b"example.org");
    assert_eq!(sealed::open(&key, &sealed, ""), Err(OpenError::SessionKey), "cluster-wide label");
    let mut damaged = sealed.clone();
    *damaged.last_mut().expect("non-empty") ^= 0x80;
    assert_eq!(sealed::open(&key, &damaged, &label), Err(OpenError::Payload));
}
