//! The coordinator as a real process: READY=1 only once listening, clean SIGTERM,
//! no state lost to `kill -9`, and a data directory never overwritten.

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use elysium_tests::harness::elysium_binary;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(elysium_binary())
        .args(args)
        .env("ELYSIUM_CONFIG", dir.join("admin.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run elysium-node")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `coordinator serve` with `NOTIFY_SOCKET` pointing at `sock` and waits
/// for READY=1. Returns the process.
fn serve(dir: &Path, port: u16, sock: &UnixDatagram, sock_path: &Path) -> Proc {
    let child = Command::new(elysium_binary())
        .args(["coordinator", "serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", sock_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn coordinator");
    let proc = Proc(child);
    sock.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).expect("no sd_notify message within 15 s");
        let msg = String::from_utf8_lossy(&buf[..n]);
        if msg.lines().any(|l| l == "READY=1") {
            // READY means listening: connecting must work right now.
            TcpStream::connect(("127.0.0.1", port))
                .expect("READY=1 was sent before the port accepted connections");
            return proc;
        }
    }
}

#[test]
fn coordinator_process_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coord");
    let port = free_port();
    ok(cli(
        tmp.path(),
        &["coordinator", "init", "--data-dir", dir.to_str().unwrap(), "--port", &port.to_string()],
    ));
    let admin = dir.clone();

    // Refuses to overwrite.
    let again = cli(tmp.path(), &["coordinator", "init", "--data-dir", dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut coord = serve(&dir, port, &sock, &sock_path);

    let token = ok(cli(&admin, &["token", "create", "--ttl", "1h", "--uses", "2", "--label", "rack=a"]));
    assert!(token.trim().starts_with("ELY10"), "{token}");
    assert_eq!(token.trim().lines().count(), 1, "stdout must hold only the token");
    let spec = tmp.path().join("cluster.toml");
    std::fs::write(&spec, "[cluster]\nname = \"durable\"\n").unwrap();
    assert!(ok(cli(&admin, &["spec", "set", spec.to_str().unwrap()])).contains("generation 1"));

    // kill -9: nothing committed may be lost.
    coord.0.kill().unwrap();
    coord.0.wait().unwrap();
    coord = serve(&dir, port, &sock, &sock_path);
    let tokens: serde_json::Value =
        serde_json::from_str(&ok(cli(&admin, &["token", "list", "-o", "json"]))).unwrap();
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    assert_eq!(tokens[0]["labels"]["rack"], "a");
    assert_eq!(tokens[0]["state"], "valid");
    assert!(ok(cli(&admin, &["spec", "get"])).contains("durable"));

    // SIGTERM: a clean, prompt, successful exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(coord.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = coord.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "coordinator ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status:?}");

    // Admin commands against a stopped coordinator fail clearly.
    let down = cli(&admin, &["nodes"]);
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("unreachable"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}
