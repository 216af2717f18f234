use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::tokens::{JoinToken, Role, TokenRecord};
use elysium_proto::hardware_sha256;

fn token_record(token: &JoinToken, uses: u32) -> TokenRecord {
    TokenRecord {
        id: token.id.clone(),
        secret_sha256: token.secret_hash(),
        role: Role::Agent,
        labels: BTreeMap::new(),
        created_unix: 0,
        expires_unix: i64::MAX,
        uses_allowed: uses,
        uses_consumed: 0,
        revoked: false,
    }
}

fn node(id: &str, name: &str) -> NodeRecord {
    NodeRecord::for_test(id, name, Role::Agent)
}

/// Signatures made by [`enroll`]'s signer, across tests.
static SIGNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Enrolls `node` at time 1 with a key named after its id and a signer that
/// names the certificate after the node it is for.
fn enroll(store: &RedbStore, token: &JoinToken, node: &NodeRecord) -> Result<Enrolled, EnrollRefusal> {
    enroll_key(store, token, &format!("key-{}", node.id), node)
}

fn enroll_key(
    store: &RedbStore,
    token: &JoinToken,
    key: &str,
    node: &NodeRecord,
) -> Result<Enrolled, EnrollRefusal> {
    let sign = |id: &str| {
        let n = SIGNED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(SignedCertificate {
            pem: format!("cert {n} for {id}"),
            sha256: format!("sha-{n}"),
            not_after_unix: 0,
            issuer: String::new(),
        })
    };
    store.enroll(token, 1, key, node, &sign)
}

#[test]
fn a_repeated_enrollment_returns_the_node_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    let token = JoinToken::generate(&"ab".repeat(32));
    store.create_token(&token_record(&token, 1)).unwrap();
    let first = enroll_key(&store, &token, "key-a", &node("n1", "alpha")).unwrap();
    assert!(!first.repeated);
    assert_eq!(store.node_by_key("key-a").unwrap().as_deref(), Some("n1"));

    // The reply was lost; the node asks again with the same key (and a fresh
    // id and even another name from its second run): the same node, a new
    // certificate for it, no use consumed.
    let again = enroll_key(&store, &token, "key-a", &node("n2", "other")).unwrap();
    assert!(again.repeated);
    assert_eq!((again.node.id.as_str(), again.node.name.as_str()), ("n1", "alpha"));
    assert!(again.certificate_pem.ends_with("for n1"), "{}", again.certificate_pem);
    let stored = store.get_node("n1").unwrap().unwrap();
    assert_eq!(stored.certificate_sha256, again.node.certificate_sha256);
    assert_ne!(stored.certificate_sha256, first.node.certificate_sha256);
    assert_eq!(store.get_token(&token.id).unwrap().unwrap().uses_consumed, 1);
    assert_eq!(store.list_nodes().unwrap().len(), 1);

    // Another key with the spent token: refused as before.
    let err = enroll_key(&store, &token, "key-b", &node("n3", "beta")).unwrap_err();
    assert!(matches!(err, EnrollRefusal::Token(TokenRejection::UsedUp { uses: 1 })), "{err}");
    // The same key with another token: refused, it belongs to alpha.
    let other = JoinToken::generate(&"ab".repeat(32));
    store.create_token(&token_record(&other, 1)).unwrap();
    let err = enroll_key(&store, &other, "key-a", &node("n4", "gamma")).unwrap_err();
    assert!(matches!(err, EnrollRefusal::KeyEnrolled(ref n) if n == "alpha"), "{err}");
    // A removed node does not come back by repeating.
    store.remove_node("alpha").unwrap().unwrap();
    assert_eq!(store.node_by_key("key-a").unwrap(), None);
    let err = enroll_key(&store, &token, "key-a", &node("n5", "alpha")).unwrap_err();
    assert!(matches!(err, EnrollRefusal::Token(TokenRejection::UsedUp { uses: 1 })), "{err}");
}

