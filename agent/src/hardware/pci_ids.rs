//! Names for PCI ids from the system's own `pci.ids` (the file lspci reads), when it has
//! one. Nothing is bundled: a machine without the file simply gets no names.
//!
//! Format (header of pci.ids itself): `vvvv  vendor`, `\tdddd  device`,
//! `\t\tssss ssss  subsystem`; after the vendors, `C cc  class`, `\tss  subclass`,
//! `\t\tpp  programming interface`. Only the ids present on this machine are looked up.

use std::collections::{BTreeMap, BTreeSet};

use elysium_host::RootFs;

use super::HardwareError;
use super::pci::PciDevice;

/// Where distributions install the list: Debian/Ubuntu (`pci.ids` package) and
/// Fedora/Arch (`hwdata`). lspci tries the same two.
pub const PCI_IDS_PATHS: [&str; 2] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

#[derive(Debug, Default, PartialEq)]
pub(crate) struct Names {
    pub vendors: BTreeMap<u16, String>,
    pub devices: BTreeMap<(u16, u16), String>,
    pub classes: BTreeMap<u8, String>,
    pub subclasses: BTreeMap<(u8, u8), String>,
}

/// Fills `vendor_name`, `device_name` and `class_name` from the first `pci.ids` found.
pub(crate) fn name_devices(fs: &RootFs, devices: &mut [PciDevice]) -> Result<(), HardwareError> {
    if devices.is_empty() {
        return Ok(());
    }
    let Some(text) = read_pci_ids(fs)? else { return Ok(()) };
    let wanted: BTreeSet<(u16, u16)> = devices.iter().map(|d| (d.vendor_id, d.device_id)).collect();
    let classes: BTreeSet<(u8, u8)> = devices.iter().map(|d| (d.base_class(), d.subclass())).collect();
    let names = lookup(&text, &wanted, &classes);
    for d in devices {
        d.vendor_name = names.vendors.get(&d.vendor_id).cloned();
        d.device_name = names.devices.get(&(d.vendor_id, d.device_id)).cloned();
        // Like lspci: the subclass name, else the class name (`Unassigned class [ffff]`).
        d.class_name = names
            .subclasses
            .get(&(d.base_class(), d.subclass()))
            .or_else(|| names.classes.get(&d.base_class()))
            .cloned();
    }
    Ok(())
}

