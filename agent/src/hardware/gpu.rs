//! Intel GPU detection, as precise as the Intel GPU device plugin and node-feature-discovery
//! (NFD) together, plus a verdict per GPU: would the plugin hand it to pods on this node?
//!
//! What each of them checks, from their sources:
//! - NFD's `intel.gpu` NodeFeatureRule (intel-device-plugins-for-kubernetes:
//!   deployments/nfd/overlays/node-feature-rules/node-feature-rules.yaml) labels the node
//!   `intel.feature.node.kubernetes.io/gpu=true` when some PCI device has vendor `8086` and
//!   class `0300` or `0380` **and** module `i915` or `xe` is loaded (`/proc/modules`) or
//!   built in (`/lib/modules/<release>/modules.builtin`). The plugin's DaemonSet is
//!   scheduled only on nodes with that label (`nfd_labeled_nodes` overlay).
//! - The plugin (cmd/gpu_plugin/gpu_plugin.go) scans `/sys/class/drm/card[0-9]+`, keeps
//!   cards whose `device/vendor` is `0x8086` (it does **not** check the class) and that
//!   have `device/drm`; skips SR-IOV physical functions with VFs enabled; exposes every
//!   `device/drm/*` entry except `controlD*` whose `/dev/dri/<name>` exists; and files the
//!   card under `gpu.intel.com/<driver>`, the driver being the basename of
//!   `device/driver` (`i915` or `xe`).
//!
//! Detection starts from PCI, not from DRM, so a GPU without a driver (and so without a
//! DRM card) is still reported, with the reason it cannot be used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use elysium_host::RootFs;
use serde::{Deserialize, Serialize};

use super::HardwareError;
use super::pci::{self, BASE_CLASS_DISPLAY, PciDevice, VENDOR_INTEL};
use super::pci_ids;
use super::sysfs::{link_target, list_dir, read_best_effort, read_optional};
use super::system;

/// The plugin's scan root (`sysfsDrmDirectory`).
pub const SYS_CLASS_DRM: &str = "/sys/class/drm";
/// Where the plugin expects the nodes it hands to containers (`devfsDriDirectory`).
pub const DEV_DRI: &str = "/dev/dri";
/// NFD `kernel.loadedmodule` (source/kernel/modules.go `kmodProcfsPath`).
pub const PROC_MODULES: &str = "/proc/modules";
/// NFD `kernel.enabledmodule` adds `/lib/modules/<release>/modules.builtin`.
pub const LIB_MODULES: &str = "/lib/modules";
/// i915 module parameter: -1 auto (default), 0 off, bit 0 GuC submission, bit 1 HuC load.
pub const I915_ENABLE_GUC: &str = "/sys/module/i915/parameters/enable_guc";
/// debugfs mount point; root-only (mode 0700) and often not mounted.
pub const DEBUGFS: &str = "/sys/kernel/debug";
/// Per-DRM-minor debugfs directories (`<minor>`; newer kernels also by PCI address).
pub const DEBUGFS_DRI: &str = "/sys/kernel/debug/dri";
/// Firmware search root of the kernel's loader; i915 asks for `i915/<plat>_{guc,huc,dmc}…`,
/// xe for `xe/…` (newer platforms) or `i915/…`.
pub const LIB_FIRMWARE: &str = "/lib/firmware";
pub const FIRMWARE_DIRS: [&str; 2] = ["i915", "xe"];
/// CONFIG_FW_LOADER_COMPRESS lets the loader find `<name>.zst` / `<name>.xz` too.
const FIRMWARE_SUFFIXES: [&str; 3] = ["", ".zst", ".xz"];

pub const DRIVER_I915: &str = "i915";
pub const DRIVER_XE: &str = "xe";
/// Resource namespace of the plugin: `gpu.intel.com/i915`, `gpu.intel.com/xe`.
pub const PLUGIN_RESOURCE_NAMESPACE: &str = "gpu.intel.com";
/// Classes NFD's `intel.gpu` rule accepts (4 hex digits: class + subclass).
pub const NFD_GPU_CLASSES: [u16; 2] = [0x0300, 0x0380];

/// Whether a kernel module is there, as NFD sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleState {
    /// Listed in `/proc/modules`.
    Loaded,
    /// Listed in `modules.builtin` for the running kernel.
    Builtin,
    Absent,
}

impl ModuleState {
    pub fn present(self) -> bool {
        self != ModuleState::Absent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelModules {
    pub i915: ModuleState,
    pub xe: ModuleState,
}

impl KernelModules {
    pub fn any_present(&self) -> bool {
        self.i915.present() || self.xe.present()
    }
}

/// Whether GuC/HuC state could be read from debugfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebugfsAccess {
    Readable,
    NotMounted,
    /// debugfs is root-only; run as root to see GuC/HuC state.
    PermissionDenied,
}

/// A DRM device node of a GPU, as the plugin would hand it to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrmNode {
    /// `card0`, `renderD128`.
    pub name: String,
    /// `/dev/dri/card0`.
    pub dev_path: String,
    /// Whether `dev_path` exists (the plugin skips nodes it cannot stat).
    pub present: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UcFlags {
    pub supported: bool,
    pub wanted: bool,
    pub used: bool,
}

/// `gt0/uc/usage` (i915 only; drivers/gpu/drm/i915/gt/uc/intel_uc_debugfs.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UcUsage {
    pub guc: UcFlags,
    pub huc: UcFlags,
    pub submission: UcFlags,
}

