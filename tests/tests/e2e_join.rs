//! End to end: a real coordinator on the host, real Debian nodes with systemd (nspawn), the real
//! `elysium-node` binary. One node joins, runs the agent as a systemd service, survives a restart,
//! receives a spec push; a second node is refused a used token and a token with a forged CA fingerprint.
//!
//! Needs root and the test-node prerequisites (see `elysium_tests::testnode`), and a built binary:
//! `cargo build -p elysium-agent && cargo test -p elysium-tests --test e2e_join -- --nocapture`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use elysium_tests::e2e::{self, Coordinator, describe, poll};
use elysium_tests::testnode::{self, NodeOptions, TestNet, TestNode};
use serde_json::Value;

/// Where the binary is bound (read-only) inside nodes: the path `join` installs to, so join finds it
/// already in place.
const NODE_BIN: &str = "/usr/local/bin/elysium-node";
/// The token file inside nodes (0600; the token never goes on a command line).
const TOKEN_FILE: &str = "/root/join-token";
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
const ONLINE_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn join_run_restart_spec_push_and_token_refusals() {
    testnode::preflight().unwrap_or_else(|e| panic!("{e:#}"));
    let bin = e2e::node_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let net = TestNet::new().unwrap_or_else(|e| panic!("{e:#}"));
    let mut coord = Coordinator::start(&bin, tmp.path(), net.host_addr()).unwrap_or_else(|e| panic!("{e:#}"));
    // Declared after `net` and `coord`, so dropped (powered off) before them, also on panic.
    let mut nodes: Vec<TestNode> = Vec::new();

    let ctx = Ctx { bin: &bin, net: &net, dir: tmp.path(), started: Instant::now() };
    if let Err(e) = scenario(&ctx, &mut coord, &mut nodes) {
        for node in &nodes {
            eprintln!(
                "===== journal of elysium-node in {} =====\n{}",
                node.name(),
                node.journal("elysium-node")
            );
        }
        eprintln!("===== coordinator log =====\n{}", coord.log());
        match coord.admin_ok(&["events", "--limit", "1000"]) {
            Ok(events) => eprintln!("===== coordinator events =====\n{events}"),
            Err(e) => eprintln!("===== coordinator events unavailable: {e:#}"),
        }
        panic!("e2e join scenario failed after {:.1?}: {e:#}", ctx.started.elapsed());
    }
}

struct Ctx<'a> {
    bin: &'a Path,
    net: &'a TestNet,
    dir: &'a Path,
    started: Instant,
}

impl Ctx<'_> {
    /// Progress line with the time since the start of the scenario.
    fn step(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Boots a node with the binary bound at [`NODE_BIN`].
    fn boot(&self, name: &str) -> Result<TestNode> {
        let node = self.net.boot(NodeOptions::new(name).bind_ro(self.bin, NODE_BIN))?;
        self.step(&format!("{name} booted in {:.1?} at {}", node.boot_time(), node.addr()));
        Ok(node)
    }
}

