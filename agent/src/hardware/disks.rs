//! Block devices that are disks: size, rotational, removable, model. Virtual devices
//! (loop, zram, ram, device-mapper, md) are left out; partitions are not listed in
//! `/sys/block` at all.

use std::path::Path;

use elysium_host::RootFs;
use serde::{Deserialize, Serialize};

use super::HardwareError;
use super::sysfs::{link_target, list_dir, read_optional};

/// One entry per whole block device (Documentation/ABI/stable/sysfs-block).
const SYS_BLOCK: &str = "/sys/block";
/// `size` is always in 512-byte sectors, whatever the device's logical block size
/// (include/linux/blk_types.h SECTOR_SHIFT).
const SECTOR_BYTES: u64 = 512;
/// Virtual block devices by name. The real `/sys/block/<name>` link target says so too
/// (`../devices/virtual/block/…`), but the captured snapshots flatten those links into
/// directories, so the name is the check that works on both.
const VIRTUAL_PREFIXES: [&str; 5] = ["loop", "ram", "zram", "dm-", "md"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name: `sda`, `nvme0n1`, `vda`.
    pub name: String,
    pub size_bytes: u64,
    /// `queue/rotational`: true for spinning disks (and, honestly reported, some virtual
    /// disks); `None` when the kernel does not say.
    pub rotational: Option<bool>,
    pub removable: bool,
    /// `device/model` (SATA/SCSI/NVMe); serial numbers are never read.
    pub model: Option<String>,
}

pub(crate) fn scan(fs: &RootFs) -> Result<Vec<Disk>, HardwareError> {
    let mut disks = Vec::new();
    for name in list_dir(fs, SYS_BLOCK)? {
        if VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = Path::new(SYS_BLOCK).join(&name);
        if link_target(fs, &dir)?.is_some_and(|t| t.to_string_lossy().contains("/devices/virtual/")) {
            continue;
        }
        let number = |attr: &str| -> Result<Option<u64>, HardwareError> {
            Ok(read_optional(fs, dir.join(attr))?.and_then(|v| v.parse().ok()))
        };
        disks.push(Disk {
            size_bytes: number("size")?.unwrap_or(0) * SECTOR_BYTES,
            rotational: number("queue/rotational")?.map(|r| r == 1),
            removable: number("removable")? == Some(1),
            model: read_optional(fs, dir.join("device/model"))?.filter(|m| !m.is_empty()),
            name,
        });
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::fixtures::FixtureRoot;

    #[test]
    fn real_layout_with_links_and_a_virtual_device() {
        let root = FixtureRoot::new();
        root.file(
            "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/size",
            "1953525168\n",
        )
        .file(
            "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/queue/rotational",
            "1\n",
        )
        .file(
            "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/removable",
            "0\n",
        )
        .file(
            "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/model",
            "WDC WD10EZEX-08W\n",
        )
        .symlink(
            "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/device",
            "../../../0:0:0:0",
        )
        .symlink(
            "/sys/block/sda",
            "../devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
        )
        .file("/sys/devices/virtual/block/dm-0/size", "100\n")
        .symlink("/sys/block/dm-0", "../devices/virtual/block/dm-0")
        .file("/sys/devices/virtual/block/vg0/size", "100\n")
        .symlink("/sys/block/vg0", "../devices/virtual/block/vg0");
        let disks = scan(&root.fs()).unwrap();
        assert_eq!(
            disks,
            [Disk {
                name: "sda".into(),
                size_bytes: 1_953_525_168 * 512,
                rotational: Some(true),
                removable: false,
                model: Some("WDC WD10EZEX-08W".into()),
            }]
        );
    }
}
