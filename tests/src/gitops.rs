//! GitOps repositories for the tests and benchmarks of the coordinator's recovery
//! drill: the real Elysium snapshot (`tests/fixtures/cluster-repo/`) unpacked into a
//! local Git repository, with every SealedSecret in it sealed anew with test keys, as
//! a cluster whose sealing keys are those keys would have them; and test sealing keys
//! like the controller's.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use elysium_recovery::sealed::{self, Scope};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::json;
use serde_yaml_ng::Value;

/// The Elysium repository snapshot (`tests/fixtures/README.md`).
pub const FIXTURE: &str = "fixtures/cluster-repo/elysium-74291b2-classic-bootstrap.tar.gz";
/// Its cluster directory.
pub const CLUSTER: &str = "clusters/kyrion";
/// Its committed sealing certificate.
pub const CERT_FILE: &str = "etc/certs/pub-sealed-secrets.pem";
/// The sealed-secrets key label (bitnami-labs/sealed-secrets `SealedSecretsKeyLabel`).
pub const KEY_LABEL: &str = "sealedsecrets.bitnami.com/sealed-secrets-key";

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A sealing key like the controller's (RSA, PKCS#1 `tls.key`, self-signed
/// `tls.crt`) with NotBefore `days_ago` days back.
pub struct TestKey {
    pub private: rsa::RsaPrivateKey,
    pub key_pem: String,
    pub cert_pem: String,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey").finish_non_exhaustive()
    }
}

impl TestKey {
    /// `bits`: 2048 keeps tests fast; the controller makes 4096.
    pub fn generate(bits: usize, days_ago: i64) -> TestKey {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).expect("RSA key");
        let pkcs8 = private.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8");
        let pair =
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).expect("rcgen key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(days_ago);
        params.not_after = params.not_before + time::Duration::days(3650);
        let cert_pem = params.self_signed(&pair).expect("self-sign").pem();
        let key_pem = private.to_pkcs1_pem(LineEnding::LF).expect("PKCS#1").to_string();
        TestKey { private, key_pem, cert_pem }
    }

    /// The key Secret as the controller creates it, for the API server stand-in.
    pub fn secret(&self, name: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": { "name": name, "namespace": "flux-system", "labels": { KEY_LABEL: "active" } },
            "data": { "tls.crt": b64(self.cert_pem.as_bytes()), "tls.key": b64(self.key_pem.as_bytes()) },
        })
    }

    /// Seals `value` as kubeseal does for `namespace/name` in `scope`, base64.
    pub fn seal(&self, scope: Scope, namespace: &str, name: &str, value: &[u8]) -> String {
        let label = scope.label(namespace, name);
        b64(&sealed::seal(&self.private.to_public_key(), value, &label).expect("seal"))
    }

    /// Runs of the private key's PEM body and of its base64, as they would appear if
    /// leaked into a log or a file.
    pub fn needles(&self) -> Vec<String> {
        needles(&self.key_pem)
    }
}

/// 16-character runs of `secret`'s PEM body and of its base64.
pub fn needles(secret: &str) -> Vec<String> {
    let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
    [body, b64(secret.as_bytes())]
        .iter()
        .flat_map(|s| {
            let chars: Vec<char> = s.chars().collect();
            chars.windows(16).step_by(23).map(|w| w.iter().collect::<String>()).collect::<Vec<_>>()
        })
        .collect()
}

/// Fails naming `what` if any needle is in `haystack`.
pub fn assert_absent(what: &str, haystack: &[u8], needles: &[String]) {
    for n in needles {
        assert!(!haystack.windows(n.len()).any(|w| w == n.as_bytes()), "{n:?} found in {what}");
    }
}

/// A SealedSecret (strict scope) with `values` sealed by `key`.
pub fn sealed_secret(key: &TestKey, namespace: &str, name: &str, values: &[(&str, &str)]) -> String {
    let mut y = format!(
        "---\napiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  encryptedData:\n"
    );
    for (k, v) in values {
        y.push_str(&format!("    {k}: {}\n", key.seal(Scope::Strict, namespace, name, v.as_bytes())));
    }
    y.push_str(&format!(
        "  template:\n    metadata:\n      name: {name}\n      namespace: {namespace}\n    type: Opaque\n"
    ));
    y
}

/// The snapshot unpacked, every SealedSecret's values sealed anew (SealedSecret `i`
/// with `keys[i % keys.len()]`, in the scope its own annotations say), the last key's
/// certificate committed, all committed on `main`. Returns the directory and commit.
pub fn cluster_repo(keys: &[&TestKey]) -> (tempfile::TempDir, String) {
    assert!(!keys.is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    assert!(tarball.is_file(), "fixture missing: {}", tarball.display());
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(dir.path()));
    let mut n = 0usize;
    for file in yaml_files(dir.path()) {
        let text = std::fs::read_to_string(&file).expect("read");
        if !text.contains("kind: SealedSecret") {
            continue;
        }
        let mut docs = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut v: Value = serde::Deserialize::deserialize(doc).expect("fixture YAML");
            if v.get("kind").and_then(Value::as_str) == Some("SealedSecret") {
                reseal(&mut v, keys[n % keys.len()]);
                n += 1;
            }
            if !v.is_null() {
                docs.push(serde_yaml_ng::to_string(&v).expect("YAML"));
            }
        }
        std::fs::write(&file, format!("---\n{}", docs.join("---\n"))).expect("write");
    }
    assert!(n >= 20, "only {n} SealedSecrets resealed: is the fixture the right one?");
    std::fs::write(dir.path().join(CERT_FILE), &keys[keys.len() - 1].cert_pem).expect("write cert");
    let sha = commit_all(dir.path(), "sealed with the test keys");
    (dir, sha)
}

fn reseal(v: &mut Value, key: &TestKey) {
    let meta = |v: &Value, k: &str| v.get("metadata").and_then(|m| m.get(k)).cloned();
    let namespace = meta(v, "namespace").and_then(|n| n.as_str().map(str::to_owned)).expect("namespace");
    let name = meta(v, "name").and_then(|n| n.as_str().map(str::to_owned)).expect("name");
    let annotations: std::collections::BTreeMap<String, String> =
        meta(v, "annotations").and_then(|a| serde_yaml_ng::from_value(a).ok()).unwrap_or_default();
    let scope = Scope::from_annotations(&annotations);
    let data = v
        .get_mut("spec")
        .and_then(|s| s.get_mut("encryptedData"))
        .and_then(Value::as_mapping_mut)
        .expect("encryptedData");
    for (entry, value) in data.iter_mut() {
        let plain = format!("test value of {}", entry.as_str().unwrap_or("?"));
        *value = Value::String(key.seal(scope, &namespace, &name, plain.as_bytes()));
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != ".git") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `git add --all && git commit` on `main` (initialising the repository first);
/// returns the commit.
pub fn commit_all(dir: &Path, message: &str) -> String {
    if !dir.join(".git").exists() {
        run(git(dir).args(["init", "--quiet", "--initial-branch=main"]));
    }
    run(git(dir).args(["add", "--all"]));
    run(git(dir).args(["commit", "--quiet", "--allow-empty", "-m", message]));
    let out = git(dir).args(["rev-parse", "HEAD"]).output().expect("rev-parse");
    String::from_utf8(out.stdout).expect("utf8").trim().to_owned()
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir).args([
        "-c",
        "user.name=Drill Test",
        "-c",
        "user.email=drill@example.invalid",
        "-c",
        "commit.gpgsign=false",
    ]);
    c
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}
