//! What a node says about itself when it joins and on every session: identity,
//! OS, kernel, CPU and memory (parsed by [`crate::hardware`]), read through the
//! host seam's root so a fixture directory can stand in for `/`.

use elysium_host::RootFs;
use elysium_proto::v1 as pb;

use crate::hardware::system;

/// Collects the inventory. Missing files leave their fields empty rather than
/// failing: a node with an odd `/proc` should still be able to join.
pub fn collect(fs: &RootFs) -> pb::NodeInventory {
    let read = |p: &str| fs.read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    let hostname = Some(read("/proc/sys/kernel/hostname"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| read("/etc/hostname"));
    let cpu = system::cpu(fs).unwrap_or_default();
    pb::NodeInventory {
        hostname,
        machine_id: read("/etc/machine-id"),
        os: system::os_release(fs).ok().flatten().map(|o| o.pretty_name).unwrap_or_default(),
        kernel: system::kernel_release(fs).ok().flatten().unwrap_or_default(),
        arch: go_arch(std::env::consts::ARCH).to_owned(),
        cpu_model: cpu.model,
        cpu_cores: cpu.cores,
        cpu_threads: cpu.threads,
        memory_bytes: system::memory_bytes(fs).unwrap_or(0),
        // Interfaces are kernel state, not files: they come from the running
        // machine even when the files come from a fixture root.
        addresses: elysium_host::net::interface_addresses().iter().map(|ip| ip.to_string()).collect(),
    }
}

/// Architecture names as Go, K3s and container images spell them.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fixture_root() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        fs.write_atomic("/proc/sys/kernel/hostname", b"node7\n", 0o644).unwrap();
        fs.write_atomic("/etc/machine-id", b"0123456789abcdef0123456789abcdef\n", 0o444).unwrap();
        fs.write_atomic(
            "/etc/os-release",
            b"NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            0o644,
        )
        .unwrap();
        fs.write_atomic("/proc/sys/kernel/osrelease", b"6.1.0-27-amd64\n", 0o444).unwrap();
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i5-1240P\nphysical id\t: 0\ncore id\t: 0\n\n\
                       processor\t: 1\nmodel name\t: Intel(R) Core(TM) i5-1240P\nphysical id\t: 0\ncore id\t: 0\n\n\
                       processor\t: 2\nmodel name\t: Intel(R) Core(TM) i5-1240P\nphysical id\t: 0\ncore id\t: 1\n";
        fs.write_atomic("/proc/cpuinfo", cpuinfo.as_bytes(), 0o444).unwrap();
        fs.write_atomic("/proc/meminfo", b"MemTotal:       16252928 kB\nMemFree: 1 kB\n", 0o444).unwrap();
        let inv = collect(&fs);
        assert_eq!(inv.hostname, "node7");
        assert_eq!(inv.os, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(inv.kernel, "6.1.0-27-amd64");
        assert_eq!((inv.cpu_cores, inv.cpu_threads), (2, 3));
        assert_eq!(inv.cpu_model, "Intel(R) Core(TM) i5-1240P");
        assert_eq!(inv.memory_bytes, 16_252_928 * 1024);
        assert_eq!(inv.machine_id.len(), 32);
    }

    #[test]
    fn an_empty_root_still_yields_an_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let inv = collect(&RootFs::new(dir.path()));
        assert!(inv.hostname.is_empty());
        assert_eq!(inv.memory_bytes, 0);
    }
}
