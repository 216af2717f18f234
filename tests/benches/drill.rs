//! What one recovery drill costs the coordinator, on a repository the size of the
//! real one: the Elysium snapshot (`tests/fixtures/cluster-repo/`, ~250 files, 21
//! SealedSecrets) unpacked and committed, every SealedSecret sealed anew with one of
//! `BENCH_KEYS` (25) vault keys of `BENCH_KEY_BITS` (4096, the controller's size),
//! round-robin. The numbers behind docs/BENCHMARKS.md's "Recovery drill".
//!
//! ```text
//! cargo bench -p elysium-tests --bench drill --profile dev
//! ```
//!
//! An in-process coordinator (this process is the coordinator: the real server, its
//! drill loop, a real redb store); a server node's session reports the keys, as its
//! agent would; then `[recovery.drill]` with `interval = "1s"`, so the drill runs back
//! to back, `BENCH_DRILLS` (10) times. Per run: wall time (the drill's own
//! `duration_ms`), CPU time of this process (getrusage RUSAGE_SELF: the preflight's
//! thread, the store, the idle server) and of git (RUSAGE_CHILDREN, the clones), over
//! the window divided by the runs. Baseline in the same command: the same coordinator
//! with the drill removed from the spec, over as long a window, polled the same way. Peak RSS: VmHWM,
//! reset (`/proc/self/clear_refs` 5) after the setup, so it is the drills' peak, not
//! key generation's.
//!
//! Nothing asserts on timings; a drill that does not pass aborts the run (numbers
//! from a broken drill mean nothing).

use std::time::{Duration, Instant};

