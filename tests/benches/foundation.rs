//! Foundation benchmarks: the numbers behind docs/BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p elysium-agent
//! ELYSIUM_NODE_BIN=target/release/elysium-node cargo bench -p elysium-tests --bench foundation
//! ```
//!
//! Three measurements, each printed as a markdown table:
//!
//! 1. **Agent idle memory and CPU.** An in-process coordinator; a node joined
//!    in-process (which writes `/etc/elysium/*` under the node's temporary root);
//!    then the *real* agent binary as its own process (`elysium-node agent --root
//!    <node root>`). Once the coordinator shows it online and it has idled for a
//!    while, read `/proc/<pid>/status`, `/proc/<pid>/smaps` and `/proc/<pid>/stat`.
//! 2. **Binary size** of the (already stripped) release binary.
//! 3. **Enrollment throughput.** Real clients against one in-process coordinator:
//!    key + CSR per node, the join TLS (CA pinned by fingerprint) and
//!    `Enrollment.Enroll` with a unique name, from concurrent tasks, over reused
//!    connections and over a fresh connection per enrollment. Baselines measured
//!    in the same run (client-side key generation, bare TLS handshakes, a no-op
//!    RPC, sequential fsyncs on the store's disk) let the numbers be read as
//!    ratios on a noisy machine, and a probe measures how long other RPCs wait
//!    while enrollments run.
//!
//! Nothing here asserts on timings: the benchmark reports, the document judges.
//! Functional failures (an enrollment refused, an agent that never comes online)
//! abort with a message, because numbers from a broken run mean nothing.
//!
//! Environment:
//! - `ELYSIUM_NODE_BIN`: the agent binary (default `target/release/elysium-node`).
//! - `BENCH_ONLY`: comma-separated subset of `rss,size,enroll` (default all).
//! - `BENCH_RSS_REPS` (5), `BENCH_IDLE_SECS` (10): agent runs and idle window.
//! - `BENCH_COLD=1`: evict the agent binary from the page cache before each run.
//! - `BENCH_REPS` (3), `BENCH_ENROLLMENTS` (1000), `BENCH_CONCURRENCY` (16):
//!   enrollment repetitions, enrollments per repetition, client tasks.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use elysium_agent::transport::{self, PinnedCa, Target};
use elysium_proto::v1 as pb;
use elysium_proto::v1::enrollment_client::EnrollmentClient;
use elysium_tests::harness::{TestCoordinator, TestNode};
use tonic::transport::Channel;

// ---------------------------------------------------------------------------
// Configuration and small statistics helpers.

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")),
        Err(_) => default,
    }
}

/// Whether section `name` is selected by `BENCH_ONLY` (all are by default).
fn selected(name: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(list) => list.split(',').any(|s| s.trim() == name),
        Err(_) => true,
    }
}

/// The agent binary under test: `$ELYSIUM_NODE_BIN`, else the workspace's
/// release build (unlike the test harness, which defaults to the debug build).
fn node_binary() -> PathBuf {
    let p = match std::env::var_os("ELYSIUM_NODE_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/elysium-node"),
    };
    std::fs::canonicalize(&p).unwrap_or_else(|e| {
        panic!("agent binary {} not usable ({e}): run `cargo build --release -p elysium-agent` or set ELYSIUM_NODE_BIN", p.display())
    })
}

/// Median of a non-empty sample (mean of the two middle values when even).
fn median(xs: &[f64]) -> f64 {
    assert!(!xs.is_empty(), "median of an empty sample");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Nearest-rank percentile (`p` in 0..=100) of a non-empty sample.
fn percentile(xs: &[f64], p: f64) -> f64 {
    assert!(!xs.is_empty(), "percentile of an empty sample");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// `median (min–max)` with `prec` decimals.
fn spread(xs: &[f64], prec: usize) -> String {
    let (lo, hi) = min_max(xs);
    format!("{:.prec$} ({:.prec$}–{:.prec$})", median(xs), lo, hi)
}

const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------
// 1. Agent idle memory and CPU.

/// A child process killed and reaped on drop, so a failing run leaves no agent.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fields of `/proc/<pid>/status` in kB (or plain numbers, e.g. `Threads`).
fn proc_status(pid: u32) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let n = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_owned(), n))
        })
        .collect()
}

