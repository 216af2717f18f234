//! The K3s plan: a pure function from (desired, observed) to what must happen.

use std::fmt;

use elysium_installer::k3s_service::K3sRole;
use elysium_installer::k3s_version::{K3sVersion, check_upgrade};

use super::journal::{Failed, Installed, Journal};

/// A file K3s needs, as it should be.
#[derive(Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub path: String,
    pub contents: String,
    pub mode: u32,
    /// Never printed, logged or shown in a diff.
    pub secret: bool,
}

impl fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let contents: &dyn fmt::Debug = if self.secret { &"<redacted>" } else { &self.contents };
        f.debug_struct("FileSpec")
            .field("path", &self.path)
            .field("contents", contents)
            .field("mode", &format_args!("{:04o}", self.mode))
            .field("secret", &self.secret)
            .finish()
    }
}

/// What the node should run.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredK3s {
    pub role: K3sRole,
    /// The token to put in the token file; empty means "not known yet".
    pub token: String,
    /// The release to run: version and its published SHA-256 (hex), when known.
    pub target: Option<Installed>,
    /// Why `target` is unknown (channel server or mirror unreachable).
    pub target_error: Option<String>,
    pub binary_url: String,
    pub files: Vec<FileSpec>,
    pub allow_downgrade: bool,
    /// The spec generation: a version that failed may be retried under a newer one.
    pub generation: u64,
}

impl fmt::Debug for DesiredK3s {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredK3s")
            .field("role", &self.role)
            .field("token", &if self.token.is_empty() { "<none>" } else { "<redacted>" })
            .field("target", &self.target)
            .field("target_error", &self.target_error)
            .field("binary_url", &self.binary_url)
            .field("files", &self.files)
            .field("allow_downgrade", &self.allow_downgrade)
            .field("generation", &self.generation)
            .finish()
    }
}

/// What is on the node now. `Debug` shows the files' sizes only: some hold tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ObservedK3s {
    pub installed: Option<Installed>,
    /// SHA-256 (hex) of the binary actually on disk.
    pub binary_sha256: Option<String>,
    pub last_failed: Option<Failed>,
    pub journal: Option<Journal>,
    /// Current contents of each desired file's path (`None`: missing).
    pub files: Vec<Option<String>>,
    pub unit_active: bool,
    pub unit_enabled: bool,
    /// The unit of the other role exists (the node changed role).
    pub other_unit_present: bool,
}

impl fmt::Debug for ObservedK3s {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: Vec<Option<usize>> = self.files.iter().map(|c| c.as_ref().map(String::len)).collect();
        f.debug_struct("ObservedK3s")
            .field("installed", &self.installed)
            .field("binary_sha256", &self.binary_sha256)
            .field("last_failed", &self.last_failed)
            .field("journal", &self.journal)
            .field("file_bytes", &sizes)
            .field("unit_active", &self.unit_active)
            .field("unit_enabled", &self.unit_enabled)
            .field("other_unit_present", &self.other_unit_present)
            .finish()
    }
}

/// A file write in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: FileSpec,
    pub created: bool,
}

/// Everything to do, in order. One action, because its parts form one
/// transaction: if K3s does not come up healthy, the binary and files written
/// here are rolled back together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct K3sPlan {
    /// An operation interrupted by a crash: finish it or roll it back first.
    pub recover: Option<Journal>,
    /// Install or replace the binary.
    pub install: Option<Install>,
    pub writes: Vec<Write>,
    pub remove_other_unit: bool,
    pub daemon_reload: bool,
    pub enable: bool,
    /// Restart (or start) K3s and pass the health gate.
    pub restart: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub from: Option<Installed>,
    pub to: Installed,
    pub url: String,
}

/// Why nothing can be planned now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error("waiting for the cluster token: the first server has not reported it yet")]
    WaitingForToken,
    #[error(
        "waiting for the first server's address (set [k3s] server_url, or wait for the first server to connect)"
    )]
    WaitingForServer,
    #[error("the K3s release to run is unknown: {0}")]
    NoTarget(String),
    #[error("{0}")]
    Refused(String),
    #[error(
        "{version} failed its health gate ({reason}) and was rolled back; set the spec again (a new generation) to retry, or pick another version"
    )]
    FailedBefore { version: String, reason: String },
}

impl K3sPlan {
    pub fn is_empty(&self) -> bool {
        *self == K3sPlan::default()
    }
}

