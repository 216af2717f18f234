//! Shared by the integration tests: the real Elysium repository snapshot as a local Git
//! repository, test sealing keys with self-signed certificates, keys files in kubectl's
//! List format, and SealedSecrets sealed with the test keys. [`cluster`]: the Kubernetes
//! side (the API server stand-in, a test Flux).

#![allow(dead_code)] // each test binary uses a different part

pub mod cluster;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use elysium_recovery::sealed::{self, Scope};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::rand_core::OsRng;
use rsa::{RsaPrivateKey, RsaPublicKey};

/// The Elysium repository snapshot, relative to this crate (`tests/fixtures/README.md`).
pub const FIXTURE: &str = "../tests/fixtures/cluster-repo/elysium-74291b2-classic-bootstrap.tar.gz";
pub const CLUSTER: &str = "clusters/kyrion";
pub const CERT_FILE: &str = "etc/certs/pub-sealed-secrets.pem";
pub const VARS_FILE: &str = "clusters/kyrion/sealed-secrets.yaml";

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A test sealing key: RSA 2048 (fast to make; the controller uses 4096) and a
/// self-signed certificate for it, like the controller's.
pub struct TestKey {
    pub private: RsaPrivateKey,
    pub key_pem: String,
    pub cert_pem: String,
}

impl TestKey {
    pub fn generate(year: i32) -> TestKey {
        let private = RsaPrivateKey::new(&mut OsRng, 2048).expect("generate RSA key");
        let pkcs8 = private.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8");
        let pair =
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).expect("rcgen key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.not_before = rcgen::date_time_ymd(year, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        let cert_pem = params.self_signed(&pair).expect("self-sign").pem();
        let key_pem = private.to_pkcs1_pem(LineEnding::LF).expect("PKCS#1").to_string();
        TestKey { private, key_pem, cert_pem }
    }

    pub fn public(&self) -> RsaPublicKey {
        self.private.to_public_key()
    }

    /// Seals `value` as kubeseal would for `namespace/name` in `scope`, base64.
    pub fn seal(&self, scope: Scope, namespace: &str, name: &str, value: &[u8]) -> String {
        b64(&sealed::seal(&self.public(), value, &scope.label(namespace, name)).expect("seal"))
    }
}

/// Two keys made once per test binary: A (the "real" one, newest) and B (older).
pub fn keys() -> &'static (TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| (TestKey::generate(2025), TestKey::generate(2024)))
}

/// One key Secret as `kubectl get secret -o yaml` prints it inside a List.
pub struct KeySecret<'a> {
    pub name: &'a str,
    pub label: Option<&'a str>,
    pub secret_type: &'a str,
    pub key_pem: &'a str,
    pub cert_pem: &'a str,
}

impl<'a> KeySecret<'a> {
    pub fn active(name: &'a str, k: &'a TestKey) -> Self {
        KeySecret {
            name,
            label: Some("active"),
            secret_type: "kubernetes.io/tls",
            key_pem: &k.key_pem,
            cert_pem: &k.cert_pem,
        }
    }
}

/// A keys file in kubectl's `v1 List` format.
pub fn keys_list(secrets: &[KeySecret]) -> String {
    let mut y = String::from("apiVersion: v1\nitems:\n");
    for s in secrets {
        let _ = write!(
            y,
            "- apiVersion: v1\n  data:\n    tls.crt: {}\n    tls.key: {}\n  kind: Secret\n  metadata:\n    creationTimestamp: \"2024-09-25T22:06:02Z\"\n    generateName: sealed-secrets-key\n",
            b64(s.cert_pem.as_bytes()),
            b64(s.key_pem.as_bytes())
        );
        if let Some(l) = s.label {
            let _ = write!(y, "    labels:\n      sealedsecrets.bitnami.com/sealed-secrets-key: {l}\n");
        }
        let _ = write!(
            y,
            "    name: {}\n    namespace: flux-system\n    resourceVersion: \"1234\"\n    uid: 5f0c8a3e-0000-4000-8000-000000000000\n  type: {}\n",
            s.name, s.secret_type
        );
    }
    y.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    y
}

