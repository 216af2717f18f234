//! The accept loop: what a connection may cost before it has proved anything.
//!
//! Anyone who reaches the port can open connections. Each one that is open holds
//! a file descriptor and some memory, so before tonic sees a connection this
//! loop
//! - refuses it at once past a global cap and a cap per source address (IPv6 by
//!   its /64), so one source cannot take all descriptors, yet 5,000+ nodes behind
//!   one NAT still fit under the default;
//! - gives the TLS handshake a deadline: a socket that never sends a ClientHello,
//!   or stops half-way, is closed when it passes;
//! - hands on only finished TLS streams, wrapped in [`Conn`], which keeps the
//!   connection's slot and closes the connection when neither side has sent a
//!   request frame (HEADERS or DATA) for the idle timeout. HTTP/2 PINGs do not
//!   count, so a peer that only answers keepalives is idle; a node's session
//!   heartbeats well within it;
//! - keeps what anyone can make it do apart from the node sessions: handshakes,
//!   and then every connection without a client certificate (joining nodes, and
//!   whoever else), run on a thread of their own at a lower priority
//!   ([`Handshakes`]); connections with one (nodes, admins) go to the server's
//!   workers. A flood of handshakes or `Enroll` calls then costs the sessions a
//!   share of the CPU the kernel gives, not a place in the workers' queue.
//!
//! Refusals and closes are counted and logged at debug with the counts, with
//! one info line a minute at most while they happen: a flood must not turn into
//! a flood of log lines.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::services::source_key;

/// What one connection may cost, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Open connections in all (handshaking or established).
    pub max_connections: usize,
    /// Open connections from one source address (IPv6: one /64).
    pub max_connections_per_source: usize,
    /// A connection on which neither side sent a request frame for this long is
    /// closed. Must exceed the agents' heartbeat period (at most 300 s).
    pub idle_timeout: Duration,
    /// Time a unary call (and a stream's setup) may take to answer; streams
    /// themselves are not bounded.
    pub request_timeout: Duration,
    /// HTTP/2 PING interval, and how long an answer may take before the
    /// connection is dropped as dead.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            // Well inside the unit's LimitNOFILE=65536, and about 1.5 GiB at the
            // ~50 KiB a TLS + HTTP/2 session costs (docs/BENCHMARKS-fleet.md).
            max_connections: 32_768,
            // 5,000+ nodes behind one NAT, with room for their reconnects.
            max_connections_per_source: 8_192,
            // Three times the longest heartbeat period a spec may set.
            idle_timeout: Duration::from_secs(900),
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Counts of connections refused or closed by the limits, since start.
#[derive(Debug, Default)]
struct Counts {
    refused_total: AtomicU64,
    refused_per_source: AtomicU64,
    handshake_timeouts: AtomicU64,
    handshake_failures: AtomicU64,
    idle_closed: AtomicU64,
    accept_errors: AtomicU64,
}

/// Open connections, in all and by source.
#[derive(Debug)]
struct Tracker {
    limits: ConnectionLimits,
    open: Mutex<Open>,
    counts: Counts,
    /// When the last info summary was logged.
    summary: Mutex<(Instant, u64)>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted connection's place; freed when dropped.
#[derive(Debug)]
struct Slot {
    tracker: Arc<Tracker>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.tracker.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// Why a connection was turned away before TLS.
enum Refused {
    Total,
    PerSource,
}

impl Tracker {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let source = source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Refused::Total);
        }
        let n = open.by_source.entry(source).or_insert(0);
        if *n >= self.limits.max_connections_per_source {
            return Err(Refused::PerSource);
        }
        *n += 1;
        open.total += 1;
        Ok(Slot { tracker: self.clone(), source })
    }

    fn open_now(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    fn total_events(&self) -> u64 {
        let c = &self.counts;
        [
            &c.refused_total,
            &c.refused_per_source,
            &c.handshake_timeouts,
            &c.handshake_failures,
            &c.idle_closed,
            &c.accept_errors,
        ]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .sum()
    }

    /// Logs one event at debug with every count, and at most once a minute a
    /// summary at info.
    fn note(&self, what: &'static str, peer: Option<SocketAddr>) {
        let c = &self.counts;
        let (refused_total, refused_per_source, handshake_timeouts, handshake_failures, idle_closed) = (
            c.refused_total.load(Ordering::Relaxed),
            c.refused_per_source.load(Ordering::Relaxed),
            c.handshake_timeouts.load(Ordering::Relaxed),
            c.handshake_failures.load(Ordering::Relaxed),
            c.idle_closed.load(Ordering::Relaxed),
        );
        tracing::debug!(
            what,
            peer = ?peer,
            open = self.open_now(),
            refused_total,
            refused_per_source,
            handshake_timeouts,
            handshake_failures,
            idle_closed,
            "connection refused or closed by the limits"
        );
        let now = Instant::now();
        let total = self.total_events();
        let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(summary.0) >= SUMMARY_EVERY {
            let since = total - summary.1;
            *summary = (now, total);
            drop(summary);
            tracing::info!(
                in_last_minute = since,
                open = self.open_now(),
                refused_total,
                refused_per_source,
                handshake_timeouts,
                handshake_failures,
                idle_closed,
                max_connections = self.limits.max_connections,
                max_connections_per_source = self.limits.max_connections_per_source,
                "connections refused or closed by the connection limits (counts since start)"
            );
        }
    }
}

