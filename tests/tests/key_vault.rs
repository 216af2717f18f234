//! The key vault end to end: a server node's agent watches the sealed-secrets key
//! Secrets of its cluster (the kube-apiserver stand-in, through a K3s-style kubeconfig)
//! and the coordinator backs each key up, encrypted; `keys status` sees them, `keys
//! export` writes a file `recover --verify-only` accepts against a repository sealed
//! with the newest key. A worker node cannot inject keys, nothing secret reaches a log,
//! and the store file on disk holds no key in plain text.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use base64::Engine as _;
use clap::Parser as _;
use elysium_proto::v1 as pb;
use elysium_recovery::sealed::{self, Scope};
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};
use elysium_tests::logs::LogCapture;
use kube_apiserver_standin::ApiServer;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
const KEY_LABEL: &str = "sealedsecrets.bitnami.com/sealed-secrets-key";
/// The Elysium repository snapshot (`tests/fixtures/README.md`,
/// `docs/reference/elysium-cluster.md`), as recovery's tests use it.
const FIXTURE: &str = "fixtures/cluster-repo/elysium-74291b2-classic-bootstrap.tar.gz";

/// A sealing key like the controller's (RSA, PKCS#1 `tls.key`, self-signed `tls.crt`),
/// 2048 bits for speed, with NotBefore `days_ago` days back.
struct TestKey {
    private: rsa::RsaPrivateKey,
    key_pem: String,
    cert_pem: String,
}

impl TestKey {
    fn generate(days_ago: i64) -> TestKey {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pkcs8 = private.to_pkcs8_pem(LineEnding::LF).unwrap();
        let pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(days_ago);
        params.not_after = params.not_before + time::Duration::days(3650);
        let cert_pem = params.self_signed(&pair).unwrap().pem();
        let key_pem = private.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        TestKey { private, key_pem, cert_pem }
    }

