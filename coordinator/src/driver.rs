//! Runs rollouts against the live coordinator: builds the [`Observation`] from
//! the node registry and live sessions, calls [`advance`], persists the result
//! before acting on it, and carries out the effects (drain and uncordon through a
//! server node's agent, events). Operator actions come through the same lock.
//!
//! Owns the loop and the effects. Does not own the policy (`rollout`, pure and
//! unaware of this driver) nor the shared state it reads and publishes to
//! (`state`).

use std::sync::Arc;
use std::time::Duration;

use elysium_proto::v1 as pb;

use crate::rollout::{Effect, NodeObs, Observation, Rollout, State, advance};
use crate::state::{Coordinator, blocking_store};
use crate::store::{NodeRecord, StoreError};
use crate::tokens::Role;

/// How often the driver looks even when nothing woke it (timeouts, windows).
const TICK: Duration = Duration::from_secs(1);

/// Runs until `stop` resolves.
pub async fn run(c: Arc<Coordinator>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = c.rollout_kick.notified() => {}
            () = tokio::time::sleep(TICK) => {}
            () = &mut stop => return,
        }
        if let Err(e) = tick(&c).await {
            tracing::warn!(error = %e, "rollout step failed; retrying");
        }
    }
}

/// One step of the current rollout, if there is one to drive.
pub async fn tick(c: &Arc<Coordinator>) -> Result<(), StoreError> {
    let _guard = c.rollout_lock.lock().await;
    let current = match c.cluster.borrow().rollout.clone() {
        Some(r) if r.state != State::Done => r,
        _ => {
            // Nothing waits for a drain: forget any left from the last rollout.
            c.drains.retain(&Default::default());
            return Ok(());
        }
    };
    if current.state == State::Aborted && !current.nodes.iter().any(|n| n.cordoned) {
        c.drains.retain(&Default::default());
        return Ok(());
    }
    let store = c.store.clone();
    let nodes = blocking_store(move || store.list_nodes_brief()).await?;
    let now = c.now();
    let obs = {
        let live = c.live();
        let drains = c.drains.outcomes();
        Observation {
            now,
            window_open: c.cluster.borrow().window_open(now),
            nodes: nodes
                .iter()
                .map(|n| {
                    let o = NodeObs {
                        online: live.contains_key(&n.id),
                        version: n.k3s_version.clone(),
                        failed_version: n.k3s_failed_version.clone(),
                        failure: n.k3s_failure.clone(),
                        in_health_gate: false,
                    };
                    (n.id.clone(), o)
                })
                .collect(),
            drains,
        }
    };
    let mut next: Rollout = Rollout::clone(&current);
    let effects = advance(&mut next, &obs);
    if next != **current {
        c.save_rollout(next.clone()).await?;
    }
    // Forget drain outcomes no node waits for any more.
    {
        let waiting: std::collections::BTreeSet<&str> =
            next.nodes.iter().filter_map(|n| n.drain_op.as_deref()).collect();
        c.drains.retain(&waiting);
    }
    if execute(c, &mut next, &nodes, effects) {
        // A drain found no server to go through (say, just after a restart,
        // before the servers reconnected): forget it in memory so the next tick
        // sends it again; the node timeout bounds the waiting.
        c.publish_rollout(next);
    }
    Ok(())
}

/// Carries out effects. Drains and uncordons go to a server node's agent, which
/// talks to the Kubernetes API with the server's kubeconfig. Returns whether a
/// drain could not be sent (its node's `drain_op` is cleared in `r`).
pub fn execute(c: &Arc<Coordinator>, r: &mut Rollout, nodes: &[NodeRecord], effects: Vec<Effect>) -> bool {
    let mut undelivered = false;
    for effect in effects {
        match effect {
            Effect::Event { kind, subject, message } => c.event(kind, &subject, &message),
            Effect::Drain { node, op } => {
                let s = &r.settings;
                let kind = pb::command::Kind::Drain(pb::DrainNode {
                    node: node.clone(),
                    timeout_seconds: s.drain_timeout_seconds,
                    force: s.drain_force,
                    delete_emptydir_data: s.drain_delete_emptydir_data,
                });
                if !send_to_server(c, nodes, &node, &op, kind) {
                    tracing::warn!(node = %node, "no server node online to drain through; retrying");
                    for n in r.nodes.iter_mut().filter(|n| n.drain_op.as_deref() == Some(op.as_str())) {
                        n.drain_op = None;
                    }
                    undelivered = true;
                }
            }
            Effect::Uncordon { node } => {
                let op = format!("uncordon-{node}-{}", c.now());
                let kind = pb::command::Kind::Uncordon(pb::UncordonNode { node: node.clone() });
                if !send_to_server(c, nodes, &node, &op, kind) {
                    c.event(
                        "upgrade.uncordon-failed",
                        &node,
                        "no server node online to uncordon it; run `kubectl uncordon` yourself",
                    );
                }
            }
        }
    }
    undelivered
}

/// Sends a command to an online server, preferring one other than `about`.
fn send_to_server(
    c: &Coordinator,
    nodes: &[NodeRecord],
    about: &str,
    op: &str,
    kind: pb::command::Kind,
) -> bool {
    let live = c.live();
    let mut servers: Vec<&NodeRecord> =
        nodes.iter().filter(|n| n.role == Role::Server && live.contains_key(&n.id)).collect();
    servers.sort_by_key(|n| n.name == about);
    for server in servers {
        let Some(session) = live.get(&server.id) else { continue };
        let msg = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Command(pb::Command {
                id: op.to_owned(),
                kind: Some(kind.clone()),
            })),
        };
        if matches!(kind, pb::command::Kind::Drain(_)) {
            // Before sending, so that the answer cannot overtake it: only that
            // node's answer counts (services/session.rs).
            c.drains.expect(op, &server.id);
        }
        if session.commands.try_send(Ok(msg)).is_ok() {
            tracing::info!(op, via = %server.name, node = about, "command sent");
            return true;
        }
    }
    false
}
