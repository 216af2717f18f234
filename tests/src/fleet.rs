//! A simulated fleet: many agents speaking the real protocol, over real TLS, to a
//! real coordinator (in-process or a process), with a simulated K3s. Used by the
//! fleet benchmark (`benches/fleet.rs`) and the rollout tests (`tests/fleet_rollout.rs`).
//!
//! Each simulated agent
//! - enrolls with a multi-use token ([`enroll`]: its own key and CSR, the join TLS
//!   that pins the CA from the token, `Enrollment.Enroll`);
//! - keeps one `NodeSession` stream on its **own** TCP + TLS + HTTP/2 connection,
//!   as a real agent does, and reopens it with backoff when it breaks. Several
//!   agents cannot share a connection: the coordinator knows a node only by the
//!   client certificate of the connection its stream arrived on;
//! - heartbeats at a configured period with jitter and records every
//!   acknowledgement's round trip (send → `HeartbeatAck`) in one shared HDR
//!   histogram;
//! - runs a simulated K3s: it reports an initial version; when a `NodeSpec` pins
//!   `k3s.version` to another version it "upgrades" for a configured time, then
//!   reports the new version, or with a configured probability (or always, for the
//!   nodes named in [`SimK3s::fail`]) a rollback; like the real agent it does not
//!   retry a version that failed and refuses a downgrade. It answers
//!   `Drain`/`Uncordon` commands with success.
//!
//! What it does not have: a host, files, systemd, a reconciler (the real agent's
//! are tested elsewhere). It records what it saw ([`FleetEvent`]) so tests can
//! check a rollout from the nodes' side, and [`rollout_history`] reconstructs a
//! rollout from the coordinator's event log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use elysium_agent::transport::{self, PinnedCa, Target};
use elysium_coordinator::tokens::JoinToken;
use elysium_installer::k3s_version::K3sVersion;
use elysium_proto::v1::enrollment_client::EnrollmentClient;
use elysium_proto::v1::node_session_client::NodeSessionClient;
use elysium_proto::{MAX_MESSAGE_BYTES, PROTOCOL, v1 as pb};
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Highest latency the histogram holds (larger values are clamped to it), in µs.
const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// Significant figures of the histogram: 3 gives 0.1 % resolution.
const HISTOGRAM_SIGFIGS: u8 = 3;
/// Heartbeats in flight remembered per agent (older ones count as lost).
const OUTSTANDING_HEARTBEATS: usize = 16;

// ---------------------------------------------------------------------------
// Enrollment.

