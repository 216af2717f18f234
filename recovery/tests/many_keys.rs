//! A backup as a real cluster's looks after two years: 25 keys, one per renewal. The
//! oldest is the committed certificate's and seals `cluster-secret-vars`; a few newer ones
//! each sealed some SealedSecrets; most open nothing. The report must say which key is
//! which, and stay readable.

mod common;

use common::*;
use elysium_recovery::report::Verdict;
use elysium_recovery::sealed::Scope;

const KEYS: usize = 25;

fn name(i: usize) -> String {
    format!("sealed-secrets-key{:05}", i)
}

#[test]
fn twenty_five_keys_report_which_key_is_the_certificate_and_which_opens_what() {
    // One key a month from January 2024, like the controller's 30-day renewals.
    let keys: Vec<TestKey> =
        (0..KEYS).map(|i| TestKey::generate_on(2024 + (i / 12) as i32, (i % 12) as u8 + 1, 1)).collect();
    let oldest = &keys[0];
    let (repo, _) = repo_resealed_with(oldest, true, true);
    let extra = [
        sealed_secret(&keys[5], "coder", "alpha", Scope::Strict, Scope::Strict, &[("token", "a")]),
        sealed_secret(
            &keys[5],
            "coder",
            "beta",
            Scope::Strict,
            Scope::Strict,
            &[("token", "b"), ("user", "u")],
        ),
        sealed_secret(&keys[12], "n8n", "gamma", Scope::NamespaceWide, Scope::NamespaceWide, &[("key", "g")]),
        sealed_secret(&keys[KEYS - 1], "n8n", "delta", Scope::Strict, Scope::Strict, &[("key", "d")]),
    ]
    .concat();
    std::fs::create_dir_all(repo.path().join("apps/kyrion/many-keys")).unwrap();
    std::fs::write(repo.path().join("apps/kyrion/many-keys/sealed.yaml"), extra).unwrap();
    commit_all(repo.path(), "secrets sealed over two years");

    let names: Vec<String> = (0..KEYS).map(name).collect();
    let secrets: Vec<KeySecret> = keys.iter().zip(&names).map(|(k, n)| KeySecret::active(n, k)).collect();
    let work = tempfile::tempdir().unwrap();
    let file = write_keys_file(work.path(), &keys_list(&secrets));
    let p = preflight(&options(repo.path(), &file));
    let r = &p.report;
    assert_eq!(r.verdict, Verdict::Ok, "{r}");
    assert_eq!(r.keys.len(), KEYS);

    // The data: which key is the certificate, which opened what.
    let key = |i: usize| r.keys.iter().find(|k| k.name == names[i]).unwrap();
    assert_eq!(key(0).matches_committed_certs, vec![CERT_FILE.to_owned()]);
    assert_eq!(key(0).opened_sealed_secrets, vec!["flux-system/cluster-secret-vars"]);
    assert_eq!(key(5).opened_sealed_secrets, vec!["coder/alpha", "coder/beta"]);
    assert_eq!(key(5).opened_values, 3);
    assert_eq!(key(12).opened_sealed_secrets, vec!["n8n/gamma"]);
    assert!(key(KEYS - 1).newest);
    assert_eq!(key(KEYS - 1).opened_sealed_secrets, vec!["n8n/delta"]);
    for i in (1..KEYS - 1).filter(|i| ![5, 12].contains(i)) {
        assert!(key(i).matches_committed_certs.is_empty() && key(i).opened_values == 0, "{}", names[i]);
    }
    let cert = r.committed_certs.iter().find(|c| c.file == CERT_FILE).unwrap();
    assert_eq!(cert.matched_by.as_deref(), Some(names[0].as_str()));

    // The text: the four keys that matter have their lines, the 21 others one line.
    let text = r.to_string();
    let section: String = text
        .split("\nSealing keys (25)\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_else(|| panic!("no keys section in:\n{text}"))
        .to_owned();
    for part in [
        format!("  {}  active\n", names[0]),
        format!("      is the committed certificate {CERT_FILE}\n"),
        "      opened 3 value(s) of 1 SealedSecret(s): flux-system/cluster-secret-vars\n".to_owned(),
        format!("  {}  active\n", names[5]),
        "      opened 3 value(s) of 2 SealedSecret(s): coder/alpha, coder/beta\n".to_owned(),
        "      opened 1 value(s) of 1 SealedSecret(s): n8n/gamma\n".to_owned(),
        format!("  {}  active, newest: seals new secrets\n", names[KEYS - 1]),
        format!(
            "  + 21 more key(s) from {} (2024-02-01T00:00:00Z) to {} (2025-12-01T00:00:00Z): match no committed \
             certificate and open no SealedSecret here",
            names[1],
            names[KEYS - 2]
        ),
    ] {
        assert!(section.contains(&part), "{part:?} missing from:\n{section}");
    }
    // Four lines for the certificate's key, three for each other one, one for the rest.
    assert_eq!(section.lines().count(), 4 + 3 * 3 + 1, "{section}");
    for i in (1..KEYS - 1).filter(|i| ![5, 12].contains(i)) {
        assert!(!section.contains(&names[i]) || i == 1 || i == KEYS - 2, "{} listed:\n{section}", names[i]);
    }
    assert!(text.contains(&format!("{CERT_FILE}  matches key {}", names[0])), "{text}");
    assert!(text.contains(&format!("opened      coder/beta  (strict, key {})", names[5])), "{text}");

    // JSON keeps every key.
    let json: serde_json::Value = serde_json::to_value(r).unwrap();
    assert_eq!(json["keys"].as_array().unwrap().len(), KEYS);
    assert_eq!(json["keys"][5]["opened_sealed_secrets"][1], "coder/beta");
    for k in &keys {
        assert_no_key_material(&text, &k.key_pem);
    }
}
