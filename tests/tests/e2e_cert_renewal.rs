//! End to end: a node certificate that lives three minutes renews itself over the
//! session on a real Debian node (systemd, nspawn) with the real binary, and the node
//! stays online throughout.
//!
//! Needs root and the test-node prerequisites (see `elysium_tests::testnode`), and a built binary:
//! `cargo build -p elysium-agent && cargo test -p elysium-tests --test e2e_cert_renewal -- --nocapture`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use elysium_tests::e2e::{self, Coordinator, describe, poll};
use elysium_tests::testnode::{self, NodeOptions, TestNet, TestNode};

const NODE_BIN: &str = "/usr/local/bin/elysium-node";
/// Three minutes: renewed after two (when a third remains).
const NODE_CERT_TTL: &str = "3m";
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Two minutes to the renewal, a heartbeat (5 s) to notice it, a margin.
const RENEWAL_TIMEOUT: Duration = Duration::from_secs(170);

#[test]
fn a_node_certificate_renews_over_the_session_and_the_node_stays_online() {
    testnode::preflight().unwrap_or_else(|e| panic!("{e:#}"));
    let bin = e2e::node_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let net = TestNet::new().unwrap_or_else(|e| panic!("{e:#}"));
    let mut coord =
        Coordinator::start_with(&bin, tmp.path(), net.host_addr(), &["--node-cert-ttl", NODE_CERT_TTL])
            .unwrap_or_else(|e| panic!("{e:#}"));
    let mut nodes: Vec<TestNode> = Vec::new();
    let started = Instant::now();
    if let Err(e) = scenario(&bin, &net, tmp.path(), &mut coord, &mut nodes, started) {
        for node in &nodes {
            eprintln!(
                "===== journal of elysium-node in {} =====\n{}",
                node.name(),
                node.journal("elysium-node")
            );
        }
        eprintln!("===== coordinator log =====\n{}", coord.log());
        panic!("e2e certificate renewal failed after {:.1?}: {e:#}", started.elapsed());
    }
}

fn step(started: Instant, what: &str) {
    println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

fn fingerprint_of(path: &Path) -> Result<String> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let der = elysium_identity::pem_to_der(&pem).with_context(|| format!("{} is not PEM", path.display()))?;
    Ok(elysium_identity::fingerprint(&der))
}

fn scenario(
    bin: &Path,
    net: &TestNet,
    dir: &Path,
    coord: &mut Coordinator,
    nodes: &mut Vec<TestNode>,
    started: Instant,
) -> Result<()> {
    // Heartbeats every 5 s: the coordinator looks at the certificate at each message.
    let spec = dir.join("cluster.toml");
    std::fs::write(&spec, "[cluster]\nname = \"e2e\"\n[agent]\nheartbeat_seconds = 5\n")?;
    coord.set_spec(&spec)?;

    nodes.push(net.boot(NodeOptions::new("node1").bind_ro(bin, NODE_BIN))?);
    let node1 = &nodes[0];
    let token = coord.create_token("agent")?;
    let out = e2e::join_node(node1, &coord.url(), &token)?;
    ensure!(out.status.success(), "join on node1 failed: {}", describe(&out));
    let first = poll("node1 online", ONLINE_TIMEOUT, || {
        let n = coord.node("node1")?;
        Ok((n["online"] == true).then_some(n))
    })?;
    let old = first["certificate_sha256"].as_str().unwrap_or_default().to_owned();
    let cert_path = node1.root().join("etc/elysium/node.crt");
    ensure!(fingerprint_of(&cert_path)? == old, "node.crt is not the enrolled certificate");
    step(started, &format!("node1 online with certificate {}", &old[..16]));
    let online_before = online_events(coord)?;

    // The coordinator asks for renewal two minutes in; the node reconnects with the new one.
    let renewed = poll("node1 online with a renewed certificate", RENEWAL_TIMEOUT, || {
        let n = coord.node("node1")?;
        let fp = n["certificate_sha256"].as_str().unwrap_or_default();
        Ok((n["online"] == true && fp != old && n["pending_certificate_sha256"] == "").then_some(n))
    })?;
    let new = renewed["certificate_sha256"].as_str().unwrap_or_default().to_owned();
    step(started, &format!("node1 renewed: {} -> {}", &old[..16], &new[..16]));
    ensure!(
        renewed["certificate_not_after_unix"].as_i64() > first["certificate_not_after_unix"].as_i64(),
        "the renewed certificate does not outlive the first: {renewed:#}"
    );
    poll("the new certificate in /etc/elysium/node.crt", ONLINE_TIMEOUT, || {
        let moved =
            fingerprint_of(&cert_path)? == new && !node1.root().join("etc/elysium/node.next.crt").exists();
        Ok(moved.then_some(()))
    })?;
    let events = coord.events()?;
    ensure!(
        events.iter().any(|e| e["kind"] == "certs.node_renewed" && e["subject"] == "node1"),
        "no certs.node_renewed event for node1"
    );
    // One reconnection for the renewal, no more: the new certificate is not due.
    let online_after = online_events(coord)?;
    ensure!(online_after == online_before + 1, "node.online events {online_before} -> {online_after}");
    let state = node1.systemctl_is_active("elysium-node")?;
    ensure!(state == "active", "elysium-node.service is {state:?} after the renewal");

    // `certs status` lists node1's new certificate; within 1m nothing expires, within 10m it does.
    let data_dir = coord.data_dir().to_str().context("data dir is not UTF-8")?.to_owned();
    let status = coord.admin(&[
        "coordinator",
        "certs",
        "status",
        "--data-dir",
        &data_dir,
        "--within",
        "1m",
        "-o",
        "json",
    ])?;
    ensure!(status.status.success(), "certs status --within 1m: {}", describe(&status));
    let listed: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let node_cert = listed
        .as_array()
        .and_then(|l| l.iter().find(|c| c["kind"] == "node" && c["name"] == "node1"))
        .with_context(|| format!("node1 not in certs status: {listed:#}"))?;
    ensure!(node_cert["fingerprint"] == new.as_str(), "certs status shows {node_cert:#}");
    let status =
        coord.admin(&["coordinator", "certs", "status", "--data-dir", &data_dir, "--within", "10m"])?;
    ensure!(
        status.status.code() == Some(1),
        "certs status --within 10m should exit 1: {}",
        describe(&status)
    );
    step(started, "certs status lists the renewed certificate");

    for node in nodes.drain(..) {
        node.shutdown()?;
    }
    let status = coord.stop(Duration::from_secs(5))?;
    ensure!(status.success(), "the coordinator exited with {status} on SIGTERM");
    Ok(())
}

fn online_events(coord: &Coordinator) -> Result<usize> {
    Ok(coord.events()?.iter().filter(|e| e["kind"] == "node.online" && e["subject"] == "node1").count())
}
