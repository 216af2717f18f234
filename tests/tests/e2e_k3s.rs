//! End to end: the K3s capability on real-systemd test nodes. A real coordinator on the host, Debian nodes
//! with systemd as PID 1 (nspawn), the real `elysium-node` binary, and the K3s stand-in served from a
//! release mirror on the test net (`[k3s] release_url`), so the agent downloads, verifies, installs,
//! starts, health-checks, upgrades and rolls back "K3s" through systemd exactly as on hardware.
//!
//! Two tests, to keep node boots few:
//!
//! * `server_install_agent_join_and_idempotent_rerun`: a server installs K3s and reports the cluster
//!   token, an agent joins it with that token (the stand-in agent checks the CA hash), and re-applying an
//!   unchanged spec restarts nothing.
//! * `upgrade_rollback_corruption_resume_and_crash`: on one server, an upgrade, an upgrade to a release
//!   that never becomes ready (automatic rollback), an agent SIGKILLed mid-upgrade (converges after the
//!   restart), a corrupted artifact (refused), an interrupted download (resumed with a Range request), and
//!   two more upgrades; the upgrade and rollback times are printed (see docs/BENCHMARKS-k3s.md).
//!
//! Needs root, the test-node prerequisites (see `elysium_tests::testnode`) and built binaries:
//! `cargo build -p elysium-agent -p k3s-standin && cargo test -p elysium-tests --test e2e_k3s -- --nocapture --test-threads=1`.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use elysium_tests::e2e::{self, Coordinator, condition, describe, join_node, node_journal, poll, poll_every};
use elysium_tests::mirror::FaultMirror;
use elysium_tests::testnode::{self, NodeOptions, TestNet, TestNode};
use k3s_standin::Behaviour;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where the agent binary is bound (read-only) inside nodes: where `join` installs it.
const NODE_BIN: &str = "/usr/local/bin/elysium-node";
const K3S_BIN: &str = "/usr/local/bin/k3s";
const K3S_PREVIOUS: &str = "/usr/local/bin/k3s.previous";
const STATE_FILE: &str = "/var/lib/elysium/k3s.json";
const JOURNAL_FILE: &str = "/var/lib/elysium/k3s-journal.json";
const CONFIG_FILE: &str = "/etc/rancher/k3s/config.yaml";
const TOKEN_FILE: &str = "/etc/rancher/k3s/elysium-token";
const AGENT_TOKEN_FILE: &str = "/etc/rancher/k3s/elysium-agent-token";
const SERVER_TOKEN_FILE: &str = "/var/lib/rancher/k3s/server/token";
const SERVER_AGENT_TOKEN_FILE: &str = "/var/lib/rancher/k3s/server/agent-token";
const SERVER_CA_FILE: &str = "/var/lib/rancher/k3s/server/tls/server-ca.crt";

const V1: &str = "v1.31.4+k3s1";
const V2: &str = "v1.31.5+k3s1";
const V_NEVER_READY: &str = "v1.31.6+k3s1";
const V_CRASH: &str = "v1.31.7+k3s1";
/// Published hash of a healthy build, but the mirror serves other bytes.
const V_CORRUPT: &str = "v1.31.8+k3s1";
/// Served with the connection cut after [`CUT_AFTER`] bytes on the first request.
const V_RESUME: &str = "v1.31.9+k3s1";
/// Further clean upgrades, for the upgrade-time measurement.
const V_BENCH: [&str; 2] = ["v1.31.10+k3s1", "v1.31.11+k3s1"];
const CUT_AFTER: u64 = 8 * 1024 * 1024;

/// `[k3s] health_timeout_seconds`: the minimum the spec allows.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// `[agent] reconcile_seconds`: the minimum the spec allows (the retry period after a failure).
const RECONCILE_SECONDS: u64 = 10;
/// A fresh install or an upgrade: download (~75 MB debug stand-in), verify, start, health gate.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// An upgrade that fails its gate: the gate itself, the rollback and its own gate, with slack.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------------------
// Scenario 1-3: install a server, join an agent, re-apply without a change.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn server_install_agent_join_and_idempotent_rerun() {
    run("server_install_agent_join_and_idempotent_rerun", &[(V1, Behaviour::Healthy)], |fx| {
        let g1 = fx.set_spec(V1)?;
        fx.step(&format!("spec generation {g1}: [k3s] version {V1} from {}", fx.mirror.url()));

        // --- 1. Fresh server install. ---
        let server = fx.join("srv1", "server")?;
        wait_k3s_true(fx, server, g1, CONVERGE_TIMEOUT)?;
        fx.step("srv1: K3s condition True");
        check_fresh_server(fx, server, V1)?;
        fx.step("srv1: binary, unit, config, token file, symlinks, condition and k3s.token event checked");

        // --- 2. An agent joins the server. ---
        let agent = fx.join("wrk1", "agent")?;
        wait_k3s_true(fx, agent, g1, CONVERGE_TIMEOUT)?;
        fx.step("wrk1: K3s condition True");
        check_agent_joined(fx, server, agent)?;
        fx.step("wrk1: k3s-agent active, joined srv1 with a token whose CA hash matches srv1's CA");

        // --- 3. Re-applying the same spec restarts nothing. ---
        let units = [(server, "k3s"), (agent, "k3s-agent")];
        let props =
            ["MainPID", "ActiveEnterTimestampMonotonic", "NRestarts", "ExecMainStartTimestampMonotonic"];
        let before: Vec<_> =
            units.iter().map(|(i, u)| unit_props(&fx.nodes[*i], u, &props)).collect::<Result<_>>()?;
        let requests_before = fx.mirror.requests().len();
        let since = SystemTime::now();
        let g2 = fx.set_spec(V1)?;
        ensure!(g2 > g1, "re-setting the same spec gave generation {g2}, not a newer one than {g1}");
        for (i, _) in units {
            wait_k3s_true(fx, i, g2, Duration::from_secs(60))?;
        }
        for ((i, unit), before) in units.iter().zip(&before) {
            let node = &fx.nodes[*i];
            let after = unit_props(node, unit, &props)?;
            ensure!(
                &after == before,
                "{unit} on {} changed across a reconcile of an unchanged spec (generation {g1} -> {g2}), \
                 i.e. it was restarted: before {before:?}, after {after:?}",
                node.name()
            );
            let restarts: Vec<_> = agent_log_since(node, since)?
                .into_iter()
                .filter(|(_, l)| l.contains("restarting K3s") || l.contains("applying"))
                .collect();
            ensure!(restarts.is_empty(), "{}'s agent acted on an unchanged spec: {restarts:?}", node.name());
        }
        let downloads: Vec<_> = fx.mirror.requests()[requests_before..]
            .iter()
            .filter(|r| r.path.ends_with("/k3s"))
            .map(|r| r.path.clone())
            .collect();
        ensure!(downloads.is_empty(), "an unchanged spec downloaded K3s again: {downloads:?}");
        fx.step(&format!(
            "generation {g2} (same spec) applied by both nodes: same MainPID and start time, nothing downloaded"
        ));

        // --- `k3s status` reports it; `reset` takes it off (with the agent stopped
        //     first, or it would install K3s again). ---
        let agent_node = &fx.nodes[agent];
        let status = agent_node.exec_ok(&["elysium-node", "k3s", "status", "-o", "json"])?;
        let status: serde_json::Value = serde_json::from_str(&status).context("k3s status -o json")?;
        ensure!(status["installed_version"] == V1, "k3s status: {status:#}");
        ensure!(status["healthy"] == true, "k3s status says unhealthy: {status:#}");
        let dry = agent_node.exec_ok(&["elysium-node", "reset", "--dry-run"])?;
        ensure!(dry.contains("stop k3s-agent.service"), "reset --dry-run plan: {dry}");
        ensure!(agent_node.root().join("usr/local/bin/k3s").exists(), "a dry run removed the binary");
        agent_node.exec_ok(&["systemctl", "stop", "elysium-node"])?;
        agent_node.exec_ok(&["elysium-node", "reset", "--yes"])?;
        let state = agent_node.systemctl_is_active("k3s-agent")?;
        ensure!(state != "active", "k3s-agent is {state} after reset");
        for gone in [
            "usr/local/bin/k3s",
            "usr/local/bin/kubectl",
            "etc/systemd/system/k3s-agent.service",
            "etc/rancher/k3s",
            "var/lib/rancher/k3s",
        ] {
            ensure!(!agent_node.root().join(gone).exists(), "/{gone} is still there after reset");
        }
        let again = agent_node.exec_ok(&["elysium-node", "reset", "--dry-run"])?;
        ensure!(again.contains("nothing to do"), "a second reset still has work: {again}");
        fx.step("wrk1: k3s status healthy; reset removed K3s; a second reset has nothing to do");
        Ok(())
    });
}

