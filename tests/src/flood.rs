//! What anyone who reaches the coordinator's port can throw at it without a
//! credential, for the limits' tests (`tests/flood.rs`) and benchmark
//! (`benches/fleet.rs --only flood`):
//! - idle TCP connections that never send a byte;
//! - half-open TLS handshakes: a ClientHello, then silence (the coordinator's
//!   answer is read and dropped, nothing more is sent);
//! - `Enroll` calls with well-formed tokens that name this coordinator's CA but
//!   ids it never issued.
//!
//! Each connection is one task that waits until the coordinator closes it and,
//! when holding ([`Attack::hold`]), opens it again, so the attack stays at full
//! strength however often the coordinator closes it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use elysium_agent::transport::{self, PinnedCa, Target};
use elysium_coordinator::tokens::JoinToken;
use elysium_proto::v1 as pb;
use elysium_proto::v1::enrollment_client::EnrollmentClient;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;

/// What to open, from where.
#[derive(Debug, Clone)]
pub struct AttackConfig {
    pub target: SocketAddr,
    pub idle: usize,
    pub half_open: usize,
    /// Local addresses the idle and the half-open connections come from
    /// (round-robin): another host than the nodes', as an attacker would be.
    pub idle_sources: Vec<IpAddr>,
    pub half_open_sources: Vec<IpAddr>,
    /// First connects per second (0: all at once). A connection the kernel
    /// dropped from a full accept queue looks established to an idle client
    /// that never sends, yet the coordinator never saw it: pace them.
    pub connects_per_second: u32,
}

#[derive(Debug, Default)]
struct Counts {
    open: AtomicUsize,
    opened: AtomicU64,
    closed: AtomicU64,
    connect_failures: AtomicU64,
}

/// The connections of an attack under way; dropping it closes them.
#[derive(Debug)]
pub struct Attack {
    counts: Arc<Counts>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Counts of an attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttackStats {
    /// Connections open now (connected, not yet closed by the coordinator).
    pub open: usize,
    pub opened: u64,
    /// Connections the coordinator closed (or reset).
    pub closed: u64,
    pub connect_failures: u64,
}

impl Attack {
    /// Opens every connection once; each waits until the coordinator closes it.
    pub fn once(config: &AttackConfig) -> Result<Self> {
        Self::start(config, false)
    }

    /// Opens every connection and opens it again whenever the coordinator
    /// closes it, until dropped.
    pub fn hold(config: &AttackConfig) -> Result<Self> {
        Self::start(config, true)
    }

    fn start(config: &AttackConfig, again: bool) -> Result<Self> {
        if config.idle > 0 && config.idle_sources.is_empty()
            || config.half_open > 0 && config.half_open_sources.is_empty()
        {
            bail!("an attack needs source addresses");
        }
        let hello: Arc<[u8]> = client_hello()?.into();
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::with_capacity(config.idle + config.half_open);
        let plan = (0..config.idle)
            .map(|i| (config.idle_sources[i % config.idle_sources.len()], None))
            .chain((0..config.half_open).map(|i| {
                (config.half_open_sources[i % config.half_open_sources.len()], Some(hello.clone()))
            }));
        for (i, (source, hello)) in plan.enumerate() {
            let (counts, mut stopped, target) = (counts.clone(), stopped.clone(), config.target);
            let start = match config.connects_per_second {
                0 => Duration::ZERO,
                rate => Duration::from_secs_f64(i as f64 / f64::from(rate)),
            };
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                loop {
                    let stream = match connect_from(source, target).await {
                        Ok(s) => s,
                        Err(_) => {
                            counts.connect_failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    counts.open.fetch_add(1, Ordering::Relaxed);
                    counts.opened.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = until_closed(stream, hello.as_deref()) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                    counts.open.fetch_sub(1, Ordering::Relaxed);
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                    if !again {
                        return;
                    }
                }
            }));
        }
        Ok(Self { counts, stop, tasks })
    }

    pub fn stats(&self) -> AttackStats {
        let c = &self.counts;
        AttackStats {
            open: c.open.load(Ordering::Relaxed),
            opened: c.opened.load(Ordering::Relaxed),
            closed: c.closed.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
        }
    }

