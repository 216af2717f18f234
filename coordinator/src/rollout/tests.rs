//! The rollout policy, as pure functions: order, concurrency, windows, skew,
//! halt, resume, abort.

use super::*;

fn upgrade(extra: &str) -> UpgradeSection {
    let text = format!("[k3s]\nversion = \"v1.31.4+k3s1\"\n[upgrade]\nversion = \"v1.31.5+k3s1\"\n{extra}");
    elysium_spec::ClusterSpec::parse(&text).unwrap().upgrade.unwrap()
}

fn node(name: &str, role: Role, version: &str) -> NodeView {
    NodeView {
        node_id: format!("id-{name}"),
        name: name.into(),
        role,
        labels: BTreeMap::new(),
        online: true,
        version: version.into(),
    }
}

const OLD: &str = "v1.31.4+k3s1";
const NEW: &str = "v1.31.5+k3s1";

fn fleet(servers: usize, agents: usize) -> Vec<NodeView> {
    let mut v: Vec<NodeView> = (0..agents).map(|i| node(&format!("a{i:04}"), Role::Agent, OLD)).collect();
    v.extend((0..servers).map(|i| node(&format!("s{i:02}"), Role::Server, OLD)));
    v
}

/// The coordinator's view: every node online on its current version.
fn observe(r: &Rollout, now: i64) -> Observation {
    let nodes = r
        .nodes
        .iter()
        .map(|n| {
            (
                n.node_id.clone(),
                NodeObs { online: true, version: n.from_version.clone(), ..Default::default() },
            )
        })
        .collect();
    Observation { now, window_open: true, nodes, drains: BTreeMap::new() }
}

fn phases(r: &Rollout) -> Vec<(&str, &str)> {
    r.nodes.iter().map(|n| (n.name.as_str(), n.phase.as_str())).collect()
}

/// What a node's session would be told, as the coordinator publishes `r`.
fn pinned_version(r: &Rollout, node_id: &str) -> Option<String> {
    Published::new(r.clone()).pinned_version(node_id)
}

fn in_flight(r: &Rollout) -> Vec<String> {
    r.nodes.iter().filter(|n| n.phase.in_flight()).map(|n| n.name.clone()).collect()
}

/// Simulates the fleet: every in-flight node drains at once and reports the
/// target one tick later, except those in `fail`, which roll back.
fn run_to_end(r: &mut Rollout, obs: &mut Observation, fail: &[&str], max_in_flight: &mut (usize, usize)) {
    for tick in 1..10_000 {
        obs.now = 1000 + tick;
        for n in &r.nodes {
            if let Some(op) = &n.drain_op {
                obs.drains.insert(op.clone(), Ok(()));
            }
            if n.phase == Phase::Upgrading {
                let o = obs.nodes.get_mut(&n.node_id).unwrap();
                if fail.contains(&n.name.as_str()) {
                    o.failed_version = r.target.clone();
                    o.failure = "never became healthy".into();
                } else {
                    o.version = r.target.clone();
                }
            }
        }
        advance(r, obs);
        let servers = r.nodes.iter().filter(|n| n.role == Role::Server && n.phase.in_flight()).count();
        let agents = r.nodes.iter().filter(|n| n.role == Role::Agent && n.phase.in_flight()).count();
        if agents > 0 {
            assert!(
                r.nodes.iter().filter(|n| n.role == Role::Server).all(|n| n.phase.terminal()),
                "an agent started while a server was not finished"
            );
        }
        max_in_flight.0 = max_in_flight.0.max(servers);
        max_in_flight.1 = max_in_flight.1.max(agents);
        if r.state != State::Running {
            return;
        }
    }
    panic!("rollout never ended: {:?}", phases(r));
}

#[test]
fn servers_first_one_at_a_time_then_agents_two_at_a_time() {
    let u = upgrade("agent_concurrency = 2\n");
    let mut r = plan("r1", NEW, &fleet(3, 5), &u, 1000).unwrap();
    assert_eq!(
        r.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["s00", "s01", "s02", "a0000", "a0001", "a0002", "a0003", "a0004"]
    );
    let mut obs = observe(&r, 1000);
    let fx = advance(&mut r, &obs);
    assert_eq!(in_flight(&r), ["s00"]);
    assert!(fx.contains(&Effect::Drain { node: "s00".into(), op: r.nodes[0].drain_op.clone().unwrap() }));
    assert_eq!(pinned_version(&r, "id-s00").as_deref(), Some(OLD), "not upgraded before it is drained");
    let mut max = (0, 0);
    run_to_end(&mut r, &mut obs, &[], &mut max);
    assert_eq!(r.state, State::Done);
    assert_eq!(max, (1, 2));
    assert!(r.nodes.iter().all(|n| n.phase == Phase::Done && !n.cordoned));
    assert_eq!(pinned_version(&r, "id-a0004").as_deref(), Some(NEW));
}

