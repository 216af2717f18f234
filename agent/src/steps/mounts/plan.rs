//! The mounts plan: a pure function from what the spec asks for and what is on the
//! node to the actions that converge it. No I/O here; `--dry-run` prints the result.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::rclone_conf;
use super::unit;

/// Text that holds secrets (the rclone config): never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(pub String);

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretText({} bytes)", self.0.len())
    }
}

/// One mount as the spec wants it on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredMount {
    pub name: String,
    pub unit: String,
    pub unit_path: String,
    pub unit_text: String,
    /// The mount point.
    pub path: String,
    pub log: String,
    /// Secret values the mount uses, only to cut them out of log lines we quote.
    pub secrets: Vec<SecretText>,
}

/// Everything the spec wants for mounts on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredMounts {
    pub config_path: String,
    /// The whole rclone config; `None` when no mount is left (the file goes: it holds
    /// credentials).
    pub config: Option<SecretText>,
    pub mounts: Vec<DesiredMount>,
    /// Some mount sets `allow_other`.
    pub allow_other: bool,
    /// Directories to exist, with the mode to create them with.
    pub dirs: Vec<(String, u32)>,
}

/// One desired mount's unit as it is on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedUnit {
    /// The unit file's text, `None` when missing.
    pub text: Option<String>,
    /// systemd's `ActiveState`.
    pub active_state: String,
    pub enabled: bool,
}

/// What is on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedMounts {
    pub config: Option<SecretText>,
    /// By unit name, for the desired mounts.
    pub units: BTreeMap<String, ObservedUnit>,
    /// Our units (`elysium-mount-*.service`) on disk whose mount is not in the spec.
    pub stale_units: Vec<String>,
    /// Names of the desired mounts that are rclone mounts now.
    pub mounted: BTreeSet<String>,
    /// `/etc/fuse.conf`, `None` when missing.
    pub fuse_conf: Option<String>,
    /// Of `DesiredMounts::dirs`, those missing.
    pub missing_dirs: Vec<String>,
}

/// A mount to check after the pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub unit: String,
    pub path: String,
    pub log: String,
    pub secrets: Vec<SecretText>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountAction {
    /// Stop, disable and delete a unit whose mount left the spec.
    RemoveUnit {
        unit: String,
        path: String,
    },
    /// Write the rclone config (0600) atomically.
    WriteConfig {
        path: String,
        contents: SecretText,
        changed: Vec<String>,
    },
    RemoveConfig {
        path: String,
    },
    /// Turn `user_allow_other` on in /etc/fuse.conf, keeping every other line.
    AllowOther {
        contents: String,
    },
    CreateDirs {
        dirs: Vec<(String, u32)>,
    },
    WriteUnit {
        unit: String,
        path: String,
        contents: String,
    },
    DaemonReload,
    Enable {
        unit: String,
    },
    Start {
        name: String,
        unit: String,
        log: String,
    },
    Restart {
        name: String,
        unit: String,
        log: String,
        why: &'static str,
    },
    /// Every listed mount must be an rclone mount now; else the pass fails with why.
    Verify {
        mounts: Vec<Check>,
    },
}

impl fmt::Display for MountAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountAction::RemoveUnit { unit, .. } => {
                write!(f, "remove {unit} (its mount left the spec): stop, disable, delete the unit file")
            }
            MountAction::WriteConfig { path, changed, .. } if changed.is_empty() => {
                write!(f, "write rclone config {path} (0600)")
            }
            MountAction::WriteConfig { path, changed, .. } => {
                write!(f, "write rclone config {path} (0600): section(s) {} changed", changed.join(", "))
            }
            MountAction::RemoveConfig { path } => write!(f, "remove rclone config {path} (no mounts left)"),
            MountAction::AllowOther { .. } => {
                write!(f, "enable user_allow_other in {} (a mount sets allow_other)", unit::FUSE_CONF)
            }
            MountAction::CreateDirs { dirs } => {
                let names: Vec<&str> = dirs.iter().map(|(d, _)| d.as_str()).collect();
                write!(f, "create {}", names.join(", "))
            }
            MountAction::WriteUnit { path, .. } => write!(f, "write unit {path}"),
            MountAction::DaemonReload => write!(f, "daemon-reload"),
            MountAction::Enable { unit } => write!(f, "enable {unit}"),
            MountAction::Start { unit, .. } => write!(f, "start {unit}"),
            MountAction::Restart { unit, why, .. } => write!(f, "restart {unit}: {why}"),
            MountAction::Verify { mounts } => {
                let list: Vec<String> = mounts.iter().map(|m| format!("{} at {}", m.name, m.path)).collect();
                write!(
                    f,
                    "check that {} {} mounted",
                    list.join(", "),
                    if mounts.len() == 1 { "is" } else { "are" }
                )
            }
        }
    }
}