#[test]
fn a_repeat_needs_the_token_alive() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    let token = JoinToken::generate(&"ab".repeat(32));
    let mut record = token_record(&token, 1);
    record.expires_unix = 2;
    store.create_token(&record).unwrap();
    enroll_key(&store, &token, "key-a", &node("n1", "alpha")).unwrap();
    let sign =
        |_: &str| -> Result<SignedCertificate, EnrollRefusal> { panic!("no signature for a dead token") };
    let err = store.enroll(&token, 2, "key-a", &node("n2", "alpha"), &sign).unwrap_err();
    assert!(matches!(err, EnrollRefusal::Token(TokenRejection::Expired { .. })), "{err}");
}

#[test]
fn enrollment_is_atomic_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let token = JoinToken::generate(&"ab".repeat(32));
    {
        let store = RedbStore::open(&path).unwrap();
        store.create_token(&token_record(&token, 2)).unwrap();
        enroll(&store, &token, &node("n1", "alpha")).unwrap();
        // Same name again: refused, the token use is NOT consumed, and its
        // hardware document is not kept.
        let mut again = node("n2", "alpha");
        again.hardware_json = "{}".into();
        let err = enroll(&store, &token, &again).unwrap_err();
        assert!(matches!(err, EnrollRefusal::NameTaken(ref n) if n == "alpha"), "{err}");
        assert_eq!(store.list_tokens().unwrap()[0].uses_consumed, 1);
        assert!(!dir.path().join(HARDWARE_DIR).join("n2.json").exists());
        enroll(&store, &token, &node("n3", "beta")).unwrap();
        let err = enroll(&store, &token, &node("n4", "gamma")).unwrap_err();
        assert!(matches!(err, EnrollRefusal::Token(TokenRejection::UsedUp { uses: 2 })), "{err}");
        store.set_spec("[cluster]\nname = \"x\"\n", None).unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let names: Vec<_> = store.list_nodes().unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(store.node_by_name("beta").unwrap().unwrap().id, "n3");
    assert_eq!(store.get_spec().unwrap().generation, 1);
}

#[test]
fn removed_nodes_free_their_name_and_cannot_be_updated() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    let token = JoinToken::generate(&"ab".repeat(32));
    store.create_token(&token_record(&token, 5)).unwrap();
    enroll(&store, &token, &node("n1", "alpha")).unwrap();
    assert_eq!(store.remove_node("alpha").unwrap().unwrap().id, "n1");
    assert!(!store.update_node(&node("n1", "alpha")).unwrap(), "a removed node must not come back");
    assert!(store.get_node("n1").unwrap().is_none());
    enroll(&store, &token, &node("n9", "alpha")).unwrap();
}

