//! End to end: a coordinated rolling upgrade on real-systemd test nodes. One server and two agents run
//! the K3s stand-in (installed by their agents from a release mirror); the coordinator rolls them from
//! v1 to v2 in order (server first, agents one at a time), then a rollout to a v3 that never becomes
//! ready halts after the first server rolls back by itself, and the other nodes stay on v2.
//!
//! Drain is off: the K3s stand-in serves no Kubernetes API (drain is tested against the API server
//! stand-in in `tests/tests/drain.rs`).
//!
//! Needs root, the test-node prerequisites and built binaries (`cargo build -p elysium-agent -p k3s-standin`).

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use elysium_tests::e2e::{self, Coordinator, describe, join_node, node_journal, poll};
use elysium_tests::mirror::FaultMirror;
use elysium_tests::testnode::{self, NodeOptions, TestNet, TestNode};
use k3s_standin::Behaviour;
use serde_json::Value;

const NODE_BIN: &str = "/usr/local/bin/elysium-node";
const V1: &str = "v1.31.4+k3s1";
const V2: &str = "v1.31.5+k3s1";
const V3_BROKEN: &str = "v1.31.6+k3s1";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);

/// Field order is drop order: nodes power off first, then the coordinator, mirror, network, files.
struct Fixture {
    nodes: Vec<TestNode>,
    coord: Coordinator,
    mirror: FaultMirror,
    net: TestNet,
    bin: PathBuf,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Fixture {
    fn new() -> Result<Self> {
        let started = Instant::now();
        testnode::preflight()?;
        let bin = e2e::node_binary()?;
        let k3s = k3s_standin::built_binary()
            .filter(|p| p.is_file())
            .context("the K3s stand-in binary is missing: run `cargo build -p k3s-standin` first")?;
        let dir = tempfile::tempdir()?;
        let mirror_dir = dir.path().join("mirror");
        k3s_standin::build_mirror(
            &mirror_dir,
            &k3s,
            &[(V1, Behaviour::Healthy), (V2, Behaviour::Healthy), (V3_BROKEN, Behaviour::NeverReady)],
        )?;
        let net = TestNet::new()?;
        let mirror = FaultMirror::start(&mirror_dir, SocketAddr::from((net.host_addr(), 0)))?;
        let coord = Coordinator::start(&bin, dir.path(), net.host_addr())?;
        Ok(Self { nodes: Vec::new(), coord, mirror, net, bin, dir, started })
    }

    fn step(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn set_spec(&self) -> Result<u64> {
        let text = format!(
            "[cluster]\nname = \"e2e-upgrade\"\n\n[agent]\nheartbeat_seconds = 5\nreconcile_seconds = 10\n\n\
             [k3s]\nversion = \"{V1}\"\nrelease_url = \"{}\"\nhealth_timeout_seconds = 30\n\n\
             [upgrade]\nversion = \"{V2}\"\nserver_concurrency = 1\nagent_concurrency = 1\nnode_timeout_minutes = 5\n\n\
             [upgrade.drain]\nenabled = false\n{}",
            self.mirror.url(),
            k3s_standin::pins_toml(&self.dir.path().join("mirror"))?
        );
        let file = self.dir.path().join("cluster.toml");
        fs::write(&file, text)?;
        self.coord.set_spec(&file)
    }

    fn join(&mut self, name: &str, role: &str) -> Result<()> {
        let token = self.coord.create_token(role)?;
        let node = self.net.boot(NodeOptions::new(name).bind_ro(&self.bin, NODE_BIN))?;
        let out = join_node(&node, &self.coord.url(), &token)?;
        self.nodes.push(node);
        ensure!(out.status.success(), "join of {name} ({role}) failed: {}", describe(&out));
        self.step(&format!("{name} joined as {role}"));
        Ok(())
    }

    fn k3s_version(&self, name: &str) -> Result<String> {
        Ok(self.coord.node(name)?["k3s_version"].as_str().unwrap_or_default().to_owned())
    }

    /// `upgrade status -o json`, whatever its exit code (1 when halted or aborted).
    fn status(&self) -> Result<Value> {
        let out = self.coord.admin(&["upgrade", "status", "-o", "json"])?;
        serde_json::from_slice(&out.stdout).with_context(|| format!("upgrade status: {}", describe(&out)))
    }

    fn wait_rollout(&self, states: &[&str]) -> Result<Value> {
        poll(&format!("the rollout to reach {states:?}"), ROLLOUT_TIMEOUT, || {
            let s = self.status()?;
            Ok(states.contains(&s["state"].as_str().unwrap_or_default()).then_some(s))
        })
    }

    fn diagnostics(&self) {
        for node in &self.nodes {
            eprintln!(
                "===== {}: journal =====\n{}",
                node.name(),
                node_journal(node, &["elysium-node", "k3s", "k3s-agent"])
            );
        }
        eprintln!("===== coordinator log =====\n{}", self.coord.log());
        if let Ok(s) = self.status() {
            eprintln!("===== upgrade status =====\n{s:#}");
        }
    }
}

fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"].as_array().and_then(|a| a.iter().find(|n| n["name"] == name)).unwrap_or(&Value::Null)
}

fn scenario(fx: &mut Fixture) -> Result<()> {
    fx.set_spec()?;
    fx.join("srv1", "server")?;
    fx.join("wrk1", "agent")?;
    fx.join("wrk2", "agent")?;
    for name in ["srv1", "wrk1", "wrk2"] {
        poll(&format!("{name} to run K3s {V1}"), INSTALL_TIMEOUT, || {
            Ok((fx.k3s_version(name)? == V1).then_some(()))
        })?;
    }
    fx.step(&format!("all three nodes run {V1}"));

    // The plan says what will happen, in order, and changes nothing.
    let plan = fx.coord.admin_json(&["upgrade", "plan", "-o", "json"])?;
    let order: Vec<&str> =
        plan["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    ensure!(order == ["srv1", "wrk1", "wrk2"], "plan order {order:?}");
    ensure!(plan["state"] == "planned" && plan["target_version"] == V2, "{plan:#}");
    ensure!(fx.coord.admin(&["upgrade", "status"])?.status.code() == Some(1), "a plan started a rollout");

    // v1 → v2, in order.
    fx.coord.admin_ok(&["upgrade", "start"])?;
    let done = fx.wait_rollout(&["done", "halted"])?;
    ensure!(done["state"] == "done", "rollout to {V2} did not finish: {done:#}");
    let (s, w1, w2) = (node(&done, "srv1"), node(&done, "wrk1"), node(&done, "wrk2"));
    for n in [s, w1, w2] {
        ensure!(n["phase"] == "done", "{n:#}");
    }
    let t = |n: &Value, k: &str| n[k].as_i64().unwrap_or(0);
    ensure!(
        t(s, "finished_unix") <= t(w1, "started_unix"),
        "an agent started before the server finished: {done:#}"
    );
    ensure!(t(w1, "finished_unix") <= t(w2, "started_unix"), "agent concurrency 1 not honoured: {done:#}");
    for (i, name) in ["srv1", "wrk1", "wrk2"].iter().enumerate() {
        ensure!(fx.k3s_version(name)? == V2, "{name} reports {}", fx.k3s_version(name)?);
        let out = fx.nodes[i].exec_ok(&["/usr/local/bin/k3s", "--version"])?;
        ensure!(out.contains(V2), "{name}: k3s --version says {out}");
    }
    fx.step(&format!("rolled to {V2}: srv1, then wrk1, then wrk2"));

    // v2 → broken v3: the server rolls back by itself, the rollout halts, agents are not touched.
    fx.coord.admin_ok(&["upgrade", "start", "--version", V3_BROKEN])?;
    let halted = fx.wait_rollout(&["halted", "done"])?;
    ensure!(halted["state"] == "halted", "{halted:#}");
    let s = node(&halted, "srv1");
    ensure!(s["phase"] == "rolled-back", "{s:#}");
    ensure!(halted["reason"].as_str().unwrap_or_default().contains("rolled back"), "{halted:#}");
    for name in ["wrk1", "wrk2"] {
        ensure!(node(&halted, name)["phase"] == "pending", "{name} moved in a halted rollout: {halted:#}");
    }
    let out = fx.coord.admin(&["upgrade", "status"])?;
    ensure!(
        out.status.code() == Some(1),
        "`upgrade status` of a halted rollout exits {:?}",
        out.status.code()
    );
    // Still halted a while later, and everyone is on v2.
    std::thread::sleep(Duration::from_secs(5));
    ensure!(fx.status()?["state"] == "halted", "the halted rollout moved on");
    for (i, name) in ["srv1", "wrk1", "wrk2"].iter().enumerate() {
        ensure!(fx.k3s_version(name)? == V2, "{name} reports {}", fx.k3s_version(name)?);
        let out = fx.nodes[i].exec_ok(&["/usr/local/bin/k3s", "--version"])?;
        ensure!(out.contains(V2), "{name}: k3s --version says {out}");
    }
    // The event log tells the story: the node failed, the rollout halted.
    let events = fx.coord.events()?;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap_or(""), e["subject"].as_str().unwrap_or("")))
        .collect();
    ensure!(kinds.contains(&("upgrade.node-failed", "srv1")), "no node-failed event for srv1: {kinds:?}");
    ensure!(kinds.iter().any(|(k, _)| *k == "upgrade.halted"), "no upgrade.halted event: {kinds:?}");
    fx.step(&format!("{V3_BROKEN}: srv1 rolled back to {V2}, rollout halted, agents untouched"));

    fx.coord.admin_ok(&["upgrade", "abort"])?;
    ensure!(fx.status()?["state"] == "aborted");
    fx.step("aborted");
    Ok(())
}

#[test]
fn rolling_upgrade_in_order_and_halt_on_a_broken_release() {
    let mut fx = Fixture::new().unwrap_or_else(|e| panic!("setting up: {e:#}"));
    if let Err(e) = scenario(&mut fx) {
        fx.diagnostics();
        panic!("failed after {:.1?}: {e:#}", fx.started.elapsed());
    }
    for node in &fx.nodes {
        let _ = node.exec(&["systemctl", "stop", "elysium-node"]);
    }
    for node in fx.nodes.drain(..) {
        let _ = node.shutdown();
    }
    let _ = fx.coord.stop(Duration::from_secs(5));
}
