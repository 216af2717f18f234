//! [`Store`] on redb: a single-file, pure-Rust, ACID key-value store with
//! copy-on-write B-trees. Values are JSON: small, readable when debugging, and
//! tolerant of fields added later (`#[serde(default)]`).

use std::path::Path;

use elysium_proto::hardware_sha256;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::hardware::HardwareDocs;
use super::*;

mod admins;

const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// id → the node's hardware inventory document (JSON): where stores of the
/// previous release kept it (and the one before, inline in the record). `open`
/// moves both to [`HardwareDocs`] files and deletes the table.
const NODE_HARDWARE: TableDefinition<&str, &str> = TableDefinition::new("node_hardware");
/// name → id, the uniqueness index for node names.
const NODE_NAMES: TableDefinition<&str, &str> = TableDefinition::new("node_names");
/// Hex SHA-256 of the public key a node enrolled with → its id: how a repeated
/// enrollment (the reply to the first was lost) finds the node it created.
const NODE_KEYS: TableDefinition<&str, &str> = TableDefinition::new("node_keys");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Key vault: id → [`VaultRecord`] (plain metadata), and id → age ciphertext.
const VAULT: TableDefinition<&str, &[u8]> = TableDefinition::new("vault");
const VAULT_SEALED: TableDefinition<&str, &[u8]> = TableDefinition::new("vault_sealed");
/// Admin credentials: certificate fingerprint → [`AdminRecord`] (`admins`).
const ADMINS: TableDefinition<&str, &[u8]> = TableDefinition::new("admins");

/// A table of string keys and byte values, as most of ours are.
type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// The hardware documents' directory, beside the store file.
pub const HARDWARE_DIR: &str = "hardware";

const SPEC_KEY: &str = "cluster_spec";
const K3S_KEY: &str = "k3s_cluster";
const ROLLOUT_KEY: &str = "rollout";
const DRILL_KEY: &str = "recovery_drill";
/// redb's page cache (9/10 for reads, 1/10 for writes). redb's default is
/// 1 GiB, and it keeps every page it wrote or read until that is full: the
/// hardware documents of 5,000 enrollments alone held 13 MiB of the
/// coordinator's memory for good (docs/BENCHMARKS-fleet.md). What is read
/// again and again (node records, the rollout, the spec) is about 1 KiB per
/// node, so this holds it for ~15,000 nodes; past that, misses are reads from
/// the kernel's page cache.
const CACHE_BYTES: usize = 16 << 20;
/// The event log is a ring: older entries are dropped past this many.
const MAX_EVENTS: u64 = 10_000;

/// The embedded store.
pub struct RedbStore {
    db: Database,
    hardware: HardwareDocs,
    /// Seals the records that hold secrets (sealed.rs). `None` only for stores
    /// opened with [`RedbStore::open`] (tests, tools): those keep them in JSON.
    sealer: Option<std::sync::Arc<dyn super::Sealer>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

fn engine<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Engine(Box::new(e.into()))
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { key: key.to_owned(), source })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records are plain structs of strings, numbers and maps with string keys.
    serde_json::to_vec(value).unwrap_or_default()
}

