//! Machine vendor and model from the DMI/SMBIOS table the kernel exports.
//!
//! Only the world-readable identity fields are read. `product_serial`, `product_uuid`,
//! `board_serial` and `chassis_serial` (root-only in the kernel for a reason) are never
//! opened.

use std::path::Path;

use elysium_host::RootFs;
use serde::{Deserialize, Serialize};

use super::HardwareError;
use super::sysfs::read_optional;

/// drivers/firmware/dmi-id.c; absent on machines without SMBIOS (many ARM boards, some VMs).
const SYS_DMI_ID: &str = "/sys/class/dmi/id";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dmi {
    pub sys_vendor: Option<String>,
    pub product_name: Option<String>,
    pub product_version: Option<String>,
    pub board_vendor: Option<String>,
    pub board_name: Option<String>,
    pub bios_vendor: Option<String>,
    pub bios_version: Option<String>,
}

impl Dmi {
    /// "LENOVO 21AH" style one-liner for tables; empty fields are skipped.
    pub fn summary(&self) -> String {
        [&self.sys_vendor, &self.product_name, &self.product_version]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub(crate) fn read(fs: &RootFs) -> Result<Option<Dmi>, HardwareError> {
    let field = |name: &str| -> Result<Option<String>, HardwareError> {
        Ok(read_optional(fs, Path::new(SYS_DMI_ID).join(name))?.filter(|v| !v.is_empty()))
    };
    let dmi = Dmi {
        sys_vendor: field("sys_vendor")?,
        product_name: field("product_name")?,
        product_version: field("product_version")?,
        board_vendor: field("board_vendor")?,
        board_name: field("board_name")?,
        bios_vendor: field("bios_vendor")?,
        bios_version: field("bios_version")?,
    };
    Ok((dmi != Dmi::default()).then_some(dmi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::fixtures::FixtureRoot;

    #[test]
    fn reads_identity_and_never_serials() {
        let root = FixtureRoot::new();
        root.file("/sys/class/dmi/id/sys_vendor", "LENOVO\n")
            .file("/sys/class/dmi/id/product_name", "21AH\n")
            .file("/sys/class/dmi/id/product_version", "ThinkPad T14 Gen 3\n")
            .file("/sys/class/dmi/id/product_serial", "PF3ABCDE\n");
        let dmi = read(&root.fs()).unwrap().unwrap();
        assert_eq!(dmi.summary(), "LENOVO 21AH ThinkPad T14 Gen 3");
        assert!(!serde_json::to_string(&dmi).unwrap().contains("PF3ABCDE"));
        assert_eq!(read(&FixtureRoot::new().fs()).unwrap(), None);
    }
}
