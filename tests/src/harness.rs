//! In-process harness: a real coordinator (real TLS on loopback, real redb store in
//! a temporary directory) and real agents whose node root is a temporary directory
//! and whose systemd is the host seam's fake. Used by the integration tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use elysium_agent::config::AgentConfig;
use elysium_agent::join::{self, JoinError, JoinOptions, JoinOutcome, Secret};
use elysium_agent::link::StepLink;
use elysium_agent::reconcile::Reconciler;
use elysium_agent::service::{self as agent, AgentOptions};
use elysium_agent::transport::{self, Target};
use elysium_agent::vault::KeyWatchOptions;
use elysium_coordinator::datadir::{self, AdminConfig, InitOptions};
use elysium_coordinator::pki::Lifetimes;
use elysium_coordinator::server::{self, Clock, Coordinator, ServerTls};
use elysium_coordinator::store::RedbStore;
use elysium_host::{FakeSystemd, Host, RootFs};
use elysium_proto::v1 as pb;
use elysium_proto::v1::admin_client::AdminClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A coordinator serving on 127.0.0.1 from a temporary data directory.
pub struct TestCoordinator {
    pub tmp: tempfile::TempDir,
    pub addr: SocketAddr,
    /// `None` only while restarting.
    coordinator: Option<Arc<Coordinator>>,
    /// Seconds added to the real clock (to expire tokens without sleeping).
    pub clock_offset: Arc<AtomicI64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), server::ServeError>>>,
    limits: server::Limits,
}

impl TestCoordinator {
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("coordinator")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Initialises a data directory and serves it on an ephemeral port.
    pub async fn start() -> Self {
        Self::start_with_options(Lifetimes::default(), server::Limits::default()).await
    }

    /// [`TestCoordinator::start`] with these certificate lifetimes.
    pub async fn start_with(lifetimes: Lifetimes) -> Self {
        Self::start_with_options(lifetimes, server::Limits::default()).await
    }

    /// [`TestCoordinator::start`] with other connection and enrollment limits.
    pub async fn start_with_limits(limits: server::Limits) -> Self {
        Self::start_with_options(Lifetimes::default(), limits).await
    }

