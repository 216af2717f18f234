//! The coordinator's state: tokens, nodes, the cluster spec and the event log.
//!
//! [`Store`] is the only way to reach it; nothing outside this module knows which
//! engine is behind it. The embedded default is [`RedbStore`] (see the README for
//! why redb). Every write is one ACID transaction, so a `kill -9` at any moment
//! leaves the last committed state.
//!
//! The store is the bottom floor of the coordinator: nothing here knows the live
//! state, the services or the rollout driver. It stores typed records, some of
//! them defined by the pure modules that own their meaning (`tokens`'
//! `TokenRecord`, `rollout`'s `Rollout`): those modules do no I/O and name
//! nothing above `tokens`, so the store depending on them points one way. Typed
//! records, rather than serialised bytes for the rollout, keep every record's
//! encoding and its corruption errors in one place, here.

mod hardware;
mod redb_store;
mod sealed;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use redb_store::{HARDWARE_DIR, RedbStore};
pub use sealed::Sealer;

use crate::tokens::{JoinToken, Role, TokenRecord, TokenRejection};

/// What a node reported about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    pub machine_id: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub cpu_threads: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A node enrolled with the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub labels: BTreeMap<String, String>,
    pub inventory: Inventory,
    pub enrolled_unix: i64,
    /// Last time the node said anything, 0 if never after enrollment.
    pub last_seen_unix: i64,
    pub agent_version: String,
    pub applied_generation: u64,
    pub reconcile_state: String,
    pub reconcile_error: String,
    /// Hex SHA-256 of the node certificate: the only one that opens a session,
    /// besides `pending_certificate_sha256` (services/renewal.rs).
    pub certificate_sha256: String,
    pub token_id: String,
    /// Conditions last reported by the agent.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Hardware inventory document last reported by the agent (JSON). The store
    /// keeps it apart from the rest of the record; only [`Store::get_node`],
    /// [`Store::node_by_name`], [`Store::list_nodes`] and [`Store::remove_node`]
    /// fill it in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hardware_json: String,
    /// Hex SHA-256 of the stored hardware document, set by the store when it
    /// stores one; empty when there is none. Sessions compare it with the hash
    /// in the agent's Hello and ask for the document only when they differ.
    #[serde(default)]
    pub hardware_sha256: String,
    /// The K3s version the node reports running healthy; empty before K3s.
    #[serde(default)]
    pub k3s_version: String,
    /// A version that failed its health gate and was rolled back, and why.
    #[serde(default)]
    pub k3s_failed_version: String,
    #[serde(default)]
    pub k3s_failure: String,
    /// The certificate issued by a renewal and not yet used: a session opened
    /// with it makes it current. Empty when no renewal is under way.
    #[serde(default)]
    pub pending_certificate_sha256: String,
    /// When the current certificate expires (Unix seconds); 0 when not known
    /// (records from before it was kept, until the node's next session).
    #[serde(default)]
    pub certificate_not_after_unix: i64,
    /// Common name of the CA that issued the current certificate; empty when not
    /// known (records from before CA rotation, until the node's next session).
    #[serde(default)]
    pub certificate_issuer: String,
}

#[cfg(test)]
impl NodeRecord {
    /// A freshly enrolled node with nothing reported yet, for unit tests.
    pub(crate) fn for_test(id: &str, name: &str, role: Role) -> Self {
        NodeRecord {
            id: id.into(),
            name: name.into(),
            role,
            labels: BTreeMap::new(),
            inventory: Inventory::default(),
            enrolled_unix: 0,
            last_seen_unix: 0,
            agent_version: String::new(),
            applied_generation: 0,
            reconcile_state: String::new(),
            reconcile_error: String::new(),
            certificate_sha256: String::new(),
            token_id: String::new(),
            conditions: Vec::new(),
            hardware_json: String::new(),
            hardware_sha256: String::new(),
            k3s_version: String::new(),
            k3s_failed_version: String::new(),
            k3s_failure: String::new(),
            pending_certificate_sha256: String::new(),
            certificate_not_after_unix: 0,
            certificate_issuer: String::new(),
        }
    }
}

/// See `elysium.v1.Condition`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub since_unix: i64,
}

/// The cluster spec as stored: canonical TOML and its generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSpec {
    pub generation: u64,
    pub toml: String,
}

/// What the coordinator knows about the K3s cluster as a whole.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K3sCluster {
    /// The server that initialises the cluster (`cluster-init`); chosen once.
    pub first_server_id: Option<String>,
    /// `https://ADDRESS:6443` of the first server, from its reported addresses.
    pub first_server_url: Option<String>,
    /// The secret the first server starts with. Secret.
    pub init_secret: String,
    /// The full `K10…` token the first server reported. Secret.
    pub server_token: Option<String>,
    /// The password of K3s's agent token (`agent-token` on every server): what
    /// agent-role nodes join with, so that none of them holds the server token.
    /// Empty in records written before it existed; loading fills it in
    /// ([`crate::k3s::ensure_agent_secret`]). Secret.
    #[serde(default)]
    pub agent_secret: String,
    /// The first server reported an agent token with `agent_secret` as its
    /// password: K3s runs with it, and agents may join with it.
    #[serde(default)]
    pub agent_token_active: bool,
}

