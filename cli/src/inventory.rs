//! `inventory`: print this machine's hardware, Intel GPU verdicts and the K3s labels they
//! call for, as human-readable sections or as the full JSON structure.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use elysium_host::RootFs;

use super::{InventoryArgs, Output};
use elysium_agent::hardware::gpu::{DebugfsAccess, GucHuc, ModuleState};
use elysium_agent::hardware::{self, Gpu, Inventory, Verdict};

pub fn run(root: &Path, args: InventoryArgs) -> anyhow::Result<ExitCode> {
    let inventory = hardware::collect(&RootFs::new(root))
        .with_context(|| format!("could not take the hardware inventory below {}", root.display()))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&inventory)?),
        Output::Table => print!("{}", render_table(&inventory)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The table output: one section per kind of hardware.
pub fn render_table(inv: &Inventory) -> String {
    let mut out = String::new();
    let dash = || "-".to_owned();

    out.push_str("System\n");
    let machine = inv.dmi.as_ref().map(|d| d.summary()).filter(|s| !s.is_empty());
    let cpu = &inv.cpu;
    let rows = [
        ("Machine", machine.unwrap_or_else(|| "unknown (no DMI table)".into())),
        ("OS", inv.os.as_ref().map(|o| o.pretty_name.clone()).unwrap_or_else(dash)),
        ("Kernel", inv.kernel.clone().unwrap_or_else(dash)),
        (
            "CPU",
            format!(
                "{} ({} cores, {} threads, {} socket{})",
                if cpu.model.is_empty() { "unknown model" } else { &cpu.model },
                cpu.cores,
                cpu.threads,
                cpu.sockets,
                if cpu.sockets == 1 { "" } else { "s" }
            ),
        ),
        ("Memory", bytes(inv.memory_bytes)),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<8} {v}");
    }

    out.push_str("\nDisks\n");
    let rows: Vec<Vec<String>> = inv
        .disks
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                bytes(d.size_bytes),
                match d.rotational {
                    Some(true) => "rotational".into(),
                    Some(false) => "solid-state".into(),
                    None => dash(),
                },
                if d.removable { "yes".into() } else { "no".into() },
                d.model.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    out.push_str(&table(&["NAME", "SIZE", "TYPE", "REMOVABLE", "MODEL"], &rows));

    out.push_str("\nNetwork interfaces (physical)\n");
    let rows: Vec<Vec<String>> = inv
        .nics
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.driver.clone().unwrap_or_else(dash),
                n.pci_address.clone().unwrap_or_else(dash),
                n.speed_mbps.map(|s| format!("{s} Mb/s")).unwrap_or_else(dash),
                n.mtu.map(|m| m.to_string()).unwrap_or_else(dash),
                n.operstate.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    out.push_str(&table(&["NAME", "DRIVER", "PCI", "SPEED", "MTU", "STATE"], &rows));

    out.push_str("\nPCI devices\n");
    let rows: Vec<Vec<String>> = inv
        .pci
        .iter()
        .map(|d| {
            let name = match (&d.vendor_name, &d.device_name) {
                (Some(v), Some(n)) => format!("{v} {n}"),
                (Some(v), None) => v.clone(),
                _ => dash(),
            };
            vec![
                d.address.clone(),
                format!("{:04x}:{:04x}", d.vendor_id, d.device_id),
                d.class_name.clone().unwrap_or_else(|| format!("{:06x}", d.class)),
                d.driver.clone().unwrap_or_else(dash),
                name,
            ]
        })
        .collect();
    out.push_str(&table(&["ADDRESS", "ID", "CLASS", "DRIVER", "NAME"], &rows));

    out.push_str("\nIntel GPUs\n");
    render_gpus(&mut out, inv);

    out.push_str("\nK3s labels\n");
    if inv.labels.is_empty() {
        out.push_str("  (none: no Intel GPU the plugin would offer)\n");
    }
    for (k, v) in &inv.labels {
        let _ = writeln!(out, "  {k}={v}");
    }
    out
}

fn render_gpus(out: &mut String, inv: &Inventory) {
    let g = &inv.gpu;
    let module = |name: &str, s: ModuleState| match s {
        ModuleState::Loaded => format!("{name} loaded"),
        ModuleState::Builtin => format!("{name} built in"),
        ModuleState::Absent => format!("{name} absent"),
    };
    let _ = writeln!(
        out,
        "  Modules: {}, {}; NFD intel.gpu rule: {}",
        module("i915", g.modules.i915),
        module("xe", g.modules.xe),
        if g.nfd_gpu_rule { "matches" } else { "does not match" }
    );
    if let Some(v) = g.enable_guc {
        let meaning = match v {
            -1 => "auto",
            0 => "GuC/HuC off",
            1 => "GuC submission",
            2 => "HuC load",
            3 => "GuC submission + HuC load",
            _ => "unknown",
        };
        let _ = writeln!(out, "  i915 enable_guc: {v} ({meaning})");
    }
    let firmware: Vec<String> =
        g.firmware.iter().map(|(dir, files)| format!("/lib/firmware/{dir}: {} files", files.len())).collect();
    let _ = writeln!(out, "  Firmware: {}", firmware.join(", "));
    let debugfs = match g.debugfs {
        DebugfsAccess::Readable => "read from debugfs",
        DebugfsAccess::NotMounted => "unknown (debugfs not mounted)",
        DebugfsAccess::PermissionDenied => "unknown (debugfs needs root)",
    };
    let _ = writeln!(out, "  GuC/HuC: {debugfs}");
    if g.gpus.is_empty() {
        out.push_str("  No Intel GPU.\n");
    }
    for gpu in &g.gpus {
        render_gpu(out, gpu);
    }
}