fn check_fresh_server(fx: &Fixture, i: usize, version: &str) -> Result<()> {
    let node = &fx.nodes[i];
    let got = k3s_version(node, K3S_BIN)?;
    ensure!(got == version, "{K3S_BIN} --version on {} says {got:?}, want {version:?}", node.name());
    let state = node.systemctl_is_active("k3s")?;
    ensure!(state == "active", "k3s.service on {} is {state:?}", node.name());
    ensure!(ping(node)? == "pong", "the K3s supervisor on {} does not answer /ping with pong", node.name());

    let config = read_node_file(node, CONFIG_FILE)?;
    for line in [
        "cluster-init: true",
        &format!("token-file: \"{TOKEN_FILE}\""),
        &format!("agent-token-file: \"{AGENT_TOKEN_FILE}\""),
        &format!("node-name: \"{}\"", node.name()),
    ] {
        ensure!(
            config.lines().any(|l| l == line),
            "{CONFIG_FILE} on {} lacks {line:?}:\n{config}",
            node.name()
        );
    }
    ensure!(
        !config.lines().any(|l| l.starts_with("token:")),
        "{CONFIG_FILE} carries the token itself:\n{config}"
    );
    ensure!(
        !config.lines().any(|l| l.starts_with("server:")),
        "the first server has a server: line:\n{config}"
    );
    for file in [TOKEN_FILE, AGENT_TOKEN_FILE] {
        let mode = file_mode(node, file)?;
        ensure!(mode == 0o600, "{file} on {} has mode {mode:04o}, want 0600", node.name());
    }

    let unit = read_node_file(node, "/etc/systemd/system/k3s.service")?;
    for line in [
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "ExecStart=/usr/local/bin/k3s server --config /etc/rancher/k3s/config.yaml",
    ] {
        ensure!(unit.lines().any(|l| l == line), "k3s.service on {} lacks {line:?}:\n{unit}", node.name());
    }
    let enabled = node.exec_ok(&["systemctl", "is-enabled", "k3s"]).unwrap_or_default();
    ensure!(enabled.trim() == "enabled", "k3s.service on {} is not enabled: {enabled:?}", node.name());
    for link in ["kubectl", "crictl", "ctr"] {
        let path = node_path(node, &format!("/usr/local/bin/{link}"));
        let target = fs::read_link(&path)
            .with_context(|| format!("/usr/local/bin/{link} on {} is not a symlink", node.name()))?;
        ensure!(
            target == Path::new("k3s") || target == Path::new(K3S_BIN),
            "/usr/local/bin/{link} on {} points at {}, not k3s",
            node.name(),
            target.display()
        );
    }

    let record = fx.coord.node(node.name())?;
    let c = condition(&record, "K3s")
        .with_context(|| format!("no K3s condition for {}: {record:#}", node.name()))?;
    ensure!(c["status"] == "True", "K3s condition of {} is not True: {c:#}", node.name());
    let state = read_state(node)?;
    ensure!(
        state["installed"]["version"] == version,
        "{STATE_FILE} on {} does not record {version}: {state}",
        node.name()
    );
    ensure!(
        !node_path(node, JOURNAL_FILE).exists(),
        "{JOURNAL_FILE} remains on {} after the install",
        node.name()
    );

    // The first server's agent reported the secure token to the coordinator.
    poll("a k3s.token event for the first server", Duration::from_secs(30), || {
        let events = fx.coord.events()?;
        Ok(events.iter().any(|e| e["kind"] == "k3s.token" && e["subject"] == node.name()).then_some(()))
    })?;
    poll("a k3s.agent-token event for the first server", Duration::from_secs(30), || {
        let events = fx.coord.events()?;
        Ok(events.iter().any(|e| e["kind"] == "k3s.agent-token" && e["subject"] == node.name()).then_some(()))
    })?;
    let token = read_node_file(node, SERVER_TOKEN_FILE)?;
    ensure!(token.starts_with("K10"), "{SERVER_TOKEN_FILE} on {} is not a secure K10 token", node.name());
    ensure!(!fx.coord.log().contains(token.trim()), "the cluster token appears in the coordinator log");
    Ok(())
}