impl std::fmt::Debug for K3sCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |s: &str| if s.is_empty() { "<none>" } else { "<redacted>" };
        f.debug_struct("K3sCluster")
            .field("first_server_id", &self.first_server_id)
            .field("first_server_url", &self.first_server_url)
            .field("init_secret", &shown(&self.init_secret))
            .field("server_token", &shown(self.server_token.as_deref().unwrap_or_default()))
            .field("agent_secret", &shown(&self.agent_secret))
            .field("agent_token_active", &self.agent_token_active)
            .finish()
    }
}

/// A secret the cluster spec refers to by name (`elysium-node secret set`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    /// The value. Never logged; `Debug` shows only its fingerprint.
    pub value: String,
    pub updated_unix: i64,
}

impl SecretRecord {
    /// First 12 hex digits of SHA-256(value): tells values apart without revealing them.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.value.as_bytes()))[..12].to_owned()
    }
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint())
            .field("updated_unix", &self.updated_unix)
            .finish()
    }
}

/// What the key vault knows about one backed-up item, kept in plain text so that
/// `keys status` works without decrypting anything. The item itself (key material,
/// token) is stored age-encrypted beside it under the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    /// `sealing-key/<hex SHA-256>` or `k3s-token/<hex SHA-256>` of what is stored:
    /// a report of the same content is the same item.
    pub id: String,
    pub first_seen_unix: i64,
    /// The last time a server node reported it.
    pub last_seen_unix: i64,
    /// The server node that reported it last.
    pub reported_by: String,
    /// Set for sealing keys; `None` for the K3s token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing_key: Option<SealingKeyMeta>,
    /// The server node that reported it first (empty for records from before
    /// this was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub first_reported_by: String,
    /// When the operator dropped it (`keys drop`); 0 while kept. A dropped
    /// record keeps only this metadata, no key material, so that the same
    /// item reported again stays out (`Vault::undrop` lets it back).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_unix: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl VaultRecord {
    pub fn is_k3s_token(&self) -> bool {
        self.sealing_key.is_none()
    }

    /// Dropped by the operator: listed as such, never exported.
    pub fn is_dropped(&self) -> bool {
        self.dropped_unix != 0
    }
}

/// The public facts about a sealed-secrets key Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealingKeyMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    /// The Secret's creationTimestamp (0 if unknown).
    pub created_unix: i64,
    /// The certificate's validity; the controller seals with the newest NotBefore.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// Hex SHA-256 of the certificate's SubjectPublicKeyInfo, as `recover` prints it.
    pub fingerprint: String,
}

/// The last recovery drill's result (`[recovery.drill]`): kept so that `keys status`
/// shows it, and the next drill knows whether its verdict changed, across restarts.
/// Names, commits and check details only: nothing in it is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub repository: String,
    pub branch: String,
    pub path: String,
    /// What configuration and keys it ran with (the drill's own fingerprint of the
    /// section, the deploy key's and the vault's contents): a change runs it again.
    pub inputs: String,
    pub started_unix: i64,
    pub finished_unix: i64,
    pub duration_ms: u64,
    pub passed: bool,
    /// Since when the verdict has been what it is (the first run with it).
    pub since_unix: i64,
    /// The commit checked; `None` when the repository could not be fetched.
    #[serde(default)]
    pub commit: Option<String>,
    /// Sealing keys the vault held for it.
    pub keys: u32,
    pub sealed_secrets: u32,
    pub sealed_secrets_opened: u32,
    /// What would fail a recovery from the vault's keys now; empty when it passed.
    #[serde(default)]
    pub failures: Vec<DrillFailure>,
    /// Worth knowing; fails nothing.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One thing that would fail a recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillFailure {
    /// `repository`, `vault`, `preflight`, `sealed-secret` or a preflight check's name
    /// (`committed-certificate`, `controller`, …).
    pub check: String,
    /// What it is about (`ai/openclaw-secrets`, a file), empty when the check says it.
    #[serde(default)]
    pub subject: String,
    pub detail: String,
}

/// An event to append (the store assigns its sequence number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub unix: i64,
    pub kind: String,
    pub subject: String,
    pub message: String,
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub unix: i64,
    pub kind: String,
    pub subject: String,
    pub message: String,
}

