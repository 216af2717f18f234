//! What one node can make the coordinator keep: a node flooding its session with
//! large results (drain results for drains it was never sent, operation results)
//! leaves the coordinator's memory, its drain book and its store bounded. Over a
//! real mTLS session to an in-process coordinator (`harness::TestCoordinator`).
//!
//! The drain-specific checks (a worker's result for a server's drain does not move
//! a rollout) are in `fleet_rollout.rs`, with the simulated fleet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use elysium_proto::v1 as pb;
use elysium_tests::harness::{TestCoordinator, TestNode};
use tokio_stream::StreamExt;

/// Results sent: 100,000 of 512 KiB is 50 GiB through the session.
const RESULTS: u64 = 100_000;
const MESSAGE_BYTES: usize = 512 * 1024;

/// The test process's resident memory (the coordinator runs in it).
fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_flooding_large_results_leaves_memory_and_the_store_bounded() {
    let c = TestCoordinator::start().await;
    let node = TestNode::new("s1");
    node.join(&c.url(), &c.token_for(pb::NodeRole::Server, 1, 600).await).await.unwrap();
    let mut session = node.session_client(&c.url()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(msg(pb::agent_message::Msg::Hello(pb::Hello {
        agent_version: "test".into(),
        ..Default::default()
    })))
    .await
    .unwrap();
    let mut replies =
        session.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();

    let baseline = vm_rss_bytes();
    let mut peak = baseline;
    // Multi-byte characters, so that any cut lands inside one at some point.
    let big: String = "é".repeat(MESSAGE_BYTES / 2);
    let sender = tokio::spawn(async move {
        for i in 0..RESULTS {
            // Half claim to be drain results (no drain was sent), half any operation.
            let operation_id = if i % 2 == 0 { format!("drain-r1-s1-{i}") } else { format!("op-{i}") };
            let r = pb::OperationResult { operation_id, success: false, message: big.clone(), generation: i };
            if tx.send(msg(pb::agent_message::Msg::Result(r))).await.is_err() {
                return None;
            }
        }
        // Handled in order: its acknowledgement means every result was.
        tx.send(msg(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
            seq: u64::MAX,
            ..Default::default()
        })))
        .await
        .ok()?;
        Some(tx)
    });
    let mut acked = false;
    let mut sampled = tokio::time::interval(Duration::from_millis(200));
    while !acked {
        tokio::select! {
            reply = replies.next() => {
                let reply = reply.expect("the session ended").expect("session error");
                if let Some(pb::coordinator_message::Msg::HeartbeatAck(a)) = reply.msg {
                    acked = a.seq == u64::MAX;
                }
            }
            _ = sampled.tick() => {
                peak = peak.max(vm_rss_bytes());
                // The drain book holds only drains the coordinator sent: none.
                assert_eq!(c.coordinator().drains_pending(), 0);
            }
        }
    }
    let _tx = sender.await.unwrap().expect("the coordinator closed the session");
    peak = peak.max(vm_rss_bytes());

    let sent = RESULTS * MESSAGE_BYTES as u64;
    let grew = peak.saturating_sub(baseline);
    eprintln!("sent {} MiB; peak RSS {} MiB (+{} MiB over the baseline)", sent >> 20, peak >> 20, grew >> 20);
    // Unbounded, the drain results alone would be 25 GiB in memory and the event
    // log's queue as much again.
    assert!(grew < 512 << 20, "the coordinator's memory grew by {} MiB", grew >> 20);
    assert_eq!(c.coordinator().drains_pending(), 0);

    // Every event this node caused is short, and there are few: its allowance is
    // a burst of 32 and then one per 2 s (this bound needs an hour's flood).
    let mut admin = c.admin().await;
    let events = elysium_tests::fleet::all_events(&mut admin).await.unwrap();
    let from_node: Vec<_> = events.iter().filter(|e| e.subject == "s1").collect();
    assert!(from_node.len() < 2000, "{} events from one node", from_node.len());
    assert!(from_node.iter().all(|e| e.message.len() <= 2048 + 64), "an event message was not cut");
    assert!(
        !from_node.iter().any(|e| e.kind.starts_with("drain.")),
        "a drain result nobody asked for was recorded"
    );
    let failed: Vec<_> = from_node.iter().filter(|e| e.kind == "operation.failed").collect();
    assert!(!failed.is_empty() && failed[0].message.contains("(cut to"), "{:?}", failed.first());
    assert!(
        from_node.iter().any(|e| e.kind == "node.events-suppressed"),
        "the dropped events were not counted in the log"
    );

    let store = std::fs::metadata(c.data_dir().join("state.redb")).unwrap().len();
    eprintln!("state.redb: {} KiB", store >> 10);
    assert!(store < 64 << 20, "state.redb is {} MiB after {} MiB sent", store >> 20, sent >> 20);
}
