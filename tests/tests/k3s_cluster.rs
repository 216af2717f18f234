//! The coordinator's K3s cluster flow: the first server initialises with a
//! coordinator-generated secret, reports the secure K10 token, and only then do
//! the other nodes receive it with the first server's URL.

use elysium_agent::state::K3sAssignedRole;
use std::time::Duration;

use elysium_proto::v1 as pb;
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_cluster_token_flows_from_the_first_server_to_the_others() {
    let c = TestCoordinator::start().await;
    c.set_spec("[k3s]\nversion = \"v1.31.4+k3s1\"\n").await;

    let server = TestNode::new("s1");
    server.join(&c.url(), &c.token_for(pb::NodeRole::Server, 1, 600).await).await.unwrap();
    let worker = TestNode::new("w1");
    worker.join(&c.url(), &c.token(1, 600).await).await.unwrap();
    let second = TestNode::new("s2");
    second.join(&c.url(), &c.token_for(pb::NodeRole::Server, 1, 600).await).await.unwrap();

    // Enrollment hands out the assignment already.
    let first = server.held_spec().unwrap().k3s.expect("assignment for s1");
    assert_eq!(first.role, K3sAssignedRole::ServerInit);
    assert_eq!(first.token.len(), 48, "the first server gets the coordinator's hex secret");
    let w = worker.held_spec().unwrap().k3s.expect("assignment for w1");
    assert_eq!(w.role, K3sAssignedRole::Agent);
    assert!(w.token.is_empty(), "a joining node must wait for the secure token");
    assert_eq!(second.held_spec().unwrap().k3s.unwrap().role, K3sAssignedRole::Server);

    // The worker's agent runs; the first server reports its token over its session.
    let worker_agent = worker.start_agent();
    let second_agent = second.start_agent();
    let mut session = server.session_client(&c.url()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::Hello {
        agent_version: "test".into(),
        inventory: Some(pb::NodeInventory { addresses: vec!["10.20.30.40".into()], ..Default::default() }),
        ..Default::default()
    };
    tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(hello)) }).await.unwrap();
    let secure = format!("K10{}::server:{}", "ab".repeat(32), first.token);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::K3s(pb::K3sReport {
            server_token: secure.clone(),
            version: "v1.31.4+k3s1".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let _stream = session.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();

    // The second server gets the server token; the worker still nothing: it joins
    // with the agent token only, once s1 runs with it.
    let held = eventually("token pushed to s2", WAIT, || async {
        second.held_spec().and_then(|h| h.k3s).filter(|k| !k.token.is_empty())
    })
    .await;
    assert_eq!(held.token, secure);
    assert!(!held.agent_token.is_empty(), "every server configures the agent token");
    assert_eq!(held.agent_token, first.agent_token);
    assert!(worker.held_spec().unwrap().k3s.unwrap().token.is_empty());
    let agent_secure = format!("K10{}::node:{}", "ab".repeat(32), first.agent_token);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::K3s(pb::K3sReport {
            server_token: secure.clone(),
            agent_token: agent_secure.clone(),
            version: "v1.31.4+k3s1".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();

    // Pushed to the connected worker, persisted (0600) with the URL from s1's address.
    let held = eventually("token pushed to w1", WAIT, || async {
        worker.held_spec().and_then(|h| h.k3s).filter(|k| !k.token.is_empty())
    })
    .await;
    assert_eq!(held.token, agent_secure);
    assert!(held.agent_token.is_empty());
    assert_eq!(held.server_url, "https://10.20.30.40:6443");
    assert_eq!(worker.host.fs.mode(elysium_agent::paths::SPEC_FILE).unwrap(), 0o600);
    let on_disk = std::fs::read_to_string(worker.host.fs.resolve(elysium_agent::paths::SPEC_FILE)).unwrap();
    assert!(!on_disk.contains(&first.token), "the worker's spec holds the server token");

    // A node that is not the first server cannot replace the token.
    let mut rogue = worker.session_client(&c.url()).await;
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    tx2.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::K3s(pb::K3sReport {
            server_token: "K10evil::server:x".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let _rogue_stream = rogue.session(tokio_stream::wrappers::ReceiverStream::new(rx2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A node enrolling now gets the secure token at once; it survives a restart.
    let late = TestNode::new("w2");
    late.join(&c.url(), &c.token(1, 600).await).await.unwrap();
    assert_eq!(late.held_spec().unwrap().k3s.unwrap().token, agent_secure);
    let events =
        c.admin().await.list_events(pb::ListEventsRequest { after_seq: 0, limit: 100 }).await.unwrap();
    let events = events.into_inner().events;
    assert!(events.iter().any(|e| e.kind == "k3s.token" && e.subject == "s1"));
    assert!(events.iter().any(|e| e.kind == "k3s.agent-token" && e.subject == "s1"));
    assert!(
        events.iter().all(|e| !e.message.contains(&first.token) && !e.message.contains(&first.agent_token)),
        "a token leaked into the event log"
    );
    drop(tx);
    worker_agent.stop().await;
    second_agent.stop().await;
}
