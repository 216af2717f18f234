//! Helpers for end-to-end tests that drive the real `elysium-node` binary: locating it, running a
//! coordinator on the host as a child process, and polling with a bounded wait.
//!
//! The binary is never built from here (a test must not invoke cargo): run `cargo build -p elysium-agent`
//! first, or point `ELYSIUM_NODE_BIN` at a build.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::child::wait_timeout;

/// The `elysium-node` binary under test: `$ELYSIUM_NODE_BIN`, else `<workspace>/target/debug/elysium-node`.
pub fn node_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("ELYSIUM_NODE_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/elysium-node"),
    };
    if !path.is_file() {
        bail!(
            "the elysium-node binary is missing at {}: run `cargo build -p elysium-agent` first \
             (or set ELYSIUM_NODE_BIN to a built binary)",
            path.display()
        );
    }
    // Canonical, so it can be bind-mounted into nodes.
    fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
}

/// A TCP port on `ip` that was free a moment ago (bind to port 0, read it back, release it).
pub fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let listener =
        TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0 to find a free port"))?;
    Ok(listener.local_addr()?.port())
}

/// Calls `probe` until it returns `Some`, at most `timeout`; errors from `probe` count as "not yet", and
/// the last one is reported on timeout together with `what`.
pub fn poll<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    // Back off from 100 ms to 500 ms: quick when things are quick, quiet when not.
    poll_with(what, timeout, Duration::from_millis(100), |p| (p * 2).min(Duration::from_millis(500)), probe)
}

/// Polls until `addr` accepts TCP connections (each attempt at most `connect_timeout`), at most
/// `timeout`; fails at once when `child`, the process that is to listen, exits first. `name` names
/// that process in messages ("{name} to listen", "{name} exited with ...").
pub fn wait_listening(
    name: &str,
    mut child: Option<&mut Child>,
    addr: SocketAddr,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<()> {
    poll(&format!("{name} to listen"), timeout, || {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            bail!("{name} exited with {status}");
        }
        Ok(TcpStream::connect_timeout(&addr, connect_timeout).ok().map(|_| ()))
    })
}

/// Everything a child wrote to its log file so far (lossy UTF-8), or why the file is unreadable.
pub fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<{} unreadable: {e}>", path.display()))
}

/// Lossy UTF-8 of a command's stdout and stderr, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// A coordinator served on the host by `elysium-node coordinator serve`, as a child of the test.
/// Dropping it kills the process (SIGKILL) if [`Coordinator::stop`] was not called.
#[derive(Debug)]
pub struct Coordinator {
    bin: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    listen: SocketAddr,
    child: Option<Child>,
}

impl Coordinator {
    /// `coordinator init` in `dir/coord` (certificate for `ip`, admin credentials pointing at
    /// `ip:port`), then `coordinator serve` on `ip:port`, stderr to `dir/coordinator.log`; returns once
    /// the port accepts connections (at most 10 s).
    pub fn start(bin: &Path, dir: &Path, ip: Ipv4Addr) -> Result<Coordinator> {
        Self::start_with(bin, dir, ip, &[])
    }

    /// [`Coordinator::start`] with more `coordinator init` arguments (`--node-cert-ttl 3m`).
    pub fn start_with(bin: &Path, dir: &Path, ip: Ipv4Addr, init_args: &[&str]) -> Result<Coordinator> {
        let data_dir = dir.join("coord");
        let log = dir.join("coordinator.log");
        let port = free_port(ip)?;
        let listen = SocketAddr::from((ip, port));

        let init = Command::new(bin)
            .args(["coordinator", "init", "--data-dir"])
            .arg(&data_dir)
            .args(["--san", &ip.to_string(), "--port", &port.to_string()])
            .args(init_args)
            .stdin(Stdio::null())
            .output()
            .context("running `elysium-node coordinator init`")?;
        if !init.status.success() {
            bail!("`coordinator init` failed: {}", describe(&init));
        }

        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(["coordinator", "serve", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", &listen.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawning `elysium-node coordinator serve`")?;
        let mut coord = Coordinator { bin: bin.to_path_buf(), data_dir, log, listen, child: Some(child) };

        let wait = wait_listening(
            "the coordinator",
            coord.child.as_mut(),
            listen,
            Duration::from_secs(10),
            Duration::from_millis(500),
        );
        if let Err(e) = wait {
            bail!("{e:#}\n--- coordinator log ---\n{}", coord.log());
        }
        Ok(coord)
    }

    /// `https://IP:PORT`, what nodes join.
    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    /// The data directory (`coordinator certs status --data-dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The admin credentials file written by `coordinator init`.
    pub fn admin_config(&self) -> PathBuf {
        self.data_dir.join("admin.toml")
    }

    /// Everything the coordinator wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Runs an admin command (`elysium-node ARGS...`) with `ELYSIUM_CONFIG` set for this command only.
    pub fn admin(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.bin)
            .args(args)
            .env("ELYSIUM_CONFIG", self.admin_config())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running elysium-node {args:?}"))
    }