fn check_agent_joined(fx: &Fixture, server: usize, agent: usize) -> Result<()> {
    let (srv, node) = (&fx.nodes[server], &fx.nodes[agent]);
    let state = node.systemctl_is_active("k3s-agent")?;
    ensure!(state == "active", "k3s-agent.service on {} is {state:?}", node.name());
    let server_unit = node.systemctl_is_active("k3s")?;
    ensure!(server_unit != "active", "an agent node runs k3s.service (server) too");
    let config = read_node_file(node, CONFIG_FILE)?;
    let want = format!("server: \"https://{}:6443\"", srv.addr());
    ensure!(config.lines().any(|l| l == want), "{CONFIG_FILE} on {} lacks {want:?}:\n{config}", node.name());
    ensure!(
        config.lines().any(|l| l == format!("token-file: \"{TOKEN_FILE}\"")),
        "no token-file in:\n{config}"
    );
    ensure!(!config.contains("cluster-init"), "an agent's config has cluster-init:\n{config}");
    let unit = read_node_file(node, "/etc/systemd/system/k3s-agent.service")?;
    ensure!(
        unit.lines().any(|l| l == "ExecStart=/usr/local/bin/k3s agent --config /etc/rancher/k3s/config.yaml"),
        "{unit}"
    );
    let mode = file_mode(node, TOKEN_FILE)?;
    ensure!(mode == 0o600, "{TOKEN_FILE} on {} has mode {mode:04o}, want 0600", node.name());

    // The agent got the server's secure *agent* token (what K3s wrote to server/agent-token), whose CA
    // hash is the server CA's: the stand-in agent checks exactly that (upstream's "token CA hash does not
    // match" otherwise) before it becomes ready.
    let token = read_node_file(node, TOKEN_FILE)?;
    let agent_token = read_node_file(srv, SERVER_AGENT_TOKEN_FILE)?;
    ensure!(
        token.trim() == agent_token.trim(),
        "the agent's token file is not the first server's agent token"
    );
    ensure!(token.contains("::node:"), "the agent's token is not an agent token");
    let ca_hash = hex::encode(Sha256::digest(fs::read(node_path(srv, SERVER_CA_FILE))?));
    ensure!(
        token.trim().strip_prefix("K10").is_some_and(|t| t.starts_with(&ca_hash)),
        "the agent's token does not pin srv1's CA (sha256 {ca_hash})"
    );
    // The server token is nowhere on the agent: not in its spec, its files, its journal.
    let server_token = read_node_file(srv, SERVER_TOKEN_FILE)?;
    let server_password = server_token.trim().rsplit(':').next().unwrap_or_default().to_owned();
    ensure!(server_password.len() >= 16, "odd server token shape");
    for dir in ["/var/lib/elysium", "/etc/rancher", "/etc/systemd/system", "/var/lib/rancher/k3s/agent"] {
        let holding = files_containing(&node_path(node, dir), server_password.as_bytes());
        ensure!(holding.is_empty(), "the server token is on the agent {} in {holding:?}", node.name());
    }
    let everything = node.exec_ok(&["journalctl", "--no-pager"])?;
    ensure!(!everything.contains(&server_password), "the server token appears in {}'s journal", node.name());
    // The cluster secrets are in 0600 files only: not in either node's journal, nor any process's argv.
    let password = token.trim().rsplit(':').next().unwrap_or_default();
    ensure!(password.len() >= 16, "odd cluster token shape");
    for n in [srv, node] {
        let everything = n.exec_ok(&["journalctl", "--no-pager"])?;
        ensure!(!everything.contains(password), "the cluster secret appears in {}'s journal", n.name());
        let argv = n.exec_ok(&["ps", "-eo", "args"])?;
        ensure!(!argv.contains(password), "the cluster secret appears in a command line on {}", n.name());
    }
    let journal = node_journal(node, &["k3s-agent"]);
    ensure!(
        !journal.contains("CA hash does not match"),
        "the stand-in agent reported a CA hash mismatch:\n{journal}"
    );
    ensure!(
        journal.contains("Connected to the supervisor"),
        "the stand-in agent never connected to the supervisor:\n{journal}"
    );
    let healthz = node.exec_ok(&["curl", "-s", "--max-time", "3", "http://127.0.0.1:10248/healthz"])?;
    ensure!(healthz.trim() == "ok", "kubelet healthz on {} answers {healthz:?}", node.name());
    let record = fx.coord.node(node.name())?;
    let c = condition(&record, "K3s").with_context(|| format!("no K3s condition for {}", node.name()))?;
    ensure!(c["status"] == "True", "K3s condition of {} is not True: {c:#}", node.name());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Scenarios 4-8: upgrades, rollback, corruption, interrupted download, crash mid-upgrade; measurements.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn upgrade_rollback_corruption_resume_and_crash() {
    let releases = [
        (V1, Behaviour::Healthy),
        (V2, Behaviour::Healthy),
        (V_NEVER_READY, Behaviour::NeverReady),
        (V_CRASH, Behaviour::Crash),
        (V_CORRUPT, Behaviour::Healthy),
        (V_RESUME, Behaviour::Healthy),
        (V_BENCH[0], Behaviour::Healthy),
        (V_BENCH[1], Behaviour::Healthy),
    ];
    run("upgrade_rollback_corruption_resume_and_crash", &releases, |fx| {
        corrupt(fx, V_CORRUPT)?;
        let g = fx.set_spec(V1)?;
        let n = fx.join("upg1", "server")?;
        wait_k3s_true(fx, n, g, CONVERGE_TIMEOUT)?;
        ensure!(k3s_version(&fx.nodes[n], K3S_BIN)? == V1, "upg1 did not install {V1}");
        fx.step(&format!("upg1: {V1} installed and healthy"));
        let mut timings = Vec::new();

        // --- 4. Upgrade v1 -> v2. ---
        let v1_sha = sha256_in_node(&fx.nodes[n], K3S_BIN)?;
        timings.push(upgrade(fx, n, V2)?);
        let node = &fx.nodes[n];
        ensure!(k3s_version(node, K3S_PREVIOUS)? == V1, "{K3S_PREVIOUS} is not {V1}");
        ensure!(
            sha256_in_node(node, K3S_PREVIOUS)? == v1_sha,
            "{K3S_PREVIOUS} is not the binary it replaced"
        );
        fx.step(&format!("4. upgraded to {V2}; {K3S_PREVIOUS} is {V1}"));

        // --- 5. Upgrade to a release that never becomes ready: automatic rollback. ---
        let rollback = never_ready_rolls_back(fx, n)?;
        fx.step(&format!(
            "5. {V_NEVER_READY} never ready: rolled back to {V2} in {:.2}s after the spec change \
             (gate gave up after {:.2}s; back to healthy {:.2}s later); bound: health timeout + 5 s = {}s",
            rollback.total,
            rollback.gate_failed,
            rollback.total - rollback.gate_failed,
            HEALTH_TIMEOUT.as_secs() + 5
        ));

        // --- 8. The agent is SIGKILLed during an upgrade (to a crashing release): converges after restart. ---
        let took = sigkill_mid_upgrade(fx, n)?;
        fx.step(&format!("8. agent SIGKILLed mid-upgrade to {V_CRASH}: converged (rolled back to {V2}) {took:.1}s after the kill"));

        // --- 6. Corrupted artifact: refused, nothing changed. ---
        corrupted_is_refused(fx, n)?;
        fx.step(&format!(
            "6. {V_CORRUPT} with a wrong hash refused; {K3S_BIN} untouched, {V2} still running"
        ));

        // --- 7. Interrupted download: resumed with a Range request. ---
        let took = interrupted_download_resumes(fx, n)?;
        fx.step(&format!("7. download of {V_RESUME} cut after {CUT_AFTER} bytes, resumed with Range, installed ({took:.1}s)"));

        // --- Measurement: two more clean upgrades. ---
        for v in V_BENCH {
            timings.push(upgrade(fx, n, v)?);
        }
        print_timings(&timings, &rollback);
        Ok(())
    });
}

/// An upgrade that must succeed, measured.
fn upgrade(fx: &Fixture, n: usize, to: &str) -> Result<UpgradeTiming> {
    let node = &fx.nodes[n];
    let from = k3s_version(node, K3S_BIN)?;
    let t0 = SystemTime::now();
    let g = fx.set_spec(to)?;
    let seen = poll_every(
        &format!("{} to run {to} (K3s True, generation {g})", node.name()),
        CONVERGE_TIMEOUT,
        Duration::from_millis(100),
        || {
            let record = fx.coord.node(node.name())?;
            let ok = record["applied_generation"].as_u64() >= Some(g)
                && condition(&record, "K3s").is_some_and(|c| c["status"] == "True");
            Ok(ok.then(|| secs_since(t0)))
        },
    )?;
    let got = k3s_version(node, K3S_BIN)?;
    ensure!(got == to, "after the upgrade {K3S_BIN} on {} says {got}, want {to}", node.name());
    let state = node.systemctl_is_active("k3s")?;
    ensure!(state == "active", "k3s.service is {state:?} after the upgrade to {to}");
    ensure!(ping(node)? == "pong", "K3s {to} does not answer /ping");
    let st = read_state(node)?;
    ensure!(st["installed"]["version"] == to, "{STATE_FILE} does not record {to}: {st}");
    ensure!(
        st["installed"]["sha256"] == published_sha(fx, to)?,
        "{STATE_FILE} records another hash than the published one: {st}"
    );
    ensure!(!node_path(node, JOURNAL_FILE).exists(), "{JOURNAL_FILE} remains after the upgrade to {to}");
    ensure!(
        k3s_version(node, K3S_PREVIOUS)? == from,
        "{K3S_PREVIOUS} is not {from} after the upgrade to {to}"
    );

    // The agent's own log gives the precise points; systemd gives the stand-in's own start time.
    let log = agent_log_since(node, t0)?;
    let t0s = unix(t0);
    // Measurements only: a log line that is missing (reworded) gives NaN, not a failure.
    let applying = measured(first_after(&log, t0s, &["applying", to]), "applying … install K3s");
    let restarting = measured(first_after(&log, applying, &["restarting K3s"]), "restarting K3s");
    let healthy = measured(first_after(&log, restarting, &["K3s healthy"]), "K3s healthy");
    let p = unit_props(
        node,
        "k3s",
        &[
            "ExecMainStartTimestampMonotonic",
            "ActiveEnterTimestampMonotonic",
            "InactiveExitTimestampMonotonic",
        ],
    )?;
    let mono = |k: &str| p.get(k).and_then(|v| v.parse::<f64>().ok()).map(|us| us / 1e6).unwrap_or(f64::NAN);
    let standin_start = mono("ActiveEnterTimestampMonotonic") - mono("ExecMainStartTimestampMonotonic");
    let unit_start = mono("ActiveEnterTimestampMonotonic") - mono("InactiveExitTimestampMonotonic");
    let timing = UpgradeTiming {
        to: to.to_owned(),
        total: healthy - t0s,
        to_apply: applying - t0s,
        download_swap: restarting - applying,
        restart_to_healthy: healthy - restarting,
        unit_start,
        standin_start,
        seen_by_test: seen,
    };
    fx.step(&format!(
        "upgrade {from} -> {to}: spec set -> K3s healthy {:.3}s (spec->apply {:.3}s, download+verify+swap {:.3}s, \
         restart->healthy {:.3}s; unit start {:.3}s of which stand-in exec->READY {:.3}s) => {:.3}s without the \
         stand-in's own start; test saw True after {:.3}s",
        timing.total,
        timing.to_apply,
        timing.download_swap,
        timing.restart_to_healthy,
        timing.unit_start,
        timing.standin_start,
        timing.total - timing.standin_start,
        timing.seen_by_test
    ));
    Ok(timing)
}

fn never_ready_rolls_back(fx: &Fixture, n: usize) -> Result<Rollback> {
    let node = &fx.nodes[n];
    let good = k3s_version(node, K3S_BIN)?;
    let good_sha = sha256_in_node(node, K3S_BIN)?;
    let t0 = SystemTime::now();
    fx.set_spec(V_NEVER_READY)?;
    // The journal exists while the new release is on trial.
    poll_every("the upgrade journal to appear", Duration::from_secs(60), Duration::from_millis(100), || {
        Ok(read_journal(node)?.filter(|j| j["to"]["version"] == V_NEVER_READY).map(|_| ()))
    })?;
    let seen = poll_every(
        &format!("{} to roll back from {V_NEVER_READY}", node.name()),
        ROLLBACK_TIMEOUT,
        Duration::from_millis(100),
        || {
            let record = fx.coord.node(node.name())?;
            let rolled_back = condition(&record, "K3s").is_some_and(|c| {
                c["status"] == "False" && c["message"].as_str().unwrap_or("").contains("rolled back")
            });
            Ok((rolled_back && !node_path(node, JOURNAL_FILE).exists()).then(|| secs_since(t0)))
        },
    )?;
    let record = fx.coord.node(node.name())?;
    let c = condition(&record, "K3s").context("no K3s condition")?;
    let message = c["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(V_NEVER_READY) && message.contains("fail") && message.contains("rolled back"),
        "the K3s condition does not say that {V_NEVER_READY} failed and was rolled back: {c:#}"
    );
    check_running(node, &good, &good_sha)?;
    let st = read_state(node)?;
    ensure!(
        st["last_failed"]["version"] == V_NEVER_READY,
        "{STATE_FILE} has no last_failed = {V_NEVER_READY}: {st}"
    );
    ensure!(
        st["installed"]["version"] == good.as_str(),
        "{STATE_FILE} does not record {good} as installed: {st}"
    );
    ensure!(!node_path(node, JOURNAL_FILE).exists(), "{JOURNAL_FILE} remains after the rollback");

    let log = agent_log_since(node, t0)?;
    let t0s = unix(t0);
    let gate = measured(first_after(&log, t0s, &["failed its health gate"]), "failed its health gate");
    let done = measured(first_after(&log, gate, &["reconcile failed", V_NEVER_READY]), "reconcile failed");
    Ok(Rollback { total: done - t0s, gate_failed: gate - t0s, seen_by_test: seen })
}

fn sigkill_mid_upgrade(fx: &Fixture, n: usize) -> Result<f64> {
    let node = &fx.nodes[n];
    let good = k3s_version(node, K3S_BIN)?;
    let good_sha = sha256_in_node(node, K3S_BIN)?;
    fx.set_spec(V_CRASH)?;
    poll_every(
        "the upgrade journal in phase restarting",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            Ok(read_journal(node)?
                .filter(|j| j["to"]["version"] == V_CRASH && j["phase"] == "restarting")
                .map(|_| ()))
        },
    )?;
    let pid_before = unit_props(node, "elysium-node", &["MainPID"])?;
    node.exec_ok(&["systemctl", "kill", "-s", "SIGKILL", "elysium-node"])?;
    let killed = Instant::now();
    fx.step(&format!("8. journal in phase restarting for {V_CRASH}; agent SIGKILLed ({pid_before:?})"));
    poll("systemd to restart the agent", Duration::from_secs(30), || {
        let now = unit_props(node, "elysium-node", &["MainPID"])?;
        let active = node.systemctl_is_active("elysium-node")? == "active";
        Ok((active && now != pid_before && now["MainPID"] != "0").then_some(()))
    })?;
    poll_every(
        &format!("{} to converge after the crash (rolled back from {V_CRASH})", node.name()),
        ROLLBACK_TIMEOUT,
        Duration::from_millis(200),
        || {
            let failed = read_state(node).ok().is_some_and(|s| s["last_failed"]["version"] == V_CRASH);
            let record = fx.coord.node(node.name())?;
            let rolled_back = condition(&record, "K3s").is_some_and(|c| c["status"] == "False");
            Ok((failed && rolled_back && !node_path(node, JOURNAL_FILE).exists()).then_some(()))
        },
    )?;
    let took = killed.elapsed().as_secs_f64();
    check_running(node, &good, &good_sha)?;
    let record = fx.coord.node(node.name())?;
    let c = condition(&record, "K3s").context("no K3s condition")?;
    let message = c["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(V_CRASH) && message.contains("rolled back"),
        "the K3s condition does not say that {V_CRASH} was rolled back: {c:#}"
    );
    let journal = node_journal(node, &["elysium-node"]);
    ensure!(
        journal.contains("found an interrupted K3s operation"),
        "the restarted agent did not recover the interrupted operation from its journal:\n{journal}"
    );
    Ok(took)
}

