//! The Mounts step: remote storage (`[[mounts]]`) mounted on the node with rclone,
//! one systemd unit per mount, replacing hand-written rclone units.
//!
//! It writes one rclone config for all mounts (0600; only `IsPassword` options
//! obscured), one `Type=notify` unit per mount (rclone in the foreground, a stat of
//! the remote before mounting so bad credentials fail the start), enables and starts
//! them over D-Bus, restarts exactly the mounts whose unit or config section changed,
//! removes the units of mounts dropped from the spec, and reports each mount as a
//! `Mount/NAME` condition with the reason it is down. It does not install rclone or
//! fuse3: it checks them and says what is missing.

pub mod failure;
pub mod mountinfo;
pub mod obscure;
pub mod plan;
pub mod rclone_conf;
pub mod unit;
pub mod version;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use elysium_host::systemd::{SystemdError, UNIT_DIR};
use elysium_host::{Cmd, Host, ProcessError};
use elysium_spec::MountSpec;

use crate::reconcile::{Desired, MissingSecret, Step, SubCondition};
use failure::{Evidence, Reason};
use mountinfo::RcloneMount;
use plan::{Check, DesiredMount, DesiredMounts, MountAction, ObservedMounts, ObservedUnit, SecretText};
use version::{RcloneVersion, Requirement};

const STEP: &str = "Mounts";
/// How long `rclone version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a mount's log is read to say why it failed.
const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// A log past this size is cut to its tail (systemd appends on every restart).
const LOG_MAX_BYTES: u64 = 1024 * 1024;

/// Why the mounts are not as the spec says. Names the file, unit or mount; never
/// a credential (secrets stay in the 0600 config, messages carry their names).
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    #[error(transparent)]
    Secret(#[from] MissingSecret),
    #[error(transparent)]
    Fs(#[from] elysium_host::FsError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    MountTable(#[from] elysium_host::mounts::MountError),
    #[error("could not list {UNIT_DIR}")]
    ListUnits(#[source] std::io::Error),
    /// The spec cannot be served on this node (rclone missing or too old, …).
    #[error(transparent)]
    Blocked(#[from] Blocked),
    /// Mounts that did not come up, each with its reason and what to do.
    #[error("{}", .0.join("; "))]
    Down(Vec<String>),
}

/// Why the step cannot manage mounts at all on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error(
        "rclone is not installed at {binary} (the `[rclone] binary` of the cluster spec): install rclone there, or set `[rclone] binary` to where it is"
    )]
    RcloneMissing { binary: String },
    #[error("could not run {binary} version (the `[rclone] binary` of the cluster spec): {problem}")]
    RcloneUnusable { binary: String, problem: String },
    #[error(
        "rclone {version} at {binary} is too old: {} needs rclone {} or newer; install a newer rclone (the upstream release binary) and point `[rclone] binary` at it",
        need.why,
        need.min
    )]
    RcloneTooOld { binary: String, version: RcloneVersion, need: Requirement },
    #[error("{path} is missing: install fuse3 (`apt install fuse3`); rclone mounts through it")]
    FuseMissing { path: String },
    #[error("{0}")]
    Config(#[from] rclone_conf::ConfError),
}

impl Blocked {
    fn reason(&self) -> Reason {
        match self {
            Blocked::RcloneMissing { .. } | Blocked::RcloneUnusable { .. } => Reason::RcloneMissing,
            Blocked::RcloneTooOld { .. } => Reason::RcloneTooOld,
            Blocked::FuseMissing { .. } => Reason::FuseMissing,
            Blocked::Config(_) => Reason::MountFailed,
        }
    }
}

/// What observe found.
#[derive(Debug)]
pub enum Observation {
    /// No mounts wanted and none of ours on the node.
    Idle,
    Blocked(Blocked),
    Managed {
        desired: Box<DesiredMounts>,
        observed: Box<ObservedMounts>,
    },
}

/// The step's actions: the plan's, or a refusal.
#[derive(Debug)]
pub enum Action {
    Do(MountAction),
    Refuse(Blocked),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Do(a) => a.fmt(f),
            Action::Refuse(b) => write!(f, "refuse: {b}"),
        }
    }
}

/// The step. Remembers the last refusal, so each mount's condition can name it.
#[derive(Debug, Default)]
pub struct MountsStep {
    blocked: Mutex<Option<Blocked>>,
}

impl MountsStep {
    pub fn new() -> Self {
        Self::default()
    }