/// One microcontroller firmware as the driver reports it in `guc_info` / `huc_info`
/// (`intel_uc_fw_dump`: `GuC firmware: <path>` then `\tstatus: <STATUS>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UcFirmware {
    /// Relative to `/lib/firmware`: `i915/adlp_guc_70.bin`.
    pub path: String,
    /// `RUNNING`, `TRANSFERRED`, `MISSING`, `ERROR`, `LOAD FAIL`... (intel_uc_fw_status_repr).
    pub status: String,
    /// Whether the file (or a `.zst`/`.xz` of it) exists under `/lib/firmware`.
    pub file_present: bool,
}

impl UcFirmware {
    /// Statuses that mean the firmware is not running and will not be: the file is
    /// missing or broken, or loading it failed.
    pub fn failed(&self) -> bool {
        matches!(self.status.as_str(), "MISSING" | "ERROR" | "FAIL" | "INIT FAIL" | "LOAD FAIL")
    }
}

/// GuC/HuC state from debugfs, where the kernel exposes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GucHuc {
    pub usage: Option<UcUsage>,
    pub guc: Option<UcFirmware>,
    pub huc: Option<UcFirmware>,
}

/// What was read about one Intel display-class PCI function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuFacts {
    pub address: String,
    #[serde(with = "super::hex::id16")]
    pub device_id: u16,
    #[serde(with = "super::hex::class24")]
    pub class: u32,
    /// From `pci.ids`, when the system has it.
    pub name: Option<String>,
    pub driver: Option<String>,
    /// The DRM card (`card0`) listed in `/sys/class/drm`, as the plugin finds it.
    pub card: Option<String>,
    /// `device/drm/*` without `controlD*`: the card and render nodes.
    pub drm_nodes: Vec<DrmNode>,
    /// `sriov_numvfs` of a physical function (`None`: no SR-IOV capability).
    pub sriov_numvfs: Option<u32>,
    /// An SR-IOV virtual function (has `physfn`).
    pub sriov_vf: bool,
    /// Other functions of the same device folded into this one (the old 82915G's
    /// `00:02.1`, class 0380, no driver): not GPUs of their own.
    pub secondary_functions: Vec<String>,
    pub guc_huc: Option<GucHuc>,
}

impl GpuFacts {
    pub fn render_node(&self) -> Option<&DrmNode> {
        self.drm_nodes.iter().find(|n| n.name.starts_with("renderD"))
    }

    pub fn card_node(&self) -> Option<&DrmNode> {
        self.card.as_ref().and_then(|c| self.drm_nodes.iter().find(|n| &n.name == c))
    }

    /// The 4-digit class NFD compares (`0300`, `0380`).
    pub fn nfd_class(&self) -> u16 {
        (self.class >> 8) as u16
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    #[serde(flatten)]
    pub facts: GpuFacts,
    pub verdict: Verdict,
}

/// Would the Intel GPU plugin hand this GPU to pods on this node?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    Usable {
        /// Extended resource the plugin advertises it under (`gpu.intel.com/i915`).
        resource: String,
        warnings: Vec<Warning>,
    },
    Unusable {
        reason: Reason,
        warnings: Vec<Warning>,
    },
}

impl Verdict {
    pub fn is_usable(&self) -> bool {
        matches!(self, Verdict::Usable { .. })
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Verdict::Unusable { reason, .. } => Some(reason),
            Verdict::Usable { .. } => None,
        }
    }

    pub fn warnings(&self) -> &[Warning] {
        match self {
            Verdict::Usable { warnings, .. } | Verdict::Unusable { warnings, .. } => warnings,
        }
    }
}

