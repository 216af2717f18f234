//! Integration tests of the foundation: the real coordinator (TLS on loopback,
//! redb store) with real agents whose node is a temporary root and a fake systemd.

use std::time::Duration;

use elysium_agent::join::{JoinError, JoinOutcome};
use elysium_agent::paths;
use elysium_agent::transport::{self, Target, TransportError};
use elysium_proto::v1 as pb;
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

async fn online(c: &TestCoordinator, name: &str) -> bool {
    c.node(name).await.is_some_and(|n| n.online)
}

#[tokio::test]
async fn a_node_joins_starts_its_service_and_comes_online() {
    let c = TestCoordinator::start().await;
    let node = TestNode::new("alpha");
    let token = c.token(1, 600).await;

    let outcome = node.join(&c.url(), &token).await.expect("join");
    let JoinOutcome::Enrolled { name, id, .. } = outcome else {
        panic!("expected Enrolled, got {outcome:?}")
    };
    assert_eq!(name, "alpha");
    assert!(id.starts_with("n-"));

    // Identity on disk: key 0600, config present, unit installed, service started.
    let fs = &node.host.fs;
    assert_eq!(fs.mode(paths::NODE_KEY).unwrap(), 0o600);
    assert!(fs.read_to_string(paths::NODE_KEY).unwrap().contains("PRIVATE KEY"));
    assert!(fs.read_to_string(paths::AGENT_CONFIG).unwrap().contains(&c.url()));
    assert_eq!(fs.read_to_string(paths::UNIT_PATH).unwrap(), paths::UNIT_CONTENT);
    assert_eq!(fs.mode(paths::BINARY).unwrap(), 0o755);
    let calls = node.systemd.calls();
    assert_eq!(calls, ["daemon-reload", "enable elysium-node.service", "start elysium-node.service"]);

    // Enrolled but not yet connected: known and offline.
    let rec = c.node("alpha").await.expect("node record");
    assert!(!rec.online);
    assert_eq!(rec.inventory.unwrap().os, "Debian GNU/Linux 12 (bookworm)");
    // The hardware inventory came with the enrollment.
    let doc: serde_json::Value = serde_json::from_str(&rec.hardware_json).expect("hardware is JSON");
    assert!(doc.get("pci").is_some(), "{doc:#}");
    assert_eq!(doc["memory_bytes"], 0, "the test node has no /proc/meminfo yet");

    // The hardware changes before the agent first connects: its Hello's hash
    // no longer matches, so the coordinator asks for the new document.
    node.host.fs.write_atomic("/proc/meminfo", b"MemTotal:       16384 kB\n", 0o444).unwrap();
    let agent = node.start_agent();
    // Online (the session is registered) can be seen a moment before the Hello
    // that carries the agent version is stored: wait for both.
    let rec = eventually("alpha online with its agent version", WAIT, || async {
        c.node("alpha").await.filter(|n| n.online && !n.agent_version.is_empty())
    })
    .await;
    assert_eq!(rec.agent_version, env!("CARGO_PKG_VERSION"));
    let doc = eventually("alpha's new hardware inventory", WAIT, || async {
        let doc: serde_json::Value = serde_json::from_str(&c.node("alpha").await?.hardware_json).ok()?;
        (doc["memory_bytes"] == 16 << 20).then_some(doc)
    })
    .await;
    assert!(doc.get("pci").is_some(), "{doc:#}");
    agent.stop().await;
    eventually("alpha offline", WAIT, || async { (!online(&c, "alpha").await).then_some(()) }).await;
}

