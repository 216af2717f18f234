use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};

use super::*;
use crate::store::RedbStore;

/// A sealing key as the controller makes one (RSA, PKCS#1 `tls.key`, self-signed
/// `tls.crt`), 2048 bits to keep tests fast.
struct TestKey {
    key_pem: String,
    cert_pem: String,
}

fn test_key(year: i32) -> TestKey {
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let pkcs8 = private.to_pkcs8_pem(LineEnding::LF).unwrap();
    let pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    TestKey {
        cert_pem: params.self_signed(&pair).unwrap().pem(),
        key_pem: private.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
    }
}

fn keys() -> &'static (TestKey, TestKey) {
    static KEYS: std::sync::OnceLock<(TestKey, TestKey)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| (test_key(2025), test_key(2024)))
}

fn report(name: &str, k: &TestKey, state: &str) -> pb::SealingKeyReport {
    pb::SealingKeyReport {
        namespace: "flux-system".into(),
        name: name.into(),
        uid: "5f0c8a3e-0000-4000-8000-000000000000".into(),
        resource_version: "1234".into(),
        labels: [(render::KEY_LABEL.to_owned(), state.to_owned())].into_iter().collect(),
        tls_crt: k.cert_pem.clone().into_bytes(),
        tls_key: k.key_pem.clone().into_bytes(),
        created_unix: 1_700_000_000,
    }
}

/// 2025-06-15: after the test keys' NotBefore (2024 and 2025).
const NOW: i64 = 1_750_000_000;
/// A token report from the cluster's first server (whose report sets the token).
const FIRST: ClusterToken<'static> = ClusterToken { known: None, from_first_server: true };

fn server(name: &str) -> NodeRecord {
    NodeRecord::for_test(name, name, Role::Server)
}

/// A run of the private key's PEM body: present in any plaintext copy.
fn distinctive(k: &TestKey) -> String {
    k.key_pem.lines().nth(5).unwrap().to_owned()
}

fn open_store() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
    (dir, store)
}

#[test]
fn vault_store_table_keeps_records_and_ciphertext_together() {
    let (dir, store) = open_store();
    let record = VaultRecord {
        id: "k3s-token/abc".into(),
        first_seen_unix: 1,
        last_seen_unix: 2,
        reported_by: "s1".into(),
        sealing_key: None,
        first_reported_by: "s1".into(),
        dropped_unix: 0,
    };
    store.put_vault(&record, Some(b"ciphertext")).unwrap();
    let mut updated = record.clone();
    updated.last_seen_unix = 3;
    // Metadata only: the ciphertext stays.
    store.put_vault(&updated, None).unwrap();
    drop(store);
    let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
    assert_eq!(store.list_vault().unwrap(), [updated]);
    assert_eq!(store.get_vault_sealed("k3s-token/abc").unwrap().as_deref(), Some(&b"ciphertext"[..]));
    assert_eq!(store.get_vault_sealed("k3s-token/other").unwrap(), None);
}

#[test]
fn vault_keeps_each_key_once_and_only_from_servers() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let (a, _) = keys();
    let r = report("sealed-secrets-keyaaaaa", a, "active");
    let t = 1_750_000_000;
    assert_eq!(vault.accept_sealing_key(&store, &server("s1"), &r, t).unwrap(), Accepted::New);
    assert_eq!(vault.accept_sealing_key(&store, &server("s1"), &r, t + 5).unwrap(), Accepted::Unchanged);
    let later = t + LAST_SEEN_RESOLUTION_SECONDS;
    assert_eq!(vault.accept_sealing_key(&store, &server("s1"), &r, later).unwrap(), Accepted::Seen);
    // Marked compromised: the same key, other metadata.
    let compromised = report("sealed-secrets-keyaaaaa", a, "compromised");
    assert_eq!(
        vault.accept_sealing_key(&store, &server("s2"), &compromised, later + 1).unwrap(),
        Accepted::Changed
    );
    let records = store.list_vault().unwrap();
    assert_eq!(records.len(), 1);
    let meta = records[0].sealing_key.as_ref().unwrap();
    assert_eq!(meta.labels[render::KEY_LABEL], "compromised");
    assert_eq!((records[0].first_seen_unix, records[0].last_seen_unix), (t, later + 1));
    assert_eq!(records[0].reported_by, "s2");
    assert_eq!(meta.not_before_unix, 1_735_689_600, "2025-01-01");
    assert_eq!(meta.not_after_unix, 2_051_222_400, "2035-01-01");
    assert_eq!(meta.fingerprint.len(), 64);

    // An agent-role node may not inject keys.
    let worker = NodeRecord::for_test("w1", "w1", Role::Agent);
    let (_, b) = keys();
    let err = vault
        .accept_sealing_key(&store, &worker, &report("sealed-secrets-keybbbbb", b, "active"), t)
        .unwrap_err();
    assert!(matches!(err, Refused::NotAServer { ref node } if node == "w1"), "{err}");
    let err = vault.accept_k3s_token(&store, &worker, "K10abc::server:x", FIRST, t).unwrap_err();
    assert!(matches!(err, Refused::NotAServer { .. }), "{err}");
    assert_eq!(store.list_vault().unwrap().len(), 1);
}