/// The first check a GPU fails, in the order the plugin and NFD apply them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// A display class other than 0300/0380 and no other GPU gets the node labelled.
    NotDisplayClass { class: String },
    /// Neither i915 nor xe is loaded or built in, as NFD sees it.
    ModuleNotLoaded,
    /// i915 or xe is there but did not bind this device.
    NoDriverBound,
    /// Bound to something else (`vfio-pci` for passthrough...): no DRM card.
    UnsupportedDriver { driver: String },
    /// An SR-IOV physical function with VFs enabled: the plugin skips it.
    SriovPfWithVfs { numvfs: u32 },
    /// No `cardN` under `device/drm` / `/sys/class/drm`.
    NoDrmCard,
    /// A card but no `renderD*` node.
    NoRenderNode,
    /// The `/dev/dri` node is missing (the plugin stats it).
    DeviceNodeMissing { path: String },
    /// GuC firmware failed to load where the driver needs GuC to submit work.
    FirmwareMissing { firmware: String, path: String, status: String },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NotDisplayClass { class } => write!(
                f,
                "class {class} is not 0300/0380: NFD's intel.gpu rule ignores it, so the plugin is not scheduled here"
            ),
            Reason::ModuleNotLoaded => write!(
                f,
                "module not loaded: neither i915 nor xe is in /proc/modules or modules.builtin (blacklisted? nomodeset?)"
            ),
            Reason::NoDriverBound => write!(
                f,
                "no driver bound although i915/xe is loaded: unsupported id (needs force_probe) or probe failed (see dmesg)"
            ),
            Reason::UnsupportedDriver { driver } => {
                write!(f, "bound to {driver}, not i915 or xe: there is no DRM card for the plugin")
            }
            Reason::SriovPfWithVfs { numvfs } => {
                write!(
                    f,
                    "SR-IOV physical function with {numvfs} VFs enabled: the plugin offers the VFs instead"
                )
            }
            Reason::NoDrmCard => write!(f, "no DRM card under device/drm"),
            Reason::NoRenderNode => write!(f, "no render node (renderD*): media and compute need one"),
            Reason::DeviceNodeMissing { path } => write!(f, "{path} does not exist"),
            Reason::FirmwareMissing { firmware, path, status } => write!(
                f,
                "{firmware} firmware {path} is {status}: the driver needs it to submit work (install linux-firmware)"
            ),
        }
    }
}

/// Something worth knowing that does not decide the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Warning {
    /// Class other than 0300/0380: advertised only because another GPU gets the node
    /// its NFD label.
    ClassNotMatchedByNfd { class: String },
    /// HuC did not load: no HuC-assisted media encode (bitrate control).
    HucFirmwareFailed { path: String, status: String },
    /// No files in `/lib/firmware/{i915,xe}`: recent GPUs do not probe without GuC/DMC.
    NoFirmwareFiles,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::ClassNotMatchedByNfd { class } => {
                write!(
                    f,
                    "class {class} is not matched by NFD; offered only because another GPU labels the node"
                )
            }
            Warning::HucFirmwareFailed { path, status } => {
                write!(f, "HuC firmware {path} is {status}: no HuC-assisted media encode")
            }
            Warning::NoFirmwareFiles => {
                write!(
                    f,
                    "no files in /lib/firmware/i915 or /lib/firmware/xe: recent GPUs need GuC/DMC firmware"
                )
            }
        }
    }
}

/// Node-wide facts the verdict depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGpuContext {
    pub modules: KernelModules,
    /// NFD's `intel.gpu` rule matches this node.
    pub nfd_gpu_rule: bool,
    /// Number of files in the i915 and xe firmware directories.
    pub firmware_files: usize,
}

/// Node-wide GPU picture: the Intel GPUs and the facts their verdicts rest on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuReport {
    pub gpus: Vec<Gpu>,
    pub modules: KernelModules,
    /// NFD would label the node `intel.feature.node.kubernetes.io/gpu=true`.
    pub nfd_gpu_rule: bool,
    /// `/sys/module/i915/parameters/enable_guc` when i915 is there.
    pub enable_guc: Option<i32>,
    pub debugfs: DebugfsAccess,
    /// Files in `/lib/firmware/i915` and `/lib/firmware/xe`, by directory.
    pub firmware: BTreeMap<String, Vec<String>>,
}

/// Intel (8086) and base class 03: every function that could be a GPU.
fn is_candidate(vendor: u16, class: u32) -> bool {
    vendor == VENDOR_INTEL && (class >> 16) as u8 == BASE_CLASS_DISPLAY
}

/// Detection on its own: reads full attributes only for Intel display functions.
pub(crate) fn detect(fs: &RootFs) -> Result<GpuReport, HardwareError> {
    let mut candidates = pci::scan_where(fs, is_candidate)?;
    pci_ids::name_devices(fs, &mut candidates)?;
    build(fs, candidates)
}

/// Detection on a PCI list already read (and named) by the full inventory.
pub(crate) fn detect_from(fs: &RootFs, pci: &[PciDevice]) -> Result<GpuReport, HardwareError> {
    build(fs, pci.iter().filter(|d| is_candidate(d.vendor_id, d.class)).cloned().collect())
}