    /// The key Secret as the controller creates it.
    fn secret(&self, name: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": { "name": name, "namespace": "flux-system", "labels": { KEY_LABEL: "active" } },
            "data": { "tls.crt": b64(self.cert_pem.as_bytes()), "tls.key": b64(self.key_pem.as_bytes()) },
        })
    }

    /// Another certificate for the same key, padded with `sans` DNS names to be large
    /// (a vault's bytes, not its key count, are what the one-message limit is about).
    fn padded_cert(&self, tag: usize, sans: usize) -> String {
        let pkcs8 = self.private.to_pkcs8_pem(LineEnding::LF).unwrap();
        let pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let names: Vec<String> = (0..sans).map(|j| format!("k{tag}-s{j}.padding.example.invalid")).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(3 + tag as i64);
        params.not_after = params.not_before + time::Duration::days(3650);
        params.self_signed(&pair).unwrap().pem()
    }

    /// Runs of its private key's PEM body and of their base64, as they would appear
    /// if leaked.
    fn needles(&self) -> Vec<String> {
        let body: String = self.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let encoded = b64(self.key_pem.as_bytes());
        [body, encoded]
            .iter()
            .flat_map(|s| {
                let chars: Vec<char> = s.chars().collect();
                chars.windows(16).step_by(97).map(|w| w.iter().collect::<String>()).collect::<Vec<_>>()
            })
            .collect()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn assert_absent(what: &str, haystack: &[u8], needles: &[String]) {
    for n in needles {
        assert!(!haystack.windows(n.len()).any(|w| w == n.as_bytes()), "{n:?} found in {what}");
    }
}

/// The fixture repository with `key`'s certificate committed and the Secret every
/// Kustomization substitutes from (`cluster-secret-vars`) sealed with it: a cluster
/// whose current key is `key`.
fn repo_sealed_with(key: &TestKey) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tarball = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    assert!(tarball.is_file(), "fixture missing: {}", tarball.display());
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(dir.path()));
    std::fs::write(dir.path().join("etc/certs/pub-sealed-secrets.pem"), &key.cert_pem).unwrap();
    let (ns, name) = ("flux-system", "cluster-secret-vars");
    let mut vars = format!(
        "---\napiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  encryptedData:\n"
    );
    for (k, v) in
        [("DOMAIN", "example.org"), ("EMAIL", "ops@example.org"), ("PRIVATE_DOMAIN", "lan.example.org")]
    {
        let sealed =
            sealed::seal(&key.private.to_public_key(), v.as_bytes(), &Scope::Strict.label(ns, name)).unwrap();
        vars.push_str(&format!("    {k}: {}\n", b64(&sealed)));
    }
    vars.push_str(&format!(
        "  template:\n    metadata:\n      name: {name}\n      namespace: {ns}\n    type: Opaque\n"
    ));
    std::fs::write(dir.path().join("clusters/kyrion/sealed-secrets.yaml"), vars).unwrap();
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.arg("-C").arg(dir.path());
        c.args([
            "-c",
            "user.name=Vault Test",
            "-c",
            "user.email=vault@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ]);
        c.args(args);
        run(&mut c);
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    git(&["add", "--all"]);
    git(&["commit", "--quiet", "-m", "test keys"]);
    dir
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `elysium-node ARGS` in-process.
async fn cli(args: &[&str]) -> anyhow::Result<ExitCode> {
    let cli = elysium_node::Cli::try_parse_from(std::iter::once("elysium-node").chain(args.iter().copied()))?;
    elysium_node::run(cli).await
}

async fn list(c: &TestCoordinator) -> pb::ListSealingKeysResponse {
    c.admin().await.list_sealing_keys(pb::ListSealingKeysRequest {}).await.unwrap().into_inner()
}

fn names(r: &pb::ListSealingKeysResponse) -> Vec<String> {
    r.keys.iter().map(|k| k.name.clone()).collect()
}

#[tokio::test]
async fn keys_reach_the_vault_and_export_passes_recover() {
    let logs = LogCapture::global();
    let (older, newer) = (TestKey::generate(33), TestKey::generate(3));
    let c = TestCoordinator::start().await;
    c.set_spec("[k3s]\nversion = \"v1.31.4+k3s1\"\n").await;
    let server = TestNode::new("s1");
    server.join(&c.url(), &c.token_for(pb::NodeRole::Server, 1, 600).await).await.unwrap();
    assert_eq!(
        server.held_spec().unwrap().k3s.unwrap().role,
        elysium_agent::state::K3sAssignedRole::ServerInit
    );

    // The cluster, reachable through the kubeconfig K3s writes on a server.
    let api = ApiServer::start().await.unwrap();
    api.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}})).unwrap();
    api.put(older.secret("sealed-secrets-keyolder")).unwrap();
    // Not a key: another Secret in the namespace is never read.
    api.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": "flux-system"}, "stringData": {"x": "y"}}))
        .unwrap();
    let kubeconfig = server.host.fs.resolve(elysium_kube::K3S_KUBECONFIG);
    api.write_kubeconfig(&kubeconfig, &api.admin_credentials()).unwrap();

    let options =
        elysium_agent::vault::KeyWatchOptions { retry: Duration::from_millis(200), ..Default::default() };
    let (agent, link) = server.start_agent_with_key_vault(options);
    let first = eventually("the first key in the vault", WAIT, || async {
        let r = list(&c).await;
        (r.keys.len() == 1).then_some(r)
    })
    .await;
    let k = &first.keys[0];
    assert_eq!((k.namespace.as_str(), k.name.as_str()), ("flux-system", "sealed-secrets-keyolder"));
    assert_eq!(k.labels[KEY_LABEL], "active");
    assert_eq!(k.reported_by, "s1");
    assert_eq!(k.fingerprint.len(), 64);
    assert!(!first.k3s_token.as_ref().unwrap().backed_up);

    // A backup taken now will be stale once the controller renews.
    let work = tempfile::tempdir().unwrap();
    let admin = work.path().join("admin.toml");
    std::fs::write(&admin, toml::to_string(&c.admin_config()).unwrap()).unwrap();
    let admin = admin.to_str().unwrap().to_owned();
    let stale = work.path().join("stale.key");
    let stale_export = ["keys", "export", "--out", stale.to_str().unwrap(), "--config", &admin];
    assert_eq!(cli(&stale_export).await.unwrap(), ExitCode::SUCCESS);

    // The controller renews: a second key; the vault has both, newest first.
    api.put(newer.secret("sealed-secrets-keynewer")).unwrap();
    let both = eventually("the renewed key in the vault", WAIT, || async {
        let r = list(&c).await;
        (r.keys.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(names(&both), ["sealed-secrets-keynewer", "sealed-secrets-keyolder"]);
    assert!(both.keys[0].not_before_unix > both.keys[1].not_before_unix);

    // The server's K3s reports its token (what the K3s step does once healthy).
    let token = format!("K10{}::server:{}", "ab".repeat(32), "5ec7e7".repeat(8));
    link.report_k3s(pb::K3sReport {
        server_token: token.clone(),
        version: "v1.31.4+k3s1".into(),
        ..Default::default()
    });
    eventually("the K3s token in the vault", WAIT, || async {
        list(&c).await.k3s_token.filter(|t| t.backed_up && t.reported_by == "s1")
    })
    .await;

    // A new session sends every key again (level-triggered): after a coordinator
    // restart, later on its clock, the keys are seen again, not duplicated.
    let seen_before = both.keys[0].last_seen_unix;
    let mut c = c;
    c.advance_clock(3600);
    c.restart().await;
    let again = eventually("the keys seen again after a reconnect", WAIT, || async {
        let r = list(&c).await;
        r.keys.iter().all(|k| k.last_seen_unix >= seen_before + 3600).then_some(r)
    })
    .await;
    assert_eq!(names(&again), ["sealed-secrets-keynewer", "sealed-secrets-keyolder"]);

    // `keys status` and `keys export` through the CLI, with the admin credentials.
    let admin = admin.as_str();
    assert_eq!(
        cli(&["keys", "status", "--config", admin]).await.unwrap(),
        ExitCode::SUCCESS,
        "a fresh backup"
    );
    assert_eq!(cli(&["keys", "status", "-o", "json", "--config", admin]).await.unwrap(), ExitCode::SUCCESS);
    // Against a 1-hour renewal period the 3-day-old newest key is overdue: exit 1.
    assert_eq!(
        cli(&["keys", "status", "--renew-period", "1h", "--config", admin]).await.unwrap(),
        ExitCode::FAILURE
    );
    let keys_file = work.path().join("main.key");
    let token_file = work.path().join("k3s-token");
    let (out, token_out) = (keys_file.to_str().unwrap(), token_file.to_str().unwrap());
    let export = ["keys", "export", "--out", out, "--k3s-token-out", token_out, "--config", admin];
    assert_eq!(cli(&export).await.unwrap(), ExitCode::SUCCESS);
    for f in [&keys_file, &token_file] {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    let err = cli(&export).await.unwrap_err();
    assert!(err.to_string().contains("--force"), "{err:#}");
    assert_eq!(cli(&[&export[..], &["--force"][..]].concat()).await.unwrap(), ExitCode::SUCCESS);
    let exported = std::fs::read_to_string(&keys_file).unwrap();
    // Only the List's own (empty) resourceVersion, as kubectl prints it.
    assert_eq!(exported.matches("resourceVersion").count(), 1, "{}", exported.len());
    for field in ["uid:", "managedFields", "creationTimestamp"] {
        assert!(!exported.contains(field), "{field} must not be in the export");
    }

    // `recover --verify-only` accepts it against a repository sealed with the newest key.
    let repo = repo_sealed_with(&newer);
    let verify =
        ["recover", "--verify-only", "--repo", repo.path().to_str().unwrap(), "--sealed-secrets-keys", out];
    assert_eq!(cli(&verify).await.unwrap(), ExitCode::SUCCESS, "recover refused the export");
    // The backup taken before the renewal does not pass.
    let stale_verify = [&verify[..4], &["--sealed-secrets-keys", stale.to_str().unwrap()][..]].concat();
    assert_eq!(cli(&stale_verify).await.unwrap(), ExitCode::FAILURE, "a stale backup must not pass");

    // The store file holds no sealing key in plain text. (The K3s token is also in
    // the K3s cluster record, in plain text, which hands it to joining nodes; the
    // vault's copy is encrypted, but that record is not the vault's.)
    let redb = std::fs::read(c.data_dir().join("state.redb")).unwrap();
    assert!(redb.len() > 10_000, "the store file is suspiciously small");
    for key in [&older, &newer] {
        assert_absent("state.redb", &redb, &key.needles());
    }

    agent.stop().await;
    // Nothing secret in any log line.
    let logs = logs.bytes();
    assert!(logs.len() > 1000, "the capture saw almost nothing");
    for key in [&older, &newer] {
        assert_absent("the logs", &logs, &key.needles());
    }
    assert_absent("the logs", &logs, &["5ec7e7".repeat(8)]);
    let logs = String::from_utf8_lossy(&logs);
    assert!(logs.contains("watching sealed-secrets keys"), "the watcher never logged");
}

#[tokio::test]
async fn a_worker_node_cannot_inject_sealing_keys() {
    let logs = LogCapture::global();
    let key = TestKey::generate(1);
    let c = TestCoordinator::start().await;
    let worker = TestNode::new("w1");
    worker.join(&c.url(), &c.token(1, 600).await).await.unwrap();
    let mut session = worker.session_client(&c.url()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "test".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let report = pb::SealingKeyReport {
        namespace: "flux-system".into(),
        name: "sealed-secrets-keyinject".into(),
        labels: [(KEY_LABEL.to_owned(), "active".to_owned())].into(),
        tls_crt: key.cert_pem.clone().into_bytes(),
        tls_key: key.key_pem.clone().into_bytes(),
        ..Default::default()
    };
    tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::SealingKey(report)) }).await.unwrap();
    let token = format!("K10{}::server:{}", "ab".repeat(32), "1eaked".repeat(8));
    let k3s = pb::K3sReport { server_token: token, ..Default::default() };
    tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::K3s(k3s)) }).await.unwrap();
    let _stream = session.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();

    let refused = eventually("the refusals in the event log", WAIT, || async {
        let events = c
            .admin()
            .await
            .list_events(pb::ListEventsRequest { after_seq: 0, limit: 100 })
            .await
            .unwrap()
            .into_inner()
            .events;
        let refused: Vec<_> =
            events.into_iter().filter(|e| e.kind == "vault.refused" && e.subject == "w1").collect();
        (refused.len() == 2).then_some(refused)
    })
    .await;
    assert!(refused.iter().all(|e| e.message.contains("not a server node")), "{refused:?}");
    let r = list(&c).await;
    assert!(r.keys.is_empty(), "a worker's key got in: {:?}", names(&r));
    assert!(!r.k3s_token.unwrap().backed_up, "a worker's token got in");
    let logs = logs.bytes();
    assert_absent("the logs", &logs, &key.needles());
    assert_absent("the logs", &logs, &["1eaked".repeat(8)]);
}