#[test]
fn vault_refuses_what_recover_would_refuse_without_echoing_it() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let (a, b) = keys();
    // The key of one, the certificate of the other.
    let mut mismatched = report("sealed-secrets-keymixed", a, "active");
    mismatched.tls_crt = b.cert_pem.clone().into_bytes();
    let err = vault.accept_sealing_key(&store, &server("s1"), &mismatched, NOW).unwrap_err();
    assert!(matches!(err, Refused::Invalid { .. }), "{err}");
    let mut garbage = report("sealed-secrets-keyjunk", a, "active");
    garbage.tls_key = b"not a key at all".to_vec();
    let err = vault.accept_sealing_key(&store, &server("s1"), &garbage, NOW).unwrap_err();
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(!text.contains("not a key at all") && !text.contains(&distinctive(a)), "{text}");
    let err = vault.accept_k3s_token(&store, &server("s1"), "plain-secret", FIRST, NOW).unwrap_err();
    assert!(matches!(err, Refused::NotSecureToken), "{err}");
    assert!(store.list_vault().unwrap().is_empty());
}

#[test]
fn vault_export_is_what_the_recovery_keys_parser_reads() {
    let (dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let (a, b) = keys();
    vault
        .accept_sealing_key(&store, &server("s1"), &report("sealed-secrets-keynewer", a, "active"), NOW)
        .unwrap();
    vault
        .accept_sealing_key(&store, &server("s1"), &report("sealed-secrets-keyolder", b, "active"), NOW + 1)
        .unwrap();
    let token = format!("K10{}::server:{}", "ab".repeat(32), "cd".repeat(24));
    vault.accept_k3s_token(&store, &server("s1"), &token, FIRST, NOW + 2).unwrap();

    // Nothing secret is in the store file in plain text.
    let bytes = std::fs::read(dir.path().join("state.redb")).unwrap();
    for needle in [distinctive(a), distinctive(b), "cd".repeat(24)] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle:?} in state.redb");
    }

    let export = vault.export(&store, true, 1_750_000_000).unwrap();
    assert_eq!(export.keys, 2);
    assert_eq!(export.k3s_token.as_deref().map(String::as_str), Some(token.as_str()));
    let yaml: &str = &export.keys_yaml;
    assert!(yaml.starts_with("# sealed-secrets keys exported"), "{yaml}");
    for field in
        ["resourceVersion: '1234'", "resourceVersion: \"1234\"", "uid:", "managedFields", "creationTimestamp"]
    {
        assert!(!yaml.contains(field), "{field} must not be exported");
    }
    let parsed = elysium_recovery::keys::parse(yaml.as_bytes()).unwrap();
    let names: Vec<_> = parsed.iter().map(|k| k.name()).collect();
    assert_eq!(names, ["sealed-secrets-keyolder", "sealed-secrets-keynewer"], "oldest certificate first");
    assert!(parsed.iter().all(|k| k.namespace() == Some("flux-system") && k.is_loaded_by_controller()));
    assert_eq!(parsed[1].key_pem(), a.key_pem.as_bytes());
    assert_eq!(parsed[1].cert_pem(), a.cert_pem.as_bytes());
    let listed = store.list_vault().unwrap();
    let fp = |name: &str| {
        listed
            .iter()
            .find_map(|r| r.sealing_key.as_ref().filter(|m| m.name == name))
            .unwrap()
            .fingerprint
            .clone()
    };
    assert_eq!(parsed[1].fingerprint(), fp("sealed-secrets-keynewer"));
    assert!(!format!("{export:?}").contains("PRIVATE"), "Debug must not show keys");

    // Another coordinator's vault key opens nothing.
    let other = Vault::new(VaultKey::generate());
    assert!(matches!(other.export(&store, false, 0), Err(ExportError::Vault(VaultError::Decrypt { .. }))));
}

