//! End to end: media mounts on a real-systemd test node with the real rclone, FUSE
//! and a real Azure Blob remote. A coordinator on the host, Azurite (the Azure Storage
//! emulator) on the test net, a Debian node booted with systemd as PID 1 (nspawn,
//! `/dev/fuse` bound in), the real `elysium-node` agent, and the upstream rclone bound
//! read-only into the node and named by `[rclone] binary`.
//!
//! One scenario, to keep node boots few: a blob written to Azurite is read through the
//! mount on the node; `wait-mount` says it is up (and times out on a path that is
//! not); `systemctl stop` takes the mount away (and the agent brings it back); a wrong
//! key fails the unit and the node reports `Mount/media` False with `BadCredentials`;
//! the right key heals it; a mount removed from the spec loses its unit. The key is
//! never in the node's journal, a unit file or a process's arguments. Timings are
//! printed (spec set → file readable through the mount).
//!
//! Needs root, the test-node prerequisites (see `elysium_tests::testnode`), a built
//! agent (`cargo build -p elysium-agent`) and the tools tests/run installs under
//! target/tools (Azurite, upstream rclone).

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use elysium_tests::azurite::{self, Azurite};
use elysium_tests::e2e::{self, Coordinator, condition, describe, join_node, node_journal, poll, poll_every};
use elysium_tests::testnode::{self, NodeOptions, TestNet, TestNode};

const NODE_BIN: &str = "/usr/local/bin/elysium-node";
/// Where the upstream rclone is bound in the node: not Debian's default path, so the
/// spec's `[rclone] binary` is what finds it.
const NODE_RCLONE: &str = "/usr/local/bin/rclone";
const MOUNT: &str = "/mnt/media-library";
const UNIT: &str = "elysium-mount-media.service";
const EXTRA_UNIT: &str = "elysium-mount-scratch.service";
const CONFIG: &str = "/etc/elysium-node/rclone/rclone.conf";
const SECRET: &str = "media-azure-key";
/// A well-formed key that Azurite does not accept.
const WRONG_KEY: &str = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3Jvbmc=";
const RECONCILE_SECONDS: u64 = 10;
/// A mount from nothing: the agent's next pass, config, unit, rclone's start check and mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(90);

struct Fixture {
    node: Option<TestNode>,
    coord: Coordinator,
    azurite: Azurite,
    net: TestNet,
    bin: PathBuf,
    rclone: PathBuf,
    dir: tempfile::TempDir,
    started: Instant,
}

#[test]
fn azure_blob_mount_lifecycle_on_a_real_node() {
    let mut fx = Fixture::new().unwrap_or_else(|e| panic!("setting up: {e:#}"));
    fx.step(&format!("coordinator on {}, Azurite at {}", fx.coord.url(), fx.azurite.endpoint()));
    let result = scenario(&mut fx);
    if let Err(e) = result {
        fx.diagnostics();
        panic!("e2e_mounts failed after {:.1?}: {e:#}", fx.started.elapsed());
    }
    if let Some(node) = fx.node.take() {
        let _ = node.exec(&["systemctl", "stop", "elysium-node"]);
        if let Err(e) = node.shutdown() {
            eprintln!("warning: shutting the node down: {e:#}");
        }
    }
    if let Err(e) = fx.coord.stop(Duration::from_secs(5)) {
        eprintln!("warning: stopping the coordinator: {e:#}");
    }
    fx.step("done");
}