/// Fields of `/proc/<pid>/smaps_rollup` in kB (`Pss`, `Private_Dirty`, ...).
fn smaps_rollup(pid: u32) -> BTreeMap<String, u64> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("read /proc/<pid>/smaps_rollup");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// utime + stime of the whole process (all threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    let rest = &stat[stat.rfind(')').expect("malformed /proc/<pid>/stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Voluntary + involuntary context switches summed over all threads: how often
/// the process was scheduled at all, a finer idleness measure than CPU ticks.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Resident memory by kind of mapping, from `/proc/<pid>/smaps`, in kB.
fn rss_breakdown(pid: u32, binary: &Path) -> BTreeMap<&'static str, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read /proc/<pid>/smaps");
    let binary = binary.to_string_lossy();
    let mut out = BTreeMap::new();
    let mut kind: &'static str = "anonymous";
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: address perms offset dev inode [path].
            let perms = parts.next().unwrap_or("");
            let path = parts.nth(3).unwrap_or("");
            kind = if path == binary {
                // Split the binary by segment: code, read-only data (incl.
                // .eh_frame and RELRO after relocation) and writable data.
                match perms.get(..3) {
                    Some("r-x") => "binary: code (r-x)",
                    Some("rw-") => "binary: data (rw-)",
                    _ => "binary: read-only data (r--)",
                }
            } else if path == "[heap]" {
                "heap (brk)"
            } else if path == "[stack]" {
                "main stack"
            } else if path.starts_with('[') {
                "kernel ([vdso] etc.)"
            } else if path.contains(".so") {
                "shared libraries"
            } else if path.is_empty() {
                "anonymous mmap (malloc arenas, thread stacks)"
            } else {
                "other files"
            };
        } else if first == "Rss:" {
            let kb: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *out.entry(kind).or_insert(0) += kb;
        }
    }
    out
}

/// `BENCH_COLD=1`: drop the binary's pages from the page cache before each
/// start, as on a node that just booted. By default the binary is warm (fully
/// cached, as right after a build or copy), and the kernel's fault-around maps
/// cached neighbours of every touched page, which counts towards RSS.
fn evict_binary() -> bool {
    std::env::var("BENCH_COLD").is_ok_and(|v| v == "1")
}

/// Asks the kernel to drop the file's clean, unmapped pages from the page cache.
fn evict_from_page_cache(path: &Path) {
    let file = File::open(path).expect("open the agent binary");
    nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .expect("posix_fadvise(DONTNEED) on the agent binary");
}

struct IdleSample {
    rss_kib: u64,
    hwm_kib: u64,
    rss_anon_kib: u64,
    rss_file_kib: u64,
    /// Proportional set size: shared pages divided among the processes mapping them.
    pss_kib: u64,
    /// Pages only this process has written: what it really costs the node.
    private_dirty_kib: u64,
    threads: u64,
    cpu_ticks: u64,
    switches: u64,
    window: Duration,
    breakdown: BTreeMap<&'static str, u64>,
}

