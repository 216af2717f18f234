//! Rolling K3s upgrades: which node goes when, as a pure state machine.
//!
//! [`plan`] orders the fleet (servers first, one at a time by default, then
//! agents) and says why nodes are left out. [`advance`] moves a rollout one step
//! given what the coordinator observes (node versions reported, rollbacks,
//! drain results, the clock, maintenance windows) and returns the effects to
//! carry out (drain, uncordon, events). Neither does I/O, so the whole policy is
//! tested without a machine; the coordinator's `driver` runs it against the live
//! coordinator and persists every change, so a coordinator killed mid-rollout
//! continues where it was.
//!
//! The records here ([`Rollout`] and its parts) are plain serialisable data, and
//! the store keeps them as they are, as it keeps `tokens`' records: this module
//! depends on no other part of the coordinator than `tokens`, so the store
//! knowing it makes no circle.

pub mod window;

use std::collections::BTreeMap;

use elysium_installer::k3s_version::{K3sVersion, check_upgrade};
use elysium_spec::{OfflinePolicy, UpgradeSection};
use serde::{Deserialize, Serialize};

use crate::tokens::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Running,
    /// By the operator: nothing new starts; nodes in progress finish.
    Paused,
    /// By a failure: like paused, with the reason, until resumed or aborted.
    Halted,
    /// By the operator: nothing new starts, ever; cordons are undone.
    Aborted,
    Done,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Halted => "halted",
            State::Aborted => "aborted",
            State::Done => "done",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, State::Aborted | State::Done)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Pending,
    Draining,
    /// The node has the target version assigned and is installing it.
    Upgrading,
    /// The node reported it is restarting on the target, waiting for health.
    HealthGate,
    Done,
    RolledBack,
    Failed,
    Skipped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Draining => "draining",
            Phase::Upgrading => "upgrading",
            Phase::HealthGate => "health-gate",
            Phase::Done => "done",
            Phase::RolledBack => "rolled-back",
            Phase::Failed => "failed",
            Phase::Skipped => "skipped",
        }
    }

    fn in_flight(self) -> bool {
        matches!(self, Phase::Draining | Phase::Upgrading | Phase::HealthGate)
    }

    fn terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::RolledBack | Phase::Failed | Phase::Skipped)
    }

    /// Whether the node runs (or is installing) the target.
    pub fn has_target(self) -> bool {
        matches!(self, Phase::Upgrading | Phase::HealthGate | Phase::Done)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRollout {
    pub node_id: String,
    pub name: String,
    pub role: Role,
    pub from_version: String,
    pub phase: Phase,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub started_unix: i64,
    #[serde(default)]
    pub finished_unix: i64,
    /// This rollout cordoned the node: it, and only it, uncordons it.
    #[serde(default)]
    pub cordoned: bool,
    /// The drain command in flight, if any. Not kept across restarts: a
    /// restarted coordinator drains again (draining is idempotent).
    #[serde(default, skip_serializing)]
    pub drain_op: Option<String>,
}

/// Settings copied from `[upgrade]` when the rollout starts: editing the spec
/// mid-rollout does not change the rules under a running rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub server_concurrency: u32,
    pub agent_concurrency: u32,
    pub offline: OfflinePolicy,
    pub node_timeout_seconds: i64,
    pub drain: bool,
    pub drain_timeout_seconds: u32,
    pub drain_force: bool,
    pub drain_delete_emptydir_data: bool,
}

impl Settings {
    pub fn from_spec(u: &UpgradeSection) -> Self {
        Self {
            server_concurrency: u.server_concurrency,
            agent_concurrency: u.agent_concurrency,
            offline: u.offline,
            node_timeout_seconds: i64::from(u.node_timeout_minutes) * 60,
            drain: u.drain.enabled,
            drain_timeout_seconds: u.drain.timeout_seconds,
            drain_force: u.drain.force,
            drain_delete_emptydir_data: u.drain.delete_emptydir_data,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub target: String,
    pub state: State,
    #[serde(default)]
    pub reason: String,
    pub created_unix: i64,
    pub updated_unix: i64,
    pub settings: Settings,
    /// In upgrade order.
    pub nodes: Vec<NodeRollout>,
}

/// What the planner needs to know of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub node_id: String,
    pub name: String,
    pub role: Role,
    pub labels: BTreeMap<String, String>,
    pub online: bool,
    /// The K3s version it reports running; empty when none yet.
    pub version: String,
}

/// Why a rollout cannot be planned at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0:?} is not a K3s version (like v1.31.5+k3s1)")]
    BadTarget(String),
    #[error("no node reports a K3s version yet; install K3s first (the [k3s] section)")]
    NothingInstalled,
    #[error("{node} runs {have}, newer than the target {target}: rollouts never downgrade")]
    Downgrade { node: String, have: String, target: String },
}