const WHY_CONFIG: &str = "its rclone config section changed";
const WHY_UNIT: &str = "its unit changed";
const WHY_NOT_MOUNTED: &str = "it is active but nothing is mounted at its path";

/// The actions that take the node from `o` to `d`, in order.
pub fn plan(d: &DesiredMounts, o: &ObservedMounts) -> Vec<MountAction> {
    let mut actions = Vec::new();
    // Units first: a removed mount's unit must stop before its config section goes.
    for unit_name in &o.stale_units {
        actions.push(MountAction::RemoveUnit {
            unit: unit_name.clone(),
            path: format!("{}/{unit_name}", elysium_host::systemd::UNIT_DIR),
        });
    }
    match (&d.config, &o.config) {
        (Some(want), have) if have.as_ref() != Some(want) => {
            let old = have.as_ref().map(|h| rclone_conf::section_texts(&h.0)).unwrap_or_default();
            let new = rclone_conf::section_texts(&want.0);
            let changed = new
                .iter()
                .filter(|(name, text)| old.get(*name) != Some(*text))
                .map(|(n, _)| n.clone())
                .collect();
            actions.push(MountAction::WriteConfig {
                path: d.config_path.clone(),
                contents: want.clone(),
                changed,
            });
        }
        (None, Some(_)) => actions.push(MountAction::RemoveConfig { path: d.config_path.clone() }),
        _ => {}
    }
    if d.allow_other
        && let Some(contents) = fuse_conf_with_allow_other(o.fuse_conf.as_deref())
    {
        actions.push(MountAction::AllowOther { contents });
    }
    if !o.missing_dirs.is_empty() {
        let dirs = d.dirs.iter().filter(|(p, _)| o.missing_dirs.contains(p)).cloned().collect();
        actions.push(MountAction::CreateDirs { dirs });
    }
    let none = ObservedUnit::default();
    let observed = |m: &DesiredMount| o.units.get(&m.unit).unwrap_or(&none);
    let mut reload = !o.stale_units.is_empty();
    for m in &d.mounts {
        if observed(m).text.as_deref() != Some(m.unit_text.as_str()) {
            actions.push(MountAction::WriteUnit {
                unit: m.unit.clone(),
                path: m.unit_path.clone(),
                contents: m.unit_text.clone(),
            });
            reload = true;
        }
    }
    if reload {
        actions.push(MountAction::DaemonReload);
    }
    for m in &d.mounts {
        if !observed(m).enabled {
            actions.push(MountAction::Enable { unit: m.unit.clone() });
        }
    }
    let mut checks = Vec::new();
    for m in &d.mounts {
        let u = observed(m);
        let running = matches!(u.active_state.as_str(), "active" | "activating" | "reloading");
        let mounted = o.mounted.contains(&m.name);
        let why = match &u.text {
            Some(old) if old != &m.unit_text && running => {
                Some(if unit::without_hash(old) == unit::without_hash(&m.unit_text) {
                    WHY_CONFIG
                } else {
                    WHY_UNIT
                })
            }
            _ if u.active_state == "active" && !mounted => Some(WHY_NOT_MOUNTED),
            _ => None,
        };
        let (name, unit, log) = (m.name.clone(), m.unit.clone(), m.log.clone());
        if let Some(why) = why {
            actions.push(MountAction::Restart { name, unit, log, why });
        } else if !running {
            actions.push(MountAction::Start { name, unit, log });
        } else if mounted {
            continue;
        }
        checks.push(Check {
            name: m.name.clone(),
            unit: m.unit.clone(),
            path: m.path.clone(),
            log: m.log.clone(),
            secrets: m.secrets.clone(),
        });
    }
    if !checks.is_empty() {
        actions.push(MountAction::Verify { mounts: checks });
    }
    actions
}

