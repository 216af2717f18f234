//! The running coordinator's shared, live state: the store handle, the CA, the
//! clock, the cluster state every session watches, the registry of open
//! sessions, the event log and the rollout's coordination (its lock, the wake-up
//! of its driver, drain outcomes).
//!
//! The gRPC services, the rollout driver and the server all stand on this one
//! floor down, and it knows none of them: changes that several of them make (the
//! K3s cluster record, the spec, the published rollout) are methods here, so
//! each is done one way. Does not own persistence (the [`Store`]) nor any policy
//! (who may call what, when a rollout advances).

mod admins;
mod cluster;
mod drains;
mod events;
mod sessions;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use elysium_host::Clock;
use elysium_proto::v1 as pb;
use tokio::sync::{Notify, watch};

pub(crate) use admins::{AdminCheck, CreateAdminError};
pub use cluster::{ClusterState, ParsedSpec};
pub(crate) use drains::{DrainBook, Recorded, truncate};
pub(crate) use sessions::{LiveSession, Outbound, OutboundMessage};

use crate::convert;
use crate::pki::Ca;
use crate::rollout::{NodeView, Published, Rollout};
use crate::store::{K3sCluster, NewEvent, NodeRecord, Store, StoreError};
use crate::tokens::{JoinToken, Role, TokenRecord};
use crate::vault::{Vault, VaultKey};
use events::EventLog;
use sessions::Sessions;

/// Shared state of a running coordinator.
pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    /// The signing CA and what else is trusted; replaced by a CA rotation.
    trust: std::sync::RwLock<Arc<Trust>>,
    /// Wall-clock time for every decision that depends on the date: token
    /// expiry, the key vault's last-seen times, rollout timeouts and windows.
    clock: Arc<dyn Clock>,
    /// The cluster spec and K3s cluster facts; every session watches it and
    /// pushes a new node spec when it changes.
    pub(crate) cluster: watch::Sender<ClusterState>,
    /// Serialises read-modify-write of the K3s cluster record.
    k3s_lock: Mutex<()>,
    sessions: Sessions,
    events: EventLog,
    /// Wakes the rollout driver (a node reported, an operator acted).
    pub(crate) rollout_kick: Notify,
    /// Serialises changes to the rollout (driver ticks, operator actions).
    pub(crate) rollout_lock: tokio::sync::Mutex<()>,
    /// Drain commands in flight (where each went) and their outcomes, until
    /// the driver reads them.
    pub(crate) drains: DrainBook,
    /// Sealing keys and the K3s token, encrypted at rest.
    pub(crate) vault: Vault,
    /// Wakes the certificate keeper (`tls::keep_current`).
    pub(crate) certs_kick: Notify,
    /// Wakes the recovery drill (a new key reached the vault).
    pub(crate) drill_kick: Notify,
    /// Where the drill writes the deploy key for git, for the moment git runs.
    drill_scratch: Mutex<PathBuf>,
    /// The admin certificates the Admin service accepts (`state::admins`).
    admins: admins::Admins,
}

/// The signing CA with the rest of what is trusted, swapped as one.
#[derive(Debug)]
struct Trust {
    ca: Ca,
    rotation: Option<crate::datadir::ca_rotation::Rotation>,
    bundle_pem: String,
}

impl Trust {
    fn new(ca: Ca, rotation: Option<crate::datadir::ca_rotation::Rotation>) -> Self {
        let bundle_pem = crate::datadir::ca_rotation::bundle(ca.cert_pem(), rotation.as_ref());
        Self { ca, rotation, bundle_pem }
    }
}

/// The CA in use at the moment [`Coordinator::ca`] was called; a rotation
/// replaces it for later callers.
#[derive(Debug, Clone)]
pub struct CaRef(Arc<Trust>);