    /// Like [`Coordinator::admin`], failing on a non-zero exit; returns stdout.
    pub fn admin_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.admin(args)?;
        if !out.status.success() {
            bail!("elysium-node {args:?}: {}", describe(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Coordinator::admin_ok`], parsing stdout as JSON (use with `-o json`).
    pub fn admin_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.admin_ok(args)?;
        serde_json::from_str(&out).with_context(|| format!("elysium-node {args:?} printed no JSON: {out}"))
    }

    /// SIGTERM, then waits at most `timeout` for the exit status (SIGKILL after that, and an error).
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else { bail!("the coordinator was already stopped") };
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, Signal::SIGTERM).context("sending SIGTERM to the coordinator")?;
        if let Some(status) = wait_timeout(&mut child, timeout)? {
            return Ok(status);
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the coordinator did not exit within {timeout:?} of SIGTERM (killed)");
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers shared by the end-to-end tests that drive whole clusters (e2e_k3s).
// ---------------------------------------------------------------------------------------------------------

/// Where join tokens are written inside nodes (0600; a token never goes on a command line).
pub const NODE_TOKEN_FILE: &str = "/root/join-token";

impl Coordinator {
    /// `token create --role ROLE --ttl 10m` (`ROLE` is `server` or `agent`); stdout is the token only.
    pub fn create_token(&self, role: &str) -> Result<String> {
        let token = self.admin_ok(&["token", "create", "--ttl", "10m", "--role", role])?.trim().to_owned();
        if !token.starts_with("ELY10") || token.contains(char::is_whitespace) {
            bail!("`token create` printed an odd token: {token:?}");
        }
        Ok(token)
    }

    /// `spec set FILE`; returns the generation it printed.
    pub fn set_spec(&self, file: &Path) -> Result<u64> {
        let file = file.to_str().context("spec path is not UTF-8")?;
        let out = self.admin_ok(&["spec", "set", file])?;
        out.trim()
            .rsplit(' ')
            .next()
            .and_then(|g| g.parse().ok())
            .with_context(|| format!("`spec set` printed no generation: {out:?}"))
    }

    /// `nodes get NAME -o json`.
    pub fn node(&self, name: &str) -> Result<serde_json::Value> {
        self.admin_json(&["nodes", "get", name, "-o", "json"])
    }

    /// `events -o json --limit 1000`, oldest first as the coordinator lists them.
    pub fn events(&self) -> Result<Vec<serde_json::Value>> {
        let events = self.admin_json(&["events", "-o", "json", "--limit", "1000"])?;
        match events {
            serde_json::Value::Array(list) => Ok(list),
            other => bail!("`events -o json` is not a list: {other}"),
        }
    }
}

/// The condition of type `kind` in a `nodes get -o json` record.
pub fn condition<'a>(record: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    record["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

/// Writes `token` to [`NODE_TOKEN_FILE`] inside `node` (0600, through the node's root on the host) and runs
/// `elysium-node join` there (90 s at most). Returns the join's output, successful or not.
pub fn join_node(node: &crate::testnode::TestNode, coordinator_url: &str, token: &str) -> Result<Output> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = node.root().join(NODE_TOKEN_FILE.trim_start_matches('/'));
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    drop(f);
    node.exec_timeout(
        &["elysium-node", "join", "--coordinator", coordinator_url, "--token-file", NODE_TOKEN_FILE],
        Duration::from_secs(90),
    )
}

/// `journalctl -u U1 -u U2 … --no-pager -n 200` inside `node`; best effort, for diagnostics.
pub fn node_journal(node: &crate::testnode::TestNode, units: &[&str]) -> String {
    let mut argv = vec!["journalctl"];
    for u in units {
        argv.extend(["-u", u]);
    }
    argv.extend(["--no-pager", "-n", "200"]);
    match node.exec(&argv) {
        Ok(out) => {
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        }
        Err(e) => format!("<journal of {units:?} unavailable: {e:#}>"),
    }
}

/// Like [`poll`] with a fixed pause between probes, for waits that are also measurements.
pub fn poll_every<T>(
    what: &str,
    timeout: Duration,
    pause: Duration,
    probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    poll_with(what, timeout, pause, |p| p, probe)
}

fn poll_with<T>(
    what: &str,
    timeout: Duration,
    mut pause: Duration,
    next_pause: impl Fn(Duration) -> Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        thread::sleep(pause);
        pause = next_pause(pause);
    }
}