use elysium_proto::v1 as pb;
use elysium_tests::bench::{load_average, machine};
use elysium_tests::gitops::{self, TestKey};
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};
use nix::sys::resource::{UsageWho, getrusage};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn cpu_seconds(who: UsageWho) -> f64 {
    let u = getrusage(who).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The drill's status over one admin connection (a new TLS connection per poll cost
/// more CPU than the idle coordinator).
async fn drill(admin: &mut Admin) -> pb::RecoveryDrill {
    let r = admin.list_sealing_keys(pb::ListSealingKeysRequest {}).await.unwrap().into_inner();
    r.drill.unwrap_or_default()
}

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

/// How often the measured window looks for a finished drill.
const POLL: Duration = Duration::from_millis(200);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let keys_n = env_usize("BENCH_KEYS", 25);
    let bits = env_usize("BENCH_KEY_BITS", 4096);
    let drills = env_usize("BENCH_DRILLS", 10);
    println!("## Recovery drill benchmark\n\n{}", machine());
    println!("- keys: {keys_n} × RSA-{bits}; drills: {drills}\n");

    let t = Instant::now();
    // Monthly renewals: key i is (keys_n - i) × 30 days old, the last the newest.
    let keys: Vec<TestKey> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..keys_n)
            .map(|i| s.spawn(move || TestKey::generate(bits, ((keys_n - i) * 30) as i64)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("keygen")).collect()
    });
    let refs: Vec<&TestKey> = keys.iter().collect();
    let (repo, commit) = gitops::cluster_repo(&refs);
    eprintln!("setup: {keys_n} keys and the repository in {:.1} s", t.elapsed().as_secs_f64());

    let c = TestCoordinator::start().await;
    let server = TestNode::new("s1");
    server.join(&c.url(), &c.token_for(pb::NodeRole::Server, 1, 600).await).await.unwrap();
    let mut session = server.session_client(&c.url()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(keys_n + 1);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "bench".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    for (i, k) in keys.iter().enumerate() {
        let report = pb::SealingKeyReport {
            namespace: "flux-system".into(),
            name: format!("sealed-secrets-key{i:05}"),
            labels: [(gitops::KEY_LABEL.to_owned(), "active".to_owned())].into(),
            tls_crt: k.cert_pem.clone().into_bytes(),
            tls_key: k.key_pem.clone().into_bytes(),
            ..Default::default()
        };
        tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::SealingKey(report)) }).await.unwrap();
    }
    let _stream = session.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    eventually("every key in the vault", Duration::from_secs(120), || async {
        let r = c.admin().await.list_sealing_keys(pb::ListSealingKeysRequest {}).await.unwrap().into_inner();
        (r.keys.len() == keys_n).then_some(())
    })
    .await;
    let base_spec = "[cluster]\nname = \"kyrion\"\n";
    c.set_spec(base_spec).await;

    // Warm-up drill (page cache, first clone), not counted.
    let drill_spec = format!(
        "{base_spec}\n[recovery.drill]\nrepository = \"{}\"\npath = \"{}\"\ninterval = \"1s\"\n",
        repo.path().display(),
        gitops::CLUSTER
    );
    c.set_spec(&drill_spec).await;
    let mut admin = c.admin().await;
    let first = loop {
        let d = drill(&mut admin).await;
        if d.ran {
            break d;
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(first.passed && first.commit == commit, "the drill must pass to be measured: {first:?}");
    assert_eq!((first.keys as usize, first.sealed_secrets_opened), (keys_n, first.sealed_secrets));
    eprintln!("warm-up drill: {} ms, {} SealedSecrets", first.duration_ms, first.sealed_secrets);

    // Measured: `drills` back-to-back runs, told apart by their record.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let hwm_before = status_kib("VmHWM:");
    let (cpu0, git0, wall0) =
        (cpu_seconds(UsageWho::RUSAGE_SELF), cpu_seconds(UsageWho::RUSAGE_CHILDREN), Instant::now());
    let mut seen = (first.started_unix, first.finished_unix, first.duration_ms);
    let mut walls = Vec::new();
    while walls.len() < drills {
        let d = drill(&mut admin).await;
        let id = (d.started_unix, d.finished_unix, d.duration_ms);
        if d.ran && id != seen {
            assert!(d.passed, "a drill failed: {:?}", d.failures);
            seen = id;
            walls.push(d.duration_ms as f64 / 1000.0);
        }
        tokio::time::sleep(POLL).await;
    }
    let window = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(UsageWho::RUSAGE_SELF) - cpu0;
    let git = cpu_seconds(UsageWho::RUSAGE_CHILDREN) - git0;
    let hwm = status_kib("VmHWM:");

    // Baseline: no drill, same window, same polling.
    let (lo, hi) =
        (walls.iter().copied().fold(f64::INFINITY, f64::min), walls.iter().copied().fold(0.0, f64::max));
    c.set_spec(base_spec).await;
    // The drill under way when the section went finishes on its own thread: wait it out.
    tokio::time::sleep(Duration::from_secs_f64(hi + 2.0)).await;
    let (b_cpu0, b_wall0) = (cpu_seconds(UsageWho::RUSAGE_SELF), Instant::now());
    while b_wall0.elapsed().as_secs_f64() < window {
        let _ = drill(&mut admin).await;
        tokio::time::sleep(POLL).await;
    }
    let idle_cpu = cpu_seconds(UsageWho::RUSAGE_SELF) - b_cpu0;
    let rss_now = status_kib("VmRSS:");

    let n = walls.len() as f64;
    println!("| measurement | value |\n|---|---|");
    println!("| drills measured | {} back to back over {window:.1} s |", walls.len());
    println!("| wall time per drill, median (min–max) | {:.2} s ({lo:.2}–{hi:.2}) |", median(walls.clone()));
    println!("| coordinator CPU per drill (RUSAGE_SELF delta / drills) | {:.2} s |", cpu / n);
    println!("| git CPU per drill (RUSAGE_CHILDREN delta / drills) | {:.2} s |", git / n);
    println!(
        "| baseline: coordinator CPU over the same window without a drill | {idle_cpu:.2} s ({:.3} s per drill-length) |",
        idle_cpu / n
    );
    println!(
        "| peak RSS during the drills (VmHWM after reset) | {:.1} MiB (VmHWM right after the reset: {:.1} MiB) |",
        hwm as f64 / 1024.0,
        hwm_before as f64 / 1024.0
    );
    println!("| VmRSS after the baseline | {:.1} MiB |", rss_now as f64 / 1024.0);
    println!("| SealedSecrets / vault keys | {} / {} |", first.sealed_secrets, first.keys);
    println!("\n- load average at end: {}", load_average());
}