impl RedbStore {
    /// Opens (or creates) the store file, and the hardware documents'
    /// directory `hardware/` beside it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source: Box::new(source) })?;
        // Create every table once so read transactions never meet a missing one.
        let txn = db.begin_write().map_err(engine)?;
        {
            txn.open_table(TOKENS).map_err(engine)?;
            txn.open_table(NODES).map_err(engine)?;
            txn.open_table(NODE_NAMES).map_err(engine)?;
            txn.open_table(NODE_KEYS).map_err(engine)?;
            txn.open_table(META).map_err(engine)?;
            txn.open_table(EVENTS).map_err(engine)?;
            txn.open_table(SECRETS).map_err(engine)?;
            txn.open_table(VAULT).map_err(engine)?;
            txn.open_table(VAULT_SEALED).map_err(engine)?;
            txn.open_table(ADMINS).map_err(engine)?;
        }
        txn.commit().map_err(engine)?;
        let dir = path.parent().unwrap_or(Path::new(".")).join(HARDWARE_DIR);
        let store = Self { db, hardware: HardwareDocs::open(dir)?, sealer: None };
        store.move_stored_hardware()?;
        let ids: std::collections::HashSet<String> = store.node_ids()?;
        let swept = store.hardware.sweep(&|id| ids.contains(id))?;
        if swept > 0 {
            tracing::info!(files = swept, "removed hardware documents of nodes that are gone");
        }
        Ok(store)
    }

    /// Opens the store with secret-bearing records sealed by `sealer` (the
    /// coordinator's vault key). Records that an earlier release wrote in plain
    /// text are sealed now, and the file is compacted after, so that the pages
    /// that held them are given back rather than left behind in the file.
    pub fn open_sealed(path: &Path, sealer: std::sync::Arc<dyn super::Sealer>) -> Result<Self, StoreError> {
        let mut store = Self::open(path)?;
        store.sealer = Some(sealer);
        let sealed = store.seal_plain_records()?;
        if sealed > 0 {
            // Twice: redb frees the pages a compaction moved only at the next one.
            for _ in 0..2 {
                store.db.compact().map_err(|e| StoreError::Compact(Box::new(e)))?;
            }
            tracing::info!(records = sealed, "encrypted secret records that were stored in plain text");
        }
        Ok(store)
    }

    /// Seals every secret-bearing record still in JSON; returns how many.
    fn seal_plain_records(&self) -> Result<usize, StoreError> {
        let mut plain: Vec<(Table, String, Zeroizing<Vec<u8>>)> = Vec::new();
        {
            let txn = self.db.begin_read().map_err(engine)?;
            let meta = txn.open_table(META).map_err(engine)?;
            if let Some(v) = meta.get(K3S_KEY).map_err(engine)?
                && !super::sealed::is_sealed(v.value())
            {
                plain.push((META, K3S_KEY.to_owned(), Zeroizing::new(v.value().to_vec())));
            }
            let secrets = txn.open_table(SECRETS).map_err(engine)?;
            for entry in secrets.iter().map_err(engine)? {
                let (k, v) = entry.map_err(engine)?;
                if !super::sealed::is_sealed(v.value()) {
                    plain.push((SECRETS, k.value().to_owned(), Zeroizing::new(v.value().to_vec())));
                }
            }
        }
        if plain.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(engine)?;
        for (def, key, json) in &plain {
            let sealed = self.seal(key, json)?;
            txn.open_table(*def).map_err(engine)?.insert(key.as_str(), sealed.as_slice()).map_err(engine)?;
        }
        txn.commit().map_err(engine)?;
        Ok(plain.len())
    }

    fn seal(&self, key: &str, json: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.sealer {
            Some(s) => s.seal(json).ok_or_else(|| StoreError::Seal { key: key.to_owned() }),
            None => Ok(json.to_vec()),
        }
    }

    /// A record that holds secrets, sealed when the store has a sealer.
    fn encode_secret<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        self.seal(key, &Zeroizing::new(encode(value)))
    }

    /// Reads what [`Self::encode_secret`] wrote, or a record from before sealing.
    fn decode_secret<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        if !super::sealed::is_sealed(bytes) {
            return decode(key, bytes);
        }
        let unseal = || StoreError::Unseal { key: key.to_owned() };
        let json = self.sealer.as_ref().ok_or_else(unseal)?.open(bytes).ok_or_else(unseal)?;
        decode(key, &json)
    }

    fn node_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let nodes = txn.open_table(NODES).map_err(engine)?;
        let mut ids = std::collections::HashSet::new();
        for entry in nodes.iter().map_err(engine)? {
            ids.insert(entry.map_err(engine)?.0.value().to_owned());
        }
        Ok(ids)
    }

    /// Moves hardware documents kept by older stores (inline in the record, or
    /// in NODE_HARDWARE) to their files, then sets the records' hashes and
    /// deletes the table. Files first: a crash half-way redoes it at next open.
    fn move_stored_hardware(&self) -> Result<(), StoreError> {
        let mut found: Vec<(NodeRecord, String)> = Vec::new();
        {
            let txn = self.db.begin_read().map_err(engine)?;
            let nodes = txn.open_table(NODES).map_err(engine)?;
            let table = match txn.open_table(NODE_HARDWARE) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(engine(e)),
            };
            for entry in nodes.iter().map_err(engine)? {
                let (k, v) = entry.map_err(engine)?;
                let mut node: NodeRecord = decode(k.value(), v.value())?;
                let mut doc = std::mem::take(&mut node.hardware_json);
                if let Some(t) = &table
                    && let Some(d) = t.get(k.value()).map_err(engine)?
                {
                    doc = d.value().to_owned();
                }
                if !doc.is_empty() {
                    found.push((node, doc));
                }
            }
            if table.is_none() && found.is_empty() {
                return Ok(());
            }
        }
        for (node, doc) in &found {
            self.hardware.write(&node.id, doc)?;
        }
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut nodes = txn.open_table(NODES).map_err(engine)?;
            for (mut node, doc) in found {
                node.hardware_sha256 = hardware_sha256(&doc);
                nodes.insert(node.id.as_str(), encode(&node).as_slice()).map_err(engine)?;
            }
        }
        txn.delete_table(NODE_HARDWARE).map_err(engine)?;
        txn.commit().map_err(engine)
    }

    /// Writes a record as older stores did: the document inline, or (with
    /// `in_table`) in NODE_HARDWARE.
    #[cfg(test)]
    pub(super) fn put_legacy_node(&self, node: &NodeRecord, in_table: bool) {
        let txn = self.db.begin_write().unwrap();
        let mut record = node.clone();
        if in_table {
            let doc = std::mem::take(&mut record.hardware_json);
            txn.open_table(NODE_HARDWARE).unwrap().insert(node.id.as_str(), doc.as_str()).unwrap();
        }
        txn.open_table(NODES).unwrap().insert(node.id.as_str(), encode(&record).as_slice()).unwrap();
        txn.open_table(NODE_NAMES).unwrap().insert(node.name.as_str(), node.id.as_str()).unwrap();
        txn.commit().unwrap();
    }

    /// Fills in `node`'s hardware document from its file.
    fn attach_hardware(&self, node: &mut NodeRecord) -> Result<(), StoreError> {
        node.hardware_json = self.hardware.read(&node.id)?.unwrap_or_default();
        Ok(())
    }

    /// Writes `node`'s hardware document (if it carries one) to its file, and
    /// leaves the record with the document's hash instead.
    fn write_hardware(&self, node: &mut NodeRecord) -> Result<(), StoreError> {
        let doc = std::mem::take(&mut node.hardware_json);
        if !doc.is_empty() {
            self.hardware.write(&node.id, &doc)?;
            node.hardware_sha256 = hardware_sha256(&doc);
        }
        Ok(())
    }

    fn read_all<T: DeserializeOwned>(&self, def: TableDefinition<&str, &[u8]>) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(def).map_err(engine)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(engine)? {
            let (k, v) = entry.map_err(engine)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn list_nodes_with(&self, hardware: bool) -> Result<Vec<NodeRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(NODES).map_err(engine)?;
        let mut nodes = Vec::new();
        for entry in table.iter().map_err(engine)? {
            let (k, v) = entry.map_err(engine)?;
            let mut node: NodeRecord = decode(k.value(), v.value())?;
            if hardware {
                self.attach_hardware(&mut node)?;
            }
            nodes.push(node);
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    fn read_one<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(def).map_err(engine)?;
        match table.get(key).map_err(engine)? {
            Some(v) => decode(key, v.value()).map(Some),
            None => Ok(None),
        }
    }
}