fn corrupted_is_refused(fx: &Fixture, n: usize) -> Result<()> {
    let node = &fx.nodes[n];
    let good = k3s_version(node, K3S_BIN)?;
    let good_sha = sha256_in_node(node, K3S_BIN)?;
    // A rollback renames k3s.previous back to k3s, so there may be none now; whatever is there must stay.
    let previous_sha = sha256_in_node(node, K3S_PREVIOUS).ok();
    let path = format!("/download/{V_CORRUPT}/k3s");
    let served_before = fx.mirror.requests_for(&path).len();
    fx.set_spec(V_CORRUPT)?;
    let message = poll_every(
        "the K3s condition to report the hash mismatch",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || {
            let record = fx.coord.node(node.name())?;
            let served = fx.mirror.requests_for(&path).len() > served_before;
            Ok(condition(&record, "K3s")
                .filter(|c| c["status"] == "False" && served)
                .and_then(|c| c["message"].as_str().map(str::to_owned))
                .filter(|m| m.contains(V_CORRUPT) || m.contains(&path) || m.contains("v1.31.8%2Bk3s1")))
        },
    )?;
    let lower = message.to_lowercase();
    ensure!(
        lower.contains("sha-256") || lower.contains("sha256") || lower.contains("hash"),
        "the K3s condition does not mention the hash: {message}"
    );
    ensure!(sha256_in_node(node, K3S_BIN)? == good_sha, "{K3S_BIN} changed after a corrupted download");
    ensure!(
        sha256_in_node(node, K3S_PREVIOUS).ok() == previous_sha,
        "{K3S_PREVIOUS} changed after a corrupted download"
    );
    check_running(node, &good, &good_sha)?;
    let st = read_state(node)?;
    ensure!(st["installed"]["version"] == good.as_str(), "{STATE_FILE} changed: {st}");
    ensure!(!node_path(node, JOURNAL_FILE).exists(), "{JOURNAL_FILE} exists after a refused download");
    let strays = strays_in_bin(node)?;
    ensure!(strays.0.is_empty(), "stray files in /usr/local/bin after a corrupted download: {:?}", strays.0);
    if !strays.1.is_empty() {
        fx.step(&format!("6. note: partial downloads left in /usr/local/bin: {:?}", strays.1));
    }
    Ok(())
}