fn scenario(ctx: &Ctx<'_>, coord: &mut Coordinator, nodes: &mut Vec<TestNode>) -> Result<()> {
    ctx.step(&format!("coordinator serving on {}", coord.url()));

    // --- 3. A single-use join token. ---
    let token = create_token(coord)?;
    let secret = token_secret(&token)?;

    // --- 4. node1 joins. ---
    nodes.push(ctx.boot("node1")?);
    let node1 = &nodes[0];
    write_token_file(node1, &token)?;
    let out = join(node1, &coord.url())?;
    ensure!(out.status.success(), "join on node1 failed: {}", describe(&out));
    ctx.step("node1 joined");
    // Join's own output must not echo the token either.
    ensure!(!output_contains(&out, &secret), "join printed the token secret: {}", describe(&out));

    // --- 5. The agent runs as a service, the identity is on disk, the coordinator sees the node. ---
    let state = node1.systemctl_is_active("elysium-node")?;
    ensure!(state == "active", "elysium-node.service in node1 is {state:?} right after join");
    let key_mode = fs::metadata(node1.root().join("etc/elysium/node.key"))
        .context("node1 has no /etc/elysium/node.key")?
        .permissions()
        .mode()
        & 0o7777;
    ensure!(key_mode == 0o600, "/etc/elysium/node.key has mode {key_mode:04o}, want 0600");
    ensure!(node1.root().join("etc/elysium/agent.toml").is_file(), "node1 has no /etc/elysium/agent.toml");
    wait_online(coord, "node1", true)?;
    ctx.step("node1 online at the coordinator");
    let record = coord.admin_json(&["nodes", "get", "node1", "-o", "json"])?;
    let os = record["inventory"]["os"].as_str().unwrap_or_default();
    ensure!(os.contains("Debian"), "node1's inventory os is {os:?}, want Debian: {record:#}");
    // The agent's hardware inventory (read from the node's /sys) reaches `nodes get`.
    let pci = record["hardware"]["pci"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(pci > 0, "node1's hardware inventory has no PCI devices: {:#}", record["hardware"]);

    // --- 6. The token is a secret: not in the node's journal, not in the coordinator's log. ---
    let journal = node1.exec_ok(&["journalctl", "--no-pager"])?;
    ensure!(!journal.contains(&secret), "the join token secret appears in node1's journal");
    ensure!(!coord.log().contains(&secret), "the join token secret appears in the coordinator log");

    // --- 7. Join again: idempotent, nothing to do, service untouched. ---
    let out = join(node1, &coord.url())?;
    ensure!(out.status.success(), "second join on node1 failed: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("nothing to do"),
        "second join did not say \"nothing to do\": {}",
        describe(&out)
    );
    let state = node1.systemctl_is_active("elysium-node")?;
    ensure!(state == "active", "elysium-node.service is {state:?} after the second join");
    ctx.step("re-join is a no-op");

    // --- 8. Restarting the service: the agent opens a new session. ---
    let before = online_events(coord, "node1")?;
    node1.exec_ok(&["systemctl", "restart", "elysium-node"])?;
    let after = poll("a new node.online event for node1 after the restart", ONLINE_TIMEOUT, || {
        let n = online_events(coord, "node1")?;
        Ok((n >= 2 && n > before).then_some(n))
    })?;
    wait_online(coord, "node1", true)?;
    ctx.step(&format!("node1 reconnected after a restart ({before} -> {after} node.online events)"));

    // --- 9. A spec pushed by the admin reaches the node and is applied. ---
    let spec_file = ctx.dir.join("cluster.toml");
    fs::write(&spec_file, "[cluster]\nname = \"e2e\"\n[agent]\nheartbeat_seconds = 5\n")?;
    let spec_file = spec_file.to_str().context("temp path is not UTF-8")?.to_owned();
    let set = coord.admin_ok(&["spec", "set", &spec_file])?;
    let generation: u64 = set
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|g| g.parse().ok())
        .with_context(|| format!("`spec set` printed no generation: {set:?}"))?;
    ensure!(generation >= 1, "`spec set` printed generation {generation}");
    let held_path = node1.root().join("var/lib/elysium/spec.json");
    poll("node1 to hold the new spec in /var/lib/elysium/spec.json", ONLINE_TIMEOUT, || {
        let Ok(text) = fs::read_to_string(&held_path) else { return Ok(None) };
        let held: Value =
            serde_json::from_str(&text).with_context(|| format!("spec.json is not JSON: {text}"))?;
        Ok((held["generation"].as_u64() == Some(generation) && text.contains("e2e")).then_some(()))
    })?;
    poll("the coordinator to report node1's applied_generation", ONLINE_TIMEOUT, || {
        let record = coord.admin_json(&["nodes", "get", "node1", "-o", "json"])?;
        Ok((record["applied_generation"].as_u64() == Some(generation)).then_some(()))
    })?;
    ctx.step(&format!("spec generation {generation} held and applied by node1"));

    // --- 10. node2: the single-use token is spent. ---
    nodes.push(ctx.boot("node2")?);
    let (node1, node2) = (&nodes[0], &nodes[1]);
    write_token_file(node2, &token)?;
    let out = join(node2, &coord.url())?;
    ensure!(!out.status.success(), "join on node2 with a used token succeeded: {}", describe(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("already used"),
        "join with a used token does not say the token was already used: {}",
        describe(&out)
    );
    ensure_not_enrolled(node2)?;
    ctx.step("node2 refused: token already used");

    // --- 11. node2: a token pinning another CA fails before anything is sent. ---
    let fresh = create_token(coord)?;
    let forged = flip_fingerprint_char(&fresh)?;
    write_token_file(node2, &forged)?;
    let out = join(node2, &coord.url())?;
    ensure!(!out.status.success(), "join with a forged CA fingerprint succeeded: {}", describe(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("fingerprint"),
        "join with a forged CA fingerprint does not mention the fingerprint: {}",
        describe(&out)
    );
    ensure_not_enrolled(node2)?;
    let id = token_id(&fresh)?;
    let tokens = coord.admin_json(&["token", "list", "-o", "json"])?;
    let listed = tokens
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["id"] == id.as_str()))
        .with_context(|| format!("token {id} is not in `token list`: {tokens:#}"))?;
    ensure!(listed["uses_consumed"] == 0, "the forged join consumed token {id}: {listed:#}");
    ctx.step("node2 refused: CA fingerprint mismatch, token untouched");

    // --- 12. Stopping the agent: the coordinator sees the node go offline. ---
    node1.exec_ok(&["systemctl", "stop", "elysium-node"])?;
    wait_online(coord, "node1", false)?;
    ctx.step("node1 offline after stopping the agent");

    // --- 13. Orderly teardown; the coordinator shuts down cleanly on SIGTERM. ---
    for node in nodes.drain(..) {
        node.shutdown()?;
    }
    ctx.step("nodes shut down");
    let status = coord.stop(Duration::from_secs(5))?;
    ensure!(status.success(), "the coordinator exited with {status} on SIGTERM");
    ctx.step("coordinator stopped cleanly");
    Ok(())
}

