//! Named, revocable admin credentials against a real coordinator (TLS on
//! loopback, redb store), with the command line run in-process: `coordinator
//! admin create` writes a 0600 credentials file whose key never reaches a log or
//! an error, `revoke` refuses the revoked admin's very next call on the channel it
//! already had open, and the other admins keep working.

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::time::Duration;

use elysium_agent::transport::{self, Target};
use elysium_coordinator::datadir::{self, AdminConfig};
use elysium_proto::v1 as pb;
use elysium_proto::v1::admin_client::AdminClient;
use elysium_tests::harness::{TestCoordinator, eventually};
use elysium_tests::logs::LogCapture;
use tonic::Code;
use tonic::transport::Channel;

async fn cli(args: &[&str]) -> anyhow::Result<ExitCode> {
    use clap::Parser;
    let cli = elysium_node::Cli::try_parse_from(std::iter::once("elysium-node").chain(args.iter().copied()))?;
    elysium_node::run(cli).await
}

async fn client(cfg: &AdminConfig) -> AdminClient<Channel> {
    let tls = transport::mtls(&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem).expect("admin tls");
    AdminClient::new(
        transport::channel(&Target::parse(&cfg.coordinator).unwrap(), tls).await.expect("channel"),
    )
}

/// The base64 lines of a PEM key: what would show if the key leaked anywhere.
fn key_body(pem: &str) -> Vec<String> {
    pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 16).map(str::to_owned).collect()
}

