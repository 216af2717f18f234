//! Hostile input, generated: property-based tests (proptest) over the parsers that read
//! what comes from outside the program: join tokens, the cluster spec (TOML), K3s hash
//! files and version strings, the sealed-secrets keys file (YAML, and age-encrypted), the
//! repository and coordinator URLs, the hardware document.
//!
//! Each property says more than "does not panic" where the parser makes a promise: a
//! token's error never echoes the secret, a hash file's answer is a line that is in the
//! file, a damaged age file is refused and never decrypts to something else, a keys
//! file's error never contains key material. Case counts are fixed so that `.ci/run`
//! runs them in seconds; `PROPTEST_CASES=100000 cargo test -p elysium-tests --test
//! fuzz_parsers` searches longer. A failure that proptest finds is shrunk to a minimal
//! input; it becomes a named regression test at the bottom of this file.

use std::collections::BTreeMap;
use std::path::Path;

use elysium_identity::JoinToken;
use elysium_installer::k3s_release::parse_hash_file;
use elysium_installer::k3s_version::K3sVersion;
use elysium_recovery::backup::{self, AgeOptions};
use elysium_recovery::keys;
use elysium_recovery::repo::RepoSource;
use elysium_spec::ClusterSpec;
use proptest::prelude::*;

/// The spec every mutation starts from: the documented example, which is valid.
const EXAMPLE_SPEC: &str = include_str!("../../docs/examples/cluster.toml");

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` still overrides `cases` (ProptestConfig::default reads it first).
    let from_env = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: from_env.unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every message in an error's chain, joined: what an operator would read.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------
// Join tokens

fn hex_string(len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(b"0123456789abcdef".to_vec()), len)
        .prop_map(|v| String::from_utf8(v).unwrap())
}

/// A valid token's text with one edit: a character replaced, inserted or removed.
fn mutated_token() -> impl Strategy<Value = (String, String)> {
    (hex_string(64), hex_string(12), hex_string(32), any::<prop::sample::Index>(), any::<char>(), 0..3u8)
        .prop_map(|(fp, id, secret, at, c, op)| {
            let mut chars: Vec<char> = format!("ELY10{fp}::{id}.{secret}").chars().collect();
            let i = at.index(chars.len());
            match op {
                0 => chars[i] = c,
                1 => chars.insert(i, c),
                _ => {
                    chars.remove(i);
                }
            }
            (chars.into_iter().collect(), secret)
        })
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn any_string_is_a_token_or_a_clear_error(text in ".{0,200}") {
        match JoinToken::parse(&text) {
            Ok(token) => {
                // Whatever parses prints back to itself (modulo the trimmed blanks).
                prop_assert_eq!(JoinToken::parse(&token.expose()).unwrap(), token.clone());
                prop_assert_eq!(token.expose(), text.trim());
            }
            Err(e) => prop_assert!(e.to_string().contains("malformed")),
        }
    }

    #[test]
    fn a_damaged_token_never_echoes_its_secret((text, secret) in mutated_token()) {
        match JoinToken::parse(&text) {
            // A replaced hex digit can still be a token (another secret): fine.
            Ok(token) => {
                let debug = format!("{token:?}");
                prop_assert!(!debug.contains(&secret), "Debug shows the secret");
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.contains(&secret[..16]), "error echoes the secret: {}", message);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The cluster spec

/// A TOML value of any type, small.
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        any::<bool>().prop_map(toml::Value::Boolean),
        (-1e12f64..1e12).prop_map(toml::Value::Float),
        ".{0,40}".prop_map(toml::Value::String),
        Just(toml::Value::String(String::new())),
        Just(toml::Value::String("v1.31.4+k3s1".into())),
        Just(toml::Value::String("http://mirror.lan/k3s".into())),
        Just(toml::Value::String("../../etc/shadow".into())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// One edit of a TOML table tree: at a path chosen by `at`, replace a value, delete a
/// key or add an unknown one.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, toml::Value),
    Delete(prop::sample::Index),
    Add(prop::sample::Index, String, toml::Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), toml_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
        (any::<prop::sample::Index>(), "[a-z_]{1,12}", toml_value()).prop_map(|(i, k, v)| Edit::Add(i, k, v)),
    ]
}

/// Every table in `value` (depth first), as paths of keys.
fn table_paths(value: &toml::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let toml::Value::Table(t) = value {
        out.push(path.clone());
        for (k, v) in t {
            path.push(k.clone());
            table_paths(v, path, out);
            path.pop();
        }
    } else if let toml::Value::Array(items) = value {
        for (i, v) in items.iter().enumerate() {
            path.push(format!("#{i}"));
            table_paths(v, path, out);
            path.pop();
        }
    }
}

fn table_at<'a>(value: &'a mut toml::Value, path: &[String]) -> Option<&'a mut toml::Table> {
    let mut v = value;
    for k in path {
        v = match (k.strip_prefix('#'), v) {
            (Some(i), toml::Value::Array(items)) => items.get_mut(i.parse::<usize>().ok()?)?,
            (None, toml::Value::Table(t)) => t.get_mut(k)?,
            _ => return None,
        };
    }
    v.as_table_mut()
}

fn apply(doc: &mut toml::Value, edit: &Edit) {
    let mut paths = Vec::new();
    table_paths(doc, &mut Vec::new(), &mut paths);
    let (Edit::Replace(at, _) | Edit::Delete(at) | Edit::Add(at, ..)) = edit;
    let path = paths[at.index(paths.len())].clone();
    let Some(table) = table_at(doc, &path) else { return };
    let nth_key =
        |t: &toml::Table| (!t.is_empty()).then(|| t.keys().nth(at.index(t.len())).cloned()).flatten();
    match edit {
        Edit::Add(_, key, value) => {
            table.insert(key.clone(), value.clone());
        }
        Edit::Replace(_, value) => {
            if let Some(key) = nth_key(table) {
                table.insert(key, value.clone());
            }
        }
        Edit::Delete(_) => {
            if let Some(key) = nth_key(table) {
                table.remove(&key);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn any_text_is_a_spec_or_a_clear_error(text in "(\\PC|\n|\\[|\\]|=|\"){0,300}") {
        if let Err(e) = ClusterSpec::parse(&text) {
            prop_assert!(chain(&e).contains("cluster spec is not valid"));
        }
    }

    /// The example with a few edits (values of the wrong type or range, keys deleted,
    /// unknown keys added): parsed or refused with a message naming a field or a line,
    /// and a spec that parses also survives a round trip through TOML unchanged.
    #[test]
    fn the_example_spec_mutated(edits in proptest::collection::vec(edit(), 1..4)) {
        let mut doc: toml::Value = toml::from_str(EXAMPLE_SPEC).unwrap();
        for e in &edits {
            apply(&mut doc, e);
        }
        let text = toml::to_string(&doc).unwrap();
        match ClusterSpec::parse(&text) {
            Ok(spec) => {
                let again = ClusterSpec::parse(&toml::to_string(&spec).unwrap());
                prop_assert_eq!(again.ok(), Some(spec));
            }
            Err(e) => {
                let message = chain(&e);
                prop_assert!(
                    message.contains('`') || message.contains("line") || message.contains("unknown field")
                        || message.contains("missing field") || message.contains("invalid"),
                    "the error names neither a field nor a line: {}", message
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// K3s release files