#[test]
fn a_thousand_nodes_honour_order_concurrency_and_halt_exactly() {
    let u = upgrade("server_concurrency = 1\nagent_concurrency = 7\n");
    let mut r = plan("big", NEW, &fleet(3, 997), &u, 1000).unwrap();
    let mut obs = observe(&r, 1000);
    let mut max = (0, 0);
    run_to_end(&mut r, &mut obs, &["a0500"], &mut max);
    assert_eq!(max, (1, 7));
    assert_eq!(r.state, State::Halted);
    assert!(r.reason.contains("a0500") && r.reason.contains("rolled back"), "{}", r.reason);
    // Exactly: nothing after the failure started; the ones in flight with it finished.
    let failed = r.nodes.iter().position(|n| n.name == "a0500").unwrap();
    assert_eq!(r.nodes[failed].phase, Phase::RolledBack);
    assert!(r.nodes[..failed].iter().all(|n| n.phase == Phase::Done));
    let started_after: Vec<_> = r.nodes[failed + 1..].iter().filter(|n| n.phase != Phase::Pending).collect();
    assert!(started_after.len() < 7, "{} nodes after the failed one started", started_after.len());
    let before = r.clone();
    for t in 0..50 {
        obs.now += t;
        advance(&mut r, &obs);
    }
    assert_eq!(
        r.nodes.iter().filter(|n| n.phase == Phase::Pending).count(),
        before.nodes.iter().filter(|n| n.phase == Phase::Pending).count(),
        "a halted rollout started nodes"
    );
    // Resume: the rest goes; the rolled-back node is not retried.
    resume(&mut r, obs.now).unwrap();
    run_to_end(&mut r, &mut obs, &[], &mut max);
    assert_eq!(r.state, State::Done);
    assert_eq!(r.nodes.iter().filter(|n| n.phase == Phase::Done).count(), 999);
}

#[test]
fn a_failed_server_halts_and_holds_agents_only_across_a_minor_version() {
    // A minor upgrade: agents may not outrun a server left on the old minor.
    let minor = "v1.32.0+k3s1";
    let u = upgrade("");
    let mut r = plan("r", minor, &fleet(2, 3), &u, 1000).unwrap();
    let mut obs = observe(&r, 1000);
    run_to_end(&mut r, &mut obs, &["s00"], &mut (0, 0));
    assert_eq!(r.state, State::Halted);
    assert_eq!(phases(&r)[0], ("s00", "rolled-back"));
    assert_eq!(phases(&r)[1], ("s01", "pending"));
    assert!(r.nodes[0].reason.contains("never became healthy"));
    assert!(!r.nodes[0].cordoned, "a failed node must be uncordoned");
    resume(&mut r, obs.now).unwrap();
    run_to_end(&mut r, &mut obs, &[], &mut (0, 0));
    assert_eq!(phases(&r)[1], ("s01", "done"));
    for n in r.nodes.iter().filter(|n| n.role == Role::Agent) {
        assert_eq!(n.phase, Phase::Skipped);
        assert!(n.reason.contains("held back: s00 stays on") && n.reason.contains("newer"), "{}", n.reason);
    }

    // A patch release: the failed server halts the rollout, agents stay pending,
    // and after a resume they go (a kubelet one patch ahead is within the policy).
    let mut r = plan("r", NEW, &fleet(2, 3), &u, 1000).unwrap();
    let mut obs = observe(&r, 1000);
    run_to_end(&mut r, &mut obs, &["s00"], &mut (0, 0));
    assert_eq!(r.state, State::Halted);
    assert!(
        r.nodes.iter().filter(|n| n.role == Role::Agent).all(|n| n.phase == Phase::Pending),
        "{:?}",
        phases(&r)
    );
    resume(&mut r, obs.now).unwrap();
    run_to_end(&mut r, &mut obs, &[], &mut (0, 0));
    assert_eq!(r.state, State::Done);
    assert!(r.nodes.iter().filter(|n| n.role == Role::Agent).all(|n| n.phase == Phase::Done));
}

