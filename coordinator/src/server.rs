//! The running coordinator: shared state and the TLS gRPC server.
//!
//! One listener serves all three services. TLS asks for a client certificate but
//! does not require one, because a joining node has none yet: `Enrollment` accepts
//! anonymous callers (the token is its credential), `NodeSession` and `Admin`
//! reject any caller without a certificate of the right kind.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elysium_proto::{MAX_MESSAGE_BYTES, v1 as pb};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::convert;
use crate::datadir::DataDir;
use crate::pki::Ca;
use crate::services::{AdminService, EnrollmentService, SessionService};
use crate::store::{K3sCluster, NewEvent, NodeRecord, SecretRecord, Store, StoreError, StoredSpec};
use crate::tokens::{JoinToken, Role, TokenRecord};

/// Seconds since the Unix epoch. Injectable so tests can move time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    })
}

/// What sessions watch: the cluster spec, the K3s cluster facts and the secrets
/// the spec refers to.
#[derive(Debug, Clone)]
pub struct ClusterState {
    pub spec: StoredSpec,
    pub k3s: K3sCluster,
    /// name → secret. Shared: cloned into every session's view on each change.
    pub secrets: Arc<std::collections::BTreeMap<String, SecretRecord>>,
    /// `spec` parsed once (every session computes its node spec from it).
    pub parsed: Arc<elysium_spec::ClusterSpec>,
    /// The latest rollout; it pins each node's K3s version.
    pub rollout: Option<Arc<crate::rollout::Published>>,
}

impl ClusterState {
    /// Replaces the spec and its parsed form together.
    pub fn set_spec(&mut self, spec: StoredSpec) {
        // Stored specs were validated when set.
        self.parsed = Arc::new(elysium_spec::ClusterSpec::parse(&spec.toml).unwrap_or_default());
        self.spec = spec;
    }
}

/// What the coordinator knows about a node that has a session open now.
#[derive(Debug)]
pub(crate) struct LiveSession {
    /// Distinguishes this session from a newer one of the same node.
    pub session_id: u64,
    /// Notified to end the session (node removed, replaced by a newer session).
    pub end: Arc<Notify>,
    pub last_seen_unix: i64,
    /// The session's outbound queue, for commands (drain, uncordon).
    pub commands: Outbound,
}

/// A session's outbound queue (specs, heartbeat acknowledgements, commands).
///
/// Messages are boxed because tokio's mpsc allocates its slots 32 at a time: an
/// unboxed `Result<CoordinatorMessage, Status>` is 232 bytes, so every session
/// held a 7,456-byte block for messages that pass one or two at a time (36 MiB
/// with 5,000 sessions, in a live-heap histogram; docs/BENCHMARKS-fleet.md).
/// Boxed, the block is 288 bytes, for one small allocation per message.
#[derive(Debug, Clone)]
pub(crate) struct Outbound(tokio::sync::mpsc::Sender<OutboundMessage>);

pub(crate) type OutboundMessage = Box<Result<pb::CoordinatorMessage, tonic::Status>>;

impl Outbound {
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<OutboundMessage>) -> Self {
        Self(tx)
    }

    pub(crate) fn try_send(
        &self,
        msg: Result<pb::CoordinatorMessage, tonic::Status>,
    ) -> Result<(), tokio::sync::mpsc::error::TrySendError<OutboundMessage>> {
        self.0.try_send(Box::new(msg))
    }

    pub(crate) async fn send(
        &self,
        msg: Result<pb::CoordinatorMessage, tonic::Status>,
    ) -> Result<(), tokio::sync::mpsc::error::SendError<OutboundMessage>> {
        self.0.send(Box::new(msg)).await
    }
}

