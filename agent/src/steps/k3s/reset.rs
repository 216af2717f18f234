//! `elysium-node reset`: take K3s off a node, with the semantics of K3s's
//! `k3s-killall.sh` followed by `k3s-uninstall.sh` / `k3s-agent-uninstall.sh`
//! (install.sh): stop the units, kill the container shims K3s leaves running
//! (`KillMode=process`), unmount what the kubelet and CNI mounted, delete the CNI
//! interfaces, strip K3s's iptables rules, then remove units, files and data.
//!
//! Observe → plan → apply like every step, so `--dry-run` prints the plan.

use std::fmt;

use elysium_host::Host;

use super::journal;
use elysium_installer::k3s_service::{BIN_DIR, SYSTEMD_DIR};

/// Mount points under these are K3s's (k3s-killall.sh `do_unmount_and_remove`).
pub const MOUNT_PREFIXES: &[&str] =
    &["/run/k3s", "/var/lib/kubelet/pods", "/var/lib/kubelet/plugins", "/run/netns/cni-"];
/// Interfaces k3s-killall.sh deletes.
pub const INTERFACES: &[&str] =
    &["cni0", "flannel.1", "flannel-v6.1", "kube-ipvs0", "flannel-wg", "flannel-wg-v6"];
/// Where K3s unpacks its bundled binaries, containerd-shim among them.
pub const DATA_BIN_PREFIX: &str = "/var/lib/rancher/k3s/data/";
/// Removed by the uninstallers (plus the binary, its links and the units).
pub const PATHS: &[&str] = &[
    "/etc/rancher/k3s",
    "/run/k3s",
    "/run/flannel",
    "/var/lib/rancher/k3s",
    "/var/lib/kubelet",
    "/var/lib/cni",
];

/// One thing reset does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetAction {
    StopUnit(String),
    Kill { pid: i32, exe: String },
    Unmount(String),
    DeleteInterface(String),
    StripIptables,
    DisableUnit(String),
    RemoveFile(String),
    DaemonReload,
    RemoveTree(String),
}

impl fmt::Display for ResetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetAction::StopUnit(u) => write!(f, "stop {u}"),
            ResetAction::Kill { pid, exe } => write!(f, "kill {exe} (pid {pid})"),
            ResetAction::Unmount(m) => write!(f, "unmount {m}"),
            ResetAction::DeleteInterface(i) => write!(f, "delete interface {i}"),
            ResetAction::StripIptables => write!(f, "remove KUBE-, CNI- and flannel iptables rules"),
            ResetAction::DisableUnit(u) => write!(f, "disable {u}"),
            ResetAction::RemoveFile(p) => write!(f, "remove {p}"),
            ResetAction::DaemonReload => write!(f, "daemon-reload"),
            ResetAction::RemoveTree(p) => write!(f, "remove {p} and everything under it"),
        }
    }
}

/// What is on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetObserved {
    /// `k3s*.service` unit files in the unit directory.
    pub units: Vec<String>,
    pub shims: Vec<(i32, String)>,
    pub mounts: Vec<String>,
    pub interfaces: Vec<String>,
    pub iptables: bool,
    /// Files and trees that exist.
    pub files: Vec<String>,
    pub trees: Vec<String>,
}

/// Reads the node (mountinfo, /proc, /sys/class/net, the unit directory).
pub fn observe(host: &Host) -> ResetObserved {
    let fs = &host.fs;
    let mut units: Vec<String> = std::fs::read_dir(fs.resolve(SYSTEMD_DIR))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("k3s") && n.ends_with(".service"))
                .collect()
        })
        .unwrap_or_default();
    units.sort();

    let mut shims = Vec::new();
    if let Ok(procs) = std::fs::read_dir(fs.resolve("/proc")) {
        for p in procs.filter_map(|e| e.ok()) {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
            if let Ok(exe) = std::fs::read_link(p.path().join("exe")) {
                let exe = exe.to_string_lossy().into_owned();
                if exe.starts_with(DATA_BIN_PREFIX) && exe.contains("containerd-shim") {
                    shims.push((pid, exe));
                }
            }
        }
    }

    let mountinfo = fs.read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|m| MOUNT_PREFIXES.iter().any(|p| m.starts_with(p)))
        .collect();
    // Deepest first, so nested mounts come off before their parents.
    mounts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    mounts.dedup();

    let interfaces = INTERFACES
        .iter()
        .filter(|i| fs.exists(format!("/sys/class/net/{i}")))
        .map(|i| (*i).to_owned())
        .collect();

    let mut files = Vec::new();
    for unit in &units {
        files.push(format!("{SYSTEMD_DIR}/{unit}"));
        let env = format!("{SYSTEMD_DIR}/{unit}.env");
        if fs.exists(&env) {
            files.push(env);
        }
    }
    for name in ["k3s", "k3s.previous", "kubectl", "crictl", "ctr"] {
        let p = format!("{BIN_DIR}/{name}");
        // Symlinks to k3s count even when dangling.
        if std::fs::symlink_metadata(fs.resolve(&p)).is_ok()
            && (name.starts_with("k3s") || is_link_to_k3s(host, &p))
        {
            files.push(p);
        }
    }
    for p in [journal::STATE_FILE, journal::JOURNAL_FILE] {
        if fs.exists(p) {
            files.push(p.to_owned());
        }
    }
    let trees = PATHS.iter().filter(|p| fs.exists(p)).map(|p| (*p).to_owned()).collect();
    ResetObserved { units, shims, mounts, interfaces, iptables: which("iptables-save"), files, trees }
}