#[test]
fn skips_are_explained_and_downgrades_refused() {
    let u = upgrade("exclude = [\"a3\"]\n");
    let mut nodes = vec![
        node("s0", Role::Server, OLD),
        node("a1", Role::Agent, NEW),
        node("a2", Role::Agent, "v1.29.9+k3s1"),
    ];
    nodes.push(node("a3", Role::Agent, OLD));
    let mut out = node("a4", Role::Agent, OLD);
    out.labels.insert("k3s-upgrade".into(), "disabled".into());
    nodes.push(out);
    let mut off = node("a5", Role::Agent, OLD);
    off.online = false;
    nodes.push(off);
    nodes.push(node("a6", Role::Agent, ""));
    let r = plan("r", NEW, &nodes, &u, 5).unwrap();
    let why =
        |name: &str| r.nodes.iter().find(|n| n.name == name).map(|n| (n.phase, n.reason.clone())).unwrap();
    assert_eq!(why("s0").0, Phase::Pending);
    assert!(why("a1").1.contains("already on the target"));
    assert!(why("a2").1.contains("skips minor versions"), "{}", why("a2").1);
    assert!(why("a3").1.contains("excluded"));
    assert!(why("a4").1.contains("opted out (k3s-upgrade=disabled)"));
    assert!(why("a5").1.contains("offline"));
    assert!(why("a6").1.contains("not installed"));
    let err = plan("r", OLD, &[node("s0", Role::Server, NEW)], &u, 5).unwrap_err();
    assert!(matches!(err, PlanError::Downgrade { .. }), "{err}");
    assert!(matches!(plan("r", "latest", &nodes, &u, 5), Err(PlanError::BadTarget(_))));
}

#[test]
fn offline_nodes_are_waited_for_in_order_when_configured() {
    let u = upgrade("offline = \"wait\"\nagent_concurrency = 2\n");
    let mut r = plan("r", NEW, &fleet(1, 3), &u, 1000).unwrap();
    let mut obs = observe(&r, 1000);
    obs.nodes.get_mut("id-s00").unwrap().online = false;
    for _ in 0..3 {
        advance(&mut r, &obs);
    }
    assert!(in_flight(&r).is_empty(), "started while the server was offline");
    assert_eq!(r.state, State::Running);
    obs.nodes.get_mut("id-s00").unwrap().online = true;
    advance(&mut r, &obs);
    assert_eq!(in_flight(&r), ["s00"]);
}

#[test]
fn nothing_starts_outside_a_window_but_started_nodes_finish() {
    let u = upgrade("drain.enabled = false\n".replace("drain.enabled", "[upgrade.drain]\nenabled").as_str());
    let mut r = plan("r", NEW, &fleet(1, 2), &u, 1000).unwrap();
    let mut obs = observe(&r, 1000);
    obs.window_open = false;
    advance(&mut r, &obs);
    assert!(in_flight(&r).is_empty());
    obs.window_open = true;
    advance(&mut r, &obs);
    assert_eq!(phases(&r)[0], ("s00", "upgrading"), "no drain when drain is off");
    obs.window_open = false;
    obs.nodes.get_mut("id-s00").unwrap().version = NEW.into();
    obs.now += 10;
    advance(&mut r, &obs);
    assert_eq!(phases(&r)[0], ("s00", "done"), "an upgrade that started inside the window finishes");
    assert!(in_flight(&r).is_empty(), "an agent started outside the window");
}

#[test]
fn timeouts_and_failed_drains_halt_and_uncordon() {
    let u = upgrade("node_timeout_minutes = 5\n");
    let mut r = plan("r", NEW, &fleet(1, 1), &u, 1000).unwrap();
    let mut obs = observe(&r, 1000);
    advance(&mut r, &obs);
    let op = r.nodes[0].drain_op.clone().unwrap();
    obs.drains.insert(op, Err("pod db-0: PodDisruptionBudget db allows no eviction".into()));
    obs.now += 5;
    let fx = advance(&mut r, &obs);
    assert_eq!(r.state, State::Halted);
    assert!(fx.contains(&Effect::Uncordon { node: "s00".into() }));
    assert!(r.reason.contains("PodDisruptionBudget"), "{}", r.reason);

    let mut r = plan(
        "r",
        NEW,
        &fleet(1, 1),
        &upgrade("node_timeout_minutes = 5\n[upgrade.drain]\nenabled = false\n"),
        1000,
    )
    .unwrap();
    let mut obs = observe(&r, 1000);
    advance(&mut r, &obs);
    obs.now += 301;
    obs.nodes.get_mut("id-s00").unwrap().online = false;
    advance(&mut r, &obs);
    assert_eq!(r.nodes[0].phase, Phase::Failed);
    assert!(r.nodes[0].reason.contains("after 5 min (offline)"), "{}", r.nodes[0].reason);
    assert_eq!(pinned_version(&r, "id-s00").as_deref(), Some(OLD));

    // It comes back on the target after all: done, pinned to the target, and
    // the rollout stays halted until the operator resumes it.
    obs.now += 60;
    obs.nodes.get_mut("id-s00").unwrap().online = true;
    obs.nodes.get_mut("id-s00").unwrap().version = NEW.into();
    let fx = advance(&mut r, &obs);
    assert_eq!(r.nodes[0].phase, Phase::Done);
    assert!(r.nodes[0].reason.contains("after it had failed (not on"), "{}", r.nodes[0].reason);
    assert_eq!(pinned_version(&r, "id-s00").as_deref(), Some(NEW));
    assert!(fx.iter().any(|f| matches!(f, Effect::Event { kind: "upgrade.node-done", .. })), "{fx:?}");
    assert_eq!(r.state, State::Halted);
    assert!(in_flight(&r).is_empty());
}

