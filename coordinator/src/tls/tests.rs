use std::time::SystemTime;

use elysium_host::FakeClock;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::datadir::InitOptions;
use crate::pki::Lifetimes;

/// A data directory whose server certificate lives an hour, its CA on a fake
/// clock that starts now. The client below checks dates by the real clock, so the
/// fake one may run ahead by at most the hour certificates are backdated.
fn setup() -> (tempfile::TempDir, Ca, FakeClock, ServerTls) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let lifetimes = Lifetimes { server: Duration::from_secs(3600), ..Lifetimes::default() };
    let opts = InitOptions { name: "lab".into(), lifetimes, ..InitOptions::default() };
    datadir::init(&dir, &opts).unwrap();
    let loaded = datadir::load(&dir).unwrap();
    let tls = ServerTls::from_data_dir(&loaded);
    let clock = FakeClock::new(SystemTime::now());
    (tmp, loaded.ca.with_clock(Arc::new(clock.clone())), clock, tls)
}

/// Serves TLS on a loopback port, each handshake with the acceptor's configuration of
/// the moment as the server's accept loop does: every connection echoes what it reads.
async fn serve(acceptor: Acceptor) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tokio_rustls::TlsAcceptor::from(acceptor.config());
            tokio::spawn(async move {
                let Ok(mut stream) = tls.accept(tcp).await else { return };
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let _ = stream.flush().await;
                }
            });
        }
    });
    addr
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects as a client that trusts `ca_pem`; returns the stream and the
/// fingerprint of the server certificate it was shown.
async fn connect(addr: std::net::SocketAddr, ca_pem: &str) -> (Client, String) {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    (stream, pki::fingerprint(&leaf))
}

async fn echo(stream: &mut Client, text: &[u8]) -> Vec<u8> {
    stream.write_all(text).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = vec![0u8; text.len()];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

#[tokio::test]
async fn the_server_certificate_is_renewed_when_a_third_remains_and_open_connections_stay() {
    let (tmp, ca, clock, tls) = setup();
    let acceptor = Acceptor::new(tls).unwrap();
    let first = acceptor.fingerprint();
    let addr = serve(acceptor.clone()).await;
    let (mut open, seen) = connect(addr, ca.cert_pem()).await;
    assert_eq!(seen, first);

    // Valid for an hour: renewed once 20 minutes remain, 40 minutes from issue.
    clock.advance(Duration::from_secs(40 * 60 - 60));
    assert_eq!(acceptor.check(&ca, None).unwrap(), CheckOutcome::Unchanged);
    clock.advance(Duration::from_secs(120));
    let CheckOutcome::Renewed { fingerprint, not_after_unix } = acceptor.check(&ca, None).unwrap() else {
        panic!("not renewed")
    };
    assert_ne!(fingerprint, first);
    assert_eq!(not_after_unix, ca.now_unix() + 3600);
    assert_eq!(acceptor.fingerprint(), fingerprint);
    // Written to the data directory, so a restart keeps it.
    let dir = tmp.path().join("data");
    let on_disk = std::fs::read_to_string(dir.join(datadir::SERVER_CERT)).unwrap();
    assert_eq!(pki::fingerprint(&pki::pem_to_der(&on_disk).unwrap()), fingerprint);
    assert_eq!(RootFs::new("/").mode(dir.join(datadir::SERVER_KEY)).unwrap(), 0o600);

    // New handshakes get the new certificate; the connection opened before works on.
    let (_new, seen) = connect(addr, ca.cert_pem()).await;
    assert_eq!(seen, fingerprint);
    assert_eq!(echo(&mut open, b"still here").await, b"still here");
    assert_eq!(
        acceptor.check(&ca, None).unwrap(),
        CheckOutcome::Unchanged,
        "renewed once, not at every check"
    );
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_taken_up_and_a_half_written_pair_is_not() {
    let (tmp, ca, _clock, tls) = setup();
    let dir = tmp.path().join("data");
    let acceptor = Acceptor::new(tls).unwrap();
    let first = acceptor.fingerprint();
    let addr = serve(acceptor.clone()).await;

    // `certs rotate` in another process wrote the key but not yet the certificate.
    let config = datadir::load_config(&dir).unwrap();
    let next = ca.issue_server(&config.name, &config.sans).unwrap();
    std::fs::write(dir.join(datadir::SERVER_KEY), &next.key_pem).unwrap();
    assert_eq!(acceptor.check(&ca, None).unwrap(), CheckOutcome::Unchanged);
    assert_eq!(connect(addr, ca.cert_pem()).await.1, first);

    std::fs::write(dir.join(datadir::SERVER_CERT), &next.cert_pem).unwrap();
    let fingerprint = pki::fingerprint(&next.cert_der);
    assert_eq!(
        acceptor.check(&ca, None).unwrap(),
        CheckOutcome::Reloaded { fingerprint: fingerprint.clone() }
    );
    assert_eq!(connect(addr, ca.cert_pem()).await.1, fingerprint);
}