#[tokio::test]
async fn joining_again_changes_nothing_and_says_so() {
    let c = TestCoordinator::start().await;
    let node = TestNode::new("alpha");
    node.join(&c.url(), &c.token(1, 600).await).await.expect("first join");
    let key = node.host.fs.read(paths::NODE_KEY).unwrap();
    let calls = node.systemd.calls().len();

    // The node is enrolled, so the token is not even presented.
    let token = c.token(1, 600).await;
    let outcome = node.join(&c.url(), &token).await.expect("second join");
    match outcome {
        JoinOutcome::AlreadyEnrolled { name, actions } => {
            assert_eq!(name, "alpha");
            assert!(actions.is_empty(), "nothing should need doing: {actions:?}");
        }
        other => panic!("expected AlreadyEnrolled, got {other:?}"),
    }
    assert_eq!(node.host.fs.read(paths::NODE_KEY).unwrap(), key, "the key must not change");
    assert_eq!(node.systemd.calls().len(), calls, "no systemd job on a no-op re-run");
    let tokens = c.admin().await.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(tokens.iter().map(|t| t.uses_consumed).sum::<u32>(), 1, "the second token was consumed");

    // A unit file edited behind our back is repaired and the service restarted.
    node.host.fs.write_atomic(paths::UNIT_PATH, b"[Service]\nExecStart=/bin/false\n", 0o644).unwrap();
    match node.join(&c.url(), &token).await.expect("repair") {
        JoinOutcome::AlreadyEnrolled { actions, .. } => {
            let text: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
            assert!(
                text.iter().any(|a| a.contains("install /etc/systemd/system/elysium-node.service")),
                "{text:?}"
            );
            assert!(text.iter().any(|a| a.starts_with("restart")), "{text:?}");
        }
        other => panic!("expected AlreadyEnrolled, got {other:?}"),
    }
    assert_eq!(node.host.fs.read_to_string(paths::UNIT_PATH).unwrap(), paths::UNIT_CONTENT);
}

