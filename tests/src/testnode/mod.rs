//! Test-node harness: throwaway Debian nodes with real systemd as PID 1, booted with `systemd-nspawn`.
//!
//! This module owns everything the harness creates on the host (see `docs/test-nodes.md`):
//!
//! - the cached base root filesystem ([`base_rootfs`]), built once with `debootstrap` under
//!   `$ELYSIUM_TESTNODE_CACHE` (default `/var/cache/elysium-testnode`), keyed on a hash of the package list;
//! - one Linux bridge per [`TestNet`], carrying a link-local `169.254.X.0/24` subnet (host is `.1`);
//! - per [`TestNode`]: a scratch dir with an overlay (upper/work/merged) on the base, a network namespace,
//!   a veth pair whose host end is enslaved to the bridge, a private cgroup, and the `systemd-nspawn` process;
//! - cleanup of all of the above: [`TestNode::shutdown`] / `Drop`, and [`cleanup_stale`] for leftovers of
//!   crashed runs (called by [`TestNet::new`]).
//!
//! Naming: every host-global object carries the owning process id plus a process-wide sequence number, so
//! concurrent test processes (and concurrent tests inside one process) never clash, and leftovers can be
//! attributed to a dead owner:
//!
//! | object              | name                                              |
//! |---------------------|---------------------------------------------------|
//! | bridge              | `ely{pid}b{seq}` (<= 15 chars)                    |
//! | host end of veth    | `ely{pid}h{seq}` (node end is `eth0` in the netns)|
//! | network namespace   | `ely-{pid}-{seq}`                                 |
//! | scratch dir         | `$CACHE/nodes/ely-{pid}-{seq}/{upper,work,root}`  |
//! | cgroup              | `<hierarchy>/elysium-testnode/ely-{pid}-{seq}`    |
//! | nspawn machine name | `ely-{pid}-{seq}-{name}` (hostname is `{name}`)   |
//!
//! Gotchas handled here (found on the CI machines, whose PID 1 is not systemd and whose cgroups are a
//! v1/v2 hybrid):
//!
//! - `systemd-nspawn --keep-unit` puts the container in `<caller's cgroup>/payload`. Two containers
//!   started by the same process would *share* that cgroup tree (both `dbus.service` daemons in one
//!   cgroup), so stopping a unit in one node would kill the other's processes. Each nspawn is therefore
//!   started inside its own fresh cgroup (a tiny `sh` wrapper moves itself there, then `exec`s nspawn).
//! - `--console=passive` gives a readable boot log with no TTY and no stdin (`--console=pipe` produced an
//!   empty log); `--setenv=SYSTEMD_COLORS=0` keeps ANSI escapes out of it.
//! - `systemctl is-system-running` answers `offline` and `initializing` for a moment after PID 1 appears;
//!   only `running`/`degraded` count as booted.
//! - Commands run through `nsenter -a` stay in the *host* cgroup (they only enter the cgroup namespace).
//! - No unit masking was needed: a minbase bookworm node boots to `running` with no failed units.
//!
//! Layout: this file is the API ([`TestNet`], [`TestNode`], [`NodeOptions`], [`preflight`]) and the order
//! of a node's boot and teardown; each job is a submodule: `rootfs` (base and overlay), `net` (links,
//! namespaces, subnets), `cgroup`, `nspawn` (the nspawn process), `procs` (/proc), `mounts`
//! (mountinfo, unmounting), `cleanup` (stale leftovers), `cmd` (running host tools, locks) and `files`.

mod cgroup;
mod cleanup;
mod cmd;
mod files;
mod mounts;
mod net;
mod nspawn;
mod procs;
mod rootfs;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub use cleanup::cleanup_stale;
pub use rootfs::base_rootfs;

use cgroup::remove_cgroup_tree;
use cleanup::cleanup_stale_locked;
use cmd::{NODE_PATH, host_path, run, run_with_timeout, runtime_lock, tool};
use files::{path_str, tail_of_file};
use mounts::{remove_tree_with_mounts, unmount};
use net::{delete_link, delete_netns, link_exists, link_name, pick_subnet};
use nspawn::{NSPAWN_PROPAGATE_DIR, stop_nspawn};
use procs::find_container_pid1;
use rootfs::{nodes_dir, overlay_supported};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of console output included in boot errors.
const CONSOLE_TAIL_LINES: usize = 60;

