//! Timings of `elysium_agent::hardware` on this machine: the full inventory and Intel GPU
//! detection alone, each the median of many runs, next to baselines measured in the same
//! run so the numbers read as ratios: `lspci -nnk` when pciutils is installed, and a plain
//! read of every attribute file under `/sys/bus/pci/devices`.
//!
//! A second table times the same calls on a generated tree with an Intel GPU (this
//! machine's own `pci.ids` copied in), since the machine running the bench may have none.
//!
//! ```text
//! cargo bench -p elysium-agent --bench hardware
//! ELYSIUM_BENCH_ROOT=/tmp/snapshot cargo bench -p elysium-agent --bench hardware
//! ```
//! Targets (issue 4): full inventory ≤ 20 ms, GPU detection ≤ 2 ms. Nothing here asserts
//! them: timings belong in docs/BENCHMARKS-hardware.md, not in pass/fail tests.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use elysium_agent::hardware;
use elysium_host::RootFs;

const FULL_RUNS: usize = 300;
const GPU_RUNS: usize = 2000;
const SYSFS_RUNS: usize = 300;
const LSPCI_RUNS: usize = 50;
const WARMUP_RUNS: usize = 5;

/// PCI attributes the sysfs baseline must not read: `resource*` of I/O BARs performs port
/// I/O on read, `rom` needs enabling, `vpd` can stall for seconds, and the rest are
/// write-only triggers.
const SKIP_PREFIXES: [&str; 6] = ["resource", "rom", "vpd", "remove", "rescan", "reset"];

struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
    runs: usize,
}

fn measure<T>(runs: usize, mut f: impl FnMut() -> T) -> Stats {
    for _ in 0..WARMUP_RUNS {
        black_box(f());
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    Stats { median: times[runs / 2], p90: times[runs * 9 / 10], min: times[0], runs }
}

/// Reads every regular attribute file below `dir`, recursing into real subdirectories
/// (`power/`, `msi_irqs/`, `drm/`) without following links. Returns bytes read.
fn read_tree(dir: &Path, depth: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if SKIP_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_file() {
            total += std::fs::read(entry.path()).map(|b| b.len()).unwrap_or(0);
        } else if kind.is_dir() && depth < 4 {
            total += read_tree(&entry.path(), depth + 1);
        }
    }
    total
}

fn read_pci_sysfs(root: &Path) -> usize {
    let devices = root.join("sys/bus/pci/devices");
    let Ok(entries) = std::fs::read_dir(&devices) else { return 0 };
    // The entries are links; read_dir on the link's path follows it once, to the device.
    entries.flatten().map(|e| read_tree(&e.path(), 0)).sum()
}

/// An Alder Lake-P node (the shape of the `alder_lake_p` test fixture: host bridge, i915
/// GPU with card0/renderD128, e1000e NIC, modules, firmware, GuC/HuC debugfs) with this
/// machine's own `pci.ids` copied in, so GPU detection is timed on a machine that has an
/// Intel GPU and looks its name up. Built in a temporary directory.
fn intel_node() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let write = |path: &str, text: &str| -> std::io::Result<()> {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap_or(root))?;
        std::fs::write(p, text)
    };
    let link = |path: &str, target: &str| -> std::io::Result<()> {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap_or(root))?;
        std::os::unix::fs::symlink(target, p)
    };
    for (addr, device, class, driver) in [
        ("0000:00:00.0", "0x4621", "0x060000", None),
        ("0000:00:02.0", "0x46a6", "0x038000", Some("i915")),
        ("0000:00:1f.6", "0x1a1e", "0x020000", Some("e1000e")),
    ] {
        let dev = format!("sys/devices/pci0000:00/{addr}");
        for (attr, value) in
            [("vendor", "0x8086"), ("device", device), ("class", class), ("revision", "0x0c")]
        {
            write(&format!("{dev}/{attr}"), value)?;
        }
        write(&format!("{dev}/subsystem_vendor"), "0x17aa")?;
        write(&format!("{dev}/subsystem_device"), "0x22d8")?;
        link(&format!("sys/bus/pci/devices/{addr}"), &format!("../../../devices/pci0000:00/{addr}"))?;
        if let Some(d) = driver {
            std::fs::create_dir_all(root.join(format!("sys/bus/pci/drivers/{d}")))?;
            link(&format!("{dev}/driver"), &format!("../../../bus/pci/drivers/{d}"))?;
        }
    }
    for node in ["card0", "renderD128"] {
        link(&format!("sys/devices/pci0000:00/0000:00:02.0/drm/{node}/device"), "../../../0000:00:02.0")?;
        link(&format!("sys/class/drm/{node}"), &format!("../../devices/pci0000:00/0000:00:02.0/drm/{node}"))?;
        write(&format!("dev/dri/{node}"), "")?;
    }
    write(
        "proc/modules",
        "i915 4276224 12 - Live 0x0\nxe 2985984 0 - Live 0x0\ne1000e 356352 0 - Live 0x0\n",
    )?;
    write("sys/module/i915/parameters/enable_guc", "-1\n")?;
    for fw in ["adlp_dmc.bin", "adlp_guc_70.bin", "tgl_huc.bin"] {
        write(&format!("lib/firmware/i915/{fw}"), "")?;
    }
    let uc = "sys/kernel/debug/dri/0/gt0/uc";
    write(
        &format!("{uc}/usage"),
        "[guc] supported:yes wanted:yes used:yes\n[huc] supported:yes wanted:yes used:yes\n[submission] supported:yes wanted:yes used:yes\n",
    )?;
    write(&format!("{uc}/guc_info"), "GuC firmware: i915/adlp_guc_70.bin\n\tstatus: RUNNING\n")?;
    write(&format!("{uc}/huc_info"), "HuC firmware: i915/tgl_huc.bin\n\tstatus: RUNNING\n")?;
    for ids in ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"] {
        if let Ok(bytes) = std::fs::read(ids) {
            write("usr/share/misc/pci.ids", &String::from_utf8_lossy(&bytes))?;
            break;
        }
    }
    Ok(dir)
}

