//! Test fixtures: the real sysfs/procfs snapshots in `tests/fixtures/hardware`, and
//! Intel GPU machines built as directory trees in the same layout.
//!
//! No machine with an Intel GPU was available, so each Intel scenario below is built from
//! public `lspci -nnk` output (quoted above each one): vendor, device, class, revision,
//! bound driver, plus the sysfs shape the kernel gives such a device. The layout mirrors
//! the real snapshots: `sys/bus/pci/devices/<addr>` is a relative link into
//! `sys/devices/pci0000:00/…`, `driver` a relative link into `sys/bus/pci/drivers`,
//! `sys/class/drm/cardN` a relative link to `…/<addr>/drm/cardN`. Variants that change one
//! thing (firmware gone, render node gone, vfio-pci) are made in the tests themselves.

use std::path::{Path, PathBuf};
use std::process::Command;

use elysium_host::RootFs;

/// A real snapshot, unpacked into a temporary directory with `tar`.
#[derive(Debug)]
pub struct Snapshot {
    dir: tempfile::TempDir,
}

impl Snapshot {
    /// `name` in the repository's `tests/fixtures/hardware/` (see its README).
    pub fn unpack(name: &str) -> Self {
        let tarball = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hardware").join(name);
        assert!(tarball.exists(), "fixture {} is missing", tarball.display());
        let dir = tempfile::tempdir().unwrap();
        let status =
            Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(dir.path()).status().unwrap();
        assert!(status.success(), "tar -xzf {} failed", tarball.display());
        Snapshot { dir }
    }

    pub fn fs(&self) -> RootFs {
        RootFs::new(self.dir.path())
    }
}

/// A root directory built file by file. Paths are node paths (`/sys/...`).
#[derive(Debug)]
pub struct FixtureRoot {
    dir: tempfile::TempDir,
}

/// One PCI function to create.
#[derive(Debug)]
pub struct PciFn<'a> {
    pub address: &'a str,
    /// Its parent below `/sys/devices`: `pci0000:00` for a root-complex device, longer
    /// behind bridges (`pci0000:00/0000:00:01.0`).
    pub parent: &'a str,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub revision: u8,
    pub driver: Option<&'a str>,
}

impl FixtureRoot {
    pub fn new() -> Self {
        FixtureRoot { dir: tempfile::tempdir().unwrap() }
    }

    pub fn fs(&self) -> RootFs {
        RootFs::new(self.dir.path())
    }

    fn real(&self, path: &str) -> PathBuf {
        self.fs().resolve(path)
    }

    pub fn file(&self, path: &str, contents: &str) -> &Self {
        let real = self.real(path);
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        std::fs::write(real, contents).unwrap();
        self
    }

    pub fn dir(&self, path: &str) -> &Self {
        std::fs::create_dir_all(self.real(path)).unwrap();
        self
    }

