//! The `K3s/Certificates` condition on a server node, against certificates the K3s
//! stand-in wrote: the real stand-in binary runs `k3s server` in a temporary root
//! with a short leaf lifetime (`CATTLE_NEW_SIGNED_CERT_EXPIRATION_DAYS`), then the
//! agent's K3s step (fake systemd over the same root, a real release mirror)
//! reports how soon they expire, judged by its injected clock: a warning 30 days
//! out, a failure once the clock is 20 days later. Needs the stand-in built:
//! `cargo build -p k3s-standin`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use elysium_agent::link;
use elysium_agent::reconcile::{Desired, Reconciler, Report, SubCondition};
use elysium_agent::state::{HeldSpec, K3sAssignedRole, K3sAssignment, NodeRole};
use elysium_agent::steps::k3s::cert_expiry::CERTIFICATES;
use elysium_agent::steps::k3s::health::Probe;
use elysium_agent::steps::k3s::{K3sStep, Probes};
use elysium_host::{FakeClock, FakeSystemd, Host};
use k3s_standin::{Behaviour, MirrorServer, build_mirror};

const TLS: &str = "var/lib/rancher/k3s/server/tls";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A kubelet-healthz stand-in on 127.0.0.1 that always answers `ok`.
fn health_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    url
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the stand-in as `k3s server` below `root` until it has written its
/// serving certificate, then stops it.
fn standin_server(root: &Path, cert_days: u32) {
    let bin = k3s_standin::built_binary()
        .filter(|p| p.is_file())
        .expect("the K3s stand-in binary is missing: run `cargo build -p k3s-standin` first");
    let serving = root.join(TLS).join("serving-kube-apiserver.crt");
    let _ = std::fs::remove_file(&serving);
    let child = Command::new(bin)
        .args(["server", "--cluster-init"])
        .env("K3S_STANDIN_ROOT", root)
        .env("K3S_STANDIN_SUPERVISOR_PORT", free_port().to_string())
        .env("K3S_STANDIN_KUBELET_PORT", free_port().to_string())
        .env("CATTLE_NEW_SIGNED_CERT_EXPIRATION_DAYS", cert_days.to_string())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("K3S_TOKEN")
        .env_remove("K3S_URL")
        .env_remove("K3S_CONFIG_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the stand-in");
    let mut child = Killed(child);
    // Generous: two cores shared with builds. A deadline for giving up, not a
    // measurement.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serving.is_file() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the stand-in exited with {status} before writing its certificates");
        }
        assert!(Instant::now() < deadline, "the stand-in wrote no serving certificate within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The file is written atomically; give the process no chance to write more.
    drop(child);
}

fn desired(mirror: &MirrorServer, mirror_dir: &std::path::Path) -> Desired {
    let toml = format!(
        "[k3s]\nversion = \"v1.31.4+k3s1\"\nrelease_url = \"{}\"\nhealth_timeout_seconds = 30\n{}",
        mirror.url(),
        k3s_standin::pins_toml(mirror_dir).unwrap()
    );
    Desired::from_held(&HeldSpec {
        generation: 1,
        cluster_spec_toml: toml,
        role: NodeRole::Server,
        labels: Default::default(),
        k3s: Some(K3sAssignment {
            role: K3sAssignedRole::ServerInit,
            server_url: String::new(),
            token: "ab".repeat(24),
            version: String::new(),
            agent_token: "cd".repeat(24),
        }),
        secrets: Default::default(),
    })
    .unwrap()
}

fn certificates(r: &Report) -> SubCondition {
    let step = r.steps.iter().find(|s| s.step == "K3s").expect("the K3s step ran");
    step.details
        .iter()
        .find(|d| d.kind == CERTIFICATES)
        .cloned()
        .unwrap_or_else(|| panic!("no {CERTIFICATES} condition: {:?} (error {:?})", step.details, step.error))
}

#[tokio::test]
async fn a_server_reports_the_k3s_certificates_soonest_expiry_by_its_clock() {
    let mirror_dir = tempfile::tempdir().unwrap();
    let base = mirror_dir.path().join("base");
    std::fs::write(&base, vec![7u8; 64 * 1024]).unwrap();
    build_mirror(mirror_dir.path(), &base, &[("v1.31.4+k3s1", Behaviour::Healthy)]).unwrap();
    let mirror = MirrorServer::start(mirror_dir.path()).unwrap();

    let root = tempfile::tempdir().unwrap();
    standin_server(root.path(), 30);

    let systemd = Arc::new(FakeSystemd::new(elysium_host::RootFs::new(root.path())));
    let host = Host::with_root(root.path(), systemd);
    let url = health_server();
    let probes =
        Probes { server: Probe { url: url.clone(), expect: "ok" }, agent: Probe { url, expect: "ok" } };
    // An hour after the stand-in wrote its certificates: whole days left are then
    // one fewer than their lifetime, whatever second they were signed in.
    let clock = FakeClock::new(SystemTime::now() + Duration::from_secs(3600));
    let (step_link, _session) = link::link();
    let step = K3sStep::new("s1", step_link).unwrap().with_probes(probes).with_clock(Arc::new(clock.clone()));
    let reconciler = Reconciler::default().with_step(step);
    let desired = desired(&mirror, mirror_dir.path());

    // 30-day certificates: inside K3s's 90-day renewal window, a warning.
    let r = reconciler.reconcile(&host, &desired, false).await;
    let c = certificates(&r);
    assert!(c.ok && c.reason == "RenewalDue", "{c:?}");
    assert!(c.message.contains("/var/lib/rancher/k3s/server/tls/"), "{}", c.message);
    assert!(c.message.contains(".crt expires on ") && c.message.contains("(in 29 days)"), "{}", c.message);
    assert!(c.message.contains("k3s certificate rotate"), "{}", c.message);
    let condition = r.conditions(&[], 1);
    assert!(
        condition.iter().any(|c| c.r#type == CERTIFICATES && c.status == "True" && c.reason == "RenewalDue")
    );

    // 20 days later by the agent's clock: 9 days left, a failure.
    clock.advance(Duration::from_secs(20 * 86400));
    let c = certificates(&reconciler.reconcile(&host, &desired, false).await);
    assert!(!c.ok && c.reason == "ExpiresSoon", "{c:?}");
    assert!(c.message.contains("(in 9 days)"), "{}", c.message);

    // K3s restarted with a fresh year-long serving certificate: the soonest file
    // is now the kubeconfig's client certificate, which the stand-in keeps.
    standin_server(root.path(), 365);
    clock.set(SystemTime::now());
    let c = certificates(&reconciler.reconcile(&host, &desired, false).await);
    assert!(c.message.contains("client-admin.crt"), "{}", c.message);
    assert_eq!(c.reason, "RenewalDue");
}
