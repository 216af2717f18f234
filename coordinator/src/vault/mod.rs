//! The key vault: backups of what a cluster cannot be rebuilt without, its
//! sealed-secrets keys and the K3s server token, as server nodes' agents report them.
//!
//! Owns deciding what to keep (only server nodes may report; only keys that `recover`
//! accepts; each distinct key once, its last-seen time kept current; see "Limits"
//! below), encrypting each
//! item at rest with age ([`identity`]), and the export in the format `recover` reads
//! ([`render`]). Does not own storage (the [`Store`]'s `vault` tables hold plain
//! metadata and ciphertext) nor watching the cluster (the agent's `vault` module).
//!
//! # Limits
//!
//! Root on a server node can report anything. What it reports must not break or
//! steer a recovery, so a report is refused when
//! - the certificate's NotBefore is more than [`MAX_CLOCK_SKEW_SECONDS`] ahead of
//!   the coordinator's clock (it would pose as the newest key, the one a restored
//!   controller seals with);
//! - the report is larger than [`MAX_REPORT_BYTES`], the vault already keeps
//!   [`MAX_SEALING_KEYS`] keys (hundreds of RSA-4096 keys make every export and
//!   drill slow), or the node reported [`MAX_NEW_KEYS_PER_NODE_PER_DAY`] new ones
//!   in the last 24 hours (the controller makes one every 30 days);
//! - it is a K3s token other than the cluster's: only the first server's report
//!   sets it (`services/session.rs`), the others may only confirm it;
//! - the operator dropped that item (`keys drop`): a dropped item stays out,
//!   whoever reports it, until `keys drop --undo` lets it back, and the next report
//!   then brings it back.
//!
//! Every item keeps its provenance (first and last reporter, first and last seen)
//! for `keys status`.

pub mod identity;
pub mod render;

use std::sync::Mutex;

use elysium_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

pub use identity::{VaultError, VaultKey};

use crate::store::{NodeRecord, SealingKeyMeta, Store, StoreError, VaultRecord};
use crate::tokens::Role;

/// Ids of vault records: a kind and the hex SHA-256 of what is stored.
pub const SEALING_KEY_PREFIX: &str = "sealing-key/";
pub const K3S_TOKEN_PREFIX: &str = "k3s-token/";
/// A report of an item already stored moves its last-seen time at most this often:
/// agents send every key again on each new session and every few hours, which need
/// not be a store commit each.
pub const LAST_SEEN_RESOLUTION_SECONDS: i64 = 600;
/// How far a key's NotBefore may be ahead of the coordinator's clock (clocks of
/// nodes and coordinator differ; the controller dates a new key "now").
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 3600;
/// Sealing keys the vault keeps at most (dropped ones do not count): ten years of
/// the controller's 30-day renewals, with room to spare.
pub const MAX_SEALING_KEYS: usize = 128;
/// New sealing keys one node may bring in 24 hours. A cluster older than
/// this many renewals (about 2.5 years) is backed up over a few days: agents
/// send every key again every six hours, and the next day's allowance takes them.
pub const MAX_NEW_KEYS_PER_NODE_PER_DAY: usize = 32;
/// Largest report kept: `tls.crt` and `tls.key` together. A real key pair is about
/// 5 KiB (RSA-4096 and its certificate); this leaves room for a certificate with
/// many names, and bounds the vault (with [`MAX_SEALING_KEYS`]) to 16 MiB.
pub const MAX_REPORT_BYTES: usize = 128 * 1024;
/// K3s tokens kept at most (one per rotation of the cluster's token).
pub const MAX_K3S_TOKENS: usize = 16;
/// Hex digits of an item's hash shown as its id (`keys status`, `keys drop ID`).
pub const SHORT_ID_LEN: usize = 12;
const DAY_SECONDS: i64 = 86_400;

/// What is inside one encrypted vault item. The id is inside too, so an item moved
/// to another record is caught when it is opened.
#[derive(Serialize, Deserialize)]
struct Item {
    id: String,
    #[serde(default)]
    tls_crt: String,
    #[serde(default)]
    tls_key: String,
    #[serde(default)]
    token: String,
}

