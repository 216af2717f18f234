//! The stand-in as systemd and the agent see it: the real binary as a child process
//! with a temporary root, its own ports, and a datagram socket as `NOTIFY_SOCKET`.

// clippy.toml's allow-unwrap-in-tests covers #[test] functions only; the helpers
// here are test code too.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k3s_standin::http::{self, Target};
use k3s_standin::{Behaviour, Stamp, mirror};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_k3s");
/// Generous: two cores shared with other builds.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A port for the stand-in to listen on. Not one the kernel hands out for `:0`: those
/// come from the ephemeral range, which every outgoing connection of the tests running
/// beside this one also uses, so one could take it before the stand-in binds it
/// ("Address already in use"). Below that range (32768 and up on Linux), only another
/// test picking the same random port could.
fn free_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// A running stand-in, terminated on drop. stderr goes to a file for assertions.
struct StandIn {
    child: Child,
    notify: UnixDatagram,
    stderr: PathBuf,
    root: PathBuf,
    supervisor_port: u16,
    kubelet_port: u16,
}

impl StandIn {
    fn start(exe: &Path, dir: &Path, name: &str, args: &[&str]) -> Self {
        let root = dir.join(name);
        fs::create_dir_all(&root).unwrap();
        let sock = dir.join(format!("{name}.notify"));
        let notify = UnixDatagram::bind(&sock).unwrap();
        let stderr = dir.join(format!("{name}.stderr"));
        let supervisor_port = free_port();
        let kubelet_port = free_port();
        let child = Command::new(exe)
            .args(args)
            .env("K3S_STANDIN_ROOT", &root)
            .env("K3S_STANDIN_SUPERVISOR_PORT", supervisor_port.to_string())
            .env("K3S_STANDIN_KUBELET_PORT", kubelet_port.to_string())
            .env("NOTIFY_SOCKET", &sock)
            .env_remove("K3S_TOKEN")
            .env_remove("K3S_URL")
            .env_remove("K3S_CONFIG_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self { child, notify, stderr, root, supervisor_port, kubelet_port }
    }

    /// Waits for a datagram containing `READY=1`; false on timeout.
    fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.notify.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            match self.notify.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap()
    }

    /// Waits until stderr contains `needle`.
    fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn supervisor(&self) -> Target {
        Target { https: true, host: "127.0.0.1".into(), port: self.supervisor_port }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.supervisor_port)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn terminate(&mut self) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        self.wait_exit(Duration::from_secs(10)).expect("stand-in did not stop on SIGTERM")
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stamped(dir: &Path, version: &str, behaviour: Behaviour) -> PathBuf {
    let out = dir.join(format!("k3s-{version}-{behaviour}"));
    k3s_standin::stamp(Path::new(BIN), &out, version, behaviour).unwrap();
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn version_output_of_stamped_and_plain_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("k3s");
    k3s_standin::stamp_with(
        Path::new(BIN),
        &exe,
        &Stamp { version: "v1.31.4+k3s1".into(), commit: "a1b2c3d4".into(), behaviour: Behaviour::Healthy },
    )
    .unwrap();
    for flag in ["--version", "-v"] {
        let out = Command::new(&exe).arg(flag).output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "k3s version v1.31.4+k3s1 (a1b2c3d4)\ngo version go1.22.9\n"
        );
    }
    // Even a crashing release answers --version: installers check it before starting.
    let crash = stamped(dir.path(), "v1.32.0+k3s1", Behaviour::Crash);
    let out = Command::new(&crash).arg("--version").output().unwrap();
    let commit = Stamp::new("v1.32.0+k3s1", Behaviour::Crash).commit;
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("k3s version v1.32.0+k3s1 ({commit})\ngo version go1.22.9\n")
    );

    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "k3s version v0.0.0-standin (00000000)\ngo version go1.22.9\n"
    );

    // Distinct artifacts from one build.
    let healthy = stamped(dir.path(), "v1.32.0+k3s1", Behaviour::Healthy);
    let hashes: Vec<String> =
        [&exe, &crash, &healthy].iter().map(|p| sha256_hex(&fs::read(p).unwrap())).collect();
    assert_ne!(hashes[0], hashes[1]);
    assert_ne!(hashes[1], hashes[2]);
    assert_eq!(fs::metadata(&healthy).unwrap().permissions().mode() & 0o777, 0o755);
}