    async fn start_with_options(lifetimes: Lifetimes, limits: server::Limits) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("coordinator");
        let opts = InitOptions { name: "test".into(), sans: vec!["127.0.0.1".into()], port: 0, lifetimes };
        datadir::init(&dir, &opts).expect("coordinator init");
        let clock_offset = Arc::new(AtomicI64::new(0));
        let (coordinator, addr, stop, task) =
            serve(&dir, "127.0.0.1:0".parse().unwrap(), clock_offset.clone(), limits).await;
        Self {
            tmp,
            addr,
            coordinator: Some(coordinator),
            clock_offset,
            stop: Some(stop),
            task: Some(task),
            limits,
        }
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        self.coordinator.as_ref().expect("coordinator running")
    }

    /// Stops serving (sessions are closed) and waits for the server to finish.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(10), task).await;
            result.expect("coordinator did not shut down within 10 s").expect("join").expect("serve");
        }
    }

    /// Stops and starts again from the same data directory on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        // In a real restart the process ends; here, wait until the last session
        // task lets go of the old coordinator so the store file is closed.
        let old = self.coordinator.take().expect("coordinator running");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&old) > 1 {
            assert!(std::time::Instant::now() < deadline, "old coordinator still referenced");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(old);
        let (coordinator, addr, stop, task) =
            serve(&self.data_dir(), self.addr, self.clock_offset.clone(), self.limits).await;
        assert_eq!(addr, self.addr);
        self.coordinator = Some(coordinator);
        self.stop = Some(stop);
        self.task = Some(task);
    }

    pub fn admin_config(&self) -> AdminConfig {
        let mut cfg =
            datadir::load_admin_config(&self.data_dir().join(datadir::ADMIN_FILE)).expect("admin.toml");
        cfg.coordinator = self.url();
        cfg
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        let cfg = self.admin_config();
        let tls = transport::mtls(&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem).expect("admin tls");
        AdminClient::new(
            transport::channel(&Target::parse(&self.url()).unwrap(), tls).await.expect("admin channel"),
        )
    }

    /// Creates an agent-role token through the Admin API.
    pub async fn token(&self, uses: u32, ttl_seconds: u64) -> String {
        self.token_for(pb::NodeRole::Agent, uses, ttl_seconds).await
    }

    /// Creates a token for `role` through the Admin API.
    pub async fn token_for(&self, role: pb::NodeRole, uses: u32, ttl_seconds: u64) -> String {
        self.admin()
            .await
            .create_token(pb::CreateTokenRequest {
                ttl_seconds,
                uses,
                role: role.into(),
                labels: Default::default(),
            })
            .await
            .expect("create token")
            .into_inner()
            .token
    }

    /// Sets the cluster spec through the Admin API (whatever the generation);
    /// returns the new generation.
    pub async fn set_spec(&self, toml: &str) -> u64 {
        self.admin()
            .await
            .set_cluster_spec(pb::SetClusterSpecRequest { toml: toml.into(), expected_generation: 0 })
            .await
            .expect("set the cluster spec")
            .into_inner()
            .generation
    }

    pub async fn node(&self, name: &str) -> Option<pb::NodeRecord> {
        self.admin()
            .await
            .get_node(pb::GetNodeRequest { name: name.into() })
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    pub fn advance_clock(&self, seconds: i64) {
        self.clock_offset.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The real clock plus [`TestCoordinator::clock_offset`] seconds.
#[derive(Debug)]
struct OffsetClock(Arc<AtomicI64>);

impl Clock for OffsetClock {
    fn now(&self) -> std::time::SystemTime {
        let offset = self.0.load(Ordering::SeqCst);
        let by = Duration::from_secs(offset.unsigned_abs());
        let real = std::time::SystemTime::now();
        if offset >= 0 { real + by } else { real - by }
    }
}

async fn serve(
    dir: &Path,
    addr: SocketAddr,
    offset: Arc<AtomicI64>,
    limits: server::Limits,
) -> (Arc<Coordinator>, SocketAddr, oneshot::Sender<()>, JoinHandle<Result<(), server::ServeError>>) {
    let data = datadir::load(dir).expect("load data dir");
    let tls = ServerTls::from_data_dir(&data);
    let vault = data.vault_key().expect("vault key");
    let store = RedbStore::open_sealed(&data.store_path(), Arc::new(vault.clone())).expect("open store");
    let clock: Arc<dyn Clock> = Arc::new(OffsetClock(offset));
    let ca = data.ca.with_clock(clock.clone());
    let coordinator = Coordinator::new(Arc::new(store), ca, vault, clock).expect("coordinator");
    let listener = server::bind(addr).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel();
    let task =
        tokio::spawn(server::run_with_limits(coordinator.clone(), listener, tls, limits, async move {
            let _ = stopped.await;
        }));
    (coordinator, addr, stop, task)
}

/// A node: a temporary root directory and a fake systemd over it.
pub struct TestNode {
    pub root: tempfile::TempDir,
    pub systemd: Arc<FakeSystemd>,
    pub host: Host,
    /// Stands in for the elysium-node binary that join installs.
    pub binary: PathBuf,
}

impl TestNode {
    pub fn new(hostname: &str) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let fs = RootFs::new(root.path());
        fs.write_atomic("/proc/sys/kernel/hostname", format!("{hostname}\n").as_bytes(), 0o644).unwrap();
        fs.write_atomic("/etc/os-release", b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n", 0o644)
            .unwrap();
        let binary = root.path().join("elysium-node.build");
        std::fs::write(&binary, b"#!/bin/true\n").unwrap();
        let systemd = Arc::new(FakeSystemd::new(fs.clone()));
        let host = Host::with_root(root.path(), systemd.clone());
        Self { root, systemd, host, binary }
    }

    pub fn options(&self, url: &str, token: &str) -> JoinOptions {
        JoinOptions {
            coordinator: url.into(),
            token: Secret(token.into()),
            name: None,
            dry_run: false,
            binary: self.binary.clone(),
            require_root: false,
        }
    }

    pub async fn join(&self, url: &str, token: &str) -> Result<JoinOutcome, JoinError> {
        join::join(&self.host, &self.options(url, token), &mut |_| {}).await
    }

    /// Starts the agent in the background.
    pub fn start_agent(&self) -> TestAgent {
        self.start_agent_with(Reconciler::default())
    }

    /// Starts the agent with the given reconciler steps.
    pub fn start_agent_with(&self, reconciler: Reconciler) -> TestAgent {
        // Steps that report to the coordinator get their link through the
        // reconciler; this one is for the session's end.
        let (_step_link, session_link) = elysium_agent::link::link();
        self.run_agent(reconciler, session_link)
    }

    /// Starts the agent and the key vault's watcher beside it, as `elysium-node
    /// agent` does. Also returns the steps' end of the link, to report what a step
    /// would (the K3s token).
    pub fn start_agent_with_key_vault(&self, options: KeyWatchOptions) -> (TestAgent, StepLink) {
        let (step_link, session_link) = elysium_agent::link::link();
        let watcher = elysium_agent::vault::spawn(self.host.fs.clone(), step_link.clone(), options);
        let mut agent = self.run_agent(Reconciler::default(), session_link);
        agent.aux.push(watcher);
        (agent, step_link)
    }

    fn run_agent(&self, reconciler: Reconciler, session_link: elysium_agent::link::SessionLink) -> TestAgent {
        let config =
            AgentConfig::load(&self.host.fs, elysium_agent::paths::AGENT_CONFIG).expect("agent.toml");
        let (stop, stopped) = oneshot::channel::<()>();
        let options = AgentOptions {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
        };
        let host = self.host.clone();
        let task = tokio::spawn(async move {
            agent::run(host, config, reconciler, session_link, options, async move {
                let _ = stopped.await;
            })
            .await
        });
        TestAgent { stop: Some(stop), task: Some(task), aux: Vec::new() }
    }

    /// A raw `NodeSession` client with this node's certificate.
    pub async fn session_client(&self, url: &str) -> pb::node_session_client::NodeSessionClient<Channel> {
        let fs = &self.host.fs;
        let read = |p| fs.read_to_string(p).expect("identity file");
        let tls = transport::mtls(
            &read(elysium_agent::paths::CA_CERT),
            &read(elysium_agent::paths::NODE_CERT),
            &read(elysium_agent::paths::NODE_KEY),
        )
        .expect("node tls");
        let channel = transport::channel(&Target::parse(url).unwrap(), tls).await.expect("channel");
        pb::node_session_client::NodeSessionClient::new(channel)
    }

    /// The spec persisted on the node, if any.
    pub fn held_spec(&self) -> Option<elysium_agent::state::HeldSpec> {
        elysium_agent::state::load_spec(&self.host.fs)
    }

    /// Whether nothing of an enrollment was written.
    pub fn is_pristine(&self) -> bool {
        !self.host.fs.exists("/etc/elysium") && !self.host.fs.exists("/var/lib/elysium")
    }
}

pub struct TestAgent {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), agent::AgentError>>>,
    /// Tasks the agent process runs beside the session (the key vault's watcher).
    aux: Vec<JoinHandle<()>>,
}

impl TestAgent {
    pub async fn stop(mut self) {
        for task in self.aux.drain(..) {
            task.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("agent did not stop within 10 s")
                .expect("join")
                .expect("agent");
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        for task in &self.aux {
            task.abort();
        }
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`
/// with `what`. Used instead of sleeps: tests wait for behaviour, not for time.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of the built `elysium-node` binary (see [`crate::e2e::node_binary`]).
pub fn elysium_binary() -> PathBuf {
    crate::e2e::node_binary().unwrap_or_else(|e| panic!("{e:#}"))
}