fn lspci_available() -> bool {
    Command::new("lspci").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var_os("ELYSIUM_BENCH_ROOT").unwrap_or_else(|| "/".into()));
    let fs = RootFs::new(&root);

    // What is being timed, once, so the numbers can be read against the machine.
    let inv = hardware::collect(&fs)?;
    let named = inv.pci.iter().filter(|d| d.device_name.is_some()).count();
    println!(
        "root {}: {} PCI functions ({} named from pci.ids), {} Intel GPUs, {} disks, {} physical NICs",
        root.display(),
        inv.pci.len(),
        named,
        inv.gpu.gpus.len(),
        inv.disks.len(),
        inv.nics.len()
    );

    let full = measure(FULL_RUNS, || hardware::collect(&fs).map(|i| i.pci.len()).unwrap_or(0));
    let gpu = measure(GPU_RUNS, || hardware::detect_gpus(&fs).map(|r| r.gpus.len()).unwrap_or(0));
    let sysfs = measure(SYSFS_RUNS, || read_pci_sysfs(&root));
    let lspci = (root == Path::new("/") && lspci_available()).then(|| {
        measure(LSPCI_RUNS, || Command::new("lspci").arg("-nnk").output().map(|o| o.stdout.len()).ok())
    });

    let base = lspci.as_ref().unwrap_or(&sysfs).median.as_secs_f64();
    let base_name = if lspci.is_some() { "lspci -nnk" } else { "sysfs read" };
    println!();
    println!("| what | runs | median ms | p90 ms | min ms | median / {base_name} |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows = vec![
        ("full inventory (`hardware::collect`)", &full),
        ("GPU detection (`hardware::detect_gpus`)", &gpu),
    ];
    if let Some(l) = &lspci {
        rows.push(("baseline: `lspci -nnk`", l));
    }
    rows.push(("baseline: read all of /sys/bus/pci/devices", &sysfs));
    for (name, s) in rows {
        println!(
            "| {name} | {} | {} | {} | {} | {:.4} |",
            s.runs,
            ms(s.median),
            ms(s.p90),
            ms(s.min),
            s.median.as_secs_f64() / base
        );
    }

    // The same two measurements on a tree with an Intel GPU (and, where this machine has
    // one, a real pci.ids to look its name up in).
    let node = intel_node()?;
    let node_fs = RootFs::new(node.path());
    let report = hardware::detect_gpus(&node_fs)?;
    let gpu_name =
        report.gpus.first().and_then(|g| g.facts.name.clone()).unwrap_or_else(|| "(no pci.ids)".into());
    let node_full = measure(FULL_RUNS, || hardware::collect(&node_fs).map(|i| i.pci.len()).unwrap_or(0));
    let node_gpu = measure(GPU_RUNS, || hardware::detect_gpus(&node_fs).map(|r| r.gpus.len()).unwrap_or(0));
    println!();
    println!(
        "Intel node tree ({} GPU: {gpu_name}; usable: {})",
        report.gpus.len(),
        report.gpus.iter().all(|g| g.verdict.is_usable())
    );
    println!();
    println!("| what | runs | median ms | p90 ms | min ms | median / {base_name} |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, s) in [("full inventory", &node_full), ("GPU detection", &node_gpu)] {
        println!(
            "| {name} | {} | {} | {} | {} | {:.4} |",
            s.runs,
            ms(s.median),
            ms(s.p90),
            ms(s.min),
            s.median.as_secs_f64() / base
        );
    }
    println!();
    println!("targets: full inventory <= 20 ms, GPU detection <= 2 ms (medians)");
    Ok(())
}