    /// A relative symlink, as sysfs has them.
    pub fn symlink(&self, link: &str, target: &str) -> &Self {
        assert!(!target.starts_with('/'), "sysfs links are relative: {target}");
        let real = self.real(link);
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&real);
        std::os::unix::fs::symlink(target, real).unwrap();
        self
    }

    /// Removes a file, a link or a whole directory.
    pub fn remove(&self, path: &str) -> &Self {
        let real = self.real(path);
        let meta = std::fs::symlink_metadata(&real).unwrap();
        if meta.is_dir() {
            std::fs::remove_dir_all(real).unwrap();
        } else {
            std::fs::remove_file(real).unwrap();
        }
        self
    }

    pub fn pci(&self, f: &PciFn) -> &Self {
        let dev = format!("/sys/devices/{}/{}", f.parent, f.address);
        self.file(&format!("{dev}/vendor"), &format!("0x{:04x}\n", f.vendor))
            .file(&format!("{dev}/device"), &format!("0x{:04x}\n", f.device))
            .file(&format!("{dev}/class"), &format!("0x{:06x}\n", f.class))
            .file(&format!("{dev}/revision"), &format!("0x{:02x}\n", f.revision))
            .file(&format!("{dev}/subsystem_vendor"), &format!("0x{:04x}\n", f.vendor))
            .file(&format!("{dev}/subsystem_device"), &format!("0x{:04x}\n", f.device))
            .symlink(
                &format!("/sys/bus/pci/devices/{}", f.address),
                &format!("../../../devices/{}/{}", f.parent, f.address),
            )
            .rebind(f.address, f.parent, f.driver)
    }

    /// Binds (or unbinds, with `None`) a driver: `<dev>/driver -> ../…/bus/pci/drivers/<d>`.
    pub fn rebind(&self, address: &str, parent: &str, driver: Option<&str>) -> &Self {
        let dev = format!("/sys/devices/{parent}/{address}");
        let link = format!("{dev}/driver");
        if std::fs::symlink_metadata(self.real(&link)).is_ok() {
            self.remove(&link);
        }
        if let Some(d) = driver {
            // From <dev> up to /sys: one `..` per component of `devices/<parent>/<address>`.
            let ups = "../".repeat(2 + parent.split('/').count());
            self.dir(&format!("/sys/bus/pci/drivers/{d}"))
                .symlink(&link, &format!("{ups}bus/pci/drivers/{d}"));
        }
        self
    }

    /// DRM card (and render node) of a bound GPU: `<dev>/drm/cardN`, the
    /// `/sys/class/drm` links the plugin scans, and the `/dev/dri` nodes it stats.
    pub fn drm(&self, address: &str, parent: &str, card: u32, render: Option<u32>) -> &Self {
        let dev = format!("/sys/devices/{parent}/{address}");
        let mut names = vec![format!("card{card}")];
        names.extend(render.map(|r| format!("renderD{r}")));
        for name in names {
            self.symlink(&format!("{dev}/drm/{name}/device"), &format!("../../../{address}"))
                .file(&format!("{dev}/drm/{name}/dev"), "226:0\n")
                .symlink(
                    &format!("/sys/class/drm/{name}"),
                    &format!("../../devices/{parent}/{address}/drm/{name}"),
                )
                .file(&format!("/dev/dri/{name}"), "");
        }
        self
    }

    /// `/proc/modules` listing `names` as live modules.
    pub fn modules(&self, names: &[&str]) -> &Self {
        let text: String = names.iter().map(|n| format!("{n} 16384 0 - Live 0x0000000000000000\n")).collect();
        self.file("/proc/modules", &text)
    }

    /// Files under `/lib/firmware` (`i915/adlp_guc_70.bin`).
    pub fn firmware(&self, files: &[&str]) -> &Self {
        for f in files {
            self.file(&format!("/lib/firmware/{f}"), "firmware");
        }
        self
    }

    /// i915 debugfs for DRM minor `minor`: `gt0/uc/{usage,guc_info,huc_info}`.
    pub fn uc_debugfs(&self, minor: u32, usage: &str, guc_info: &str, huc_info: &str) -> &Self {
        let uc = format!("/sys/kernel/debug/dri/{minor}/gt0/uc");
        self.file(&format!("{uc}/usage"), usage)
            .file(&format!("{uc}/guc_info"), guc_info)
            .file(&format!("{uc}/huc_info"), huc_info)
    }
}

/// The lines of `pci.ids` for the ids used below, as in Debian bookworm's pci.ids
/// (0.0~2023.04.11); `64a0` (Lunar Lake) is newer than that file and comes from a later one.
const PCI_IDS: &str = "\
# excerpt for tests
10de  NVIDIA Corporation
\t1401  GM206 [GeForce GTX 960]
8086  Intel Corporation
\t0412  Xeon E3-1200 v3/4th Gen Core Processor Integrated Graphics Controller
\t0a16  Haswell-ULT Integrated Graphics Controller
\t2582  82915G/GV/910GL Integrated Graphics Controller
\t2782  82915G Integrated Graphics Controller
\t46a6  Alder Lake-P Integrated Graphics Controller
\t4905  DG1 [Iris Xe MAX Graphics]
\t56a5  DG2 [Arc A380]
\t64a0  Lunar Lake [Intel Arc Graphics 130V / 140V]
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t00  VGA compatible controller
\t02  3D controller
\t80  Display controller
C 06  Bridge
\t00  Host bridge
\t04  PCI bridge
";

const ROOT: &str = "pci0000:00";
const ALL_YES: &str = "[guc] supported:yes wanted:yes used:yes\n\
                       [huc] supported:yes wanted:yes used:yes\n\
                       [submission] supported:yes wanted:yes used:yes\n";

fn base() -> FixtureRoot {
    let root = FixtureRoot::new();
    root.file("/usr/share/misc/pci.ids", PCI_IDS).file("/proc/sys/kernel/osrelease", "6.8.0-45-generic\n");
    root
}

