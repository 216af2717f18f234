//! TLS connections to the coordinator.
//!
//! We do TLS ourselves (rustls through a tonic connector) rather than with tonic's
//! built-in client TLS because joining needs a verifier tonic cannot express: the
//! node has no CA yet, only the CA's fingerprint from its token. [`PinnedCa`]
//! accepts a server only if the chain it presents contains a certificate with that
//! fingerprint *and* the server certificate verifies against it, so nothing is
//! sent to an impostor. After joining, sessions use ordinary WebPKI verification
//! against the stored CA, with the node certificate as client identity.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use elysium_identity::fingerprint;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long to wait for TCP + TLS before calling the coordinator unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the coordinator that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{url:?} is not a coordinator address; expected https://HOST:PORT")]
    BadUrl { url: String },
    #[error("could not load TLS credentials: {0}")]
    Credentials(String),
    #[error("the coordinator at {url} is unreachable")]
    Unreachable {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the server at {url} is not the coordinator the token names: it presented a CA with fingerprint {presented}, the token expects {expected}. Check the address, or get a token from this coordinator"
    )]
    FingerprintMismatch { url: String, expected: String, presented: String },
    #[error("TLS with the coordinator at {url} failed")]
    Tls {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not open a gRPC channel to {url}")]
    Channel {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A parsed `https://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, TransportError> {
        let bad = || TransportError::BadUrl { url: url.to_owned() };
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") {
            return Err(bad());
        }
        let host = uri.host().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']').to_owned();
        // Refused here rather than at the first connection: `https://[]` has an empty host.
        if ServerName::try_from(host.as_str()).is_err() {
            return Err(bad());
        }
        let port = uri.port_u16().unwrap_or(elysium_identity::DEFAULT_PORT);
        Ok(Self { url: url.trim_end_matches('/').to_owned(), host, port })
    }

    fn server_name(&self) -> Result<ServerName<'static>, TransportError> {
        ServerName::try_from(self.host.clone()).map_err(|_| TransportError::BadUrl { url: self.url.clone() })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Verifies the coordinator against the CA fingerprint from a join token.
#[derive(Debug)]
pub struct PinnedCa {
    expected: String,
    provider: Arc<CryptoProvider>,
    /// The fingerprint of the CA-less chain we saw, when verification failed for
    /// that reason; read back to explain the failure.
    mismatch: Mutex<Option<String>>,
}

impl PinnedCa {
    pub fn new(expected_fingerprint: &str) -> Arc<Self> {
        Arc::new(Self {
            expected: expected_fingerprint.to_owned(),
            provider: provider(),
            mismatch: Mutex::new(None),
        })
    }

    /// The fingerprint the server presented instead of the expected one, if the
    /// last handshake failed that way.
    pub fn mismatch(&self) -> Option<String> {
        self.mismatch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == self.expected) else {
            let presented =
                intermediates.last().map(|c| fingerprint(c)).unwrap_or_else(|| fingerprint(end_entity));
            *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(presented);
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        // The other certificates of the chain may be needed: during a CA rotation
        // the server's certificate is the new CA's, and a token made before it
        // pins the previous CA, reached through the cross certificate.
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn base_builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TransportError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Credentials(e.to_string()))
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// TLS for joining: no client certificate, coordinator pinned by fingerprint.
pub fn join_tls(pin: Arc<PinnedCa>) -> Result<Arc<ClientConfig>, TransportError> {
    Ok(finish(base_builder()?.dangerous().with_custom_certificate_verifier(pin).with_no_client_auth()))
}

/// Mutual TLS: the coordinator verified against `ca_pem`, us identified by
/// `cert_pem`/`key_pem` (node or admin).
pub fn mtls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TransportError::Credentials(format!("CA certificate: {e}")))?;
        roots.add(cert).map_err(|e| TransportError::Credentials(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TransportError::Credentials("no CA certificate found".into()));
    }
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TransportError::Credentials(format!("client certificate: {e}")))?;
    // Never include the key or its parse error detail in messages.
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| TransportError::Credentials("the private key is not a PEM private key".into()))?;
    let config = base_builder()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TransportError::Credentials(format!("client certificate and key do not match: {e}")))?;
    Ok(finish(config))
}

/// Opens a TCP + TLS connection (used to check a coordinator before talking gRPC).
pub async fn handshake(target: &Target, tls: Arc<ClientConfig>) -> Result<(), TransportError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.authority()))
        .await
        .map_err(|_| TransportError::Unreachable {
            url: target.url.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
        })?
        .map_err(|source| TransportError::Unreachable { url: target.url.clone(), source })?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(target.server_name()?, tcp)
        .await
        .map_err(|source| TransportError::Tls { url: target.url.clone(), source })?;
    Ok(())
}

/// A gRPC channel over our TLS. `lazy` defers connecting to the first call.
pub async fn channel(target: &Target, tls: Arc<ClientConfig>) -> Result<Channel, TransportError> {
    let server_name = target.server_name()?;
    let authority = target.authority();
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        let server_name = server_name.clone();
        let authority = authority.clone();
        async move {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The scheme is http because TLS happens in the connector above.
    let endpoint = Endpoint::from_shared(format!("http://{}", target.authority()))
        .map_err(|source| TransportError::Channel { url: target.url.clone(), source })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    endpoint.connect_with_connector(connector).await.map_err(|source| classify(&target.url, source))
}

/// A channel error caused by the network (refused, timed out, no route) means
/// "unreachable", which deserves its own message; anything else stays a channel error.
fn classify(url: &str, source: tonic::transport::Error) -> TransportError {
    use std::io::ErrorKind::*;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ConnectionRefused
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | ConnectionReset
                    | AddrNotAvailable
            )
        {
            let io = std::io::Error::new(io.kind(), io.to_string());
            return TransportError::Unreachable { url: url.to_owned(), source: io };
        }
        cause = e.source();
    }
    TransportError::Channel { url: url.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://10.0.0.1:7443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.1", 7443));
        assert_eq!(Target::parse("https://coord").unwrap().port, 7443);
        assert_eq!(Target::parse("https://[::1]:9").unwrap().authority(), "[::1]:9");
        assert!(Target::parse("http://x:1").is_err());
        assert!(Target::parse("x:1").is_err());
    }
}