fn is_link_to_k3s(host: &Host, path: &str) -> bool {
    std::fs::read_link(host.fs.resolve(path)).is_ok_and(|t| t.file_name().is_some_and(|n| n == "k3s"))
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// mountinfo escapes spaces and friends as octal (`\040`).
fn unescape_mount(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&code, 8) {
                out.push(v as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// The order of k3s-killall.sh then the uninstaller.
pub fn plan(o: &ResetObserved) -> Vec<ResetAction> {
    let mut a = Vec::new();
    a.extend(o.units.iter().map(|u| ResetAction::StopUnit(u.clone())));
    a.extend(o.shims.iter().map(|(pid, exe)| ResetAction::Kill { pid: *pid, exe: exe.clone() }));
    a.extend(o.mounts.iter().map(|m| ResetAction::Unmount(m.clone())));
    a.extend(o.interfaces.iter().map(|i| ResetAction::DeleteInterface(i.clone())));
    if o.iptables && !o.units.is_empty() {
        a.push(ResetAction::StripIptables);
    }
    a.extend(o.units.iter().map(|u| ResetAction::DisableUnit(u.clone())));
    a.extend(o.files.iter().map(|f| ResetAction::RemoveFile(f.clone())));
    if !o.units.is_empty() {
        a.push(ResetAction::DaemonReload);
    }
    a.extend(o.trees.iter().map(|t| ResetAction::RemoveTree(t.clone())));
    a
}

/// A reset action that failed.
#[derive(Debug, thiserror::Error)]
#[error("reset could not {action}: {message}")]
pub struct ResetError {
    pub action: String,
    pub message: String,
}

/// Carries out the plan. Continues past failures that do not block what
/// follows (a mount already gone), and reports every failure at the end.
pub async fn apply(
    host: &Host,
    actions: &[ResetAction],
    progress: &mut dyn FnMut(&ResetAction),
) -> Vec<ResetError> {
    let mut errors = Vec::new();
    for action in actions {
        progress(action);
        if let Err(message) = apply_one(host, action).await {
            errors.push(ResetError { action: action.to_string(), message });
        }
    }
    errors
}

async fn apply_one(host: &Host, action: &ResetAction) -> Result<(), String> {
    let fs = &host.fs;
    match action {
        ResetAction::StopUnit(u) => host.systemd.stop(u).await.map_err(|e| e.to_string()),
        ResetAction::Kill { pid, .. } => {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL)
            {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        ResetAction::Unmount(m) => {
            match nix::mount::umount2(&fs.resolve(m), nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        // Deleting a link needs netlink; iproute2 is on every node K3s runs on
        // (K3s itself needs it), so it is used rather than a netlink crate.
        ResetAction::DeleteInterface(i) => run("ip", &["link", "delete", i]),
        ResetAction::StripIptables => strip_iptables(),
        ResetAction::DisableUnit(u) => {
            host.systemd.disable(&[u]).await.map(|_| ()).map_err(|e| e.to_string())
        }
        ResetAction::RemoveFile(p) => fs.remove_file(p).map(|_| ()).map_err(|e| e.to_string()),
        ResetAction::DaemonReload => host.systemd.daemon_reload().await.map_err(|e| e.to_string()),
        ResetAction::RemoveTree(p) => match std::fs::remove_dir_all(fs.resolve(p)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// `iptables-save | grep -v KUBE- | grep -v CNI- | grep -iv flannel | iptables-restore`
fn strip_iptables() -> Result<(), String> {
    use std::io::Write;
    let saved =
        std::process::Command::new("iptables-save").output().map_err(|e| format!("iptables-save: {e}"))?;
    if !saved.status.success() {
        return Err(format!("iptables-save: {}", String::from_utf8_lossy(&saved.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&saved.stdout);
    let kept: String = text
        .lines()
        .filter(|l| !l.contains("KUBE-") && !l.contains("CNI-") && !l.to_lowercase().contains("flannel"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut child = std::process::Command::new("iptables-restore")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(kept.as_bytes()).map_err(|e| format!("iptables-restore: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("iptables-restore: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use elysium_host::{FakeSystemd, RootFs, Systemd};

    use super::*;

    #[tokio::test]
    async fn resets_a_node_in_killall_then_uninstall_order() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        let systemd = Arc::new(FakeSystemd::new(fs.clone()));
        let host = Host::with_root(dir.path(), systemd.clone());
        fs.write_atomic("/etc/systemd/system/k3s.service", b"[Service]\n", 0o644).unwrap();
        fs.write_atomic("/etc/systemd/system/k3s.service.env", b"", 0o600).unwrap();
        fs.write_atomic("/etc/systemd/system/elysium-node.service", b"[Service]\n", 0o644).unwrap();
        fs.write_atomic("/usr/local/bin/k3s", b"bin", 0o755).unwrap();
        std::os::unix::fs::symlink("k3s", fs.resolve("/usr/local/bin/kubectl")).unwrap();
        fs.write_atomic("/usr/local/bin/crictl", b"someone else's", 0o755).unwrap();
        fs.write_atomic("/etc/rancher/k3s/config.yaml", b"x", 0o600).unwrap();
        fs.write_atomic("/var/lib/rancher/k3s/server/token", b"K10", 0o600).unwrap();
        fs.write_atomic("/sys/class/net/cni0/type", b"1", 0o644).unwrap();
        fs.write_atomic(
            "/proc/self/mountinfo",
            b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
              2 1 0:5 / /run/k3s/containerd/x rw - tmpfs tmpfs rw\n\
              3 1 0:6 / /var/lib/kubelet/pods/a\\040b/volumes rw - tmpfs tmpfs rw\n\
              4 1 0:7 / /run/k3s rw - tmpfs tmpfs rw\n",
            0o644,
        )
        .unwrap();
        systemd.start("k3s.service").await.unwrap();

        let observed = observe(&host);
        assert_eq!(observed.units, ["k3s.service"]);
        assert_eq!(
            observed.mounts,
            ["/var/lib/kubelet/pods/a b/volumes", "/run/k3s/containerd/x", "/run/k3s"]
        );
        assert_eq!(observed.interfaces, ["cni0"]);
        assert!(observed.files.contains(&"/usr/local/bin/kubectl".to_string()));
        assert!(!observed.files.contains(&"/usr/local/bin/crictl".to_string()), "not ours: must stay");
        let actions = plan(&observed);
        let text: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
        let pos = |s: &str| {
            text.iter().position(|t| t.starts_with(s)).unwrap_or_else(|| panic!("{s} missing: {text:?}"))
        };
        assert!(pos("stop k3s.service") < pos("unmount"));
        assert!(pos("unmount") < pos("disable k3s.service"));
        assert!(pos("remove /etc/systemd/system/k3s.service") < pos("daemon-reload"));
        assert!(pos("daemon-reload") < pos("remove /etc/rancher/k3s and"));

        // Apply what a temporary root allows (no real mounts or links here).
        let safe: Vec<ResetAction> = actions
            .into_iter()
            .filter(|a| {
                !matches!(
                    a,
                    ResetAction::Unmount(_) | ResetAction::DeleteInterface(_) | ResetAction::StripIptables
                )
            })
            .collect();
        let errors = apply(&host, &safe, &mut |_| {}).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!fs.exists("/etc/systemd/system/k3s.service") && !fs.exists("/usr/local/bin/k3s"));
        assert!(!fs.exists("/etc/rancher/k3s") && !fs.exists("/var/lib/rancher/k3s"));
        assert!(fs.exists("/usr/local/bin/crictl") && fs.exists("/etc/systemd/system/elysium-node.service"));
        assert_eq!(systemd.status("k3s.service").await.unwrap().active_state, "inactive");
        assert!(
            plan(&observe(&host))
                .iter()
                .all(|a| matches!(a, ResetAction::Unmount(_) | ResetAction::DeleteInterface(_))),
            "a second reset has nothing left to do but the fixture's fake mounts"
        );
    }
}