#[test]
fn server_agent_join_and_token_checks() {
    let dir = tempfile::tempdir().unwrap();
    let exe = stamped(dir.path(), "v1.31.4+k3s1", Behaviour::Healthy);

    // The server takes its token and a label from config.yaml.
    let server_root = dir.path().join("server");
    fs::create_dir_all(server_root.join("etc/rancher/k3s")).unwrap();
    fs::write(
        server_root.join("etc/rancher/k3s/config.yaml"),
        "token: s3cret\nnode-label: [zone=a]\ncluster-init: true\n",
    )
    .unwrap();
    let mut server = StandIn::start(&exe, dir.path(), "server", &["server", "--node-name", "srv1"]);
    assert!(server.wait_ready(READY_TIMEOUT), "server never sent READY=1:\n{}", server.stderr());

    let rt = rt();
    let insecure = http::client_insecure().unwrap();
    let ping = rt.block_on(http::get(&server.supervisor(), "/ping", Some(insecure.clone()), None)).unwrap();
    assert_eq!((ping.status, ping.body_text().as_str()), (200, "pong"));
    assert_eq!(ping.header("content-type"), Some("text/plain"));
    let other =
        rt.block_on(http::get(&server.supervisor(), "/api/v1/nodes", Some(insecure.clone()), None)).unwrap();
    assert_eq!(other.status, 401);
    let cacerts = rt.block_on(http::get(&server.supervisor(), "/cacerts", Some(insecure), None)).unwrap();
    assert_eq!(cacerts.status, 200);
    assert!(cacerts.body_text().starts_with("-----BEGIN CERTIFICATE-----"));
    // Verified TLS against the served CA works for 127.0.0.1.
    let verified = http::client_trusting(&cacerts.body).unwrap();
    assert_eq!(
        rt.block_on(http::get(&server.supervisor(), "/ping", Some(verified), None)).unwrap().status,
        200
    );

    // Token files: K10<sha256 of the CA PEM>::server:<password from config.yaml>.
    let ca_file = fs::read(server.path("/var/lib/rancher/k3s/server/tls/server-ca.crt")).unwrap();
    assert_eq!(ca_file, cacerts.body);
    let token_text = fs::read_to_string(server.path("/var/lib/rancher/k3s/server/token")).unwrap();
    let full_token = token_text.trim_end().to_owned();
    assert_eq!(full_token, format!("K10{}::server:s3cret", sha256_hex(&cacerts.body)));
    assert!(token_text.ends_with('\n'));
    for link in ["node-token", "agent-token"] {
        let p = format!("/var/lib/rancher/k3s/server/{link}");
        assert_eq!(fs::read_to_string(server.path(&p)).unwrap(), token_text, "{link}");
    }
    let token_mode =
        fs::metadata(server.path("/var/lib/rancher/k3s/server/token")).unwrap().permissions().mode();
    assert_eq!(token_mode & 0o777, 0o600);
    let kubeconfig = server.path("/etc/rancher/k3s/k3s.yaml");
    assert_eq!(fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777, 0o600);
    let kc = fs::read_to_string(&kubeconfig).unwrap();
    assert!(kc.contains(&format!("server: https://127.0.0.1:{}", server.supervisor_port)), "{kc}");
    let report =
        fs::read_to_string(server.path("/var/lib/rancher/k3s/standin/effective-config.json")).unwrap();
    assert!(report.contains("zone=a") && report.contains("srv1") && !report.contains("s3cret"), "{report}");

    // An agent configured through config.yaml joins with the full token.
    let agent_root = dir.path().join("agent");
    fs::create_dir_all(agent_root.join("etc/rancher/k3s")).unwrap();
    fs::write(
        agent_root.join("etc/rancher/k3s/config.yaml"),
        format!("server: {}\ntoken: \"{full_token}\"\n", server.url()),
    )
    .unwrap();
    let agent = StandIn::start(&exe, dir.path(), "agent", &["agent"]);
    assert!(agent.wait_ready(READY_TIMEOUT), "agent never sent READY=1:\n{}", agent.stderr());
    let healthz = Target { https: false, host: "127.0.0.1".into(), port: agent.kubelet_port };
    let resp = rt.block_on(http::get(&healthz, "/healthz", None, None)).unwrap();
    assert_eq!((resp.status, resp.body_text().as_str()), (200, "ok"));

    // A token pinning another CA is refused with upstream's message, and retried.
    let wrong = format!("K10{}::server:s3cret", sha256_hex(b"some other CA"));
    let bad = StandIn::start(
        &exe,
        dir.path(),
        "bad-hash",
        &["agent", "--server", &server.url(), "--token", &wrong],
    );
    assert!(
        bad.wait_log("token CA hash does not match the Cluster CA certificate hash", READY_TIMEOUT),
        "{}",
        bad.stderr()
    );
    assert!(!bad.wait_ready(Duration::from_secs(1)));
    let closed = Target { https: false, host: "127.0.0.1".into(), port: bad.kubelet_port };
    assert!(rt.block_on(http::get(&closed, "/healthz", None, None)).is_err());

    // A short token with the wrong password passes the CA step but gets 401.
    let wrong_pw =
        StandIn::start(&exe, dir.path(), "wrong-pw", &["agent", "-s", &server.url(), "-t", "nope"]);
    assert!(wrong_pw.wait_log("401 Unauthorized", READY_TIMEOUT), "{}", wrong_pw.stderr());
    assert!(!wrong_pw.wait_ready(Duration::from_millis(500)));

    // A second server joining the first adopts its CA: same hash in its token.
    let joiner = StandIn::start(
        &exe,
        dir.path(),
        "server2",
        &["server", "--server", &server.url(), "--token", &full_token],
    );
    assert!(joiner.wait_ready(READY_TIMEOUT), "joining server never sent READY=1:\n{}", joiner.stderr());
    let joined = fs::read_to_string(joiner.path("/var/lib/rancher/k3s/server/token")).unwrap();
    assert_eq!(joined, token_text);

    assert!(server.terminate().success());
}