impl Drop for Item {
    fn drop(&mut self) {
        self.tls_key.zeroize();
        self.token.zeroize();
    }
}

/// What happened to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A key or token the vault did not have.
    New,
    /// Known, with other metadata (labels: `active` → `compromised`, another reporter).
    Changed,
    /// Known and unchanged; its last-seen time moved.
    Seen,
    /// Known, unchanged and seen recently: nothing written.
    Unchanged,
}

/// Why a report was not kept. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("node {node} is not a server node; only server nodes may report sealing keys or the K3s token")]
    NotAServer { node: String },
    #[error("{namespace}/{name} is not a sealed-secrets key that `recover` accepts")]
    Invalid {
        namespace: String,
        name: String,
        #[source]
        source: Box<elysium_recovery::keys::KeysError>,
    },
    #[error("the reported K3s token is not in the secure K10 format")]
    NotSecureToken,
    #[error(
        "{namespace}/{name}'s certificate is valid only from {not_before} (Unix seconds), more than \
         {MAX_CLOCK_SKEW_SECONDS} s after the coordinator's clock: a key from the future would pose as the newest"
    )]
    FromTheFuture { namespace: String, name: String, not_before: i64 },
    #[error(
        "{namespace}/{name} is {bytes} bytes, more than the {MAX_REPORT_BYTES} a sealing key report may be"
    )]
    TooLarge { namespace: String, name: String, bytes: usize },
    #[error(
        "the vault keeps {MAX_SEALING_KEYS} sealing keys, its limit; look at `elysium-node keys status` \
         and drop planted or obsolete ones with `elysium-node keys drop ID`"
    )]
    Full,
    #[error(
        "node {node} brought {MAX_NEW_KEYS_PER_NODE_PER_DAY} new sealing keys in the last 24 hours, its limit \
         (the controller makes one every 30 days); check the node, and `elysium-node keys status`"
    )]
    TooManyNew { node: String },
    #[error(
        "the vault keeps {MAX_K3S_TOKENS} K3s tokens, its limit; drop old ones with `elysium-node keys drop ID`"
    )]
    TooManyTokens,
    #[error(
        "node {node} reported a K3s token that is not the cluster's (only the first server's report sets \
         it; the others may only confirm it)"
    )]
    NotTheClusterToken { node: String },
    #[error("{what} was dropped by the operator; `elysium-node keys drop --undo {id}` lets it back")]
    Dropped { what: String, id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl Refused {
    /// A short name of the reason, to count refusals by.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::NotAServer { .. } => "not-a-server",
            Refused::Invalid { .. } => "invalid",
            Refused::NotSecureToken => "not-secure-token",
            Refused::FromTheFuture { .. } => "from-the-future",
            Refused::TooLarge { .. } => "too-large",
            Refused::Full => "full",
            Refused::TooManyNew { .. } => "too-many-new",
            Refused::TooManyTokens => "too-many-tokens",
            Refused::NotTheClusterToken { .. } => "not-the-cluster-token",
            Refused::Dropped { .. } => "dropped",
            Refused::Store(_) => "store",
            Refused::Vault(_) => "vault",
        }
    }
}

/// What the K3s cluster record says, for judging a reported token.
#[derive(Debug, Clone, Copy)]
pub struct ClusterToken<'a> {
    /// The token the cluster record holds (the first server reported it).
    pub known: Option<&'a str>,
    /// Whether the reporting node is the cluster's first server.
    pub from_first_server: bool,
}