fn build(fs: &RootFs, candidates: Vec<PciDevice>) -> Result<GpuReport, HardwareError> {
    let release = system::kernel_release(fs)?;
    let modules = read_modules(fs, release.as_deref())?;
    let nfd_gpu_rule = nfd_gpu_rule(&candidates, &modules);
    let enable_guc = read_optional(fs, I915_ENABLE_GUC)?.and_then(|v| v.parse().ok());
    let debugfs = debugfs_access(fs);
    let mut firmware = BTreeMap::new();
    for dir in FIRMWARE_DIRS {
        firmware.insert(dir.to_owned(), list_dir(fs, Path::new(LIB_FIRMWARE).join(dir))?);
    }
    let ctx = NodeGpuContext { modules, nfd_gpu_rule, firmware_files: firmware.values().map(Vec::len).sum() };

    let mut with_vf = Vec::with_capacity(candidates.len());
    for dev in candidates {
        let vf = link_target(fs, pci::attr(&dev.address, "physfn"))?.is_some();
        with_vf.push((dev, vf));
    }
    let mut gpus = Vec::new();
    for (dev, vf, secondary) in fold_secondary_functions(with_vf) {
        let facts = read_facts(fs, dev, vf, secondary, debugfs)?;
        let verdict = judge(&facts, &ctx);
        gpus.push(Gpu { facts, verdict });
    }
    Ok(GpuReport { gpus, modules, nfd_gpu_rule, enable_guc, debugfs, firmware })
}

/// NFD's `intel.gpu` rule, node-wide: an Intel PCI device of class 0300/0380 (any of
/// them, driver or not) and i915 or xe loaded or built in.
pub fn nfd_gpu_rule(pci: &[PciDevice], modules: &KernelModules) -> bool {
    modules.any_present()
        && pci.iter().any(|d| d.vendor_id == VENDOR_INTEL && NFD_GPU_CLASSES.contains(&d.nfd_class()))
}

/// Folds non-zero functions without a driver into function 0 of the same Intel display
/// device: old Intel chipsets (82915G and kin) expose a second "Display controller"
/// function for the second head, which no driver binds and which is not a second GPU (the
/// plugin never sees it: it has no DRM card). SR-IOV VFs (`physfn`) are real GPUs and are
/// never folded.
pub fn fold_secondary_functions(devices: Vec<(PciDevice, bool)>) -> Vec<(PciDevice, bool, Vec<String>)> {
    let primaries: BTreeSet<String> = devices
        .iter()
        .filter_map(|(d, _)| {
            pci::split_function(&d.address).filter(|(_, f)| *f == 0).map(|(s, _)| s.to_owned())
        })
        .collect();
    let is_secondary = |d: &PciDevice, vf: bool| {
        !vf && d.driver.is_none()
            && pci::split_function(&d.address).is_some_and(|(slot, f)| f != 0 && primaries.contains(slot))
    };
    let mut out: Vec<(PciDevice, bool, Vec<String>)> = Vec::new();
    let mut folded: Vec<PciDevice> = Vec::new();
    for (d, vf) in devices {
        if is_secondary(&d, vf) {
            folded.push(d);
        } else {
            out.push((d, vf, Vec::new()));
        }
    }
    for d in folded {
        let slot = pci::split_function(&d.address).map(|(s, _)| s);
        let primary = out.iter_mut().find(|(p, _, _)| {
            pci::split_function(&p.address).is_some_and(|(s, f)| f == 0 && Some(s) == slot)
        });
        if let Some((_, _, secondaries)) = primary {
            secondaries.push(d.address.clone());
        }
    }
    out
}

fn read_facts(
    fs: &RootFs,
    dev: PciDevice,
    sriov_vf: bool,
    secondary_functions: Vec<String>,
    debugfs: DebugfsAccess,
) -> Result<GpuFacts, HardwareError> {
    let entries = list_dir(fs, pci::attr(&dev.address, "drm"))?;
    // The plugin finds cards in /sys/class/drm; check the card is listed there too.
    let card = entries
        .iter()
        .find(|n| is_numbered(n, "card") && fs.exists(Path::new(SYS_CLASS_DRM).join(n.as_str())))
        .cloned();
    let drm_nodes = entries
        .iter()
        .filter(|n| is_numbered(n, "card") || is_numbered(n, "renderD"))
        .map(|name| {
            let dev_path = format!("{DEV_DRI}/{name}");
            DrmNode { present: fs.exists(&dev_path), dev_path, name: name.clone() }
        })
        .collect();
    let sriov_numvfs =
        read_optional(fs, pci::attr(&dev.address, "sriov_numvfs"))?.and_then(|v| v.parse().ok());
    let guc_huc = match (&card, debugfs) {
        (Some(card), DebugfsAccess::Readable) => read_guc_huc(fs, card, &dev.address),
        _ => None,
    };
    Ok(GpuFacts {
        device_id: dev.device_id,
        class: dev.class,
        name: dev.device_name,
        driver: dev.driver,
        card,
        drm_nodes,
        sriov_numvfs,
        sriov_vf,
        secondary_functions,
        guc_huc,
        address: dev.address,
    })
}