const NAMES: [&str; 5] = ["k3s", "k3s-arm64", "k3s-armhf", "k3s-airgap-images-amd64.tar", "k3s "];

fn hash_line() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            hex_string(64),
            proptest::sample::select(NAMES.to_vec()),
            prop_oneof![Just("  "), Just(" *"), Just("\t")]
        )
            .prop_map(|(h, n, sep)| format!("{h}{sep}{n}")),
        "\\PC{0,80}",
        (hex_string(63), proptest::sample::select(NAMES.to_vec())).prop_map(|(h, n)| format!("{h}  {n}")),
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    /// Whatever the file, an answer is the hash of a line that lists exactly that name.
    #[test]
    fn a_hash_file_answer_is_a_line_of_the_file(
        lines in proptest::collection::vec(hash_line(), 0..12),
        crlf in any::<bool>(),
        name in proptest::sample::select(NAMES[..4].to_vec()),
    ) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        if let Ok(digest) = parse_hash_file(&text, name) {
            let hex = digest.to_string();
            let listed = text.lines().any(|l| {
                let l = l.trim_end_matches('\r');
                l.to_ascii_lowercase().starts_with(&hex)
                    && l[64..].trim_start_matches([' ', '\t']).trim_start_matches('*') == name
            });
            prop_assert!(listed, "{} is not on a line for {} in {:?}", hex, name, text);
        }
    }

    #[test]
    fn any_version_string_parses_back_to_itself(text in "v?[0-9]{0,3}(\\.[0-9]{0,3}){0,3}(-rc[0-9])?(\\+k3s[0-9]{0,2})?|\\PC{0,30}") {
        if let Ok(v) = text.parse::<K3sVersion>() {
            prop_assert_eq!(v.to_string().parse::<K3sVersion>().unwrap(), v);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sealed-secrets keys file

/// A real key pair, made once (RSA generation is slow), in a keys file as `kubectl get
/// secret -o yaml` writes it, and the runs of its private key that must never show.
fn sealing_secret_yaml() -> &'static (String, Vec<String>) {
    static CELL: std::sync::OnceLock<(String, Vec<String>)> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let key = elysium_tests::gitops::TestKey::generate(2048, 30);
        let secret = key.secret("sealed-secrets-keyabcde");
        (serde_yaml_ng::to_string(&secret).unwrap(), key.needles())
    })
}