#[test]
fn updates_without_a_hardware_document_keep_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    let token = JoinToken::generate(&"ab".repeat(32));
    store.create_token(&token_record(&token, 1)).unwrap();
    enroll(&store, &token, &node("n1", "alpha")).unwrap();

    let mut n = node("n1", "alpha");
    n.hardware_json = r#"{"gpus":[]}"#.into();
    assert!(store.update_node(&n).unwrap());
    // What a session writes later: its copy has dropped the document.
    n.hardware_json.clear();
    n.reconcile_state = "converged".into();
    assert!(store.update_node(&n).unwrap());
    let stored = store.get_node("n1").unwrap().unwrap();
    assert_eq!(stored.reconcile_state, "converged");
    assert_eq!(stored.hardware_json, r#"{"gpus":[]}"#);
    assert_eq!(stored.hardware_sha256, hardware_sha256(r#"{"gpus":[]}"#));
    // A new document replaces the old one.
    n.hardware_json = r#"{"gpus":[1]}"#.into();
    assert!(store.update_node(&n).unwrap());
    assert_eq!(store.get_node("n1").unwrap().unwrap().hardware_json, r#"{"gpus":[1]}"#);
    assert_eq!(store.list_nodes().unwrap()[0].hardware_json, r#"{"gpus":[1]}"#);
    // A stale hash in the caller's copy does not overwrite the stored one.
    n.hardware_json.clear();
    n.hardware_sha256 = "stale".into();
    assert!(store.update_node(&n).unwrap());
    assert_eq!(
        store.get_node_brief("n1").unwrap().unwrap().hardware_sha256,
        hardware_sha256(r#"{"gpus":[1]}"#)
    );
    let brief = &store.list_nodes_brief().unwrap()[0];
    assert_eq!((brief.reconcile_state.as_str(), brief.hardware_json.as_str()), ("converged", ""));
    assert_eq!(store.remove_node("alpha").unwrap().unwrap().hardware_json, r#"{"gpus":[1]}"#);
    assert!(store.get_node("n1").unwrap().is_none());
    assert!(!dir.path().join(HARDWARE_DIR).join("n1.json").exists(), "the file goes with the node");
}

#[test]
fn hardware_documents_of_older_stores_are_moved_to_files_on_open() {
    // Two releases ago the document was inline in the record; the last one
    // kept it in a table of its own.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        let mut inline = node("n1", "alpha");
        inline.hardware_json = r#"{"cpu":"inline"}"#.into();
        store.put_legacy_node(&inline, false);
        let mut tabled = node("n2", "beta");
        tabled.hardware_json = r#"{"cpu":"table"}"#.into();
        store.put_legacy_node(&tabled, true);
    }
    let store = RedbStore::open(&path).unwrap();
    for (id, name, doc) in [("n1", "alpha", r#"{"cpu":"inline"}"#), ("n2", "beta", r#"{"cpu":"table"}"#)] {
        let file = dir.path().join(HARDWARE_DIR).join(format!("{id}.json"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), doc);
        let brief = store.get_node_brief(id).unwrap().unwrap();
        assert_eq!(
            (brief.hardware_json.as_str(), brief.hardware_sha256.as_str()),
            ("", hardware_sha256(doc).as_str())
        );

        let mut n = node(id, name);
        n.reconcile_state = "converged".into();
        assert!(store.update_node(&n).unwrap());
        let stored = store.node_by_name(name).unwrap().unwrap();
        assert_eq!((stored.reconcile_state.as_str(), stored.hardware_json.as_str()), ("converged", doc));
    }
    // Moved once: opening again changes nothing.
    drop(store);
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.list_nodes().unwrap().len(), 2);
    assert_eq!(store.list_nodes().unwrap()[1].hardware_json, r#"{"cpu":"table"}"#);
}

#[test]
fn hardware_files_heal_after_crashes_and_hand_edits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let docs = dir.path().join(HARDWARE_DIR);
    {
        let store = RedbStore::open(&path).unwrap();
        let token = JoinToken::generate(&"ab".repeat(32));
        store.create_token(&token_record(&token, 1)).unwrap();
        let mut n = node("n1", "alpha");
        n.hardware_json = r#"{"gpus":[]}"#.into();
        enroll(&store, &token, &n).unwrap();
    }
    // What a crash can leave: the file of a node removed meanwhile, and a
    // temporary file of an interrupted write.
    std::fs::write(docs.join("n-gone.json"), "{}").unwrap();
    std::fs::write(docs.join(".elysium-tmp-x1"), "{").unwrap();
    let store = RedbStore::open(&path).unwrap();
    let mut left: Vec<_> = std::fs::read_dir(&docs).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["n1.json"]);

    // A document torn by a crash (the files are not synced) or lost by hand:
    // the record no longer claims its hash, so the session asks the agent
    // again; `nodes get` shows what there is.
    assert_eq!(
        store.get_node_brief("n1").unwrap().unwrap().hardware_sha256,
        hardware_sha256(r#"{"gpus":[]}"#)
    );
    std::fs::write(docs.join("n1.json"), r#"{"gp"#).unwrap();
    assert_eq!(store.get_node_brief("n1").unwrap().unwrap().hardware_sha256, "");
    std::fs::remove_file(docs.join("n1.json")).unwrap();
    assert_eq!(store.get_node_brief("n1").unwrap().unwrap().hardware_sha256, "");
    assert_eq!(store.get_node("n1").unwrap().unwrap().hardware_json, "");
    assert!(store.remove_node("alpha").unwrap().is_some());
}

#[test]
fn enrollment_stores_the_hardware_document_apart_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    let token = JoinToken::generate(&"ab".repeat(32));
    store.create_token(&token_record(&token, 1)).unwrap();
    let mut n = node("n1", "alpha");
    n.hardware_json = r#"{"gpus":[]}"#.into();
    let stored = enroll(&store, &token, &n).unwrap().node;
    assert_eq!(stored.hardware_sha256, hardware_sha256(r#"{"gpus":[]}"#));
    assert_eq!(store.get_node("n1").unwrap().unwrap().hardware_json, r#"{"gpus":[]}"#);
    let file = dir.path().join(HARDWARE_DIR).join("n1.json");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), r#"{"gpus":[]}"#);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let brief = store.get_node_brief("n1").unwrap().unwrap();
    assert_eq!(
        (brief.hardware_json.as_str(), brief.hardware_sha256.as_str()),
        ("", stored.hardware_sha256.as_str())
    );
}

#[test]
fn spec_generations_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    assert_eq!(store.get_spec().unwrap().generation, 0);
    assert_eq!(store.set_spec("a", Some(0)).unwrap().generation, 1);
    let err = store.set_spec("b", Some(0)).unwrap_err();
    assert!(matches!(err, SpecWriteError::Conflict { expected: 0, current: 1 }), "{err}");
    assert_eq!(store.set_spec("b", None).unwrap().generation, 2);
    assert_eq!(store.get_spec().unwrap().toml, "b");
}

#[test]
fn events_are_ordered_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    for i in 0..5 {
        store.append_event(i, "k", "s", &format!("m{i}")).unwrap();
    }
    let page = store.list_events(2, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(page[0].message, "m2");
}

#[test]
fn secrets_are_replaced_deleted_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        let rec = |v: &str| SecretRecord { name: "ts".into(), value: v.into(), updated_unix: 1 };
        store.put_secret(&rec("one")).unwrap();
        store.put_secret(&rec("two")).unwrap();
        store.put_secret(&SecretRecord { name: "gone".into(), value: "x".into(), updated_unix: 2 }).unwrap();
        assert_eq!(store.delete_secret("gone").unwrap().map(|s| s.value), Some("x".into()));
        assert!(store.delete_secret("gone").unwrap().is_none());
        assert!(!format!("{:?}", rec("hunter2")).contains("hunter2"), "Debug must not show the value");
    }
    let store = RedbStore::open(&path).unwrap();
    let all = store.list_secrets().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].name.as_str(), all[0].value.as_str()), ("ts", "two"));
}

#[test]
fn the_last_drill_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let record = DrillRecord {
        repository: "/srv/git/elysium".into(),
        branch: "main".into(),
        path: "clusters/kyrion".into(),
        inputs: "abc".into(),
        started_unix: 10,
        finished_unix: 12,
        duration_ms: 1500,
        passed: false,
        since_unix: 10,
        commit: Some("0123".into()),
        keys: 2,
        sealed_secrets: 3,
        sealed_secrets_opened: 2,
        failures: vec![DrillFailure {
            check: "sealed-secret".into(),
            subject: "ai/openclaw-secrets".into(),
            detail: "no vault key opens token".into(),
        }],
        warnings: vec![],
    };
    {
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.get_drill().unwrap(), None);
        store.put_drill(&record).unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.get_drill().unwrap(), Some(record));
}

