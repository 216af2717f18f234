//! `elysium-node reset`: take K3s off a node, with the semantics of K3s's
//! `k3s-killall.sh` followed by `k3s-uninstall.sh` / `k3s-agent-uninstall.sh`
//! (install.sh): stop the units, kill the container shims K3s leaves running
//! (`KillMode=process`), unmount what the kubelet and CNI mounted, delete the CNI
//! interfaces, strip K3s's iptables rules, then remove units, files and data.
//!
//! Observe → plan → apply like every step, so `--dry-run` prints the plan. Every change
//! goes through the host seam (systemd, signals, mounts, programs, files), so the whole
//! plan can be applied against fakes.

use std::fmt;
use std::path::Path;

use elysium_host::{Cmd, FsError, Host, MountError, ProcessError, Signal, SignalError, SystemdError};

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

/// Reads the node (the mount table, /proc, /sys/class/net, the unit directory).
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

    let mut mounts: Vec<String> = host
        .mounts
        .table()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.mount_point)
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
#[derive(Debug)]
pub struct ResetError {
    /// The action, as the plan shows it.
    pub action: String,
    pub source: ResetFailure,
}

impl fmt::Display for ResetError {
    /// The action and the whole chain of causes: the CLI prints this line alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reset could not {}: {}", self.action, crate::error_chain(&self.source))
    }
}