impl Store for RedbStore {
    fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut t = txn.open_table(TOKENS).map_err(engine)?;
            t.insert(token.id.as_str(), encode(token).as_slice()).map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read_all(TOKENS)
    }

    fn revoke_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let updated = {
            let mut t = txn.open_table(TOKENS).map_err(engine)?;
            let current: Option<TokenRecord> = match t.get(id).map_err(engine)? {
                Some(v) => Some(decode(id, v.value())?),
                None => None,
            };
            match current {
                Some(mut rec) => {
                    rec.revoked = true;
                    t.insert(id, encode(&rec).as_slice()).map_err(engine)?;
                    Some(rec)
                }
                None => None,
            }
        };
        txn.commit().map_err(engine)?;
        Ok(updated)
    }

    fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read_one(TOKENS, id)
    }

    fn node_by_key(&self, key_sha256: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let keys = txn.open_table(NODE_KEYS).map_err(engine)?;
        Ok(keys.get(key_sha256).map_err(engine)?.map(|id| id.value().to_owned()))
    }

    fn enroll(
        &self,
        token: &JoinToken,
        now_unix: i64,
        key_sha256: &str,
        node: &NodeRecord,
        sign: &dyn Fn(&str) -> Result<SignedCertificate, EnrollRefusal>,
    ) -> Result<Enrolled, EnrollRefusal> {
        let txn = self.db.begin_write().map_err(engine)?;
        let mut node = node.clone();
        // Written once the enrollment is committed: the token decides whether
        // anything is stored, and the file is not worth holding the lock for.
        let doc = std::mem::take(&mut node.hardware_json);
        let (token_rec, certificate, repeated) = {
            let mut tokens = txn.open_table(TOKENS).map_err(engine)?;
            let mut token_rec: TokenRecord = match tokens.get(token.id.as_str()).map_err(engine)? {
                Some(v) => decode(&token.id, v.value())?,
                None => return Err(TokenRejection::Unknown.into()),
            };
            token_rec.check_life(token, now_unix)?;
            let mut keys = txn.open_table(NODE_KEYS).map_err(engine)?;
            let mut nodes = txn.open_table(NODES).map_err(engine)?;
            let earlier = keys.get(key_sha256).map_err(engine)?.map(|id| id.value().to_owned());
            let earlier = match earlier {
                Some(id) => match nodes.get(id.as_str()).map_err(engine)? {
                    Some(v) => Some(decode::<NodeRecord>(&id, v.value())?),
                    None => None,
                },
                None => None,
            };
            if let Some(mut enrolled) = earlier {
                // The same key again. With the same token, it is the same node
                // asking again because it never got the answer: give it a
                // certificate for its key under the id it already has. Any other
                // token: a key is one node's, whichever token comes with it.
                if enrolled.token_id != token.id {
                    return Err(EnrollRefusal::KeyEnrolled(enrolled.name));
                }
                let certificate = sign(&enrolled.id)?;
                enrolled.certificate_sha256 = certificate.sha256.clone();
                enrolled.certificate_not_after_unix = certificate.not_after_unix;
                enrolled.certificate_issuer = certificate.issuer.clone();
                enrolled.pending_certificate_sha256 = String::new();
                nodes.insert(enrolled.id.as_str(), encode(&enrolled).as_slice()).map_err(engine)?;
                node = enrolled;
                (token_rec, certificate, true)
            } else {
                token_rec.check(token, now_unix)?;
                let mut names = txn.open_table(NODE_NAMES).map_err(engine)?;
                if names.get(node.name.as_str()).map_err(engine)?.is_some() {
                    return Err(EnrollRefusal::NameTaken(node.name.clone()));
                }
                // Last, after every check: a refused enrollment costs no signature.
                let certificate = sign(&node.id)?;
                node.certificate_sha256 = certificate.sha256.clone();
                node.certificate_not_after_unix = certificate.not_after_unix;
                node.certificate_issuer = certificate.issuer.clone();
                token_rec.uses_consumed += 1;
                node.token_id = token_rec.id.clone();
                node.role = token_rec.role;
                node.labels = token_rec.labels.clone();
                if !doc.is_empty() {
                    node.hardware_sha256 = hardware_sha256(&doc);
                }
                tokens.insert(token.id.as_str(), encode(&token_rec).as_slice()).map_err(engine)?;
                names.insert(node.name.as_str(), node.id.as_str()).map_err(engine)?;
                keys.insert(key_sha256, node.id.as_str()).map_err(engine)?;
                nodes.insert(node.id.as_str(), encode(&node).as_slice()).map_err(engine)?;
                (token_rec, certificate, false)
            }
        };
        // Dropping `txn` without commit (any early return above) aborts it.
        txn.commit().map_err(engine)?;
        if !repeated
            && !doc.is_empty()
            && let Err(e) = self.hardware.write(&node.id, &doc)
        {
            // The node is enrolled; its first session finds no matching file
            // and asks the agent for the document again.
            tracing::warn!(node = %node.name, error = %e, "could not store the hardware document");
        }
        Ok(Enrolled { token: token_rec, node, certificate_pem: certificate.pem, repeated })
    }

    fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let nodes = txn.open_table(NODES).map_err(engine)?;
        let Some(v) = nodes.get(id).map_err(engine)? else { return Ok(None) };
        let mut node: NodeRecord = decode(id, v.value())?;
        self.attach_hardware(&mut node)?;
        Ok(Some(node))
    }

    fn get_node_brief(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let Some(mut node) = self.read_one::<NodeRecord>(NODES, id)? else { return Ok(None) };
        if !node.hardware_sha256.is_empty() && !self.hardware.matches(id, &node.hardware_sha256)? {
            // Lost or torn (a crash, a hand edit): no hash, so the session asks
            // the agent for the document again.
            node.hardware_sha256 = String::new();
        }
        Ok(Some(node))
    }

    fn node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let id = {
            let txn = self.db.begin_read().map_err(engine)?;
            let names = txn.open_table(NODE_NAMES).map_err(engine)?;
            match names.get(name).map_err(engine)? {
                Some(id) => id.value().to_owned(),
                None => return Ok(None),
            }
        };
        self.get_node(&id)
    }

    fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.list_nodes_with(true)
    }

    fn list_nodes_brief(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.list_nodes_with(false)
    }

    fn update_node(&self, node: &NodeRecord) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let exists = {
            let mut nodes = txn.open_table(NODES).map_err(engine)?;
            let stored = nodes.get(node.id.as_str()).map_err(engine)?.map(|v| v.value().to_vec());
            let exists = stored.is_some();
            if let Some(stored) = stored {
                let mut record = node.clone();
                if record.hardware_json.is_empty() {
                    // Keep the stored document's hash, whatever the caller's copy says.
                    record.hardware_sha256 = decode::<NodeRecord>(&node.id, &stored)?.hardware_sha256;
                } else {
                    self.write_hardware(&mut record)?;
                }
                nodes.insert(node.id.as_str(), encode(&record).as_slice()).map_err(engine)?;
            }
            exists
        };
        txn.commit().map_err(engine)?;
        Ok(exists)
    }

    fn remove_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let removed = {
            let mut names = txn.open_table(NODE_NAMES).map_err(engine)?;
            let id = match names.remove(name).map_err(engine)? {
                Some(id) => id.value().to_owned(),
                None => return Ok(None),
            };
            let mut nodes = txn.open_table(NODES).map_err(engine)?;
            let removed = nodes.remove(id.as_str()).map_err(engine)?;
            // A removed node cannot come back by repeating its enrollment. One
            // entry per node: a scan on a rare operation beats a second index.
            txn.open_table(NODE_KEYS).map_err(engine)?.retain(|_, node_id| node_id != id).map_err(engine)?;
            match removed {
                Some(v) => Some(decode::<NodeRecord>(&id, v.value())?),
                None => None,
            }
        };
        txn.commit().map_err(engine)?;
        let Some(mut node) = removed else { return Ok(None) };
        // After the record: a crash in between leaves a file that `open` sweeps.
        self.attach_hardware(&mut node)?;
        self.hardware.remove(&node.id)?;
        Ok(Some(node))
    }

    fn get_spec(&self) -> Result<StoredSpec, StoreError> {
        Ok(self.read_one(META, SPEC_KEY)?.unwrap_or(StoredSpec { generation: 0, toml: String::new() }))
    }

    fn set_spec(&self, toml: &str, expected: Option<u64>) -> Result<StoredSpec, SpecWriteError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let spec = {
            let mut meta = txn.open_table(META).map_err(engine)?;
            let current: StoredSpec = match meta.get(SPEC_KEY).map_err(engine)? {
                Some(v) => decode(SPEC_KEY, v.value())?,
                None => StoredSpec { generation: 0, toml: String::new() },
            };
            if let Some(expected) = expected
                && expected != current.generation
            {
                return Err(SpecWriteError::Conflict { expected, current: current.generation });
            }
            let spec = StoredSpec { generation: current.generation + 1, toml: toml.to_owned() };
            meta.insert(SPEC_KEY, encode(&spec).as_slice()).map_err(engine)?;
            spec
        };
        txn.commit().map_err(engine)?;
        Ok(spec)
    }

    fn get_rollout(&self) -> Result<Option<crate::rollout::Rollout>, StoreError> {
        self.read_one(META, ROLLOUT_KEY)
    }

    fn put_rollout(&self, rollout: &crate::rollout::Rollout) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            meta.insert(ROLLOUT_KEY, encode(rollout).as_slice()).map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }

    fn get_drill(&self) -> Result<Option<DrillRecord>, StoreError> {
        self.read_one(META, DRILL_KEY)
    }

    fn put_drill(&self, drill: &DrillRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            meta.insert(DRILL_KEY, encode(drill).as_slice()).map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }

    fn get_k3s(&self) -> Result<Option<K3sCluster>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let meta = txn.open_table(META).map_err(engine)?;
        match meta.get(K3S_KEY).map_err(engine)? {
            Some(v) => self.decode_secret(K3S_KEY, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_k3s(&self, cluster: &K3sCluster) -> Result<(), StoreError> {
        let bytes = self.encode_secret(K3S_KEY, cluster)?;
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            meta.insert(K3S_KEY, bytes.as_slice()).map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }

    fn put_secret(&self, secret: &SecretRecord) -> Result<(), StoreError> {
        let bytes = self.encode_secret(&secret.name, secret)?;
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut table = txn.open_table(SECRETS).map_err(engine)?;
            table.insert(secret.name.as_str(), bytes.as_slice()).map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }

    fn delete_secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let removed = {
            let mut table = txn.open_table(SECRETS).map_err(engine)?;
            let removed = table.remove(name).map_err(engine)?;
            match removed {
                Some(v) => Some(self.decode_secret::<SecretRecord>(name, v.value())?),
                None => None,
            }
        };
        txn.commit().map_err(engine)?;
        Ok(removed)
    }

    fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(SECRETS).map_err(engine)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(engine)? {
            let (k, v) = entry.map_err(engine)?;
            out.push(self.decode_secret(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn list_vault(&self) -> Result<Vec<VaultRecord>, StoreError> {
        self.read_all(VAULT)
    }

    fn put_vault(&self, record: &VaultRecord, sealed: Option<&[u8]>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut table = txn.open_table(VAULT).map_err(engine)?;
            table.insert(record.id.as_str(), encode(record).as_slice()).map_err(engine)?;
            if let Some(sealed) = sealed {
                let mut table = txn.open_table(VAULT_SEALED).map_err(engine)?;
                table.insert(record.id.as_str(), sealed).map_err(engine)?;
            }
        }
        txn.commit().map_err(engine)
    }

    fn get_vault_sealed(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(VAULT_SEALED).map_err(engine)?;
        Ok(table.get(id).map_err(engine)?.map(|v| v.value().to_vec()))
    }

    fn list_admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        let mut admins: Vec<AdminRecord> = self.read_all(ADMINS)?;
        admins.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
        Ok(admins)
    }

    fn create_admin(&self, admin: &AdminRecord) -> Result<(), AdminWriteError> {
        self.insert_admin(admin)
    }

    fn adopt_first_admin(&self, admin: &AdminRecord) -> Result<bool, StoreError> {
        self.insert_first_admin(admin)
    }

    fn revoke_admin(&self, name: &str, now: i64, allow_last: bool) -> Result<AdminRevocation, StoreError> {
        self.revoke_admin_named(name, now, allow_last)
    }

    fn replace_admin(
        &self,
        old: &str,
        new: &AdminRecord,
        now: i64,
    ) -> Result<Option<AdminRecord>, StoreError> {
        self.replace_admin_record(old, new, now)
    }

    fn remove_vault_item(&self, id: &str, keep: Option<&VaultRecord>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut sealed = txn.open_table(VAULT_SEALED).map_err(engine)?;
            sealed.remove(id).map_err(engine)?;
            let mut table = txn.open_table(VAULT).map_err(engine)?;
            match keep {
                Some(record) => {
                    table.insert(id, encode(record).as_slice()).map_err(engine)?;
                }
                None => {
                    table.remove(id).map_err(engine)?;
                }
            }
        }
        txn.commit().map_err(engine)
    }

    fn append_events(&self, new: &[NewEvent]) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let seq = {
            let mut events = txn.open_table(EVENTS).map_err(engine)?;
            let mut seq = events.last().map_err(engine)?.map(|(k, _)| k.value()).unwrap_or(0);
            for e in new {
                seq += 1;
                let rec = EventRecord {
                    seq,
                    unix: e.unix,
                    kind: e.kind.clone(),
                    subject: e.subject.clone(),
                    message: e.message.clone(),
                };
                events.insert(seq, encode(&rec).as_slice()).map_err(engine)?;
            }
            if events.len().map_err(engine)? > MAX_EVENTS {
                let cutoff = seq - MAX_EVENTS;
                events.retain_in(..=cutoff, |_, _| false).map_err(engine)?;
            }
            seq
        };
        txn.commit().map_err(engine)?;
        Ok(seq)
    }

    fn list_events(&self, after_seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let events = txn.open_table(EVENTS).map_err(engine)?;
        let mut out = Vec::new();
        for entry in events.range(after_seq.saturating_add(1)..).map_err(engine)?.take(limit) {
            let (k, v) = entry.map_err(engine)?;
            out.push(decode(&k.value().to_string(), v.value())?);
        }
        Ok(out)
    }
}