/// A simulated node's credentials after enrolling.
#[derive(Clone)]
pub struct Identity {
    pub name: String,
    pub role: pb::NodeRole,
    /// mTLS with the node certificate and key, verifying the coordinator's CA.
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

impl Identity {
    /// The credentials an enrollment's answer and the key behind its CSR make.
    pub fn from_enrollment(role: pb::NodeRole, resp: &pb::EnrollResponse, key_pem: &str) -> Result<Self> {
        let tls = transport::mtls(&resp.ca_certificate_pem, &resp.certificate_pem, key_pem)?;
        Ok(Identity { name: resp.node_name.clone(), role, tls })
    }
}

/// Enrolls `names` with `token` (which must allow that many uses) from
/// `concurrency` clients, each with one reused connection. Keys and CSRs are
/// generated first, on the blocking pool, as each real node does on its own CPU.
pub async fn enroll(
    url: &str,
    token: &str,
    role: pb::NodeRole,
    names: Vec<String>,
    concurrency: usize,
) -> Result<Vec<Identity>> {
    let fingerprint = JoinToken::parse(token).context("parsing the join token")?.ca_fingerprint;
    let target = Target::parse(url)?;
    let count = names.len();
    let keyed = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|n| elysium_identity::node_key_and_csr().map(|(key, csr)| (n, key, csr)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?
    .context("generating node keys")?;
    let queue = Arc::new(Mutex::new(keyed.into_iter().enumerate().collect::<VecDeque<_>>()));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (queue, target, fingerprint, token) =
            (queue.clone(), target.clone(), fingerprint.clone(), token.to_owned());
        workers.push(tokio::spawn(async move {
            let tls = transport::join_tls(PinnedCa::new(&fingerprint))?;
            let mut client = EnrollmentClient::new(transport::channel(&target, tls).await?);
            let mut out = Vec::new();
            loop {
                let Some((i, (name, key_pem, csr))) = lock(&queue).pop_front() else { break };
                let req = pb::EnrollRequest {
                    token: token.clone(),
                    csr_der: csr,
                    requested_name: name.clone(),
                    inventory: Some(inventory(&name)),
                    // As `elysium-node join` sends it.
                    hardware_json: this_machine_hardware(),
                };
                let resp = client
                    .enroll(req)
                    .await
                    .map_err(|s| anyhow!("enrolling {name}: {}", s.message()))?
                    .into_inner();
                let tls = transport::mtls(&resp.ca_certificate_pem, &resp.certificate_pem, &key_pem)?;
                out.push((i, Identity { name: resp.node_name, role, tls }));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut all = Vec::with_capacity(count);
    for w in workers {
        all.extend(w.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

/// A plausible inventory; only the hostname matters to the coordinator here.
fn inventory(name: &str) -> pb::NodeInventory {
    pb::NodeInventory {
        hostname: name.into(),
        machine_id: format!("{:032x}", sha_prefix(name)),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-27-amd64".into(),
        arch: "amd64".into(),
        cpu_model: "simulated".into(),
        cpu_cores: 4,
        cpu_threads: 8,
        memory_bytes: 16 << 30,
        addresses: Vec::new(),
    }
}

fn sha_prefix(s: &str) -> u128 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    u128::from_be_bytes(d[..16].try_into().unwrap_or([0; 16]))
}

// ---------------------------------------------------------------------------
// Configuration.

/// The simulated K3s of every agent.
#[derive(Debug, Clone)]
pub struct SimK3s {
    /// Reported when the agent starts (every node has K3s installed).
    pub initial_version: String,
    /// How long an upgrade takes (download, restart, health gate)...
    pub upgrade_time: Duration,
    /// ...plus a uniformly random extra of up to this.
    pub upgrade_jitter: Duration,
    /// Probability that an upgrade fails its health gate and rolls back.
    pub failure_rate: f64,
    /// Nodes whose upgrades always fail (an injected failure).
    pub fail: BTreeSet<String>,
    /// Nodes that disconnect as soon as they receive their first upgrade pin and
    /// stay away until [`Fleet::set_online`]; their upgrade carries on meanwhile.
    pub offline_on_pin: BTreeSet<String>,
    /// How long a drain takes before it is answered (success).
    pub drain_time: Duration,
}

impl Default for SimK3s {
    fn default() -> Self {
        Self {
            initial_version: "v1.31.4+k3s1".into(),
            upgrade_time: Duration::from_millis(100),
            upgrade_jitter: Duration::from_millis(50),
            failure_rate: 0.0,
            fail: BTreeSet::new(),
            offline_on_pin: BTreeSet::new(),
            drain_time: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `https://IP:PORT` of the coordinator (an IP literal: no resolver here).
    pub url: String,
    pub heartbeat: Duration,
    /// Each heartbeat interval is `heartbeat × (1 ± jitter)`, uniformly; the
    /// first one comes at a uniformly random point of the first period, as in a
    /// fleet whose agents started at different times.
    pub jitter: f64,
    /// Sessions opened per second while starting (0: all at once).
    pub ramp_per_second: u32,
    /// Local addresses to connect from, round-robin (empty: the kernel picks).
    /// Loopback has ~28k ephemeral ports per source address and destination.
    pub source_addrs: Vec<IpAddr>,
    /// Reconnect backoff, as the real agent's (initial, max).
    pub backoff: (Duration, Duration),
    pub k3s: SimK3s,
    /// The agents' hardware document: its hash goes in every Hello, the
    /// document itself when the coordinator asks, as with the real agent.
    /// [`enroll`] sends [`this_machine_hardware`]; set something else to play
    /// hardware that changed since.
    pub hardware_json: Arc<str>,
    /// Send the document itself in every Hello and no hash, as agents did
    /// before `Hello.hardware_sha256`.
    pub legacy_hello: bool,
}

impl FleetConfig {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.into(),
            heartbeat: Duration::from_secs(5),
            jitter: 0.1,
            ramp_per_second: 0,
            source_addrs: Vec::new(),
            backoff: (Duration::from_millis(50), Duration::from_millis(500)),
            k3s: SimK3s::default(),
            hardware_json: this_machine_hardware().into(),
            legacy_hello: false,
        }
    }
}

/// This machine's hardware inventory as the real agent reports it (a few KiB),
/// so simulated nodes carry a real-sized one.
pub fn this_machine_hardware() -> String {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| elysium_agent::hardware::document(&elysium_host::RootFs::new("/"))).clone()
}

// ---------------------------------------------------------------------------
// What the fleet records.

/// Something a simulated agent saw or did, with when (on this process's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetEvent {
    pub at: Instant,
    pub node: String,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A spec arrived whose `k3s.version` pin differs from the last one and
    /// from the version the node runs.
    Pinned { version: String },
    /// A K3s report was sent (`failed_version` set: a rollback).
    Reported { version: String, failed_version: String },
    /// A drain or uncordon command was answered.
    Answered { command: String },
}

/// Counters over the fleet's life.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetStats {
    /// Sessions open now.
    pub open: usize,
    pub sessions_opened: u64,
    /// Sessions that ended other than by [`Fleet::set_online`].
    pub sessions_broken: u64,
    pub connect_failures: u64,
    pub heartbeats: u64,
    pub acks: u64,
    pub specs: u64,
    /// How often the coordinator asked an agent for its hardware document.
    pub hardware_requests: u64,
}

#[derive(Debug)]
struct Shared {
    acks: Mutex<Histogram<u64>>,
    log: Mutex<Vec<FleetEvent>>,
    open: AtomicUsize,
    opened: AtomicU64,
    broken: AtomicU64,
    connect_failures: AtomicU64,
    heartbeats: AtomicU64,
    acked: AtomicU64,
    specs: AtomicU64,
    hardware_requests: AtomicU64,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_SIGFIGS).expect("valid histogram bounds")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn record(&self, node: &str, what: What) {
        lock(&self.log).push(FleetEvent { at: Instant::now(), node: node.to_owned(), what });
    }
}

// ---------------------------------------------------------------------------
// The fleet.

struct AgentHandle {
    name: String,
    online: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

/// Running simulated agents. Dropping it ends them (their connections close).
pub struct Fleet {
    shared: Arc<Shared>,
    agents: Vec<AgentHandle>,
    by_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("agents", &self.agents.len()).field("stats", &self.stats()).finish()
    }
}

impl Fleet {
    /// Starts one agent per identity, at `config.ramp_per_second`. Returns once
    /// all are started (not connected: see [`Fleet::wait_connected`]).
    pub async fn start(config: FleetConfig, identities: Vec<Identity>) -> Result<Fleet> {
        let target = Target::parse(&config.url)?;
        let addr: SocketAddr = format!("{}:{}", target.host, target.port)
            .parse()
            .with_context(|| format!("{} is not an IP address", target.host))?;
        let shared = Arc::new(Shared {
            acks: Mutex::new(new_histogram()),
            log: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            broken: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            specs: AtomicU64::new(0),
            hardware_requests: AtomicU64::new(0),
        });
        let config = Arc::new(config);
        let mut agents = Vec::with_capacity(identities.len());
        let mut by_name = BTreeMap::new();
        // Start in 10 ms slices: a timer per agent would be coarser than 1 ms anyway.
        let slice = Duration::from_millis(10);
        let per_slice = f64::from(config.ramp_per_second) * slice.as_secs_f64();
        let mut budget = 0.0;
        for (i, id) in identities.into_iter().enumerate() {
            if config.ramp_per_second > 0 {
                while budget < 1.0 {
                    tokio::time::sleep(slice).await;
                    budget += per_slice;
                }
                budget -= 1.0;
            }
            let source =
                (!config.source_addrs.is_empty()).then(|| config.source_addrs[i % config.source_addrs.len()]);
            let online = Arc::new(watch::Sender::new(true));
            let agent = Agent {
                k3s: K3sState::new(&config.k3s.initial_version),
                id: Arc::new(id),
                config: config.clone(),
                shared: shared.clone(),
                online: online.clone(),
                addr,
                source,
                went_away: false,
            };
            by_name.insert(agent.id.name.clone(), i);
            let name = agent.id.name.clone();
            agents.push(AgentHandle { name, online, task: tokio::spawn(agent.run()) });
        }
        Ok(Fleet { shared, agents, by_name })
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.agents.iter().map(|a| a.name.as_str())
    }

    pub fn stats(&self) -> FleetStats {
        let s = &self.shared;
        FleetStats {
            open: s.open.load(Ordering::Relaxed),
            sessions_opened: s.opened.load(Ordering::Relaxed),
            sessions_broken: s.broken.load(Ordering::Relaxed),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            heartbeats: s.heartbeats.load(Ordering::Relaxed),
            acks: s.acked.load(Ordering::Relaxed),
            specs: s.specs.load(Ordering::Relaxed),
            hardware_requests: s.hardware_requests.load(Ordering::Relaxed),
        }
    }

    /// Waits until `n` sessions are open.
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.shared.open.load(Ordering::Relaxed);
            if open >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {open} of {n} sessions open after {timeout:?} ({:?})", self.stats());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The acknowledgement latencies (µs) recorded since the last call; starts afresh.
    pub fn take_ack_latencies(&self) -> Histogram<u64> {
        std::mem::replace(&mut *lock(&self.shared.acks), new_histogram())
    }

    /// Everything the agents recorded so far, in order.
    pub fn events(&self) -> Vec<FleetEvent> {
        lock(&self.shared.log).clone()
    }

    /// Takes an agent off the network (`false`) or lets it reconnect (`true`).
    pub fn set_online(&self, name: &str, online: bool) {
        let i = self.by_name.get(name).unwrap_or_else(|| panic!("no simulated agent {name}"));
        self.agents[*i].online.send_replace(online);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for a in &self.agents {
            a.task.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// One simulated agent.

/// The simulated K3s of one node.
#[derive(Debug)]
struct K3sState {
    /// Running and healthy.
    version: String,
    /// The last pin received ("" before any).
    pinned: String,
    /// Versions that failed here: not retried.
    failed: BTreeSet<String>,
    /// An upgrade under way: target and when it is decided.
    pending: Option<(String, tokio::time::Instant)>,
    /// The last report, sent again on every new session (as the real agent does).
    report: pb::K3sReport,
}

impl K3sState {
    fn new(version: &str) -> Self {
        Self {
            version: version.into(),
            pinned: String::new(),
            failed: BTreeSet::new(),
            pending: None,
            report: pb::K3sReport { version: version.into(), ..Default::default() },
        }
    }

    /// A new pin: whether it starts an upgrade (`true`).
    fn pin(&mut self, pin: &str, cfg: &SimK3s) -> bool {
        if pin == self.version {
            // Back where we are (an aborted rollout): nothing to do.
            self.pending = None;
            return false;
        }
        if self.failed.contains(pin) || self.pending.as_ref().is_some_and(|(t, _)| t == pin) {
            return false;
        }
        // The real agent's preflight refuses a downgrade (no `allow_downgrade`
        // here) and keeps running what it has.
        let older = match (pin.parse::<K3sVersion>(), self.version.parse::<K3sVersion>()) {
            (Ok(want), Ok(have)) => want < have,
            _ => false,
        };
        if older {
            return false;
        }
        let extra = cfg.upgrade_jitter.mul_f64(rand::random::<f64>());
        self.pending = Some((pin.to_owned(), tokio::time::Instant::now() + cfg.upgrade_time + extra));
        true
    }

    /// Decides the pending upgrade (its time has come): the report to send.
    fn finish(&mut self, name: &str, cfg: &SimK3s) -> Option<pb::K3sReport> {
        let (target, _) = self.pending.take()?;
        let fails = cfg.fail.contains(name) || rand::random::<f64>() < cfg.failure_rate;
        self.report = if fails {
            self.failed.insert(target.clone());
            pb::K3sReport {
                version: self.version.clone(),
                failed_version: target,
                failure: "simulated: the health gate did not pass; rolled back".into(),
                ..Default::default()
            }
        } else {
            self.version = target.clone();
            pb::K3sReport { version: target, ..Default::default() }
        };
        Some(self.report.clone())
    }

    /// Decides an upgrade whose time passed while the agent was away.
    fn settle(&mut self, name: &str, cfg: &SimK3s) {
        if self.pending.as_ref().is_some_and(|(_, at)| *at <= tokio::time::Instant::now()) {
            self.finish(name, cfg);
        }
    }
}

struct Agent {
    id: Arc<Identity>,
    config: Arc<FleetConfig>,
    shared: Arc<Shared>,
    online: Arc<watch::Sender<bool>>,
    addr: SocketAddr,
    source: Option<IpAddr>,
    k3s: K3sState,
    /// Whether it already left on a pin (`SimK3s::offline_on_pin` acts once).
    went_away: bool,
}

/// How a session ended without an error.
enum End {
    /// Taken offline on purpose.
    Offline,
    /// The coordinator closed the stream.
    Closed,
}

/// Counts an open session while it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Agent {
    async fn run(mut self) {
        let mut online = self.online.subscribe();
        let mut attempt = 0u32;
        loop {
            if !*online.borrow_and_update() {
                // Away on purpose: the simulated K3s carries on, its report waits.
                if online.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let started = Instant::now();
            match self.session(&mut online).await {
                Ok(End::Offline) => continue,
                Ok(End::Closed) => {
                    self.shared.broken.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(node = %self.id.name, error = %format!("{e:#}"), "simulated session ended");
                    self.shared.broken.fetch_add(1, Ordering::Relaxed);
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                attempt = 0;
            }
            let (initial, max) = self.config.backoff;
            let delay = elysium_agent::session::backoff(attempt, initial, max);
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    async fn session(&mut self, online: &mut watch::Receiver<bool>) -> Result<End> {
        let channel = match connect(self.addr, &self.id.tls, self.source).await {
            Ok(c) => c,
            Err(e) => {
                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut client = NodeSessionClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let cfg = &self.config.k3s;
        self.k3s.settle(&self.id.name, cfg);

        let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(32);
        let doc = &self.config.hardware_json;
        // Agents from before the hash sent the document in every Hello.
        let (hardware_json, hardware_sha256) = if self.config.legacy_hello {
            (doc.to_string(), String::new())
        } else {
            (String::new(), elysium_proto::hardware_sha256(doc))
        };
        let hello = pb::Hello {
            agent_version: concat!("sim-", env!("CARGO_PKG_VERSION")).into(),
            protocol: PROTOCOL.into(),
            inventory: Some(inventory(&self.id.name)),
            held_generation: 0,
            applied_generation: 0,
            hardware_json,
            hardware_sha256,
        };
        out.try_send(msg(pb::agent_message::Msg::Hello(hello)))?;
        out.try_send(msg(pb::agent_message::Msg::K3s(self.k3s.report.clone())))?;
        self.shared.record(
            &self.id.name,
            What::Reported {
                version: self.k3s.report.version.clone(),
                failed_version: self.k3s.report.failed_version.clone(),
            },
        );
        let mut inbound = client
            .session(ReceiverStream::new(out_rx))
            .await
            .map_err(|s| anyhow!("session refused: {}", s.message()))?
            .into_inner();
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGuard(self.shared.clone());

        let period = self.config.heartbeat;
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let mut next_beat = tokio::time::Instant::now() + period.mul_f64(rand::random::<f64>());
        let mut seq = 0u64;
        let mut generation = 0u64;
        let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::new();
        loop {
            let decide_at = self.k3s.pending.as_ref().map(|(_, at)| *at);
            tokio::select! {
                m = inbound.message() => {
                    let Some(m) = m.map_err(|s| anyhow!("stream broke: {}", s.message()))? else {
                        return Ok(End::Closed);
                    };
                    match m.msg {
                        Some(pb::coordinator_message::Msg::HeartbeatAck(ack)) => {
                            while let Some(&(s, at)) = outstanding.front() {
                                if s > ack.seq {
                                    break;
                                }
                                outstanding.pop_front();
                                if s == ack.seq {
                                    let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                                    lock(&self.shared.acks).saturating_record(us.clamp(1, HISTOGRAM_MAX_US));
                                    self.shared.acked.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Some(pb::coordinator_message::Msg::Spec(spec)) => {
                            self.shared.specs.fetch_add(1, Ordering::Relaxed);
                            generation = spec.generation;
                            let pin = spec.k3s.map(|k| k.version).unwrap_or_default();
                            if !pin.is_empty() && pin != self.k3s.pinned {
                                self.k3s.pinned = pin.clone();
                                // Pinned to what it runs (back after upgrading
                                // offline): nothing starts, nothing to record.
                                if pin != self.k3s.version {
                                    self.shared.record(&self.id.name, What::Pinned { version: pin.clone() });
                                }
                                if self.k3s.pin(&pin, cfg)
                                    && !self.went_away
                                    && cfg.offline_on_pin.contains(&self.id.name)
                                {
                                    self.went_away = true;
                                    self.online.send_replace(false);
                                }
                            }
                        }
                        Some(pb::coordinator_message::Msg::HardwareRequest(_)) => {
                            self.shared.hardware_requests.fetch_add(1, Ordering::Relaxed);
                            let report = pb::HardwareReport { hardware_json: self.config.hardware_json.to_string() };
                            out.send(msg(pb::agent_message::Msg::Hardware(report))).await?;
                        }
                        Some(pb::coordinator_message::Msg::Command(cmd)) => {
                            if matches!(cmd.kind, Some(pb::command::Kind::Drain(_) | pb::command::Kind::Uncordon(_))) {
                                self.answer(cmd, &out);
                            }
                        }
                        // Simulated nodes live far shorter than a certificate: no renewal.
                        Some(
                            pb::coordinator_message::Msg::RenewCertificate(_)
                            | pb::coordinator_message::Msg::NodeCertificate(_)
                            | pb::coordinator_message::Msg::TrustBundle(_),
                        ) => {}
                        None => {}
                    }
                }
                () = tokio::time::sleep_until(next_beat) => {
                    seq += 1;
                    if outstanding.len() == OUTSTANDING_HEARTBEATS {
                        outstanding.pop_front();
                    }
                    outstanding.push_back((seq, Instant::now()));
                    // What a converged real agent sends: its state and a condition per step.
                    let hb = pb::Heartbeat {
                        seq,
                        applied_generation: generation,
                        reconcile_state: "converged".into(),
                        state: pb::ReconcileState::Converged.into(),
                        reconcile_error: String::new(),
                        conditions: vec![pb::Condition {
                            r#type: "K3s".into(),
                            status: "True".into(),
                            reason: "Healthy".into(),
                            message: format!("K3s {} is healthy", self.k3s.version),
                            since_unix: 1_790_000_000,
                        }],
                    };
                    out.send(msg(pb::agent_message::Msg::Heartbeat(hb))).await?;
                    self.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                    let factor = 1.0 + jitter * (2.0 * rand::random::<f64>() - 1.0);
                    next_beat = (next_beat + period.mul_f64(factor)).max(tokio::time::Instant::now());
                }
                () = tokio::time::sleep_until(decide_at.unwrap_or_else(tokio::time::Instant::now)), if decide_at.is_some() => {
                    if let Some(report) = self.k3s.finish(&self.id.name, cfg) {
                        self.shared.record(&self.id.name, What::Reported {
                            version: report.version.clone(),
                            failed_version: report.failed_version.clone(),
                        });
                        out.send(msg(pb::agent_message::Msg::K3s(report))).await?;
                    }
                }
                changed = online.changed() => {
                    if changed.is_err() || !*online.borrow_and_update() {
                        return Ok(End::Offline);
                    }
                }
            }
        }
    }

    /// Answers a drain or uncordon with success, after the configured drain time.
    fn answer(&self, cmd: pb::Command, out: &mpsc::Sender<pb::AgentMessage>) {
        let (out, shared, name) = (out.clone(), self.shared.clone(), self.id.name.clone());
        let delay = self.config.k3s.drain_time;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = pb::OperationResult {
                operation_id: cmd.id.clone(),
                success: true,
                message: "simulated".into(),
                generation: 0,
            };
            if out.send(msg(pb::agent_message::Msg::Result(result))).await.is_ok() {
                shared.record(&name, What::Answered { command: cmd.id });
            }
        });
    }
}

fn msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

/// One TCP + TLS + HTTP/2 connection, as `elysium_agent::transport::channel`
/// opens it, but from a chosen source address (loopback has only ~28k
/// ephemeral ports per source address and destination).
async fn connect(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
) -> Result<Channel> {
    let server_name = ServerName::from(addr.ip());
    let tls = tls.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, server_name) = (tls.clone(), server_name.clone());
        async move {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(src) = source {
                socket.bind(SocketAddr::new(src, 0))?;
            }
            let tcp = tokio::time::timeout(transport::CONNECT_TIMEOUT, socket.connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The same HTTP/2 settings as the real agent's channel.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(transport::CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    endpoint.connect_with_connector(connector).await.with_context(|| format!("connecting to {addr}"))
}

// ---------------------------------------------------------------------------
// Checking a rollout.

/// Every event of the coordinator's log, paging through `ListEvents`.
pub async fn all_events(admin: &mut pb::admin_client::AdminClient<Channel>) -> Result<Vec<pb::Event>> {
    let mut out: Vec<pb::Event> = Vec::new();
    loop {
        let after_seq = out.last().map(|e| e.seq).unwrap_or(0);
        let page = admin
            .list_events(pb::ListEventsRequest { after_seq, limit: 1000 })
            .await
            .map_err(|s| anyhow!("listing events: {}", s.message()))?
            .into_inner()
            .events;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// A rollout as the coordinator's event log tells it, replayed in order.
#[derive(Debug, Default, Clone)]
pub struct RolloutHistory {
    /// Nodes in the order they started (drain or, without drains, upgrade).
    pub started: Vec<String>,
    /// The most nodes of each role (`"server"`, `"agent"`) in flight at once.
    pub max_in_flight: BTreeMap<String, usize>,
    /// The first node failure (failed or rolled back), and the nodes in flight
    /// when the coordinator saw it (the failed node included).
    pub first_failure: Option<(String, BTreeSet<String>)>,
    /// Nodes that started after a failure and before the rollout was resumed.
    pub started_while_halted: Vec<String>,
    /// Agents that started while a server was in flight or still to start.
    pub agents_before_servers: Vec<String>,
    /// Nodes that started more than once.
    pub restarted: Vec<String>,
    pub done: BTreeSet<String>,
    pub failed: BTreeSet<String>,
}

/// Replays the `upgrade.*` events from the last `upgrade.started` on. `roles`
/// maps node name → `"server"` / `"agent"`, `skipped` names the nodes the
/// rollout skipped (both from `UpgradeStatus`).
pub fn rollout_history(
    events: &[pb::Event],
    roles: &BTreeMap<String, String>,
    skipped: &BTreeSet<String>,
) -> RolloutHistory {
    let from = events.iter().rposition(|e| e.kind == "upgrade.started").unwrap_or(0);
    let mut h = RolloutHistory::default();
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut halted = false;
    let role = |n: &str| roles.get(n).cloned().unwrap_or_default();
    for e in &events[from..] {
        let node = e.subject.clone();
        match e.kind.as_str() {
            // Draining, or upgrading without a drain; upgrading after a drain
            // finds the node already in flight.
            "upgrade.node-draining" | "upgrade.node-upgrading" if !in_flight.contains(&node) => {
                if !seen.insert(node.clone()) {
                    h.restarted.push(node.clone());
                }
                if halted {
                    h.started_while_halted.push(node.clone());
                }
                // Servers first: no agent starts while a server is in flight or
                // still to start (skipped servers never start).
                if role(&node) == "agent"
                    && roles.iter().any(|(n, r)| {
                        r == "server"
                            && (in_flight.contains(n) || (!seen.contains(n) && !skipped.contains(n)))
                    })
                {
                    h.agents_before_servers.push(node.clone());
                }
                in_flight.insert(node.clone());
                h.started.push(node.clone());
                let r = role(&node);
                let count = in_flight.iter().filter(|n| role(n) == r).count();
                let max = h.max_in_flight.entry(r).or_insert(0);
                *max = (*max).max(count);
            }
            "upgrade.node-done" => {
                in_flight.remove(&node);
                h.done.insert(node);
            }
            "upgrade.node-failed" => {
                if h.first_failure.is_none() {
                    h.first_failure = Some((node.clone(), in_flight.clone()));
                }
                in_flight.remove(&node);
                h.failed.insert(node);
                halted = true;
            }
            "upgrade.resumed" => halted = false,
            _ => {}
        }
    }
    h
}

/// Nodes of each role in flight (draining, upgrading, health gate) in a status.
pub fn in_flight(r: &pb::Rollout) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for n in &r.nodes {
        if matches!(n.phase.as_str(), "draining" | "upgrading" | "health-gate") {
            *out.entry(n.role.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// Checks a rollout against its rules, from the coordinator's event log, its
/// final status and what the simulated agents saw. Returns every violation.
///
/// - order: nodes start in plan order (servers first, then agents, by name),
///   and no agent starts while a server is in flight;
/// - concurrency: never more nodes of a role in flight than its limit, neither
///   in the log nor in the agents' own timestamps (from the target pin to their
///   report: inside the coordinator's in-flight time, so never more);
/// - halt on failure: no node starts between a failure and a resume, and no
///   agent receives the target pin after the failed node reported, unless it
///   was already in flight then;
/// - each node starts at most once.
pub fn check_rollout(
    status: &pb::Rollout,
    events: &[pb::Event],
    fleet: &[FleetEvent],
    limits: &BTreeMap<String, usize>,
    resumed_at: Option<Instant>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let roles: BTreeMap<String, String> =
        status.nodes.iter().map(|n| (n.name.clone(), n.role.clone())).collect();
    let skipped: BTreeSet<String> =
        status.nodes.iter().filter(|n| n.phase == "skipped").map(|n| n.name.clone()).collect();
    let h = rollout_history(events, &roles, &skipped);
    let target = &status.target_version;

    // Order.
    let started: BTreeSet<&String> = h.started.iter().collect();
    let plan_order: Vec<&String> =
        status.nodes.iter().map(|n| &n.name).filter(|n| started.contains(n)).collect();
    if plan_order != h.started.iter().collect::<Vec<_>>() {
        let first = plan_order.iter().zip(&h.started).position(|(a, b)| *a != b);
        problems.push(format!("nodes did not start in plan order (first difference at position {first:?})"));
    }
    if !h.agents_before_servers.is_empty() {
        problems.push(format!(
            "agents started while a server was in flight or still to start: {:?}",
            h.agents_before_servers
        ));
    }
    if !h.restarted.is_empty() {
        problems.push(format!("nodes started twice: {:?}", h.restarted));
    }

    // Concurrency, from the log.
    for (role, max) in &h.max_in_flight {
        let limit = limits.get(role).copied().unwrap_or(usize::MAX);
        if *max > limit {
            problems.push(format!("{max} {role}s in flight at once (limit {limit})"));
        }
    }
    // Concurrency, from the agents' clocks.
    let agent_max = agent_side_in_flight(fleet, target, &roles);
    for (role, max) in &agent_max {
        let limit = limits.get(role).copied().unwrap_or(usize::MAX);
        if *max > limit {
            problems.push(format!("{max} {role}s upgrading at once by their own clocks (limit {limit})"));
        }
    }

    // Halt on failure.
    if !h.started_while_halted.is_empty() {
        problems
            .push(format!("nodes started after a failure, before a resume: {:?}", h.started_while_halted));
    }
    if let Some((failed, allowed)) = &h.first_failure {
        let reported = fleet.iter().find(|e| {
            &e.node == failed
                && matches!(&e.what, What::Reported { failed_version, .. } if failed_version == target)
        });
        if let Some(reported) = reported {
            let late: Vec<&String> = fleet
                .iter()
                .filter(|e| e.at > reported.at && resumed_at.is_none_or(|r| e.at < r))
                .filter(|e| matches!(&e.what, What::Pinned { version } if version == target))
                .map(|e| &e.node)
                .filter(|n| !allowed.contains(*n))
                .collect();
            if !late.is_empty() {
                problems.push(format!(
                    "nodes got the target pin after {failed} reported its rollback without being in flight: {late:?}"
                ));
            }
        }
    }
    problems
}

/// The most agents of each role between "pinned to target" and "reported" at
/// once, by the simulated agents' own timestamps.
pub fn agent_side_in_flight(
    fleet: &[FleetEvent],
    target: &str,
    roles: &BTreeMap<String, String>,
) -> BTreeMap<String, usize> {
    // (time, +1/-1, role); at equal times, ends before starts.
    let mut edges: Vec<(Instant, i32, String)> = Vec::new();
    let mut open: BTreeMap<&str, Instant> = BTreeMap::new();
    for e in fleet {
        match &e.what {
            What::Pinned { version } if version == target => {
                open.entry(&e.node).or_insert(e.at);
            }
            What::Reported { version, failed_version } if version == target || failed_version == target => {
                if let Some(start) = open.remove(e.node.as_str()) {
                    let role = roles.get(&e.node).cloned().unwrap_or_default();
                    edges.push((start, 1, role.clone()));
                    edges.push((e.at, -1, role));
                }
            }
            _ => {}
        }
    }
    for (node, start) in open {
        let role = roles.get(node).cloned().unwrap_or_default();
        edges.push((start, 1, role));
    }
    edges.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut now: BTreeMap<String, i32> = BTreeMap::new();
    let mut max: BTreeMap<String, usize> = BTreeMap::new();
    for (_, d, role) in edges {
        let c = now.entry(role.clone()).or_insert(0);
        *c += d;
        let m = max.entry(role).or_insert(0);
        *m = (*m).max(usize::try_from(*c).unwrap_or(0));
    }
    max
}