#[test]
fn pause_resume_and_abort() {
    let u = upgrade("");
    let mut r = plan("r", NEW, &fleet(2, 1), &u, 1000).unwrap();
    let mut obs = observe(&r, 1000);
    advance(&mut r, &obs);
    pause(&mut r, 1001).unwrap();
    assert!(pause(&mut r, 1001).is_err());
    // The node in flight finishes while paused; nothing else starts.
    obs.drains.insert(r.nodes[0].drain_op.clone().unwrap(), Ok(()));
    advance(&mut r, &obs);
    obs.nodes.get_mut("id-s00").unwrap().version = NEW.into();
    advance(&mut r, &obs);
    assert_eq!(phases(&r)[..2], [("s00", "done"), ("s01", "pending")]);
    resume(&mut r, 1002).unwrap();
    advance(&mut r, &obs);
    assert_eq!(in_flight(&r), ["s01"]);
    // Abort while s01 drains: K3s is not touched, the cordon is undone.
    let fx = abort(&mut r, 1003).unwrap();
    assert!(fx.iter().all(|f| *f != Effect::Uncordon { node: "s01".into() }), "uncordoned mid-drain");
    obs.drains.insert(r.nodes[1].drain_op.clone().unwrap(), Ok(()));
    let fx = advance(&mut r, &obs);
    assert!(fx.contains(&Effect::Uncordon { node: "s01".into() }));
    assert_eq!(phases(&r), [("s00", "done"), ("s01", "skipped"), ("a0000", "skipped")]);
    assert_eq!(pinned_version(&r, "id-s01").as_deref(), Some(OLD));
    assert!(resume(&mut r, 1004).is_err() && abort(&mut r, 1004).is_err());
}

#[test]
fn a_restarted_coordinator_drains_again() {
    let u = upgrade("");
    let mut r = plan("r", NEW, &fleet(1, 0), &u, 1000).unwrap();
    let obs = observe(&r, 1000);
    advance(&mut r, &obs);
    // Persisted and loaded: the drain in flight is not kept.
    let json = serde_json::to_string(&r).unwrap();
    let mut loaded: Rollout = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded.nodes[0].drain_op, None);
    let fx = advance(&mut loaded, &obs);
    assert!(matches!(&fx[..], [Effect::Drain { node, .. }] if node == "s00"), "{fx:?}");
    assert!(loaded.nodes[0].cordoned);
}

#[test]
fn sessions_are_woken_only_when_a_pin_changes() {
    let u = upgrade("");
    let mut r = plan("r", NEW, &fleet(2, 1), &u, 1000).unwrap();
    let published = Published::new(r.clone());
    assert!(published.same_pins(&r));
    assert_eq!(published.pinned_version("id-s00").as_deref(), Some(OLD));
    assert_eq!(published.pinned_version("id-nobody"), None);

    // s00 starts draining: a phase changes, no pin does.
    let mut obs = observe(&r, 1000);
    advance(&mut r, &obs);
    assert_eq!(in_flight(&r), ["s00"]);
    assert!(published.same_pins(&r), "a drain starting woke every session");

    // Drained: s00 gets the target, which is a pin change.
    obs.drains.insert(r.nodes[0].drain_op.clone().unwrap(), Ok(()));
    advance(&mut r, &obs);
    assert!(!published.same_pins(&r));
    let published = Published::new(r.clone());
    assert_eq!(published.pinned_version("id-s00").as_deref(), Some(NEW));

    // Another rollout (or another target) always wakes them.
    let other = plan("r2", NEW, &fleet(2, 1), &u, 1000).unwrap();
    assert!(!Published::new(other).same_pins(&r));
}