/// At most one info summary of refused and closed connections per this period.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// How long the loop pauses when the process is out of file descriptors:
/// accepting again at once would spin.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);
/// Finished handshakes waiting for tonic to take them.
const HANDED_OVER: usize = 256;

/// Connections that finished their TLS handshake in time, by whether they
/// presented a client certificate.
pub(super) struct Incoming {
    /// Nodes and admins: served on the server's workers.
    pub authenticated: tokio_stream::wrappers::ReceiverStream<Result<Conn, io::Error>>,
    /// Everyone else: to be served on [`Self::anonymous_runtime`].
    pub anonymous: tokio_stream::wrappers::ReceiverStream<Result<Conn, io::Error>>,
    /// The handshake thread's runtime (the server's own if it has none).
    pub anonymous_runtime: tokio::runtime::Handle,
    /// The accept loop; aborting it stops accepting and ends the handshake thread.
    pub task: JoinHandle<()>,
}

/// Accepts on `listener` until [`Incoming::task`] is aborted.
pub(super) fn incoming(
    listener: TcpListener,
    acceptor: crate::tls::Acceptor,
    limits: ConnectionLimits,
) -> Incoming {
    let (tx, rx) = mpsc::channel(HANDED_OVER);
    let (anon_tx, anon_rx) = mpsc::channel(HANDED_OVER);
    let tracker = Arc::new(Tracker {
        limits,
        open: Mutex::new(Open::default()),
        counts: Counts::default(),
        summary: Mutex::new((Instant::now() - SUMMARY_EVERY, 0)),
    });
    let handshakes = Handshakes::start();
    let anonymous_runtime = handshakes.handle();
    let task = tokio::spawn(accept_loop(listener, acceptor, tracker, handshakes, Handed { tx, anon_tx }));
    Incoming {
        authenticated: tokio_stream::wrappers::ReceiverStream::new(rx),
        anonymous: tokio_stream::wrappers::ReceiverStream::new(anon_rx),
        anonymous_runtime,
        task,
    }
}

/// Where finished handshakes go.
#[derive(Clone)]
struct Handed {
    tx: mpsc::Sender<Result<Conn, io::Error>>,
    anon_tx: mpsc::Sender<Result<Conn, io::Error>>,
}

/// The nice value of the handshake thread: below the workers serving sessions
/// (0), above nothing that matters (19).
const HANDSHAKE_NICE: i32 = 10;

/// Where TLS handshakes run: a runtime of one thread of its own, apart from the
/// workers that serve the sessions. A flood reopens thousands of connections at
/// once, each costing the server a key exchange and a signature; on the shared
/// workers those tasks queued ahead of every session's heartbeat (p99 of 1,000
/// sessions 5× its unloaded value on this machine, docs/BENCHMARKS.md). On their
/// own thread they take their share of the CPU from the operating system instead.
/// The sockets stay on the server's reactor; only the handshake futures move.
/// The thread runs at nice [`HANDSHAKE_NICE`], and serves the connections without
/// a client certificate after their handshake as well (`Incoming::anonymous`).
struct Handshakes(Option<tokio::runtime::Runtime>);

