//! Just enough HTTP/1.1 for the contract: one request per connection, `Connection:
//! close`, no chunking, no keep-alive. Server side for the supervisor and kubelet
//! healthz, client side for the agent's join flow and for tests.
//!
//! Also the TLS plumbing both sides need (rustls with the ring provider) and a tiny
//! base64 for `Authorization: Basic` and kubeconfig data.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Upstream's client timeout (`defaultClientTimeout` in pkg/clientaccess).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server waits for a request head (and a TLS handshake).
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on a request head; the contract's requests are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `(user, password)` from `Authorization: Basic …`.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        let value = self.header("authorization")?;
        let (scheme, b64) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(base64_decode(b64.trim())?).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        Some((user.to_owned(), pass.to_owned()))
    }
}

/// A response to send, or one received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self { status, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }

    /// A header by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The request handler of a listener.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves plain HTTP until the future is dropped.
pub async fn serve_plain(listener: TcpListener, handler: Handler) {
    accept_loop(listener, move |tcp| {
        let handler = handler.clone();
        async move { handle(tcp, &handler).await }
    })
    .await
}

/// Serves HTTPS until the future is dropped.
pub async fn serve_tls(listener: TcpListener, tls: Arc<ServerConfig>, handler: Handler) {
    let acceptor = TlsAcceptor::from(tls);
    accept_loop(listener, move |tcp| {
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        async move {
            if let Ok(Ok(stream)) = tokio::time::timeout(SERVER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                handle(stream, &handler).await;
            }
        }
    })
    .await
}

async fn accept_loop<F, Fut>(listener: TcpListener, on_conn: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(on_conn(tcp));
            }
            // Transient (EMFILE, ECONNABORTED): back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, handler: &Handler) {
    let Ok(Ok(Some(req))) = tokio::time::timeout(SERVER_READ_TIMEOUT, read_request(&mut stream)).await else {
        return;
    };
    let resp = handler(&req);
    let _ = stream.write_all(&resp.encode(req.method == "HEAD")).await;
    // For TLS this sends close_notify, so clients can tell a complete body from a cut.
    let _ = stream.shutdown().await;
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(pos) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target)) = (first.next(), first.next()) else { return Ok(None) };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let path = target.split('?').next().unwrap_or("/").to_owned();
    Ok(Some(Request { method: method.to_owned(), path, headers }))
}

/// A client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: could not connect")]
    Connect {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: TLS handshake failed")]
    Tls {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: request failed")]
    Io {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: timed out after {CLIENT_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("{url}: malformed HTTP response")]
    Malformed { url: String },
    #[error("{url}: invalid server name {host:?}")]
    ServerName { url: String, host: String },
}

/// Where to send a request: scheme, host (without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `http(s)://host[:port][/…]`; the default ports are 80 and 443, as in Go.
    pub fn parse(url: &str) -> Option<Self> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return None;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().ok()?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Self { https, host, port })
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}{path}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}{path}", self.host, self.port)
        }
    }
}

/// `GET path` on the target. `tls` is required for https targets; `auth` adds Basic
/// authentication. Any status is returned as a response; callers decide what is an
/// error.
pub async fn get(
    target: &Target,
    path: &str,
    tls: Option<Arc<ClientConfig>>,
    auth: Option<(&str, &str)>,
) -> Result<Response, ClientError> {
    let url = target.url(path);
    match tokio::time::timeout(CLIENT_TIMEOUT, get_inner(target, path, tls, auth, &url)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout { url }),
    }
}

async fn get_inner(
    target: &Target,
    path: &str,
    tls: Option<Arc<ClientConfig>>,
    auth: Option<(&str, &str)>,
    url: &str,
) -> Result<Response, ClientError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| ClientError::Connect { url: url.to_owned(), source })?;
    let host_header = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: k3s-standin\r\nAccept: */*\r\nConnection: close\r\n"
    );
    if let Some((user, pass)) = auth {
        req.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64_encode(format!("{user}:{pass}").as_bytes())
        ));
    }
    req.push_str("\r\n");
    let raw = match (target.https, tls) {
        (true, Some(tls)) => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| ClientError::ServerName { url: url.to_owned(), host: target.host.clone() })?;
            let stream = TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|source| ClientError::Tls { url: url.to_owned(), source })?;
            exchange(stream, req.as_bytes(), url).await?
        }
        (true, None) => {
            return Err(ClientError::Tls {
                url: url.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "no TLS configuration for an https URL"),
            });
        }
        (false, _) => exchange(tcp, req.as_bytes(), url).await?,
    };
    parse_response(&raw).ok_or_else(|| ClientError::Malformed { url: url.to_owned() })
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    req: &[u8],
    url: &str,
) -> Result<Vec<u8>, ClientError> {
    let io_err = |source| ClientError::Io { url: url.to_owned(), source };
    stream.write_all(req).await.map_err(io_err)?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw).await {
        Ok(_) => Ok(raw),
        // A peer that closes without close_notify: keep what arrived; Content-Length
        // tells whether it is complete.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(io_err(e)),
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let declared = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if let Some(len) = declared {
        if body.len() < len {
            return None;
        }
        body.truncate(len);
    }
    Some(Response { status, headers, body })
}

/// The crypto provider everything here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client config that trusts exactly the CA certificates in `ca_pem`.
pub fn client_trusting(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| rustls::Error::General(format!("CA bundle is not PEM: {e}")))?;
        roots.add(cert)?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A TLS client config that accepts any server certificate: what upstream's
/// `insecureClient` does to fetch `/cacerts` before the CA hash can be checked.
pub fn client_insecure() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A server config presenting `cert_chain_pem` with `key_pem`.
pub fn server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, rustls::Error> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rustls::Error::General(format!("serving certificate is not PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| rustls::Error::General(format!("serving key is not PEM: {e}")))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// Skips certificate verification, still checks handshake signatures.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text
        .trim_end_matches('=')
        .bytes()
        .map(|c| B64.iter().position(|&d| d == c).map(|p| p as u8))
        .collect::<Option<_>>()?;
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= u32::from(*d) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "node:pässword"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes(), "{s}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("!!!!").is_none());
    }

    #[test]
    fn targets() {
        let t = Target::parse("https://10.0.0.1:6443/").unwrap();
        assert_eq!((t.https, t.host.as_str(), t.port), (true, "10.0.0.1", 6443));
        assert_eq!(Target::parse("https://srv").unwrap().port, 443);
        let t = Target::parse("https://[fe80::1]:6443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("fe80::1", 6443));
        assert!(Target::parse("ftp://x").is_none());
        assert!(Target::parse("https://:6443").is_none());
    }

    #[test]
    fn response_parsing_respects_content_length() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong").unwrap();
        assert_eq!((r.status, r.body_text().as_str()), (200, "pong"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\npong").is_none());
    }
}