/// `card0`, `renderD128` (the plugin's `^card[0-9]+$`); not `card0-eDP-1`, not `controlD64`.
fn is_numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn debugfs_access(fs: &RootFs) -> DebugfsAccess {
    match std::fs::read_dir(fs.resolve(DEBUGFS)) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => DebugfsAccess::PermissionDenied,
        // The mount point exists (empty) in sysfs even when debugfs is not mounted.
        Ok(mut entries) => match entries.next() {
            Some(_) => DebugfsAccess::Readable,
            None => DebugfsAccess::NotMounted,
        },
        Err(_) => DebugfsAccess::NotMounted,
    }
}

/// `dri/<minor>/gt0/uc/` (or `gt/uc/` on older kernels); newer kernels also name the
/// directory by PCI address.
fn read_guc_huc(fs: &RootFs, card: &str, address: &str) -> Option<GucHuc> {
    let minor = card.strip_prefix("card")?;
    for dir in [minor, address] {
        for gt in ["gt0", "gt"] {
            let uc = Path::new(DEBUGFS_DRI).join(dir).join(gt).join("uc");
            if !fs.exists(&uc) {
                continue;
            }
            let firmware = |file: &str| {
                read_best_effort(fs, uc.join(file)).and_then(|t| parse_uc_firmware(&t)).map(
                    |(path, status)| {
                        let file_present = FIRMWARE_SUFFIXES
                            .iter()
                            .any(|s| fs.exists(Path::new(LIB_FIRMWARE).join(format!("{path}{s}"))));
                        UcFirmware { path, status, file_present }
                    },
                )
            };
            return Some(GucHuc {
                usage: read_best_effort(fs, uc.join("usage")).and_then(|t| parse_uc_usage(&t)),
                guc: firmware("guc_info"),
                huc: firmware("huc_info"),
            });
        }
    }
    None
}

/// `[guc] supported:yes wanted:yes used:yes` and the same for `[huc]`, `[submission]`.
pub fn parse_uc_usage(text: &str) -> Option<UcUsage> {
    let flags = |tag: &str| -> Option<UcFlags> {
        let line = text.lines().find_map(|l| l.trim().strip_prefix(tag))?;
        let get = |key: &str| {
            line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix(':')).map(|v| v == "yes")
        };
        Some(UcFlags { supported: get("supported")?, wanted: get("wanted")?, used: get("used")? })
    };
    Some(UcUsage { guc: flags("[guc]")?, huc: flags("[huc]")?, submission: flags("[submission]")? })
}

/// (`i915/adlp_guc_70.bin`, `RUNNING`) from `guc_info`/`huc_info`. `None` for
/// "HuC disabled" / "not supported" and other shapes.
pub fn parse_uc_firmware(text: &str) -> Option<(String, String)> {
    let path = text.lines().find_map(|l| {
        let (label, path) = l.split_once(" firmware: ")?;
        matches!(label.trim(), "GuC" | "HuC").then(|| path.trim().to_owned())
    })?;
    let status = text.lines().find_map(|l| l.trim().strip_prefix("status: ").map(|s| s.trim().to_owned()))?;
    Some((path, status))
}

fn read_modules(fs: &RootFs, release: Option<&str>) -> Result<KernelModules, HardwareError> {
    let loaded = read_optional(fs, PROC_MODULES)?.map(|t| parse_proc_modules(&t)).unwrap_or_default();
    let builtin = match release {
        Some(r) => read_optional(fs, Path::new(LIB_MODULES).join(r).join("modules.builtin"))?
            .map(|t| parse_modules_builtin(&t))
            .unwrap_or_default(),
        None => BTreeSet::new(),
    };
    let state = |name: &str| {
        if loaded.contains(name) {
            ModuleState::Loaded
        } else if builtin.contains(name) {
            ModuleState::Builtin
        } else {
            ModuleState::Absent
        }
    };
    Ok(KernelModules { i915: state(DRIVER_I915), xe: state(DRIVER_XE) })
}

/// First field of each line (`i915 3723264 12 drm_buddy,… Live 0x…`).
pub fn parse_proc_modules(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

/// `kernel/drivers/gpu/drm/i915/i915.ko` → `i915` (NFD getBuiltinModules).
pub fn parse_modules_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_suffix(".ko"))
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
        .collect()
}