fn intel_fn<'a>(
    address: &'a str,
    parent: &'a str,
    device: u16,
    class: u32,
    rev: u8,
    driver: Option<&'a str>,
) -> PciFn<'a> {
    PciFn { address, parent, vendor: 0x8086, device, class, revision: rev, driver }
}

/// ThinkPad-class Alder Lake-P laptop:
/// ```text
/// 00:00.0 Host bridge [0600]: Intel Corporation Device [8086:4621] (rev 02)
/// 00:02.0 Display controller [0380]: Intel Corporation Alder Lake-P Integrated Graphics Controller [8086:46a6] (rev 0c)
///         Kernel driver in use: i915
///         Kernel modules: i915, xe
/// 00:1f.6 Ethernet controller [0200]: Intel Corporation Ethernet Connection (16) I219-LM [8086:1a1e]
///         Kernel driver in use: e1000e
/// ```
/// Both i915 and xe are loaded (udev loads every module whose alias matches; xe does not
/// bind ADL-P without force_probe). GuC submission is the default on ADL-P, and
/// linux-firmware's `adlp_guc_70.bin` / `tgl_huc.bin` / `adlp_dmc.bin` are installed.
pub fn alder_lake_p() -> FixtureRoot {
    let root = base();
    root.pci(&intel_fn("0000:00:00.0", ROOT, 0x4621, 0x060000, 0x02, None))
        .pci(&intel_fn("0000:00:02.0", ROOT, 0x46a6, 0x038000, 0x0c, Some("i915")))
        .drm("0000:00:02.0", ROOT, 0, Some(128))
        .pci(&intel_fn("0000:00:1f.6", ROOT, 0x1a1e, 0x020000, 0x01, Some("e1000e")))
        .file("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/mtu", "1500\n")
        .file("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/operstate", "up\n")
        .symlink("/sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6/device", "../../../0000:00:1f.6")
        .symlink("/sys/class/net/enp0s31f6", "../../devices/pci0000:00/0000:00:1f.6/net/enp0s31f6")
        .modules(&["i915", "xe", "e1000e", "drm_buddy", "ttm"])
        .file("/sys/module/i915/parameters/enable_guc", "-1\n")
        .firmware(&["i915/adlp_dmc.bin", "i915/adlp_guc_70.bin", "i915/tgl_huc.bin"])
        .uc_debugfs(
            0,
            ALL_YES,
            "GuC firmware: i915/adlp_guc_70.bin\n\tstatus: RUNNING\n\tversion: wanted 70.5.1, found 70.20.0\n",
            "HuC firmware: i915/tgl_huc.bin\n\tstatus: RUNNING\n\tversion: found 7.9.3\n",
        );
    root
}

/// The same laptop with linux-firmware lacking the GuC blob: i915 logs "GuC firmware
/// i915/adlp_guc_70.bin: fetch failed -ENOENT" and wedges the GT, yet the card and render
/// nodes still exist (so the plugin alone would offer a dead GPU).
pub fn alder_lake_p_guc_missing() -> FixtureRoot {
    let root = alder_lake_p();
    root.remove("/lib/firmware/i915/adlp_guc_70.bin").uc_debugfs(
        0,
        "[guc] supported:yes wanted:yes used:no\n\
         [huc] supported:yes wanted:yes used:no\n\
         [submission] supported:yes wanted:yes used:no\n",
        "GuC firmware: i915/adlp_guc_70.bin\n\tstatus: MISSING\n",
        "HuC firmware: i915/tgl_huc.bin\n\tstatus: ERROR\n",
    );
    root
}

/// Alder Lake-P with SR-IOV enabled (`echo 2 > sriov_numvfs`): the PF keeps i915, the
/// two VFs (same device id, `physfn` link back to the PF) get their own DRM cards.
pub fn alder_lake_p_sriov() -> FixtureRoot {
    let root = alder_lake_p();
    root.file("/sys/devices/pci0000:00/0000:00:02.0/sriov_totalvfs", "7\n")
        .file("/sys/devices/pci0000:00/0000:00:02.0/sriov_numvfs", "2\n");
    for (vf, card) in [("0000:00:02.1", 1), ("0000:00:02.2", 2)] {
        root.pci(&intel_fn(vf, ROOT, 0x46a6, 0x038000, 0x0c, Some("i915")))
            .symlink(&format!("/sys/devices/pci0000:00/{vf}/physfn"), "../0000:00:02.0")
            .drm(vf, ROOT, card, Some(128 + card));
    }
    root
}

