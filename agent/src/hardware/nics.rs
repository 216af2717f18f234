//! Physical network interfaces: name, driver, PCI address, speed, MTU, state.
//!
//! MAC addresses (`address`, `perm_address`) are never read: an interface is named by
//! its kernel name only, so no hardware address can reach logs or output.

use std::path::Path;

use elysium_host::RootFs;
use serde::{Deserialize, Serialize};

use super::HardwareError;
use super::sysfs::{link_basename, list_dir, read_best_effort, read_optional};

/// One entry per interface (Documentation/ABI/testing/sysfs-class-net).
const SYS_CLASS_NET: &str = "/sys/class/net";
/// The captured snapshots in `tests/fixtures/hardware` flatten each interface into a
/// directory and record the outcome of the `device` check below in this file (`1`/`0`).
/// Real sysfs has no such attribute, so on a live machine it is simply absent.
const SNAPSHOT_PHYSICAL_MARKER: &str = "physical";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    /// Bound driver of the underlying device (`e1000e`, `virtio_net`).
    pub driver: Option<String>,
    /// The PCI function the interface sits on (`0000:00:1f.6`; for a USB NIC, its USB
    /// controller); `None` off PCI.
    pub pci_address: Option<String>,
    /// Link speed in Mb/s; `None` when unknown (`-1`, link down, virtual NIC).
    pub speed_mbps: Option<u32>,
    pub mtu: Option<u32>,
    /// `operstate`: `up`, `down`, `unknown`...
    pub operstate: Option<String>,
}

pub(crate) fn scan(fs: &RootFs) -> Result<Vec<Nic>, HardwareError> {
    let mut nics = Vec::new();
    for name in list_dir(fs, SYS_CLASS_NET)? {
        let dir = Path::new(SYS_CLASS_NET).join(&name);
        // An interface is physical when it has a `device` link to the hardware it drives;
        // lo, veth, bridges, bonds, tun and ifb have none (the test `ip link` and
        // systemd-networkd use as well).
        let device = dir.join("device");
        let physical = match read_optional(fs, dir.join(SNAPSHOT_PHYSICAL_MARKER))? {
            Some(marker) => marker == "1",
            None => fs.exists(&device),
        };
        if !physical {
            continue;
        }
        let pci_address = pci_ancestor(fs, &device);
        let number = |attr: &str| read_best_effort(fs, dir.join(attr)).and_then(|v| v.parse::<i64>().ok());
        nics.push(Nic {
            driver: link_basename(fs, device.join("driver"))?,
            pci_address,
            speed_mbps: number("speed").filter(|s| *s > 0).map(|s| s as u32),
            mtu: number("mtu").filter(|m| *m > 0).map(|m| m as u32),
            operstate: read_best_effort(fs, dir.join("operstate")),
            name,
        });
    }
    Ok(nics)
}

/// The PCI function an interface sits on: the `device` link points at it directly
/// (`../../../0000:00:1f.6`) or at a bus device below it (virtio: `…/0000:00:03.0/virtio2`),
/// so walk the resolved path up to the nearest PCI address.
fn pci_ancestor(fs: &RootFs, device: &Path) -> Option<String> {
    let real = std::fs::canonicalize(fs.resolve(device)).ok()?;
    real.ancestors()
        .filter_map(|p| p.file_name()?.to_str())
        .take_while(|name| !name.starts_with("pci"))
        .find(|name| is_pci_address(name))
        .map(str::to_owned)
}

/// `0000:00:1f.6`: domain:bus:device.function in hex.
fn is_pci_address(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter().enumerate().all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::fixtures::FixtureRoot;

    #[test]
    fn real_layout_keeps_pci_nics_and_drops_virtual_ones() {
        let root = FixtureRoot::new();
        root.file("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/mtu", "1500\n")
            .file("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/speed", "1000\n")
            .file("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/operstate", "up\n")
            .file("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/address", "a0:36:9f:12:34:56\n")
            .symlink("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/device", "../../../0000:00:1f.6")
            .dir("/sys/bus/pci/drivers/e1000e")
            .symlink("/sys/devices/pci0000:00/0000:00:1f.6/driver", "../../../bus/pci/drivers/e1000e")
            .symlink("/sys/class/net/enp0s31f6", "../../devices/pci0000:00/0000:00:1f.6/net/enp0s31f6")
            .file("/sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/mtu", "1400\n")
            .symlink("/sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/device", "../../../virtio2")
            .dir("/sys/bus/virtio/drivers/virtio_net")
            .symlink(
                "/sys/devices/pci0000:00/0000:00:03.0/virtio2/driver",
                "../../../../bus/virtio/drivers/virtio_net",
            )
            .symlink("/sys/class/net/eth0", "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0")
            .file("/sys/devices/virtual/net/lo/mtu", "65536\n")
            .symlink("/sys/class/net/lo", "../../devices/virtual/net/lo");
        let nics = scan(&root.fs()).unwrap();
        assert_eq!(
            nics,
            [
                Nic {
                    name: "enp0s31f6".into(),
                    driver: Some("e1000e".into()),
                    pci_address: Some("0000:00:1f.6".into()),
                    speed_mbps: Some(1000),
                    mtu: Some(1500),
                    operstate: Some("up".into()),
                },
                Nic {
                    name: "eth0".into(),
                    driver: Some("virtio_net".into()),
                    pci_address: Some("0000:00:03.0".into()),
                    speed_mbps: None,
                    mtu: Some(1400),
                    operstate: None,
                },
            ]
        );
    }
}