/// A vault whose export is larger than one gRPC message (1 MiB): `keys export` streams
/// it, encrypts it to age recipients (binary and armored) without writing the plaintext,
/// and `recover --verify-only --age-identity` opens what it wrote.
#[tokio::test]
async fn an_export_larger_than_a_message_streams_and_is_age_encrypted() {
    const RECORDS: usize = 24;
    const SANS: usize = 1200;
    let logs = LogCapture::global();
    let c = TestCoordinator::start().await;
    let server = TestNode::new("s1");
    server.join(&c.url(), &c.token_for(pb::NodeRole::Server, 1, 600).await).await.unwrap();
    let keys: Vec<TestKey> = (0..4).map(|i| TestKey::generate(3 + 30 * i)).collect();

    // The reports a server's agent sends, straight on its session.
    let mut session = server.session_client(&c.url()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(RECORDS + 1);
    let hello = pb::Hello { agent_version: "test".into(), ..Default::default() };
    tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(hello)) }).await.unwrap();
    for i in 0..RECORDS {
        let k = &keys[i % keys.len()];
        let report = pb::SealingKeyReport {
            namespace: "flux-system".into(),
            name: format!("sealed-secrets-key{i:05}"),
            labels: [(KEY_LABEL.to_owned(), "active".to_owned())].into(),
            tls_crt: k.padded_cert(i, SANS).into_bytes(),
            tls_key: k.key_pem.clone().into_bytes(),
            ..Default::default()
        };
        tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::SealingKey(report)) }).await.unwrap();
    }
    let _stream = session.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    eventually("every key in the vault", Duration::from_secs(60), || async {
        (list(&c).await.keys.len() == RECORDS).then_some(())
    })
    .await;

    // The one-message call cannot carry it, and says what to use instead.
    let err = c
        .admin()
        .await
        .export_sealing_keys(pb::ExportSealingKeysRequest { include_k3s_token: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("ExportSealingKeysStream"), "{err:?}");

    let work = tempfile::tempdir().unwrap();
    let admin = work.path().join("admin.toml");
    std::fs::write(&admin, toml::to_string(&c.admin_config()).unwrap()).unwrap();
    let admin = admin.to_str().unwrap().to_owned();
    let id = age::x25519::Identity::generate();
    let id_file = work.path().join("keys.txt");
    use age::secrecy::ExposeSecret as _;
    std::fs::write(
        &id_file,
        format!("# public key: {}\n{}\n", id.to_public(), id.to_string().expose_secret()),
    )
    .unwrap();
    let recipients = work.path().join("recipients.txt");
    let other = age::x25519::Identity::generate().to_public();
    std::fs::write(
        &recipients,
        format!("# the operator and an offline copy\n{}\n\n{other}\n", id.to_public()),
    )
    .unwrap();

    // Plaintext, binary age to a recipient, armored age to a recipients file.
    let plain = work.path().join("main.key");
    let binary = work.path().join("sealed-secrets-keys.yaml.age");
    let armored = work.path().join("sealed-secrets-keys.yaml.asc");
    let recipient = id.to_public().to_string();
    let runs: [Vec<&str>; 3] = [
        vec!["--out", plain.to_str().unwrap()],
        vec!["--out", binary.to_str().unwrap(), "--encrypt-to", &recipient],
        vec![
            "--out",
            armored.to_str().unwrap(),
            "--encrypt-to-file",
            recipients.to_str().unwrap(),
            "--armor",
        ],
    ];
    for extra in &runs {
        let args = [&["keys", "export"][..], extra, &["--config", &admin][..]].concat();
        assert_eq!(cli(&args).await.unwrap(), ExitCode::SUCCESS, "{args:?}");
    }
    let plain_bytes = std::fs::read(&plain).unwrap();
    assert!(
        plain_bytes.len() > elysium_proto::MAX_MESSAGE_BYTES,
        "the export must exceed one message to test the stream: {} bytes",
        plain_bytes.len()
    );
    assert_eq!(elysium_recovery::keys::parse(&plain_bytes).unwrap().len(), RECORDS);

    for (file, prefix) in
        [(&binary, "age-encryption.org/v1\n-> X25519 "), (&armored, "-----BEGIN AGE ENCRYPTED FILE-----\n")]
    {
        assert_eq!(
            std::fs::metadata(file).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            file.display()
        );
        let bytes = std::fs::read(file).unwrap();
        assert!(bytes.starts_with(prefix.as_bytes()), "{}", file.display());
        // Ciphertext only: no YAML, no key.
        assert_absent(
            &file.display().to_string(),
            &bytes,
            &["apiVersion".to_owned(), "sealed-secrets-key0".to_owned()],
        );
        for k in &keys {
            assert_absent(&file.display().to_string(), &bytes, &k.needles());
        }
        // It opens to the plaintext export (all but the header comment, which has the time).
        let age = elysium_recovery::AgeOptions { identities: vec![id_file.clone()], passphrase: None };
        let (opened, _) = elysium_recovery::backup::read(file, &age).unwrap();
        let body = |b: &[u8]| -> Vec<Vec<u8>> {
            b.split(|&c| c == b'\n').filter(|l| !l.starts_with(b"#")).map(<[u8]>::to_vec).collect()
        };
        // No assert_eq!: its message would print the keys.
        assert!(body(&opened) == body(&plain_bytes), "{} does not open to the export", file.display());
    }
    let armored_text = std::fs::read_to_string(&armored).unwrap();
    assert!(armored_text.trim_end().ends_with("-----END AGE ENCRYPTED FILE-----"));

    // The round trip: recover opens both with the identity file.
    let repo = repo_sealed_with(&keys[0]);
    for file in [&binary, &armored] {
        let verify = [
            "recover",
            "--verify-only",
            "--repo",
            repo.path().to_str().unwrap(),
            "--sealed-secrets-keys",
            file.to_str().unwrap(),
            "--age-identity",
            id_file.to_str().unwrap(),
        ];
        assert_eq!(cli(&verify).await.unwrap(), ExitCode::SUCCESS, "recover refused {}", file.display());
    }
    // Without the identity it says what to pass.
    let err = cli(&[
        "recover",
        "--verify-only",
        "--repo",
        repo.path().to_str().unwrap(),
        "--sealed-secrets-keys",
        binary.to_str().unwrap(),
    ])
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("pass --age-identity FILE"), "{err:#}");

    // A secret key passed as a recipient is refused without being echoed.
    let secret = id.to_string();
    let never = work.path().join("never-written.age");
    let args = [
        "keys",
        "export",
        "--out",
        never.to_str().unwrap(),
        "--encrypt-to",
        secret.expose_secret(),
        "--config",
        &admin,
    ];
    let err = cli(&args).await.unwrap_err();
    assert!(format!("{err:#}").contains("not a recipient"), "{err:#}");
    assert!(!format!("{err:#}").contains(secret.expose_secret()), "{err:#}");
    assert!(!never.exists());

    let logs = logs.bytes();
    for k in &keys {
        assert_absent("the logs", &logs, &k.needles());
    }
    assert_absent("the logs", &logs, &[secret.expose_secret()[16..40].to_owned()]);
}