/// `token create --ttl 10m`: stdout is the token only.
fn create_token(coord: &Coordinator) -> Result<String> {
    let token = coord.admin_ok(&["token", "create", "--ttl", "10m"])?.trim().to_owned();
    ensure!(token.starts_with("ELY10") && !token.contains(char::is_whitespace), "odd token: {token:?}");
    Ok(token)
}

/// The parts of `ELY10<fingerprint>::<id>.<secret>`.
fn token_parts(token: &str) -> Result<(&str, &str, &str)> {
    let rest = token.strip_prefix("ELY10").context("token lacks the ELY10 prefix")?;
    let (fingerprint, cred) = rest.split_once("::").context("token lacks '::'")?;
    let (id, secret) = cred.split_once('.').context("token lacks '.'")?;
    ensure!(fingerprint.len() == 64 && !id.is_empty() && secret.len() >= 16, "unexpected token shape");
    Ok((fingerprint, id, secret))
}

fn token_id(token: &str) -> Result<String> {
    Ok(token_parts(token)?.1.to_owned())
}

/// The secret part: what must never be logged (the fingerprint and id are not secret).
fn token_secret(token: &str) -> Result<String> {
    Ok(token_parts(token)?.2.to_owned())
}

/// The same token with one hex digit of its CA fingerprint changed.
fn flip_fingerprint_char(token: &str) -> Result<String> {
    token_parts(token)?;
    let mut bytes = token.as_bytes().to_vec();
    let i = "ELY10".len() + 7;
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    Ok(String::from_utf8(bytes)?)
}

/// Writes the token to [`TOKEN_FILE`] inside `node`, mode 0600, through the node's root on the host.
fn write_token_file(node: &TestNode, token: &str) -> Result<()> {
    let path = node.root().join(TOKEN_FILE.trim_start_matches('/'));
    let _ = fs::remove_file(&path);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

fn join(node: &TestNode, url: &str) -> Result<Output> {
    node.exec_timeout(
        &["elysium-node", "join", "--coordinator", url, "--token-file", TOKEN_FILE],
        JOIN_TIMEOUT,
    )
}

fn output_contains(out: &Output, needle: &str) -> bool {
    String::from_utf8_lossy(&out.stdout).contains(needle)
        || String::from_utf8_lossy(&out.stderr).contains(needle)
}

/// A refused join must leave no identity behind.
fn ensure_not_enrolled(node: &TestNode) -> Result<()> {
    for file in ["etc/elysium/agent.toml", "etc/elysium/node.key"] {
        ensure!(!node.root().join(file).exists(), "{} has /{file} after a refused join", node.name());
    }
    Ok(())
}

/// Polls `nodes -o json` until `name` is listed with `online == want`.
fn wait_online(coord: &Coordinator, name: &str, want: bool) -> Result<()> {
    let what = format!("{name} to be {} at the coordinator", if want { "online" } else { "offline" });
    poll(&what, ONLINE_TIMEOUT, || {
        let nodes = coord.admin_json(&["nodes", "-o", "json"])?;
        let Some(list) = nodes.as_array() else { bail!("`nodes -o json` is not a list: {nodes}") };
        let online = list.iter().find(|n| n["name"] == name).and_then(|n| n["online"].as_bool());
        Ok((online == Some(want)).then_some(()))
    })
}

/// How many `node.online` events the coordinator recorded for `name`.
fn online_events(coord: &Coordinator, name: &str) -> Result<usize> {
    let events = coord.admin_json(&["events", "-o", "json", "--limit", "1000"])?;
    let Some(list) = events.as_array() else { bail!("`events -o json` is not a list: {events}") };
    Ok(list.iter().filter(|e| e["kind"] == "node.online" && e["subject"] == name).count())
}