fn refused(result: Result<JoinOutcome, JoinError>) -> (Code, String) {
    match result {
        Err(JoinError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_reused_and_revoked_tokens_are_refused_and_leave_nothing() {
    let c = TestCoordinator::start().await;
    let token = c.token(1, 60).await;

    // Reuse: the first join consumes the single use.
    TestNode::new("first").join(&c.url(), &token).await.expect("first use");
    let second = TestNode::new("second");
    let (code, msg) = refused(second.join(&c.url(), &token).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(msg.contains("already used"), "{msg}");
    assert!(second.is_pristine(), "a refused join must write nothing");
    assert!(second.systemd.calls().is_empty());

    // Expiry: an hour later the token is dead.
    let token = c.token(5, 60).await;
    c.advance_clock(3600);
    let node = TestNode::new("late");
    let (code, msg) = refused(node.join(&c.url(), &token).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(msg.contains("expired"), "{msg}");
    assert!(node.is_pristine());

    // Revocation.
    let token = c.token(5, 600 * 24).await;
    let id = elysium_coordinator::tokens::JoinToken::parse(&token).unwrap().id;
    c.admin().await.revoke_token(pb::RevokeTokenRequest { id }).await.expect("revoke");
    let (_, msg) = refused(node.join(&c.url(), &token).await);
    assert!(msg.contains("revoked"), "{msg}");

    // A well-formed token the coordinator never issued.
    let forged =
        elysium_coordinator::tokens::JoinToken::generate(&c.coordinator().ca().fingerprint()).expose();
    let (code, msg) = refused(node.join(&c.url(), &forged).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(msg.contains("not known"), "{msg}");
    assert!(node.is_pristine());
    assert!(c.node("late").await.is_none());
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused_before_anything_is_sent() {
    let c = TestCoordinator::start().await;
    let token = c.token(1, 600).await;
    let parsed = elysium_coordinator::tokens::JoinToken::parse(&token).unwrap();
    let mut fp = parsed.ca_fingerprint.clone().into_bytes();
    fp[0] = if fp[0] == b'0' { b'1' } else { b'0' };
    let tampered = token.replacen(&parsed.ca_fingerprint, std::str::from_utf8(&fp).unwrap(), 1);

    let node = TestNode::new("alpha");
    match node.join(&c.url(), &tampered).await {
        Err(JoinError::Transport(TransportError::FingerprintMismatch { expected, presented, .. })) => {
            assert_eq!(presented, c.coordinator().ca().fingerprint());
            assert_ne!(expected, presented);
        }
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    assert!(node.is_pristine());
    // The token was never presented: still unused.
    let tokens = c.admin().await.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(tokens[0].uses_consumed, 0);
    // And the genuine token still works.
    node.join(&c.url(), &token).await.expect("genuine token");
}

#[tokio::test]
async fn malformed_tokens_and_unreachable_coordinators_are_clear_errors() {
    let c = TestCoordinator::start().await;
    let node = TestNode::new("alpha");
    let err = node.join(&c.url(), "K10abc::server:hunter2xyz").await.unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    assert!(!err.to_string().contains("hunter2xyz"), "the error echoes the token: {err}");

    // Nothing listens on port 1.
    let token = c.token(1, 600).await;
    let err = node.join("https://127.0.0.1:1", &token).await.unwrap_err();
    assert!(matches!(err, JoinError::Transport(TransportError::Unreachable { .. })), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(node.is_pristine());

    let err = node.join("http://127.0.0.1:1", &token).await.unwrap_err();
    assert!(err.to_string().contains("https://HOST:PORT"), "{err}");
}

#[tokio::test]
async fn node_certificates_cannot_administer_or_impersonate() {
    let c = TestCoordinator::start().await;
    let a = TestNode::new("node-a");
    let b = TestNode::new("node-b");
    a.join(&c.url(), &c.token(1, 600).await).await.unwrap();
    b.join(&c.url(), &c.token(1, 600).await).await.unwrap();

    // Node A's certificate against the Admin service.
    let fs = &a.host.fs;
    let tls = transport::mtls(
        &fs.read_to_string(paths::CA_CERT).unwrap(),
        &fs.read_to_string(paths::NODE_CERT).unwrap(),
        &fs.read_to_string(paths::NODE_KEY).unwrap(),
    )
    .unwrap();
    let channel = transport::channel(&Target::parse(&c.url()).unwrap(), tls).await.unwrap();
    let mut admin = pb::admin_client::AdminClient::new(channel.clone());
    let status = admin.list_nodes(pb::ListNodesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = admin
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 60,
            uses: 1,
            role: 0,
            labels: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Node A says it is node B: the coordinator believes the certificate only.
    let mut session = pb::node_session_client::NodeSessionClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::Hello {
        agent_version: "forged".into(),
        inventory: Some(pb::NodeInventory { hostname: "node-b".into(), ..Default::default() }),
        ..Default::default()
    };
    tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(hello)) }).await.unwrap();
    let mut stream =
        session.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    // The first message is node A's own spec.
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.msg, Some(pb::coordinator_message::Msg::Spec(_))));
    eventually("hello recorded", WAIT, || async {
        c.node("node-a").await.filter(|n| n.agent_version == "forged").map(|_| ())
    })
    .await;
    let b_rec = c.node("node-b").await.unwrap();
    assert_ne!(b_rec.agent_version, "forged", "node A's message changed node B");
    assert!(!b_rec.online);
    drop(tx);

    // The admin certificate cannot open a node session.
    let cfg = c.admin_config();
    let tls = transport::mtls(&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem).unwrap();
    let channel = transport::channel(&Target::parse(&c.url()).unwrap(), tls).await.unwrap();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let status = pb::node_session_client::NodeSessionClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn certificates_from_another_ca_and_removed_nodes_are_rejected() {
    let c = TestCoordinator::start().await;
    let other = TestCoordinator::start().await;
    let node = TestNode::new("alpha");
    node.join(&other.url(), &other.token(1, 600).await).await.unwrap();

    // A node of another coordinator, trusting our server: TLS still rejects its
    // certificate, which our CA did not sign.
    let fs = &node.host.fs;
    let tls = transport::mtls(
        c.coordinator().ca().cert_pem(),
        &fs.read_to_string(paths::NODE_CERT).unwrap(),
        &fs.read_to_string(paths::NODE_KEY).unwrap(),
    )
    .unwrap();
    let result = async {
        let channel = transport::channel(&Target::parse(&c.url()).unwrap(), tls).await?;
        let mut admin = pb::admin_client::AdminClient::new(channel);
        admin.list_nodes(pb::ListNodesRequest {}).await.map_err(|s| anyhow::anyhow!(s))?;
        anyhow::Ok(())
    }
    .await;
    assert!(result.is_err(), "a foreign certificate was accepted");

    // Removing a node ends its session and keeps it out.
    let mine = TestNode::new("beta");
    mine.join(&c.url(), &c.token(1, 600).await).await.unwrap();
    let agent = mine.start_agent();
    eventually("beta online", WAIT, || async { online(&c, "beta").await.then_some(()) }).await;
    c.admin().await.remove_node(pb::RemoveNodeRequest { name: "beta".into() }).await.unwrap();
    // Give the agent time to try reconnecting (its backoff is 50..400 ms here).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.node("beta").await.is_none(), "removed node reappeared");
    assert_eq!(c.coordinator().online_count(), 0, "the removed node still holds a session");
    agent.stop().await;
}

#[tokio::test]
async fn coordinator_restart_loses_nothing_and_agents_reconnect() {
    let mut c = TestCoordinator::start().await;
    let node = TestNode::new("alpha");
    node.join(&c.url(), &c.token(1, 600).await).await.unwrap();
    let spare = c.token(3, 600).await;
    let set = c
        .admin()
        .await
        .set_cluster_spec(pb::SetClusterSpecRequest {
            toml: "[cluster]\nname = \"kyrion\"\n".into(),
            expected_generation: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.generation, 1);
    let agent = node.start_agent();
    eventually("alpha online", WAIT, || async { online(&c, "alpha").await.then_some(()) }).await;

    c.restart().await;

    eventually("alpha back online after restart", WAIT, || async { online(&c, "alpha").await.then_some(()) })
        .await;
    let spec = c.admin().await.get_cluster_spec(pb::GetClusterSpecRequest {}).await.unwrap().into_inner();
    assert_eq!((spec.generation, spec.toml.as_str()), (1, "[cluster]\nname = \"kyrion\"\n"));
    let tokens = c.admin().await.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(tokens.len(), 2);
    TestNode::new("beta").join(&c.url(), &spare).await.expect("token survives restart");
    agent.stop().await;
}

#[tokio::test]
async fn specs_are_pushed_persisted_and_used_while_the_coordinator_is_down() {
    let mut c = TestCoordinator::start().await;
    let node = TestNode::new("alpha");
    node.join(&c.url(), &c.token(1, 600).await).await.unwrap();
    let agent = node.start_agent();
    eventually("alpha online", WAIT, || async { online(&c, "alpha").await.then_some(()) }).await;

    let mut admin = c.admin().await;
    // An invalid spec is refused and nothing changes.
    let status = admin
        .set_cluster_spec(pb::SetClusterSpecRequest { toml: "[k3z]\n".into(), expected_generation: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("k3z"), "{}", status.message());

    let spec = "[cluster]\nname = \"kyrion\"\n[agent]\nheartbeat_seconds = 5\n";
    let set = admin
        .set_cluster_spec(pb::SetClusterSpecRequest { toml: spec.into(), expected_generation: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.generation, 1);
    // Pushed to the connected agent, persisted 0600, applied and reported back.
    eventually("spec persisted on the node", WAIT, || async {
        node.host.fs.read_to_string(paths::SPEC_FILE).ok().filter(|s| s.contains("kyrion")).map(|_| ())
    })
    .await;
    assert_eq!(node.host.fs.mode(paths::SPEC_FILE).unwrap(), 0o600);
    eventually("applied generation reported", WAIT, || async {
        c.node("alpha")
            .await
            .filter(|n| n.applied_generation == 1 && n.reconcile_state == "converged")
            .map(|_| ())
    })
    .await;
    // Optimistic concurrency.
    let status = admin
        .set_cluster_spec(pb::SetClusterSpecRequest { toml: spec.into(), expected_generation: 7 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);

    // Coordinator gone, agent restarted: it works from the persisted spec.
    agent.stop().await;
    c.stop().await;
    node.host.fs.remove_file(paths::APPLIED_FILE).unwrap();
    let agent = node.start_agent();
    eventually("reconciled from the persisted spec", WAIT, || async {
        node.host.fs.read_to_string(paths::APPLIED_FILE).ok().filter(|s| s.contains('1')).map(|_| ())
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn oversized_and_garbage_requests_get_a_status_not_a_crash() {
    let c = TestCoordinator::start().await;
    let token = c.token(1, 600).await;
    let pin = transport::PinnedCa::new(&c.coordinator().ca().fingerprint());
    let tls = transport::join_tls(pin).unwrap();
    let channel = transport::channel(&Target::parse(&c.url()).unwrap(), tls).await.unwrap();
    let mut client = pb::enrollment_client::EnrollmentClient::new(channel);

    let huge =
        pb::EnrollRequest { token: token.clone(), csr_der: vec![0u8; 2 * 1024 * 1024], ..Default::default() };
    let status = client.enroll(huge).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument),
        "{status:?}"
    );

    let garbage = pb::EnrollRequest {
        token: token.clone(),
        csr_der: b"not a csr".to_vec(),
        requested_name: "alpha".into(),
        ..Default::default()
    };
    let status = client.enroll(garbage).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("signing request"), "{}", status.message());

    let bad_name = pb::EnrollRequest {
        token: token.clone(),
        csr_der: vec![1],
        requested_name: "Bad_Name".into(),
        ..Default::default()
    };
    let status = client.enroll(bad_name).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // None of it consumed the token, and the server is still fine.
    TestNode::new("alpha").join(&c.url(), &token).await.expect("join after garbage");
}

/// A step that manages `/etc/motd` and fails while `/etc/motd.lock` exists, to
/// drive the reporting path from reconciler to `nodes get`.
struct MotdStep;

#[derive(Debug)]
struct WriteMotd(String);

impl std::fmt::Display for WriteMotd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "write /etc/motd")
    }
}

impl elysium_agent::reconcile::Step for MotdStep {
    type Observed = Option<Vec<u8>>;
    type Action = WriteMotd;
    type Error = elysium_agent::reconcile::StepError;
    fn name(&self) -> &'static str {
        "Motd"
    }
    async fn observe(
        &self,
        host: &elysium_host::Host,
        _: &elysium_agent::reconcile::Desired,
    ) -> Result<Self::Observed, elysium_agent::reconcile::StepError> {
        Ok(host.fs.read_optional("/etc/motd").unwrap())
    }
    fn plan(&self, desired: &elysium_agent::reconcile::Desired, observed: &Self::Observed) -> Vec<WriteMotd> {
        let want = desired.spec.cluster.name.clone();
        if observed.as_deref() == Some(want.as_bytes()) { vec![] } else { vec![WriteMotd(want)] }
    }
    async fn apply(
        &self,
        host: &elysium_host::Host,
        a: &WriteMotd,
    ) -> Result<(), elysium_agent::reconcile::StepError> {
        if host.fs.exists("/etc/motd.lock") {
            return Err(elysium_agent::reconcile::StepError {
                step: "Motd",
                message: "/etc/motd is locked".into(),
            });
        }
        host.fs.write_atomic("/etc/motd", a.0.as_bytes(), 0o644).unwrap();
        Ok(())
    }
}

#[tokio::test]
async fn step_conditions_reach_the_node_record() {
    let c = TestCoordinator::start().await;
    let node = TestNode::new("alpha");
    node.join(&c.url(), &c.token(1, 600).await).await.unwrap();
    node.host.fs.write_atomic("/etc/motd.lock", b"", 0o644).unwrap();
    let agent = node.start_agent_with(elysium_agent::reconcile::Reconciler::default().with_step(MotdStep));
    c.set_spec("[cluster]\nname = \"kyrion\"\n").await;

    let failed = eventually("failing condition reported", WAIT, || async {
        c.node("alpha").await.filter(|n| n.reconcile_state == "failed")
    })
    .await;
    assert_eq!(failed.applied_generation, 0, "a failed pass must not count as applied");
    let cond = &failed.conditions[0];
    assert_eq!((cond.r#type.as_str(), cond.status.as_str()), ("Motd", "False"));
    assert!(cond.message.contains("locked"), "{cond:?}");

    // Fix the cause and ask for a new pass (a new spec generation triggers one).
    node.host.fs.remove_file("/etc/motd.lock").unwrap();
    c.admin()
        .await
        .set_cluster_spec(pb::SetClusterSpecRequest {
            toml: "[cluster]\nname = \"kyrion\"\n".into(),
            expected_generation: 1,
        })
        .await
        .unwrap();
    let ok = eventually("converged condition reported", WAIT, || async {
        c.node("alpha").await.filter(|n| n.reconcile_state == "converged" && n.applied_generation == 2)
    })
    .await;
    assert_eq!(ok.conditions[0].status, "True");
    assert_eq!(node.host.fs.read_to_string("/etc/motd").unwrap(), "kyrion");
    agent.stop().await;
}

#[tokio::test]
async fn dry_run_verifies_the_coordinator_and_changes_nothing() {
    let c = TestCoordinator::start().await;
    let token = c.token(1, 600).await;
    let node = TestNode::new("alpha");
    let mut opts = node.options(&c.url(), &token);
    opts.dry_run = true;
    let outcome = elysium_agent::join::join(&node.host, &opts, &mut |_| {}).await.expect("dry run");
    let JoinOutcome::Planned(actions) = outcome else { panic!("expected a plan, got {outcome:?}") };
    let text: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
    assert!(text[0].starts_with("verify that"), "{text:?}");
    assert!(text.iter().any(|a| a.contains("enroll as node \"alpha\"")), "{text:?}");
    assert!(text.iter().any(|a| a.starts_with("start elysium-node.service")), "{text:?}");
    assert!(node.is_pristine(), "a dry run wrote to the node");
    assert!(node.systemd.calls().is_empty(), "a dry run called systemd");
    let tokens = c.admin().await.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(tokens[0].uses_consumed, 0, "a dry run consumed the token");

    // A dry run against an impostor still fails: verification is real.
    let other = TestCoordinator::start().await;
    let err = elysium_agent::join::join(
        &node.host,
        &{
            let mut o = node.options(&other.url(), &token);
            o.dry_run = true;
            o
        },
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, JoinError::Transport(TransportError::FingerprintMismatch { .. })), "{err:?}");
}

/// Sessions carry only the hash of the node's hardware document: the document
/// came with enrollment, and the coordinator asks for it again only when the
/// hash differs. (Thousands of sessions each receiving a few KiB would keep a
/// receive buffer that size per session.)
#[tokio::test]
async fn the_hardware_document_is_sent_again_only_when_it_changes() {
    use elysium_tests::fleet::{self, Fleet, FleetConfig};
    let c = TestCoordinator::start().await;
    let names: Vec<String> = (0..3).map(|i| format!("sim-{i}")).collect();
    let ids = fleet::enroll(&c.url(), &c.token(3, 600).await, pb::NodeRole::Agent, names.clone(), 2)
        .await
        .expect("enroll");
    let enrolled = fleet::this_machine_hardware();
    for n in &names {
        assert_eq!(c.node(n).await.unwrap().hardware_json, enrolled, "{n}: stored at enrollment");
    }

    // Connect until every agent has had two heartbeats acknowledged: the
    // coordinator answers a Hello (with a request, if any) before anything after it.
    async fn run(c: &TestCoordinator, ids: Vec<fleet::Identity>, hardware: &str, legacy: bool) -> u64 {
        let mut config = FleetConfig::new(&c.url());
        config.heartbeat = Duration::from_millis(100);
        config.hardware_json = hardware.into();
        config.legacy_hello = legacy;
        let n = ids.len();
        let fleet = Fleet::start(config, ids).await.expect("fleet");
        fleet.wait_connected(n, WAIT).await.expect("connected");
        eventually("heartbeats acknowledged", WAIT, || async {
            (fleet.stats().acks >= 2 * n as u64).then_some(())
        })
        .await;
        fleet.stats().hardware_requests
    }
    assert_eq!(run(&c, ids.clone(), &enrolled, false).await, 0, "unchanged hardware was asked for");

    let changed = enrolled.replacen('{', r#"{"added_disk":"nvme1n1","#, 1);
    assert_eq!(
        run(&c, ids.clone(), &changed, false).await,
        3,
        "changed hardware not asked for once per node"
    );
    for n in &names {
        let stored = eventually("the new document stored", WAIT, || async {
            Some(c.node(n).await?.hardware_json).filter(|h| *h == changed)
        })
        .await;
        assert_eq!(stored, changed);
    }
    // Stored, so the next connections carry the hash alone again.
    assert_eq!(
        run(&c, ids.clone(), &changed, false).await,
        0,
        "hardware asked for again after it was stored"
    );

    // Agents from before the hash send the document in the Hello: stored
    // as it comes, never asked for.
    let legacy = changed.replacen('{', r#"{"old_agent":true,"#, 1);
    assert_eq!(run(&c, ids.clone(), &legacy, true).await, 0, "an old agent was asked for its hardware");
    for n in &names {
        eventually("the old agent's document stored", WAIT, || async {
            Some(c.node(n).await?.hardware_json).filter(|h| *h == legacy)
        })
        .await;
    }
    // ...with its hash, so the same hardware behind an upgraded agent is not asked for.
    assert_eq!(run(&c, ids, &legacy, false).await, 0, "stored from a Hello, then asked for again");
}
