//! Secrets never reach logs or error messages: a whole enrollment and session,
//! plus the usual failures, run with every log level on and captured; then the
//! capture is searched for the token's secret and for private-key material.

use std::time::Duration;

use elysium_coordinator::tokens::JoinToken;
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};
use elysium_tests::logs::LogCapture;

#[tokio::test]
async fn tokens_and_keys_never_appear_in_logs_or_errors() {
    let capture = LogCapture::global();

    let c = TestCoordinator::start().await;
    let token = c.token(1, 600).await;
    let secret = token.rsplit('.').next().unwrap().to_owned();
    assert_eq!(secret.len(), 32);

    let node = TestNode::new("alpha");
    node.join(&c.url(), &token).await.expect("join");
    let agent = node.start_agent();
    eventually("online", Duration::from_secs(10), || async { c.node("alpha").await.filter(|n| n.online) })
        .await;

    // Failures print errors: collect their text too.
    let mut errors = Vec::new();
    errors.push(TestNode::new("beta").join(&c.url(), &token).await.unwrap_err().to_string()); // reused
    let mut tampered = token.clone();
    tampered.replace_range(5..6, if &token[5..6] == "0" { "1" } else { "0" });
    errors.push(TestNode::new("gamma").join(&c.url(), &tampered).await.unwrap_err().to_string()); // pin
    errors.push(TestNode::new("delta").join("https://127.0.0.1:1", &token).await.unwrap_err().to_string()); // unreachable
    let bad = format!("{}x", &token[..token.len() - 1]);
    errors.push(TestNode::new("eps").join(&c.url(), &bad).await.unwrap_err().to_string()); // malformed
    let debug = format!("{:?}", JoinToken::parse(&token).unwrap());
    agent.stop().await;

    let logs = capture.text();
    assert!(logs.len() > 1000, "the capture saw almost nothing: {logs}");
    let key = node.host.fs.read_to_string(elysium_agent::paths::NODE_KEY).unwrap();
    let key_body: String = key.lines().nth(1).unwrap().to_owned();
    for (what, text) in [("logs", logs.as_str()), ("errors", &errors.join("\n")), ("Debug", debug.as_str())] {
        assert!(!text.contains(&secret), "the token secret appears in {what}");
        assert!(!text.contains(&key_body), "the node private key appears in {what}");
        assert!(!text.contains("PRIVATE KEY"), "private key material appears in {what}");
    }
}
