//! `NodeSession.Session`: the long-lived stream between an agent and the coordinator.
//!
//! The node is whoever its client certificate names; nothing in the stream can
//! change that. The coordinator pushes the node's spec at once and again whenever
//! the cluster spec changes, acknowledges heartbeats, and records what the agent
//! reports. A newer session of the same node replaces the older one.
//!
//! What a node sends is bounded here: drain results count only from the node the
//! drain went to (`state::DrainBook`), messages are cut before they are kept or
//! logged, and the store writes and events one session causes go through its
//! token buckets ([`super::pace`]).

use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use elysium_proto::v1 as pb;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{presented_leaf, require_node};
use super::pace::{EVENT_BURST, EVENT_REFILL, Pace};
use super::renewal;
use super::status::{blocking, internal};
use super::vault;
use crate::convert;
use crate::state::{Coordinator, LiveSession, Outbound, OutboundMessage, Recorded, truncate};
use crate::store::NodeRecord;

/// Outbound messages buffered per session before the sender waits.
const OUTBOUND_BUFFER: usize = 16;
/// Longest operation id, step name or version kept, logged or evented.
const MAX_ID_BYTES: usize = 128;
/// Conditions kept per node (an agent has one per step, about a dozen).
const MAX_CONDITIONS: usize = 64;
/// Longest condition message or reconcile error kept.
const MAX_STATUS_BYTES: usize = 1024;

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
        let leaf = presented_leaf(&request)?;
        let c = self.coordinator.clone();
        let store = c.store.clone();
        let id = node_id.clone();
        // Without the hardware document: the session never reads it, and the
        // store keeps it when the session writes the record (Store::update_node).
        let mut node =
            blocking(move || store.get_node_brief(&id)).await?.map_err(internal)?.ok_or_else(|| {
                Status::permission_denied(
                    "this node was removed from the coordinator; join it again with a new token",
                )
            })?;
        // The CA signed it, but only the certificate the record names opens a session.
        renewal::admit(&c, &mut node, &leaf).await?;
        let renew_at = renewal::renew_at(&c, &leaf);

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
        tokio::spawn(drive(c, node, session_id, end, inbound, tx, renew_at));
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(ReceiverStream::new(rx), |m| *m))))
    }
}

/// The node spec a session last sent, as a SHA-256 of everything in it but the
/// cluster spec's TOML (which follows from the generation). A copy of the spec
/// held its labels, secrets and K3s assignment on the heap for as long as the
/// session lived, about 1 KiB each (docs/BENCHMARKS.md, "Coordinator memory
/// after issue 14"); 32 bytes say as well whether a new one differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent([u8; 32]);

impl Sent {
    fn of(spec: &pb::NodeSpec) -> Self {
        use prost::Message;
        use sha2::Digest;
        // Every field but the maps, which are encoded in their hash order: a
        // struct literal, so that a field added to NodeSpec must be added here.
        let plain = pb::NodeSpec {
            generation: spec.generation,
            cluster_spec_toml: String::new(),
            role: spec.role,
            labels: Default::default(),
            k3s: spec.k3s.clone(),
            secrets: Default::default(),
        };
        let mut hash = sha2::Sha256::new();
        let framed = |hash: &mut sha2::Sha256, bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        framed(&mut hash, &plain.encode_to_vec());
        for map in [&spec.labels, &spec.secrets] {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort();
            framed(&mut hash, &(entries.len() as u64).to_le_bytes());
            for (k, v) in entries {
                framed(&mut hash, k.as_bytes());
                framed(&mut hash, v.as_bytes());
            }
        }
        Self(hash.finalize().into())
    }
}