fn interrupted_download_resumes(fx: &Fixture, n: usize) -> Result<f64> {
    let node = &fx.nodes[n];
    let path = format!("/download/{V_RESUME}/k3s");
    fx.mirror.cut_after(&path, CUT_AFTER, 1);
    let t0 = Instant::now();
    let g = fx.set_spec(V_RESUME)?;
    let mut saw_interrupted = None;
    poll_every(
        &format!("{} to install {V_RESUME} after the interrupted download", node.name()),
        Duration::from_secs(60) + CONVERGE_TIMEOUT,
        Duration::from_millis(200),
        || {
            let record = fx.coord.node(node.name())?;
            let c = condition(&record, "K3s");
            if saw_interrupted.is_none()
                && let Some(c) = c
                && c["status"] == "False"
                && c["message"].as_str().is_some_and(|m| m.contains(&path) || m.contains("v1.31.9%2Bk3s1"))
            {
                saw_interrupted = c["message"].as_str().map(str::to_owned);
            }
            let ok =
                record["applied_generation"].as_u64() >= Some(g) && c.is_some_and(|c| c["status"] == "True");
            Ok(ok.then_some(()))
        },
    )?;
    let took = t0.elapsed().as_secs_f64();
    let requests = fx.mirror.requests_for(&path);
    let gets: Vec<_> = requests.iter().filter(|r| r.method == "GET").collect();
    ensure!(
        gets.len() >= 2,
        "expected a cut request and a resumed one for {path}:\n{}",
        fx.mirror.describe_requests()
    );
    ensure!(
        gets[0].cut && gets[0].range.is_none() && gets[0].body_bytes == CUT_AFTER,
        "the first request for {path} was not the one cut after {CUT_AFTER} bytes:\n{}",
        fx.mirror.describe_requests()
    );
    let want = format!("bytes={CUT_AFTER}-");
    ensure!(
        gets[1].range.as_deref() == Some(want.as_str()) && gets[1].status == 206,
        "the retry did not resume with `Range: {want}` (got {:?}, status {}):\n{}",
        gets[1].range,
        gets[1].status,
        fx.mirror.describe_requests()
    );
    let full = fs::metadata(fx.mirror_dir.join(path.trim_start_matches('/')))?.len();
    ensure!(
        gets[1].body_bytes == full - CUT_AFTER,
        "the resumed request sent {} bytes, want {}",
        gets[1].body_bytes,
        full - CUT_AFTER
    );
    let got = k3s_version(node, K3S_BIN)?;
    ensure!(got == V_RESUME, "{K3S_BIN} says {got} after the resumed download, want {V_RESUME}");
    ensure!(
        sha256_in_node(node, K3S_BIN)? == published_sha(fx, V_RESUME)?,
        "the resumed binary does not have the published hash"
    );
    let state = node.systemctl_is_active("k3s")?;
    ensure!(state == "active", "k3s.service is {state:?} after the resumed install");
    let strays = strays_in_bin(node)?;
    ensure!(
        strays.0.is_empty() && strays.1.is_empty(),
        "leftovers in /usr/local/bin after the resumed install: {strays:?}"
    );
    fx.step(&format!(
        "7. while interrupted the condition said: {}",
        saw_interrupted.as_deref().unwrap_or("<not observed: the retry came before a poll saw it>")
    ));
    Ok(took)
}

