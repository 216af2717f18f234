//! Node certificates renew themselves over the session: the real coordinator on a
//! clock moved forward, a real agent on a temporary root.

use std::time::Duration;

use elysium_agent::{node_cert, paths};
use elysium_coordinator::pki::Lifetimes;
use elysium_proto::v1 as pb;
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

fn fingerprint_on_disk(node: &TestNode, path: &str) -> String {
    let pem = node.host.fs.read_to_string(path).expect("certificate on the node");
    elysium_identity::fingerprint(&elysium_identity::pem_to_der(&pem).expect("PEM"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_its_certificate_over_the_session_stays_online_and_the_old_one_is_refused() {
    // One hour: renewal once 20 minutes remain, 40 minutes after issue. (The
    // coordinator's clock may run ahead of the real one by at most the hour its
    // certificates are backdated: TLS checks the new certificate by the real clock.)
    let lifetimes = Lifetimes { node: Duration::from_secs(3600), ..Lifetimes::default() };
    let c = TestCoordinator::start_with(lifetimes).await;
    let node = TestNode::new("alpha");
    node.join(&c.url(), &c.token(1, 600).await).await.expect("join");
    let enrolled = c.node("alpha").await.expect("record");
    let old = enrolled.certificate_sha256.clone();
    assert_eq!(fingerprint_on_disk(&node, paths::NODE_CERT), old);
    assert!(enrolled.certificate_not_after_unix > 0);
    // Old credentials, kept to try them after the renewal.
    let old_client = node.session_client(&c.url()).await;

    // Not yet due: the node comes online and keeps its certificate.
    let agent = node.start_agent();
    eventually("alpha online", WAIT, || async { c.node("alpha").await.filter(|n| n.online).map(|_| ()) })
        .await;
    assert_eq!(c.node("alpha").await.unwrap().pending_certificate_sha256, "");
    agent.stop().await;

    // 45 minutes on: due. The next session is asked to renew, the node sends a
    // CSR, reconnects with the new certificate and moves it into place.
    c.advance_clock(45 * 60);
    let agent = node.start_agent();
    let renewed = eventually("alpha online with a renewed certificate", WAIT, || async {
        let n = c.node("alpha").await?;
        (n.online && n.certificate_sha256 != old && n.pending_certificate_sha256.is_empty()).then_some(n)
    })
    .await;
    assert!(renewed.certificate_not_after_unix > enrolled.certificate_not_after_unix);
    let new = renewed.certificate_sha256.clone();
    eventually("the new pair moved into place", WAIT, || async {
        (fingerprint_on_disk(&node, paths::NODE_CERT) == new
            && !node.host.fs.exists(node_cert::NEXT_CERT)
            && !node.host.fs.exists(node_cert::NEXT_KEY))
        .then_some(())
    })
    .await;
    assert_eq!(node.host.fs.mode(paths::NODE_KEY).unwrap(), 0o600);
    let events = c.admin().await.list_events(pb::ListEventsRequest { after_seq: 0, limit: 1000 }).await;
    let events = events.unwrap().into_inner().events;
    assert!(events.iter().any(|e| e.kind == "certs.node_renewed" && e.subject == "alpha"), "{events:?}");

    // The certificate it replaced no longer opens a session, though the CA signed it.
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(1);
    let mut old_client = old_client;
    let refused = old_client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("not node alpha's current certificate"), "{refused}");
    // And the node stays online on its new one.
    assert!(c.node("alpha").await.unwrap().online);
    // Not asked again: the new certificate is far from its renewal.
    assert_eq!(c.node("alpha").await.unwrap().certificate_sha256, new);
    agent.stop().await;
}