/// Why `keys drop` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("no vault item has the id {0:?}; `elysium-node keys status` lists them")]
    NotFound(String),
    #[error("{count} vault items start with {id:?}; give more of the id")]
    Ambiguous { id: String, count: usize },
    #[error("{0} is dropped already")]
    AlreadyDropped(String),
    #[error("{0} is not dropped")]
    NotDropped(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An item `keys drop` acted on.
#[derive(Debug, Clone)]
pub struct DropOutcome {
    pub id: String,
    /// `namespace/name` of a key, or "the K3s token <fingerprint>".
    pub what: String,
}

/// The id shown for a record: the first hex digits of its hash.
pub fn short_id(record_id: &str) -> String {
    let hash = record_id
        .strip_prefix(SEALING_KEY_PREFIX)
        .or_else(|| record_id.strip_prefix(K3S_TOKEN_PREFIX))
        .unwrap_or(record_id);
    hash.chars().take(SHORT_ID_LEN).collect()
}

/// What a record is, for the operator: `sealing key NS/NAME (ID)` or `the K3s token FP`.
pub fn describe_dropped(r: &VaultRecord) -> String {
    describe(r)
}

fn describe(r: &VaultRecord) -> String {
    match &r.sealing_key {
        Some(m) => format!("sealing key {}/{} ({})", m.namespace, m.name, short_id(&r.id)),
        None => format!("the K3s token {}", token_fingerprint(r)),
    }
}

/// The export could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// The decrypted backup. `Debug` shows counts only.
pub struct Export {
    pub keys_yaml: Zeroizing<String>,
    pub keys: usize,
    pub k3s_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("keys", &self.keys)
            .field("k3s_token", &self.k3s_token.is_some())
            .finish_non_exhaustive()
    }
}

/// The coordinator's key vault.
#[derive(Debug)]
pub struct Vault {
    key: VaultKey,
    /// Serialises read-modify-write of records (several servers report the same keys).
    lock: Mutex<()>,
    /// Refusals so far by node and reason, so that a node repeating a refused
    /// report is logged and evented a few times, with counts, not every time.
    refusals: Mutex<std::collections::HashMap<(String, &'static str, &'static str), u64>>,
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The id of a sealing key: the Secret's place and its material. The same key
/// reported again (by another server, after a reconnect) is the same record; new
/// material under the same name is a new one, and the old is kept.
fn sealing_key_id(namespace: &str, name: &str, tls_crt: &[u8], tls_key: &[u8]) -> String {
    format!("{SEALING_KEY_PREFIX}{}", hex_sha256(&[namespace.as_bytes(), name.as_bytes(), tls_crt, tls_key]))
}

fn k3s_token_id(token: &str) -> String {
    format!("{K3S_TOKEN_PREFIX}{}", hex_sha256(&[token.as_bytes()]))
}

/// First 12 hex digits of SHA-256(token), like secrets' fingerprints.
pub fn token_fingerprint(record: &VaultRecord) -> String {
    record.id.strip_prefix(K3S_TOKEN_PREFIX).unwrap_or(&record.id).chars().take(12).collect()
}

/// Checks a reported key the way `recover` will (it refuses a whole keys file for one
/// bad Secret, so one must never get in) and reads its public facts.
fn check_key(report: &pb::SealingKeyReport, id: &str) -> Result<SealingKeyMeta, Refused> {
    let invalid = |source| Refused::Invalid {
        namespace: report.namespace.clone(),
        name: report.name.clone(),
        source: Box::new(source),
    };
    let yaml = render::keys_list(
        &[render::KeySecret {
            namespace: &report.namespace,
            name: &report.name,
            labels: &report.labels.clone().into_iter().collect(),
            tls_crt: &report.tls_crt,
            tls_key: &report.tls_key,
            id_hash: id,
        }],
        "",
    );
    let keys = elysium_recovery::keys::parse(yaml.as_bytes()).map_err(invalid)?;
    let Some(key) = keys.first() else {
        return Err(invalid(elysium_recovery::keys::KeysError::NoKeys));
    };
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    };
    Ok(SealingKeyMeta {
        namespace: report.namespace.clone(),
        name: report.name.clone(),
        uid: report.uid.clone(),
        resource_version: report.resource_version.clone(),
        labels: report.labels.clone().into_iter().collect(),
        created_unix: report.created_unix,
        not_before_unix: unix(key.not_before()),
        not_after_unix: not_after(&report.tls_crt).unwrap_or(0),
        fingerprint: key.fingerprint().to_owned(),
    })
}

/// The certificate's NotAfter (the keys parser has checked it is a PEM certificate).
fn not_after(pem: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&text.as_bytes()[start..]).ok()?;
    let cert = block.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