/// One agent run: join, spawn the binary, wait for online, idle, sample.
async fn agent_idle_once(bin: &Path, i: usize, idle: Duration) -> IdleSample {
    let c = TestCoordinator::start().await;
    // Heartbeat every 5 s (the minimum) so the idle window holds a few of them.
    c.admin()
        .await
        .set_cluster_spec(pb::SetClusterSpecRequest {
            toml: "[agent]\nheartbeat_seconds = 5\n".into(),
            expected_generation: 0,
        })
        .await
        .expect("set cluster spec");
    let name = format!("rss-{i}");
    let node = TestNode::new(&name);
    node.join(&c.url(), &c.token(1, 600).await).await.expect("in-process join");

    if evict_binary() {
        evict_from_page_cache(bin);
    }
    let log_path = node.root.path().join("agent.log");
    let log = File::create(&log_path).expect("create agent log");
    let child = Command::new(bin)
        .arg("agent")
        .arg("--root")
        .arg(node.root.path())
        .env("RUST_LOG", "warn")
        // Not a systemd service here: no sd_notify socket, no watchdog.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("ELYSIUM_ROOT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn the agent binary");
    let mut agent = Proc(child);
    let pid = agent.0.id();

    // Wait (functionally, not as a measurement) for the session to be up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if c.node(&name).await.is_some_and(|n| n.online) {
            break;
        }
        if let Ok(Some(status)) = agent.0.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("the agent exited ({status}) before coming online; its log:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "agent {name} not online after 30 s; log in {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let start-up settle (spec received, persisted, reconciled), then measure
    // CPU over an idle window that contains heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t0, s0, w0) = (cpu_ticks(pid), context_switches(pid), Instant::now());
    tokio::time::sleep(idle).await;
    let (t1, s1, window) = (cpu_ticks(pid), context_switches(pid), w0.elapsed());
    let status = proc_status(pid);
    let rollup = smaps_rollup(pid);
    let breakdown = rss_breakdown(pid, bin);
    let still_online = c.node(&name).await.is_some_and(|n| n.online);
    assert!(still_online, "agent {name} went offline during the idle window; log in {}", log_path.display());

    // SIGTERM for a clean stop (Drop kills it if this fails).
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    while agent.0.try_wait().ok().flatten().is_none() && Instant::now() < stop_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(agent);
    drop(node);

    let get = |k: &str| status.get(k).copied().unwrap_or(0);
    IdleSample {
        rss_kib: get("VmRSS"),
        hwm_kib: get("VmHWM"),
        rss_anon_kib: get("RssAnon"),
        rss_file_kib: get("RssFile"),
        pss_kib: rollup.get("Pss").copied().unwrap_or(0),
        private_dirty_kib: rollup.get("Private_Dirty").copied().unwrap_or(0),
        threads: get("Threads"),
        cpu_ticks: t1 - t0,
        switches: s1 - s0,
        window,
        breakdown,
    }
}

async fn bench_agent_idle(bin: &Path) {
    let reps = env_usize("BENCH_RSS_REPS", 5).max(1);
    let idle = Duration::from_secs(env_usize("BENCH_IDLE_SECS", 10) as u64);
    let tick_hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    eprintln!("agent idle: {reps} run(s) of {} with a {idle:?} idle window", bin.display());

    let mut samples = Vec::new();
    for i in 0..reps {
        let s = agent_idle_once(bin, i, idle).await;
        eprintln!(
            "  run {}: VmRSS {} KiB, VmHWM {} KiB, {} CPU tick(s) and {} context switch(es) in {:.1} s",
            i + 1,
            s.rss_kib,
            s.hwm_kib,
            s.cpu_ticks,
            s.switches,
            s.window.as_secs_f64()
        );
        samples.push(s);
    }
    let col = |f: &dyn Fn(&IdleSample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let rss = col(&|s| s.rss_kib as f64 / 1024.0);
    let hwm = col(&|s| s.hwm_kib as f64 / 1024.0);
    let anon = col(&|s| s.rss_anon_kib as f64 / 1024.0);
    let file = col(&|s| s.rss_file_kib as f64 / 1024.0);
    let pss = col(&|s| s.pss_kib as f64 / 1024.0);
    let dirty = col(&|s| s.private_dirty_kib as f64 / 1024.0);
    let threads = col(&|s| s.threads as f64);
    // CPU as a percentage of one core over the window.
    let cpu_pct = col(&|s| 100.0 * (s.cpu_ticks as f64 / tick_hz) / s.window.as_secs_f64());
    let cpu_ms = col(&|s| 1000.0 * s.cpu_ticks as f64 / tick_hz);
    let wakeups = col(&|s| s.switches as f64 / s.window.as_secs_f64());
    let rss_median = median(&rss);

    println!(
        "\n### Agent idle resident memory and CPU ({reps} runs, {}s idle window, binary {})\n",
        idle.as_secs(),
        if evict_binary() {
            "evicted from the page cache before each start"
        } else {
            "warm in the page cache"
        }
    );
    println!("| metric | median (min–max) | target | met |");
    println!("|---|---|---|---|");
    println!(
        "| VmRSS (MiB) | {} | ≤ 10 MiB | {} |",
        spread(&rss, 2),
        if rss_median <= 10.0 { "yes" } else { "**no**" }
    );
    println!("| VmHWM, peak RSS (MiB) | {} | | |", spread(&hwm, 2));
    println!("| RssAnon (MiB) | {} | | |", spread(&anon, 2));
    println!("| RssFile (MiB) | {} | | |", spread(&file, 2));
    println!("| Pss (MiB) | {} | | |", spread(&pss, 2));
    println!("| Private_Dirty (MiB) | {} | | |", spread(&dirty, 2));
    println!("| threads | {} | | |", spread(&threads, 0));
    println!("| CPU over the idle window (ms, {tick_hz} Hz ticks) | {} | ~0 | |", spread(&cpu_ms, 0));
    println!("| CPU over the idle window (% of one core) | {} | ~0 | |", spread(&cpu_pct, 3));
    println!("| context switches / s (all threads) | {} | | |", spread(&wakeups, 2));

    // Where the resident memory is, from the run with the median VmRSS.
    let mid = samples
        .iter()
        .min_by(|a, b| {
            ((a.rss_kib as f64 / 1024.0) - rss_median)
                .abs()
                .total_cmp(&((b.rss_kib as f64 / 1024.0) - rss_median).abs())
        })
        .expect("at least one sample");
    println!("\nRSS by mapping kind (median run, from /proc/<pid>/smaps):\n");
    println!("| mapping | RSS (KiB) |");
    println!("|---|---|");
    let mut parts: Vec<_> = mid.breakdown.iter().collect();
    parts.sort_by(|a, b| b.1.cmp(a.1));
    for (kind, kb) in parts {
        println!("| {kind} | {kb} |");
    }
}

// ---------------------------------------------------------------------------
// 2. Binary size.

fn bench_binary_size(bin: &Path) {
    let bytes = std::fs::metadata(bin).expect("stat the agent binary").len();
    let mib = bytes as f64 / MIB;
    // A stripped ELF has no .symtab section; its name would be in .shstrtab.
    let data = std::fs::read(bin).expect("read the agent binary");
    let has_symtab = data.windows(8).any(|w| w == b".symtab\0");
    println!("\n### Release binary size\n");
    println!("| binary | bytes | MiB | stripped | target | met |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {bytes} | {mib:.2} | {} | ≤ 25 MiB | {} |",
        bin.display(),
        if has_symtab { "no (.symtab present)" } else { "yes" },
        if mib <= 25.0 { "yes" } else { "**no**" }
    );
}

// ---------------------------------------------------------------------------
// 3. Enrollment throughput.

/// One timed batch: wall time, per-operation latencies, and the CPU the whole
/// bench process (coordinator and clients together) used meanwhile.
struct Batch {
    wall: Duration,
    latencies_ms: Vec<f64>,
    cpu: Duration,
}

impl Batch {
    fn per_second(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.wall.as_secs_f64()
    }

    /// Process CPU use during the batch, in % of one core (at most 100 × cores).
    fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// CPU time used so far by this process (all threads), from /proc/self/stat.
fn self_cpu() -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Duration::from_secs_f64(cpu_ticks(std::process::id()) as f64 / hz)
}

/// The clients' runtime. The coordinator serves from the main runtime (two
/// workers here, like `elysium-node coordinator serve` on this machine); clients
/// run on their own, so a coordinator worker that blocks stalls the coordinator,
/// not the load generator. Both share the same two cores.
static CLIENTS: OnceLock<tokio::runtime::Handle> = OnceLock::new();

fn clients() -> &'static tokio::runtime::Handle {
    CLIENTS.get().expect("client runtime not started")
}

/// Runs `op(i)` for `i` in `0..n` from `concurrency` tasks on the client runtime
/// that pull indices from a shared counter; each task first builds its state with
/// `setup` (outside the timed window). Every operation must succeed.
async fn run_batch<S, Setup, SetupFut, Op, OpFut>(n: usize, concurrency: usize, setup: Setup, op: Op) -> Batch
where
    S: Send + 'static,
    Setup: Fn() -> SetupFut + Send + 'static,
    SetupFut: Future<Output = S> + Send + 'static,
    Op: Fn(S, usize) -> OpFut + Clone + Send + 'static,
    OpFut: Future<Output = Result<S, String>> + Send + 'static,
{
    clients().spawn(run_batch_here(n, concurrency, setup, op)).await.expect("bench batch panicked")
}

async fn run_batch_here<S, Setup, SetupFut, Op, OpFut>(
    n: usize,
    concurrency: usize,
    setup: Setup,
    op: Op,
) -> Batch
where
    S: Send + 'static,
    Setup: Fn() -> SetupFut,
    SetupFut: Future<Output = S>,
    Op: Fn(S, usize) -> OpFut + Clone + Send + 'static,
    OpFut: Future<Output = Result<S, String>> + Send,
{
    let mut states = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        states.push(setup().await);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let (start, cpu0) = (Instant::now(), self_cpu());
    let tasks: Vec<_> = states
        .into_iter()
        .map(|mut state| {
            let next = next.clone();
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, String>(lat);
                    }
                    let t = Instant::now();
                    state = op(state, i).await.map_err(|e| format!("operation {i}: {e}"))?;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
            })
        })
        .collect();
    let mut latencies_ms = Vec::with_capacity(n);
    for t in tasks {
        latencies_ms.extend(t.await.expect("bench task panicked").unwrap_or_else(|e| panic!("{e}")));
    }
    Batch { wall: start.elapsed(), latencies_ms, cpu: self_cpu().saturating_sub(cpu0) }
}