impl Handshakes {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tls-handshake")
            // Enrollments' store transactions and signatures: two at a time is
            // what redb's one writer allows anyway, and each extra thread would
            // keep a malloc arena of its own.
            .max_blocking_threads(2)
            // Its blocking threads too: an Enroll's store transaction runs there.
            .on_thread_start(|| {
                if let Err(e) = elysium_host::sched::set_thread_nice(HANDSHAKE_NICE) {
                    tracing::warn!(error = %e, "could not lower the handshake thread's priority");
                }
            })
            .enable_time()
            .build();
        match runtime {
            Ok(rt) => Self(Some(rt)),
            Err(e) => {
                tracing::warn!(error = %e, "no runtime of its own for TLS handshakes; they share the server's workers");
                Self(None)
            }
        }
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }

    fn spawn(&self, handshake: impl std::future::Future<Output = ()> + Send + 'static) {
        match &self.0 {
            Some(rt) => drop(rt.spawn(handshake)),
            None => drop(tokio::spawn(handshake)),
        }
    }
}

impl Drop for Handshakes {
    /// Dropped with the accept loop, inside the server's runtime, where blocking
    /// on the handshake thread is not allowed: handshakes still under way end with it.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: crate::tls::Acceptor,
    tracker: Arc<Tracker>,
    handshakes: Handshakes,
    handed: Handed,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracker.counts.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "accept failed");
                    if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) {
                        tracker.note("out of file descriptors", None);
                        tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
                    }
                    continue;
                }
            },
            () = handed.tx.closed() => return,
        };
        let slot = match tracker.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                let (counter, what) = match why {
                    Refused::Total => (&tracker.counts.refused_total, "over the connection limit"),
                    Refused::PerSource => {
                        (&tracker.counts.refused_per_source, "over the per-source connection limit")
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                drop(tcp);
                tracker.note(what, Some(peer));
                continue;
            }
        };
        // `Server::tcp_nodelay` does not apply to connections handed in through
        // `serve_with_incoming`: without it every small response waits ~40 ms
        // for a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let (acceptor, tracker, handed) = (acceptor.clone(), tracker.clone(), handed.clone());
        handshakes.spawn(async move {
            let limits = tracker.limits;
            // The configuration of this moment: a renewed server certificate
            // applies to the next handshake (`tls::Acceptor`).
            let tls = tokio_rustls::TlsAcceptor::from(acceptor.config());
            match tokio::time::timeout(limits.handshake_timeout, tls.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let anonymous = tls.get_ref().1.peer_certificates().is_none_or(<[_]>::is_empty);
                    let conn = Conn { io: Box::new(tls), idle: Idle::new(limits.idle_timeout), slot };
                    let tx = if anonymous { &handed.anon_tx } else { &handed.tx };
                    // Fails only when the server has stopped.
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => {
                    tracker.counts.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, peer = %peer, "TLS handshake failed");
                    drop(slot);
                    tracker.note("TLS handshake failed", Some(peer));
                }
                Err(_) => {
                    tracker.counts.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                    drop(slot);
                    tracker.note("TLS handshake deadline passed", Some(peer));
                }
            }
        });
    }
}

/// errno values of a process (EMFILE) or system (ENFILE) out of descriptors.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// An established connection as tonic sees it: the TLS stream (whose peer
/// certificates reach `Request::peer_certs` through [`Connected`]), its slot,
/// and the idle clock.
pub(crate) struct Conn {
    /// Boxed, as tonic boxes the TLS streams it accepts itself: a TLS stream is
    /// 1.2 KB, and the connection task of hyper and tonic holds its I/O in more
    /// than one of its states, so inline it cost every session that twice
    /// (docs/BENCHMARKS.md, "Coordinator memory after issue 14").
    io: Box<TlsStream<TcpStream>>,
    idle: Idle,
    slot: Slot,
}

impl Connected for Conn {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// When the connection last carried a request frame, and the timer that closes
/// it once it has not for the idle timeout. The timer is reset lazily, when it
/// fires, not on every frame.
struct Idle {
    timeout: Duration,
    last_active: Instant,
    timer: Pin<Box<Sleep>>,
    inbound: FrameScan,
    outbound: FrameScan,
}

impl Idle {
    fn new(timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            timeout,
            last_active: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            inbound: FrameScan::client(),
            outbound: FrameScan::server(),
        }
    }