impl Vault {
    pub fn new(key: VaultKey) -> Self {
        Self { key, lock: Mutex::new(()), refusals: Mutex::new(Default::default()) }
    }

    /// Counts a refusal of `node`'s report of a `class` of item (`key`, `token`);
    /// returns how many of this kind so far.
    pub fn count_refusal(&self, node: &str, class: &'static str, e: &Refused) -> u64 {
        let mut counts = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry((node.to_owned(), class, e.kind())).or_insert(0);
        *n += 1;
        *n
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a sealing key a server node reported. Blocking (store commits).
    pub fn accept_sealing_key(
        &self,
        store: &dyn Store,
        node: &NodeRecord,
        report: &pb::SealingKeyReport,
        now: i64,
    ) -> Result<Accepted, Refused> {
        if node.role != Role::Server {
            return Err(Refused::NotAServer { node: node.name.clone() });
        }
        let bytes = report.tls_crt.len() + report.tls_key.len();
        if bytes > MAX_REPORT_BYTES {
            return Err(Refused::TooLarge {
                namespace: report.namespace.clone(),
                name: report.name.clone(),
                bytes,
            });
        }
        let id = sealing_key_id(&report.namespace, &report.name, &report.tls_crt, &report.tls_key);
        let meta = check_key(report, &id)?;
        if meta.not_before_unix > now.saturating_add(MAX_CLOCK_SKEW_SECONDS) {
            return Err(Refused::FromTheFuture {
                namespace: meta.namespace,
                name: meta.name,
                not_before: meta.not_before_unix,
            });
        }
        let _guard = self.guard();
        let all = store.list_vault()?;
        let existing = all.iter().find(|r| r.id == id).cloned();
        if let Some(r) = existing.as_ref().filter(|r| r.is_dropped()) {
            return Err(Refused::Dropped { what: describe(r), id: short_id(&r.id) });
        }
        let Some(mut record) = existing else {
            let kept = all.iter().filter(|r| !r.is_k3s_token() && !r.is_dropped()).count();
            if kept >= MAX_SEALING_KEYS {
                return Err(Refused::Full);
            }
            let recent = all
                .iter()
                .filter(|r| {
                    !r.is_k3s_token()
                        && r.first_reported_by == node.name
                        && now.saturating_sub(r.first_seen_unix) < DAY_SECONDS
                })
                .count();
            if recent >= MAX_NEW_KEYS_PER_NODE_PER_DAY {
                return Err(Refused::TooManyNew { node: node.name.clone() });
            }
            let item = Item {
                id: id.clone(),
                // The keys parser has checked both are text.
                tls_crt: String::from_utf8_lossy(&report.tls_crt).into_owned(),
                tls_key: String::from_utf8_lossy(&report.tls_key).into_owned(),
                token: String::new(),
            };
            let sealed = self.seal(&item)?;
            let record = VaultRecord {
                id,
                first_seen_unix: now,
                last_seen_unix: now,
                reported_by: node.name.clone(),
                sealing_key: Some(meta),
                first_reported_by: node.name.clone(),
                dropped_unix: 0,
            };
            store.put_vault(&record, Some(&sealed))?;
            return Ok(Accepted::New);
        };
        let changed = record.sealing_key.as_ref() != Some(&meta) || record.reported_by != node.name;
        if !changed && now - record.last_seen_unix < LAST_SEEN_RESOLUTION_SECONDS {
            return Ok(Accepted::Unchanged);
        }
        record.sealing_key = Some(meta);
        record.reported_by = node.name.clone();
        record.last_seen_unix = now;
        store.put_vault(&record, None)?;
        Ok(if changed { Accepted::Changed } else { Accepted::Seen })
    }

    /// Keeps the K3s server token a server node reported, if it is the cluster's.
    /// Blocking.
    pub fn accept_k3s_token(
        &self,
        store: &dyn Store,
        node: &NodeRecord,
        token: &str,
        cluster: ClusterToken<'_>,
        now: i64,
    ) -> Result<Accepted, Refused> {
        if node.role != Role::Server {
            return Err(Refused::NotAServer { node: node.name.clone() });
        }
        if !cluster.from_first_server && cluster.known != Some(token) {
            return Err(Refused::NotTheClusterToken { node: node.name.clone() });
        }
        self.keep_k3s_token(store, &node.name, token, now)
    }

    fn keep_k3s_token(
        &self,
        store: &dyn Store,
        by: &str,
        token: &str,
        now: i64,
    ) -> Result<Accepted, Refused> {
        if !token.starts_with("K10") {
            return Err(Refused::NotSecureToken);
        }
        let id = k3s_token_id(token);
        let _guard = self.guard();
        let all = store.list_vault()?;
        let tokens = all.iter().filter(|r| r.is_k3s_token() && !r.is_dropped()).count();
        match all.into_iter().find(|r| r.id == id) {
            Some(r) if r.is_dropped() => Err(Refused::Dropped { what: describe(&r), id: short_id(&r.id) }),
            None if tokens >= MAX_K3S_TOKENS => Err(Refused::TooManyTokens),
            None => {
                let item = Item {
                    id: id.clone(),
                    tls_crt: String::new(),
                    tls_key: String::new(),
                    token: token.to_owned(),
                };
                let sealed = self.seal(&item)?;
                let record = VaultRecord {
                    id,
                    first_seen_unix: now,
                    last_seen_unix: now,
                    reported_by: by.to_owned(),
                    sealing_key: None,
                    first_reported_by: by.to_owned(),
                    dropped_unix: 0,
                };
                store.put_vault(&record, Some(&sealed))?;
                Ok(Accepted::New)
            }
            Some(record)
                if record.reported_by == by && now - record.last_seen_unix < LAST_SEEN_RESOLUTION_SECONDS =>
            {
                Ok(Accepted::Unchanged)
            }
            Some(mut record) => {
                let changed = record.reported_by != by;
                record.reported_by = by.to_owned();
                record.last_seen_unix = now;
                store.put_vault(&record, None)?;
                Ok(if changed { Accepted::Changed } else { Accepted::Seen })
            }
        }
    }

    /// Puts a token the coordinator already held (reported before the vault existed)
    /// into the vault. Blocking.
    pub fn backfill_k3s_token(
        &self,
        store: &dyn Store,
        by: &str,
        token: &str,
        now: i64,
    ) -> Result<(), Refused> {
        let id = k3s_token_id(token);
        if store.list_vault()?.iter().any(|r| r.id == id) {
            return Ok(());
        }
        self.keep_k3s_token(store, by, token, now).map(|_| ())
    }

    /// Drops the item whose id is (or starts with) `id`: its key material is
    /// deleted, its metadata kept, marked dropped, so that the same item reported
    /// again stays out. Blocking.
    pub fn drop_item(&self, store: &dyn Store, id: &str, now: i64) -> Result<DropOutcome, DropError> {
        let _guard = self.guard();
        let mut record = find(store, id)?;
        if record.is_dropped() {
            return Err(DropError::AlreadyDropped(describe(&record)));
        }
        record.dropped_unix = now;
        store.remove_vault_item(&record.id, Some(&record))?;
        Ok(DropOutcome { id: short_id(&record.id), what: describe(&record) })
    }

    /// Lets a dropped item back: its record is forgotten, and the next report of
    /// it keeps it again. Blocking.
    pub fn undrop_item(&self, store: &dyn Store, id: &str) -> Result<DropOutcome, DropError> {
        let _guard = self.guard();
        let record = find(store, id)?;
        if !record.is_dropped() {
            return Err(DropError::NotDropped(describe(&record)));
        }
        store.remove_vault_item(&record.id, None)?;
        Ok(DropOutcome { id: short_id(&record.id), what: describe(&record) })
    }

    fn seal(&self, item: &Item) -> Result<Vec<u8>, VaultError> {
        // An error, never an empty sealed item that a later export would trust.
        let plain = Zeroizing::new(
            serde_json::to_vec(item).map_err(|_| VaultError::Serialise { id: item.id.clone() })?,
        );
        self.key.seal(&item.id, &plain)
    }

    fn open(&self, store: &dyn Store, id: &str) -> Result<Item, ExportError> {
        let sealed = store.get_vault_sealed(id)?.ok_or_else(|| VaultError::Corrupt { id: id.to_owned() })?;
        let plain = self.key.open(id, &sealed)?;
        let item: Item =
            serde_json::from_slice(&plain).map_err(|_| VaultError::Corrupt { id: id.to_owned() })?;
        if item.id != id {
            return Err(VaultError::Corrupt { id: id.to_owned() }.into());
        }
        Ok(item)
    }

    /// Every sealing key, decrypted, as the keys file `recover` reads (oldest
    /// certificate first), and the newest K3s token when asked for. Blocking.
    pub fn export(
        &self,
        store: &dyn Store,
        include_k3s_token: bool,
        now: i64,
    ) -> Result<Export, ExportError> {
        let mut records = store.list_vault()?;
        records.retain(|r| !r.is_dropped());
        records.sort_by_key(|r| {
            let m = r.sealing_key.as_ref();
            (m.map(|m| m.not_before_unix), m.map(|m| m.namespace.clone()), m.map(|m| m.name.clone()))
        });
        let mut opened = Vec::new();
        for r in &records {
            let Some(meta) = &r.sealing_key else { continue };
            let item = self.open(store, &r.id)?;
            // The metadata is plain text in the store: it must still describe this key.
            if sealing_key_id(&meta.namespace, &meta.name, item.tls_crt.as_bytes(), item.tls_key.as_bytes())
                != r.id
            {
                return Err(VaultError::Corrupt { id: r.id.clone() }.into());
            }
            opened.push((r, meta, item));
        }
        let secrets: Vec<render::KeySecret<'_>> = opened
            .iter()
            .map(|(r, meta, item)| render::KeySecret {
                namespace: &meta.namespace,
                name: &meta.name,
                labels: &meta.labels,
                tls_crt: item.tls_crt.as_bytes(),
                tls_key: item.tls_key.as_bytes(),
                id_hash: r.id.strip_prefix(SEALING_KEY_PREFIX).unwrap_or(&r.id),
            })
            .collect();
        let when = jiff::Timestamp::from_second(now).map(|t| t.to_string()).unwrap_or_default();
        let header = format!(
            "sealed-secrets keys exported by `elysium-node keys export` at {when}: {} keys.\n\
             SECRET: private keys. Keep this file 0600 and offline.\n\
             Check it: elysium-node recover --verify-only --repo REPO --sealed-secrets-keys FILE",
            secrets.len()
        );
        let keys_yaml = render::keys_list(&secrets, &header);
        let k3s_token = if include_k3s_token {
            match records.iter().filter(|r| r.is_k3s_token()).max_by_key(|r| r.last_seen_unix) {
                Some(r) => Some(Zeroizing::new(self.open(store, &r.id)?.token.clone())),
                None => None,
            }
        } else {
            None
        };
        Ok(Export { keys_yaml, keys: secrets.len(), k3s_token })
    }
}

/// The record whose full id, or hash prefix (at least 6 hex digits), is `id`.
fn find(store: &dyn Store, id: &str) -> Result<VaultRecord, DropError> {
    let id = id.trim();
    let records = store.list_vault()?;
    if let Some(r) = records.iter().find(|r| r.id == id) {
        return Ok(r.clone());
    }
    if id.len() < 6 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DropError::NotFound(id.to_owned()));
    }
    let id = id.to_ascii_lowercase();
    let mut matching: Vec<&VaultRecord> = records
        .iter()
        .filter(|r| {
            let hash = r.id.strip_prefix(SEALING_KEY_PREFIX).or_else(|| r.id.strip_prefix(K3S_TOKEN_PREFIX));
            hash.is_some_and(|h| h.starts_with(&id))
        })
        .collect();
    match matching.len() {
        0 => Err(DropError::NotFound(id)),
        1 => Ok(matching.remove(0).clone()),
        count => Err(DropError::Ambiguous { id, count }),
    }
}

#[cfg(test)]
mod tests;