/// K3s runs `version` (binary hash `sha`), active and answering /ping.
fn check_running(node: &TestNode, version: &str, sha: &str) -> Result<()> {
    let got = k3s_version(node, K3S_BIN)?;
    ensure!(got == version, "{K3S_BIN} on {} says {got}, want {version}", node.name());
    ensure!(sha256_in_node(node, K3S_BIN)? == sha, "{K3S_BIN} on {} is not the binary it was", node.name());
    let state = node.systemctl_is_active("k3s")?;
    ensure!(state == "active", "k3s.service on {} is {state:?}", node.name());
    let pong =
        poll("K3s to answer /ping", Duration::from_secs(10), || Ok(ping(node).ok().filter(|p| p == "pong")))?;
    ensure!(pong == "pong", "no pong");
    Ok(())
}

/// Overwrites the mirror's `version` binary with other bytes (a build stamped as crashing), keeping the
/// published hash of the healthy one.
fn corrupt(fx: &Fixture, version: &str) -> Result<()> {
    let bin = fx.mirror_dir.join("download").join(version).join("k3s");
    let base = k3s_standin::built_binary().context("stand-in binary")?;
    k3s_standin::stamp(&base, &bin, version, Behaviour::Crash)?;
    ensure!(published_sha(fx, version)? != file_sha(&bin)?, "corrupting {version} did not change its bytes");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug)]
struct UpgradeTiming {
    to: String,
    /// Spec set (host clock) -> the agent logged `K3s healthy` (journal timestamp).
    total: f64,
    to_apply: f64,
    download_swap: f64,
    restart_to_healthy: f64,
    /// InactiveExit -> ActiveEnter of k3s.service (ExecStartPre included).
    unit_start: f64,
    /// ExecMainStart -> ActiveEnter (READY=1): the stand-in's own start.
    standin_start: f64,
    seen_by_test: f64,
}