impl std::error::Error for ResetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What went wrong in one action.
#[derive(Debug, thiserror::Error)]
pub enum ResetFailure {
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Carries out the plan. Continues past failures that do not block what
/// follows (a mount already gone), and reports every failure at the end.
#[tracing::instrument(skip_all, fields(actions = actions.len()))]
pub async fn apply(
    host: &Host,
    actions: &[ResetAction],
    progress: &mut dyn FnMut(&ResetAction),
) -> Vec<ResetError> {
    let mut errors = Vec::new();
    for action in actions {
        progress(action);
        if let Err(source) = apply_one(host, action).await {
            errors.push(ResetError { action: action.to_string(), source });
        }
    }
    errors
}

async fn apply_one(host: &Host, action: &ResetAction) -> Result<(), ResetFailure> {
    let fs = &host.fs;
    match action {
        ResetAction::StopUnit(u) => host.systemd.stop(u).await?,
        // A shim that exited meanwhile is what the kill wanted.
        ResetAction::Kill { pid, .. } => _ = host.signals.send(*pid, Signal::SIGKILL)?,
        // A mount already gone (or never one: a nested mount came off with its parent)
        // is not an error.
        ResetAction::Unmount(m) => _ = host.mounts.unmount_lazy(Path::new(m))?,
        // Deleting a link needs netlink; iproute2 is on every node K3s runs on
        // (K3s itself needs it), so it is used rather than a netlink crate.
        ResetAction::DeleteInterface(i) => {
            let cmd = Cmd::new("ip").args(["link", "delete", i.as_str()]);
            host.processes.run(&cmd).await?.check(&cmd)?;
        }
        ResetAction::StripIptables => strip_iptables(host).await?,
        ResetAction::DisableUnit(u) => _ = host.systemd.disable(&[u]).await?,
        ResetAction::RemoveFile(p) => _ = fs.remove_file(p)?,
        ResetAction::DaemonReload => host.systemd.daemon_reload().await?,
        ResetAction::RemoveTree(p) => _ = fs.remove_tree(p)?,
    }
    Ok(())
}

/// `iptables-save | grep -v KUBE- | grep -v CNI- | grep -iv flannel | iptables-restore`
async fn strip_iptables(host: &Host) -> Result<(), ProcessError> {
    let save = Cmd::new("iptables-save");
    let saved = host.processes.run(&save).await?.check(&save)?;
    let kept = strip_rules(&saved.stdout_text());
    let restore = Cmd::new("iptables-restore").stdin(kept);
    host.processes.run(&restore).await?.check(&restore)?;
    Ok(())
}

/// The rules of `iptables-save` output that are not K3s's, CNI's or flannel's.
fn strip_rules(saved: &str) -> String {
    saved
        .lines()
        .filter(|l| !l.contains("KUBE-") && !l.contains("CNI-") && !l.to_lowercase().contains("flannel"))
        .map(|l| format!("{l}\n"))
        .collect()
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

    #[tokio::test]
    async fn applies_the_whole_plan_through_the_host_seam() {
        use elysium_host::fake::{FakeHost, FakeMounts, Reply};

        let dir = tempfile::tempdir().unwrap();
        let mut fake = FakeHost::new(dir.path());
        let mounts = Arc::new(FakeMounts::from_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
             2 1 0:5 / /run/k3s rw - tmpfs tmpfs rw\n\
             3 2 0:6 / /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay rw\n\
             4 1 0:7 / /run/netns/cni-1234 rw - nsfs nsfs rw\n",
        ));
        fake.host = fake.host.with_mounts(mounts.clone());
        let (host, fs) = (&fake.host, &fake.host.fs);
        fs.write_atomic("/etc/systemd/system/k3s.service", b"[Service]\n", 0o644).unwrap();
        fs.write_atomic("/sys/class/net/cni0/type", b"1", 0o644).unwrap();
        fs.write_atomic("/sys/class/net/flannel.1/type", b"1", 0o644).unwrap();
        fs.create_dir_all("/proc/4242", 0o755).unwrap();
        std::os::unix::fs::symlink(
            "/var/lib/rancher/k3s/data/abc/bin/containerd-shim-runc-v2",
            fs.resolve("/proc/4242/exe"),
        )
        .unwrap();
        fake.systemd.start("k3s.service").await.unwrap();
        fake.processes
            .reply(
                "iptables-save",
                Reply::ok(
                    "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A INPUT -j KUBE-SERVICES\n\
                     -A FORWARD -s 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
                     -A CNI-FORWARD -j ACCEPT\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n",
                ),
            )
            .reply("ip", Reply::ok(""))
            .reply("ip", Reply::fail(1, "Cannot find device \"flannel.1\"\n"));

        let mut observed = observe(host);
        assert_eq!(
            observed.shims,
            [(4242, "/var/lib/rancher/k3s/data/abc/bin/containerd-shim-runc-v2".into())]
        );
        // Whether iptables-save is on this machine's PATH does not matter to a fake.
        observed.iptables = true;
        let errors = apply(host, &plan(&observed), &mut |_| {}).await;

        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            messages,
            [
                "reset could not delete interface flannel.1: ip failed (exit status: 1): Cannot find device \"flannel.1\""
            ]
        );
        assert!(matches!(errors[0].source, ResetFailure::Process(ProcessError::Failed { .. })));
        assert_eq!(fake.signals.sent(), [(4242, Signal::SIGKILL)]);
        assert_eq!(
            mounts.unmounted(),
            [
                "/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs",
                "/run/netns/cni-1234",
                "/run/k3s",
            ],
            "deepest first"
        );
        assert_eq!(mounts.mount_points(), ["/"]);
        assert_eq!(
            fake.processes.command_lines(),
            ["ip link delete cni0", "ip link delete flannel.1", "iptables-save", "iptables-restore"]
        );
        let restore = fake.processes.calls().pop().unwrap();
        assert_eq!(
            std::str::from_utf8(restore.get_stdin().unwrap()).unwrap(),
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n"
        );
        assert!(!fs.exists("/etc/systemd/system/k3s.service"));
        assert_eq!(fake.systemd.status("k3s.service").await.unwrap().active_state, "inactive");
    }

    #[tokio::test]
    async fn a_missing_program_or_a_refused_signal_is_reported_and_reset_goes_on() {
        use elysium_host::fake::{FakeHost, Reply};

        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHost::new(dir.path());
        fake.processes.reply("ip", Reply::Missing);
        fake.signals.refuse(77);
        fake.signals.exited(78);
        let actions = [
            ResetAction::Kill { pid: 77, exe: "shim".into() },
            ResetAction::Kill { pid: 78, exe: "shim".into() },
            ResetAction::DeleteInterface("cni0".into()),
            ResetAction::Unmount("/run/k3s".into()),
            ResetAction::RemoveTree("/var/lib/rancher/k3s".into()),
        ];
        let errors = apply(&fake.host, &actions, &mut |_| {}).await;
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            messages,
            [
                "reset could not kill shim (pid 77): could not send SIGKILL to pid 77: EPERM: Operation not permitted",
                "reset could not delete interface cni0: could not start ip: entity not found",
            ]
        );
        assert_eq!(fake.mounts.unmounted(), ["/run/k3s"]);
    }
}