/// Discrete DG1 in a desktop slot:
/// ```text
/// 00:01.0 PCI bridge [0604]: Intel Corporation 6th-10th Gen Core Processor PCIe Controller (x16) [8086:1901] (rev 05)
///         Kernel driver in use: pcieport
/// 01:00.0 VGA compatible controller [0300]: Intel Corporation DG1 [Iris Xe MAX Graphics] [8086:4905] (rev 01)
///         Kernel driver in use: i915
///         Kernel modules: i915
/// ```
/// Run without root: no debugfs.
pub fn dg1() -> FixtureRoot {
    let root = base();
    let behind = "pci0000:00/0000:00:01.0";
    root.pci(&intel_fn("0000:00:01.0", ROOT, 0x1901, 0x060400, 0x05, Some("pcieport")))
        .pci(&intel_fn("0000:01:00.0", behind, 0x4905, 0x030000, 0x01, Some("i915")))
        .drm("0000:01:00.0", behind, 0, Some(128))
        .modules(&["i915"])
        .file("/sys/module/i915/parameters/enable_guc", "-1\n")
        .firmware(&["i915/dg1_dmc_ver2_02.bin", "i915/dg1_guc_70.bin", "i915/dg1_huc.bin"]);
    root
}

/// Haswell ultrabook booted with i915 blacklisted (or `nomodeset`):
/// ```text
/// 00:02.0 VGA compatible controller [0300]: Intel Corporation Haswell-ULT Integrated Graphics Controller [8086:0a16] (rev 0b)
///         Kernel modules: i915
/// ```
pub fn haswell_no_module() -> FixtureRoot {
    let root = base();
    root.pci(&intel_fn("0000:00:00.0", ROOT, 0x0a04, 0x060000, 0x0b, None))
        .pci(&intel_fn("0000:00:02.0", ROOT, 0x0a16, 0x030000, 0x0b, None))
        .modules(&["snd_hda_intel", "thinkpad_acpi", "e1000e"]);
    root
}

/// Hybrid graphics, Intel iGPU plus NVIDIA on the PEG port, nvidia-drm with modeset=1 (so
/// the NVIDIA card has DRM nodes too):
/// ```text
/// 00:02.0 VGA compatible controller [0300]: Intel Corporation Xeon E3-1200 v3/4th Gen Core Processor Integrated Graphics Controller [8086:0412] (rev 06)
///         Kernel driver in use: i915
/// 01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GM206 [GeForce GTX 960] [10de:1401] (rev a1)
///         Kernel driver in use: nvidia
/// ```
pub fn hybrid_laptop() -> FixtureRoot {
    let root = base();
    let behind = "pci0000:00/0000:00:01.0";
    root.pci(&intel_fn("0000:00:01.0", ROOT, 0x0c01, 0x060400, 0x06, Some("pcieport")))
        .pci(&intel_fn("0000:00:02.0", ROOT, 0x0412, 0x030000, 0x06, Some("i915")))
        .drm("0000:00:02.0", ROOT, 0, Some(128))
        .pci(&PciFn {
            address: "0000:01:00.0",
            parent: behind,
            vendor: 0x10de,
            device: 0x1401,
            class: 0x030000,
            revision: 0xa1,
            driver: Some("nvidia"),
        })
        .drm("0000:01:00.0", behind, 1, Some(129))
        .modules(&["i915", "nvidia", "nvidia_modeset", "nvidia_drm", "nvidia_uvm"]);
    root
}

/// i915-era desktop whose graphics has a second function for the second head, which no
/// driver binds:
/// ```text
/// 00:02.0 VGA compatible controller [0300]: Intel Corporation 82915G/GV/910GL Integrated Graphics Controller [8086:2582] (rev 04)
///         Kernel driver in use: i915
/// 00:02.1 Display controller [0380]: Intel Corporation 82915G Integrated Graphics Controller [8086:2782] (rev 04)
/// ```
pub fn i915g_multifunction() -> FixtureRoot {
    let root = base();
    root.pci(&intel_fn("0000:00:00.0", ROOT, 0x2580, 0x060000, 0x04, None))
        .pci(&intel_fn("0000:00:02.0", ROOT, 0x2582, 0x030000, 0x04, Some("i915")))
        .drm("0000:00:02.0", ROOT, 0, Some(128))
        .pci(&intel_fn("0000:00:02.1", ROOT, 0x2782, 0x038000, 0x04, None))
        .modules(&["i915"]);
    root
}

