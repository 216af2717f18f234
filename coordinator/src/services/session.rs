//! `NodeSession.Session`: the long-lived stream between an agent and the coordinator.
//!
//! The node is whoever its client certificate names; nothing in the stream can
//! change that. The coordinator pushes the node's spec at once and again whenever
//! the cluster spec changes, acknowledges heartbeats, and records what the agent
//! reports. A newer session of the same node replaces the older one.

use std::pin::Pin;
use std::sync::Arc;

use elysium_proto::v1 as pb;
use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::require_node;
use super::status::{blocking, internal};
use super::vault;
use crate::convert;
use crate::state::{Coordinator, LiveSession, Outbound, OutboundMessage};
use crate::store::NodeRecord;

/// Outbound messages buffered per session before the sender waits.
const OUTBOUND_BUFFER: usize = 16;

pub(crate) struct SessionService {
    coordinator: Arc<Coordinator>,
}

impl SessionService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::node_session_server::NodeSession for SessionService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let node_id = require_node(&request)?;
        let c = self.coordinator.clone();
        let store = c.store.clone();
        let id = node_id.clone();
        // Without the hardware document: the session never reads it, and the
        // store keeps it when the session writes the record (Store::update_node).
        let node =
            blocking(move || store.get_node_brief(&id)).await?.map_err(internal)?.ok_or_else(|| {
                Status::permission_denied(
                    "this node was removed from the coordinator; join it again with a new token",
                )
            })?;

        let session_id = c.next_session_id();
        let end = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel::<OutboundMessage>(OUTBOUND_BUFFER);
        let tx = Outbound::new(tx);
        let previous = c.live().insert(
            node.id.clone(),
            LiveSession { session_id, end: end.clone(), last_seen_unix: c.now(), commands: tx.clone() },
        );
        if let Some(previous) = previous {
            // The node reconnected before we noticed the old stream die.
            previous.end.notify_one();
        }
        tracing::info!(node = %node.name, session_id, "node session opened");

        let inbound = request.into_inner();
        tokio::spawn(drive(c, node, session_id, end, inbound, tx));
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(ReceiverStream::new(rx), |m| *m))))
    }
}

fn spec_message(spec: pb::NodeSpec) -> Result<pb::CoordinatorMessage, Status> {
    Ok(pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::Spec(spec)) })
}

/// Runs one session until the agent goes away, the node is removed, a newer
/// session replaces it or the coordinator shuts down.
async fn drive(
    c: Arc<Coordinator>,
    mut node: NodeRecord,
    session_id: u64,
    end: Arc<Notify>,
    mut inbound: Streaming<pb::AgentMessage>,
    tx: Outbound,
) {
    let mut spec_rx = c.cluster.subscribe();
    let mut sent = spec_rx.borrow_and_update().node_spec(&node);
    // `finish` is boxed for the same reason as `handle` below.
    if tx.send(spec_message(sent.clone())).await.is_err() {
        return Box::pin(finish(&c, &mut node, session_id)).await;
    }
    // What this session last sent, minus the cluster spec's TOML: that follows
    // from the generation, and a copy per session is 2 KiB for the example spec.
    sent.cluster_spec_toml = String::new();
    let mut announced_online = false;
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => {
                    // Boxed: inline, the handler's future (store writes, K3s and
                    // vault updates) made every idle session's task 5.2 KiB
                    // instead of 3.4 KiB (docs/BENCHMARKS-fleet.md); a message
                    // now costs one short-lived allocation.
                    if let Some(reply) = Box::pin(handle(&c, &mut node, msg, &mut announced_online)).await
                        && tx.send(Ok(reply)).await.is_err()
                    {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node = %node.name, %status, "session stream error");
                    break;
                }
            },
            changed = spec_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                // Most changes (another node's rollout phase, a secret this
                // node does not use) leave this node's spec as it was.
                let (spec, toml) = {
                    let state = spec_rx.borrow_and_update();
                    let spec = state.node_spec_without_toml(&node);
                    if spec == sent {
                        continue;
                    }
                    // From the same state as the rest: generation and TOML agree.
                    let toml = state.spec.toml().to_owned();
                    (spec, toml)
                };
                sent = spec.clone();
                if tx.send(spec_message(pb::NodeSpec { cluster_spec_toml: toml, ..spec })).await.is_err() {
                    break;
                }
            }
            () = end.notified() => break,
        }
    }
    Box::pin(finish(&c, &mut node, session_id)).await;
}