#[derive(Debug)]
struct Rollback {
    /// Spec set -> the agent logged the failed reconcile after rolling back (healthy on the old version).
    total: f64,
    gate_failed: f64,
    seen_by_test: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_timings(t: &[UpgradeTiming], rollback: &Rollback) {
    println!("\n===== K3s upgrade timings (seconds; health timeout {}s) =====", HEALTH_TIMEOUT.as_secs());
    println!(
        "{:<16} {:>7} {:>8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>7}",
        "to", "total", "->apply", "download", "restart", "unit", "standin", "w/o stdin", "seen"
    );
    for x in t {
        println!(
            "{:<16} {:>7.3} {:>8.3} {:>9.3} {:>9.3} {:>8.3} {:>8.3} {:>10.3} {:>7.3}",
            x.to,
            x.total,
            x.to_apply,
            x.download_swap,
            x.restart_to_healthy,
            x.unit_start,
            x.standin_start,
            x.total - x.standin_start,
            x.seen_by_test
        );
    }
    let m = |f: fn(&UpgradeTiming) -> f64| median(t.iter().map(f).collect());
    println!(
        "{:<16} {:>7.3} {:>8.3} {:>9.3} {:>9.3} {:>8.3} {:>8.3} {:>10.3} {:>7.3}",
        "median",
        m(|x| x.total),
        m(|x| x.to_apply),
        m(|x| x.download_swap),
        m(|x| x.restart_to_healthy),
        m(|x| x.unit_start),
        m(|x| x.standin_start),
        m(|x| x.total - x.standin_start),
        m(|x| x.seen_by_test)
    );
    println!(
        "rollback ({V_NEVER_READY} never ready): {:.3}s from spec set to healthy on the previous version \
         (gate gave up at {:.3}s; test saw it at {:.3}s); bound health timeout + 5 s = {}s\n",
        rollback.total,
        rollback.gate_failed,
        rollback.seen_by_test,
        HEALTH_TIMEOUT.as_secs() + 5
    );
}

// ---------------------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------------------

/// Everything one test creates. Field order is drop order: nodes power off first, then the coordinator
/// is killed, the mirror stops, the bridge goes and the temp dir is removed; also on panic.
struct Fixture {
    nodes: Vec<TestNode>,
    coord: Coordinator,
    mirror: FaultMirror,
    net: TestNet,
    mirror_dir: PathBuf,
    bin: PathBuf,
    dir: tempfile::TempDir,
    started: Instant,
}

fn run(name: &str, releases: &[(&str, Behaviour)], scenario: impl FnOnce(&mut Fixture) -> Result<()>) {
    let mut fx = Fixture::new(releases).unwrap_or_else(|e| panic!("{name}: setting up: {e:#}"));
    fx.step(&format!("{name}: coordinator on {}, mirror on {}", fx.coord.url(), fx.mirror.url()));
    if let Err(e) = scenario(&mut fx) {
        fx.diagnostics();
        panic!("{name} failed after {:.1?}: {e:#}", fx.started.elapsed());
    }
    for node in &fx.nodes {
        // Agents end their sessions before their node powers off.
        let _ = node.exec(&["systemctl", "stop", "elysium-node"]);
    }
    for node in fx.nodes.drain(..) {
        if let Err(e) = node.shutdown() {
            eprintln!("warning: shutting a node down: {e:#}");
        }
    }
    if let Err(e) = fx.coord.stop(Duration::from_secs(5)) {
        eprintln!("warning: stopping the coordinator: {e:#}");
    }
    fx.step(&format!("{name}: done"));
}

impl Fixture {
    fn new(releases: &[(&str, Behaviour)]) -> Result<Fixture> {
        let started = Instant::now();
        testnode::preflight()?;
        let bin = e2e::node_binary()?;
        let k3s = k3s_standin::built_binary().filter(|p| p.is_file()).context(
            "the K3s stand-in binary is missing: run `cargo build -p k3s-standin` first (or set K3S_STANDIN_BIN)",
        )?;
        let dir = tempfile::tempdir()?;
        let mirror_dir = dir.path().join("mirror");
        k3s_standin::build_mirror(&mirror_dir, &k3s, releases).context("building the release mirror")?;
        let net = TestNet::new()?;
        let mirror = FaultMirror::start(&mirror_dir, SocketAddr::from((net.host_addr(), 0)))?;
        let coord = Coordinator::start(&bin, dir.path(), net.host_addr())?;
        Ok(Fixture { nodes: Vec::new(), coord, mirror, net, mirror_dir, bin, dir, started })
    }

    fn step(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Writes the cluster spec pinning `version` and sets it; returns the generation.
    fn set_spec(&self, version: &str) -> Result<u64> {
        let text = format!(
            "[cluster]\nname = \"e2e-k3s\"\n\n[agent]\nheartbeat_seconds = 5\nreconcile_seconds = {RECONCILE_SECONDS}\n\n\
             [k3s]\nversion = \"{version}\"\nrelease_url = \"{}\"\nhealth_timeout_seconds = {}\n{}",
            self.mirror.url(),
            HEALTH_TIMEOUT.as_secs(),
            k3s_standin::pins_toml(&self.mirror_dir)?
        );
        let file = self.dir.path().join("cluster.toml");
        fs::write(&file, text)?;
        self.coord.set_spec(&file)
    }

    /// Boots node `name` and joins it with a fresh token of `role`; returns its index in `nodes`.
    fn join(&mut self, name: &str, role: &str) -> Result<usize> {
        let token = self.coord.create_token(role)?;
        let node = self.net.boot(NodeOptions::new(name).bind_ro(&self.bin, NODE_BIN))?;
        self.step(&format!("{name} booted in {:.1?} at {}", node.boot_time(), node.addr()));
        self.nodes.push(node);
        let node = &self.nodes[self.nodes.len() - 1];
        let out = join_node(node, &self.coord.url(), &token)?;
        ensure!(out.status.success(), "join of {name} ({role}) failed: {}", describe(&out));
        self.step(&format!("{name} joined as {role}"));
        Ok(self.nodes.len() - 1)
    }

    fn diagnostics(&self) {
        for node in &self.nodes {
            eprintln!(
                "===== {}: journalctl -u elysium-node -u k3s -u k3s-agent =====\n{}",
                node.name(),
                node_journal(node, &["elysium-node", "k3s", "k3s-agent"])
            );
            for f in [STATE_FILE, JOURNAL_FILE] {
                eprintln!(
                    "===== {}: {f} =====\n{}",
                    node.name(),
                    read_node_file(node, f).unwrap_or_else(|e| format!("<{e:#}>"))
                );
            }
        }
        eprintln!("===== coordinator log =====\n{}", self.coord.log());
        match self.coord.admin_ok(&["events", "--limit", "1000"]) {
            Ok(events) => eprintln!("===== coordinator events =====\n{events}"),
            Err(e) => eprintln!("===== coordinator events unavailable: {e:#}"),
        }
        for node in &self.nodes {
            match self.coord.node(node.name()) {
                Ok(r) => eprintln!("===== nodes get {} =====\n{:#}", node.name(), r["conditions"]),
                Err(e) => eprintln!("===== nodes get {} unavailable: {e:#}", node.name()),
            }
        }
        eprintln!("===== mirror requests =====\n{}", self.mirror.describe_requests());
    }
}

// ---------------------------------------------------------------------------------------------------------
// Node helpers
// ---------------------------------------------------------------------------------------------------------

/// Waits until `nodes[i]` reports the K3s condition True for generation `generation` or later.
fn wait_k3s_true(fx: &Fixture, i: usize, generation: u64, timeout: Duration) -> Result<()> {
    let node = &fx.nodes[i];
    poll(&format!("{} to report K3s True at generation {generation}", node.name()), timeout, || {
        let record = fx.coord.node(node.name())?;
        let ok = record["applied_generation"].as_u64() >= Some(generation)
            && condition(&record, "K3s").is_some_and(|c| c["status"] == "True");
        if !ok
            && let Some(c) = condition(&record, "K3s")
            && c["status"] == "False"
        {
            // Not yet: say why on timeout.
            bail!("K3s condition False: {}", c["message"]);
        }
        Ok(ok.then_some(()))
    })
}

/// Regular files under `dir` (recursively, not following links) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => found.extend(files_containing(&path, needle)),
            Ok(t) if t.is_file() => {
                if fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                    found.push(path);
                }
            }
            _ => {}
        }
    }
    found
}

