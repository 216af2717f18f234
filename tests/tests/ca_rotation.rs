//! The coordinator's CA replaced under a running fleet, with the command line run
//! in-process against a real coordinator (TLS on loopback) and a real agent on a
//! temporary root: the node renews onto the new CA over its open session and
//! never rejoins, a token made before the rotation still joins a node, the
//! rotation does not finish while someone would be locked out, and once it has
//! finished nothing of the old CA is trusted any more.

use std::process::ExitCode;
use std::time::Duration;

use elysium_agent::paths;
use elysium_agent::transport::{self, Target};
use elysium_coordinator::datadir;
use elysium_proto::v1 as pb;
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};

const WAIT: Duration = Duration::from_secs(30);

async fn cli(args: &[&str]) -> anyhow::Result<ExitCode> {
    use clap::Parser;
    let cli = elysium_node::Cli::try_parse_from(std::iter::once("elysium-node").chain(args.iter().copied()))?;
    elysium_node::run(cli).await
}

fn cas_in(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

/// Whether an admin call answers with these credentials.
async fn admin_answers(ca_pem: &str, cert_pem: &str, key_pem: &str, url: &str) -> bool {
    let Ok(tls) = transport::mtls(ca_pem, cert_pem, key_pem) else { return false };
    let Ok(channel) = transport::channel(&Target::parse(url).unwrap(), tls).await else { return false };
    pb::admin_client::AdminClient::new(channel).list_nodes(pb::ListNodesRequest {}).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_moves_to_a_new_ca_without_rejoining_and_the_old_ca_is_dropped() {
    let c = TestCoordinator::start().await;
    let data = c.data_dir();
    let data_arg = data.to_str().unwrap().to_owned();
    // The data directory's admin file, pointed at the test's port: the CLI finds
    // the running coordinator through it.
    let admin_file = data.join(datadir::ADMIN_FILE);
    datadir::replace_admin_config(&admin_file, &c.admin_config()).unwrap();
    let admin_arg = admin_file.to_str().unwrap().to_owned();

    let node = TestNode::new("alpha");
    node.join(&c.url(), &c.token(1, 600).await).await.expect("join");
    let before_rotation_token = c.token(1, 600).await;
    // A second admin, who will not renew.
    let bob_file = c.tmp.path().join("bob.toml");
    let bob_arg = bob_file.to_str().unwrap().to_owned();
    assert_eq!(
        cli(&["coordinator", "admin", "create", "bob", "--out", &bob_arg, "--config", &admin_arg])
            .await
            .unwrap(),
        ExitCode::SUCCESS
    );
    let bob = datadir::load_admin_config(&bob_file).unwrap();
    let agent = node.start_agent();
    let enrolled =
        eventually("alpha online", WAIT, || async { c.node("alpha").await.filter(|n| n.online) }).await;
    let old_ca_pem = node.host.fs.read_to_string(paths::CA_CERT).unwrap();
    let old_node_cert = node.host.fs.read_to_string(paths::NODE_CERT).unwrap();
    let old_node_key = node.host.fs.read_to_string(paths::NODE_KEY).unwrap();
    assert_eq!(cas_in(&old_ca_pem), 1);
    assert!(!enrolled.certificate_issuer.is_empty(), "the record names the issuing CA");

    // Step 1. Nothing changes on --dry-run.
    assert_eq!(
        cli(&["coordinator", "certs", "rotate-ca", "--data-dir", &data_arg, "--dry-run"]).await.unwrap(),
        ExitCode::SUCCESS
    );
    assert!(datadir::load(&data).unwrap().rotation.is_none());
    assert_eq!(
        cli(&["coordinator", "certs", "rotate-ca", "--data-dir", &data_arg]).await.unwrap(),
        ExitCode::SUCCESS
    );
    let new_ca = datadir::load(&data).unwrap().ca;
    assert_ne!(new_ca.subject(), enrolled.certificate_issuer);
    c.coordinator().check_certificates_now();

    // The node is sent both CAs and renews onto the new one over its session,
    // without rejoining: same id, online again with a certificate of the new CA.
    let renewed = eventually("alpha renewed onto the new CA", WAIT, || async {
        let n = c.node("alpha").await?;
        (n.online && n.certificate_issuer == new_ca.subject() && n.pending_certificate_sha256.is_empty())
            .then_some(n)
    })
    .await;
    assert_eq!(renewed.id, enrolled.id);
    let during_pem = node.host.fs.read_to_string(paths::CA_CERT).unwrap();
    assert_eq!(cas_in(&during_pem), 2, "the node trusts both CAs during the rotation");

    // A token made before the rotation pins the old CA: it still joins a node
    // (through the cross certificate), whose certificate the new CA signs.
    let beta = TestNode::new("beta");
    beta.join(&c.url(), &before_rotation_token).await.expect("join with a token made before the rotation");
    assert_eq!(c.node("beta").await.unwrap().certificate_issuer, new_ca.subject());
    // Bob's file knows only the old CA, and his certificate is the old CA's: both
    // still work during the rotation.
    assert_eq!(cas_in(&bob.ca_pem), 1);
    assert!(
        admin_answers(&bob.ca_pem, &bob.cert_pem, &bob.key_pem, &c.url()).await,
        "old-CA admin during the rotation"
    );

    // Step 2 is refused while the admin still holds a certificate of the old CA.
    let err =
        cli(&["coordinator", "certs", "rotate-ca", "--data-dir", &data_arg, "--finish"]).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("admin operator") && text.contains("admin bob") && text.contains("admin renew"),
        "{text}"
    );
    assert!(!text.contains("node alpha"), "alpha renewed: {text}");
    assert!(datadir::load(&data).unwrap().rotation.is_some(), "a refused finish changes nothing");

    // The admin renews (a new key, the old certificate revoked), then it finishes.
    let before = datadir::load_admin_config(&admin_file).unwrap();
    assert_eq!(
        cli(&["coordinator", "admin", "renew", "--config", &admin_arg]).await.unwrap(),
        ExitCode::SUCCESS
    );
    let renewed_admin = datadir::load_admin_config(&admin_file).unwrap();
    assert_ne!(renewed_admin.key_pem, before.key_pem);
    assert!(
        !admin_answers(&renewed_admin.ca_pem, &before.cert_pem, &before.key_pem, &c.url()).await,
        "the old admin certificate is revoked"
    );
    let err =
        cli(&["coordinator", "certs", "rotate-ca", "--data-dir", &data_arg, "--finish"]).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("admin bob") && !text.contains("admin operator"), "{text}");
    // Bob is locked out on purpose.
    assert_eq!(
        cli(&["coordinator", "certs", "rotate-ca", "--data-dir", &data_arg, "--finish", "--force"])
            .await
            .unwrap(),
        ExitCode::SUCCESS
    );
    assert!(datadir::load(&data).unwrap().rotation.is_none());
    c.coordinator().check_certificates_now();

    // The node's open session is sent the bundle without the old CA.
    eventually("alpha trusts only the new CA", WAIT, || async {
        let pem = node.host.fs.read_to_string(paths::CA_CERT).ok()?;
        (cas_in(&pem) == 1 && pem != old_ca_pem).then_some(())
    })
    .await;
    // It reconnects with what it holds now.
    agent.stop().await;
    let agent = node.start_agent();
    eventually("alpha online after the rotation", WAIT, || async {
        c.node("alpha").await.filter(|n| n.online)
    })
    .await;
    agent.stop().await;

    // Nothing of the old CA is trusted: not the old CA to verify the server, not a
    // certificate it signed.
    let admin = datadir::load_admin_config(&admin_file).unwrap();
    assert_eq!(cas_in(&admin.ca_pem), 1);
    assert!(
        admin_answers(&admin.ca_pem, &admin.cert_pem, &admin.key_pem, &c.url()).await,
        "the renewed admin works"
    );
    eventually("the server stops presenting the old CA", WAIT, || async {
        (!admin_answers(&old_ca_pem, &admin.cert_pem, &admin.key_pem, &c.url()).await).then_some(())
    })
    .await;
    assert!(
        !admin_answers(&admin.ca_pem, &bob.cert_pem, &bob.key_pem, &c.url()).await,
        "an admin certificate of the old CA is refused"
    );
    // The node's replaced certificate (the old CA's) opens no session either.
    let tls = transport::mtls(&admin.ca_pem, &old_node_cert, &old_node_key).unwrap();
    let refused = match transport::channel(&Target::parse(&c.url()).unwrap(), tls).await {
        Err(_) => true,
        Ok(ch) => pb::node_session_client::NodeSessionClient::new(ch)
            .session(tokio_stream::iter(Vec::<pb::AgentMessage>::new()))
            .await
            .is_err(),
    };
    assert!(refused, "the old node certificate is refused");
}