/// Orders the fleet for an upgrade to `target`: servers first, then agents, each
/// by name; says why nodes are skipped.
pub fn plan(
    id: &str,
    target: &str,
    nodes: &[NodeView],
    upgrade: &UpgradeSection,
    now: i64,
) -> Result<Rollout, PlanError> {
    let want: K3sVersion = target.parse().map_err(|_| PlanError::BadTarget(target.to_owned()))?;
    if nodes.iter().all(|n| n.version.is_empty()) {
        return Err(PlanError::NothingInstalled);
    }
    let mut ordered: Vec<&NodeView> = nodes.iter().collect();
    ordered.sort_by(|a, b| (a.role != Role::Server, &a.name).cmp(&(b.role != Role::Server, &b.name)));
    let mut out = Vec::with_capacity(ordered.len());
    for n in ordered {
        let (phase, reason) = match skip_reason(n, &want, upgrade) {
            Ok(None) => (Phase::Pending, String::new()),
            Ok(Some(why)) => (Phase::Skipped, why),
            Err(e) => return Err(e),
        };
        out.push(NodeRollout {
            node_id: n.node_id.clone(),
            name: n.name.clone(),
            role: n.role,
            from_version: n.version.clone(),
            phase,
            reason,
            started_unix: 0,
            finished_unix: if phase == Phase::Skipped { now } else { 0 },
            cordoned: false,
            drain_op: None,
        });
    }
    let mut rollout = Rollout {
        id: id.to_owned(),
        target: target.to_owned(),
        state: State::Running,
        reason: String::new(),
        created_unix: now,
        updated_unix: now,
        settings: Settings::from_spec(upgrade),
        nodes: out,
    };
    hold_agents_above_servers(&mut rollout, now);
    Ok(rollout)
}

fn skip_reason(
    n: &NodeView,
    want: &K3sVersion,
    upgrade: &UpgradeSection,
) -> Result<Option<String>, PlanError> {
    if upgrade.exclude.iter().any(|e| e == &n.name) {
        return Ok(Some("excluded by [upgrade] exclude".into()));
    }
    if let Some(v) = n.labels.get(&upgrade.opt_out_label)
        && (v == "disabled" || v == "false")
    {
        return Ok(Some(format!("opted out ({}={v})", upgrade.opt_out_label)));
    }
    if n.version.is_empty() {
        return Ok(Some("K3s is not installed yet; it installs the fleet's version".into()));
    }
    let Ok(have) = n.version.parse::<K3sVersion>() else {
        return Ok(Some(format!("reports an unreadable version {:?}", n.version)));
    };
    if &have == want {
        return Ok(Some("already on the target".into()));
    }
    if let Err(e) = check_upgrade(&have, want, false) {
        return match e {
            elysium_installer::k3s_version::SkewError::Downgrade { .. } => Err(PlanError::Downgrade {
                node: n.name.clone(),
                have: n.version.clone(),
                target: want.to_string(),
            }),
            other => Ok(Some(other.to_string())),
        };
    }
    if !n.online && upgrade.offline == OfflinePolicy::Skip {
        return Ok(Some("offline when the rollout was planned ([upgrade] offline = \"skip\")".into()));
    }
    Ok(None)
}

