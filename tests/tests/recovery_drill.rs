//! The coordinator's recovery drill end to end: a server node's agent reports the
//! cluster's sealing keys (the kube-apiserver stand-in) into the vault, and the drill
//! runs `recover`'s preflight against a local Git repository (the real Elysium snapshot,
//! every SealedSecret sealed with the test keys) by itself. Green while the vault opens
//! everything; red, naming the SealedSecret, within a period of a commit sealed for a
//! key the vault never received; green again as soon as that key (renewed by the
//! controller) reaches the vault; red, not crashed, for an unreachable repository. The
//! result outlives a restart, and the deploy key reaches neither a log nor, after the
//! drill, the disk.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use elysium_proto::v1 as pb;
use elysium_tests::gitops::{self, TestKey, assert_absent, needles};
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};
use elysium_tests::logs::LogCapture;
use kube_apiserver_standin::ApiServer;
use serde_json::json;

/// Generous: a drill in a debug build clones and reads ~250 files and trial-decrypts
/// every SealedSecret; the machine is shared.
const WAIT: Duration = Duration::from_secs(90);
const DEPLOY_KEY_SECRET: &str = "drill-deploy-key";

/// A deploy key as `secret set` would hold it: what matters is that it is recognisable.
fn deploy_key() -> String {
    let body: String = (0..5)
        .map(|i| {
            format!("{}\n", gitops::b64(format!("drill deploy key line {i} {}", "z".repeat(20)).as_bytes()))
        })
        .collect();
    format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{body}-----END OPENSSH PRIVATE KEY-----\n")
}

fn spec(repository: &str) -> String {
    format!(
        "[k3s]\nversion = \"v1.31.4+k3s1\"\n\n[recovery.drill]\nrepository = \"{repository}\"\npath = \"{}\"\ndeploy_key_secret = \"{DEPLOY_KEY_SECRET}\"\ninterval = \"1s\"\n",
        gitops::CLUSTER
    )
}

async fn drill(c: &TestCoordinator) -> pb::RecoveryDrill {
    let r = c.admin().await.list_sealing_keys(pb::ListSealingKeysRequest {}).await.unwrap().into_inner();
    r.drill.expect("the coordinator reports its drill")
}