/// Process-wide sequence for unique names (bridges, veths, netns, scratch dirs, cgroups).
static SEQ: AtomicU32 = AtomicU32::new(1);

fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------------------

/// Options for booting one node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Hostname of the node: lowercase letters, digits and `-`, at most 32 characters.
    pub name: String,
    /// Read-only bind mounts `(host path, path inside the node)`.
    pub binds_ro: Vec<(PathBuf, PathBuf)>,
    /// Read-write bind mounts `(host path, path inside the node)`.
    pub binds_rw: Vec<(PathBuf, PathBuf)>,
}

impl NodeOptions {
    /// Options for a node called `name`, without bind mounts.
    pub fn new(name: impl Into<String>) -> Self {
        NodeOptions { name: name.into(), ..Default::default() }
    }

    /// Adds a read-only bind mount of host path `host` at `inside`.
    pub fn bind_ro(mut self, host: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> Self {
        self.binds_ro.push((host.into(), inside.into()));
        self
    }

    /// Adds a read-write bind mount of host path `host` at `inside`.
    pub fn bind_rw(mut self, host: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> Self {
        self.binds_rw.push((host.into(), inside.into()));
        self
    }
}

/// A network of test nodes: one Linux bridge on the host carrying the link-local subnet
/// `169.254.X.0/24`; the host has `169.254.X.1` on the bridge, node `i` gets `169.254.X.(10+i)`.
#[derive(Debug)]
pub struct TestNet {
    bridge: String,
    subnet: u8,
    next_index: AtomicU32,
}

impl TestNet {
    /// Creates the bridge (after checking prerequisites and removing leftovers of dead test processes).
    pub fn new() -> Result<TestNet> {
        preflight()?;
        let _lock = runtime_lock()?;
        if let Err(e) = cleanup_stale_locked() {
            eprintln!("elysium-testnode: warning: stale cleanup incomplete: {e:#}");
        }
        let pid = std::process::id();
        let seq = next_seq();
        let bridge = link_name('b', pid, seq)?;
        let subnet = pick_subnet(pid, seq)?;
        // From here on, Drop deletes the bridge if a later step fails.
        let net = TestNet { bridge, subnet, next_index: AtomicU32::new(0) };
        let br = net.bridge.as_str();
        run("ip", ["link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        // Bridged frames between nodes must not traverse the host's iptables (br_netfilter): best effort,
        // scoped to this bridge only.
        let _ = run(
            "ip",
            ["link", "set", br, "type", "bridge", "nf_call_iptables", "0", "nf_call_ip6tables", "0"],
        );
        let cidr = format!("{}/24", net.host_addr());
        run("ip", ["addr", "add", cidr.as_str(), "dev", br])?;
        run("ip", ["link", "set", br, "up"])?;
        Ok(net)
    }

    /// `169.254.X.1`: host-side servers listening here are reachable from every node.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(169, 254, self.subnet, 1)
    }

    /// Name of the host bridge.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Boots a node: overlay on the cached base, netns + veth into the bridge, `systemd-nspawn --boot`.
    /// Returns once `systemctl is-system-running` says `running` or `degraded` (timeout 60 s; the error
    /// then carries the tail of the node's console).
    pub fn boot(&self, opts: NodeOptions) -> Result<TestNode> {
        validate_name(&opts.name)?;
        for (host, inside) in opts.binds_ro.iter().chain(&opts.binds_rw) {
            validate_bind(host, inside)?;
        }
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let host_octet = u8::try_from(10 + index)
            .ok()
            .filter(|o| *o < 255)
            .ok_or_else(|| anyhow!("too many nodes on test net {}", self.bridge))?;
        let addr = Ipv4Addr::new(169, 254, self.subnet, host_octet);
        let base = base_rootfs()?;

        let pid = std::process::id();
        let seq = next_seq();
        let tag = format!("ely-{pid}-{seq}");
        let scratch = nodes_dir().join(&tag);
        let mut node = TestNode {
            name: opts.name.clone(),
            addr,
            machine: format!("{tag}-{}", opts.name),
            netns: tag.clone(),
            veth: link_name('h', pid, seq)?,
            root: scratch.join("root"),
            console: scratch.join("console.log"),
            scratch,
            have_scratch: false,
            mounted: false,
            have_netns: false,
            have_veth: false,
            cgroups: Vec::new(),
            nspawn: None,
            pid1: None,
            boot_time: Duration::ZERO,
        };
        // Every step registers what it created in `node`, so on failure dropping `node` undoes it all.
        let started = Instant::now();
        let booted = node
            .setup_rootfs(&base)
            .and_then(|()| node.setup_network(&self.bridge))
            .and_then(|()| node.spawn(&opts))
            .and_then(|()| node.wait_booted(BOOT_TIMEOUT));
        booted.with_context(|| format!("booting test node {} ({tag})", opts.name))?;
        node.boot_time = started.elapsed();
        Ok(node)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if link_exists(&self.bridge)
            && let Err(e) = run("ip", ["link", "del", self.bridge.as_str()])
        {
            eprintln!("elysium-testnode: failed to delete bridge {}: {e:#}", self.bridge);
        }
    }
}

/// One booted node. Dropping it powers it off and removes everything it created on the host.
#[derive(Debug)]
pub struct TestNode {
    name: String,
    addr: Ipv4Addr,
    machine: String,
    netns: String,
    veth: String,
    scratch: PathBuf,
    root: PathBuf,
    console: PathBuf,
    have_scratch: bool,
    mounted: bool,
    have_netns: bool,
    have_veth: bool,
    /// Node cgroups still to remove (one per hierarchy nspawn uses).
    cgroups: Vec<PathBuf>,
    nspawn: Option<Child>,
    pid1: Option<i32>,
    boot_time: Duration,
}

impl TestNode {
    /// The node's hostname.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's address on the bridge subnet.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The merged overlay root on the host (files written inside the node are visible here).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Host pid of the node's PID 1 (systemd), e.g. for `nsenter -t`.
    pub fn leader_pid(&self) -> Option<i32> {
        self.pid1
    }

    /// Time from the start of `boot` until systemd reported `running`/`degraded`.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Path of the captured nspawn console log (removed with the node).
    pub fn console_log(&self) -> &Path {
        &self.console
    }

    /// The last `lines` lines of the node's console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail_of_file(&self.console, lines)
    }

    /// Runs `argv` inside the node (`nsenter -t PID1 -a`, clean environment with a normal PATH),
    /// with a 120 s timeout. A non-zero exit status is not an error here; see [`TestNode::exec_ok`].
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.exec_timeout(argv, EXEC_TIMEOUT)
    }

    /// Like [`TestNode::exec`] with an explicit timeout (the command's process group is killed on expiry).
    pub fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> Result<Output> {
        let pid1 = self.pid1.ok_or_else(|| anyhow!("node {} is not running", self.name))?;
        if argv.is_empty() {
            bail!("exec in node {}: empty argv", self.name);
        }
        let mut cmd = Command::new(tool("nsenter")?);
        cmd.arg("-t")
            .arg(pid1.to_string())
            .arg("-a")
            .arg("--")
            .args(argv)
            .env_clear()
            .env("PATH", NODE_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "");
        run_with_timeout(cmd, timeout).with_context(|| format!("exec {argv:?} in node {}", self.name))
    }

    /// Runs `argv` inside the node and returns its stdout; fails (with stdout and stderr) on non-zero exit.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let out = self.exec(argv)?;
        if !out.status.success() {
            bail!(
                "{argv:?} in node {} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `systemctl is-active UNIT` inside the node: `active`, `inactive`, `failed`, `activating`...
    pub fn systemctl_is_active(&self, unit: &str) -> Result<String> {
        let out = self.exec(&["systemctl", "is-active", unit])?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state.is_empty() {
            bail!(
                "systemctl is-active {unit} in node {} printed nothing ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(state)
    }

    /// `journalctl -u UNIT --no-pager -n 200` inside the node; best effort, for diagnostics.
    pub fn journal(&self, unit: &str) -> String {
        match self.exec(&["journalctl", "-u", unit, "--no-pager", "-n", "200"]) {
            Ok(out) => {
                let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
                s.push_str(&String::from_utf8_lossy(&out.stderr));
                s
            }
            Err(e) => format!("<journal of {unit} unavailable: {e:#}>"),
        }
    }

    /// Orderly poweroff (SIGTERM to nspawn, bounded wait, SIGKILL fallback), then unmounts the overlay
    /// and deletes the netns, veth, cgroups and scratch dir.
    pub fn shutdown(mut self) -> Result<()> {
        self.cleanup()
    }

    // --- boot steps: `setup_rootfs` (rootfs.rs), `setup_network` (net.rs) and `spawn` (nspawn.rs) ------

    /// Polls until PID 1 exists and `systemctl is-system-running` says `running` or `degraded`.
    fn wait_booted(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("container PID 1 not started");
        loop {
            let nspawn_pid = match self.nspawn.as_mut() {
                Some(child) => {
                    if let Some(status) = child.try_wait().context("waiting for systemd-nspawn")? {
                        bail!(
                            "systemd-nspawn for node {} exited with {status} during boot; console tail:\n{}",
                            self.name,
                            self.console_tail(CONSOLE_TAIL_LINES)
                        );
                    }
                    child.id()
                }
                None => bail!("node {}: nspawn not started", self.name),
            };
            if self.pid1.is_none() {
                self.pid1 = find_container_pid1(nspawn_pid);
            }
            if self.pid1.is_some() {
                match self.exec_timeout(&["systemctl", "is-system-running"], Duration::from_secs(10)) {
                    Ok(out) => {
                        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        if state == "running" || state == "degraded" {
                            return Ok(());
                        }
                        last = format!(
                            "is-system-running: {state:?} {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not boot within {timeout:?} (last: {last}); console tail:\n{}",
                    self.name,
                    self.console_tail(CONSOLE_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    // --- teardown ----------------------------------------------------------------------------------------

    /// Idempotent teardown of everything this node created; continues past failures and reports them all.
    fn cleanup(&mut self) -> Result<()> {
        let mut errors: Vec<String> = Vec::new();
        if let Some(mut child) = self.nspawn.take()
            && let Err(e) = stop_nspawn(&mut child, self.pid1, &self.cgroups)
        {
            errors.push(format!("stopping nspawn: {e:#}"));
        }
        self.pid1 = None;
        if self.nspawn.is_none() {
            // Normally removed by nspawn itself; left behind when it was killed. Best effort.
            let _ = remove_tree_with_mounts(&Path::new(NSPAWN_PROPAGATE_DIR).join(&self.machine));
        }
        let mut remaining = Vec::new();
        for cg in std::mem::take(&mut self.cgroups) {
            if let Err(e) = remove_cgroup_tree(&cg) {
                errors.push(format!("removing cgroup {}: {e:#}", cg.display()));
                remaining.push(cg);
            }
        }
        self.cgroups = remaining;
        if self.mounted {
            match unmount(&self.root) {
                Ok(()) => self.mounted = false,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if self.have_netns {
            match delete_netns(&self.netns) {
                Ok(()) => self.have_netns = false,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if self.have_veth {
            match delete_link(&self.veth) {
                Ok(()) => self.have_veth = false,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if self.have_scratch && !self.mounted {
            match remove_tree_with_mounts(&self.scratch) {
                Ok(()) => self.have_scratch = false,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("cleanup of node {} incomplete: {}", self.name, errors.join("; ")))
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("elysium-testnode: {e:#}");
        }
    }
}

/// Checks the prerequisites of test nodes and names the missing package, if any.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("test nodes need root (mount, ip netns, systemd-nspawn): run the tests as root");
    }
    let mut missing = Vec::new();
    for (cmd, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
        ("umount", "mount"),
        ("sh", "dash"),
    ] {
        if tool(cmd).is_err() {
            missing.push(format!("`{cmd}` (package {package})"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing prerequisites for test nodes: {}; install with `apt-get install -y systemd-container \
             debootstrap iproute2 util-linux mount fuse3`",
            missing.join(", ")
        );
    }
    if !overlay_supported() {
        // Try to load it once before giving up.
        let _ = Command::new("modprobe").arg("overlay").env("PATH", host_path()).output();
        if !overlay_supported() {
            bail!("the kernel lacks overlayfs (`modprobe overlay` failed): test nodes need it");
        }
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing (load the fuse module; nodes need it for fuse3)");
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("invalid node name {name:?}: use 1-32 lowercase letters, digits or '-'");
    }
    Ok(())
}

fn validate_bind(host: &Path, inside: &Path) -> Result<()> {
    for p in [host, inside] {
        let s = path_str(p)?;
        if !p.is_absolute() || s.contains(':') {
            bail!("bind path {s:?} must be absolute and must not contain ':'");
        }
    }
    if !host.exists() {
        bail!("bind source {} does not exist", host.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::cgroup::{CGROUP_PARENT, cgroup_hierarchies};
    use super::cleanup::owner_of_tag;
    use super::mounts::{is_mounted, mounts_under};
    use super::net::NETNS_DIR;
    use super::*;
    use std::fs;
    use std::io::{BufRead, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// Tiny HTTP server on the host bridge address, answering every request with `body`, stopping
    /// when `stop` is set or after two minutes.
    fn serve_http(
        listener: TcpListener,
        body: &'static str,
        stop: Arc<AtomicBool>,
    ) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            listener.set_nonblocking(true).unwrap();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                        let mut line = String::new();
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                            line.clear();
                        }
                        let _ = write!(
                            stream,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    }

    #[test]
    fn testnode_boot_failure_reports_console_and_cleans_up() {
        let net = TestNet::new().expect("test net");
        // nspawn refuses to bind a regular file over a directory and exits before booting.
        let file = std::env::temp_dir().join(format!("ely-testnode-badbind-{}", std::process::id()));
        fs::write(&file, "x").unwrap();
        let err = net.boot(NodeOptions::new("broken").bind_ro(&file, "/etc")).expect_err("boot must fail");
        let msg = format!("{err:#}");
        println!("expected boot failure: {msg}");
        assert!(msg.contains("exited with") && msg.contains("console tail"), "{msg}");
        // The error names the node's tag; nothing carrying it may be left.
        let tag =
            msg.split(['(', ')']).find(|s| owner_of_tag(s).is_some()).expect("tag in error").to_string();
        assert!(!Path::new(NETNS_DIR).join(&tag).exists(), "netns {tag} left");
        assert!(!nodes_dir().join(&tag).exists(), "scratch {tag} left");
        let seq = tag.rsplit('-').next().unwrap();
        assert!(!link_exists(&format!("ely{}h{seq}", std::process::id())), "veth left");
        for h in cgroup_hierarchies().unwrap() {
            assert!(!h.join(CGROUP_PARENT).join(&tag).exists(), "cgroup {tag} left");
        }
        fs::remove_file(&file).unwrap();
    }

    #[test]
    fn testnode_two_nodes_boot_network_and_cleanup() {
        preflight().expect("preflight");
        let t = Instant::now();
        let base = base_rootfs().expect("base rootfs");
        println!("base rootfs {} ready in {:.1?}", base.display(), t.elapsed());

        let net = TestNet::new().expect("test net");
        println!("bridge {} host address {}", net.bridge(), net.host_addr());

        let listener = TcpListener::bind((net.host_addr(), 0)).expect("bind on host_addr");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let server = serve_http(listener, "hello-from-host", stop.clone());

        // A read-only bind, visible in node b.
        let shared = std::env::temp_dir().join(format!("ely-testnode-bind-{}", std::process::id()));
        fs::create_dir_all(&shared).unwrap();
        fs::write(shared.join("probe.txt"), "bound\n").unwrap();

        let a = net.boot(NodeOptions::new("node-a")).expect("boot node-a");
        println!("node-a booted in {:.2?} at {}", a.boot_time(), a.addr());
        let b = net.boot(NodeOptions::new("node-b").bind_ro(&shared, "/srv/shared")).expect("boot node-b");
        println!("node-b booted in {:.2?} at {}", b.boot_time(), b.addr());

        for node in [&a, &b] {
            let state = node.exec(&["systemctl", "is-system-running"]).unwrap();
            let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
            assert!(state == "running" || state == "degraded", "{}: {state}", node.name());
            assert_eq!(node.systemctl_is_active("dbus").unwrap(), "active", "{}", node.journal("dbus"));
            assert_eq!(node.exec_ok(&["hostname"]).unwrap().trim(), node.name());
            assert!(node.exec_ok(&["ps", "-e"]).unwrap().contains("dbus-daemon"));
            assert_eq!(fs::read_to_string(node.root().join("etc/hostname")).unwrap().trim(), node.name());
        }
        let id_a = a.exec_ok(&["cat", "/etc/machine-id"]).unwrap();
        let id_b = b.exec_ok(&["cat", "/etc/machine-id"]).unwrap();
        assert_eq!(id_a.trim().len(), 32);
        assert_ne!(id_a, id_b, "machine-ids must differ");
        assert_eq!(b.exec_ok(&["cat", "/srv/shared/probe.txt"]).unwrap(), "bound\n");
        assert!(a.exec_ok(&["test", "-c", "/dev/fuse"]).is_ok());

        // Each node has its own cgroup tree: stopping a unit in one must not touch the other.
        for node in [&a, &b] {
            let pid1 = node.leader_pid().unwrap();
            let cg = fs::read_to_string(format!("/proc/{pid1}/cgroup")).unwrap();
            println!("{} PID 1 host cgroups: {}", node.name(), cg.trim().replace('\n', " | "));
            assert!(cg.contains(&format!("/{CGROUP_PARENT}/{}/payload", node.netns)), "{cg}");
        }

        // Files written inside show up under root().
        a.exec_ok(&["sh", "-c", "echo written-inside > /var/tmp/probe"]).unwrap();
        assert_eq!(fs::read_to_string(a.root().join("var/tmp/probe")).unwrap(), "written-inside\n");

        // Node -> host.
        let url = format!("http://{}:{port}/", net.host_addr());
        let body = a.exec_ok(&["curl", "-sS", "--max-time", "10", &url]).unwrap();
        assert_eq!(body, "hello-from-host");

        // Node -> node, through a transient unit in node-b.
        // (python3-minimal has no http.server: a socket-level responder serving /etc/hostname.)
        let server_py = format!(
            "import socket\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{}', 8080))\n\
             s.listen(8)\n\
             while True:\n\
             \x20   c, _ = s.accept()\n\
             \x20   c.recv(65536)\n\
             \x20   body = open('/etc/hostname', 'rb').read()\n\
             \x20   c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body)\n\
             \x20   c.close()\n",
            b.addr()
        );
        b.exec_ok(&[
            "systemd-run",
            "--unit=probe-http",
            "--property=RuntimeMaxSec=120",
            "python3",
            "-c",
            &server_py,
        ])
        .unwrap();
        let url_b = format!("http://{}:8080/hostname", b.addr());
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            match a.exec_ok(&["curl", "-sS", "--max-time", "5", &url_b]) {
                Ok(body) => break body,
                Err(e) if Instant::now() > deadline => panic!("{e:#}\n{}", b.journal("probe-http")),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        };
        assert_eq!(got.trim(), "node-b");
        assert_eq!(b.systemctl_is_active("probe-http").unwrap(), "active");
        // Host -> node.
        TcpStream::connect_timeout(&(b.addr(), 8080).into(), Duration::from_secs(5)).expect("host -> node-b");

        // Shutdown and check that nothing is left behind.
        let leftovers: Vec<(String, String, PathBuf, Vec<PathBuf>)> = [&a, &b]
            .iter()
            .map(|n| (n.netns.clone(), n.veth.clone(), n.scratch.clone(), n.cgroups.clone()))
            .collect();
        let root_a = a.root().to_path_buf();
        for node in [a, b] {
            let name = node.name().to_string();
            let t = Instant::now();
            node.shutdown().expect("shutdown");
            println!("{name} shut down in {:.2?}", t.elapsed());
        }
        for (netns, veth, scratch, cgroups) in leftovers {
            assert!(!Path::new(NETNS_DIR).join(&netns).exists(), "netns {netns} left");
            assert!(!link_exists(&veth), "veth {veth} left");
            assert!(mounts_under(&scratch).is_empty(), "mounts left under {}", scratch.display());
            assert!(!scratch.exists(), "scratch {} left", scratch.display());
            for cg in cgroups {
                assert!(!cg.exists(), "cgroup {} left", cg.display());
            }
        }
        assert!(!is_mounted(&root_a));

        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        let bridge = net.bridge().to_string();
        drop(net);
        assert!(!link_exists(&bridge), "bridge {bridge} left");
        fs::remove_dir_all(&shared).unwrap();
    }
}