/// What every enrollment sends besides the CSR: a plausible inventory.
fn inventory(name: &str) -> pb::NodeInventory {
    pb::NodeInventory {
        hostname: name.to_owned(),
        machine_id: format!("{:032x}", fnv1a(name)),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-27-amd64".into(),
        arch: "amd64".into(),
        cpu_model: "Intel(R) Xeon(R) Processor".into(),
        cpu_cores: 4,
        cpu_threads: 8,
        ..Default::default()
    }
}

/// A cheap deterministic per-name value (FNV-1a), only to vary machine ids.
fn fnv1a(s: &str) -> u128 {
    s.bytes().fold(0x6c62272e07bb014262b821756295c58d_u128, |h, b| {
        (h ^ b as u128).wrapping_mul(0x0000000001000000000000000000013B)
    })
}

/// How a client reaches the coordinator.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// One TLS connection per client task, reused for all its enrollments.
    Reused,
    /// A new TCP + TLS connection (and gRPC channel) for every enrollment.
    Fresh,
}

/// Results of one repetition (one fresh coordinator).
struct EnrollRep {
    keygen: Duration,
    fsync: Batch,
    handshakes: Batch,
    noop: Batch,
    enroll: Batch,
    /// No-op RPC latencies (ms), one at a time, on the idle coordinator.
    probe_idle: Vec<f64>,
    /// The same, while the enrollments run.
    probe_busy: Vec<f64>,
}