/// Kubelets may never be newer than an API server (a minor version ahead): when
/// a server stays below the target (skipped, failed, rolled back) and the
/// target's minor version is ahead of it, agents still pending are skipped. A
/// patch release is fine either way.
fn hold_agents_above_servers(r: &mut Rollout, now: i64) {
    let Ok(target) = r.target.parse::<K3sVersion>() else { return };
    let lagging: Option<String> = r
        .nodes
        .iter()
        .filter(|n| n.role == Role::Server && !n.phase.has_target() && n.phase.terminal())
        .find_map(|n| {
            let server: K3sVersion = n.from_version.parse().ok()?;
            elysium_installer::k3s_version::check_agent_skew(&server, &target)
                .err()
                .map(|e| format!("{} stays on {}: {e}", n.name, n.from_version))
        });
    if let Some(why) = lagging {
        for n in r.nodes.iter_mut().filter(|n| n.role == Role::Agent && n.phase == Phase::Pending) {
            n.phase = Phase::Skipped;
            n.reason = format!("held back: {why}");
            n.finished_unix = now;
        }
    }
}

/// What the coordinator sees of one node during a rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeObs {
    pub online: bool,
    /// The healthy version it reports.
    pub version: String,
    /// A version that failed its health gate and was rolled back, and why.
    pub failed_version: String,
    pub failure: String,
    /// It said it is restarting on a new version and checking its health.
    pub in_health_gate: bool,
}

/// Everything [`advance`] looks at.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub now: i64,
    pub window_open: bool,
    pub nodes: BTreeMap<String, NodeObs>,
    /// Drain command id → its outcome (`Err` with the message).
    pub drains: BTreeMap<String, Result<(), String>>,
}

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Drain { node: String, op: String },
    Uncordon { node: String },
    Event { kind: &'static str, subject: String, message: String },
}

fn event(kind: &'static str, subject: &str, message: String) -> Effect {
    Effect::Event { kind, subject: subject.to_owned(), message }
}

