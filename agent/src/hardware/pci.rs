//! PCI functions from `/sys/bus/pci/devices`: ids, class, revision, bound driver.
//!
//! The attribute set follows node-feature-discovery's (source/pci/utils.go:
//! `class`, `vendor`, `device` are mandatory; NFD also reads the subsystem ids), and the
//! driver is the basename of the `driver` link as `lspci -k` shows it.

use std::path::{Path, PathBuf};

use elysium_host::RootFs;
use serde::{Deserialize, Serialize};

use super::HardwareError;
use super::sysfs::{link_basename, list_dir, read_hex, read_hex_optional};

/// One entry per PCI function; each is a symlink into `/sys/devices/pci…` (kernel ABI,
/// Documentation/ABI/testing/sysfs-bus-pci).
pub const SYS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// PCI vendor id of Intel.
pub const VENDOR_INTEL: u16 = 0x8086;

/// Base class 0x03: display controllers (PCI Code and ID Assignment spec).
pub const BASE_CLASS_DISPLAY: u8 = 0x03;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciDevice {
    /// Domain:bus:device.function, e.g. `0000:00:02.0`.
    pub address: String,
    #[serde(with = "super::hex::id16")]
    pub vendor_id: u16,
    #[serde(with = "super::hex::id16")]
    pub device_id: u16,
    /// 24-bit class code: base class, subclass, programming interface (`030000`).
    #[serde(with = "super::hex::class24")]
    pub class: u32,
    /// As lspci's `(rev 0c)`.
    #[serde(with = "super::hex::rev8")]
    pub revision: Option<u8>,
    /// `vvvv:dddd`, as lspci prints `Subsystem: … [vvvv:dddd]`.
    pub subsystem: Option<String>,
    /// Bound driver (`i915`, `nvidia`, `virtio-pci`); `None` when nothing is bound.
    pub driver: Option<String>,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    /// Subclass name from `pci.ids` (`VGA compatible controller`).
    pub class_name: Option<String>,
}

impl PciDevice {
    pub fn base_class(&self) -> u8 {
        (self.class >> 16) as u8
    }

    pub fn subclass(&self) -> u8 {
        (self.class >> 8) as u8
    }

    /// The 4-hex-digit class NFD matches on (it keeps the first four characters of the
    /// class attribute, dropping the programming interface): `0300`, `0380`.
    pub fn nfd_class(&self) -> u16 {
        (self.class >> 8) as u16
    }
}

/// Path of an attribute of the function at `address`.
pub(crate) fn attr(address: &str, name: &str) -> PathBuf {
    Path::new(SYS_PCI_DEVICES).join(address).join(name)
}

/// Every PCI function, with all attributes.
pub fn scan(fs: &RootFs) -> Result<Vec<PciDevice>, HardwareError> {
    scan_where(fs, |_, _| true)
}

/// PCI functions whose (vendor, class) pass `keep`. Only `vendor` and `class` are read for
/// the others, which keeps GPU detection cheap on machines with many functions.
pub fn scan_where(fs: &RootFs, keep: impl Fn(u16, u32) -> bool) -> Result<Vec<PciDevice>, HardwareError> {
    let mut out = Vec::new();
    for address in list_dir(fs, SYS_PCI_DEVICES)? {
        let vendor_id = read_hex(fs, &attr(&address, "vendor"))? as u16;
        let class = read_hex(fs, &attr(&address, "class"))?;
        if !keep(vendor_id, class) {
            continue;
        }
        out.push(read_device(fs, address, vendor_id, class)?);
    }
    Ok(out)
}

fn read_device(fs: &RootFs, address: String, vendor_id: u16, class: u32) -> Result<PciDevice, HardwareError> {
    let device_id = read_hex(fs, &attr(&address, "device"))? as u16;
    let revision = read_hex_optional(fs, &attr(&address, "revision"))?.map(|r| r as u8);
    let sub_vendor = read_hex_optional(fs, &attr(&address, "subsystem_vendor"))?;
    let sub_device = read_hex_optional(fs, &attr(&address, "subsystem_device"))?;
    let subsystem = match (sub_vendor, sub_device) {
        (Some(v), Some(d)) => Some(format!("{v:04x}:{d:04x}")),
        _ => None,
    };
    let driver = link_basename(fs, attr(&address, "driver"))?;
    Ok(PciDevice {
        address,
        vendor_id,
        device_id,
        class,
        revision,
        subsystem,
        driver,
        vendor_name: None,
        device_name: None,
        class_name: None,
    })
}

/// `(domain:bus:slot, function)` of an address such as `0000:00:02.1`.
pub(crate) fn split_function(address: &str) -> Option<(&str, u8)> {
    let (slot, function) = address.rsplit_once('.')?;
    Some((slot, function.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_slot_and_function() {
        assert_eq!(split_function("0000:00:02.1"), Some(("0000:00:02", 1)));
        assert_eq!(split_function("0000:03:00.0"), Some(("0000:03:00", 0)));
        assert_eq!(split_function("garbage"), None);
    }

    #[test]
    fn nfd_class_drops_the_programming_interface() {
        let dev = PciDevice {
            address: "0000:00:02.0".into(),
            vendor_id: VENDOR_INTEL,
            device_id: 0x46a6,
            class: 0x038000,
            revision: None,
            subsystem: None,
            driver: None,
            vendor_name: None,
            device_name: None,
            class_name: None,
        };
        assert_eq!(dev.nfd_class(), 0x0380);
        assert_eq!((dev.base_class(), dev.subclass()), (0x03, 0x80));
    }
}
