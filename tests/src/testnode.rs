//! Test-node harness: throwaway Debian nodes with real systemd as PID 1, booted with `systemd-nspawn`.
//!
//! This module owns everything the harness creates on the host (see `/work/shared/docs/test-nodes.md`):
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

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

/// Debian suite of the base root filesystem.
const SUITE: &str = "bookworm";
/// debootstrap variant.
const VARIANT: &str = "minbase";
/// Packages added to the minbase variant.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "ca-certificates",
    "fuse3",
    "python3-minimal",
    "curl",
    "procps",
];
/// Bump when the post-processing of the base changes, to force a rebuild.
const BASE_FORMAT: &str = "elysium-testnode-base-v1";
/// Marker written into a finished base (the base is only ever visible complete, via rename).
const BASE_MARKER: &str = ".elysium-testnode-base";
const DEFAULT_CACHE: &str = "/var/cache/elysium-testnode";
/// Host runtime dir holding the lock that serialises subnet allocation and stale cleanup.
const RUNTIME_DIR: &str = "/run/elysium-testnode";
/// Name of the cgroup (in each hierarchy) under which node cgroups are created.
const CGROUP_PARENT: &str = "elysium-testnode";
/// PATH used inside nodes and for locating host tools.
const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const NETNS_DIR: &str = "/run/netns";
/// Per-machine dirs nspawn creates (and only removes on a clean exit).
const NSPAWN_PROPAGATE_DIR: &str = "/run/systemd/nspawn/propagate";

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
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

    // --- boot steps --------------------------------------------------------------------------------------

    /// Scratch dir + overlay on the base + per-node identity files in the upper layer.
    fn setup_rootfs(&mut self, base: &Path) -> Result<()> {
        if self.scratch.exists() {
            // Left by a dead process that had our pid: it cannot be in use.
            remove_tree_with_mounts(&self.scratch)?;
        }
        let upper = self.scratch.join("upper");
        let work = self.scratch.join("work");
        for dir in [&upper, &work, &self.root] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        self.have_scratch = true;
        let fs_type = nix::sys::statfs::statfs(&self.scratch)
            .with_context(|| format!("statfs {}", self.scratch.display()))?
            .filesystem_type();
        if fs_type == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC {
            bail!(
                "{} is on overlayfs, which cannot hold an overlay upperdir; set ELYSIUM_TESTNODE_CACHE \
                 to a directory on a regular filesystem",
                self.scratch.display()
            );
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            path_str(base)?,
            path_str(&upper)?,
            path_str(&work)?
        );
        run(
            "mount",
            [
                OsStr::new("-t"),
                "overlay".as_ref(),
                "overlay".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                self.root.as_os_str(),
            ],
        )?;
        self.mounted = true;

        let etc = self.root.join("etc");
        write_file(&etc.join("hostname"), &format!("{}\n", self.name))?;
        write_file(&etc.join("machine-id"), &format!("{}\n", random_hex(16)?))?;
        write_file(
            &etc.join("hosts"),
            &format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                self.addr, self.name
            ),
        )?;
        Ok(())
    }

    /// Network namespace with `lo` and `eth0` (veth peer of the host end enslaved to `bridge`).
    fn setup_network(&mut self, bridge: &str) -> Result<()> {
        let ns = self.netns.clone();
        let veth = self.veth.clone();
        run("ip", ["netns", "add", ns.as_str()])?;
        self.have_netns = true;
        run(
            "ip",
            ["link", "add", veth.as_str(), "type", "veth", "peer", "name", "eth0", "netns", ns.as_str()],
        )?;
        self.have_veth = true;
        run("ip", ["link", "set", veth.as_str(), "master", bridge])?;
        run("ip", ["link", "set", veth.as_str(), "up"])?;
        let cidr = format!("{}/24", self.addr);
        run("ip", ["-n", ns.as_str(), "link", "set", "lo", "up"])?;
        run("ip", ["-n", ns.as_str(), "addr", "add", cidr.as_str(), "dev", "eth0"])?;
        run("ip", ["-n", ns.as_str(), "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Starts `systemd-nspawn --boot` inside a fresh per-node cgroup, console captured to a file.
    fn spawn(&mut self, opts: &NodeOptions) -> Result<()> {
        let tag = self.netns.clone();
        let mut procs_files = Vec::new();
        for hierarchy in cgroup_hierarchies()? {
            let cg = hierarchy.join(CGROUP_PARENT).join(&tag);
            fs::create_dir_all(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
            self.cgroups.push(cg.clone());
            procs_files.push(cg.join("cgroup.procs"));
        }

        let console = File::create(&self.console)
            .with_context(|| format!("creating console log {}", self.console.display()))?;
        let console_err = console.try_clone().context("duplicating console log handle")?;

        let mut nspawn_args: Vec<String> = vec![
            format!("--directory={}", path_str(&self.root)?),
            "--boot".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            format!("--machine={}", self.machine),
            format!("--hostname={}", self.name),
            format!("--network-namespace-path={NETNS_DIR}/{}", self.netns),
            "--bind=/dev/fuse".into(),
            "--console=passive".into(),
            "--resolv-conf=off".into(),
            "--timezone=off".into(),
            "--link-journal=no".into(),
            "--setenv=SYSTEMD_COLORS=0".into(),
        ];
        for (host, inside) in &opts.binds_ro {
            nspawn_args.push(format!("--bind-ro={}:{}", path_str(host)?, path_str(inside)?));
        }
        for (host, inside) in &opts.binds_rw {
            nspawn_args.push(format!("--bind={}:{}", path_str(host)?, path_str(inside)?));
        }

        // `sh -c` moves itself into the node cgroups, then execs nspawn (same pid, same process group).
        const WRAPPER: &str = r#"n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done
exec "$@""#;
        let mut cmd = Command::new(tool("sh")?);
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(procs_files.len().to_string())
            .args(&procs_files)
            .arg(tool("systemd-nspawn")?)
            .args(&nspawn_args)
            .env("PATH", NODE_PATH)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .process_group(0);
        let child = cmd.spawn().context("spawning systemd-nspawn")?;
        self.nspawn = Some(child);
        Ok(())
    }

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

/// Returns the cached base root filesystem, building it with `debootstrap` when missing.
///
/// The cache dir is keyed on a hash of the debootstrap arguments. The build runs under an exclusive
/// `flock` into a temporary sibling dir which is renamed into place only when complete, so concurrent
/// test processes and interrupted builds are safe.
pub fn base_rootfs() -> Result<PathBuf> {
    let cache = cache_dir();
    let spec = base_spec();
    let key = hex::encode(Sha256::digest(spec.as_bytes()));
    let stem = format!("base-{SUITE}-{}", &key[..16]);
    let dir = cache.join(&stem);
    if dir.join(BASE_MARKER).is_file() {
        return Ok(dir);
    }
    fs::create_dir_all(&cache).with_context(|| format!("creating cache dir {}", cache.display()))?;
    let _lock = lock_file(&cache.join(format!(".{stem}.lock")))?;
    if dir.join(BASE_MARKER).is_file() {
        return Ok(dir); // built by someone else while we waited for the lock
    }
    // Leftovers of interrupted builds. Holding the lock, we know their builder is gone, but an orphaned
    // debootstrap may still be writing there and may have left proc/sys mounted inside. Removal is best
    // effort: we build in a fresh directory anyway.
    let tmp_prefix = format!("{stem}.tmp-");
    for entry in fs::read_dir(&cache).with_context(|| format!("reading {}", cache.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&tmp_prefix) {
            let stale = entry.path();
            kill_processes_using(&stale);
            if let Err(e) = remove_tree_with_mounts(&stale) {
                eprintln!("elysium-testnode: warning: could not remove interrupted build: {e:#}");
            }
        }
    }
    if dir.exists() {
        // Present but without marker: not ours / corrupt. Rebuild.
        remove_tree_with_mounts(&dir)?;
    }

    let tmp = cache.join(format!("{tmp_prefix}{}", std::process::id()));
    let log_path = cache.join(format!("{stem}.build.log"));
    eprintln!(
        "elysium-testnode: building base rootfs {} with debootstrap (log: {}); this takes a minute or two",
        dir.display(),
        log_path.display()
    );
    let started = Instant::now();
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone()?;
    let mut cmd = Command::new(tool("debootstrap")?);
    cmd.arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&tmp);
    if let Ok(mirror) = std::env::var("ELYSIUM_TESTNODE_MIRROR") {
        cmd.arg(mirror);
    }
    let status = cmd
        .env("PATH", host_path())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        let _ = remove_tree_with_mounts(&tmp);
        bail!(
            "debootstrap failed ({status}); tail of {}:\n{}",
            log_path.display(),
            tail_of_file(&log_path, 40)
        );
    }
    // Nodes get their own machine-id in their upper layer; keep the base free of one.
    write_file(&tmp.join("etc/machine-id"), "")?;
    if let Ok(entries) = fs::read_dir(tmp.join("var/cache/apt/archives")) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "deb") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    write_file(&tmp.join(BASE_MARKER), &spec)?;
    fs::rename(&tmp, &dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    eprintln!("elysium-testnode: base rootfs built in {:.1?}", started.elapsed());
    Ok(dir)
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

/// Removes leftovers of earlier test processes that died without cleaning up: their nspawn processes and
/// containers, cgroups, overlay mounts, scratch dirs, network namespaces, veths and bridges. Only objects
/// carrying our name prefix whose owning pid no longer exists are touched. Returns how many were removed.
pub fn cleanup_stale() -> Result<usize> {
    let _lock = runtime_lock()?;
    cleanup_stale_locked()
}

// ---------------------------------------------------------------------------------------------------------
// Stale cleanup
// ---------------------------------------------------------------------------------------------------------

fn cleanup_stale_locked() -> Result<usize> {
    let mut removed = 0usize;
    let mut errors: Vec<String> = Vec::new();
    let stale = |owner: Option<u32>| owner.is_some_and(|pid| !pid_alive(pid));

    // 1. Node cgroups of dead owners: killing them stops nspawn and its container in one go.
    if let Ok(hierarchies) = cgroup_hierarchies() {
        for hierarchy in hierarchies {
            let parent = hierarchy.join(CGROUP_PARENT);
            for name in dir_names(&parent) {
                if stale(owner_of_tag(&name)) {
                    let cg = parent.join(&name);
                    kill_cgroup_tree(&cg);
                    match remove_cgroup_tree(&cg) {
                        Ok(()) => removed += 1,
                        Err(e) => errors.push(format!("cgroup {}: {e:#}", cg.display())),
                    }
                }
            }
        }
    }

    // 2. nspawn processes (and their children) pointing at a stale netns, in case they escaped step 1.
    let marker = format!("--network-namespace-path={NETNS_DIR}/");
    for pid in all_pids() {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let owner = cmdline
            .split(|b| *b == 0)
            .filter_map(|arg| std::str::from_utf8(arg).ok())
            .find_map(|arg| arg.strip_prefix(marker.as_str()))
            .and_then(owner_of_tag);
        if stale(owner) {
            for child in children_of(pid) {
                let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            removed += 1;
        }
    }

    // 3. Network namespaces: kill whatever still lives in them, then delete them.
    for name in dir_names(Path::new(NETNS_DIR)) {
        if !stale(owner_of_tag(&name)) {
            continue;
        }
        let ns_path = Path::new(NETNS_DIR).join(&name);
        if let Ok(meta) = fs::metadata(&ns_path) {
            for pid in all_pids() {
                if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net"))
                    && m.dev() == meta.dev()
                    && m.ino() == meta.ino()
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        match delete_netns(&name) {
            Ok(()) => removed += 1,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }

    // 4. Scratch dirs (with their overlay mounts).
    let nodes = nodes_dir();
    for name in dir_names(&nodes) {
        if stale(owner_of_tag(&name)) {
            match remove_tree_with_mounts(&nodes.join(&name)) {
                Ok(()) => removed += 1,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }

    // 5. Links: host veth ends and bridges.
    for name in dir_names(Path::new("/sys/class/net")) {
        if stale(owner_of_link(&name)) {
            match delete_link(&name) {
                Ok(()) => removed += 1,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }

    // 6. nspawn's per-machine propagation dirs (machine names start with the node tag).
    let propagate = Path::new(NSPAWN_PROPAGATE_DIR);
    for name in dir_names(propagate) {
        if stale(owner_of_tag(&name)) {
            match remove_tree_with_mounts(&propagate.join(&name)) {
                Ok(()) => removed += 1,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }

    if errors.is_empty() { Ok(removed) } else { Err(anyhow!("{}", errors.join("; "))) }
}

/// Owner pid of `ely-{pid}-{seq}[-...]`.
fn owner_of_tag(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix("ely-")?.split('-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    Some(pid)
}

/// Owner pid of `ely{pid}b{seq}` / `ely{pid}h{seq}`.
fn owner_of_link(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ely")?;
    let split = rest.find(['b', 'h'])?;
    let (pid, seq) = (&rest[..split], &rest[split + 1..]);
    if pid.is_empty() || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn link_name(kind: char, pid: u32, seq: u32) -> Result<String> {
    let name = format!("ely{pid}{kind}{seq}");
    if name.len() > 15 {
        bail!("interface name {name} exceeds 15 characters");
    }
    Ok(name)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

// ---------------------------------------------------------------------------------------------------------
// Network helpers
// ---------------------------------------------------------------------------------------------------------

/// Picks X for `169.254.X.0/24`: starts from a value derived from pid and sequence, skips subnets already
/// present on the host (addresses or routes more specific than /16) and X = 0, 169 (cloud metadata
/// 169.254.169.254) and 255. Must be called with the runtime lock held so the choice and the bridge
/// creation are atomic with respect to other test processes.
fn pick_subnet(pid: u32, seq: u32) -> Result<u8> {
    let mut used = [false; 256];
    used[0] = true;
    used[169] = true;
    used[255] = true;
    for args in [&["-4", "-o", "addr", "show"][..], &["-4", "route", "show", "table", "all"][..]] {
        let out = run("ip", args)?;
        for token in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            mark_link_local(token, &mut used);
        }
    }
    let start = (pid as usize).wrapping_mul(7).wrapping_add(seq as usize * 13) % 254;
    (0..254)
        .map(|i| 1 + (start + i) % 254)
        .find(|x| !used[*x])
        .and_then(|x| u8::try_from(x).ok())
        .ok_or_else(|| anyhow!("no free 169.254.X.0/24 subnet left on this host"))
}

/// Marks the third octets covered by `token` if it is a 169.254.0.0/16 address or prefix longer than /16.
fn mark_link_local(token: &str, used: &mut [bool; 256]) {
    let (ip, len) = match token.split_once('/') {
        Some((ip, len)) => match len.parse::<u32>() {
            Ok(len) => (ip, len),
            Err(_) => return,
        },
        None => (token, 32),
    };
    let Ok(ip) = ip.parse::<Ipv4Addr>() else { return };
    let o = ip.octets();
    if o[0] != 169 || o[1] != 254 || len <= 16 || len > 32 {
        return;
    }
    let span = 1usize << 24u32.saturating_sub(len).min(8);
    let first = usize::from(o[2]) & !(span - 1);
    for slot in used.iter_mut().skip(first).take(span) {
        *slot = true;
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn delete_link(name: &str) -> Result<()> {
    if link_exists(name) {
        // May vanish concurrently (a veth dies with its netns): only an existing link is an error.
        if let Err(e) = run("ip", ["link", "del", name])
            && link_exists(name)
        {
            return Err(e);
        }
    }
    Ok(())
}

fn delete_netns(name: &str) -> Result<()> {
    if Path::new(NETNS_DIR).join(name).exists() {
        run("ip", ["netns", "del", name])?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Processes, cgroups, mounts
// ---------------------------------------------------------------------------------------------------------

/// SIGTERM (orderly poweroff), bounded wait, then SIGKILL of the whole node.
fn stop_nspawn(child: &mut Child, pid1: Option<i32>, cgroups: &[PathBuf]) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = i32::try_from(child.id()).context("nspawn pid out of range")?;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    if wait_timeout(child, STOP_TIMEOUT)?.is_some() {
        return Ok(());
    }
    eprintln!("elysium-testnode: nspawn {pid} did not stop within {STOP_TIMEOUT:?}; killing it");
    for cg in cgroups {
        kill_cgroup_tree(cg);
    }
    if let Some(p1) = pid1 {
        // Killing a pid namespace's init kills the whole namespace.
        if parent_of(p1) == Some(pid) {
            let _ = kill(Pid::from_raw(p1), Signal::SIGKILL);
        }
    }
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    if wait_timeout(child, Duration::from_secs(10))?.is_none() {
        bail!("nspawn {pid} survived SIGKILL");
    }
    Ok(())
}

/// SIGKILLs processes whose root, working directory or command line refers to `dir` (an orphaned
/// debootstrap and its chrooted helpers), then gives the kernel a moment to reap them.
fn kill_processes_using(dir: &Path) {
    let dir_s = dir.to_string_lossy().into_owned();
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut killed = false;
    for pid in all_pids().into_iter().filter(|p| *p != me) {
        let in_dir =
            |link: &str| fs::read_link(format!("/proc/{pid}/{link}")).is_ok_and(|p| p.starts_with(dir));
        let in_cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| String::from_utf8_lossy(a).contains(dir_s.as_str())));
        if in_dir("root") || in_dir("cwd") || in_cmdline {
            killed |= kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok();
        }
    }
    if killed {
        thread::sleep(Duration::from_millis(300));
    }
}

/// The container's PID 1: a child of nspawn that is pid 1 in its own pid namespace.
fn find_container_pid1(nspawn_pid: u32) -> Option<i32> {
    let nspawn_pid = i32::try_from(nspawn_pid).ok()?;
    children_of(nspawn_pid).into_iter().find(|pid| {
        fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
            status.lines().any(|l| {
                l.strip_prefix("NSpid:").is_some_and(|v| {
                    let ids: Vec<&str> = v.split_whitespace().collect();
                    ids.len() >= 2 && ids.last() == Some(&"1")
                })
            })
        })
    })
}

fn all_pids() -> Vec<i32> {
    dir_names(Path::new("/proc")).iter().filter_map(|n| n.parse().ok()).collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and parentheses): state ppid ...
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn children_of(pid: i32) -> Vec<i32> {
    all_pids().into_iter().filter(|p| parent_of(*p) == Some(pid)).collect()
}

/// Cgroup hierarchies that systemd-nspawn manages: the unified (v2) one and, on hybrid/legacy hosts,
/// the v1 `name=systemd` one.
fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    let is_cgroup2 = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    let root = Path::new("/sys/fs/cgroup");
    if is_cgroup2(root) {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut found = Vec::new();
    let unified = root.join("unified");
    if is_cgroup2(&unified) {
        found.push(unified);
    }
    let systemd = root.join("systemd");
    if systemd.join("cgroup.procs").exists() {
        found.push(systemd);
    }
    if found.is_empty() {
        bail!("no usable cgroup hierarchy under /sys/fs/cgroup (need cgroup2 or name=systemd)");
    }
    Ok(found)
}

/// SIGKILLs every process in a cgroup subtree (`cgroup.kill` on v2, per-pid on v1).
fn kill_cgroup_tree(cg: &Path) {
    let kill_file = cg.join("cgroup.kill");
    if kill_file.exists() && fs::write(&kill_file, "1").is_ok() {
        return;
    }
    for dir in subdirs_depth_first(cg) {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Removes a cgroup and its children (rmdir, deepest first), killing stragglers if some stay busy.
fn remove_cgroup_tree(cg: &Path) -> Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut last_err = None;
        for dir in subdirs_depth_first(cg) {
            if let Err(e) = fs::remove_dir(&dir)
                && dir.exists()
            {
                last_err = Some(anyhow!("rmdir {}: {e}", dir.display()));
            }
        }
        match last_err {
            None => return Ok(()),
            Some(e) if Instant::now() >= deadline => return Err(e),
            Some(_) => {
                kill_cgroup_tree(cg);
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `dir` and all directories below it, deepest first (does not follow symlinks).
fn subdirs_depth_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for name in dir_names(dir) {
        let p = dir.join(name);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            out.extend(subdirs_depth_first(&p));
        }
    }
    if dir.is_dir() {
        out.push(dir.to_path_buf());
    }
    out
}

/// Mount points in our mount namespace.
fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape_mountinfo(p))).collect()
}

/// Decodes the `\ooo` octal escapes of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_points().into_iter().filter(|m| m.starts_with(dir)).collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v.dedup();
    v
}

/// `umount PATH` (all stacked mounts), falling back to a lazy unmount.
fn unmount(path: &Path) -> Result<()> {
    for _ in 0..8 {
        if !is_mounted(path) {
            return Ok(());
        }
        if run("umount", [path.as_os_str()]).is_err() {
            run("umount", [OsStr::new("-l"), path.as_os_str()])
                .with_context(|| format!("unmounting {}", path.display()))?;
        }
    }
    if is_mounted(path) {
        bail!("{} is still mounted", path.display());
    }
    Ok(())
}

/// Unmounts everything below `dir`, then deletes it; refuses to delete while anything stays mounted.
fn remove_tree_with_mounts(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        unmount(&m)?;
    }
    if !mounts_under(dir).is_empty() {
        bail!("not removing {}: still has mounts below it", dir.display());
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("removing {}: {e}", dir.display())),
    }
}

fn overlay_supported() -> bool {
    fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.split_whitespace().last() == Some("overlay")))
}

// ---------------------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------------------

fn cache_dir() -> PathBuf {
    std::env::var_os("ELYSIUM_TESTNODE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// Parent of the per-node scratch dirs: on the cache's filesystem (a regular one, not overlayfs).
fn nodes_dir() -> PathBuf {
    cache_dir().join("nodes")
}

/// The exact debootstrap invocation the cache is keyed on.
fn base_spec() -> String {
    format!("{BASE_FORMAT}\n--variant={VARIANT}\n--include={}\n{SUITE}\n", PACKAGES.join(","))
}

/// PATH for host tools: the caller's PATH plus the sbin dirs (cargo may run us without them).
fn host_path() -> String {
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{NODE_PATH}"),
        _ => NODE_PATH.to_string(),
    }
}

/// Absolute path of a host tool.
fn tool(name: &str) -> Result<PathBuf> {
    std::env::split_paths(&host_path())
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| anyhow!("`{name}` not found in PATH or {NODE_PATH}"))
}

/// Runs a host tool; errors name the command line and carry its stderr.
fn run<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let line = || {
        let mut s = program.to_string();
        for a in &args {
            s.push(' ');
            s.push_str(&a.as_ref().to_string_lossy());
        }
        s
    };
    let out = Command::new(tool(program)?)
        .args(&args)
        .env("PATH", host_path())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run `{}`", line()))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", line(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// Runs `cmd` with stdout/stderr captured in anonymous files (so a daemonised grandchild holding them
/// cannot block us), killing its process group after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let mut out_file = tempfile::tempfile().context("creating stdout capture file")?;
    let mut err_file = tempfile::tempfile().context("creating stderr capture file")?;
    cmd.stdin(Stdio::null()).stdout(out_file.try_clone()?).stderr(err_file.try_clone()?).process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    let status = wait_timeout(&mut child, timeout)?;
    let read_all = |f: &mut File| -> Vec<u8> {
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(0)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
        buf
    };
    let Some(status) = status else {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "timed out after {timeout:?}; stdout: {} stderr: {}",
            String::from_utf8_lossy(&read_all(&mut out_file)).trim(),
            String::from_utf8_lossy(&read_all(&mut err_file)).trim()
        );
    };
    Ok(Output { status, stdout: read_all(&mut out_file), stderr: read_all(&mut err_file) })
}

/// Waits for `child` to exit, at most `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Takes the exclusive lock serialising subnet allocation and stale cleanup across processes.
fn runtime_lock() -> Result<Flock<File>> {
    fs::create_dir_all(RUNTIME_DIR).with_context(|| format!("creating {RUNTIME_DIR}"))?;
    lock_file(&Path::new(RUNTIME_DIR).join("lock"))
}

/// Exclusive `flock` on `path` (created if missing), released when the returned guard is dropped.
fn lock_file(path: &Path) -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| anyhow!("flock {}: {e}", path.display()))
}

/// Names of the entries of `dir` (empty when unreadable).
fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    // Replace rather than write through: the base's file may be a symlink or read-only.
    let _ = fs::remove_file(path);
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("reading /dev/urandom")?;
    Ok(hex::encode(buf))
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<{} unreadable: {e}>", path.display()),
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
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
    use super::*;
    use std::io::BufRead;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn name_parsing() {
        assert_eq!(owner_of_tag("ely-1234-7"), Some(1234));
        assert_eq!(owner_of_tag("ely-1234-7-node-a"), Some(1234));
        assert_eq!(owner_of_tag("ely-x-7"), None);
        assert_eq!(owner_of_tag("base-bookworm"), None);
        assert_eq!(owner_of_link("ely1234h7"), Some(1234));
        assert_eq!(owner_of_link("ely1234b12"), Some(1234));
        assert_eq!(owner_of_link("ely1234x7"), None);
        assert_eq!(owner_of_link("eth0"), None);
        assert_eq!(link_name('h', 4_194_304, 9999).unwrap().len(), 15);
        assert!(link_name('h', 4_194_304, 10_000).is_err());
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        let mut used = [false; 256];
        mark_link_local("169.254.8.1/24", &mut used);
        mark_link_local("169.254.0.0/16", &mut used);
        mark_link_local("169.254.64.0/22", &mut used);
        assert!(used[8] && used[64] && used[67] && !used[68] && !used[9] && !used[0]);
    }

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