/// `/etc/fuse.conf` with `user_allow_other` on, or `None` when it already is. A
/// commented-out `#user_allow_other` (Debian's default file) is uncommented; every
/// other line is kept as it is.
pub fn fuse_conf_with_allow_other(current: Option<&str>) -> Option<String> {
    let current = current.unwrap_or("");
    if current.lines().any(|l| l.trim() == "user_allow_other") {
        return None;
    }
    let mut found = false;
    let mut out = String::new();
    for line in current.lines() {
        let uncommented = line.trim().trim_start_matches('#').trim();
        if !found && uncommented == "user_allow_other" {
            out.push_str("user_allow_other\n");
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(
            "# Added by elysium-node: mounts with allow_other are shared with pods.\nuser_allow_other\n",
        );
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(name: &str, hash: &str) -> DesiredMount {
        DesiredMount {
            name: name.into(),
            unit: unit::unit_name(name),
            unit_path: format!("/etc/systemd/system/{}", unit::unit_name(name)),
            unit_text: format!(
                "[Unit]\n{}={hash}\n[Service]\nExecStart=/usr/bin/rclone mount {name}: /mnt/{name}\n",
                unit::HASH_KEY
            ),
            path: format!("/mnt/{name}"),
            log: unit::log_path(name),
            secrets: vec![],
        }
    }

    fn config(sections: &[(&str, &str)]) -> SecretText {
        let rendered: Vec<String> =
            sections.iter().map(|(n, k)| format!("[{n}]\ntype = local\nk = {k}\n")).collect();
        SecretText(rclone_conf::render_file(&rendered))
    }

    fn desired(mounts: Vec<DesiredMount>, sections: &[(&str, &str)]) -> DesiredMounts {
        DesiredMounts {
            config_path: "/etc/elysium-node/rclone/rclone.conf".into(),
            config: (!sections.is_empty()).then(|| config(sections)),
            mounts,
            allow_other: false,
            dirs: vec![("/mnt/a".into(), 0o755)],
        }
    }

    /// The node after `d` was applied and every mount came up.
    fn converged(d: &DesiredMounts) -> ObservedMounts {
        ObservedMounts {
            config: d.config.clone(),
            units: d
                .mounts
                .iter()
                .map(|m| {
                    let u = ObservedUnit {
                        text: Some(m.unit_text.clone()),
                        active_state: "active".into(),
                        enabled: true,
                    };
                    (m.unit.clone(), u)
                })
                .collect(),
            mounted: d.mounts.iter().map(|m| m.name.clone()).collect(),
            fuse_conf: Some("user_allow_other\n".into()),
            ..Default::default()
        }
    }

    fn shown(actions: &[MountAction]) -> Vec<String> {
        actions.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_fresh_node_gets_config_dirs_units_and_starts() {
        let d = desired(vec![mount("a", "h1")], &[("a", "1")]);
        let o = ObservedMounts { missing_dirs: vec!["/mnt/a".into()], ..Default::default() };
        assert_eq!(
            shown(&plan(&d, &o)),
            [
                "write rclone config /etc/elysium-node/rclone/rclone.conf (0600): section(s) a changed",
                "create /mnt/a",
                "write unit /etc/systemd/system/elysium-mount-a.service",
                "daemon-reload",
                "enable elysium-mount-a.service",
                "start elysium-mount-a.service",
                "check that a at /mnt/a is mounted",
            ]
        );
        assert!(plan(&d, &converged(&d)).is_empty(), "a converged node needs nothing");
    }

    #[test]
    fn a_changed_section_restarts_only_its_mount() {
        let before = desired(vec![mount("a", "h1"), mount("b", "h2")], &[("a", "1"), ("b", "2")]);
        let after = desired(vec![mount("a", "h1"), mount("b", "h3")], &[("a", "1"), ("b", "3")]);
        assert_eq!(
            shown(&plan(&after, &converged(&before))),
            [
                "write rclone config /etc/elysium-node/rclone/rclone.conf (0600): section(s) b changed",
                "write unit /etc/systemd/system/elysium-mount-b.service",
                "daemon-reload",
                "restart elysium-mount-b.service: its rclone config section changed",
                "check that b at /mnt/b is mounted",
            ]
        );
    }

    #[test]
    fn a_changed_unit_says_so() {
        let before = desired(vec![mount("a", "h1")], &[("a", "1")]);
        let mut after = before.clone();
        after.mounts[0].unit_text.push_str("# read_only now\n");
        let actions = plan(&after, &converged(&before));
        assert!(shown(&actions).contains(&"restart elysium-mount-a.service: its unit changed".to_owned()));
    }

    #[test]
    fn a_removed_mount_loses_its_unit_and_section() {
        let before = desired(vec![mount("a", "h1"), mount("b", "h2")], &[("a", "1"), ("b", "2")]);
        let after = desired(vec![mount("a", "h1")], &[("a", "1")]);
        let mut o = converged(&before);
        o.units.remove("elysium-mount-b.service");
        o.mounted.remove("b");
        o.stale_units = vec!["elysium-mount-b.service".into()];
        assert_eq!(
            shown(&plan(&after, &o)),
            [
                "remove elysium-mount-b.service (its mount left the spec): stop, disable, delete the unit file",
                "write rclone config /etc/elysium-node/rclone/rclone.conf (0600)",
                "daemon-reload",
            ]
        );
        // The last mount gone: the config (credentials) goes too.
        let none = desired(vec![], &[]);
        let mut o = converged(&after);
        o.units.clear();
        o.stale_units = vec!["elysium-mount-a.service".into()];
        assert_eq!(
            shown(&plan(&none, &o)),
            [
                "remove elysium-mount-a.service (its mount left the spec): stop, disable, delete the unit file",
                "remove rclone config /etc/elysium-node/rclone/rclone.conf (no mounts left)",
                "daemon-reload",
            ]
        );
    }

    #[test]
    fn stopped_failing_and_unmounted_units() {
        let d = desired(vec![mount("a", "h1")], &[("a", "1")]);
        // Stopped by hand: started again.
        let mut o = converged(&d);
        o.units.get_mut("elysium-mount-a.service").unwrap().active_state = "inactive".into();
        o.mounted.clear();
        assert_eq!(
            shown(&plan(&d, &o)),
            ["start elysium-mount-a.service", "check that a at /mnt/a is mounted"]
        );
        // Failing and being restarted by systemd: not restarted again, but reported.
        o.units.get_mut("elysium-mount-a.service").unwrap().active_state = "activating".into();
        assert_eq!(shown(&plan(&d, &o)), ["check that a at /mnt/a is mounted"]);
        // Active over nothing: restarted.
        o.units.get_mut("elysium-mount-a.service").unwrap().active_state = "active".into();
        assert_eq!(
            shown(&plan(&d, &o)),
            [
                "restart elysium-mount-a.service: it is active but nothing is mounted at its path",
                "check that a at /mnt/a is mounted"
            ]
        );
    }

    #[test]
    fn config_display_never_shows_contents() {
        let d = desired(vec![mount("a", "h1")], &[("a", "hunter2")]);
        let actions = plan(&d, &ObservedMounts::default());
        for a in &actions {
            assert!(!a.to_string().contains("hunter2"), "{a}");
            assert!(!format!("{a:?}").contains("hunter2"), "{a:?}");
        }
    }

    #[test]
    fn allow_other_keeps_other_lines() {
        let mut d = desired(vec![mount("a", "h1")], &[("a", "1")]);
        d.allow_other = true;
        let mut o = converged(&d);
        o.fuse_conf = Some("# fuse.conf\n#mount_max = 1000\n#user_allow_other\n".into());
        let actions = plan(&d, &o);
        assert_eq!(
            actions,
            [MountAction::AllowOther {
                contents: "# fuse.conf\n#mount_max = 1000\nuser_allow_other\n".into()
            }]
        );
        assert_eq!(fuse_conf_with_allow_other(Some("user_allow_other\n")), None);
        assert_eq!(
            fuse_conf_with_allow_other(None).unwrap(),
            "# Added by elysium-node: mounts with allow_other are shared with pods.\nuser_allow_other\n"
        );
        let kept = fuse_conf_with_allow_other(Some("mount_max = 10")).unwrap();
        assert!(kept.starts_with("mount_max = 10\n") && kept.ends_with("user_allow_other\n"), "{kept}");
    }
}