/// The verdict for one GPU: the first check it fails, in the order NFD and the plugin
/// apply them, plus warnings that do not decide. Pure: everything it needs is in `gpu`
/// and `node`.
pub fn judge(gpu: &GpuFacts, node: &NodeGpuContext) -> Verdict {
    let mut warnings = Vec::new();
    let unusable = |reason: Reason, warnings: Vec<Warning>| Verdict::Unusable { reason, warnings };
    let class = format!("{:04x}", gpu.nfd_class());

    // NFD gates the whole plugin on the node label; the plugin itself ignores the class.
    if !NFD_GPU_CLASSES.contains(&gpu.nfd_class()) {
        if !node.nfd_gpu_rule {
            return unusable(Reason::NotDisplayClass { class }, warnings);
        }
        warnings.push(Warning::ClassNotMatchedByNfd { class });
    }

    let driver = match gpu.driver.as_deref() {
        None if !node.modules.any_present() => return unusable(Reason::ModuleNotLoaded, warnings),
        None => {
            if node.firmware_files == 0 {
                warnings.push(Warning::NoFirmwareFiles);
            }
            return unusable(Reason::NoDriverBound, warnings);
        }
        Some(d @ (DRIVER_I915 | DRIVER_XE)) => d,
        Some(other) => return unusable(Reason::UnsupportedDriver { driver: other.to_owned() }, warnings),
    };
    // Bound, yet NFD sees no module: built in, but modules.builtin is not where NFD looks.
    if !node.nfd_gpu_rule {
        return unusable(Reason::ModuleNotLoaded, warnings);
    }

    // pluginutils.IsSriovPFwithVFs: `sriov_numvfs` present and not "0".
    if let Some(numvfs) = gpu.sriov_numvfs.filter(|n| *n > 0) {
        return unusable(Reason::SriovPfWithVfs { numvfs }, warnings);
    }

    let Some(card) = gpu.card_node() else { return unusable(Reason::NoDrmCard, warnings) };
    let Some(render) = gpu.render_node() else { return unusable(Reason::NoRenderNode, warnings) };
    // devSpecForDrmFile: a node whose /dev/dri path cannot be stat'ed is left out.
    for dev_node in [card, render] {
        if !dev_node.present {
            return unusable(Reason::DeviceNodeMissing { path: dev_node.dev_path.clone() }, warnings);
        }
    }

    if let Some(uc) = &gpu.guc_huc {
        // xe always submits through GuC; i915 does where `[submission] wanted:yes`
        // (ADL-P, DG2, MTL and later by default). Without it the GT is wedged.
        let needs_guc = driver == DRIVER_XE || uc.usage.is_some_and(|u| u.submission.wanted);
        if let Some(guc) = uc.guc.as_ref().filter(|g| g.failed() && needs_guc) {
            return unusable(
                Reason::FirmwareMissing {
                    firmware: "GuC".into(),
                    path: guc.path.clone(),
                    status: guc.status.clone(),
                },
                warnings,
            );
        }
        if let Some(huc) = uc.huc.as_ref().filter(|h| h.failed()) {
            warnings.push(Warning::HucFirmwareFailed { path: huc.path.clone(), status: huc.status.clone() });
        }
    }

    Verdict::Usable { resource: format!("{PLUGIN_RESOURCE_NAMESPACE}/{driver}"), warnings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::fixtures;

    fn report(root: &fixtures::FixtureRoot) -> GpuReport {
        detect(&root.fs()).unwrap()
    }

    /// (address, driver, card, render node, verdict) of one GPU.
    type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a Verdict);

    fn summary(r: &GpuReport) -> Vec<Row<'_>> {
        r.gpus
            .iter()
            .map(|g| {
                (
                    g.facts.address.as_str(),
                    g.facts.driver.as_deref(),
                    g.facts.card.as_deref(),
                    g.facts.render_node().map(|n| n.dev_path.as_str()),
                    &g.verdict,
                )
            })
            .collect()
    }

    fn usable(resource: &str) -> Verdict {
        Verdict::Usable { resource: resource.into(), warnings: vec![] }
    }

    fn unusable(reason: Reason) -> Verdict {
        Verdict::Unusable { reason, warnings: vec![] }
    }

    #[test]
    fn alder_lake_p_on_i915_is_usable_with_guc_and_huc_running() {
        let r = report(&fixtures::alder_lake_p());
        assert_eq!(
            summary(&r),
            [(
                "0000:00:02.0",
                Some("i915"),
                Some("card0"),
                Some("/dev/dri/renderD128"),
                &usable("gpu.intel.com/i915")
            )]
        );
        let gpu = &r.gpus[0].facts;
        assert_eq!((gpu.device_id, gpu.class), (0x46a6, 0x038000));
        assert_eq!(r.modules, KernelModules { i915: ModuleState::Loaded, xe: ModuleState::Loaded });
        assert!(r.nfd_gpu_rule);
        assert_eq!(r.enable_guc, Some(-1));
        assert_eq!(r.debugfs, DebugfsAccess::Readable);
        let uc = gpu.guc_huc.as_ref().unwrap();
        let all = UcFlags { supported: true, wanted: true, used: true };
        assert_eq!(uc.usage, Some(UcUsage { guc: all, huc: all, submission: all }));
        assert_eq!(
            uc.guc,
            Some(UcFirmware {
                path: "i915/adlp_guc_70.bin".into(),
                status: "RUNNING".into(),
                file_present: true
            })
        );
        assert_eq!(r.firmware["i915"], ["adlp_dmc.bin", "adlp_guc_70.bin", "tgl_huc.bin"]);
    }

    #[test]
    fn guc_firmware_missing_where_guc_submission_is_wanted_is_unusable() {
        let r = report(&fixtures::alder_lake_p_guc_missing());
        assert_eq!(r.gpus.len(), 1);
        assert_eq!(
            r.gpus[0].verdict,
            unusable(Reason::FirmwareMissing {
                firmware: "GuC".into(),
                path: "i915/adlp_guc_70.bin".into(),
                status: "MISSING".into(),
            })
        );
        assert!(!r.gpus[0].facts.guc_huc.as_ref().unwrap().guc.as_ref().unwrap().file_present);
    }

    #[test]
    fn discrete_dg1_behind_a_bridge_is_usable() {
        let r = report(&fixtures::dg1());
        assert_eq!(
            summary(&r),
            [(
                "0000:01:00.0",
                Some("i915"),
                Some("card0"),
                Some("/dev/dri/renderD128"),
                &usable("gpu.intel.com/i915")
            )]
        );
        assert_eq!(r.gpus[0].facts.device_id, 0x4905);
        // Not root: GuC/HuC state unknown, which is not a problem in itself.
        assert_eq!(r.debugfs, DebugfsAccess::NotMounted);
        assert_eq!(r.gpus[0].facts.guc_huc, None);
    }

    #[test]
    fn haswell_without_i915_loaded_is_unusable_module_not_loaded() {
        let r = report(&fixtures::haswell_no_module());
        assert_eq!(summary(&r), [("0000:00:02.0", None, None, None, &unusable(Reason::ModuleNotLoaded))]);
        assert_eq!(r.gpus[0].facts.device_id, 0x0a16);
        assert!(!r.nfd_gpu_rule, "NFD needs i915 or xe");
    }

    #[test]
    fn hybrid_laptop_counts_only_the_intel_gpu() {
        let r = report(&fixtures::hybrid_laptop());
        // The NVIDIA card has DRM nodes too (card1, renderD129) but is not Intel.
        assert_eq!(
            summary(&r),
            [(
                "0000:00:02.0",
                Some("i915"),
                Some("card0"),
                Some("/dev/dri/renderD128"),
                &usable("gpu.intel.com/i915")
            )]
        );
        assert_eq!(r.gpus[0].facts.device_id, 0x0412);
    }

    #[test]
    fn second_function_of_the_82915g_is_not_a_second_gpu() {
        let r = report(&fixtures::i915g_multifunction());
        assert_eq!(
            summary(&r),
            [(
                "0000:00:02.0",
                Some("i915"),
                Some("card0"),
                Some("/dev/dri/renderD128"),
                &usable("gpu.intel.com/i915")
            )]
        );
        assert_eq!(r.gpus[0].facts.device_id, 0x2582);
        assert_eq!(r.gpus[0].facts.secondary_functions, ["0000:00:02.1"]);
        // NFD still sees both functions; it only needs one to match.
        assert!(r.nfd_gpu_rule);
    }

    #[test]
    fn lunar_lake_on_xe_is_offered_as_an_xe_resource() {
        let r = report(&fixtures::lunar_lake_xe());
        assert_eq!(
            summary(&r),
            [(
                "0000:00:02.0",
                Some("xe"),
                Some("card0"),
                Some("/dev/dri/renderD128"),
                &usable("gpu.intel.com/xe")
            )]
        );
        assert_eq!(r.modules, KernelModules { i915: ModuleState::Absent, xe: ModuleState::Loaded });
        assert_eq!(r.gpus[0].facts.device_id, 0x64a0);
    }

    #[test]
    fn arc_a380_unbound_on_an_old_kernel_is_no_driver_bound() {
        let r = report(&fixtures::arc_a380_unbound());
        assert_eq!(summary(&r), [("0000:03:00.0", None, None, None, &unusable(Reason::NoDriverBound))]);
        // NFD labels the node (class 0300 + i915 loaded), yet the plugin finds nothing.
        assert!(r.nfd_gpu_rule);
    }

    #[test]
    fn arc_a380_unbound_without_any_firmware_says_so() {
        let root = fixtures::arc_a380_unbound();
        root.remove("/lib/firmware/i915");
        let r = report(&root);
        assert_eq!(
            r.gpus[0].verdict,
            Verdict::Unusable { reason: Reason::NoDriverBound, warnings: vec![Warning::NoFirmwareFiles] }
        );
    }

    #[test]
    fn sriov_pf_is_skipped_and_its_vfs_are_gpus() {
        let r = report(&fixtures::alder_lake_p_sriov());
        assert_eq!(
            summary(&r),
            [
                (
                    "0000:00:02.0",
                    Some("i915"),
                    Some("card0"),
                    Some("/dev/dri/renderD128"),
                    &unusable(Reason::SriovPfWithVfs { numvfs: 2 })
                ),
                (
                    "0000:00:02.1",
                    Some("i915"),
                    Some("card1"),
                    Some("/dev/dri/renderD129"),
                    &usable("gpu.intel.com/i915")
                ),
                (
                    "0000:00:02.2",
                    Some("i915"),
                    Some("card2"),
                    Some("/dev/dri/renderD130"),
                    &usable("gpu.intel.com/i915")
                ),
            ]
        );
        assert!(r.gpus[1].facts.sriov_vf && r.gpus[1].facts.secondary_functions.is_empty());
    }

    #[test]
    fn passthrough_to_vfio_is_an_unsupported_driver() {
        let root = fixtures::alder_lake_p();
        root.rebind("0000:00:02.0", "pci0000:00", Some("vfio-pci"));
        root.remove("/sys/devices/pci0000:00/0000:00:02.0/drm");
        root.remove("/sys/class/drm/card0");
        let r = report(&root);
        assert_eq!(r.gpus[0].verdict, unusable(Reason::UnsupportedDriver { driver: "vfio-pci".into() }));
    }

    #[test]
    fn a_card_without_render_node_is_unusable() {
        let root = fixtures::alder_lake_p();
        root.remove("/sys/devices/pci0000:00/0000:00:02.0/drm/renderD128");
        let r = report(&root);
        assert_eq!(r.gpus[0].verdict, unusable(Reason::NoRenderNode));
    }

    #[test]
    fn a_missing_dev_node_is_unusable() {
        let root = fixtures::alder_lake_p();
        root.remove("/dev/dri/renderD128");
        let r = report(&root);
        assert_eq!(
            r.gpus[0].verdict,
            unusable(Reason::DeviceNodeMissing { path: "/dev/dri/renderD128".into() })
        );
    }

    #[test]
    fn no_gpu_at_all() {
        let root = fixtures::FixtureRoot::new();
        let r = report(&root);
        assert!(r.gpus.is_empty() && !r.nfd_gpu_rule);
        assert_eq!(r.modules, KernelModules { i915: ModuleState::Absent, xe: ModuleState::Absent });
    }

    #[test]
    fn builtin_i915_counts_for_nfd() {
        let root = fixtures::alder_lake_p();
        root.file("/proc/modules", "")
            .file("/proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
            .file("/lib/modules/6.8.0-45-generic/modules.builtin", "kernel/drivers/gpu/drm/i915/i915.ko\n");
        let r = report(&root);
        assert_eq!(r.modules.i915, ModuleState::Builtin);
        assert!(r.nfd_gpu_rule);
        assert!(r.gpus[0].verdict.is_usable());
    }

    #[test]
    fn judge_only_warns_about_an_unmatched_class_when_another_gpu_labels_the_node() {
        let facts = GpuFacts {
            address: "0000:00:02.0".into(),
            device_id: 0x1234,
            class: 0x030200,
            name: None,
            driver: Some("i915".into()),
            card: Some("card0".into()),
            drm_nodes: vec![
                DrmNode { name: "card0".into(), dev_path: "/dev/dri/card0".into(), present: true },
                DrmNode { name: "renderD128".into(), dev_path: "/dev/dri/renderD128".into(), present: true },
            ],
            sriov_numvfs: None,
            sriov_vf: false,
            secondary_functions: vec![],
            guc_huc: None,
        };
        let modules = KernelModules { i915: ModuleState::Loaded, xe: ModuleState::Absent };
        let alone = NodeGpuContext { modules, nfd_gpu_rule: false, firmware_files: 3 };
        assert_eq!(judge(&facts, &alone), unusable(Reason::NotDisplayClass { class: "0302".into() }));
        let labelled = NodeGpuContext { nfd_gpu_rule: true, ..alone };
        assert_eq!(
            judge(&facts, &labelled),
            Verdict::Usable {
                resource: "gpu.intel.com/i915".into(),
                warnings: vec![Warning::ClassNotMatchedByNfd { class: "0302".into() }]
            }
        );
    }

    #[test]
    fn parses_uc_debugfs() {
        let usage = "[guc] supported:yes wanted:yes used:no\n[huc] supported:yes wanted:no used:no\n[submission] supported:yes wanted:yes used:no\n";
        let u = parse_uc_usage(usage).unwrap();
        assert_eq!(u.guc, UcFlags { supported: true, wanted: true, used: false });
        assert_eq!(u.huc, UcFlags { supported: true, wanted: false, used: false });
        assert!(u.submission.wanted);
        let info = "GuC firmware: i915/adlp_guc_70.bin\n\tstatus: RUNNING\n\tversion: wanted 70.5.1, found 70.20.0\n";
        assert_eq!(parse_uc_firmware(info), Some(("i915/adlp_guc_70.bin".into(), "RUNNING".into())));
        assert_eq!(parse_uc_firmware("HuC disabled\n"), None);
        assert_eq!(
            parse_modules_builtin("kernel/drivers/gpu/drm/i915/i915.ko\nkernel/fs/ext4/ext4.ko\n"),
            BTreeSet::from(["i915".to_owned(), "ext4".to_owned()])
        );
    }
}