/// Lunar Lake, which only xe drives:
/// ```text
/// 00:02.0 VGA compatible controller [0300]: Intel Corporation Lunar Lake [Intel Arc Graphics 130V / 140V] [8086:64a0] (rev 04)
///         Kernel driver in use: xe
///         Kernel modules: xe
/// ```
pub fn lunar_lake_xe() -> FixtureRoot {
    let root = base();
    root.pci(&intel_fn("0000:00:02.0", ROOT, 0x64a0, 0x030000, 0x04, Some("xe")))
        .drm("0000:00:02.0", ROOT, 0, Some(128))
        .modules(&["xe", "drm_gpuvm", "drm_exec"])
        .firmware(&["xe/lnl_guc_70.bin", "xe/lnl_huc.bin", "xe/lnl_gsc_1.bin"]);
    root
}

/// Arc A380 (DG2) behind its own PCIe switch on a 5.19 kernel, where DG2 still needed
/// `i915.force_probe=56a5`: i915 is loaded, the device stays unbound ("Your graphics
/// device 56a5 is not properly supported by the driver in this kernel version").
/// ```text
/// 01:00.0 PCI bridge [0604]: Intel Corporation Device [8086:4fa1] (rev 01)
/// 02:01.0 PCI bridge [0604]: Intel Corporation Device [8086:4fa4]
/// 03:00.0 VGA compatible controller [0300]: Intel Corporation DG2 [Arc A380] [8086:56a5] (rev 05)
///         Kernel modules: i915
/// ```
pub fn arc_a380_unbound() -> FixtureRoot {
    let root = base();
    arc_a380(&root, None);
    root.modules(&["i915", "snd_hda_intel"]).firmware(&["i915/dg2_dmc_ver2_08.bin", "i915/dg2_guc_70.bin"]);
    root
}

/// Adds the Arc A380 of [`arc_a380_unbound`] bound to xe as `card1`, to a machine that
/// has a `card0` already.
pub fn add_dg2_on_xe(root: &FixtureRoot) {
    arc_a380(root, Some("xe"));
    root.drm("0000:03:00.0", ARC_PARENT, 1, Some(129));
}

const ARC_PARENT: &str = "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0";

fn arc_a380(root: &FixtureRoot, driver: Option<&str>) {
    root.pci(&intel_fn("0000:00:01.0", ROOT, 0x460d, 0x060400, 0x02, Some("pcieport")))
        .pci(&intel_fn("0000:01:00.0", "pci0000:00/0000:00:01.0", 0x4fa1, 0x060400, 0x01, Some("pcieport")))
        .pci(&intel_fn(
            "0000:02:01.0",
            "pci0000:00/0000:00:01.0/0000:01:00.0",
            0x4fa4,
            0x060400,
            0x00,
            Some("pcieport"),
        ))
        .pci(&intel_fn("0000:03:00.0", ARC_PARENT, 0x56a5, 0x030000, 0x05, driver));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_layout_matches_the_real_snapshots() {
        let root = alder_lake_p();
        let real = |p: &str| root.fs().resolve(p);
        // Links are relative and resolve inside the root, as in the tarballs.
        assert_eq!(
            std::fs::read_link(real("/sys/bus/pci/devices/0000:00:02.0")).unwrap(),
            Path::new("../../../devices/pci0000:00/0000:00:02.0")
        );
        assert_eq!(
            std::fs::read_to_string(real("/sys/bus/pci/devices/0000:00:02.0/vendor")).unwrap(),
            "0x8086\n"
        );
        assert!(
            real("/sys/bus/pci/devices/0000:00:02.0/driver")
                .canonicalize()
                .unwrap()
                .ends_with("drivers/i915")
        );
        assert_eq!(
            std::fs::read_to_string(real("/sys/class/drm/card0/device/device")).unwrap(),
            "0x46a6\n",
            "the plugin's path: cardN/device/… reaches the PCI function"
        );
        let arc = FixtureRoot::new();
        add_dg2_on_xe(&arc);
        assert!(real_path(&arc, "/sys/bus/pci/devices/0000:03:00.0/driver").ends_with("drivers/xe"));
    }

    fn real_path(root: &FixtureRoot, p: &str) -> PathBuf {
        root.fs().resolve(p).canonicalize().unwrap()
    }
}