async fn events(c: &TestCoordinator, kind: &str) -> Vec<pb::Event> {
    let all = c
        .admin()
        .await
        .list_events(pb::ListEventsRequest { after_seq: 0, limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .events;
    all.into_iter().filter(|e| e.kind == kind).collect()
}

/// Runs `elysium-node ARGS` in-process.
async fn cli(args: &[&str]) -> anyhow::Result<ExitCode> {
    let cli = elysium_node::Cli::try_parse_from(std::iter::once("elysium-node").chain(args.iter().copied()))?;
    elysium_node::run(cli).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_goes_red_for_a_foreign_key_and_green_when_the_vault_gets_it() {
    let logs = LogCapture::global();
    let current = TestKey::generate(2048, 3);
    // The key the controller will renew to; a commit is sealed with it before the
    // vault has it (kubeseal fetched the new certificate from the cluster).
    let renewed = TestKey::generate(2048, 0);
    let (repo, first_commit) = gitops::cluster_repo(&[&current]);
    let repo_path = repo.path().to_str().unwrap().to_owned();

    let mut c = TestCoordinator::start().await;
    let scratch = tempfile::tempdir().unwrap();
    c.coordinator().set_drill_scratch_dir(scratch.path().to_owned());
    let key = deploy_key();
    c.admin()
        .await
        .set_secret(pb::SetSecretRequest { name: DEPLOY_KEY_SECRET.into(), value: key.clone() })
        .await
        .unwrap();
    c.set_spec("[k3s]\nversion = \"v1.31.4+k3s1\"\n").await;
    let server = TestNode::new("s1");
    server.join(&c.url(), &c.token_for(pb::NodeRole::Server, 1, 600).await).await.unwrap();
    let api = ApiServer::start().await.unwrap();
    api.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}})).unwrap();
    api.put(current.secret("sealed-secrets-keycurrent")).unwrap();
    api.write_kubeconfig(&server.host.fs.resolve(elysium_kube::K3S_KUBECONFIG), &api.admin_credentials())
        .unwrap();
    let options =
        elysium_agent::vault::KeyWatchOptions { retry: Duration::from_millis(200), ..Default::default() };
    let (agent, link) = server.start_agent_with_key_vault(options);
    // The K3s token too, or `keys status` warns about it whatever the drill says.
    let token = format!("K10{}::server:{}", "cd".repeat(32), "70ce".repeat(8));
    link.report_k3s(pb::K3sReport {
        server_token: token,
        version: "v1.31.4+k3s1".into(),
        ..Default::default()
    });
    eventually("the current key and the token in the vault", WAIT, || async {
        let r = c.admin().await.list_sealing_keys(pb::ListSealingKeysRequest {}).await.unwrap().into_inner();
        (r.keys.len() == 1 && r.k3s_token.is_some_and(|t| t.backed_up)).then_some(())
    })
    .await;
    let before = drill(&c).await;
    assert!(!before.configured && !before.ran, "{before:?}");

    // Configured: it runs by itself and passes.
    c.set_spec(&spec(&repo_path)).await;
    let green = eventually("a green drill", WAIT, || async {
        let d = drill(&c).await;
        (d.ran && d.passed).then_some(d)
    })
    .await;
    assert_eq!(green.commit, first_commit);
    assert_eq!((green.repository.as_str(), green.branch.as_str()), (repo_path.as_str(), "main"));
    assert!(green.sealed_secrets >= 20, "{green:?}");
    assert_eq!(green.sealed_secrets_opened, green.sealed_secrets);
    assert_eq!(green.keys, 1);
    assert!(green.failures.is_empty(), "{:?}", green.failures);
    assert!(
        green.summary.starts_with(&format!("recoverable as of commit {}", &first_commit[..12])),
        "{}",
        green.summary
    );
    assert!(green.next_unix > green.started_unix);
    let passed = eventually("the drill.passed event", WAIT, || async {
        let e = events(&c, "drill.passed").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(passed[0].message.contains(&first_commit[..12]), "{:?}", passed[0]);
    let work = tempfile::tempdir().unwrap();
    let admin = work.path().join("admin.toml");
    std::fs::write(&admin, toml::to_string(&c.admin_config()).unwrap()).unwrap();
    let admin = admin.to_str().unwrap().to_owned();
    assert_eq!(cli(&["keys", "status", "--config", &admin]).await.unwrap(), ExitCode::SUCCESS);

    // A commit sealed for a key the vault never received: red within a period, naming it.
    std::fs::create_dir_all(repo.path().join("apps/kyrion/ai/new")).unwrap();
    std::fs::write(
        repo.path().join("apps/kyrion/ai/new/new-app-sealed-secret.yaml"),
        gitops::sealed_secret(&renewed, "ai", "new-app-credentials", &[("token", "s3cr3t")]),
    )
    .unwrap();
    let second_commit = gitops::commit_all(repo.path(), "a new app, sealed with the renewed key");
    let red = eventually("a red drill at the new commit", WAIT, || async {
        let d = drill(&c).await;
        (d.commit == second_commit && !d.passed).then_some(d)
    })
    .await;
    let named: Vec<&pb::DrillFailure> = red.failures.iter().filter(|f| f.check == "sealed-secret").collect();
    assert_eq!(named.len(), 1, "{:?}", red.failures);
    assert_eq!(named[0].subject, "ai/new-app-credentials");
    assert!(named[0].detail.contains("apps/kyrion/ai/new/new-app-sealed-secret.yaml"), "{:?}", named[0]);
    assert!(named[0].detail.contains("token"), "{:?}", named[0]);
    assert_eq!(red.sealed_secrets_opened + 1, red.sealed_secrets);
    assert!(red.summary.contains("ai/new-app-credentials"), "{}", red.summary);
    let failed = eventually("the drill.failed event", WAIT, || async {
        let e = events(&c, "drill.failed").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(failed[0].message.contains("ai/new-app-credentials"), "{:?}", failed[0]);
    assert_eq!(cli(&["keys", "status", "--config", &admin]).await.unwrap(), ExitCode::FAILURE);
    assert_eq!(cli(&["keys", "status", "-o", "json", "--config", &admin]).await.unwrap(), ExitCode::FAILURE);

    // The controller renews; the agent reports the new key; the drill turns green.
    api.put(renewed.secret("sealed-secrets-keyrenewed")).unwrap();
    let green_again = eventually("green again once the vault has the renewed key", WAIT, || async {
        let d = drill(&c).await;
        (d.passed && d.commit == second_commit && d.keys == 2).then_some(d)
    })
    .await;
    assert_eq!(green_again.sealed_secrets_opened, green_again.sealed_secrets);
    eventually("a second drill.passed event", WAIT, || async {
        (events(&c, "drill.passed").await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(events(&c, "drill.failed").await.len(), 1, "one red spell, one event");

    // The result outlives a restart.
    c.restart().await;
    c.coordinator().set_drill_scratch_dir(scratch.path().to_owned());
    let kept = drill(&c).await;
    assert!(kept.ran && kept.passed && kept.commit == second_commit, "{kept:?}");

    // An unreachable repository (nothing listens on port 1): red, said as such.
    c.set_spec(&spec("ssh://git@127.0.0.1:1/elysium.git")).await;
    let unreachable = eventually("the unreachable repository reported", WAIT, || async {
        let d = drill(&c).await;
        (d.repository.starts_with("ssh://") && d.ran).then_some(d)
    })
    .await;
    assert!(!unreachable.passed);
    assert_eq!(unreachable.commit, "");
    assert_eq!(unreachable.failures.len(), 1, "{:?}", unreachable.failures);
    assert_eq!(unreachable.failures[0].check, "repository");
    assert!(
        unreachable.failures[0].detail.contains("git clone of ssh://git@127.0.0.1:1/elysium.git"),
        "{:?}",
        unreachable.failures[0]
    );
    eventually("a drill.failed event for it", WAIT, || async {
        let e = events(&c, "drill.failed").await;
        e.iter().any(|e| e.message.contains("repository: git clone")).then_some(())
    })
    .await;

    // Drills stop with the section; the last one's key file is gone with it.
    c.set_spec("[k3s]\nversion = \"v1.31.4+k3s1\"\n").await;
    eventually("no drill leaves a file behind", WAIT, || async {
        (std::fs::read_dir(scratch.path()).unwrap().count() == 0).then_some(())
    })
    .await;
    let off = drill(&c).await;
    assert!(!off.configured && off.ran, "the last result is still shown: {off:?}");

    agent.stop().await;
    // The deploy key and the sealing keys are in no log line, event or status.
    let key_needles = needles(&key);
    let logs = logs.bytes();
    assert!(String::from_utf8_lossy(&logs).contains("recovery drill passed"), "the drill never logged");
    assert_absent("the logs", &logs, &key_needles);
    for k in [&current, &renewed] {
        assert_absent("the logs", &logs, &k.needles());
    }
    let all = c
        .admin()
        .await
        .list_events(pb::ListEventsRequest { after_seq: 0, limit: 1000 })
        .await
        .unwrap()
        .into_inner();
    assert_absent("the events", format!("{all:?}").as_bytes(), &key_needles);
    assert_absent("the drill status", format!("{off:?}").as_bytes(), &key_needles);
}