fn trust_message(c: &Coordinator) -> Result<pb::CoordinatorMessage, Status> {
    Ok(pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::TrustBundle(pb::TrustBundle {
            ca_bundle_pem: c.trust_bundle(),
        })),
    })
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
    renew_at: i64,
) {
    let mut spec_rx = c.cluster.subscribe();
    let (first, toml, trust_seen, ca_seen) = {
        let state = spec_rx.borrow_and_update();
        let spec = state.node_spec_without_toml(&node);
        (spec, state.spec.toml().to_owned(), state.trust_generation, state.ca_generation)
    };
    // What this session last sent: a digest, not a copy (see `Sent`).
    let sent = Sent::of(&first);
    let mut pace = Pace::new(Instant::now());
    // The CAs to trust, on every session: a node that was offline during a step
    // of a CA rotation learns it here. `finish` is boxed for the same reason as
    // `handle` below.
    if tx.send(spec_message(pb::NodeSpec { cluster_spec_toml: toml, ..first })).await.is_err()
        || tx.send(trust_message(&c)).await.is_err()
    {
        return Box::pin(finish(&c, &mut node, session_id, &mut pace)).await;
    }
    let mut flags = Flags { announced_online: false, renewal_asked: false, trust_seen, ca_seen, sent };
    loop {
        // Each arm's work is boxed: inline, the locals of every arm took their own
        // place in every idle session's task (docs/BENCHMARKS.md, "Coordinator
        // memory after issue 14"); a message now costs a short-lived allocation.
        let flow = tokio::select! {
            msg = inbound.message() => {
                Box::pin(on_message(&c, &mut node, msg, &tx, &mut flags, renew_at, &mut pace)).await
            }
            changed = spec_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                Box::pin(on_change(&c, &node, &mut spec_rx, &tx, &mut flags)).await
            }
            // A change held back by the session's write allowance: written
            // when the allowance has a token again.
            () = tokio::time::sleep_until(pace.next_write()), if pace.dirty => {
                Box::pin(persist_paced(&c, &mut node, &mut pace)).await;
                ControlFlow::Continue(())
            }
            () = end.notified() => break,
        };
        if flow.is_break() {
            break;
        }
    }
    Box::pin(finish(&c, &mut node, session_id, &mut pace)).await;
}

/// What a session remembers between messages, besides its node record.
struct Flags {
    announced_online: bool,
    renewal_asked: bool,
    trust_seen: u64,
    ca_seen: u64,
    sent: Sent,
}

/// One message from the agent (or the end of its stream).
async fn on_message(
    c: &Arc<Coordinator>,
    node: &mut NodeRecord,
    msg: Result<Option<pb::AgentMessage>, Status>,
    tx: &Outbound,
    flags: &mut Flags,
    renew_at: i64,
    pace: &mut Pace,
) -> ControlFlow<()> {
    let msg = match msg {
        Ok(Some(msg)) => msg,
        Ok(None) => return ControlFlow::Break(()),
        Err(status) => {
            tracing::debug!(node = %node.name, %status, "session stream error");
            return ControlFlow::Break(());
        }
    };
    if let Some(pb::agent_message::Msg::CertificateRequest(request)) = msg.msg {
        // Signed only when asked for: each is a CA signature.
        if flags.renewal_asked
            && let Some(reply) = Box::pin(renewal::sign(c, node, request)).await
            && tx.send(Ok(reply)).await.is_err()
        {
            return ControlFlow::Break(());
        }
        return ControlFlow::Continue(());
    }
    // Boxed: inline, the handler's future (store writes, K3s and vault updates)
    // made every idle session's task 5.2 KiB instead of 3.4 KiB
    // (docs/BENCHMARKS-fleet.md).
    if let Some(reply) = Box::pin(handle(c, node, msg, &mut flags.announced_online, pace)).await
        && tx.send(Ok(reply)).await.is_err()
    {
        return ControlFlow::Break(());
    }
    // Asked once per session, after the node said something (its Hello at the
    // latest), when a third of the lifetime remains.
    if !flags.renewal_asked && c.now() >= renew_at {
        flags.renewal_asked = true;
        tracing::info!(node = %node.name, "asking the node to renew its certificate");
        if tx.send(Ok(renewal::renew_message())).await.is_err() {
            return ControlFlow::Break(());
        }
    }
    ControlFlow::Continue(())
}