#[tokio::test]
async fn a_revoked_admin_is_refused_at_once_on_its_open_channel_and_others_keep_working() {
    let logs = LogCapture::global();
    let c = TestCoordinator::start().await;
    let work = tempfile::tempdir().unwrap();
    let operator_file = work.path().join("operator.toml");
    datadir::write_admin_config(&operator_file, &c.admin_config()).unwrap();
    let operator_file = operator_file.to_str().unwrap().to_owned();

    // The operator's channel, opened and used before anything changes.
    let mut operator = client(&c.admin_config()).await;
    operator.list_tokens(pb::ListTokensRequest {}).await.expect("the operator from init is registered");

    // A second admin, created through the running coordinator.
    let bob_file = work.path().join("bob.toml");
    let bob_path = bob_file.to_str().unwrap().to_owned();
    let create = ["coordinator", "admin", "create", "bob", "--out", &bob_path, "--config", &operator_file];
    assert_eq!(cli(&create).await.unwrap(), ExitCode::SUCCESS);
    let mode = std::fs::metadata(&bob_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the credentials file holds a private key");
    let bob_cfg = datadir::load_admin_config(&bob_file).unwrap();
    assert_eq!(bob_cfg.coordinator, c.url());
    let mut bob = client(&bob_cfg).await;

    // The name is taken now; the file is not overwritten either.
    let other = work.path().join("bob2.toml");
    let again = [
        "coordinator",
        "admin",
        "create",
        "bob",
        "--out",
        other.to_str().unwrap(),
        "--config",
        &operator_file,
    ];
    let err = format!("{:#}", cli(&again).await.unwrap_err());
    assert!(err.contains("an admin named \"bob\" exists"), "{err}");
    assert!(!other.exists());
    let overwrite =
        ["coordinator", "admin", "create", "carol", "--out", &bob_path, "--config", &operator_file];
    let err = format!("{:#}", cli(&overwrite).await.unwrap_err());
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(datadir::load_admin_config(&bob_file).unwrap(), bob_cfg);

    let admins = bob.list_admins(pb::ListAdminsRequest {}).await.unwrap().into_inner().admins;
    let mut names: Vec<(&str, &str, bool)> =
        admins.iter().map(|a| (a.name.as_str(), a.created_by.as_str(), a.revoked_unix != 0)).collect();
    // Oldest first; both were made within the same second here.
    names.sort();
    assert_eq!(names, [("bob", "operator", false), ("operator", "", false)]);
    let bob_info = admins.iter().find(|a| a.name == "bob").unwrap();
    let bob_der = elysium_identity::cert::pem_to_der(&bob_cfg.cert_pem).unwrap();
    assert_eq!(bob_info.fingerprint, elysium_identity::cert::fingerprint(&bob_der));
    assert!(bob_info.expires_unix > bob_info.created_unix);

    // Bob revokes the operator.
    let revoke = ["coordinator", "admin", "revoke", "operator", "--config", &bob_path];
    assert_eq!(cli(&revoke).await.unwrap(), ExitCode::SUCCESS);

    // The operator's next call, on the very channel it had open, is refused.
    let refused = operator.list_tokens(pb::ListTokensRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("admin credentials of \"operator\"")
            && refused.message().contains("were revoked"),
        "{}",
        refused.message()
    );
    // So is every other call, and a new connection.
    let spec = operator.get_cluster_spec(pb::GetClusterSpecRequest {}).await.unwrap_err();
    assert_eq!(spec.code(), Code::Unauthenticated);
    let fresh = client(&c.admin_config()).await.list_nodes(pb::ListNodesRequest {}).await.unwrap_err();
    assert_eq!(fresh.code(), Code::Unauthenticated);
    let via_cli = ["coordinator", "admin", "list", "--config", &operator_file];
    let err = format!("{:#}", cli(&via_cli).await.unwrap_err());
    assert!(err.contains("were revoked"), "{err}");

    // Bob still works, on his channel.
    bob.list_tokens(pb::ListTokensRequest {}).await.expect("bob is still an admin");
    // He is the last valid admin: not revocable without --force.
    let last =
        bob.revoke_admin(pb::RevokeAdminRequest { name: "bob".into(), force: false }).await.unwrap_err();
    assert_eq!(last.code(), Code::FailedPrecondition);
    assert!(last.message().contains("last valid admin"), "{}", last.message());
    bob.list_tokens(pb::ListTokensRequest {}).await.expect("bob was not revoked");
    // Revoking a name that is not a valid admin says so.
    let gone =
        bob.revoke_admin(pb::RevokeAdminRequest { name: "operator".into(), force: false }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // The list and the event log say who did what.
    let admins = bob.list_admins(pb::ListAdminsRequest {}).await.unwrap().into_inner().admins;
    assert!(admins.iter().any(|a| a.name == "operator" && a.revoked_unix != 0));
    // The event log is written in the background: wait for both events.
    eventually("the admin events in the log", Duration::from_secs(10), || {
        let mut bob = bob.clone();
        async move {
            let events = bob.list_events(pb::ListEventsRequest { after_seq: 0, limit: 100 }).await.ok()?;
            let events = events.into_inner().events;
            let has = |kind: &str, subject: &str, by: &str| {
                events.iter().any(|e| e.kind == kind && e.subject == subject && e.message.starts_with(by))
            };
            (has("admin.created", "bob", "by operator") && has("admin.revoked", "operator", "by bob"))
                .then_some(())
        }
    })
    .await;

    // Bob's private key never reached a log line (the coordinator's or the CLI's).
    let text = logs.text();
    for line in key_body(&bob_cfg.key_pem) {
        assert!(!text.contains(&line), "bob's private key is in the logs");
    }
    assert!(!text.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_node_certificate_or_an_unregistered_admin_certificate_is_refused() {
    let c = TestCoordinator::start().await;
    // An admin certificate this CA signed but nobody registered (as a copy of
    // the CA key could make): TLS accepts it, the Admin service does not.
    let data = datadir::load(&c.data_dir()).unwrap();
    let issued = data.ca.issue_admin("mallory").unwrap();
    let cfg = AdminConfig {
        coordinator: c.url(),
        ca_pem: data.ca.cert_pem().to_owned(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    };
    let err = client(&cfg).await.list_nodes(pb::ListNodesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("is not registered with this coordinator"), "{}", err.message());
    // The registered operator still works.
    c.admin().await.list_nodes(pb::ListNodesRequest {}).await.unwrap();
}