/// Applies one agent message; returns what to answer, if anything.
async fn handle(
    c: &Arc<Coordinator>,
    node: &mut NodeRecord,
    msg: pb::AgentMessage,
    announced_online: &mut bool,
) -> Option<pb::CoordinatorMessage> {
    use pb::agent_message::Msg;
    let now = c.now();
    if let Some(live) = c.live().get_mut(&node.id) {
        live.last_seen_unix = now;
    }
    match msg.msg? {
        Msg::Hello(hello) => {
            node.agent_version = hello.agent_version;
            if let Some(inv) = hello.inventory {
                node.inventory = convert::inventory_from_pb(inv);
            }
            node.applied_generation = hello.applied_generation;
            node.last_seen_unix = now;
            // Agents send only the hash of their hardware document; the
            // document itself came with enrollment, and is asked for again only
            // when the hardware changed (or the store lost it). Agents from
            // before the hash send the document in every Hello.
            let ask_for_hardware = !hello.hardware_sha256.is_empty()
                && hello.hardware_json.is_empty()
                && hello.hardware_sha256 != node.hardware_sha256;
            if hello.hardware_json.is_empty() {
                persist(c, node).await;
            } else {
                persist_hardware(c, node, hello.hardware_json).await;
            }
            k3s_hello(c, node).await;
            if !*announced_online {
                *announced_online = true;
                c.event("node.online", &node.name, &format!("agent {}", node.agent_version));
            }
            ask_for_hardware.then_some(pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::HardwareRequest(pb::HardwareRequest {})),
            })
        }
        Msg::Hardware(report) => {
            if !report.hardware_json.is_empty() {
                tracing::info!(node = %node.name, bytes = report.hardware_json.len(), "hardware inventory updated");
                persist_hardware(c, node, report.hardware_json).await;
            }
            None
        }
        Msg::Heartbeat(hb) => {
            // Heartbeats are frequent: write to the store only when what the node
            // reports changes, and keep last-seen in memory meanwhile.
            let conditions: Vec<_> = hb.conditions.into_iter().map(convert::condition_from_pb).collect();
            let state = convert::reconcile_state_name(hb.state, hb.reconcile_state);
            let changed = hb.applied_generation != node.applied_generation
                || state != node.reconcile_state
                || hb.reconcile_error != node.reconcile_error
                || conditions != node.conditions;
            if changed {
                node.applied_generation = hb.applied_generation;
                node.reconcile_state = state;
                node.reconcile_error = hb.reconcile_error;
                node.conditions = conditions;
                node.last_seen_unix = now;
                persist(c, node).await;
            }
            Some(pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::HeartbeatAck(pb::HeartbeatAck { seq: hb.seq })),
            })
        }
        Msg::Progress(p) => {
            tracing::info!(node = %node.name, operation = %p.operation_id, step = %p.step, percent = p.percent, "{}", p.message);
            None
        }
        Msg::K3s(report) => {
            vault::on_k3s_token(c, node, &report.server_token).await;
            k3s_report(c, node, report).await;
            None
        }
        Msg::SealingKey(report) => {
            vault::on_sealing_key(c, node, report).await;
            None
        }
        Msg::Result(r) if r.operation_id.starts_with("drain-") => {
            let outcome = if r.success { Ok(()) } else { Err(r.message.clone()) };
            c.drain_results.lock().unwrap_or_else(|p| p.into_inner()).insert(r.operation_id.clone(), outcome);
            c.rollout_kick.notify_one();
            c.event(
                if r.success { "drain.succeeded" } else { "drain.failed" },
                &node.name,
                &format!("{}: {}", r.operation_id, r.message),
            );
            None
        }
        Msg::Result(r) => {
            let kind = if r.success { "operation.succeeded" } else { "operation.failed" };
            c.event(
                kind,
                &node.name,
                &format!("{} (generation {}): {}", r.operation_id, r.generation, r.message),
            );
            None
        }
    }
}

/// Keeps the first server's URL current with the addresses it reports, and lets a
/// server that enrolled before K3s was configured claim the first-server role.
async fn k3s_hello(c: &Arc<Coordinator>, node: &NodeRecord) {
    let (cc, n) = (c.clone(), node.clone());
    let result = blocking(move || {
        cc.claim_first_server(&n)?;
        cc.update_k3s(|k| {
            if k.first_server_id.as_deref() != Some(n.id.as_str()) {
                return false;
            }
            let url = crate::k3s::server_url_from(&n.inventory.addresses);
            if url.is_none() || url == k.first_server_url {
                return false;
            }
            k.first_server_url = url;
            true
        })
    })
    .await;
    if let Ok(Err(e)) = result {
        tracing::warn!(node = %node.name, error = %e, "could not update the K3s cluster record");
    }
}