impl std::ops::Deref for CaRef {
    type Target = Ca;
    fn deref(&self) -> &Ca {
        &self.0.ca
    }
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("ca", &*self.ca())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Longest event message kept (and logged); longer ones are cut on a character
/// boundary and say so. The log keeps 10,000 events, so this bounds it to tens
/// of MiB whatever nodes write.
pub const MAX_EVENT_MESSAGE_BYTES: usize = 2048;

/// Whole seconds since the Unix epoch; 0 for a clock set before it.
fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

impl Coordinator {
    /// Loads the state from `store` and starts the event log. `clock` is
    /// [`elysium_host::SystemClock`] outside tests.
    pub fn new(
        store: Arc<dyn Store>,
        ca: Ca,
        vault: VaultKey,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let now = unix_seconds(clock.now());
        let spec = ParsedSpec::from_stored(store.get_spec()?);
        let events = EventLog::start(store.clone())?;
        let k3s = match store.get_k3s()? {
            Some(mut k3s) => {
                // A record from before agent tokens: agents move to one (k3s.rs).
                if crate::k3s::ensure_agent_secret(&mut k3s) {
                    store.put_k3s(&k3s)?;
                    tracing::info!("generated the K3s agent secret for an existing cluster record");
                }
                k3s
            }
            None => {
                let k3s = crate::k3s::new_cluster();
                store.put_k3s(&k3s)?;
                k3s
            }
        };
        let vault = Vault::new(vault);
        if let Some(token) = &k3s.server_token {
            // Reported before the vault existed: back it up now.
            let by = match &k3s.first_server_id {
                Some(id) => store.get_node_brief(id)?.map(|n| n.name).unwrap_or_default(),
                None => String::new(),
            };
            if let Err(e) = vault.backfill_k3s_token(store.as_ref(), &by, token, now) {
                tracing::warn!(error = %e, "could not back up the K3s token in the key vault");
            }
        }
        let secrets = store.list_secrets()?.into_iter().map(|s| (s.name.clone(), s)).collect();
        let rollout = store.get_rollout()?.map(|r| Arc::new(Published::new(r)));
        let admins = admins::Admins::load(store.as_ref())?;
        if admins.all().iter().all(|a| a.is_revoked()) {
            tracing::warn!(
                "no admin certificate is registered and valid: admin commands will be refused; create one on this machine with `elysium-node coordinator admin create NAME --data-dir DIR --out FILE` (with the coordinator stopped)"
            );
        }
        Ok(Arc::new(Self {
            store,
            trust: std::sync::RwLock::new(Arc::new(Trust::new(ca, None))),
            clock,
            cluster: watch::Sender::new(ClusterState {
                spec: Arc::new(spec),
                k3s,
                secrets: Arc::new(secrets),
                rollout,
                trust_generation: 0,
                ca_generation: 0,
            }),
            k3s_lock: Mutex::new(()),
            sessions: Sessions::default(),
            events,
            rollout_kick: Notify::new(),
            rollout_lock: tokio::sync::Mutex::new(()),
            drains: DrainBook::default(),
            vault,
            drill_kick: Notify::new(),
            certs_kick: Notify::new(),
            drill_scratch: Mutex::new(std::env::temp_dir()),
            admins,
        }))
    }

    /// The CA that signs now.
    pub fn ca(&self) -> CaRef {
        CaRef(self.trust.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// The CA certificates nodes and admins should trust (PEM), the signing CA first.
    pub fn trust_bundle(&self) -> String {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).bundle_pem.clone()
    }

    /// Looks at the data directory's certificates and CA now instead of at the
    /// next minute (SIGHUP; after `certs rotate` or `certs rotate-ca`).
    pub fn check_certificates_now(&self) {
        self.certs_kick.notify_one();
    }

    /// Whether `fingerprint` is the previous CA's, during a CA rotation.
    pub fn pins_previous_ca(&self, fingerprint: &str) -> bool {
        self.rotation().is_some_and(|r| {
            crate::pki::pem_to_der(&r.previous_ca_pem)
                .is_some_and(|d| crate::pki::fingerprint(&d) == fingerprint)
        })
    }

    /// The CA rotation under way, if one is.
    pub fn rotation(&self) -> Option<crate::datadir::ca_rotation::Rotation> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).rotation.clone()
    }

    /// Puts a CA (and rotation state) read from the data directory in use: a new
    /// signing CA makes every session of a node on the old CA ask for a renewal,
    /// a changed bundle is sent to every session. Nothing when both are as they were.
    pub fn set_trust(&self, ca: Ca, rotation: Option<crate::datadir::ca_rotation::Rotation>) -> bool {
        let next = Trust::new(ca, rotation);
        let (ca_changed, bundle_changed) = {
            let mut current = self.trust.write().unwrap_or_else(|p| p.into_inner());
            let ca_changed = current.ca.cert_pem() != next.ca.cert_pem();
            let bundle_changed = current.bundle_pem != next.bundle_pem || current.rotation != next.rotation;
            if ca_changed || bundle_changed {
                *current = Arc::new(next);
            }
            (ca_changed, bundle_changed)
        };
        if ca_changed || bundle_changed {
            self.cluster.send_modify(|s| {
                s.trust_generation += 1;
                s.ca_generation += u64::from(ca_changed);
            });
        }
        ca_changed || bundle_changed
    }