/// docs/reference/k3s.md#tokens: with `agent-token` set, the server writes it in
/// secure form with the `node` user; it joins agents, and a server that tries to
/// join with it is refused (it cannot fetch the bootstrap data).
#[test]
fn the_agent_token_joins_agents_only() {
    let dir = tempfile::tempdir().unwrap();
    let exe = stamped(dir.path(), "v1.31.4+k3s1", Behaviour::Healthy);
    let server_root = dir.path().join("server");
    fs::create_dir_all(server_root.join("etc/rancher/k3s")).unwrap();
    fs::write(server_root.join("etc/rancher/k3s/agent-secret"), "ag3nt\n").unwrap();
    fs::write(
        server_root.join("etc/rancher/k3s/config.yaml"),
        format!(
            "token: s3cret\ncluster-init: true\nagent-token-file: \"{}\"\n",
            "/etc/rancher/k3s/agent-secret"
        ),
    )
    .unwrap();
    let server = StandIn::start(&exe, dir.path(), "server", &["server", "--node-name", "srv1"]);
    assert!(server.wait_ready(READY_TIMEOUT), "server never sent READY=1:\n{}", server.stderr());
    let ca = fs::read(server.path("/var/lib/rancher/k3s/server/tls/server-ca.crt")).unwrap();
    let agent_token =
        fs::read_to_string(server.path("/var/lib/rancher/k3s/server/agent-token")).unwrap().trim().to_owned();
    assert_eq!(agent_token, format!("K10{}::node:ag3nt", sha256_hex(&ca)));
    let agent_path = server.path("/var/lib/rancher/k3s/server/agent-token");
    assert!(!fs::symlink_metadata(&agent_path).unwrap().file_type().is_symlink(), "a file of its own");
    assert_eq!(fs::metadata(&agent_path).unwrap().permissions().mode() & 0o777, 0o600);

    let agent =
        StandIn::start(&exe, dir.path(), "agent", &["agent", "-s", &server.url(), "-t", &agent_token]);
    assert!(agent.wait_ready(READY_TIMEOUT), "the agent token must join an agent:\n{}", agent.stderr());

    let joiner = StandIn::start(
        &exe,
        dir.path(),
        "server2",
        &["server", "--server", &server.url(), "--token", &agent_token],
    );
    assert!(joiner.wait_log("401 Unauthorized", READY_TIMEOUT), "{}", joiner.stderr());
    assert!(!joiner.wait_ready(Duration::from_millis(500)), "a server joined with the agent token");
    assert!(!joiner.path("/var/lib/rancher/k3s/server/tls/server-ca.crt").exists());
}

