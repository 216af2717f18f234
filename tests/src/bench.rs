//! What every benchmark prints about the machine it ran on: these machines are
//! shared and noisy, so a number means little without the load beside it.

use std::process::Command;

/// Date, CPUs, memory, kernel and load average, as markdown list items.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").map(|r| r.trim().trim_end_matches(" kB").to_owned())
            })
        })
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "- date: {date}\n- CPUs: {cpus} × {model}\n- memory: {:.1} GiB\n- kernel: {}\n- load average at start: {}\n",
        mem_kib / 1024.0 / 1024.0,
        kernel.trim(),
        load_average(),
    )
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