/// The cluster state changed: what this node should hold or trust may have.
async fn on_change(
    c: &Arc<Coordinator>,
    node: &NodeRecord,
    spec_rx: &mut tokio::sync::watch::Receiver<crate::state::ClusterState>,
    tx: &Outbound,
    flags: &mut Flags,
) -> ControlFlow<()> {
    // A CA rotation's step: the new bundle, and a renewal when the CA that
    // signed this session's certificate no longer signs.
    let (trust, ca) = {
        let state = spec_rx.borrow();
        (state.trust_generation, state.ca_generation)
    };
    if trust != flags.trust_seen {
        flags.trust_seen = trust;
        if tx.send(trust_message(c)).await.is_err() {
            return ControlFlow::Break(());
        }
    }
    if ca != flags.ca_seen {
        flags.ca_seen = ca;
        flags.renewal_asked = true;
        tracing::info!(node = %node.name, "the CA changed: asking the node to renew its certificate");
        if tx.send(Ok(renewal::renew_message())).await.is_err() {
            return ControlFlow::Break(());
        }
    }
    // Most changes (another node's rollout phase, a secret this node does not
    // use) leave this node's spec as it was.
    let (spec, toml) = {
        let state = spec_rx.borrow_and_update();
        let spec = state.node_spec_without_toml(node);
        let digest = Sent::of(&spec);
        if digest == flags.sent {
            return ControlFlow::Continue(());
        }
        flags.sent = digest;
        // From the same state as the rest: generation and TOML agree.
        let toml = state.spec.toml().to_owned();
        (spec, toml)
    };
    if tx.send(spec_message(pb::NodeSpec { cluster_spec_toml: toml, ..spec })).await.is_err() {
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// Applies one agent message; returns what to answer, if anything.
async fn handle(
    c: &Arc<Coordinator>,
    node: &mut NodeRecord,
    msg: pb::AgentMessage,
    announced_online: &mut bool,
    pace: &mut Pace,
) -> Option<pb::CoordinatorMessage> {
    use pb::agent_message::Msg;
    let now = c.now();
    if let Some(live) = c.live().get_mut(&node.id) {
        live.last_seen_unix = now;
    }
    match msg.msg? {
        Msg::Hello(hello) => {
            node.agent_version = truncate(&hello.agent_version, MAX_ID_BYTES);
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
            if !hello.hardware_json.is_empty() {
                set_hardware(node, hello.hardware_json);
            }
            persist_paced(c, node, pace).await;
            k3s_hello(c, node).await;
            if !*announced_online {
                *announced_online = true;
                let message = format!("agent {}", truncate(&node.agent_version, MAX_ID_BYTES));
                node_event(c, pace, "node.online", &node.name, &message);
            }
            ask_for_hardware.then_some(pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::HardwareRequest(pb::HardwareRequest {})),
            })
        }
        Msg::Hardware(report) => {
            if !report.hardware_json.is_empty() {
                tracing::info!(node = %node.name, bytes = report.hardware_json.len(), "hardware inventory updated");
                set_hardware(node, report.hardware_json);
                persist_paced(c, node, pace).await;
            }
            None
        }
        Msg::Heartbeat(hb) => {
            // Heartbeats are frequent: write to the store only when what the node
            // reports changes, and keep last-seen in memory meanwhile.
            // Cut to size: the session keeps them, and each node's record holds them.
            let conditions: Vec<_> = hb
                .conditions
                .into_iter()
                .take(MAX_CONDITIONS)
                .map(|c| {
                    let mut c = convert::condition_from_pb(c);
                    c.kind = truncate(&c.kind, MAX_ID_BYTES);
                    c.status = truncate(&c.status, MAX_ID_BYTES);
                    c.reason = truncate(&c.reason, MAX_ID_BYTES);
                    c.message = truncate(&c.message, MAX_STATUS_BYTES);
                    c
                })
                .collect();
            let reconcile_error = truncate(&hb.reconcile_error, MAX_STATUS_BYTES);
            let state = truncate(&convert::reconcile_state_name(hb.state, hb.reconcile_state), MAX_ID_BYTES);
            let changed = hb.applied_generation != node.applied_generation
                || state != node.reconcile_state
                || reconcile_error != node.reconcile_error
                || conditions != node.conditions;
            if changed {
                node.applied_generation = hb.applied_generation;
                node.reconcile_state = state;
                node.reconcile_error = reconcile_error;
                node.conditions = conditions;
                node.last_seen_unix = now;
                persist_paced(c, node, pace).await;
            }
            Some(pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::HeartbeatAck(pb::HeartbeatAck { seq: hb.seq })),
            })
        }
        Msg::Progress(p) => {
            // Logged, not stored: still paced like events, so a node cannot fill the journal.
            let operation = truncate(&p.operation_id, MAX_ID_BYTES);
            let (step, message) = (truncate(&p.step, MAX_ID_BYTES), truncate(&p.message, MAX_ID_BYTES * 4));
            if pace.take_event(Instant::now()) {
                tracing::info!(node = %node.name, %operation, %step, percent = p.percent, "{message}");
            } else {
                tracing::debug!(node = %node.name, %operation, %step, percent = p.percent, "{message}");
            }
            None
        }
        Msg::K3s(report) => {
            vault::on_k3s_token(c, node, &report.server_token).await;
            k3s_report(c, node, report, pace).await;
            None
        }
        // Answered in `drive`, which knows whether this session asked for it.
        Msg::CertificateRequest(_) => None,
        Msg::SealingKey(report) => {
            vault::on_sealing_key(c, node, report).await;
            None
        }
        Msg::Result(r) if r.operation_id.starts_with("drain-") => {
            let operation = truncate(&r.operation_id, MAX_ID_BYTES);
            match c.drains.record(&r.operation_id, &node.id, r.success, &r.message) {
                Recorded::Accepted => {
                    c.rollout_kick.notify_one();
                    node_event(
                        c,
                        pace,
                        if r.success { "drain.succeeded" } else { "drain.failed" },
                        &node.name,
                        &format!("{operation}: {}", truncate(&r.message, MAX_STATUS_BYTES)),
                    );
                }
                Recorded::Duplicate => {
                    tracing::debug!(node = %node.name, %operation, "drain result repeated; the first stands");
                }
                refused @ (Recorded::Unknown | Recorded::WrongNode) => {
                    // Once per session: a node repeating it must not fill the journal.
                    if !pace.warned_refused {
                        pace.warned_refused = true;
                        let why = if refused == Recorded::WrongNode {
                            "the drain was sent to another node"
                        } else {
                            "no drain of that id is waiting"
                        };
                        tracing::warn!(node = %node.name, %operation, why, "ignoring a drain result (further ones from this session are ignored silently)");
                    }
                }
            }
            None
        }
        Msg::Result(r) => {
            let kind = if r.success { "operation.succeeded" } else { "operation.failed" };
            let operation = truncate(&r.operation_id, MAX_ID_BYTES);
            // Cut before formatting: most of a flood is dropped by the allowance anyway.
            let message = format!(
                "{operation} (generation {}): {}",
                r.generation,
                truncate(&r.message, MAX_STATUS_BYTES)
            );
            node_event(c, pace, kind, &node.name, &message);
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
async fn k3s_report(c: &Arc<Coordinator>, node: &mut NodeRecord, report: pb::K3sReport, pace: &mut Pace) {
    if !report.version.is_empty()
        && (report.version != node.k3s_version
            || report.failed_version != node.k3s_failed_version
            || report.failure != node.k3s_failure)
    {
        node.k3s_version = truncate(&report.version, MAX_ID_BYTES);
        node.k3s_failed_version = truncate(&report.failed_version, MAX_ID_BYTES);
        node.k3s_failure = truncate(&report.failure, MAX_STATUS_BYTES);
        // The rollout driver reads versions from the store: wake it once written.
        pace.kick_rollout = true;
        persist_paced(c, node, pace).await;
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

/// Gives the record a new hardware document, to be written with it.
fn set_hardware(node: &mut NodeRecord, doc: String) {
    node.hardware_sha256 = elysium_proto::hardware_sha256(&doc);
    node.hardware_json = doc;
}

/// Writes the node's record if the session's write allowance has a token, or
/// holds the change until it has (the loop in [`drive`] writes it then): the
/// session always has the latest state, the store gets it at most
/// `pace::WRITE_REFILL` later. Once written, only the hardware document's hash
/// stays in the session: with thousands of sessions a copy each adds up.
async fn persist_paced(c: &Arc<Coordinator>, node: &mut NodeRecord, pace: &mut Pace) {
    if !pace.take_write(Instant::now()) {
        pace.dirty = true;
        return;
    }
    pace.dirty = false;
    persist(c, node).await;
    node.hardware_json = String::new();
    if std::mem::take(&mut pace.kick_rollout) {
        c.rollout_kick.notify_one();
    }
}

/// Records an event this node caused, within the session's event allowance.
/// Past it, events are dropped and counted; the count is recorded with the
/// next event that passes (or when the session ends).
fn node_event(c: &Coordinator, pace: &mut Pace, kind: &str, subject: &str, message: &str) {
    if !pace.take_event(Instant::now()) {
        pace.suppressed = pace.suppressed.saturating_add(1);
        if !pace.warned_events {
            pace.warned_events = true;
            tracing::warn!(
                node = subject,
                kind,
                "this node causes more events than its allowance; dropping them (counted)"
            );
        }
        return;
    }
    report_suppressed(c, pace, subject);
    c.event(kind, subject, message);
}

fn report_suppressed(c: &Coordinator, pace: &mut Pace, subject: &str) {
    let n = std::mem::take(&mut pace.suppressed);
    if n > 0 {
        c.event(
            "node.events-suppressed",
            subject,
            &format!(
                "{n} events from this node were not recorded: more than {EVENT_BURST} at once, \
                 then one per {} s",
                EVENT_REFILL.as_secs()
            ),
        );
    }
}

async fn finish(c: &Arc<Coordinator>, node: &mut NodeRecord, session_id: u64, pace: &mut Pace) {
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
    report_suppressed(c, pace, &node.name);
    if was_current {
        // Also writes what the write allowance held back.
        persist(c, node).await;
        if std::mem::take(&mut pace.kick_rollout) {
            c.rollout_kick.notify_one();
        }
        c.event("node.offline", &node.name, "session closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> pb::NodeSpec {
        pb::NodeSpec {
            generation: 3,
            role: pb::NodeRole::Agent as i32,
            labels: [("rack".to_owned(), "a".to_owned()), ("gpu".to_owned(), "yes".to_owned())].into(),
            secrets: [("k".to_owned(), "v1".to_owned()), ("t".to_owned(), "x".to_owned())].into(),
            k3s: Some(pb::K3sAssignment { token: "K10abc::node:s".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn the_digest_of_a_spec_changes_with_any_field_and_not_with_map_order_or_toml() {
        let base = Sent::of(&spec());
        // Same content, maps rebuilt (another hash order), a TOML: the same.
        let mut same = spec();
        let mut entries: Vec<_> = same.labels.into_iter().collect();
        entries.reverse();
        same.labels = entries.into_iter().collect();
        same.cluster_spec_toml = "[k3s]".into();
        assert_eq!(Sent::of(&same), base);
        let changes: [fn(&mut pb::NodeSpec); 6] = [
            |s| s.generation += 1,
            |s| s.role = pb::NodeRole::Server as i32,
            |s| drop(s.labels.insert("rack".into(), "b".into())),
            |s| drop(s.secrets.insert("k".into(), "v2".into())),
            |s| s.k3s.as_mut().unwrap().token.push('!'),
            // A value moved from one key to another is a change.
            |s| {
                s.secrets.remove("t");
                s.secrets.insert("tx".into(), String::new());
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut s = spec();
            change(&mut s);
            assert_ne!(Sent::of(&s), base, "change {i} not seen");
        }
    }
}
