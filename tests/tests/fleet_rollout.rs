//! Rolling upgrades over a simulated fleet (`elysium_tests::fleet`: real enrollment,
//! one mTLS session per node, a simulated K3s) against an in-process coordinator:
//!
//! - order (servers first, plan order), concurrency (never more in flight than
//!   configured, and the limit is reached) and halt-on-failure hold exactly, from
//!   the coordinator's event log, sampled `upgrade status` and the nodes' own clocks;
//! - a coordinator restarted mid-rollout continues it and completes it, also with
//!   nodes caught draining and the servers (which drains go through) reconnecting
//!   after the agents: the drain waits for a server instead of failing;
//! - a node that disconnects mid-upgrade holds the rollout until it comes back,
//!   or until its node timeout passes (then the rollout halts).
//!
//! The benchmark `benches/fleet.rs` runs the same checks over 1,000 nodes against
//! the coordinator as a process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use elysium_proto::v1 as pb;
use elysium_proto::v1::admin_client::AdminClient;
use elysium_tests::fleet::{self, Fleet, FleetConfig, SimK3s, What};
use elysium_tests::harness::{TestCoordinator, eventually};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const FROM: &str = "v1.31.4+k3s1";
const TO: &str = "v1.31.5+k3s1";
const WAIT: Duration = Duration::from_secs(30);

fn spec(agent_concurrency: u32, drain: bool) -> String {
    format!(
        "[agent]\nheartbeat_seconds = 5\n\n[k3s]\nversion = \"{FROM}\"\n\n[upgrade]\nversion = \"{TO}\"\n\
         server_concurrency = 1\nagent_concurrency = {agent_concurrency}\nnode_timeout_minutes = 5\n\n\
         [upgrade.drain]\nenabled = {drain}\n"
    )
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

struct Setup {
    c: TestCoordinator,
    fleet: Fleet,
    admin: AdminClient<Channel>,
}

/// A coordinator with `spec`, `servers` + `agents` simulated nodes enrolled and
/// connected, each having reported its K3s version (so the plan skips none).
async fn setup(servers: usize, agents: usize, spec: &str, sim: SimK3s) -> Setup {
    let c = TestCoordinator::start().await;
    c.set_spec(spec).await;
    let admin = c.admin().await;
    let server_token = c.token_for(pb::NodeRole::Server, servers as u32, 600).await;
    let agent_token = c.token(agents as u32, 600).await;
    let mut ids = fleet::enroll(&c.url(), &server_token, pb::NodeRole::Server, names("server", servers), 4)
        .await
        .expect("enroll servers");
    ids.extend(
        fleet::enroll(&c.url(), &agent_token, pb::NodeRole::Agent, names("agent", agents), 8)
            .await
            .expect("enroll agents"),
    );
    let mut config = FleetConfig::new(&c.url());
    config.k3s = sim;
    let fleet = Fleet::start(config, ids).await.expect("start the fleet");
    fleet.wait_connected(servers + agents, WAIT).await.expect("every session open");
    let a = admin.clone();
    eventually("every node reporting its K3s version", WAIT, || {
        let mut a = a.clone();
        async move {
            let plan = a.upgrade_plan(pb::UpgradePlanRequest::default()).await.ok()?.into_inner();
            plan.nodes.iter().all(|n| n.phase == "pending").then_some(())
        }
    })
    .await;
    Setup { c, fleet, admin }
}

async fn status(admin: &AdminClient<Channel>) -> pb::Rollout {
    admin.clone().upgrade_status(pb::UpgradeStatusRequest {}).await.expect("upgrade status").into_inner()
}

/// `upgrade status`, `None` while the coordinator is unreachable (restarting).
async fn try_status(admin: &AdminClient<Channel>) -> Option<pb::Rollout> {
    Some(admin.clone().upgrade_status(pb::UpgradeStatusRequest {}).await.ok()?.into_inner())
}

async fn wait_state(admin: &AdminClient<Channel>, state: &str) -> pb::Rollout {
    let a = admin.clone();
    eventually(&format!("the rollout to be {state}"), WAIT, || {
        let a = a.clone();
        async move {
            let s = try_status(&a).await?;
            (s.state == state).then_some(s)
        }
    })
    .await
}

async fn wait_phase(admin: &AdminClient<Channel>, node: &str, phase: &str) -> pb::Rollout {
    let a = admin.clone();
    eventually(&format!("{node} to be {phase}"), WAIT, || {
        let a = a.clone();
        async move {
            let s = try_status(&a).await?;
            s.nodes.iter().any(|n| n.name == node && n.phase == phase).then_some(s)
        }
    })
    .await
}

/// The event log once `kind` is in it (events are written asynchronously).
async fn events_through(admin: &AdminClient<Channel>, kind: &str, count: usize) -> Vec<pb::Event> {
    let a = admin.clone();
    eventually(&format!("{count} {kind} event(s)"), WAIT, || {
        let mut a = a.clone();
        async move {
            let events = fleet::all_events(&mut a).await.ok()?;
            (events.iter().filter(|e| e.kind == kind).count() >= count).then_some(events)
        }
    })
    .await
}

fn phase_of<'a>(s: &'a pb::Rollout, node: &str) -> &'a str {
    s.nodes.iter().find(|n| n.name == node).map(|n| n.phase.as_str()).unwrap_or("?")
}

