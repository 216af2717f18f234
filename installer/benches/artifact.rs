//! Benchmarks of the K3s artifact layer on a 512 MiB file (run with
//! `cargo bench -p elysium-installer --bench artifact`):
//!
//! 1. SHA-256 throughput of the streaming hasher (`download::hash_file`, the
//!    code that re-hashes an installed binary or a partial download) against
//!    coreutils `sha256sum` on the same file in the same run, plus the throughput
//!    of a whole verified download from a local HTTP mirror.
//! 2. Peak resident memory (VmHWM) of a child process that downloads and
//!    verifies the file from that mirror, next to the VmHWM of a child that sets
//!    up the same runtime and client but downloads nothing.
//!
//! The child is this binary again, started with `--child-download` or
//! `--child-idle`; it prints its own VmHWM from /proc/self/status just before it
//! exits (the high-water mark only grows, so that is the peak). The mirror runs
//! in the parent, so its memory is not counted.
//!
//! Medians over several runs; the file lives in a temporary directory that is
//! deleted at the end. Set `ARTIFACT_BENCH_MIB` to use another size.

// A benchmark is test code: a failure should stop it loudly.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mirror.rs"]
mod mirror;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use elysium_host::RootFs;
use elysium_installer::download::{Fetcher, HttpOptions, hash_file};
use elysium_installer::k3s_release::Sha256Digest;

const VERSION_DIR: &str = "v1.31.4+k3s1";
const URL_PATH: &str = "/download/v1.31.4%2Bk3s1/k3s";
const HASH_RUNS: usize = 5;
const DOWNLOAD_RUNS: usize = 3;
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child-download") => child_download(&args[2], Path::new(&args[3]), &args[4]),
        Some("--child-idle") => child_idle(),
        // `cargo bench` passes `--bench`; anything else means the parent.
        _ => parent(),
    }
}

fn parent() {
    let mib: u64 = std::env::var("ARTIFACT_BENCH_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(512);
    let size = mib * 1024 * 1024;
    let site = tempfile::tempdir().unwrap();
    let dir = site.path().join("download").join(VERSION_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("k3s");
    write_pseudo_random(&file, size);
    println!("artifact: {mib} MiB at {}", file.display());
    println!("sha2 backend: {}", backend());

    // (1) Hash throughput, warm page cache for both: one untimed pass first.
    let expected = hash_file(&file).unwrap();
    let coreutils = sha256sum(&file);
    assert_eq!(coreutils, expected.to_string(), "sha256sum and hash_file disagree");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..HASH_RUNS {
        // Alternate the order so neither always runs second.
        let mut time_ours = || {
            let t = Instant::now();
            assert_eq!(hash_file(&file).unwrap(), expected);
            ours.push(t.elapsed());
        };
        let mut time_theirs = || {
            let t = Instant::now();
            assert_eq!(sha256sum(&file), expected.to_string());
            theirs.push(t.elapsed());
        };
        if run % 2 == 0 {
            time_ours();
            time_theirs();
        } else {
            time_theirs();
            time_ours();
        }
    }
    let (ours_mibs, theirs_mibs) = (throughput(size, median(&ours)), throughput(size, median(&theirs)));
    println!("hash_file:  median {:>8.1} MiB/s  runs {}", ours_mibs, fmt_runs(&ours));
    println!("sha256sum:  median {:>8.1} MiB/s  runs {}", theirs_mibs, fmt_runs(&theirs));
    println!("ratio hash_file / sha256sum: {:.2}x", ours_mibs / theirs_mibs);

    // (2) Download + verify from the local mirror, in a child process each time.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mirror = runtime.block_on(mirror::Mirror::start(site.path()));
    let url = format!("{}{URL_PATH}", mirror.url());
    let exe = std::env::current_exe().unwrap();
    let idle: Vec<u64> = (0..DOWNLOAD_RUNS)
        .map(|_| parse_child(&run_child(Command::new(&exe).arg("--child-idle"))).0)
        .collect();
    let mut hwm = Vec::new();
    let mut elapsed = Vec::new();
    for _ in 0..DOWNLOAD_RUNS {
        let node = tempfile::tempdir().unwrap();
        let out = run_child(
            Command::new(&exe).arg("--child-download").arg(&url).arg(node.path()).arg(expected.to_string()),
        );
        let (kib, took) = parse_child(&out);
        hwm.push(kib);
        elapsed.push(took);
    }
    println!(
        "download+verify over HTTP: median {:>8.1} MiB/s  runs {}",
        throughput(size, median(&elapsed)),
        fmt_runs(&elapsed)
    );
    println!("VmHWM idle child (runtime + client only): median {} KiB  runs {idle:?}", median_u64(&idle));
    println!(
        "VmHWM download child: median {} KiB = {:.1} MiB  runs {hwm:?}",
        median_u64(&hwm),
        median_u64(&hwm) as f64 / 1024.0
    );
    drop(runtime);
    drop(site);
}

/// Downloads `url` into a node root at `root`, verifies it against `hex`, and
/// prints `vmhwm_kib=<n> secs=<f>`.
fn child_download(url: &str, root: &Path, hex: &str) {
    let expected: Sha256Digest = hex.parse().unwrap();
    let url = reqwest::Url::parse(url).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let took = runtime.block_on(async {
        let fetcher = Fetcher::new(&HttpOptions::default()).unwrap();
        let fs = RootFs::new(root);
        let t = Instant::now();
        let done = fetcher
            .download_verified(&fs, &url, Path::new("/usr/local/bin/k3s"), &expected, |_| ())
            .await
            .unwrap();
        done.commit().unwrap();
        t.elapsed()
    });
    println!("vmhwm_kib={} secs={}", vmhwm_kib(), took.as_secs_f64());
}

/// The same runtime and client as [`child_download`], without a download.
fn child_idle() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let _fetcher = Fetcher::new(&HttpOptions::default()).unwrap();
        tokio::task::spawn_blocking(|| ()).await.unwrap();
    });
    println!("vmhwm_kib={} secs=0", vmhwm_kib());
}

fn vmhwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn run_child(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn parse_child(out: &str) -> (u64, Duration) {
    let mut kib = None;
    let mut secs = None;
    for word in out.split_whitespace() {
        if let Some(v) = word.strip_prefix("vmhwm_kib=") {
            kib = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("secs=") {
            secs = v.parse::<f64>().ok();
        }
    }
    (kib.unwrap(), Duration::from_secs_f64(secs.unwrap()))
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// Incompressible content (xorshift), written in 1 MiB blocks.
fn write_pseudo_random(path: &Path, size: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

/// Which SHA-256 compression function sha2 0.10 will pick on this CPU: on
/// x86_64 it uses the SHA-NI instructions when cpuid reports them (runtime
/// detection through `cpufeatures`), else its portable Rust code.
fn backend() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
        {
            return "sha2 0.10 x86_64 SHA-NI intrinsics (runtime-detected)";
        }
        "sha2 0.10 portable (soft) backend: this CPU has no SHA-NI"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "sha2 0.10 default backend for this architecture"
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn median_u64(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn throughput(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB / took.as_secs_f64()
}

fn fmt_runs(v: &[Duration]) -> String {
    let ms: Vec<String> = v.iter().map(|d| format!("{:.0}ms", d.as_secs_f64() * 1000.0)).collect();
    format!("[{}]", ms.join(", "))
}