/// An age X25519 sealer like the coordinator's vault key (kept here: the store
/// does not depend on the vault module, which depends on it).
#[derive(Clone)]
struct AgeSealer(age::x25519::Identity);

impl AgeSealer {
    fn generate() -> Self {
        Self(age::x25519::Identity::generate())
    }
}

impl Sealer for AgeSealer {
    fn seal(&self, plaintext: &[u8]) -> Option<Vec<u8>> {
        age::encrypt(&self.0.to_public(), plaintext).ok()
    }

    fn open(&self, sealed: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        age::decrypt(&self.0, sealed).ok().map(zeroize::Zeroizing::new)
    }
}

/// Whether `needle` occurs anywhere in the store file's raw bytes.
fn file_contains(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Secrets at rest (sealed.rs): the K3s record and `secret set` values never
/// reach the file in the clear; records an earlier release wrote in plain text
/// are sealed when the store opens with the key, and read back the same; a
/// store copied without vault.key opens none of them.
#[test]
fn secret_records_are_sealed_at_rest_and_old_ones_are_migrated() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let key = AgeSealer::generate();
    let k3s = |marker: &str| K3sCluster {
        first_server_id: Some("s1".into()),
        init_secret: format!("init-{marker}"),
        server_token: Some(format!("K10{}::server:token-{marker}", "a".repeat(64))),
        agent_secret: format!("agent-{marker}"),
        ..Default::default()
    };
    let secret =
        |marker: &str| SecretRecord { name: "ts".into(), value: format!("value-{marker}"), updated_unix: 1 };

    // An earlier release: plain JSON, markers readable in the file.
    {
        let plain = RedbStore::open(&path).unwrap();
        plain.put_k3s(&k3s("OLDM4RK")).unwrap();
        plain.put_secret(&secret("OLDM4RK")).unwrap();
        plain
            .put_secret(&SecretRecord {
                name: "other".into(),
                value: "other-OLDM4RK".into(),
                updated_unix: 1,
            })
            .unwrap();
    }
    assert!(file_contains(&path, "init-OLDM4RK"), "the test must start from a plain-text store");

    {
        let store = RedbStore::open_sealed(&path, Arc::new(key.clone())).unwrap();
        assert_eq!(store.get_k3s().unwrap().unwrap(), k3s("OLDM4RK"), "migrated records read back the same");
        assert_eq!(store.list_secrets().unwrap().len(), 2);
        // New writes.
        store.put_k3s(&k3s("NEWM4RK")).unwrap();
        store.put_secret(&secret("NEWM4RK")).unwrap();
        assert_eq!(store.get_k3s().unwrap().unwrap(), k3s("NEWM4RK"));
        let removed = store.delete_secret("other").unwrap().unwrap();
        assert_eq!(removed.value, "other-OLDM4RK");
    }
    for marker in ["OLDM4RK", "NEWM4RK"] {
        for what in ["init-", "token-", "agent-", "value-", "other-"] {
            let needle = format!("{what}{marker}");
            assert!(!file_contains(&path, &needle), "{needle} is readable in the raw state.redb");
        }
    }

    // Reopened with the key: all there. Without it, or with another: refused, by name.
    let store = RedbStore::open_sealed(&path, Arc::new(key.clone())).unwrap();
    assert_eq!(store.list_secrets().unwrap(), vec![secret("NEWM4RK")]);
    drop(store);
    let other = RedbStore::open_sealed(&path, Arc::new(AgeSealer::generate())).unwrap();
    let err = other.get_k3s().unwrap_err();
    assert!(matches!(err, StoreError::Unseal { .. }) && err.to_string().contains("vault.key"), "{err}");
    drop(other);
    let keyless = RedbStore::open(&path).unwrap();
    assert!(matches!(keyless.list_secrets().unwrap_err(), StoreError::Unseal { .. }));
}