fn scenario(fx: &mut Fixture) -> Result<()> {
    // A blob in Azurite, written by the host's rclone.
    let content = format!("hello from azurite {}\n", std::process::id());
    fx.azurite.put_blob("media", "shows/pilot.txt", content.as_bytes())?;
    fx.step("container `media` with shows/pilot.txt in Azurite");

    fx.join("media1")?;
    fx.set_secret(SECRET, azurite::KEY)?;
    let spec_set = Instant::now();
    let g1 = fx.set_spec(true)?;
    fx.step(&format!("spec generation {g1}: mounts `media` (azureblob) and `scratch` (local)"));

    // --- The blob is readable through the mount on the node. ---
    let node = fx.node();
    let path = format!("{MOUNT}/shows/pilot.txt");
    let read = poll_every("the blob through the mount", MOUNT_TIMEOUT, Duration::from_millis(250), || {
        Ok(node.exec(&["cat", &path])?.status.success().then_some(()))
    });
    read.with_context(|| format!("journal:\n{}", node_journal(node, &[UNIT, "elysium-node"])))?;
    let readable_after = spec_set.elapsed();
    ensure!(node.exec_ok(&["cat", &path])? == content, "the blob read through the mount differs");
    fx.step(&format!("TIMING spec set -> blob readable through the mount on the node: {readable_after:.2?}"));
    wait_condition(fx, "Mount/media", "True", "Mounted", MOUNT_TIMEOUT)?;
    wait_condition(fx, "Mount/scratch", "True", "Mounted", MOUNT_TIMEOUT)?;
    let node = fx.node();
    ensure!(node.systemctl_is_active(UNIT)? == "active", "{UNIT} is not active");
    let enabled = node.exec_ok(&["systemctl", "is-enabled", UNIT])?;
    ensure!(enabled.trim() == "enabled", "{UNIT} is {enabled:?}");
    let mountinfo = node.exec_ok(&["cat", "/proc/self/mountinfo"])?;
    ensure!(
        mountinfo
            .lines()
            .any(|l| l.contains(&format!(" {MOUNT} ")) && l.contains(" - fuse.rclone media:media ")),
        "no fuse.rclone entry at {MOUNT}:\n{mountinfo}"
    );
    fx.step("Mount/media True; unit active and enabled; fuse.rclone media:media in the node's mountinfo");

    // The files the agent wrote: config 0600 with the key (plain, as azureblob wants
    // it), the unit without it.
    ensure!(file_mode(node, CONFIG)? == 0o600, "{CONFIG} is not 0600");
    let config = read_node_file(node, CONFIG)?;
    ensure!(config.contains(&format!("key = {}\n", azurite::KEY)), "the key is not in the config plainly");
    let unit = read_node_file(node, &format!("/etc/systemd/system/{UNIT}"))?;
    ensure!(!unit.contains(azurite::KEY), "the key is in the unit file");
    ensure!(
        unit.contains(&format!("ExecStart={NODE_RCLONE} mount media:media {MOUNT} --config={CONFIG}")),
        "{unit}"
    );

    // --- wait-mount: 0 when mounted, 1 with a reason when not. ---
    let started = Instant::now();
    let out = node.exec(&[NODE_BIN, "wait-mount", MOUNT, "--timeout", "30s"])?;
    ensure!(out.status.success(), "wait-mount on a mounted path: {}", describe(&out));
    ensure!(String::from_utf8_lossy(&out.stdout).contains("fuse.rclone"), "{}", describe(&out));
    let out =
        node.exec(&[NODE_BIN, "wait-mount", "/mnt/nothing-here", "--timeout", "2s", "--interval", "200ms"])?;
    ensure!(out.status.code() == Some(1), "wait-mount on an unmounted path: {}", describe(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("is not an rclone mount after"),
        "{}",
        describe(&out)
    );
    fx.step(&format!(
        "wait-mount: exit 0 on {MOUNT}, exit 1 after 2s on a path with no mount ({:.1?})",
        started.elapsed()
    ));

    // --- systemctl stop: the mount is gone at once; the agent's next pass restores it. ---
    let stopped = Instant::now();
    let out = node.exec_ok(&[
        "sh",
        "-c",
        &format!("systemctl stop {UNIT} && grep -c ' {MOUNT} ' /proc/self/mountinfo || true"),
    ])?;
    ensure!(out.trim() == "0", "after systemctl stop, {MOUNT} is still in mountinfo ({out:?})");
    fx.step("systemctl stop: the mount left the node's mountinfo");
    poll("the agent to mount it again", Duration::from_secs(RECONCILE_SECONDS * 3 + 30), || {
        Ok(node.exec(&["cat", &path])?.status.success().then_some(()))
    })?;
    fx.step(&format!("TIMING restored by the agent's next pass after {:.1?}", stopped.elapsed()));

    // --- A wrong key: the unit fails and the node says why. ---
    let wrong = Instant::now();
    fx.set_secret(SECRET, WRONG_KEY)?;
    let c = wait_condition(fx, "Mount/media", "False", "BadCredentials", MOUNT_TIMEOUT)?;
    let node = fx.node();
    fx.step(&format!(
        "TIMING wrong key -> Mount/media False BadCredentials after {:.1?}: {}",
        wrong.elapsed(),
        c["message"]
    ));
    let props = unit_props(node, UNIT, &["ActiveState", "SubState", "Result"])?;
    ensure!(props["Result"] == "exit-code", "{UNIT} after a wrong key: {props:?}");
    ensure!(
        props["ActiveState"] == "failed"
            || (props["ActiveState"] == "activating" && props["SubState"] == "auto-restart"),
        "{UNIT} after a wrong key: {props:?}"
    );
    ensure!(
        node.exec(&["cat", &path])?.status.code() != Some(0),
        "the blob is still readable with a wrong key"
    );
    let message = c["message"].as_str().unwrap_or_default();
    ensure!(
        !message.contains(WRONG_KEY) && !message.contains(azurite::KEY),
        "a key is in the condition: {message}"
    );
    fx.step(&format!("{UNIT}: {props:?}"));

    // --- The right key again: it heals without anyone touching the node. ---
    let healed = Instant::now();
    fx.set_secret(SECRET, azurite::KEY)?;
    wait_condition(fx, "Mount/media", "True", "Mounted", MOUNT_TIMEOUT)?;
    ensure!(fx.node().exec_ok(&["cat", &path])? == content);
    fx.step(&format!("TIMING right key -> mounted again after {:.1?}", healed.elapsed()));

    // --- A mount removed from the spec loses its unit. ---
    let node = fx.node();
    ensure!(
        node.root().join(format!("etc/systemd/system/{EXTRA_UNIT}")).exists(),
        "{EXTRA_UNIT} was never installed"
    );
    fx.set_spec(false)?;
    let node = fx.node();
    poll(&format!("{EXTRA_UNIT} to be removed"), MOUNT_TIMEOUT, || {
        Ok((!node.root().join(format!("etc/systemd/system/{EXTRA_UNIT}")).exists()).then_some(()))
    })?;
    let state = node.exec(&["systemctl", "is-active", EXTRA_UNIT])?;
    let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
    ensure!(state == "inactive", "{EXTRA_UNIT} is {state:?} after its mount left the spec");
    ensure!(
        !node.exec_ok(&["cat", "/proc/self/mountinfo"])?.contains(" /mnt/scratch "),
        "/mnt/scratch is still mounted"
    );
    ensure!(
        !read_node_file(node, CONFIG)?.contains("[scratch]"),
        "the dropped mount's config section is still there"
    );
    poll("Mount/scratch to leave the node's conditions", Duration::from_secs(60), || {
        let record = fx.coord.node("media1")?;
        Ok(condition(&record, "Mount/scratch").is_none().then_some(()))
    })?;
    ensure!(fx.node().systemctl_is_active(UNIT)? == "active", "dropping `scratch` touched `media`");
    fx.step(&format!("mount `scratch` left the spec: {EXTRA_UNIT} stopped and deleted, `media` untouched"));

    // --- The key is nowhere it should not be. ---
    let node = fx.node();
    let journal = node.exec_ok(&["journalctl", "--no-pager", "-o", "cat"])?;
    let args = node.exec_ok(&["ps", "-eo", "args"])?;
    for key in [azurite::KEY, WRONG_KEY] {
        ensure!(!journal.contains(key), "a key is in the node's journal");
        ensure!(!args.contains(key), "a key is in a process's arguments");
        ensure!(
            !read_node_file(node, &format!("/etc/systemd/system/{UNIT}"))?.contains(key),
            "a key is in the unit"
        );
    }
    ensure!(
        args.contains(&format!("{NODE_RCLONE} mount media:media {MOUNT}")),
        "rclone is not running:\n{args}"
    );
    fx.step("no key in the node's journal, the unit files or any process's arguments");
    Ok(())
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let started = Instant::now();
        testnode::preflight()?;
        let bin = e2e::node_binary()?;
        let rclone = azurite::upstream_rclone()?;
        let dir = tempfile::tempdir()?;
        let net = TestNet::new()?;
        let azurite = Azurite::start(net.host_addr(), dir.path())?;
        let coord = Coordinator::start(&bin, dir.path(), net.host_addr())?;
        Ok(Fixture { node: None, coord, azurite, net, bin, rclone, dir, started })
    }

    fn step(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn node(&self) -> &TestNode {
        self.node.as_ref().expect("a node was joined")
    }

    fn join(&mut self, name: &str) -> Result<()> {
        let token = self.coord.create_token("agent")?;
        let opts = NodeOptions::new(name).bind_ro(&self.bin, NODE_BIN).bind_ro(&self.rclone, NODE_RCLONE);
        let node = self.net.boot(opts)?;
        self.step(&format!("{name} booted in {:.1?} at {}", node.boot_time(), node.addr()));
        let out = join_node(&node, &self.coord.url(), &token)?;
        self.node = Some(node);
        ensure!(out.status.success(), "join of {name} failed: {}", describe(&out));
        self.step(&format!("{name} joined"));
        Ok(())
    }

    /// `secret set NAME --from-file` (a 0600 file: the value never goes on a command line).
    fn set_secret(&self, name: &str, value: &str) -> Result<()> {
        let file = self.dir.path().join(format!("secret-{name}"));
        let _ = fs::remove_file(&file);
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file)?;
        std::io::Write::write_all(&mut f, value.as_bytes())?;
        drop(f);
        let path = file.to_str().context("temp path is not UTF-8")?;
        self.coord.admin_ok(&["secret", "set", name, "--from-file", path])?;
        fs::remove_file(&file)?;
        Ok(())
    }

    /// The spec: mount `media` (Azurite), and with `scratch` a second, local mount.
    fn set_spec(&self, scratch: bool) -> Result<u64> {
        let mut text = format!(
            "[cluster]\nname = \"e2e-mounts\"\n\n[agent]\nheartbeat_seconds = 5\nreconcile_seconds = {RECONCILE_SECONDS}\n\n\
             [rclone]\nbinary = \"{NODE_RCLONE}\"\n\n\
             [[mounts]]\nname = \"media\"\nremote_path = \"media\"\npath = \"{MOUNT}\"\ndir_cache_time = \"10s\"\n\
             [mounts.remote]\ntype = \"azureblob\"\n\
             options = {{ account = \"{}\", endpoint = \"{}\" }}\nsecret_options = {{ key = \"{SECRET}\" }}\n",
            azurite::ACCOUNT,
            self.azurite.endpoint()
        );
        if scratch {
            text.push_str(
                "\n[[mounts]]\nname = \"scratch\"\nremote_path = \"/var/tmp\"\npath = \"/mnt/scratch\"\nvfs_cache_mode = \"off\"\n\
                 [mounts.remote]\ntype = \"local\"\n",
            );
        }
        let file = self.dir.path().join("cluster.toml");
        fs::write(&file, text)?;
        self.coord.set_spec(&file)
    }

    fn diagnostics(&self) {
        if let Some(node) = &self.node {
            eprintln!(
                "===== journalctl -u elysium-node -u {UNIT} -u {EXTRA_UNIT} =====\n{}",
                node_journal(node, &["elysium-node", UNIT, EXTRA_UNIT])
            );
            for f in ["/var/log/elysium-node/mounts/media.log", "/var/log/elysium-node/mounts/scratch.log"] {
                eprintln!(
                    "===== {f} =====\n{}",
                    read_node_file(node, f).unwrap_or_else(|e| format!("<{e:#}>"))
                );
            }
            match self.coord.node(node.name()) {
                Ok(r) => eprintln!("===== nodes get {} =====\n{:#}", node.name(), r["conditions"]),
                Err(e) => eprintln!("===== nodes get unavailable: {e:#}"),
            }
        }
        eprintln!("===== coordinator log =====\n{}", self.coord.log());
        eprintln!("===== azurite log =====\n{}", self.azurite.log());
    }
}

/// Waits until the node's condition `kind` has `status` and `reason`; returns it.
fn wait_condition(
    fx: &Fixture,
    kind: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let name = fx.node().name().to_owned();
    poll(&format!("{name} to report {kind} {status} ({reason})"), timeout, || {
        let record = fx.coord.node(&name)?;
        match condition(&record, kind) {
            Some(c) if c["status"] == status && c["reason"] == reason => Ok(Some(c.clone())),
            // Not yet: say what it is on timeout.
            Some(c) => bail!("{kind} is {} ({}): {}", c["status"], c["reason"], c["message"]),
            None => bail!("no {kind} condition yet; conditions: {}", record["conditions"]),
        }
    })
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

fn unit_props(
    node: &TestNode,
    unit: &str,
    props: &[&str],
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut argv = vec!["systemctl", "show", unit];
    for p in props {
        argv.extend(["-p", p]);
    }
    let out = node.exec_ok(&argv)?;
    Ok(out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}