fn render_gpu(out: &mut String, gpu: &Gpu) {
    let f = &gpu.facts;
    let _ = writeln!(
        out,
        "  {}  8086:{:04x}  {}",
        f.address,
        f.device_id,
        f.name.clone().unwrap_or_else(|| format!("class {:06x}", f.class))
    );
    let mut nodes: Vec<String> = f
        .drm_nodes
        .iter()
        .map(|n| if n.present { n.dev_path.clone() } else { format!("{} (missing)", n.dev_path) })
        .collect();
    if nodes.is_empty() {
        nodes.push("no DRM nodes".into());
    }
    let _ = writeln!(out, "    driver {}; {}", f.driver.as_deref().unwrap_or("none"), nodes.join(", "));
    if !f.secondary_functions.is_empty() {
        let _ =
            writeln!(out, "    also functions {} (same device, not GPUs)", f.secondary_functions.join(", "));
    }
    if let Some(uc) = &f.guc_huc {
        let _ = writeln!(out, "    {}", guc_huc(uc));
    }
    match &gpu.verdict {
        Verdict::Usable { resource, .. } => {
            let _ = writeln!(out, "    verdict: usable as {resource}");
        }
        Verdict::Unusable { reason, .. } => {
            let _ = writeln!(out, "    verdict: not usable: {reason}");
        }
    }
    for w in gpu.verdict.warnings() {
        let _ = writeln!(out, "    warning: {w}");
    }
}

fn guc_huc(uc: &GucHuc) -> String {
    let mut parts = Vec::new();
    for (label, fw) in [("GuC", &uc.guc), ("HuC", &uc.huc)] {
        if let Some(fw) = fw {
            let missing = if fw.file_present { "" } else { ", file not in /lib/firmware" };
            parts.push(format!("{label} {} {}{missing}", fw.path, fw.status));
        }
    }
    if let Some(u) = uc.usage {
        let yes = |b: bool| if b { "yes" } else { "no" };
        parts.push(format!(
            "GuC submission wanted {} used {}",
            yes(u.submission.wanted),
            yes(u.submission.used)
        ));
    }
    parts.join("; ")
}

/// Left-aligned columns, two spaces apart, indented by two; `(none)` for no rows.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "  (none)\n".into();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from("  ");
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// 1.5 GiB, 476.9 GiB, 1.8 TiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;
    use elysium_agent::hardware::fixtures;

    #[test]
    fn parses_output_and_root() {
        let cli =
            Cli::try_parse_from(["elysium-node", "inventory", "-o", "json", "--root", "/tmp/x"]).unwrap();
        assert_eq!(cli.root, Path::new("/tmp/x"));
        let Command::Inventory(args) = cli.command else { panic!("not inventory") };
        assert_eq!(args.output, Output::Json);
        let Command::Inventory(args) = Cli::try_parse_from(["elysium-node", "inventory"]).unwrap().command
        else {
            panic!("not inventory")
        };
        assert_eq!(args.output, Output::Table);
    }

    #[test]
    fn table_shows_each_section_and_the_verdict() {
        let inv = hardware::collect(&fixtures::alder_lake_p().fs()).unwrap();
        let text = render_table(&inv);
        for needle in [
            "System\n",
            "Disks\n  (none)\n",
            "enp0s31f6  e1000e  0000:00:1f.6",
            "0000:00:02.0  8086:46a6  Display controller",
            "Intel Corporation Alder Lake-P Integrated Graphics Controller",
            "Modules: i915 loaded, xe loaded; NFD intel.gpu rule: matches",
            "i915 enable_guc: -1 (auto)",
            "driver i915; /dev/dri/card0, /dev/dri/renderD128",
            "GuC i915/adlp_guc_70.bin RUNNING; HuC i915/tgl_huc.bin RUNNING",
            "verdict: usable as gpu.intel.com/i915",
            "elysium.io/gpu=intel\n  elysium.io/gpu.count=1\n  elysium.io/gpu.driver=i915\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn table_explains_an_unusable_gpu() {
        let inv = hardware::collect(&fixtures::i915g_multifunction().fs()).unwrap();
        assert!(render_table(&inv).contains("also functions 0000:00:02.1 (same device, not GPUs)"));
        let inv = hardware::collect(&fixtures::haswell_no_module().fs()).unwrap();
        let text = render_table(&inv);
        assert!(text.contains("verdict: not usable: module not loaded"), "{text}");
        assert!(text.contains("(none: no Intel GPU the plugin would offer)"), "{text}");
    }

    #[test]
    fn sizes_read_like_humans_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(536_870_912 * 512), "256.0 GiB");
        assert_eq!(bytes(2_000_398_934_016), "1.8 TiB");
    }
}