/// Probes taken on the idle coordinator before the enrollments.
const PROBE_IDLE_COUNT: usize = 200;

/// Sends no-op RPCs one at a time, 5 ms apart, until `stop` is set or `max` were
/// sent; returns their latencies in ms (and the client, for reuse).
async fn probe(
    mut client: EnrollmentClient<Channel>,
    stop: Arc<AtomicBool>,
    max: usize,
) -> (EnrollmentClient<Channel>, Vec<f64>) {
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) && lat.len() < max {
        let t = Instant::now();
        let req = pb::EnrollRequest { token: "not-a-token".into(), ..Default::default() };
        let status = client.enroll(req).await.expect_err("a malformed token must be refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "probe refused for the wrong reason: {status}"
        );
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (client, lat)
}

/// Opens a join channel (no client certificate, CA pinned by fingerprint).
async fn join_channel(target: &Target, fingerprint: &str) -> Result<Channel, String> {
    let tls = transport::join_tls(PinnedCa::new(fingerprint)).map_err(|e| e.to_string())?;
    transport::channel(target, tls).await.map_err(|e| e.to_string())
}

async fn enroll_rep(n: usize, concurrency: usize, connection: Connection, rep: usize) -> EnrollRep {
    // Client side first, on its own: every node generates its key and CSR. Real
    // nodes do this on their own CPU, so it stays out of the enrollment window
    // and is reported as a baseline instead.
    let t = Instant::now();
    let csrs: Vec<Vec<u8>> =
        (0..n).map(|_| elysium_identity::node_key_and_csr().expect("node key and CSR").1).collect();
    let keygen = t.elapsed();
    let csrs = Arc::new(csrs);

    let c = TestCoordinator::start().await;

    // Baseline 0: the disk. Every enrollment commits to the redb store durably
    // (with fsync), so the storage's sync latency bounds the rate: N sequential
    // 4 KiB write + fdatasync in the coordinator's data directory.
    let fsync = {
        let path = c.data_dir().join("fsync-baseline");
        let (start, cpu0) = (Instant::now(), self_cpu());
        let latencies_ms = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = File::create(&path).expect("create fsync baseline file");
            let block = [0u8; 4096];
            let lat: Vec<f64> = (0..n)
                .map(|_| {
                    let t = Instant::now();
                    f.write_all(&block).expect("write fsync baseline");
                    f.sync_data().expect("fdatasync");
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            drop(f);
            let _ = std::fs::remove_file(&path);
            lat
        })
        .await
        .expect("fsync baseline task");
        Batch { wall: start.elapsed(), latencies_ms, cpu: self_cpu().saturating_sub(cpu0) }
    };

    let token = c.token(u32::try_from(n).expect("enrollment count fits u32"), 3600).await;
    let fingerprint =
        elysium_coordinator::tokens::JoinToken::parse(&token).expect("parse own token").ca_fingerprint;
    let target = Target::parse(&c.url()).expect("coordinator url");

    // Baseline 1: bare TCP + TLS handshakes (CA pinned, as joining does), no RPC.
    let handshakes = {
        let (target, fp) = (target.clone(), fingerprint.clone());
        run_batch(
            n,
            concurrency,
            || async {},
            move |(), _| {
                let (target, fp) = (target.clone(), fp.clone());
                async move {
                    let tls = transport::join_tls(PinnedCa::new(&fp)).map_err(|e| e.to_string())?;
                    transport::handshake(&target, tls).await.map_err(|e| e.to_string())
                }
            },
        )
        .await
    };

    // Baseline 2: a no-op RPC over reused connections. `Enroll` with a malformed
    // token is refused before any crypto or store access: it costs HTTP/2 + gRPC
    // framing and the service dispatch, nothing else.
    let noop = {
        let (t2, fp) = (target.clone(), fingerprint.clone());
        run_batch(
            n,
            concurrency,
            move || {
                let (t2, fp) = (t2.clone(), fp.clone());
                async move { EnrollmentClient::new(join_channel(&t2, &fp).await.expect("join channel")) }
            },
            |mut client: EnrollmentClient<Channel>, _| async move {
                let req = pb::EnrollRequest { token: "not-a-token".into(), ..Default::default() };
                match client.enroll(req).await {
                    Err(s) if s.code() == tonic::Code::InvalidArgument => Ok(client),
                    other => Err(format!("expected InvalidArgument, got {other:?}")),
                }
            },
        )
        .await
    };

    // Responsiveness probe: one no-op RPC at a time, first on the idle
    // coordinator, then alongside the enrollments. Heartbeats and admin calls
    // compete with an enrollment burst the same way.
    let probe_client = EnrollmentClient::new(
        clients()
            .spawn({
                let (t2, fp) = (target.clone(), fingerprint.clone());
                async move { join_channel(&t2, &fp).await }
            })
            .await
            .expect("probe channel task")
            .expect("probe channel"),
    );
    let (probe_client, probe_idle) = clients()
        .spawn(probe(probe_client, Arc::new(AtomicBool::new(false)), PROBE_IDLE_COUNT))
        .await
        .expect("idle probe task");
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe_task = clients().spawn(probe(probe_client, probe_stop.clone(), usize::MAX));

    // The measurement: N real enrollments with unique names.
    let enroll_one = {
        let (token, csrs) = (token.clone(), csrs.clone());
        let hardware = elysium_tests::fleet::this_machine_hardware();
        move |mut client: EnrollmentClient<Channel>, i: usize| {
            let name = format!("bench-{rep}-{i}");
            let req = pb::EnrollRequest {
                token: token.clone(),
                csr_der: csrs[i].clone(),
                requested_name: name.clone(),
                inventory: Some(inventory(&name)),
                // What `elysium-node join` sends: this machine's hardware document.
                hardware_json: hardware.clone(),
            };
            async move {
                let resp = client.enroll(req).await.map_err(|s| format!("{name} refused: {s}"))?.into_inner();
                if resp.certificate_pem.is_empty() || resp.node_name != name {
                    return Err(format!("{name}: incomplete enrollment response"));
                }
                Ok(client)
            }
        }
    };
    let enroll = match connection {
        Connection::Reused => {
            let (t2, fp) = (target.clone(), fingerprint.clone());
            run_batch(
                n,
                concurrency,
                move || {
                    let (t2, fp) = (t2.clone(), fp.clone());
                    async move { EnrollmentClient::new(join_channel(&t2, &fp).await.expect("join channel")) }
                },
                enroll_one,
            )
            .await
        }
        Connection::Fresh => {
            let (t2, fp) = (target.clone(), fingerprint.clone());
            run_batch(
                n,
                concurrency,
                || async {},
                move |(), i| {
                    let (t2, fp, enroll_one) = (t2.clone(), fp.clone(), enroll_one.clone());
                    async move {
                        // Connect inside the timed operation, then drop the connection.
                        let client = EnrollmentClient::new(join_channel(&t2, &fp).await?);
                        enroll_one(client, i).await.map(drop)
                    }
                },
            )
            .await
        }
    };

    probe_stop.store(true, Ordering::Relaxed);
    let (_, probe_busy) = probe_task.await.expect("busy probe task");

    // The coordinator must agree that exactly N enrollments happened.
    let tokens =
        c.admin().await.list_tokens(pb::ListTokensRequest {}).await.expect("list tokens").into_inner().tokens;
    let consumed: u32 = tokens.iter().map(|t| t.uses_consumed).sum();
    assert_eq!(consumed as usize, n, "token uses consumed");
    EnrollRep { keygen, fsync, handshakes, noop, enroll, probe_idle, probe_busy }
}