/// Edits that keep a YAML file mostly YAML: a byte changed, a line dropped or doubled,
/// the file cut.
#[derive(Debug, Clone)]
enum Damage {
    Byte(prop::sample::Index, u8),
    DropLine(prop::sample::Index),
    DoubleLine(prop::sample::Index),
    Cut(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Byte(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::DropLine),
        any::<prop::sample::Index>().prop_map(Damage::DoubleLine),
        any::<prop::sample::Index>().prop_map(Damage::Cut),
    ]
}

fn damaged(text: &str, d: &Damage) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    match d {
        Damage::Byte(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
            bytes
        }
        Damage::DropLine(i) => {
            lines.remove(i.index(lines.len()));
            lines.concat().into_bytes()
        }
        Damage::DoubleLine(i) => {
            let i = i.index(lines.len());
            lines.insert(i, lines[i]);
            lines.concat().into_bytes()
        }
        Damage::Cut(i) => {
            bytes.truncate(i.index(bytes.len()));
            bytes
        }
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn any_bytes_are_keys_or_a_clear_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = keys::parse(&bytes);
    }

    /// A damaged keys file is read or refused, and no error shows a piece of the key.
    #[test]
    fn a_damaged_keys_file_never_shows_the_key(ds in proptest::collection::vec(damage(), 1..3)) {
        let (yaml, needles) = sealing_secret_yaml();
        let mut text = yaml.clone();
        for d in &ds {
            text = String::from_utf8_lossy(&damaged(&text, d)).into_owned();
        }
        if let Err(e) = keys::parse(text.as_bytes()) {
            let message = chain(&e);
            for needle in needles {
                prop_assert!(!message.contains(needle.as_str()), "the error shows key material: {}", message);
            }
        }
    }
}

/// An age file encrypted to an X25519 recipient (scrypt would take a second per case).
fn age_backup(plain: &[u8]) -> (Vec<u8>, age::x25519::Identity) {
    use std::io::Write as _;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = encryptor.wrap_output(&mut out).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap();
    (out, identity)
}

fn age_fixture() -> &'static (Vec<u8>, tempfile::TempDir) {
    static CELL: std::sync::OnceLock<(Vec<u8>, tempfile::TempDir)> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let (yaml, _) = sealing_secret_yaml();
        let (file, identity) = age_backup(yaml.as_bytes());
        let dir = tempfile::tempdir().unwrap();
        use age::secrecy::ExposeSecret as _;
        let id_path = dir.path().join("identity.txt");
        std::fs::write(&id_path, format!("{}\n", identity.to_string().expose_secret())).unwrap();
        (file, dir)
    })
}