/// An admin credential (`coordinator admin create`): which certificate it is and
/// whether it still opens the Admin service. Nothing in it is secret; the private
/// key exists only in the admin's credentials file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    /// The `admin:<name>` of the certificate's subject. Unique among the admins
    /// not revoked; a revoked name may be given to a new certificate.
    pub name: String,
    /// Hex SHA-256 of the certificate (DER): what a request is checked against.
    pub fingerprint: String,
    pub created_unix: i64,
    /// The certificate's NotAfter.
    pub expires_unix: i64,
    /// When it was revoked; 0 while it is valid.
    #[serde(default)]
    pub revoked_unix: i64,
    /// The admin that created it; empty for the one `coordinator init` made,
    /// `data-dir` for one made with `coordinator admin create --data-dir`.
    #[serde(default)]
    pub created_by: String,
    /// Common name of the CA that issued it; empty in records from before CA
    /// rotation (the first CA issued those).
    #[serde(default)]
    pub issuer: String,
}

impl AdminRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_unix != 0
    }
}

/// Why an admin could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AdminWriteError {
    #[error(
        "an admin named {0:?} exists; pick another name, or revoke it first (`elysium-node coordinator admin revoke {0}`)"
    )]
    NameTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Store::revoke_admin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRevocation {
    /// Revoked now; the record as stored.
    Revoked(AdminRecord),
    /// No admin of that name that is not revoked already.
    NotFound,
    /// Refused: it is the last admin not revoked, and the caller did not force it.
    Last(AdminRecord),
}

/// The storage engine failed (I/O, corruption, a bug).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state store failed")]
    Engine(#[source] Box<redb::Error>),
    #[error("a stored record under {key:?} is corrupt")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not keep a node's hardware document")]
    Hardware(#[source] Box<elysium_host::FsError>),
    #[error("{path} is not a UTF-8 hardware document")]
    CorruptHardware { path: std::path::PathBuf },
    #[error("{0:?} is not a node id")]
    BadNodeId(String),
    #[error("could not start the event-log writer: {0}")]
    Thread(String),
    #[error("could not open the state store at {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("could not encrypt the stored record {key:?}")]
    Seal { key: String },
    #[error(
        "the stored record {key:?} does not open with this coordinator's vault key (DATA_DIR/vault.key): \
         was vault.key replaced? Restore the one this state.redb was written with"
    )]
    Unseal { key: String },
    #[error("could not compact the state store after sealing its secrets")]
    Compact(#[source] Box<redb::CompactionError>),
}

/// Why an enrollment was refused by the store.
#[derive(Debug, thiserror::Error)]
pub enum EnrollRefusal {
    #[error(transparent)]
    Token(#[from] TokenRejection),
    #[error(
        "a node named {0:?} is already enrolled; pick another name with --name, or remove the old one with `elysium-node nodes remove {0}`"
    )]
    NameTaken(String),
    #[error(
        "this node's key is already enrolled as node {0:?} with another token; join with a new key (delete /etc/elysium/node.key.pending), or remove the old node with `elysium-node nodes remove {0}`"
    )]
    KeyEnrolled(String),
    /// The CA could not sign the certificate (the CSR was checked before).
    #[error("could not sign the node certificate: {0}")]
    Sign(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A node certificate signed during [`Store::enroll`].
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    pub pem: String,
    /// Hex SHA-256 of its DER, kept in the node's record.
    pub sha256: String,
    /// Its NotAfter (Unix seconds), kept in the node's record for `certs status`.
    pub not_after_unix: i64,
    /// The CA that signed it (common name).
    pub issuer: String,
}

/// What [`Store::enroll`] stored.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub token: TokenRecord,
    pub node: NodeRecord,
    pub certificate_pem: String,
    /// The key had enrolled with this token before: the node is the one that
    /// enrollment created, with a new certificate; no use was consumed.
    pub repeated: bool,
}