#[test]
fn agent_without_token_or_server_fails_like_k3s() {
    let dir = tempfile::tempdir().unwrap();
    let mut a =
        StandIn::start(Path::new(BIN), dir.path(), "a", &["agent", "--server", "https://127.0.0.1:1"]);
    assert_eq!(a.wait_exit(READY_TIMEOUT).unwrap().code(), Some(1));
    assert!(a.stderr().contains("level=fatal msg=\"--token is required\""), "{}", a.stderr());
    let mut b = StandIn::start(Path::new(BIN), dir.path(), "b", &["agent", "--token", "x"]);
    assert_eq!(b.wait_exit(READY_TIMEOUT).unwrap().code(), Some(1));
    assert!(b.stderr().contains("--server is required"), "{}", b.stderr());
}

#[test]
fn never_ready_writes_files_but_never_notifies_or_listens() {
    let dir = tempfile::tempdir().unwrap();
    let exe = stamped(dir.path(), "v1.31.5+k3s1", Behaviour::NeverReady);
    let mut s = StandIn::start(&exe, dir.path(), "nr", &["server", "--token", "pw"]);
    assert!(!s.wait_ready(Duration::from_secs(3)), "never-ready sent READY=1");
    assert!(s.path("/var/lib/rancher/k3s/server/token").is_file());
    let rt = rt();
    let insecure = http::client_insecure().unwrap();
    let err = rt.block_on(http::get(&s.supervisor(), "/ping", Some(insecure), None)).unwrap_err();
    assert!(matches!(err, http::ClientError::Connect { .. }), "{err:?}");
    assert!(s.child.try_wait().unwrap().is_none(), "never-ready must keep running");
    assert!(s.terminate().success());
}

#[test]
fn crash_exits_non_zero_with_a_panic_message() {
    let dir = tempfile::tempdir().unwrap();
    let exe = stamped(dir.path(), "v1.31.6+k3s1", Behaviour::Crash);
    for role in ["server", "agent"] {
        let mut c = StandIn::start(
            &exe,
            dir.path(),
            role,
            &[role, "--token", "pw", "--server", "https://127.0.0.1:1"],
        );
        let status = c.wait_exit(Duration::from_secs(10)).expect("crash artifact kept running");
        assert_eq!(status.code(), Some(1));
        assert!(c.stderr().contains("panic:"), "{}", c.stderr());
        assert!(!c.wait_ready(Duration::from_millis(10)));
    }
}

#[test]
fn mirror_has_release_layout_and_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let releases = [("v1.31.4+k3s1", Behaviour::Healthy), ("v1.32.0+k3s1", Behaviour::NeverReady)];
    k3s_standin::build_mirror(dir.path(), Path::new(BIN), &releases).unwrap();
    for (version, behaviour) in releases {
        let rel = dir.path().join("download").join(version);
        let bin = rel.join("k3s");
        let sums = fs::read_to_string(rel.join("sha256sum-amd64.txt")).unwrap();
        let lines: Vec<&str> = sums.lines().collect();
        assert!(lines.len() >= 3 && !lines[0].ends_with("  k3s"), "decoy must come first:\n{sums}");
        // install.sh's rule: the line ending in " k3s", text before the first blank.
        let line = lines.iter().find(|l| l.ends_with(" k3s")).unwrap();
        let hash = line.split(' ').next().unwrap();
        assert_eq!(hash, sha256_hex(&fs::read(&bin).unwrap()));
        for l in &lines {
            let (h, name) = l.split_once("  ").unwrap();
            assert_eq!(h, mirror::sha256_file(&rel.join(name)).unwrap(), "{name}");
        }
        let stamp = k3s_standin::artifact::read_stamp(&bin).unwrap();
        assert_eq!((stamp.version.as_str(), stamp.behaviour), (version, behaviour));
    }

    let server = k3s_standin::MirrorServer::start(dir.path()).unwrap();
    let target = Target { https: false, host: "127.0.0.1".into(), port: server.addr().port() };
    let rt = rt();
    let resp =
        rt.block_on(http::get(&target, "/download/v1.31.4%2Bk3s1/sha256sum-amd64.txt", None, None)).unwrap();
    assert_eq!(resp.status, 200);
    let expected = fs::read(dir.path().join("download/v1.31.4+k3s1/sha256sum-amd64.txt")).unwrap();
    assert_eq!(resp.body, expected);
    let resp = rt.block_on(http::get(&target, "/download/v9.9.9/k3s", None, None)).unwrap();
    assert_eq!(resp.status, 404);
}
