//! CPU, memory, kernel release and OS identity from procfs and os-release.

use std::collections::BTreeSet;

use elysium_host::RootFs;
use serde::{Deserialize, Serialize};

use super::HardwareError;
use super::sysfs::read_optional;

const PROC_CPUINFO: &str = "/proc/cpuinfo";
const PROC_MEMINFO: &str = "/proc/meminfo";
/// What `uname -r` prints.
const PROC_OSRELEASE: &str = "/proc/sys/kernel/osrelease";
/// `Linux version <release> (…)`: the fallback when osrelease is absent (the captured
/// snapshots only carry this one).
const PROC_VERSION: &str = "/proc/version";
/// os-release(5): `/etc/os-release` first, `/usr/lib/os-release` as the fallback.
const OS_RELEASE_PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// `model name` (x86), else `Model`/`Hardware` (ARM boards); empty when unknown.
    pub model: String,
    /// Distinct (physical id, core id) pairs; equals `threads` where the topology lines
    /// are missing (VMs, ARM).
    pub cores: u32,
    /// Logical processors (`processor` entries).
    pub threads: u32,
    /// Distinct `physical id`s (1 when not reported).
    pub sockets: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsRelease {
    /// `PRETTY_NAME` (falls back to `NAME`).
    pub pretty_name: String,
    pub id: Option<String>,
    pub version_id: Option<String>,
}

pub(crate) fn cpu(fs: &RootFs) -> Result<Cpu, HardwareError> {
    Ok(read_optional(fs, PROC_CPUINFO)?.map(|t| parse_cpuinfo(&t)).unwrap_or_default())
}

pub(crate) fn memory_bytes(fs: &RootFs) -> Result<u64, HardwareError> {
    Ok(read_optional(fs, PROC_MEMINFO)?.map(|t| parse_meminfo_total(&t)).unwrap_or(0))
}

pub(crate) fn kernel_release(fs: &RootFs) -> Result<Option<String>, HardwareError> {
    if let Some(release) = read_optional(fs, PROC_OSRELEASE)?.filter(|r| !r.is_empty()) {
        return Ok(Some(release));
    }
    Ok(read_optional(fs, PROC_VERSION)?.and_then(|v| {
        v.strip_prefix("Linux version ").and_then(|r| r.split_whitespace().next()).map(str::to_owned)
    }))
}

pub(crate) fn os_release(fs: &RootFs) -> Result<Option<OsRelease>, HardwareError> {
    for path in OS_RELEASE_PATHS {
        if let Some(text) = read_optional(fs, path)? {
            return Ok(Some(parse_os_release(&text)));
        }
    }
    Ok(None)
}

fn parse_cpuinfo(text: &str) -> Cpu {
    let mut model = String::new();
    let mut fallback_model = String::new();
    let mut threads = 0u32;
    let mut physical = String::new();
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => threads += 1,
            "model name" if model.is_empty() => model = value.to_owned(),
            "Model" | "Hardware" if fallback_model.is_empty() => fallback_model = value.to_owned(),
            "physical id" => {
                physical = value.to_owned();
                sockets.insert(value.to_owned());
            }
            "core id" => {
                cores.insert((physical.clone(), value.to_owned()));
            }
            _ => {}
        }
    }
    if model.is_empty() {
        model = fallback_model;
    }
    let cores = if cores.is_empty() { threads } else { cores.len() as u32 };
    Cpu { model, cores, threads, sockets: sockets.len().max(1) as u32 }
}

fn parse_meminfo_total(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn parse_os_release(text: &str) -> OsRelease {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
    };
    OsRelease {
        pretty_name: field("PRETTY_NAME").or_else(|| field("NAME")).unwrap_or_else(|| "Linux".into()),
        id: field("ID"),
        version_id: field("VERSION_ID"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cores_per_socket() {
        let text = "processor\t: 0\nmodel name\t: Xeon\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 1\nmodel name\t: Xeon\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 2\nmodel name\t: Xeon\nphysical id\t: 1\ncore id\t: 0\n";
        assert_eq!(parse_cpuinfo(text), Cpu { model: "Xeon".into(), cores: 2, threads: 3, sockets: 2 });
    }

    #[test]
    fn arm_boards_name_the_model_elsewhere() {
        let text = "processor\t: 0\nBogoMIPS\t: 108.00\n\nprocessor\t: 1\n\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(
            parse_cpuinfo(text),
            Cpu { model: "Raspberry Pi 4 Model B Rev 1.4".into(), cores: 2, threads: 2, sockets: 1 }
        );
    }

    #[test]
    fn os_release_fields() {
        let os = parse_os_release(
            "NAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        );
        assert_eq!(os.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!((os.id.as_deref(), os.version_id.as_deref()), (Some("debian"), Some("12")));
    }
}