#[test]
fn vault_export_renames_a_second_key_of_the_same_name() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let (a, b) = keys();
    // The legacy single key, replaced in place by new material: both are worth keeping.
    vault.accept_sealing_key(&store, &server("s1"), &report("sealed-secrets-key", b, "active"), NOW).unwrap();
    vault
        .accept_sealing_key(&store, &server("s1"), &report("sealed-secrets-key", a, "active"), NOW + 1)
        .unwrap();
    let export = vault.export(&store, false, 0).unwrap();
    assert!(export.k3s_token.is_none());
    let parsed = elysium_recovery::keys::parse(export.keys_yaml.as_bytes()).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].name(), "sealed-secrets-key");
    assert!(parsed[1].name().starts_with("sealed-secrets-key-") && parsed[1].name().len() == 27);
}

#[test]
fn vault_tampered_metadata_is_caught_on_export() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let (a, _) = keys();
    vault
        .accept_sealing_key(&store, &server("s1"), &report("sealed-secrets-keyaaaaa", a, "active"), NOW)
        .unwrap();
    let mut record = store.list_vault().unwrap().remove(0);
    record.sealing_key.as_mut().unwrap().namespace = "elsewhere".into();
    store.put_vault(&record, None).unwrap();
    let err = vault.export(&store, false, 0).unwrap_err();
    assert!(matches!(err, ExportError::Vault(VaultError::Corrupt { .. })), "{err}");
}

#[test]
fn vault_backfills_a_token_known_before_it_existed() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let token = format!("K10{}::server:secret", "ab".repeat(32));
    vault.backfill_k3s_token(&store, "s1", &token, 5).unwrap();
    vault.backfill_k3s_token(&store, "s1", &token, 50_000).unwrap();
    let records = store.list_vault().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].last_seen_unix, 5, "a backfill is not a sighting");
    assert_eq!(token_fingerprint(&records[0]).len(), 12);
}

/// The coordinator's clock in these tests: 2026-06-01, a fake that stands still.
fn clock() -> elysium_host::FakeClock {
    elysium_host::FakeClock::new(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_780_272_000))
}

fn unix(clock: &elysium_host::FakeClock) -> i64 {
    use elysium_host::Clock as _;
    clock.now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn a_key_dated_in_the_future_is_refused_beyond_the_clock_skew() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let clock = clock();
    static FUTURE: std::sync::OnceLock<TestKey> = std::sync::OnceLock::new();
    let k2030 = FUTURE.get_or_init(|| test_key(2030));
    let r = report("sealed-secrets-keyfuture", k2030, "active");
    let err = vault.accept_sealing_key(&store, &server("s1"), &r, unix(&clock)).unwrap_err();
    assert!(matches!(err, Refused::FromTheFuture { not_before: 1_893_456_000, .. }), "{err}");
    assert!(err.to_string().contains("from the future"), "{err}");
    assert!(store.list_vault().unwrap().is_empty());
    // Within the skew allowance of the coordinator's clock it is taken.
    clock.set(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_893_456_000 - 60));
    assert_eq!(vault.accept_sealing_key(&store, &server("s1"), &r, unix(&clock)).unwrap(), Accepted::New);
}