fn node_path(node: &TestNode, path: &str) -> PathBuf {
    node.root().join(path.trim_start_matches('/'))
}

fn read_node_file(node: &TestNode, path: &str) -> Result<String> {
    fs::read_to_string(node_path(node, path)).with_context(|| format!("reading {path} on {}", node.name()))
}

fn file_mode(node: &TestNode, path: &str) -> Result<u32> {
    Ok(fs::metadata(node_path(node, path))
        .with_context(|| format!("{path} on {}", node.name()))?
        .permissions()
        .mode()
        & 0o7777)
}

fn file_sha(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn sha256_in_node(node: &TestNode, path: &str) -> Result<String> {
    file_sha(&node_path(node, path))
}

/// The hash the mirror publishes for `version`'s binary.
fn published_sha(fx: &Fixture, version: &str) -> Result<String> {
    let text = fs::read_to_string(fx.mirror_dir.join("download").join(version).join("sha256sum-amd64.txt"))?;
    text.lines()
        .find_map(|l| l.split_once("  ").filter(|(_, name)| *name == "k3s").map(|(h, _)| h.to_owned()))
        .context("no k3s line in the published hash file")
}

/// The version `PATH --version` prints inside the node (`k3s version V (commit)`).
fn k3s_version(node: &TestNode, path: &str) -> Result<String> {
    let out = node.exec_ok(&[path, "--version"])?;
    out.lines()
        .next()
        .and_then(|l| l.strip_prefix("k3s version "))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("{path} --version printed {out:?}"))
}

/// `curl -sk https://127.0.0.1:6443/ping` inside the node.
fn ping(node: &TestNode) -> Result<String> {
    Ok(node.exec_ok(&["curl", "-sk", "--max-time", "3", "https://127.0.0.1:6443/ping"])?.trim().to_owned())
}

/// `systemctl show UNIT -p P…` as a map.
fn unit_props(node: &TestNode, unit: &str, props: &[&str]) -> Result<BTreeMap<String, String>> {
    let mut argv = vec!["systemctl", "show", unit];
    for p in props {
        argv.extend(["-p", p]);
    }
    let out = node.exec_ok(&argv)?;
    Ok(out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

fn read_state(node: &TestNode) -> Result<Value> {
    let text = read_node_file(node, STATE_FILE)?;
    serde_json::from_str(&text).with_context(|| format!("{STATE_FILE} is not JSON: {text}"))
}

fn read_journal(node: &TestNode) -> Result<Option<Value>> {
    match fs::read_to_string(node_path(node, JOURNAL_FILE)) {
        Ok(text) => Ok(serde_json::from_str(&text).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Files in /usr/local/bin that should not be there: (unexpected files, `.k3s.*.part` partial downloads).
fn strays_in_bin(node: &TestNode) -> Result<(Vec<String>, Vec<String>)> {
    let expected = ["k3s", "k3s.previous", "kubectl", "crictl", "ctr", "elysium-node"];
    let (mut strays, mut parts) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(node_path(node, "/usr/local/bin"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if expected.contains(&name.as_str()) {
            continue;
        }
        if name.starts_with(".k3s.") && name.ends_with(".part") {
            parts.push(name);
        } else {
            strays.push(name);
        }
    }
    Ok((strays, parts))
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn secs_since(t: SystemTime) -> f64 {
    SystemTime::now().duration_since(t).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The agent's journal lines since `since`, with their journal timestamps (unix seconds).
fn agent_log_since(node: &TestNode, since: SystemTime) -> Result<Vec<(f64, String)>> {
    let from = unix(since);
    let arg = format!("@{}", from.floor() as u64);
    let out = node.exec_ok(&[
        "journalctl",
        "-u",
        "elysium-node",
        "-o",
        "short-unix",
        "--no-pager",
        "--since",
        &arg,
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (t, rest) = l.split_once(' ')?;
            let t: f64 = t.parse().ok()?;
            (t >= from).then(|| (t, rest.to_owned()))
        })
        .collect())
}

/// A measured point, or NaN (with a warning) when the agent's log did not have it.
fn measured(t: Option<f64>, line: &str) -> f64 {
    t.unwrap_or_else(|| {
        eprintln!("warning: no `{line}` line in the agent's journal; that measurement is NaN");
        f64::NAN
    })
}

/// Time of the first line at or after `after` that contains every needle.
fn first_after(log: &[(f64, String)], after: f64, needles: &[&str]) -> Option<f64> {
    log.iter().find(|(t, l)| *t >= after && needles.iter().all(|n| l.contains(n))).map(|(t, _)| *t)
}