/// A SealedSecret document with values sealed by `key`; `meta_scope` is what its own
/// annotations say, `template_scope` what spec.template's say.
pub fn sealed_secret(
    key: &TestKey,
    ns: &str,
    name: &str,
    seal_scope: Scope,
    meta_scope: Scope,
    values: &[(&str, &str)],
) -> String {
    let ann = |s: Scope, indent: &str| {
        let which = match s {
            Scope::Strict => return String::new(),
            Scope::NamespaceWide => "namespace-wide",
            Scope::ClusterWide => "cluster-wide",
        };
        format!("{indent}annotations:\n{indent}  sealedsecrets.bitnami.com/{which}: \"true\"\n")
    };
    let mut y = format!(
        "---\napiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata:\n{}  name: {name}\n  namespace: {ns}\nspec:\n  encryptedData:\n",
        ann(meta_scope, "  ")
    );
    for (k, v) in values {
        let _ = writeln!(y, "    {k}: {}", key.seal(seal_scope, ns, name, v.as_bytes()));
    }
    let _ = write!(
        y,
        "  template:\n    metadata:\n{}      name: {name}\n      namespace: {ns}\n    type: Opaque\n",
        ann(seal_scope, "      ")
    );
    y
}

/// The fixture unpacked into a fresh directory (not yet a Git repository).
pub fn unpack() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    assert!(tarball.is_file(), "fixture missing: {}", tarball.display());
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(dir.path()));
    dir
}

/// `git init` + commit everything on `main`; returns the commit.
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
        "user.name=Recovery Test",
        "-c",
        "user.email=recovery@example.invalid",
        "-c",
        "commit.gpgsign=false",
    ]);
    c
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The real repository, as committed, in a local Git repository.
pub fn real_repo() -> (tempfile::TempDir, String) {
    let dir = unpack();
    let sha = commit_all(dir.path(), "Elysium at 74291b2");
    (dir, sha)
}

/// The repository as a cluster whose keys are the test keys: A's certificate committed
/// and `cluster-secret-vars` sealed with A, plus extra SealedSecrets in each scope.
pub fn repo_resealed_with(
    key: &TestKey,
    replace_cert: bool,
    reseal_vars: bool,
) -> (tempfile::TempDir, String) {
    let dir = unpack();
    if replace_cert {
        std::fs::write(dir.path().join(CERT_FILE), &key.cert_pem).expect("write cert");
    }
    if reseal_vars {
        let vars = sealed_secret(
            key,
            "flux-system",
            "cluster-secret-vars",
            Scope::Strict,
            Scope::Strict,
            &[("DOMAIN", "example.org"), ("EMAIL", "ops@example.org"), ("PRIVATE_DOMAIN", "lan.example.org")],
        );
        std::fs::write(dir.path().join(VARS_FILE), vars).expect("write vars");
    }
    let sha = commit_all(dir.path(), "test keys");
    (dir, sha)
}

pub fn write_keys_file(dir: &Path, contents: &str) -> PathBuf {
    let p = dir.join("main.key");
    std::fs::write(&p, contents).expect("write keys");
    p
}

/// An error and all its causes, as the CLI prints them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, "\n  caused by: {c}");
        cur = c.source();
    }
    s
}

/// Fails if `text` contains any 12-character run of the private key's PEM body or of its
/// base64 in the keys file.
pub fn assert_no_key_material(text: &str, key_pem: &str) {
    let body: String = key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let encoded = b64(key_pem.as_bytes());
    for secret in [body.as_str(), encoded.as_str()] {
        let chars: Vec<char> = secret.chars().collect();
        for w in chars.windows(12).step_by(6) {
            let chunk: String = w.iter().collect();
            assert!(!text.contains(&chunk), "key material {chunk:?} appears in:\n{text}");
        }
    }
}

pub fn options(repo: &Path, keys_file: &Path) -> elysium_recovery::PreflightOptions {
    elysium_recovery::PreflightOptions {
        repo: repo.display().to_string(),
        branch: "main".into(),
        path: CLUSTER.into(),
        keys: elysium_recovery::KeySource::File { path: keys_file.to_owned() },
        deploy_key: elysium_recovery::repo::DeployKey::None,
        controller_namespace: None,
        controller_name: None,
        force: false,
    }
}

/// Runs the preflight and insists it returns a report.
pub fn preflight(opts: &elysium_recovery::PreflightOptions) -> elysium_recovery::Preflight {
    elysium_recovery::preflight(opts).unwrap_or_else(|e| panic!("preflight errored: {}", chain(&e)))
}