/// What a node's K3s reports: its version and any rollback (for rollouts), and
/// from the first server the secure cluster token, which everyone else then gets.
async fn k3s_report(c: &Arc<Coordinator>, node: &mut NodeRecord, report: pb::K3sReport) {
    if !report.version.is_empty()
        && (report.version != node.k3s_version
            || report.failed_version != node.k3s_failed_version
            || report.failure != node.k3s_failure)
    {
        node.k3s_version = report.version.clone();
        node.k3s_failed_version = report.failed_version.clone();
        node.k3s_failure = report.failure.clone();
        persist(c, node).await;
        c.rollout_kick.notify_one();
    }
    let is_first = c.cluster.borrow().k3s.first_server_id.as_deref() == Some(node.id.as_str());
    if is_first && !report.agent_token.is_empty() {
        k3s_agent_token_report(c, node, &report.agent_token).await;
    }
    if report.server_token.is_empty() {
        return;
    }
    if !is_first {
        // Every server may report it for the key vault; only the first one's counts here.
        if node.role != crate::tokens::Role::Server {
            tracing::warn!(node = %node.name, "ignoring a K3s token report from a node that is not the first server");
        }
        return;
    }
    if !report.server_token.starts_with("K10") {
        tracing::warn!(node = %node.name, "ignoring a K3s token report that is not in the secure K10 format");
        return;
    }
    let cc = c.clone();
    let token = report.server_token;
    let changed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = changed.clone();
    let result = blocking(move || {
        cc.update_k3s(|k| {
            if k.server_token.as_deref() == Some(token.as_str()) {
                return false;
            }
            k.server_token = Some(token);
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            true
        })
    })
    .await;
    match result {
        Ok(Ok(())) if changed.load(std::sync::atomic::Ordering::Relaxed) => {
            c.event("k3s.token", &node.name, &format!("cluster token reported (K3s {})", report.version));
        }
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(node = %node.name, error = %e, "could not store the K3s token"),
        Err(status) => tracing::warn!(node = %node.name, %status, "could not store the K3s token"),
    }
}

/// The first server's `server/agent-token`: once it holds our agent secret, K3s
/// runs with it and agent-role nodes receive the agent token (k3s.rs).
async fn k3s_agent_token_report(c: &Arc<Coordinator>, node: &NodeRecord, reported: &str) {
    let active = {
        let state = c.cluster.borrow();
        crate::k3s::is_our_agent_token(&state.k3s, reported) && !state.k3s.agent_token_active
    };
    if !active {
        return;
    }
    let cc = c.clone();
    let result = blocking(move || {
        cc.update_k3s(|k| {
            let changed = !k.agent_token_active;
            k.agent_token_active = true;
            changed
        })
    })
    .await;
    match result {
        Ok(Ok(())) => {
            c.event("k3s.agent-token", &node.name, "K3s runs with the agent token; agents join with it")
        }
        Ok(Err(e)) => {
            tracing::warn!(node = %node.name, error = %e, "could not store the K3s agent token state")
        }
        Err(status) => {
            tracing::warn!(node = %node.name, %status, "could not store the K3s agent token state")
        }
    }
}

async fn persist(c: &Arc<Coordinator>, node: &NodeRecord) {
    let store = c.store.clone();
    let n = node.clone();
    match blocking(move || store.update_node(&n)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            // Removed while connected: end the session.
            if let Some(live) = c.live().get(&node.id) {
                live.end.notify_one();
            }
        }
        Ok(Err(e)) => tracing::warn!(node = %node.name, error = %e, "could not persist node state"),
        Err(status) => tracing::warn!(node = %node.name, %status, "could not persist node state"),
    }
}

/// Stores the node's record with a new hardware document, and keeps only the
/// document's hash in the session: with thousands of sessions a copy each adds up.
async fn persist_hardware(c: &Arc<Coordinator>, node: &mut NodeRecord, doc: String) {
    node.hardware_sha256 = elysium_proto::hardware_sha256(&doc);
    node.hardware_json = doc;
    persist(c, node).await;
    node.hardware_json = String::new();
}

async fn finish(c: &Arc<Coordinator>, node: &mut NodeRecord, session_id: u64) {
    let was_current = {
        let mut live = c.live();
        match live.get(&node.id) {
            Some(s) if s.session_id == session_id => {
                node.last_seen_unix = node.last_seen_unix.max(s.last_seen_unix);
                live.remove(&node.id);
                true
            }
            _ => false,
        }
    };
    tracing::info!(node = %node.name, session_id, "node session closed");
    if was_current {
        persist(c, node).await;
        c.event("node.offline", &node.name, "session closed");
    }
}