/// Moves `r` forward. Returns the effects to carry out, in order. Changing `r`
/// (and so whether to persist it) is visible by comparing it with a copy.
pub fn advance(r: &mut Rollout, obs: &Observation) -> Vec<Effect> {
    let mut fx = Vec::new();
    if r.state == State::Done {
        return fx;
    }
    let now = obs.now;
    let target = r.target.clone();
    let timeout = r.settings.node_timeout_seconds;
    let mut halt: Option<String> = None;
    let aborted = r.state == State::Aborted;

    // 1. Nodes in flight, whatever the state: an upgrade that started finishes.
    for n in r.nodes.iter_mut().filter(|n| n.phase.in_flight()) {
        let o = obs.nodes.get(&n.node_id).cloned().unwrap_or_default();
        let mut fail = |n: &mut NodeRollout, phase: Phase, why: String, fx: &mut Vec<Effect>| {
            n.phase = phase;
            n.reason = why.clone();
            n.finished_unix = now;
            if n.cordoned {
                fx.push(Effect::Uncordon { node: n.name.clone() });
                n.cordoned = false;
            }
            fx.push(event("upgrade.node-failed", &n.name, why.clone()));
            halt.get_or_insert(format!("{}: {why}", n.name));
        };
        match n.phase {
            Phase::Draining => match n.drain_op.as_ref().and_then(|op| obs.drains.get(op)) {
                Some(Ok(())) if aborted => {
                    // Drained, but K3s is not touched after an abort.
                    n.phase = Phase::Skipped;
                    n.reason = "rollout aborted after the drain".into();
                    n.finished_unix = now;
                    n.drain_op = None;
                    fx.push(Effect::Uncordon { node: n.name.clone() });
                    n.cordoned = false;
                }
                Some(Ok(())) => {
                    n.phase = Phase::Upgrading;
                    n.drain_op = None;
                    fx.push(event(
                        "upgrade.node-upgrading",
                        &n.name,
                        format!("drained; installing {target}"),
                    ));
                }
                Some(Err(e)) => {
                    let why = format!("drain failed: {e}");
                    fail(n, Phase::Failed, why, &mut fx);
                }
                None if now - n.started_unix > timeout => {
                    let why = format!(
                        "drain did not finish within {timeout} s (drains go through a server node's agent: is one online?)"
                    );
                    fail(n, Phase::Failed, why, &mut fx);
                }
                None => {
                    // No drain in flight (a restarted coordinator lost it): send again.
                    if n.drain_op.is_none() {
                        let op = format!("drain-{}-{}-{}", r.id, n.node_id, now);
                        n.drain_op = Some(op.clone());
                        fx.push(Effect::Drain { node: n.name.clone(), op });
                    }
                }
            },
            Phase::Upgrading | Phase::HealthGate => {
                if o.version == target {
                    n.phase = Phase::Done;
                    n.finished_unix = now;
                    n.reason.clear();
                    if n.cordoned {
                        fx.push(Effect::Uncordon { node: n.name.clone() });
                        n.cordoned = false;
                    }
                    fx.push(event("upgrade.node-done", &n.name, format!("{} → {target}", n.from_version)));
                } else if o.failed_version == target {
                    let why = format!(
                        "{target} failed its health gate and the node rolled back to {}: {}",
                        o.version, o.failure
                    );
                    fail(n, Phase::RolledBack, why, &mut fx);
                } else if now - n.started_unix > timeout {
                    let why = format!(
                        "not on {target} after {} min ({}); check `elysium-node nodes get {}`",
                        timeout / 60,
                        if o.online { "online" } else { "offline" },
                        n.name
                    );
                    fail(n, Phase::Failed, why, &mut fx);
                } else if o.in_health_gate && n.phase == Phase::Upgrading {
                    n.phase = Phase::HealthGate;
                }
            }
            _ => {}
        }
    }
    // A node that failed by timing out may still have installed the target
    // (it was offline, or slow): once it reports the target, it is done. Left
    // failed, its pin would ask it to go back to the old version.
    for n in r.nodes.iter_mut().filter(|n| n.phase == Phase::Failed) {
        if obs.nodes.get(&n.node_id).is_some_and(|o| o.version == target) {
            n.phase = Phase::Done;
            n.reason = format!("reported {target} after it had failed ({})", n.reason);
            n.finished_unix = now;
            fx.push(event("upgrade.node-done", &n.name, n.reason.clone()));
        }
    }
    if let Some(why) = halt
        && r.state == State::Running
    {
        r.state = State::Halted;
        r.reason = format!(
            "{why}. No further node starts; fix the cause, then `elysium-node upgrade resume`, or `upgrade abort`"
        );
        fx.push(event("upgrade.halted", &r.id, r.reason.clone()));
    }
    hold_agents_above_servers(r, now);

    // 2. Start nodes, only while running and inside a window.
    if r.state == State::Running && obs.window_open {
        let servers_left = r
            .nodes
            .iter()
            .any(|n| n.role == Role::Server && (n.phase == Phase::Pending || n.phase.in_flight()));
        for role in [Role::Server, Role::Agent] {
            if role == Role::Agent && servers_left {
                break;
            }
            let limit = match role {
                Role::Server => r.settings.server_concurrency,
                Role::Agent => r.settings.agent_concurrency,
            } as usize;
            let mut busy = r.nodes.iter().filter(|n| n.role == role && n.phase.in_flight()).count();
            for n in r.nodes.iter_mut().filter(|n| n.role == role && n.phase == Phase::Pending) {
                if busy >= limit {
                    break;
                }
                let o = obs.nodes.get(&n.node_id).cloned().unwrap_or_default();
                if !o.online {
                    match r.settings.offline {
                        OfflinePolicy::Skip => {
                            n.phase = Phase::Skipped;
                            n.reason = "offline when its turn came ([upgrade] offline = \"skip\")".into();
                            n.finished_unix = now;
                            fx.push(event("upgrade.node-skipped", &n.name, n.reason.clone()));
                            continue;
                        }
                        // Waits in order: later nodes do not overtake it.
                        OfflinePolicy::Wait => break,
                    }
                }
                n.started_unix = now;
                busy += 1;
                if r.settings.drain {
                    let op = format!("drain-{}-{}-{}", r.id, n.node_id, now);
                    n.phase = Phase::Draining;
                    n.cordoned = true;
                    n.drain_op = Some(op.clone());
                    fx.push(Effect::Drain { node: n.name.clone(), op });
                    fx.push(event("upgrade.node-draining", &n.name, format!("draining before {target}")));
                } else {
                    n.phase = Phase::Upgrading;
                    fx.push(event("upgrade.node-upgrading", &n.name, format!("installing {target}")));
                }
            }
        }
    }

    // 3. Aborted: pending nodes will never start; undo our cordons once settled.
    if r.state == State::Aborted {
        for n in r.nodes.iter_mut().filter(|n| n.phase == Phase::Pending) {
            n.phase = Phase::Skipped;
            n.reason = "rollout aborted".into();
            n.finished_unix = now;
        }
    }
    if r.state == State::Running && r.nodes.iter().all(|n| n.phase.terminal()) {
        r.state = State::Done;
        let done = r.nodes.iter().filter(|n| n.phase == Phase::Done).count();
        fx.push(event("upgrade.done", &r.id, format!("{done} node(s) on {target}")));
    }
    if !fx.is_empty() {
        r.updated_unix = now;
    }
    fx
}