    /// Waits until `n` connections are open at once.
    pub async fn wait_open(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.counts.open.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!("only {:?} of {n} attack connections open after {timeout:?}", self.stats());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until the coordinator closed `n` connections.
    pub async fn wait_closed(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.counts.closed.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!(
                    "the coordinator closed only {:?} of {n} attack connections in {timeout:?}",
                    self.stats()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// A TCP connection from `source` (any port).
pub async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Sends `hello` (if any), then reads and drops whatever comes until the peer
/// closes or resets the connection.
async fn until_closed(mut stream: TcpStream, hello: Option<&[u8]>) {
    if let Some(hello) = hello
        && stream.write_all(hello).await.is_err()
    {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The first flight of a TLS client (a ClientHello for the coordinator's name).
pub fn client_hello() -> Result<Vec<u8>> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Enrollment with unknown tokens.

/// How a batch of `Enroll` calls with unknown tokens was answered.
#[derive(Debug, Default, Clone)]
pub struct EnrollFlood {
    /// Refused as unknown (`unauthenticated`).
    pub unknown: usize,
    /// Refused by the rate limit (`resource_exhausted`).
    pub limited: usize,
    /// Anything else: code and message.
    pub other: Vec<(Code, String)>,
    pub unknown_message: Option<String>,
    pub limited_message: Option<String>,
    /// The `retry-after` metadata of a limited answer.
    pub retry_after: Option<String>,
}

/// `calls` concurrent `Enroll` calls over `connections` join connections, each
/// with a fresh token for `url`'s CA (`fingerprint`) that it never issued.
pub async fn enroll_unknown(
    url: &str,
    fingerprint: &str,
    calls: usize,
    connections: usize,
) -> Result<EnrollFlood> {
    let clients = enrollment_clients(url, fingerprint, connections).await?;
    let csr = elysium_identity::node_key_and_csr().context("a CSR")?.1;
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        let mut client = clients[i % clients.len()].clone();
        let req = unknown_request(fingerprint, &csr, i);
        tasks.push(tokio::spawn(async move { client.enroll(req).await }));
    }
    let mut out = EnrollFlood::default();
    for t in tasks {
        match t.await? {
            Ok(_) => bail!("an unknown token enrolled"),
            Err(s) => out.count(&s),
        }
    }
    Ok(out)
}

/// `Enroll` calls with unknown tokens from `concurrency` loops until `stop`,
/// at most one call per loop every `pause`.
pub async fn enroll_unknown_until(
    url: &str,
    fingerprint: &str,
    concurrency: usize,
    pause: Duration,
    stop: watch::Receiver<bool>,
) -> Result<EnrollFlood> {
    let clients = enrollment_clients(url, fingerprint, concurrency.clamp(1, 16)).await?;
    let csr = Arc::new(elysium_identity::node_key_and_csr().context("a CSR")?.1);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (mut client, fingerprint, csr, mut stop) =
            (clients[i % clients.len()].clone(), fingerprint.to_owned(), csr.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = EnrollFlood::default();
            let mut n = 0;
            while !*stop.borrow() {
                match client.enroll(unknown_request(&fingerprint, &csr, n)).await {
                    Ok(_) => out.other.push((Code::Ok, "an unknown token enrolled".into())),
                    Err(s) => out.count(&s),
                }
                n += 1;
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
            out
        }));
    }
    let mut all = EnrollFlood::default();
    for t in tasks {
        let part = t.await?;
        all.unknown += part.unknown;
        all.limited += part.limited;
        all.other.extend(part.other);
    }
    Ok(all)
}

impl EnrollFlood {
    fn count(&mut self, s: &tonic::Status) {
        match s.code() {
            Code::Unauthenticated => {
                self.unknown += 1;
                self.unknown_message.get_or_insert_with(|| s.message().to_owned());
            }
            Code::ResourceExhausted => {
                self.limited += 1;
                self.limited_message.get_or_insert_with(|| s.message().to_owned());
                if self.retry_after.is_none() {
                    self.retry_after =
                        s.metadata().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                }
            }
            code => self.other.push((code, s.message().to_owned())),
        }
    }
}

async fn enrollment_clients(
    url: &str,
    fingerprint: &str,
    n: usize,
) -> Result<Vec<EnrollmentClient<tonic::transport::Channel>>> {
    let target = Target::parse(url)?;
    let mut clients = Vec::new();
    for _ in 0..n.max(1) {
        let tls = transport::join_tls(PinnedCa::new(fingerprint))?;
        clients.push(EnrollmentClient::new(transport::channel(&target, tls).await?));
    }
    Ok(clients)
}

fn unknown_request(fingerprint: &str, csr: &[u8], i: usize) -> pb::EnrollRequest {
    pb::EnrollRequest {
        token: JoinToken::generate(fingerprint).expose(),
        csr_der: csr.to_vec(),
        requested_name: format!("intruder-{i}"),
        ..Default::default()
    }
}
