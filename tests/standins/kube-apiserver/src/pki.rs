//! The stand-in's certificates: a self-signed cluster CA, the API server's serving
//! certificate (SANs as K3s gives kube-apiserver: `kubernetes`, `kubernetes.default…`,
//! `localhost`, `127.0.0.1`), and client certificates (the admin's is `system:admin` in
//! `system:masters`, as in K3s's kubeconfig). Generating and signing is `standin_pki`'s;
//! this module picks the names and builds the TLS configuration.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
pub use standin_pki::{Ca, Error, Pair};

/// Subject alternative names of the serving certificate.
pub const SERVING_SANS: &[&str] = standin_pki::KUBERNETES_SANS;

/// The API server's serving certificate.
pub fn issue_serving(ca: &Ca) -> Result<Pair, Error> {
    let sans: Vec<String> = SERVING_SANS.iter().map(|s| (*s).to_owned()).collect();
    ca.issue_serving("kube-apiserver", None, &sans)
}

/// TLS for the API server: the serving certificate, and client certificates verified
/// against the CA but optional (a bearer token authenticates too). ring only.
pub fn server_config(ca: &Ca, serving: &Pair) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        let cert = cert.map_err(|e| rustls::Error::General(format!("CA PEM: {e}")))?;
        roots.add(cert)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| rustls::Error::General(format!("serving certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
        .map_err(|e| rustls::Error::General(format!("serving key PEM: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // HTTP/1.1 only, like the stand-in's listener; clients that offer h2 fall back.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user a verified client certificate names (its common name).
pub fn client_user(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned)
}
