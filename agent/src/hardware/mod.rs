//! Hardware inventory: what this machine is made of, and which of its Intel GPUs the Intel
//! GPU device plugin would hand to pods.
//!
//! Owns: reading `/sys`, `/proc`, `/etc/os-release`, `/lib/firmware` and `pci.ids` below a
//! root directory (so a fixture tree stands in for `/`); CPU, memory, disks, physical NICs,
//! DMI, kernel, OS and PCI devices; Intel GPU detection with a per-GPU verdict that mirrors
//! what intel-device-plugins-for-kubernetes and node-feature-discovery check; the
//! `elysium.io/gpu*` node labels derived from it and their drift against a node's labels.
//!
//! Does not own: putting labels on the Node object (K3s applies `node-label` only at
//! registration, so fixing drift later is an API call made elsewhere), nor the short
//! join-time summary in [`crate::inventory`].
//!
//! Privacy: serial numbers, UUIDs and MAC addresses are never read, so they cannot end up
//! in logs or output.

mod disks;
mod dmi;
pub mod gpu;
mod labels;
mod nics;
pub mod pci;
mod pci_ids;
mod sysfs;
pub(crate) mod system;

// Test data, also for the binary crate's tests (feature `fixtures`); never in a
// release build.
#[cfg(any(test, feature = "fixtures"))]
#[allow(clippy::unwrap_used)]
pub mod fixtures;

use std::path::PathBuf;

use elysium_host::RootFs;
use serde::{Deserialize, Serialize};

pub use disks::Disk;
pub use dmi::Dmi;
pub use gpu::{DrmNode, Gpu, GpuFacts, GpuReport, ModuleState, NodeGpuContext, Reason, Verdict, Warning};
pub use labels::{Drift, GPU_LABEL_PREFIX, gpu_labels, is_gpu_label, label_drift};
pub use nics::Nic;
pub use pci::PciDevice;
pub use system::{Cpu, OsRelease};

/// Everything [`collect`] found. Serialized as-is by `elysium-node inventory -o json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub cpu: Cpu,
    /// `MemTotal` from `/proc/meminfo`, in bytes (0 when unreadable).
    pub memory_bytes: u64,
    pub disks: Vec<Disk>,
    /// Physical interfaces only (virtual ones: lo, veth, bridges, ifb... are left out).
    pub nics: Vec<Nic>,
    /// `None` where the kernel exposes no DMI table (many VMs, most ARM boards).
    pub dmi: Option<Dmi>,
    /// Kernel release (`uname -r`).
    pub kernel: Option<String>,
    pub os: Option<OsRelease>,
    pub pci: Vec<PciDevice>,
    pub gpu: GpuReport,
    /// The `elysium.io/gpu*` labels this hardware calls for ([`gpu_labels`]).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A read that failed for another reason than "this file does not exist here". Missing
/// optional files (no `/sys/class/drm`, no debugfs, no DMI) are not errors: they show up
/// as `None` or empty lists.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error(transparent)]
    Read(#[from] elysium_host::FsError),
    #[error("could not list {}", path.display())]
    ListDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the link {}", path.display())]
    ReadLink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds {value:?}, expected {expected}", path.display())]
    Parse { path: PathBuf, value: String, expected: &'static str },
}

/// Reads the whole inventory below `fs`'s root. PCI names come from the system's
/// `pci.ids` when it has one.
pub fn collect(fs: &RootFs) -> Result<Inventory, HardwareError> {
    let mut pci = pci::scan(fs)?;
    pci_ids::name_devices(fs, &mut pci)?;
    let gpu = gpu::detect_from(fs, &pci)?;
    let labels = gpu_labels(&gpu.gpus);
    Ok(Inventory {
        cpu: system::cpu(fs)?,
        memory_bytes: system::memory_bytes(fs)?,
        disks: disks::scan(fs)?,
        nics: nics::scan(fs)?,
        dmi: dmi::read(fs)?,
        kernel: system::kernel_release(fs)?,
        os: system::os_release(fs)?,
        pci,
        gpu,
        labels,
    })
}

/// The inventory as the JSON document the coordinator keeps for `nodes get`
/// (sent at `join`, then when the coordinator asks). A node whose sysfs cannot
/// be read still joins and connects: the error is logged, the document empty.
pub fn document(fs: &RootFs) -> String {
    match collect(fs) {
        Ok(inventory) => serde_json::to_string(&inventory).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "could not collect the hardware inventory");
            String::new()
        }
    }
}

