//! Runs rollouts against the live coordinator: builds the [`Observation`] from
//! the node registry and live sessions, calls [`advance`], persists the result
//! before acting on it, and carries out the effects (drain and uncordon through a
//! server node's agent, events). Operator actions come through the same lock.

use std::sync::Arc;
use std::time::Duration;

use elysium_proto::v1 as pb;

use super::{Effect, NodeObs, NodeView, Observation, Rollout, State, advance, window};
use crate::server::{ClusterState, Coordinator};
use crate::store::{NodeRecord, StoreError};
use crate::tokens::Role;

/// How often the driver looks even when nothing woke it (timeouts, windows).
const TICK: Duration = Duration::from_secs(1);

/// The version `node` must run, or `None` to let `[k3s]` decide.
///
/// With `[upgrade]`, a node's version changes only through rollouts: the latest
/// rollout pins the nodes it concerns (the target once their turn came, their
/// old version until then), every other node stays on what it reports, and a
/// node that never ran K3s installs what the last finished rollout installed.
/// A node that reports the target is pinned to it.
pub fn pinned_version(state: &ClusterState, node: &NodeRecord) -> Option<String> {
    state.parsed.upgrade.as_ref()?;
    if let Some(r) = &state.rollout
        && let Some(v) = r.pinned_version(&node.id)
    {
        // A node that already runs the target (it came back upgraded after it
        // timed out) is never sent back; `advance` marks it done.
        if node.k3s_version == r.target {
            return Some(r.target.clone());
        }
        return Some(v);
    }
    if !node.k3s_version.is_empty() {
        return Some(node.k3s_version.clone());
    }
    state.rollout.as_ref().filter(|r| r.state == State::Done).map(|r| r.target.clone())
}

/// The fleet as the planner sees it.
pub fn views(c: &Coordinator, nodes: &[NodeRecord]) -> Vec<NodeView> {
    let live = c.live();
    nodes
        .iter()
        .map(|n| NodeView {
            node_id: n.id.clone(),
            name: n.name.clone(),
            role: n.role,
            labels: n.labels.clone(),
            online: live.contains_key(&n.id),
            version: n.k3s_version.clone(),
        })
        .collect()
}

/// Whether a maintenance window of the current spec is open at `now`.
pub fn window_open(state: &ClusterState, now: i64) -> bool {
    state.parsed.upgrade.as_ref().is_none_or(|u| window::any_open(&u.windows, now))
}

pub fn next_window(state: &ClusterState, now: i64) -> Option<i64> {
    state.parsed.upgrade.as_ref().and_then(|u| window::next_open(&u.windows, now))
}

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
    let current = match c.state.borrow().rollout.clone() {
        Some(r) if r.state != State::Done => r,
        _ => return Ok(()),
    };
    if current.state == State::Aborted && !current.nodes.iter().any(|n| n.cordoned) {
        return Ok(());
    }
    let store = c.store.clone();
    let nodes = crate::services::blocking_store(move || store.list_nodes_brief()).await?;
    let now = c.now();
    let obs = {
        let live = c.live();
        let drains = c.drain_results.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Observation {
            now,
            window_open: window_open(&c.state.borrow(), now),
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
        save(c, next.clone()).await?;
    }
    // Forget drain outcomes no node waits for any more.
    {
        let waiting: std::collections::BTreeSet<&str> =
            next.nodes.iter().filter_map(|n| n.drain_op.as_deref()).collect();
        c.drain_results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|op, _| waiting.contains(op.as_str()));
    }
    if execute(c, &mut next, &nodes, effects) {
        // A drain found no server to go through (say, just after a restart,
        // before the servers reconnected): forget it in memory so the next tick
        // sends it again; the node timeout bounds the waiting.
        publish(c, next);
    }
    Ok(())
}

/// Persists `r` and publishes it (sessions push the new version pins).
pub async fn save(c: &Arc<Coordinator>, r: Rollout) -> Result<(), StoreError> {
    let store = c.store.clone();
    let stored = r.clone();
    crate::services::blocking_store(move || store.put_rollout(&stored)).await?;
    publish(c, r);
    Ok(())
}

/// Makes `r` the current rollout. Sessions are woken only when a node's pin
/// changes: waking all of them on every step cost most of a core with 1,000
/// nodes (docs/BENCHMARKS-fleet.md). Readers (`upgrade status`, the driver,
/// a session woken for another reason) see `r` either way.
fn publish(c: &Coordinator, r: Rollout) {
    c.state.send_if_modified(|s| {
        let wake = s.rollout.as_ref().is_none_or(|old| !old.same_pins(&r));
        s.rollout = Some(Arc::new(super::Published::new(r)));
        wake
    });
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
        if session.commands.try_send(Ok(msg)).is_ok() {
            tracing::info!(op, via = %server.name, node = about, "command sent");
            return true;
        }
    }
    false
}