    /// Where the recovery drill puts the deploy key while git runs (a fresh 0700
    /// directory inside it each time, removed after): the system's temporary
    /// directory unless set (the shipped unit gives the service a private /tmp).
    pub fn set_drill_scratch_dir(&self, dir: PathBuf) {
        *self.drill_scratch.lock().unwrap_or_else(|p| p.into_inner()) = dir;
    }

    pub(crate) fn drill_scratch_dir(&self) -> PathBuf {
        self.drill_scratch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Unix seconds now, by the coordinator's clock.
    pub fn now(&self) -> i64 {
        unix_seconds(self.clock.now())
    }

    /// The open sessions by node id.
    pub(crate) fn live(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, LiveSession>> {
        self.sessions.lock()
    }

    /// A new session's id, unique in this coordinator's lifetime.
    pub(crate) fn next_session_id(&self) -> u64 {
        self.sessions.next_id()
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

    /// The fleet as the rollout planner sees it.
    pub(crate) fn node_views(&self, nodes: &[NodeRecord]) -> Vec<NodeView> {
        let live = self.live();
        nodes
            .iter()
            .map(|n| NodeView {
                node_id: n.id.clone(),
                name: n.name.clone(),
                role: n.role,
                labels: n.labels.clone(),
                online: live.contains_key(&n.id),
                version: n.k3s_version.clone(),
            })
            .collect()
    }

    /// Makes `spec` the current cluster spec; every session pushes its node's
    /// new spec. `spec` was stored already.
    pub(crate) fn set_spec(&self, spec: ParsedSpec) {
        let spec = Arc::new(spec);
        self.cluster.send_modify(|s| s.spec = spec);
    }

    /// Changes the K3s cluster record with `f` (which returns whether it changed
    /// anything), persists it and notifies every session. Blocking (store write).
    pub(crate) fn update_k3s(&self, f: impl FnOnce(&mut K3sCluster) -> bool) -> Result<(), StoreError> {
        let _guard = self.k3s_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut k3s = self.cluster.borrow().k3s.clone();
        if !f(&mut k3s) {
            return Ok(());
        }
        self.store.put_k3s(&k3s)?;
        self.cluster.send_modify(|s| s.k3s = k3s);
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

    /// Persists `r` and publishes it (sessions push the new version pins).
    /// The caller holds [`Self::rollout_lock`].
    pub(crate) async fn save_rollout(&self, r: Rollout) -> Result<(), StoreError> {
        let store = self.store.clone();
        let stored = r.clone();
        blocking_store(move || store.put_rollout(&stored)).await?;
        self.publish_rollout(r);
        Ok(())
    }

    /// Makes `r` the current rollout. Sessions are woken only when a node's pin
    /// changes: waking all of them on every step cost most of a core with 1,000
    /// nodes (docs/BENCHMARKS-fleet.md). Readers (`upgrade status`, the driver,
    /// a session woken for another reason) see `r` either way.
    pub(crate) fn publish_rollout(&self, r: Rollout) {
        self.cluster.send_if_modified(|s| {
            let wake = s.rollout.as_ref().is_none_or(|old| !old.same_pins(&r));
            s.rollout = Some(Arc::new(Published::new(r)));
            wake
        });
    }

    /// Creates and stores a join token. Returns the token (the secret, to show once)
    /// and what is stored.
    pub fn issue_token(
        &self,
        ttl_seconds: u64,
        uses: u32,
        role: Role,
        labels: BTreeMap<String, String>,
    ) -> Result<(JoinToken, TokenRecord), StoreError> {
        let token = JoinToken::generate(&self.ca().fingerprint());
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
    /// operation that caused it. Messages longer than [`MAX_EVENT_MESSAGE_BYTES`]
    /// are cut (nodes write some of them).
    pub(crate) fn event(&self, kind: &str, subject: &str, message: &str) {
        let message = truncate(message, MAX_EVENT_MESSAGE_BYTES);
        tracing::info!(kind, subject, message, "event");
        self.events.append(NewEvent {
            unix: self.now(),
            kind: kind.into(),
            subject: subject.into(),
            message,
        });
    }

    /// Events dropped because the log's queue was full, since the start.
    pub fn events_dropped(&self) -> u64 {
        self.events.dropped_total()
    }

    /// Drain commands the coordinator holds (sent and not yet forgotten).
    pub fn drains_pending(&self) -> usize {
        self.drains.len()
    }
}

/// Runs a blocking store operation off the async workers (redb commits fsync),
/// outside a request (the services map failures to a gRPC status themselves).
pub(crate) async fn blocking_store<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(StoreError::Thread("a store task panicked".into())))
}

#[cfg(test)]
mod tests;