    fn set_blocked(&self, b: Option<Blocked>) {
        *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    fn blocked(&self) -> Option<Blocked> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs `<binary> version` (the binary resolved below the host's root) and parses it.
pub async fn rclone_version(host: &Host, binary: &str) -> Result<RcloneVersion, Blocked> {
    let unusable = |problem: String| Blocked::RcloneUnusable { binary: binary.to_owned(), problem };
    let cmd = Cmd::new(host.fs.resolve(binary))
        .arg("version")
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .timeout(VERSION_TIMEOUT);
    let out = match host.processes.run(&cmd).await {
        Err(ProcessError::Timeout { .. }) => {
            return Err(unusable(format!("no answer within {VERSION_TIMEOUT:?}")));
        }
        Err(e) if e.is_not_found() => return Err(Blocked::RcloneMissing { binary: binary.to_owned() }),
        Err(ProcessError::Spawn { source, .. } | ProcessError::Io { source, .. }) => {
            return Err(unusable(source.to_string()));
        }
        Err(e) => return Err(unusable(e.to_string())),
        Ok(out) => out,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(unusable(format!("it exited with {}", out.status)));
    }
    RcloneVersion::parse(&text).ok_or_else(|| {
        unusable(format!("its first line {:?} is not `rclone vX.Y.Z`", text.lines().next().unwrap_or("")))
    })
}

/// The secret values of `mount`'s `secret_options`, option → value.
fn secret_values(desired: &Desired, mount: &MountSpec) -> Result<BTreeMap<String, String>, MountsError> {
    let mut out = BTreeMap::new();
    for (option, secret) in &mount.remote.secret_options {
        out.insert(option.clone(), desired.secret(secret)?.to_owned());
    }
    Ok(out)
}

fn read_text(host: &Host, path: &str) -> Result<Option<String>, MountsError> {
    Ok(host.fs.read_optional(path)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Our units present on disk (by file name).
fn units_on_disk(host: &Host) -> Result<Vec<String>, MountsError> {
    let dir = host.fs.resolve(UNIT_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MountsError::ListUnits(e)),
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| unit::mount_name(n).is_some())
        .collect();
    out.sort();
    Ok(out)
}

/// The last `LOG_TAIL_BYTES` of a mount's log (lossy UTF-8), empty when missing.
fn log_tail(host: &Host, log: &str) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(host.fs.resolve(log)) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

impl MountsStep {
    async fn observe_managed(&self, host: &Host, desired: &Desired) -> Result<Observation, MountsError> {
        let spec = &desired.spec;
        let on_disk = units_on_disk(host)?;
        let config_on_disk = read_text(host, &spec.rclone.config)?;
        if spec.mounts.is_empty() && on_disk.is_empty() && config_on_disk.is_none() {
            return Ok(Observation::Idle);
        }
        if !spec.mounts.is_empty() {
            let version = match rclone_version(host, &spec.rclone.binary).await {
                Ok(v) => v,
                Err(b) => return Ok(Observation::Blocked(b)),
            };
            tracing::debug!(binary = %spec.rclone.binary, %version, "rclone found");
            if let Some(need) = version::unmet(version, &spec.mounts) {
                return Ok(Observation::Blocked(Blocked::RcloneTooOld {
                    binary: spec.rclone.binary.clone(),
                    version,
                    need,
                }));
            }
            if !host.fs.exists(unit::FUSERMOUNT3) {
                return Ok(Observation::Blocked(Blocked::FuseMissing { path: unit::FUSERMOUNT3.to_owned() }));
            }
        }

        let previous = config_on_disk.as_deref().map(rclone_conf::parse).unwrap_or_default();
        let mounted: BTreeSet<String> = {
            let entries = host.mounts.table()?;
            spec.mounts
                .iter()
                .filter(|m| mountinfo::mounted_at(&entries, &m.path).is_some_and(|e| e.is_rclone()))
                .map(|m| m.name.clone())
                .collect()
        };
        let mut sections = Vec::new();
        let mut mounts = Vec::new();
        let mut units = BTreeMap::new();
        let mut dirs = vec![(unit::LOG_DIR.to_owned(), 0o700)];
        let mut missing_dirs = Vec::new();
        for m in &spec.mounts {
            let secrets = secret_values(desired, m)?;
            let section = match rclone_conf::render_section(m, &secrets, previous.get(&m.name)) {
                Ok(s) => s,
                Err(e) => return Ok(Observation::Blocked(e.into())),
            };
            let unit_name = unit::unit_name(&m.name);
            let unit_path = format!("{UNIT_DIR}/{unit_name}");
            let text = unit::render(m, &spec.rclone, &rclone_conf::section_hash(&section));
            sections.push(section);
            dirs.push((m.path.clone(), 0o755));
            dirs.push((unit::cache_dir(&spec.rclone, &m.name), 0o700));
            let status = host.systemd.status(&unit_name).await.ok();
            units.insert(
                unit_name.clone(),
                ObservedUnit {
                    text: read_text(host, &unit_path)?,
                    active_state: status.as_ref().map(|s| s.active_state.clone()).unwrap_or_default(),
                    enabled: status.as_ref().is_some_and(|s| s.is_enabled()),
                },
            );
            let log = unit::log_path(&m.name);
            self.cap_log(host, &log);
            mounts.push(DesiredMount {
                name: m.name.clone(),
                unit: unit_name,
                unit_path,
                unit_text: text,
                path: m.path.clone(),
                log,
                secrets: secrets.into_values().map(SecretText).collect(),
            });
        }
        // A mounted path is there (and a dead FUSE mount cannot even be stat'ed).
        let mounted_paths: BTreeSet<&str> =
            spec.mounts.iter().filter(|m| mounted.contains(&m.name)).map(|m| m.path.as_str()).collect();
        for (d, _) in &dirs {
            if !mounted_paths.contains(d.as_str()) && !host.fs.resolve(d).is_dir() {
                missing_dirs.push(d.clone());
            }
        }
        let wanted: BTreeSet<String> = mounts.iter().map(|m| m.unit.clone()).collect();
        let desired_mounts = DesiredMounts {
            config_path: spec.rclone.config.clone(),
            config: (!sections.is_empty()).then(|| SecretText(rclone_conf::render_file(&sections))),
            allow_other: spec.mounts.iter().any(|m| m.allow_other),
            mounts,
            dirs,
        };
        let observed = ObservedMounts {
            config: config_on_disk.map(SecretText),
            units,
            stale_units: on_disk.into_iter().filter(|u| !wanted.contains(u)).collect(),
            mounted,
            fuse_conf: read_text(host, unit::FUSE_CONF)?,
            missing_dirs,
        };
        Ok(Observation::Managed { desired: Box::new(desired_mounts), observed: Box::new(observed) })
    }

    /// Keeps a mount's log bounded: systemd appends to it on every (re)start.
    fn cap_log(&self, host: &Host, log: &str) {
        let real = host.fs.resolve(log);
        if std::fs::metadata(&real).is_ok_and(|m| m.len() > LOG_MAX_BYTES) {
            let tail = log_tail(host, log);
            if let Err(e) = host.fs.write_atomic(log, tail.as_bytes(), 0o600) {
                tracing::warn!(log, error = %e, "could not cut the mount log");
            }
        }
    }

    /// Starts (or restarts) a unit with a fresh log. A job that fails is not an
    /// error here: the Verify action that follows says why, for every mount at once,
    /// and one failing mount does not keep the others from starting.
    async fn start(&self, host: &Host, unit: &str, log: &str, restart: bool) -> Result<(), MountsError> {
        host.fs.write_atomic(log, b"", 0o600)?;
        host.systemd.reset_failed(unit).await?;
        let result = if restart { host.systemd.restart(unit).await } else { host.systemd.start(unit).await };
        match result {
            Ok(()) => Ok(()),
            Err(e @ (SystemdError::JobFailed { .. } | SystemdError::Timeout { .. })) => {
                tracing::warn!(unit, error = %e, "mount did not start");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Why a mount is (not) up.
    async fn evidence_for(&self, host: &Host, check: &Check, mounted: bool) -> (Reason, String) {
        let status = host.systemd.status(&check.unit).await.ok();
        let tail = log_tail(host, &check.log);
        let secrets: Vec<&str> = check.secrets.iter().map(|s| s.0.as_str()).collect();
        let installed = host.fs.exists(format!("{UNIT_DIR}/{}", check.unit));
        let state = status.as_ref().map(|s| s.active_state.clone()).unwrap_or_default();
        failure::classify(&Evidence {
            mounted,
            installed,
            active_state: &state,
            log_tail: &tail,
            secrets: &secrets,
            unit: &check.unit,
            log_path: &check.log,
        })
    }
}

impl Step for MountsStep {
    type Observed = Observation;
    type Action = Action;
    type Error = MountsError;

    fn name(&self) -> &'static str {
        STEP
    }

    async fn observe(&self, host: &Host, desired: &Desired) -> Result<Observation, MountsError> {
        let observation = self.observe_managed(host, desired).await?;
        self.set_blocked(match &observation {
            Observation::Blocked(b) => Some(b.clone()),
            _ => None,
        });
        Ok(observation)
    }

    fn plan(&self, _: &Desired, observation: &Observation) -> Vec<Action> {
        match observation {
            Observation::Idle => vec![],
            Observation::Blocked(b) => vec![Action::Refuse(b.clone())],
            Observation::Managed { desired, observed } => {
                plan::plan(desired, observed).into_iter().map(Action::Do).collect()
            }
        }
    }

    async fn apply(&self, host: &Host, action: &Action) -> Result<(), MountsError> {
        let a = match action {
            Action::Refuse(b) => return Err(b.clone().into()),
            Action::Do(a) => a,
        };
        match a {
            MountAction::RemoveUnit { unit, path } => {
                tracing::info!(unit = %unit, "removing the unit of a mount that left the spec");
                // Best effort: a unit that is not loaded cannot be stopped or disabled,
                // and is gone once its file is.
                if let Err(e) = host.systemd.stop(unit).await {
                    tracing::warn!(unit = %unit, error = %e, "stopping a removed mount");
                }
                if let Err(e) = host.systemd.disable(&[unit]).await {
                    tracing::warn!(unit = %unit, error = %e, "disabling a removed mount");
                }
                host.fs.remove_file(path)?;
                host.systemd.reset_failed(unit).await?;
            }
            MountAction::WriteConfig { path, contents, .. } => {
                host.fs.write_atomic(path, contents.0.as_bytes(), 0o600)?;
            }
            MountAction::RemoveConfig { path } => {
                host.fs.remove_file(path)?;
            }
            MountAction::AllowOther { contents } => {
                let mode = host.fs.mode(unit::FUSE_CONF).unwrap_or(0o644);
                host.fs.write_atomic(unit::FUSE_CONF, contents.as_bytes(), mode)?;
            }
            MountAction::CreateDirs { dirs } => {
                for (d, mode) in dirs {
                    host.fs.create_dir_all(d, *mode)?;
                }
            }
            MountAction::WriteUnit { path, contents, .. } => {
                host.fs.write_atomic(path, contents.as_bytes(), 0o644)?;
            }
            MountAction::DaemonReload => host.systemd.daemon_reload().await?,
            MountAction::Enable { unit } => {
                host.systemd.enable(&[unit]).await?;
            }
            MountAction::Start { unit, log, .. } => self.start(host, unit, log, false).await?,
            MountAction::Restart { unit, log, .. } => self.start(host, unit, log, true).await?,
            MountAction::Verify { mounts } => {
                let entries = host.mounts.table()?;
                let mut down = Vec::new();
                for m in mounts {
                    let mounted = mountinfo::mounted_at(&entries, &m.path).is_some_and(|e| e.is_rclone());
                    if mounted {
                        tracing::info!(mount = %m.name, path = %m.path, "mounted");
                        continue;
                    }
                    let (reason, message) = self.evidence_for(host, m, false).await;
                    down.push(format!("mount {} at {} is down ({reason}): {message}", m.name, m.path));
                }
                if !down.is_empty() {
                    return Err(MountsError::Down(down));
                }
            }
        }
        Ok(())
    }

    async fn conditions(&self, host: &Host, desired: &Desired) -> Vec<SubCondition> {
        let spec = &desired.spec;
        let entries = host.mounts.table().unwrap_or_default();
        let blocked = self.blocked();
        let mut out = Vec::new();
        for m in &spec.mounts {
            let mounted = mountinfo::mounted_at(&entries, &m.path).is_some_and(|e| e.is_rclone());
            let (reason, message) = match (&blocked, mounted) {
                (Some(b), false) => (b.reason(), b.to_string()),
                _ => {
                    let check = Check {
                        name: m.name.clone(),
                        unit: unit::unit_name(&m.name),
                        path: m.path.clone(),
                        log: unit::log_path(&m.name),
                        secrets: secret_values(desired, m)
                            .map(|s| s.into_values().map(SecretText).collect())
                            .unwrap_or_default(),
                    };
                    let (reason, message) = self.evidence_for(host, &check, mounted).await;
                    let message = if reason == Reason::Mounted {
                        format!("{} mounted at {} by {}", unit::remote(m), m.path, check.unit)
                    } else {
                        message
                    };
                    (reason, message)
                }
            };
            out.push(SubCondition {
                kind: format!("Mount/{}", m.name),
                ok: reason == Reason::Mounted,
                reason: reason.to_string(),
                message,
            });
        }
        out
    }
}