/// Intel GPU detection alone: reads only the PCI attributes it needs (vendor and class
/// of every function, the rest only for Intel display devices), then DRM, modules,
/// GuC/HuC and firmware. What the agent calls when it only needs labels.
pub fn detect_gpus(fs: &RootFs) -> Result<GpuReport, HardwareError> {
    gpu::detect(fs)
}

/// Serde helpers: PCI ids as lspci prints them (`8086`, class `030000`), not as decimals.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub mod id16 {
        use super::*;
        pub fn serialize<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&format!("{v:04x}"))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
            let s = String::deserialize(d)?;
            u16::from_str_radix(&s, 16).map_err(D::Error::custom)
        }
    }

    pub mod rev8 {
        use super::*;
        pub fn serialize<S: Serializer>(v: &Option<u8>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_some(&format!("{v:02x}")),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| u8::from_str_radix(&s, 16).map_err(D::Error::custom))
                .transpose()
        }
    }

    pub mod class24 {
        use super::*;
        pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&format!("{v:06x}"))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
            let s = String::deserialize(d)?;
            u32::from_str_radix(&s, 16).map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{self, Snapshot};
    use super::*;

    #[test]
    fn h100_snapshot_has_an_nvidia_gpu_and_no_intel_one() {
        let snap = Snapshot::unpack("nvidia-h100-vm.tar.gz");
        let inv = collect(&snap.fs()).unwrap();

        // The Intel host bridge (class 0600) is an Intel device but not a GPU.
        let bridge = inv.pci.iter().find(|d| d.address == "0000:00:00.0").unwrap();
        assert_eq!((bridge.vendor_id, bridge.device_id, bridge.class), (0x8086, 0x0d57, 0x060000));
        assert_eq!(bridge.driver, None);
        let nvidia = inv.pci.iter().find(|d| d.address == "0000:00:06.0").unwrap();
        assert_eq!((nvidia.vendor_id, nvidia.device_id, nvidia.class), (0x10de, 0x2330, 0x030200));
        assert_eq!(nvidia.driver.as_deref(), Some("nvidia"));
        assert_eq!(inv.pci.len(), 7);

        assert!(inv.gpu.gpus.is_empty());
        assert!(!inv.gpu.nfd_gpu_rule);
        assert!(inv.labels.is_empty());
        assert_eq!(inv.gpu.modules.i915, ModuleState::Absent);

        assert_eq!((inv.cpu.cores, inv.cpu.threads), (16, 16));
        assert_eq!(inv.cpu.model, "Intel(R) Xeon(R) Processor");
        assert_eq!(inv.memory_bytes, 131_981_020 * 1024);
        assert_eq!(inv.kernel.as_deref(), Some("6.18.44-fc-v657-gpu"));
        assert_eq!(inv.os, None);
        assert_eq!(inv.dmi, None);

        // loop* and zram0 are virtual; vda and vdb are the VM's disks.
        let disks: Vec<_> = inv.disks.iter().map(|d| (d.name.as_str(), d.size_bytes, d.rotational)).collect();
        assert_eq!(disks, [("vda", 536_870_912 * 512, Some(true)), ("vdb", 621_744 * 512, Some(true))]);
        let nics: Vec<_> = inv.nics.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nics, ["eth0"]);
        assert_eq!(inv.nics[0].mtu, Some(1400));
        assert_eq!(inv.nics[0].speed_mbps, None, "speed -1 means unknown");
    }

    #[test]
    fn virtio_snapshot_has_no_gpu() {
        let snap = Snapshot::unpack("virtio-vm-no-gpu.tar.gz");
        let inv = collect(&snap.fs()).unwrap();
        assert_eq!(inv.pci.len(), 6);
        assert!(inv.pci.iter().all(|d| d.class >> 16 != 0x03), "no display-class device at all");
        assert!(inv.gpu.gpus.is_empty());
        assert!(inv.labels.is_empty());
        assert_eq!((inv.cpu.cores, inv.cpu.threads), (2, 2));
        // veth-h1 (speed 10000) is marked virtual in the snapshot; only eth0 is physical.
        let nics: Vec<_> = inv.nics.iter().map(|n| (n.name.as_str(), n.mtu, n.speed_mbps)).collect();
        assert_eq!(nics, [("eth0", Some(1400), None)]);
        assert_eq!(inv.disks.len(), 1);
    }

    #[test]
    fn detect_gpus_alone_agrees_with_the_full_inventory() {
        for root in [fixtures::alder_lake_p(), fixtures::hybrid_laptop(), fixtures::i915g_multifunction()] {
            let full = collect(&root.fs()).unwrap().gpu;
            let alone = detect_gpus(&root.fs()).unwrap();
            assert_eq!(full, alone);
        }
    }

    #[test]
    fn pci_names_come_from_the_systems_pci_ids() {
        let root = fixtures::alder_lake_p();
        let inv = collect(&root.fs()).unwrap();
        let gpu = inv.pci.iter().find(|d| d.address == "0000:00:02.0").unwrap();
        assert_eq!(gpu.vendor_name.as_deref(), Some("Intel Corporation"));
        assert_eq!(gpu.device_name.as_deref(), Some("Alder Lake-P Integrated Graphics Controller"));
        assert_eq!(gpu.class_name.as_deref(), Some("Display controller"));
        assert_eq!(
            inv.gpu.gpus[0].facts.name.as_deref(),
            Some("Alder Lake-P Integrated Graphics Controller")
        );
    }

    #[test]
    fn no_mac_address_reaches_the_output() {
        let root = fixtures::alder_lake_p();
        // Real sysfs has the MAC next to the attributes we read; it must stay there.
        root.file("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/address", "a0:36:9f:12:34:56\n");
        let inv = collect(&root.fs()).unwrap();
        assert_eq!(inv.nics.len(), 1, "the fixture's NIC is seen");
        let json = serde_json::to_string(&inv).unwrap();
        assert!(!json.contains("a0:36:9f"), "{json}");
    }

    #[test]
    fn json_round_trips_with_hex_ids() {
        let inv = collect(&fixtures::dg1().fs()).unwrap();
        let json = serde_json::to_value(&inv).unwrap();
        let dg1 = json["pci"].as_array().unwrap().iter().find(|d| d["address"] == "0000:01:00.0").unwrap();
        assert_eq!(dg1["vendor_id"], "8086");
        assert_eq!(dg1["device_id"], "4905");
        assert_eq!(dg1["class"], "030000");
        assert_eq!(dg1["revision"], "01");
        let back: Inventory = serde_json::from_value(json).unwrap();
        assert_eq!(back, inv);
    }

    #[test]
    fn an_empty_root_is_an_empty_inventory_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let inv = collect(&RootFs::new(dir.path())).unwrap();
        assert!(inv.pci.is_empty() && inv.gpu.gpus.is_empty() && inv.disks.is_empty() && inv.nics.is_empty());
        assert_eq!(inv.memory_bytes, 0);
    }

    #[test]
    fn a_malformed_pci_attribute_is_an_error_naming_the_file() {
        let root = fixtures::alder_lake_p();
        root.file("/sys/devices/pci0000:00/0000:00:02.0/class", "display\n");
        let err = collect(&root.fs()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/sys/bus/pci/devices/0000:00:02.0/class holds \"display\", expected a hexadecimal number"
        );
    }
}