impl fmt::Display for K3sPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(j) = &self.recover {
            parts.push(format!("recover the interrupted change to {} ({:?})", j.to.version, j.phase));
        }
        if let Some(i) = &self.install {
            let from = i.from.as_ref().map(|f| format!(" (replacing {})", f.version)).unwrap_or_default();
            parts.push(format!(
                "install K3s {}{from} from {}, sha256 {}…",
                i.to.version,
                i.url,
                &i.to.sha256[..12.min(i.to.sha256.len())]
            ));
        }
        for w in &self.writes {
            let verb = if w.created { "create" } else { "update" };
            parts.push(format!(
                "{verb} {} ({:04o}{})",
                w.file.path,
                w.file.mode,
                if w.file.secret { ", secret" } else { "" }
            ));
        }
        if self.remove_other_unit {
            parts.push("remove the unit of the node's previous role".into());
        }
        if self.daemon_reload {
            parts.push("daemon-reload".into());
        }
        if self.enable {
            parts.push("enable the K3s unit".into());
        }
        if let Some(why) = self.restart {
            parts.push(format!("restart K3s ({why}) and wait for its health check"));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Decides what to do.
pub fn plan(desired: &DesiredK3s, observed: &ObservedK3s) -> Result<K3sPlan, Blocked> {
    let mut plan = K3sPlan::default();
    if let Some(j) = &observed.journal {
        // Nothing else until the interrupted operation is settled.
        plan.recover = Some(j.clone());
        return Ok(plan);
    }
    if desired.token.is_empty() {
        return Err(Blocked::WaitingForToken);
    }
    let target = match (&desired.target, &observed.installed) {
        (Some(t), _) => t.clone(),
        // Offline but installed: keep running what we have.
        (None, Some(installed)) if observed.binary_sha256.as_deref() == Some(installed.sha256.as_str()) => {
            installed.clone()
        }
        (None, _) => return Err(Blocked::NoTarget(desired.target_error.clone().unwrap_or_default())),
    };

    let binary_matches = observed.binary_sha256.as_deref() == Some(target.sha256.as_str());
    if !binary_matches {
        if let Some(failed) = &observed.last_failed
            && failed.version == target.version
            && failed.generation >= desired.generation
        {
            return Err(Blocked::FailedBefore {
                version: failed.version.clone(),
                reason: failed.reason.clone(),
            });
        }
        if let Some(installed) = &observed.installed {
            let (from, to) = (parse(&installed.version)?, parse(&target.version)?);
            check_upgrade(&from, &to, desired.allow_downgrade)
                .map_err(|e| Blocked::Refused(e.to_string()))?;
        }
        plan.install =
            Some(Install { from: observed.installed.clone(), to: target, url: desired.binary_url.clone() });
    }

    let mut unit_changed = false;
    let mut config_changed = false;
    for (file, current) in desired.files.iter().zip(&observed.files) {
        if current.as_deref() != Some(file.contents.as_str()) {
            unit_changed |= file.path.ends_with(".service");
            config_changed |= !file.path.ends_with(".service");
            plan.writes.push(Write { file: file.clone(), created: current.is_none() });
        }
    }
    plan.remove_other_unit = observed.other_unit_present;
    plan.daemon_reload = unit_changed || observed.other_unit_present;
    plan.enable = !observed.unit_enabled;
    plan.restart = if plan.install.is_some() {
        Some("new binary")
    } else if unit_changed || config_changed {
        Some("configuration changed")
    } else if !observed.unit_active {
        Some("not running")
    } else {
        None
    };
    Ok(plan)
}

fn parse(v: &str) -> Result<K3sVersion, Blocked> {
    v.parse::<K3sVersion>().map_err(|e| Blocked::Refused(format!("version {v:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(v: &str, sha: &str) -> Installed {
        Installed { version: v.into(), sha256: sha.into() }
    }

    fn desired(v: &str, sha: &str) -> DesiredK3s {
        DesiredK3s {
            role: K3sRole::Server { cluster_init: true },
            token: "secret".into(),
            target: Some(installed(v, sha)),
            target_error: None,
            binary_url: format!("http://mirror/download/{v}/k3s"),
            files: vec![
                FileSpec {
                    path: "/etc/rancher/k3s/config.yaml".into(),
                    contents: "a".into(),
                    mode: 0o600,
                    secret: false,
                },
                FileSpec {
                    path: "/etc/systemd/system/k3s.service".into(),
                    contents: "u".into(),
                    mode: 0o644,
                    secret: false,
                },
            ],
            allow_downgrade: false,
            generation: 3,
        }
    }

    fn converged(v: &str, sha: &str) -> ObservedK3s {
        ObservedK3s {
            installed: Some(installed(v, sha)),
            binary_sha256: Some(sha.into()),
            last_failed: None,
            journal: None,
            files: vec![Some("a".into()), Some("u".into())],
            unit_active: true,
            unit_enabled: true,
            other_unit_present: false,
        }
    }

    #[test]
    fn fresh_install_does_everything() {
        let obs = ObservedK3s { files: vec![None, None], ..Default::default() };
        let p = plan(&desired("v1.31.4+k3s1", "aa"), &obs).unwrap();
        assert!(p.install.as_ref().is_some_and(|i| i.from.is_none()));
        assert_eq!(p.writes.len(), 2);
        assert!(p.daemon_reload && p.enable);
        assert_eq!(p.restart, Some("new binary"));
    }

    #[test]
    fn no_change_means_no_restart() {
        let p = plan(&desired("v1.31.4+k3s1", "aa"), &converged("v1.31.4+k3s1", "aa")).unwrap();
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn config_change_restarts_without_reinstalling() {
        let mut obs = converged("v1.31.4+k3s1", "aa");
        obs.files[0] = Some("old".into());
        let p = plan(&desired("v1.31.4+k3s1", "aa"), &obs).unwrap();
        assert!(p.install.is_none() && !p.daemon_reload);
        assert_eq!(p.restart, Some("configuration changed"));
        obs.files[0] = Some("a".into());
        obs.unit_active = false;
        assert_eq!(plan(&desired("v1.31.4+k3s1", "aa"), &obs).unwrap().restart, Some("not running"));
    }

    #[test]
    fn upgrades_are_preflighted() {
        let obs = converged("v1.30.2+k3s1", "aa");
        let p = plan(&desired("v1.31.4+k3s1", "bb"), &obs).unwrap();
        assert_eq!(p.install.unwrap().from.unwrap().version, "v1.30.2+k3s1");
        let skip = plan(&desired("v1.32.0+k3s1", "bb"), &obs).unwrap_err();
        assert!(skip.to_string().contains("skips minor"), "{skip}");
        let down = plan(&desired("v1.29.0+k3s1", "bb"), &obs).unwrap_err();
        assert!(down.to_string().contains("older"), "{down}");
        let mut forced = desired("v1.29.0+k3s1", "bb");
        forced.allow_downgrade = true;
        assert!(plan(&forced, &obs).unwrap().install.is_some());
    }

    #[test]
    fn a_failed_version_is_not_retried_until_the_spec_changes() {
        let mut obs = converged("v1.31.4+k3s1", "aa");
        obs.last_failed = Some(Failed {
            version: "v1.31.5+k3s1".into(),
            reason: "never ready".into(),
            unix: 1,
            generation: 3,
        });
        let err = plan(&desired("v1.31.5+k3s1", "bb"), &obs).unwrap_err();
        assert!(matches!(err, Blocked::FailedBefore { .. }), "{err}");
        let mut newer = desired("v1.31.5+k3s1", "bb");
        newer.generation = 4;
        assert!(plan(&newer, &obs).unwrap().install.is_some());
    }

    #[test]
    fn debug_shows_no_token() {
        const MARKER: &str = "M4RK3R-s3cret";
        let mut d = desired("v1.31.4+k3s1", "aa");
        d.token = MARKER.into();
        d.files.push(FileSpec { path: "/t".into(), contents: MARKER.into(), mode: 0o600, secret: true });
        let observed = ObservedK3s { files: vec![Some(MARKER.into())], ..Default::default() };
        let backup = crate::steps::k3s::journal::FileBackup {
            path: "/t".into(),
            contents: Some(MARKER.into()),
            mode: 0o600,
        };
        for shown in [format!("{d:?}"), format!("{observed:?}"), format!("{backup:?}")] {
            assert!(!shown.contains(MARKER), "Debug shows a token: {shown}");
        }
        assert!(format!("{d:?}").contains("config.yaml"), "the non-secret file is still shown");
    }

    #[test]
    fn waits_for_a_token_and_keeps_running_offline() {
        let mut d = desired("v1.31.4+k3s1", "aa");
        d.token.clear();
        assert_eq!(plan(&d, &converged("v1.31.4+k3s1", "aa")).unwrap_err(), Blocked::WaitingForToken);
        let mut offline = desired("v1.31.4+k3s1", "aa");
        offline.target = None;
        offline.target_error = Some("channel server unreachable".into());
        assert!(plan(&offline, &converged("v1.31.4+k3s1", "aa")).unwrap().is_empty());
        let err = plan(&offline, &ObservedK3s { files: vec![None, None], ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("unreachable"));
    }

    #[test]
    fn an_interrupted_operation_comes_first() {
        let mut obs = converged("v1.31.4+k3s1", "aa");
        obs.journal = Some(Journal {
            phase: super::super::journal::Phase::Restarting,
            from: Some(installed("v1.31.4+k3s1", "aa")),
            to: installed("v1.31.5+k3s1", "bb"),
            started_unix: 0,
            generation: 3,
            reason: None,
            files: vec![],
        });
        let p = plan(&desired("v1.31.5+k3s1", "bb"), &obs).unwrap();
        assert!(p.recover.is_some() && p.install.is_none() && p.writes.is_empty());
    }
}