fn agent_msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

fn key_report(key: &TestKey, name: &str) -> pb::AgentMessage {
    agent_msg(pb::agent_message::Msg::SealingKey(pb::SealingKeyReport {
        namespace: "flux-system".into(),
        name: name.into(),
        labels: [(KEY_LABEL.to_owned(), "active".to_owned())].into(),
        tls_crt: key.cert_pem.clone().into_bytes(),
        tls_key: key.key_pem.clone().into_bytes(),
        ..Default::default()
    }))
}

/// Opens a raw session for `node`, sends `messages` and a heartbeat, and returns once
/// the heartbeat is acknowledged (messages are handled in order: all were).
async fn send_all(c: &TestCoordinator, node: &TestNode, messages: Vec<pb::AgentMessage>) {
    let mut session = node.session_client(&c.url()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let hello = pb::Hello { agent_version: "test".into(), ..Default::default() };
    let feed = tokio::spawn(async move {
        tx.send(agent_msg(pb::agent_message::Msg::Hello(hello))).await.unwrap();
        for m in messages {
            tx.send(m).await.unwrap();
        }
        let hb = pb::Heartbeat { seq: 4242, ..Default::default() };
        tx.send(agent_msg(pb::agent_message::Msg::Heartbeat(hb))).await.unwrap();
        tx
    });
    let mut replies =
        session.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    loop {
        let reply = tokio_stream::StreamExt::next(&mut replies).await.expect("session ended").unwrap();
        if matches!(
            reply.msg,
            Some(pb::coordinator_message::Msg::HeartbeatAck(pb::HeartbeatAck { seq: 4242 }))
        ) {
            break;
        }
    }
    drop(feed.await.unwrap());
}

/// Root on a second server plants 300 keys, a key dated 2030 and a bogus K3s token:
/// past the caps they are refused (evented a few times, with counts), the 2030 key and
/// the bogus token never, `keys export` still works and holds the real key and token,
/// and `keys drop` removes a planted key for good (until `--undo`).
#[tokio::test]
async fn planted_keys_are_refused_past_the_caps_and_the_export_keeps_the_real_key() {
    let c = TestCoordinator::start().await;
    let token = c.token_for(pb::NodeRole::Server, 2, 600).await;
    let (s1, s2) = (TestNode::new("s1"), TestNode::new("s2"));
    s1.join(&c.url(), &token).await.unwrap();
    s2.join(&c.url(), &token).await.unwrap();
    let (real, planted) = (TestKey::generate(3), TestKey::generate(1));
    let real_token = format!("K10{}::server:{}", "ab".repeat(32), "5ec7e7".repeat(8));
    let k3s = |t: &str| {
        agent_msg(pb::agent_message::Msg::K3s(pb::K3sReport { server_token: t.into(), ..Default::default() }))
    };
    // s1 is the first server: its report is the cluster's token.
    send_all(&c, &s1, vec![key_report(&real, "sealed-secrets-keyreal1"), k3s(&real_token)]).await;

    let mut flood: Vec<_> =
        (0..300).map(|i| key_report(&planted, &format!("sealed-secrets-keyplant{i:03}"))).collect();
    // 2030-01-01 is years ahead of the coordinator's clock.
    let future = TestKey::generate(-((2030 - 2026) * 366));
    flood.push(key_report(&future, "sealed-secrets-keyfuture"));
    flood.push(k3s(&format!("K10{}::server:{}", "ab".repeat(32), "b09u5".repeat(8))));
    send_all(&c, &s2, flood).await;

    let r = list(&c).await;
    let planted_kept = r.keys.iter().filter(|k| k.name.starts_with("sealed-secrets-keyplant")).count();
    assert_eq!(planted_kept, elysium_coordinator::vault::MAX_NEW_KEYS_PER_NODE_PER_DAY);
    assert!(!names(&r).contains(&"sealed-secrets-keyfuture".to_owned()), "the key from 2030 got in");
    let t = r.k3s_token.clone().unwrap();
    assert_eq!((t.reported_by.as_str(), t.first_reported_by.as_str()), ("s1", "s1"), "the bogus token won");
    let real_info = r.keys.iter().find(|k| k.name == "sealed-secrets-keyreal1").unwrap();
    assert_eq!((real_info.first_reported_by.as_str(), real_info.id.len()), ("s1", 12));

    // Refusals are evented a few times with counts, not 285 times.
    let events = eventually("the refusals in the event log", WAIT, || async {
        let mut admin = c.admin().await;
        let events = elysium_tests::fleet::all_events(&mut admin).await.ok()?;
        let refused: Vec<_> =
            events.into_iter().filter(|e| e.kind == "vault.refused" && e.subject == "s2").collect();
        let all_three = ["100 refusals", "from the future", "not the cluster's"]
            .iter()
            .all(|needle| refused.iter().any(|e| e.message.contains(needle)));
        all_three.then_some(refused)
    })
    .await;
    assert!(events.len() <= 6, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("from the future")), "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains("not the cluster's")), "{events:#?}");
    assert!(!events.iter().any(|e| e.message.contains("b09u5")), "a token in an event");

    // The export still works and holds the real key and token.
    let work = tempfile::tempdir().unwrap();
    let admin = work.path().join("admin.toml");
    std::fs::write(&admin, toml::to_string(&c.admin_config()).unwrap()).unwrap();
    let admin = admin.to_str().unwrap().to_owned();
    let (out, token_out) = (work.path().join("keys.yaml"), work.path().join("k3s-token"));
    let export =
        ["keys", "export", "--out", out.to_str().unwrap(), "--k3s-token-out", token_out.to_str().unwrap()];
    assert_eq!(cli(&[&export[..], &["--config", &admin]].concat()).await.unwrap(), ExitCode::SUCCESS);
    let parsed = elysium_recovery::keys::parse(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(parsed.len(), 1 + planted_kept);
    assert!(parsed.iter().any(|k| k.key_pem() == real.key_pem.as_bytes()), "the real key is not exported");
    assert_eq!(std::fs::read_to_string(&token_out).unwrap().trim(), real_token);

    // `keys drop ID`: gone from the export, and it stays out when reported again.
    let victim = r.keys.iter().find(|k| k.name == "sealed-secrets-keyplant000").unwrap();
    assert_eq!(cli(&["keys", "drop", &victim.id, "--config", &admin]).await.unwrap(), ExitCode::SUCCESS);
    send_all(&c, &s2, vec![key_report(&planted, "sealed-secrets-keyplant000")]).await;
    let r = list(&c).await;
    assert!(!names(&r).contains(&"sealed-secrets-keyplant000".to_owned()), "a dropped key came back");
    assert!(r.dropped.iter().any(|d| d.id == victim.id && d.what.contains("keyplant000")), "{:?}", r.dropped);
    let mut admin_client = c.admin().await;
    let events = elysium_tests::fleet::all_events(&mut admin_client).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "vault.dropped" && e.message.contains("keyplant000")));
    // `--undo`: the next report brings it back.
    assert_eq!(
        cli(&["keys", "drop", "--undo", &victim.id, "--config", &admin]).await.unwrap(),
        ExitCode::SUCCESS
    );
    send_all(&c, &s1, vec![key_report(&planted, "sealed-secrets-keyplant000")]).await;
    let events = elysium_tests::fleet::all_events(&mut admin_client).await.unwrap();
    let r = list(&c).await;
    assert!(
        names(&r).contains(&"sealed-secrets-keyplant000".to_owned()),
        "{:?} {:#?}",
        r.dropped,
        events.iter().filter(|e| e.kind.starts_with("vault")).collect::<Vec<_>>()
    );
}