#[test]
fn planted_keys_are_refused_past_the_caps_and_the_export_keeps_the_real_key() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let (real, planted) = keys();
    let mut now = unix(&clock());
    vault
        .accept_sealing_key(&store, &server("s1"), &report("sealed-secrets-keyreal1", real, "active"), now)
        .unwrap();
    // One node plants 300 (the same material under other names: other items).
    let evil = server("s-evil");
    let mut refused = std::collections::BTreeMap::<&str, usize>::new();
    for i in 0..300 {
        let r = report(&format!("sealed-secrets-keyplant{i:03}"), planted, "active");
        if let Err(e) = vault.accept_sealing_key(&store, &evil, &r, now) {
            *refused.entry(e.kind()).or_default() += 1;
        }
    }
    assert_eq!(refused.get("too-many-new"), Some(&(300 - MAX_NEW_KEYS_PER_NODE_PER_DAY)));
    // Day after day, up to the vault's limit, and not beyond.
    for _day in 0..10 {
        now += DAY_SECONDS;
        for i in 0..MAX_NEW_KEYS_PER_NODE_PER_DAY {
            let r = report(&format!("sealed-secrets-keylater{now}-{i}"), planted, "active");
            let _ = vault.accept_sealing_key(&store, &evil, &r, now);
        }
    }
    let kept = store.list_vault().unwrap();
    assert_eq!(kept.len(), MAX_SEALING_KEYS);
    let r = report("sealed-secrets-keyone-more", planted, "active");
    assert!(matches!(vault.accept_sealing_key(&store, &evil, &r, now), Err(Refused::Full)));
    // Provenance: who brought each.
    let real_record =
        kept.iter().find(|r| r.sealing_key.as_ref().unwrap().name == "sealed-secrets-keyreal1").unwrap();
    assert_eq!((real_record.first_reported_by.as_str(), real_record.reported_by.as_str()), ("s1", "s1"));
    assert_eq!(kept.iter().filter(|r| r.first_reported_by == "s-evil").count(), MAX_SEALING_KEYS - 1);

    let export = vault.export(&store, false, now).unwrap();
    assert_eq!(export.keys, MAX_SEALING_KEYS);
    let parsed = elysium_recovery::keys::parse(export.keys_yaml.as_bytes()).unwrap();
    assert!(
        parsed.iter().any(|k| k.key_pem() == real.key_pem.as_bytes()),
        "the real key is not in the export"
    );

    // The operator drops a planted key: it leaves the export, stays out when
    // reported again, and comes back only after `--undo` and a new report.
    let victim = kept.iter().find(|r| r.first_reported_by == "s-evil").unwrap().clone();
    let name = victim.sealing_key.as_ref().unwrap().name.clone();
    let short = short_id(&victim.id);
    let dropped = vault.drop_item(&store, &short, now).unwrap();
    assert!(dropped.what.contains(&name), "{}", dropped.what);
    assert!(store.get_vault_sealed(&victim.id).unwrap().is_none(), "the key material stays after a drop");
    assert_eq!(vault.export(&store, false, now).unwrap().keys, MAX_SEALING_KEYS - 1);
    let again = report(&name, planted, "active");
    let err = vault.accept_sealing_key(&store, &evil, &again, now + 1000).unwrap_err();
    assert!(matches!(err, Refused::Dropped { .. }), "{err}");
    assert!(matches!(vault.drop_item(&store, &short, now), Err(DropError::AlreadyDropped(_))));
    vault.undrop_item(&store, &short).unwrap();
    assert!(store.list_vault().unwrap().iter().all(|r| r.id != victim.id));
    assert_eq!(
        vault.accept_sealing_key(&store, &server("s1"), &again, now + DAY_SECONDS).unwrap(),
        Accepted::New
    );
    assert!(matches!(vault.drop_item(&store, "zz", now), Err(DropError::NotFound(_))));
}

#[test]
fn only_the_clusters_k3s_token_is_kept() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let real = format!("K10{}::server:{}", "ab".repeat(32), "cd".repeat(24));
    let bogus = format!("K10{}::server:{}", "ab".repeat(32), "ee".repeat(24));
    // The first server's report sets it.
    assert_eq!(vault.accept_k3s_token(&store, &server("s1"), &real, FIRST, NOW).unwrap(), Accepted::New);
    // Another server may confirm it, not bring another one, even seen later.
    let other = ClusterToken { known: Some(&real), from_first_server: false };
    let err = vault.accept_k3s_token(&store, &server("s2"), &bogus, other, NOW + 5000).unwrap_err();
    assert!(matches!(err, Refused::NotTheClusterToken { ref node } if node == "s2"), "{err}");
    assert!(!err.to_string().contains(&"ee".repeat(24)), "the error shows the token");
    assert_eq!(
        vault.accept_k3s_token(&store, &server("s2"), &real, other, NOW + 5000).unwrap(),
        Accepted::Changed
    );
    let before_known = ClusterToken { known: None, from_first_server: false };
    assert!(vault.accept_k3s_token(&store, &server("s3"), &bogus, before_known, NOW).is_err());
    let export = vault.export(&store, true, NOW).unwrap();
    assert_eq!(export.k3s_token.as_deref().map(String::as_str), Some(real.as_str()));
    let records = store.list_vault().unwrap();
    assert_eq!((records[0].first_reported_by.as_str(), records[0].reported_by.as_str()), ("s1", "s2"));
}

#[test]
fn an_oversized_report_is_refused_before_it_is_parsed() {
    let (_dir, store) = open_store();
    let vault = Vault::new(VaultKey::generate());
    let (a, _) = keys();
    let mut r = report("sealed-secrets-keyhuge", a, "active");
    r.tls_crt.extend(std::iter::repeat_n(b'\n', MAX_REPORT_BYTES));
    let err = vault.accept_sealing_key(&store, &server("s1"), &r, NOW).unwrap_err();
    assert!(matches!(err, Refused::TooLarge { bytes, .. } if bytes > MAX_REPORT_BYTES), "{err}");
    assert!(store.list_vault().unwrap().is_empty());
}