async fn bench_enrollment() {
    let reps = env_usize("BENCH_REPS", 3).max(1);
    let n = env_usize("BENCH_ENROLLMENTS", 1000).max(1);
    let concurrency = env_usize("BENCH_CONCURRENCY", 16).max(1);
    eprintln!("enrollment: {reps} repetition(s) × {n} enrollments, {concurrency} client tasks");

    let mut results: Vec<(Connection, Vec<EnrollRep>)> = Vec::new();
    for connection in [Connection::Reused, Connection::Fresh] {
        let mut rs = Vec::new();
        for rep in 0..reps {
            let r = enroll_rep(n, concurrency, connection, rep).await;
            eprintln!(
                "  {} rep {}: enroll {:.2} s ({:.0}/s, p50 {:.1} ms, p99 {:.1} ms, CPU {:.0} %); handshakes {:.3} s; no-op {:.3} s; fsync {:.3} s; keygen {:.3} s",
                if connection == Connection::Reused { "reused" } else { "fresh" },
                rep + 1,
                r.enroll.wall.as_secs_f64(),
                r.enroll.per_second(),
                percentile(&r.enroll.latencies_ms, 50.0),
                percentile(&r.enroll.latencies_ms, 99.0),
                r.enroll.cpu_percent(),
                r.handshakes.wall.as_secs_f64(),
                r.noop.wall.as_secs_f64(),
                r.fsync.wall.as_secs_f64(),
                r.keygen.as_secs_f64(),
            );
            rs.push(r);
        }
        results.push((connection, rs));
    }

    println!(
        "\n### Enrollment throughput ({n} enrollments, {concurrency} client tasks, {reps} repetitions, fresh coordinator each)\n"
    );
    println!(
        "Each cell: median (min–max) over repetitions. Latency percentiles are per repetition, then the median of those.\n"
    );
    println!(
        "| what | wall (s) | ops/s | p50 (ms) | p99 (ms) | process CPU (% of one core) | target | met |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |label: &str, batches: Vec<&Batch>, target: &str, met: &str| {
        let wall: Vec<f64> = batches.iter().map(|b| b.wall.as_secs_f64()).collect();
        let rate: Vec<f64> = batches.iter().map(|b| b.per_second()).collect();
        let p50: Vec<f64> = batches.iter().map(|b| percentile(&b.latencies_ms, 50.0)).collect();
        let p99: Vec<f64> = batches.iter().map(|b| percentile(&b.latencies_ms, 99.0)).collect();
        let cpu: Vec<f64> = batches.iter().map(|b| b.cpu_percent()).collect();
        println!(
            "| {label} | {} | {} | {} | {} | {} | {target} | {met} |",
            spread(&wall, 3),
            spread(&rate, 0),
            spread(&p50, 2),
            spread(&p99, 2),
            spread(&cpu, 0)
        );
    };
    for (connection, rs) in &results {
        let wall: Vec<f64> = rs.iter().map(|r| r.enroll.wall.as_secs_f64()).collect();
        let met = if median(&wall) <= 20.0 * n as f64 / 1000.0 { "yes" } else { "**no**" };
        let label = match connection {
            Connection::Reused => "**enroll**, connection reused per task",
            Connection::Fresh => "**enroll**, fresh TLS connection each",
        };
        row(label, rs.iter().map(|r| &r.enroll).collect(), &format!("≤ {} s", 20 * n / 1000), met);
    }
    // Baselines from every repetition of both variants (same kind of work each time).
    let all: Vec<&EnrollRep> = results.iter().flat_map(|(_, rs)| rs.iter()).collect();
    row(
        "baseline: bare TLS handshake (pinned CA), no RPC",
        all.iter().map(|r| &r.handshakes).collect(),
        "",
        "",
    );
    row(
        "baseline: no-op Enroll RPC (malformed token), reused connection",
        all.iter().map(|r| &r.noop).collect(),
        "",
        "",
    );
    row(
        "baseline: sequential 4 KiB write + fdatasync on the data dir's disk",
        all.iter().map(|r| &r.fsync).collect(),
        "",
        "",
    );
    let keygen: Vec<f64> = all.iter().map(|r| r.keygen.as_secs_f64()).collect();
    let keygen_rate: Vec<f64> = keygen.iter().map(|s| n as f64 / s).collect();
    println!(
        "| baseline: client key + CSR generation, one thread (not in the enroll window) | {} | {} | | | | | |",
        spread(&keygen, 3),
        spread(&keygen_rate, 0)
    );

    // How responsive the coordinator stays for other RPCs during the burst.
    println!(
        "\nResponsiveness: latency of a single no-op RPC (one at a time, 5 ms apart), idle vs. during the enrollments. Median (min–max) over repetitions.\n"
    );
    println!("| coordinator state | probes per rep | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|");
    let probe_row = |label: &str, samples: Vec<&Vec<f64>>| {
        let count: Vec<f64> = samples.iter().map(|s| s.len() as f64).collect();
        let p50: Vec<f64> = samples.iter().map(|s| percentile(s, 50.0)).collect();
        let p99: Vec<f64> = samples.iter().map(|s| percentile(s, 99.0)).collect();
        let max: Vec<f64> = samples.iter().map(|s| percentile(s, 100.0)).collect();
        println!(
            "| {label} | {} | {} | {} | {} |",
            spread(&count, 0),
            spread(&p50, 2),
            spread(&p99, 2),
            spread(&max, 2)
        );
    };
    probe_row("idle", all.iter().map(|r| &r.probe_idle).collect());
    for (connection, rs) in &results {
        let label = match connection {
            Connection::Reused => "enrolling (connections reused)",
            Connection::Fresh => "enrolling (fresh connections)",
        };
        probe_row(label, rs.iter().map(|r| &r.probe_busy).collect());
    }

    // Ratios make the numbers portable across a noisy machine.
    println!("\nRatios (median of per-repetition ratios):\n");
    for (connection, rs) in &results {
        let to_hs: Vec<f64> =
            rs.iter().map(|r| r.enroll.wall.as_secs_f64() / r.handshakes.wall.as_secs_f64()).collect();
        let to_noop: Vec<f64> =
            rs.iter().map(|r| r.enroll.wall.as_secs_f64() / r.noop.wall.as_secs_f64()).collect();
        let name = if *connection == Connection::Reused { "reused connection" } else { "fresh connection" };
        println!("- enroll ({name}) / bare TLS handshakes: {}", spread(&to_hs, 2));
        println!("- enroll ({name}) / no-op RPCs: {}", spread(&to_noop, 2));
        let to_fsync: Vec<f64> =
            rs.iter().map(|r| r.enroll.wall.as_secs_f64() / r.fsync.wall.as_secs_f64()).collect();
        println!("- enroll ({name}) / sequential fsyncs: {}", spread(&to_fsync, 2));
    }
}

// ---------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench` (and any filter); sections are chosen with
    // BENCH_ONLY instead, so arguments are ignored.
    // The coordinator (and the agent-idle bench) run on the main runtime, with as
    // many workers as CPUs, as the real binary does; clients get their own.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-client")
        .enable_all()
        .build()
        .expect("client tokio runtime");
    CLIENTS.set(client_runtime.handle().clone()).expect("client runtime set once");
    println!("## elysium-node foundation benchmarks\n");
    println!("{}", elysium_tests::bench::machine());
    if selected("rss") || selected("size") {
        let bin = node_binary();
        println!("- agent binary: {}", bin.display());
        if selected("size") {
            bench_binary_size(&bin);
        }
        if selected("rss") {
            runtime.block_on(bench_agent_idle(&bin));
        }
    }
    if selected("enroll") {
        runtime.block_on(bench_enrollment());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\n- load average at end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
}