fn read_pci_ids(fs: &RootFs) -> Result<Option<Vec<u8>>, HardwareError> {
    for path in PCI_IDS_PATHS {
        if let Some(bytes) = fs.read_optional(path)? {
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// The names of the `wanted` (vendor, device) pairs and `classes` (base class, subclass).
///
/// pci.ids is 1.3 MB and a line-by-line scan of it costs over a millisecond; instead each
/// wanted vendor's line (`\n8086  `) and each class line (`\nC 03  `) is found with a SIMD
/// substring search, and only the block of lines under it is searched for the devices or
/// subclasses asked for.
pub(crate) fn lookup(text: &[u8], wanted: &BTreeSet<(u16, u16)>, classes: &BTreeSet<(u8, u8)>) -> Names {
    let mut names = Names::default();
    let vendors: BTreeSet<u16> = wanted.iter().map(|(v, _)| *v).collect();
    for v in vendors {
        let Some((name, block)) = top_level(text, &format!("{v:04x}  ")) else { continue };
        names.vendors.insert(v, name);
        for &(_, d) in wanted.range((v, 0)..=(v, u16::MAX)) {
            if let Some(name) = child(block, &format!("\n\t{d:04x}  ")) {
                names.devices.insert((v, d), name);
            }
        }
    }
    // Classes come after all vendors, and no vendor line starts with `C ` (ids are
    // lowercase hex): search them in that tail only.
    let class_section = memchr::memmem::find(text, b"\nC ").map_or(&text[..0], |i| &text[i..]);
    let bases: BTreeSet<u8> = classes.iter().map(|(c, _)| *c).collect();
    for c in bases {
        let Some((name, block)) = top_level(class_section, &format!("C {c:02x}  ")) else { continue };
        names.classes.insert(c, name);
        for &(_, sub) in classes.range((c, 0)..=(c, u8::MAX)) {
            if let Some(name) = child(block, &format!("\n\t{sub:02x}  ")) {
                names.subclasses.insert((c, sub), name);
            }
        }
    }
    names
}

/// The top-level line starting with `prefix` (a vendor or a class): its name, and the block
/// of indented lines under it, which starts with the newline ending that line.
fn top_level<'a>(text: &'a [u8], prefix: &str) -> Option<(String, &'a [u8])> {
    let line_start = if text.starts_with(prefix.as_bytes()) {
        0
    } else {
        memchr::memmem::find(text, format!("\n{prefix}").as_bytes())? + 1
    };
    let name_start = line_start + prefix.len();
    let name_end = memchr::memchr(b'\n', &text[name_start..]).map_or(text.len(), |i| name_start + i);
    // The block ends at the next line that is neither indented nor a comment nor blank.
    let end = memchr::memchr_iter(b'\n', &text[name_end..])
        .map(|i| name_end + i)
        .find(|&nl| !matches!(text.get(nl + 1), Some(b'\t' | b'#' | b'\n' | b'\r')))
        .unwrap_or(text.len());
    Some((name(&text[name_start..name_end]), &text[name_end..end]))
}

/// The name on the line `needle` (`\n\t46a6  `) inside `block`.
fn child(block: &[u8], needle: &str) -> Option<String> {
    let start = memchr::memmem::find(block, needle.as_bytes())? + needle.len();
    let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |i| start + i);
    Some(name(&block[start..end]))
}

fn name(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
0000  Ignored vendor
10de  NVIDIA Corporation
\t1401  GM206 [GeForce GTX 960]
\t\t10de 1401  Subsystem line
8086  Intel Corporation
\t0412  Xeon E3-1200 v3/4th Gen Core Processor Integrated Graphics Controller
\t46a6  Alder Lake-P GT2 [Iris Xe Graphics]
\t\t17aa 22d8  ThinkPad
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t00  VGA compatible controller
\t\t00  VGA controller
\t80  Display controller
";

    #[test]
    fn finds_only_what_is_asked() {
        let wanted = BTreeSet::from([
            (0x8086, 0x46a6),
            (0x10de, 0x1401),
            (0x8086, 0xffff),
            (0x8086, 0x1401),
            (0x8086, 0x17aa),
        ]);
        let classes = BTreeSet::from([(0x03, 0x00), (0x03, 0x80)]);
        let names = lookup(SAMPLE.as_bytes(), &wanted, &classes);
        assert_eq!(names.vendors.len(), 2);
        assert_eq!(names.devices[&(0x8086, 0x46a6)], "Alder Lake-P GT2 [Iris Xe Graphics]");
        assert_eq!(names.devices[&(0x10de, 0x1401)], "GM206 [GeForce GTX 960]");
        assert!(!names.devices.contains_key(&(0x8086, 0x0412)), "not asked for");
        assert!(!names.devices.contains_key(&(0x8086, 0xffff)), "not in the list");
        assert!(!names.devices.contains_key(&(0x8086, 0x1401)), "1401 is NVIDIA's, not Intel's");
        assert!(!names.devices.contains_key(&(0x8086, 0x17aa)), "a subsystem line is not a device");
        assert_eq!(names.subclasses[&(0x03, 0x00)], "VGA compatible controller");
        assert_eq!(names.subclasses[&(0x03, 0x80)], "Display controller");
        assert!(!names.subclasses.contains_key(&(0x02, 0x00)));
        assert_eq!(names.classes[&0x03], "Display controller");
        assert!(!names.classes.contains_key(&0x02));
        // The first line of the file can be a vendor line too.
        let names = lookup(b"8086  Intel Corporation\n\t46a6  ADL\n", &wanted, &classes);
        assert_eq!(names.devices[&(0x8086, 0x46a6)], "ADL");
    }
}