/// The keys in `bytes` as an age backup, read the way `recover --age-identity` does.
fn read_backup(dir: &Path, bytes: &[u8]) -> Result<Vec<Vec<u8>>, backup::BackupError> {
    let path = dir.join(format!("backup-{}.age", rand::random::<u64>()));
    std::fs::write(&path, bytes).unwrap();
    let age = AgeOptions { identities: vec![dir.join("identity.txt")], passphrase: None };
    let result = backup::load(&backup::KeySource::File { path: path.clone(), age })
        .map(|(keys, _)| keys.iter().map(|k| k.key_pem().to_vec()).collect());
    std::fs::remove_file(&path).unwrap();
    result
}

proptest! {
    #![proptest_config(config(300))]

    /// age authenticates the header and every chunk: any single change or cut of an
    /// encrypted backup is refused, never decrypted into other keys.
    #[test]
    fn a_damaged_age_backup_is_refused(at in any::<prop::sample::Index>(), flip in 1..=255u8, cut in any::<bool>()) {
        let (file, dir) = age_fixture();
        let identity_dir = dir.path();
        let keys = read_backup(identity_dir, file).unwrap();
        prop_assert_eq!(keys.len(), 1);
        let mut bad = file.clone();
        let i = at.index(bad.len());
        if cut { bad.truncate(i) } else { bad[i] ^= flip }
        match read_backup(identity_dir, &bad) {
            Err(e) => {
                let message = chain(&e);
                prop_assert!(!message.contains("AGE-SECRET-KEY"), "{}", message);
            }
            // The MAC and every chunk's tag see any change that matters; what passes (a
            // base64 padding bit of a stanza) must give the very same key.
            Ok(read) => prop_assert_eq!(read, keys, "a damaged backup gave other keys"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// URLs from the command line and the spec

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn any_repository_argument_is_classified_or_refused(text in "(https?://|ssh://|file://|git@|/|\\./)?\\PC{0,60}") {
        let _ = RepoSource::parse(&text);
    }

    #[test]
    fn any_coordinator_url_is_parsed_or_refused(text in "(https://|http://)?[a-z0-9.:\\[\\]@/%-]{0,40}") {
        if let Ok(t) = elysium_agent::transport::Target::parse(&text) {
            prop_assert!(t.url.starts_with("https://"));
            prop_assert!(!t.host.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The hardware document

proptest! {
    #![proptest_config(config(500))]

    /// The document a node sends is only stored and shown: any JSON (or not JSON) hashes,
    /// and the agent's own reader refuses what is not an inventory without panicking.
    #[test]
    fn any_hardware_document_is_hashed_and_read_or_refused(
        doc in prop_oneof![
            "\\PC{0,200}",
            proptest::collection::btree_map("[a-z_]{1,10}", "\\PC{0,20}", 0..6)
                .prop_map(|m: BTreeMap<String, String>| serde_json::to_string(&m).unwrap()),
        ]
    ) {
        prop_assert_eq!(elysium_proto::hardware_sha256(&doc).len(), 64);
        let _ = serde_json::from_str::<elysium_agent::hardware::Inventory>(&doc);
    }
}

// ---------------------------------------------------------------------------------------
// Regressions found by the properties above

/// Found by `a_damaged_age_backup_is_refused`: with its first byte damaged, an age file no
/// longer starts with the age header and was read as a plaintext keys file, so the
/// operator was told about invalid YAML instead of a damaged backup.
#[test]
fn an_age_backup_with_a_damaged_first_byte_is_called_damaged() {
    let (file, dir) = age_fixture();
    let mut bad = file.clone();
    bad[0] ^= 1;
    let e = read_backup(dir.path(), &bad).unwrap_err();
    assert!(matches!(e, backup::BackupError::Binary { .. }), "{}", chain(&e));
    assert!(chain(&e).contains("damaged"), "{}", chain(&e));
}

/// Found by `any_coordinator_url_is_parsed_or_refused`: `https://[]-` parsed, with an
/// empty host, and failed only at the first connection with a TLS name error.
#[test]
fn a_coordinator_url_with_an_empty_host_is_refused() {
    for url in ["https://[]-", "https://[]:7443", "https://:7443"] {
        assert!(elysium_agent::transport::Target::parse(url).is_err(), "{url}");
    }
    assert_eq!(elysium_agent::transport::Target::parse("https://[fd7a::1]:7443").unwrap().host, "fd7a::1");
}