/// Shared state of a running coordinator.
pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ca: Ca,
    pub(crate) clock: Clock,
    /// The cluster spec and K3s cluster facts; every session watches it and
    /// pushes a new node spec when it changes.
    pub(crate) state: watch::Sender<ClusterState>,
    /// Serialises read-modify-write of the K3s cluster record.
    k3s_lock: Mutex<()>,
    pub(crate) live: Mutex<HashMap<String, LiveSession>>,
    /// Events go to a writer thread: appending is a durable store commit, which
    /// must not block the async workers, and batching many into one commit keeps
    /// up with bursts (a thousand nodes enrolling).
    events: Mutex<Option<std::sync::mpsc::Sender<NewEvent>>>,
    event_writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) next_session: std::sync::atomic::AtomicU64,
    /// Wakes the rollout driver (a node reported, an operator acted).
    pub(crate) rollout_kick: Notify,
    /// Serialises changes to the rollout (driver ticks, operator actions).
    pub(crate) rollout_lock: tokio::sync::Mutex<()>,
    /// Outcomes of drain commands by operation id, until the driver reads them.
    pub(crate) drain_results: Mutex<std::collections::BTreeMap<String, Result<(), String>>>,
    /// Sealing keys and the K3s token, encrypted at rest.
    pub(crate) vault: crate::vault::Vault,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl Drop for Coordinator {
    /// Writes the events still queued before the store closes.
    fn drop(&mut self) {
        drop(self.events.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(writer) = self.event_writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

impl Coordinator {
    pub fn new(
        store: Arc<dyn Store>,
        ca: Ca,
        vault: crate::vault::VaultKey,
        clock: Clock,
    ) -> Result<Arc<Self>, StoreError> {
        let spec = store.get_spec()?;
        let (events_tx, events_rx) = std::sync::mpsc::channel::<NewEvent>();
        let writer_store = store.clone();
        let event_writer = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || {
                while let Ok(first) = events_rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(events_rx.try_iter().take(1000));
                    if let Err(e) = writer_store.append_events(&batch) {
                        tracing::warn!(error = %e, lost = batch.len(), "could not record events");
                    }
                }
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        let k3s = match store.get_k3s()? {
            Some(k3s) => k3s,
            None => {
                let k3s = crate::k3s::new_cluster();
                store.put_k3s(&k3s)?;
                k3s
            }
        };
        let vault = crate::vault::Vault::new(vault);
        if let Some(token) = &k3s.server_token {
            // Reported before the vault existed: back it up now.
            let by = match &k3s.first_server_id {
                Some(id) => store.get_node_brief(id)?.map(|n| n.name).unwrap_or_default(),
                None => String::new(),
            };
            if let Err(e) = vault.backfill_k3s_token(store.as_ref(), &by, token, clock()) {
                tracing::warn!(error = %e, "could not back up the K3s token in the key vault");
            }
        }
        let secrets = store.list_secrets()?.into_iter().map(|s| (s.name.clone(), s)).collect();
        let rollout = store.get_rollout()?.map(|r| Arc::new(crate::rollout::Published::new(r)));
        let parsed = Arc::new(elysium_spec::ClusterSpec::parse(&spec.toml).unwrap_or_default());
        Ok(Arc::new(Self {
            store,
            ca,
            clock,
            state: watch::Sender::new(ClusterState {
                spec,
                k3s,
                secrets: Arc::new(secrets),
                parsed,
                rollout,
            }),
            k3s_lock: Mutex::new(()),
            live: Mutex::new(HashMap::new()),
            events: Mutex::new(Some(events_tx)),
            event_writer: Mutex::new(Some(event_writer)),
            next_session: std::sync::atomic::AtomicU64::new(1),
            rollout_kick: Notify::new(),
            rollout_lock: tokio::sync::Mutex::new(()),
            drain_results: Mutex::new(Default::default()),
            vault,
        }))
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    pub(crate) fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveSession>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of nodes with a session open.
    pub fn online_count(&self) -> usize {
        self.live().len()
    }

    /// A node record as shown to admins: stored data plus live presence.
    pub(crate) fn node_view(&self, node: &NodeRecord) -> pb::NodeRecord {
        let live = self.live();
        let mut rec = convert::node_to_pb(node, live.contains_key(&node.id));
        if let Some(s) = live.get(&node.id) {
            rec.last_seen_unix = rec.last_seen_unix.max(s.last_seen_unix);
        }
        rec
    }

    /// The spec a given node should hold.
    pub(crate) fn node_spec(&self, node: &NodeRecord, state: &ClusterState) -> pb::NodeSpec {
        pb::NodeSpec {
            cluster_spec_toml: state.spec.toml.clone(),
            ..self.node_spec_without_toml(node, state)
        }
    }

    /// [`Self::node_spec`] without the cluster spec's TOML, which follows from
    /// the generation: what sessions compare on every change of the cluster
    /// state, without copying the TOML for each of them.
    pub(crate) fn node_spec_without_toml(&self, node: &NodeRecord, state: &ClusterState) -> pb::NodeSpec {
        let parsed = &state.parsed;
        let mut k3s = crate::k3s::assignment(node, parsed, &state.k3s);
        if let Some(a) = &mut k3s {
            a.version = crate::rollout::driver::pinned_version(state, node).unwrap_or_default();
        }
        pb::NodeSpec {
            generation: state.spec.generation,
            cluster_spec_toml: String::new(),
            role: convert::role_to_pb(node.role).into(),
            labels: node.labels.clone().into_iter().collect(),
            k3s,
            // Only what the spec refers to: a node never learns other secrets.
            secrets: parsed
                .secret_refs()
                .into_iter()
                .filter_map(|name| state.secrets.get(name).map(|s| (name.to_owned(), s.value.clone())))
                .collect(),
        }
    }

    /// Changes the K3s cluster record with `f` (which returns whether it changed
    /// anything), persists it and notifies every session. Blocking (store write).
    pub(crate) fn update_k3s(&self, f: impl FnOnce(&mut K3sCluster) -> bool) -> Result<(), StoreError> {
        let _guard = self.k3s_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut k3s = self.state.borrow().k3s.clone();
        if !f(&mut k3s) {
            return Ok(());
        }
        self.store.put_k3s(&k3s)?;
        self.state.send_modify(|s| s.k3s = k3s);
        Ok(())
    }

    /// Makes `node` the first K3s server if it is a server and there is none yet.
    pub(crate) fn claim_first_server(&self, node: &NodeRecord) -> Result<(), StoreError> {
        if node.role != Role::Server {
            return Ok(());
        }
        self.update_k3s(|k| {
            if k.first_server_id.is_some() {
                return false;
            }
            k.first_server_id = Some(node.id.clone());
            k.first_server_url = crate::k3s::server_url_from(&node.inventory.addresses);
            true
        })
    }

    /// Creates and stores a join token. Returns the token (the secret, to show once)
    /// and what is stored.
    pub fn issue_token(
        &self,
        ttl_seconds: u64,
        uses: u32,
        role: Role,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<(JoinToken, TokenRecord), StoreError> {
        let token = JoinToken::generate(&self.ca.fingerprint());
        let now = self.now();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            role,
            labels,
            created_unix: now,
            expires_unix: now.saturating_add(i64::try_from(ttl_seconds).unwrap_or(i64::MAX)),
            uses_allowed: uses,
            uses_consumed: 0,
            revoked: false,
        };
        self.store.create_token(&record)?;
        Ok((token, record))
    }

    /// Appends to the event log; a failure to log is reported but never fails the
    /// operation that caused it.
    pub(crate) fn event(&self, kind: &str, subject: &str, message: &str) {
        tracing::info!(kind, subject, message, "event");
        let event = NewEvent {
            unix: self.now(),
            kind: kind.into(),
            subject: subject.into(),
            message: message.into(),
        };
        if let Some(tx) = self.events.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(event);
        }
    }
}

/// TLS material of the server.
#[derive(Clone)]
pub struct ServerTls {
    /// Server certificate followed by the CA certificate: joining nodes find the
    /// CA they pinned in the chain.
    pub chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn from_data_dir(dir: &DataDir) -> Self {
        Self {
            chain_pem: format!("{}{}", dir.server_cert_pem, dir.ca.cert_pem()),
            key_pem: dir.server_key_pem.clone(),
            ca_pem: dir.ca.cert_pem().to_owned(),
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not configure TLS for the coordinator")]
    Tls(#[source] tonic::transport::Error),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Serves the coordinator on `listener` until `shutdown` completes, then stops
/// accepting, closes sessions and returns.
pub async fn run(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    tls: ServerTls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls_config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.chain_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem))
        .client_auth_optional(true);

    let enrollment =
        pb::enrollment_server::EnrollmentServer::new(EnrollmentService::new(coordinator.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let session = pb::node_session_server::NodeSessionServer::new(SessionService::new(coordinator.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = pb::admin_server::AdminServer::new(AdminService::new(coordinator.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    // Ending all sessions at shutdown lets the server's graceful drain finish
    // instead of waiting for agents' streams that never end on their own.
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_sessions = {
        let coordinator = coordinator.clone();
        async move {
            shutdown.await;
            let _ = fired_tx.send(());
            tracing::info!("shutting down: closing node sessions");
            for s in coordinator.live().values() {
                s.end.notify_one();
            }
        }
    };

    // `Server::tcp_nodelay` does not apply to connections handed in through
    // `serve_with_incoming`: set it on each accepted socket, or every small
    // response waits ~40 ms for a delayed ACK.
    let incoming =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
            conn.inspect(|s| {
                if let Err(e) = s.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            })
        });
    let serve = Server::builder()
        .tls_config(tls_config)
        .map_err(ServeError::Tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(64))
        .add_service(enrollment)
        .add_service(session)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, stop_sessions);
    // The drain waits for every connection to close; a peer that vanished (a
    // powered-off node) never answers GOAWAY. Bound the wait.
    let grace = async {
        if fired_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // Rollouts advance while the server runs; the driver stops with it (its
    // state is persisted at every step, so a restart continues the rollout).
    let (driver_stop, driver_stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(crate::rollout::driver::run(coordinator.clone(), async move {
        let _ = driver_stopped.await;
    }));
    let result = tokio::select! {
        result = serve => result.map_err(ServeError::Serve),
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; stopping anyway");
            Ok(())
        }
    };
    let _ = driver_stop.send(());
    let _ = driver.await;
    result
}

/// How long shutdown waits for open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