fn count(s: &pb::Rollout, phase: &str) -> usize {
    s.nodes.iter().filter(|n| n.phase == phase).count()
}

/// Polls `upgrade status` every 10 ms and keeps the most nodes of each role
/// seen in flight at once.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<BTreeMap<String, usize>>,
}

impl Sampler {
    fn start(admin: &AdminClient<Channel>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (admin.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut max: BTreeMap<String, usize> = BTreeMap::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok(r) = a.clone().upgrade_status(pb::UpgradeStatusRequest {}).await {
                    for (role, n) in fleet::in_flight(&r.into_inner()) {
                        let m = max.entry(role).or_insert(0);
                        *m = (*m).max(n);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            max
        });
        Self { stop, task }
    }

    async fn finish(self) -> BTreeMap<String, usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler")
    }
}

fn limits(server: usize, agent: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([("server".to_owned(), server), ("agent".to_owned(), agent)])
}

/// The version each node reported last, from its own log.
fn versions(fleet: &Fleet) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in fleet.events() {
        if let What::Reported { version, .. } = e.what {
            out.insert(e.node, version);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_over_60_nodes_keeps_order_concurrency_and_halts_on_the_failure() {
    const AGENT_CONCURRENCY: usize = 5;
    let failing = "agent-030";
    let sim = SimK3s {
        upgrade_time: Duration::from_millis(80),
        upgrade_jitter: Duration::from_millis(60),
        fail: BTreeSet::from([failing.to_owned()]),
        drain_time: Duration::from_millis(5),
        ..SimK3s::default()
    };
    let Setup { c: _c, fleet, admin } = setup(3, 57, &spec(AGENT_CONCURRENCY as u32, true), sim).await;

    let sampler = Sampler::start(&admin);
    admin.clone().upgrade_start(pb::UpgradeStartRequest::default()).await.expect("upgrade start");
    let halted = wait_state(&admin, "halted").await;
    assert!(halted.reason.contains(failing), "halted for another reason: {}", halted.reason);
    // Nodes in flight when the failure came finish; nothing else starts.
    let a = admin.clone();
    let settled = eventually("the nodes in flight to finish", WAIT, || {
        let a = a.clone();
        async move {
            let s = try_status(&a).await?;
            fleet::in_flight(&s).is_empty().then_some(s)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let halted = status(&admin).await;
    assert_eq!(halted.state, "halted");
    assert_eq!(
        halted.nodes.iter().map(|n| &n.phase).collect::<Vec<_>>(),
        settled.nodes.iter().map(|n| &n.phase).collect::<Vec<_>>(),
        "nothing may move while halted"
    );
    assert_eq!(phase_of(&halted, failing), "rolled-back");
    let events = events_through(&admin, "upgrade.halted", 1).await;
    let problems =
        fleet::check_rollout(&halted, &events, &fleet.events(), &limits(1, AGENT_CONCURRENCY), None);
    assert!(problems.is_empty(), "{problems:#?}");
    let roles = halted.nodes.iter().map(|n| (n.name.clone(), n.role.clone())).collect();
    let skipped = BTreeSet::new();
    let history = fleet::rollout_history(&events, &roles, &skipped);
    assert_eq!(history.max_in_flight.get("agent"), Some(&AGENT_CONCURRENCY), "the limit is reached");
    assert_eq!(history.max_in_flight.get("server"), Some(&1));
    let (first, in_flight) = history.first_failure.clone().expect("a failure in the log");
    assert_eq!(first, failing);
    assert!(in_flight.len() <= AGENT_CONCURRENCY, "{in_flight:?}");
    // Exactly the nodes started before the failure went through; every later one waits.
    let started: BTreeSet<&String> = history.started.iter().collect();
    assert_eq!(count(&halted, "pending"), 60 - started.len());
    assert_eq!(count(&halted, "done"), started.len() - 1);
    for n in halted.nodes.iter().filter(|n| n.phase == "pending") {
        let pinned =
            fleet.events().iter().any(|e| e.node == n.name && e.what == What::Pinned { version: TO.into() });
        assert!(!pinned, "{} got the target pin while halted", n.name);
    }

    // Resumed, it finishes the others; the rolled-back node stays as it is.
    let resumed_at = Instant::now();
    admin.clone().upgrade_resume(pb::UpgradeControlRequest {}).await.expect("resume");
    let done = wait_state(&admin, "done").await;
    let sampled = sampler.finish().await;
    assert_eq!((count(&done, "done"), count(&done, "rolled-back")), (59, 1));
    let events = events_through(&admin, "upgrade.done", 1).await;
    let problems = fleet::check_rollout(
        &done,
        &events,
        &fleet.events(),
        &limits(1, AGENT_CONCURRENCY),
        Some(resumed_at),
    );
    assert!(problems.is_empty(), "{problems:#?}");
    for (role, max) in &sampled {
        assert!(*max <= limits(1, AGENT_CONCURRENCY)[role], "status showed {max} {role}s in flight");
    }
    let v = versions(&fleet);
    assert_eq!(v.values().filter(|v| *v == TO).count(), 59);
    assert_eq!(v[failing], FROM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restarted_mid_rollout_continues_and_completes_it() {
    restart_mid_rollout(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restarted_while_nodes_drain_waits_for_a_server_to_reconnect() {
    restart_mid_rollout(true, true).await;
}

/// Restarts the coordinator once 10 of 30 nodes are done (some in flight then),
/// and checks that the rollout ends done with every rule kept across the
/// restart. With `servers_late`, the servers reconnect 2 s after the agents.
async fn restart_mid_rollout(drain: bool, servers_late: bool) {
    const AGENT_CONCURRENCY: usize = 3;
    let sim = SimK3s {
        upgrade_time: Duration::from_millis(150),
        upgrade_jitter: Duration::from_millis(100),
        // Long enough that nodes are caught draining.
        drain_time: Duration::from_millis(300),
        ..SimK3s::default()
    };
    // Agents reconnect with backoff after the restart: with the default
    // `offline = "skip"`, one whose turn came while it was still away would be
    // skipped. Waiting for it is the policy under test here.
    let spec = spec(AGENT_CONCURRENCY as u32, drain)
        .replace("node_timeout_minutes = 5\n", "node_timeout_minutes = 5\noffline = \"wait\"\n");
    let Setup { mut c, fleet, admin } = setup(2, 28, &spec, sim).await;
    admin.clone().upgrade_start(pb::UpgradeStartRequest::default()).await.expect("upgrade start");
    let a = admin.clone();
    let before = eventually("10 nodes done", WAIT, || {
        let a = a.clone();
        async move {
            let s = try_status(&a).await?;
            (count(&s, "done") >= 10).then_some(s)
        }
    })
    .await;
    c.restart().await;
    let servers = ["server-000", "server-001"];
    if servers_late {
        // They are still in their reconnect backoff: keep them away a while.
        servers.iter().for_each(|s| fleet.set_online(s, false));
        tokio::time::sleep(Duration::from_secs(2)).await;
        servers.iter().for_each(|s| fleet.set_online(s, true));
    }
    let admin = c.admin().await;
    // The agents reconnect by themselves, with backoff.
    fleet.wait_connected(30, WAIT).await.expect("sessions back after the restart");
    let a = admin.clone();
    let done = eventually("the rollout to end", WAIT, || {
        let a = a.clone();
        async move { try_status(&a).await.filter(|s| s.state != "running") }
    })
    .await;
    assert_eq!((done.state.as_str(), done.reason.as_str()), ("done", ""));
    assert_eq!(count(&done, "done"), 30, "{done:#?}");
    let events = events_through(&admin, "upgrade.done", 1).await;
    let problems = fleet::check_rollout(&done, &events, &fleet.events(), &limits(1, AGENT_CONCURRENCY), None);
    assert!(problems.is_empty(), "{problems:#?} (before the restart: {:?})", fleet::in_flight(&before));
    assert!(fleet.stats().sessions_broken >= 30, "every session was cut by the restart");
    assert!(versions(&fleet).values().all(|v| v == TO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_mid_upgrade_holds_the_rollout_until_it_returns_or_times_out() {
    let (back, lost) = ("agent-001", "agent-003");
    let sim = SimK3s {
        upgrade_time: Duration::from_millis(50),
        upgrade_jitter: Duration::ZERO,
        offline_on_pin: BTreeSet::from([back.to_owned(), lost.to_owned()]),
        ..SimK3s::default()
    };
    let Setup { c, fleet, admin } = setup(1, 5, &spec(1, false), sim).await;
    admin.clone().upgrade_start(pb::UpgradeStartRequest::default()).await.expect("upgrade start");

    // `back` took its pin and left: the rollout waits for it (one agent at a time).
    wait_phase(&admin, back, "upgrading").await;
    eventually("it to go offline", WAIT, || async { (fleet.stats().open == 5).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let waiting = status(&admin).await;
    assert_eq!(waiting.state, "running");
    assert_eq!(phase_of(&waiting, back), "upgrading");
    assert_eq!(count(&waiting, "pending"), 3, "{waiting:#?}");

    // It comes back having upgraded: the rollout goes on.
    fleet.set_online(back, true);
    wait_phase(&admin, back, "done").await;
    wait_phase(&admin, lost, "upgrading").await;

    // `lost` stays away past its node timeout: it fails and the rollout halts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.advance_clock(5 * 60 + 5);
    let halted = wait_state(&admin, "halted").await;
    assert_eq!(phase_of(&halted, lost), "failed");
    let reason = &halted.nodes.iter().find(|n| n.name == lost).expect("lost node").reason;
    assert!(reason.contains("offline"), "{reason}");
    assert_eq!(phase_of(&halted, "agent-004"), "pending");

    // Back later, it reports the target: it is done (and pinned to the target,
    // not sent back), but the rollout stays halted until resumed.
    fleet.set_online(lost, true);
    fleet.wait_connected(6, WAIT).await.expect("all back");
    wait_phase(&admin, lost, "done").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = status(&admin).await;
    assert_eq!((still.state.as_str(), phase_of(&still, "agent-004")), ("halted", "pending"));
    let resumed_at = Instant::now();
    admin.clone().upgrade_resume(pb::UpgradeControlRequest {}).await.expect("resume");
    let done = wait_state(&admin, "done").await;
    assert_eq!((count(&done, "done"), count(&done, "failed")), (6, 0));
    let events = events_through(&admin, "upgrade.done", 1).await;
    let problems = fleet::check_rollout(&done, &events, &fleet.events(), &limits(1, 1), Some(resumed_at));
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(versions(&fleet).values().all(|v| v == TO));
}

/// A drain's result counts only from the node the drain was sent to: a worker that
/// reports success for a server's drain (with the exact operation id) moves nothing;
/// the server's own answer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_result_for_a_servers_drain_does_not_move_the_rollout() {
    // Long enough that the forged result arrives first.
    let sim = SimK3s { drain_time: Duration::from_secs(4), ..SimK3s::default() };
    let Setup { c, fleet: _fleet, admin } = setup(1, 1, &spec(1, true), sim).await;
    let forger = elysium_tests::harness::TestNode::new("w-forge");
    forger.join(&c.url(), &c.token(1, 600).await).await.unwrap();

    admin.clone().upgrade_start(pb::UpgradeStartRequest::default()).await.expect("upgrade start");
    let draining = wait_phase(&admin, "server-000", "draining").await;
    let server_id = c.node("server-000").await.expect("server-000").id;
    let started = draining.nodes.iter().find(|n| n.name == "server-000").unwrap().started_unix;
    let op = format!("drain-{}-{server_id}-{started}", draining.id);

    let mut session = forger.session_client(&c.url()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let send = |m| pb::AgentMessage { msg: Some(m) };
    tx.send(send(pb::agent_message::Msg::Hello(pb::Hello {
        agent_version: "test".into(),
        ..Default::default()
    })))
    .await
    .unwrap();
    let forged = pb::OperationResult {
        operation_id: op.clone(),
        success: true,
        message: "drained".into(),
        generation: 0,
    };
    tx.send(send(pb::agent_message::Msg::Result(forged))).await.unwrap();
    tx.send(send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat { seq: 7, ..Default::default() })))
        .await
        .unwrap();
    let mut replies =
        session.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    // In order: the acknowledgement means the forged result was handled.
    loop {
        let reply =
            tokio_stream::StreamExt::next(&mut replies).await.expect("session ended").expect("session");
        if matches!(reply.msg, Some(pb::coordinator_message::Msg::HeartbeatAck(pb::HeartbeatAck { seq: 7 })))
        {
            break;
        }
    }
    assert_eq!(
        phase_of(&status(&admin).await, "server-000"),
        "draining",
        "the forged result moved the rollout"
    );

    // The server's own answer moves it: and only after that answer.
    wait_phase(&admin, "server-000", "done").await;
    let events = events_through(&admin, "upgrade.node-done", 1).await;
    assert!(
        !events.iter().any(|e| e.subject == "w-forge" && e.kind.starts_with("drain.")),
        "the forged result was recorded"
    );
    let seq_of = |kind: &str, subject: &str| {
        events
            .iter()
            .find(|e| e.kind == kind && e.subject == subject)
            .map(|e| e.seq)
            .unwrap_or_else(|| panic!("no {kind} for {subject}"))
    };
    assert!(
        seq_of("drain.succeeded", "server-000") < seq_of("upgrade.node-upgrading", "server-000"),
        "server-000 upgraded before its drain was answered: {events:#?}"
    );
}