    /// Ready once the connection has been idle for the timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last_active + self.timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.idle.inbound.scan(&buf.filled()[before..]) {
                    this.idle.last_active = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // The connection task always has a read pending: this is where an
            // idle connection is noticed.
            Poll::Pending => match this.idle.poll_expired(cx) {
                Poll::Ready(()) => {
                    let tracker = &this.slot.tracker;
                    tracker.counts.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracker.note("idle timeout", None);
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if this.idle.outbound.scan(&buf[..n]) {
            this.idle.last_active = Instant::now();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let written = n;
        let mut active = false;
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(b.len());
            active |= this.idle.outbound.scan(&b[..take]);
            n -= take;
        }
        if active {
            this.idle.last_active = Instant::now();
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Follows the HTTP/2 frames in one direction of a connection, only far enough
/// to tell request traffic (HEADERS, CONTINUATION, DATA) from housekeeping
/// (SETTINGS, PING, WINDOW_UPDATE, ...). Twelve bytes of state.
#[derive(Debug, Clone, Default)]
struct FrameScan {
    /// Bytes of the client's connection preface still to pass.
    preface: u8,
    head: [u8; 9],
    have: u8,
    /// Payload bytes of the current frame still to pass.
    skip: u32,
}

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, what a client sends before its frames.
const CLIENT_PREFACE_BYTES: u8 = 24;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;

impl FrameScan {
    fn client() -> Self {
        Self { preface: CLIENT_PREFACE_BYTES, ..Self::default() }
    }

    fn server() -> Self {
        Self::default()
    }

    /// Passes `bytes`; true when a request frame began in them.
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        let mut active = false;
        let pass = usize::from(self.preface).min(bytes.len());
        self.preface -= pass as u8;
        bytes = &bytes[pass..];
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (self.skip as usize).min(bytes.len());
                self.skip -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let have = usize::from(self.have);
            let n = (9 - have).min(bytes.len());
            self.head[have..have + n].copy_from_slice(&bytes[..n]);
            self.have += n as u8;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                self.skip = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                active |= matches!(self.head[3], FRAME_DATA | FRAME_HEADERS | FRAME_CONTINUATION);
            }
        }
        active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: usize) -> Vec<u8> {
        let len = (payload as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
        f.extend(std::iter::repeat_n(0xAA, payload));
        f
    }

    #[test]
    fn request_frames_are_told_from_housekeeping_in_any_chunking() {
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(0x4, 18)); // SETTINGS
        wire.extend(frame(0x6, 8)); // PING
        wire.extend(frame(0x8, 4)); // WINDOW_UPDATE
        let housekeeping = wire.len();
        wire.extend(frame(FRAME_HEADERS, 40));
        wire.extend(frame(0x6, 8));
        for chunk in [1, 2, 7, 9, 10, 64, wire.len()] {
            let mut scan = FrameScan::client();
            let mut seen_at = None;
            for (i, piece) in wire.chunks(chunk).enumerate() {
                if scan.scan(piece) && seen_at.is_none() {
                    seen_at = Some(i * chunk);
                }
            }
            let at = seen_at.unwrap_or_else(|| panic!("HEADERS not seen with chunks of {chunk}"));
            assert!(at + chunk > housekeeping, "seen before the HEADERS frame with chunks of {chunk}");
        }
        let mut only_pings = FrameScan::server();
        assert!(!only_pings.scan(&[frame(0x6, 8), frame(0x4, 0), frame(0x6, 8)].concat()));
        // A DATA frame's payload that looks like a HEADERS frame header is skipped.
        let mut data = FrameScan::server();
        assert!(data.scan(&frame(FRAME_DATA, 9)));
        assert!(!data.scan(&frame(0x6, 8)));
    }

    #[test]
    fn slots_are_limited_per_source_and_in_all_and_freed_on_drop() {
        let limits =
            ConnectionLimits { max_connections: 3, max_connections_per_source: 2, ..Default::default() };
        let tracker = Arc::new(Tracker {
            limits,
            open: Mutex::new(Open::default()),
            counts: Counts::default(),
            summary: Mutex::new((Instant::now(), 0)),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = tracker.admit(a).ok().unwrap();
        let _a2 = tracker.admit(a).ok().unwrap();
        assert!(matches!(tracker.admit(a), Err(Refused::PerSource)));
        let _b1 = tracker.admit(b).ok().unwrap();
        assert!(matches!(tracker.admit(b), Err(Refused::Total)));
        drop(a1);
        assert_eq!(tracker.open_now(), 2);
        let _a3 = tracker.admit(a).ok().unwrap();
        assert_eq!(tracker.open_now(), 3);
    }
}