/// Refused because the expected generation is stale.
#[derive(Debug, thiserror::Error)]
pub enum SpecWriteError {
    #[error(
        "the cluster spec changed meanwhile: expected generation {expected}, current is {current}; get it again and retry"
    )]
    Conflict { expected: u64, current: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The coordinator's persistent state.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Marks a token revoked; `None` when there is no such token.
    fn revoke_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// The token with this id, if any (a read: no write lock).
    fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// The id of the node that enrolled with this public key (hex SHA-256 of
    /// its SubjectPublicKeyInfo), if any.
    fn node_by_key(&self, key_sha256: &str) -> Result<Option<String>, StoreError>;

    /// In one transaction: look the token up and check it at `now_unix`; if a
    /// node enrolled with this token and key before (the reply was lost), `sign`
    /// a new certificate for that node and return it, consuming nothing;
    /// otherwise consume one use, `sign` a certificate for `node` (whose name
    /// must be free) and insert it with the token's role and labels. `sign`
    /// runs last, only once every check passed. Either all of it happens or
    /// none. A `hardware_json` on `node` is stored as its hardware document.
    fn enroll(
        &self,
        token: &JoinToken,
        now_unix: i64,
        key_sha256: &str,
        node: &NodeRecord,
        sign: &dyn Fn(&str) -> Result<SignedCertificate, EnrollRefusal>,
    ) -> Result<Enrolled, EnrollRefusal>;

    fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// [`Store::get_node`] without the hardware document: what a session needs.
    fn get_node_brief(&self, id: &str) -> Result<Option<NodeRecord>, StoreError>;
    fn node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// [`Store::list_nodes`] without the hardware documents (`hardware_json`
    /// empty): for the rollout driver, which lists the fleet on every step.
    fn list_nodes_brief(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Updates an existing node; returns false (and writes nothing) when it was removed.
    /// An empty `hardware_json` keeps the stored document (and its hash):
    /// sessions do not keep the node's hardware inventory (the bulk of a
    /// record) in memory. A non-empty one replaces it, and its hash with it.
    fn update_node(&self, node: &NodeRecord) -> Result<bool, StoreError>;
    fn remove_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;

    fn get_spec(&self) -> Result<StoredSpec, StoreError>;
    /// Stores a new spec with generation current+1. With `expected`, refuses unless
    /// the current generation equals it.
    fn set_spec(&self, toml: &str, expected: Option<u64>) -> Result<StoredSpec, SpecWriteError>;

    /// The latest rollout (running or finished), if any.
    fn get_rollout(&self) -> Result<Option<crate::rollout::Rollout>, StoreError>;
    fn put_rollout(&self, rollout: &crate::rollout::Rollout) -> Result<(), StoreError>;

    /// The last recovery drill's result, if one ran.
    fn get_drill(&self) -> Result<Option<DrillRecord>, StoreError>;
    fn put_drill(&self, drill: &DrillRecord) -> Result<(), StoreError>;

    fn get_k3s(&self) -> Result<Option<K3sCluster>, StoreError>;
    fn put_k3s(&self, cluster: &K3sCluster) -> Result<(), StoreError>;

    /// Creates or replaces a secret.
    fn put_secret(&self, secret: &SecretRecord) -> Result<(), StoreError>;
    fn delete_secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError>;
    fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError>;

    /// Every key vault record (sealing keys and K3s tokens), metadata only.
    fn list_vault(&self) -> Result<Vec<VaultRecord>, StoreError>;
    /// Creates or updates a vault record; with `sealed`, also stores its encrypted
    /// item, in the same transaction.
    fn put_vault(&self, record: &VaultRecord, sealed: Option<&[u8]>) -> Result<(), StoreError>;
    /// The encrypted item of a vault record.
    fn get_vault_sealed(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes the encrypted item of vault record `id`; writes `keep` in place of
    /// the record (a dropped item's metadata), or removes the record too. One
    /// transaction.
    fn remove_vault_item(&self, id: &str, keep: Option<&VaultRecord>) -> Result<(), StoreError>;

    /// Every admin credential, revoked ones too, oldest first.
    fn list_admins(&self) -> Result<Vec<AdminRecord>, StoreError>;
    /// Adds an admin; refused when one of that name is not revoked.
    fn create_admin(&self, admin: &AdminRecord) -> Result<(), AdminWriteError>;
    /// Adds `admin` only if no admin was ever recorded (a data directory from
    /// before admins were recorded); returns whether it did. One transaction.
    fn adopt_first_admin(&self, admin: &AdminRecord) -> Result<bool, StoreError>;
    /// Revokes the admin of that name that is not revoked, at `now`; unless
    /// `allow_last`, refuses when no other valid admin would remain. One
    /// transaction, so two revocations at once cannot remove the last two admins.
    fn revoke_admin(&self, name: &str, now: i64, allow_last: bool) -> Result<AdminRevocation, StoreError>;
    /// Registers `new` and revokes the valid admin with fingerprint `old` (of
    /// the same name) at `now`, in one transaction: an admin's renewal never
    /// leaves two valid certificates of one name, nor none. `None` when `old` is
    /// not a valid admin (revoked meanwhile).
    fn replace_admin(
        &self,
        old: &str,
        new: &AdminRecord,
        now: i64,
    ) -> Result<Option<AdminRecord>, StoreError>;

    fn append_event(&self, unix: i64, kind: &str, subject: &str, message: &str) -> Result<u64, StoreError> {
        self.append_events(&[NewEvent {
            unix,
            kind: kind.into(),
            subject: subject.into(),
            message: message.into(),
        }])
    }
    /// Appends several events in one transaction; returns the last sequence number.
    fn append_events(&self, events: &[NewEvent]) -> Result<u64, StoreError>;
    fn list_events(&self, after_seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
}

#[cfg(test)]
mod tests;