/// Operator actions. Each returns an error message when it makes no sense now.
pub fn pause(r: &mut Rollout, now: i64) -> Result<(), String> {
    match r.state {
        State::Running => {
            r.state = State::Paused;
            r.reason = "paused by the operator; nodes in progress finish".into();
            r.updated_unix = now;
            Ok(())
        }
        s => Err(format!("the rollout is {}, not running", s.as_str())),
    }
}

pub fn resume(r: &mut Rollout, now: i64) -> Result<(), String> {
    match r.state {
        State::Paused | State::Halted => {
            r.state = State::Running;
            r.reason.clear();
            r.updated_unix = now;
            Ok(())
        }
        s => Err(format!("the rollout is {}; only a paused or halted rollout resumes", s.as_str())),
    }
}

/// Stops for good; returns the uncordons of nodes this rollout cordoned that
/// are not in flight (those in flight are uncordoned when they finish).
pub fn abort(r: &mut Rollout, now: i64) -> Result<Vec<Effect>, String> {
    if r.state.is_final() {
        return Err(format!("the rollout is already {}", r.state.as_str()));
    }
    r.state = State::Aborted;
    r.reason = "aborted by the operator".into();
    r.updated_unix = now;
    let mut fx = Vec::new();
    for n in r.nodes.iter_mut() {
        if n.phase == Phase::Pending {
            n.phase = Phase::Skipped;
            n.reason = "rollout aborted".into();
            n.finished_unix = now;
        }
        if n.cordoned && !n.phase.in_flight() {
            fx.push(Effect::Uncordon { node: n.name.clone() });
            n.cordoned = false;
        }
    }
    fx.push(event("upgrade.aborted", &r.id, "by the operator".into()));
    Ok(fx)
}

/// The version node `n` of `r` must run while `r` is the latest rollout.
fn pin(r: &Rollout, n: &NodeRollout) -> Option<String> {
    if n.phase.has_target() {
        Some(r.target.clone())
    } else if n.from_version.is_empty() {
        None
    } else {
        Some(n.from_version.clone())
    }
}

/// A rollout as the sessions see it, with its nodes indexed by id.
///
/// Every change to a rollout wakes every session to recompute its node's pin;
/// with 1,000 nodes a scan each made that a million comparisons per change
/// (docs/BENCHMARKS-fleet.md).
#[derive(Debug)]
pub struct Published {
    rollout: Rollout,
    by_node: std::collections::HashMap<String, usize>,
}

impl Published {
    pub fn new(rollout: Rollout) -> Self {
        let by_node = rollout.nodes.iter().enumerate().map(|(i, n)| (n.node_id.clone(), i)).collect();
        Self { rollout, by_node }
    }

    /// Whether every node would be pinned as under `other`: sessions need
    /// waking only when that changes, which most steps (a drain starting, a
    /// node passing its health gate) do not.
    pub fn same_pins(&self, other: &Rollout) -> bool {
        let r = &self.rollout;
        r.id == other.id
            && r.target == other.target
            // A finished rollout also decides what new nodes install (driver).
            && (r.state == State::Done) == (other.state == State::Done)
            && r.nodes.len() == other.nodes.len()
            && r.nodes.iter().zip(&other.nodes).all(|(a, b)| a.node_id == b.node_id && pin(r, a) == pin(other, b))
    }

    /// The version a node must run while this is the latest rollout; `None`
    /// when the rollout does not concern it.
    pub fn pinned_version(&self, node_id: &str) -> Option<String> {
        pin(&self.rollout, &self.rollout.nodes[*self.by_node.get(node_id)?])
    }
}

impl std::ops::Deref for Published {
    type Target = Rollout;

    fn deref(&self) -> &Rollout {
        &self.rollout
    }
}

#[cfg(test)]
mod tests;
