//! systemd, driven over its D-Bus API (`org.freedesktop.systemd1`), never by parsing
//! `systemctl` output.
//!
//! [`DbusSystemd`] talks to the real manager on the system bus. [`crate::fake::FakeSystemd`]
//! keeps the same contract in memory (a unit must have a unit file under the root
//! to be enabled or started; jobs succeed or fail as scripted) so plans and apply
//! code can be unit-tested without a machine.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::OnceCell;
use zbus::zvariant::OwnedObjectPath;

/// Where unit files we install live (the admin's directory, which wins over
/// `/usr/lib/systemd/system`).
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// How long to wait for a start/stop/restart job before giving up. Generous: a
/// `Type=notify` service may take a while to report READY.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// What systemd says about a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    /// `loaded`, `not-found`, `error`, `masked`.
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, `deactivating`, `reloading`.
    pub active_state: String,
    /// Type-specific, e.g. `running`, `dead`.
    pub sub_state: String,
    /// `enabled`, `disabled`, `static`, ... (empty when there is no unit file).
    pub unit_file_state: String,
}

impl UnitStatus {
    pub fn is_active(&self) -> bool {
        self.active_state == "active"
    }
    pub fn is_enabled(&self) -> bool {
        self.unit_file_state == "enabled"
    }
}

/// A systemd call that failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("could not connect to systemd on the D-Bus system bus (is systemd PID 1 and dbus running?)")]
    Connect(#[source] Box<zbus::Error>),
    #[error("systemd refused {method} for {unit}")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("systemd job {op} {unit} ended with result `{result}` (see `journalctl -u {unit}`)")]
    JobFailed { op: &'static str, unit: String, result: String },
    #[error("systemd job {op} {unit} did not finish within {timeout:?}")]
    Timeout { op: &'static str, unit: String, timeout: Duration },
    #[error("unit {unit} has no unit file")]
    NoUnitFile { unit: String },
}

/// The operations elysium-node needs from a service manager.
#[async_trait]
pub trait Systemd: Send + Sync + std::fmt::Debug {
    /// `daemon-reload`: re-read unit files.
    async fn daemon_reload(&self) -> Result<(), SystemdError>;
    /// Enables unit files (creates the `[Install]` symlinks). Returns whether
    /// anything changed.
    async fn enable(&self, units: &[&str]) -> Result<bool, SystemdError>;
    /// Disables unit files. Returns whether anything changed.
    async fn disable(&self, units: &[&str]) -> Result<bool, SystemdError>;
    /// Starts a unit and waits for its job to finish.
    async fn start(&self, unit: &str) -> Result<(), SystemdError>;
    /// Restarts a unit and waits for its job to finish.
    async fn restart(&self, unit: &str) -> Result<(), SystemdError>;
    /// Stops a unit and waits for its job to finish.
    async fn stop(&self, unit: &str) -> Result<(), SystemdError>;
    /// Queues a restart and returns without waiting for the job: for services
    /// with `TimeoutStartSec=0` (K3s) whose start job may never finish when the
    /// service never becomes ready; the caller checks health itself, with a bound.
    async fn queue_restart(&self, unit: &str) -> Result<(), SystemdError>;
    /// Clears a unit's failed state and start-rate counter (`reset-failed`).
    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError>;
    async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Unit", default_service = "org.freedesktop.systemd1")]
trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn unit_file_state(&self) -> zbus::Result<String>;
}

/// The real systemd on the D-Bus system bus. Connects on first use, so creating
/// one costs nothing on a code path that never touches systemd (`--dry-run`).
#[derive(Debug, Default)]
pub struct DbusSystemd {
    conn: OnceCell<zbus::Connection>,
}

impl DbusSystemd {
    pub fn new() -> Self {
        Self::default()
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, SystemdError> {
        let conn = self
            .conn
            .get_or_try_init(|| async { zbus::Connection::system().await })
            .await
            .map_err(|e| SystemdError::Connect(Box::new(e)))?;
        ManagerProxy::new(conn).await.map_err(|e| SystemdError::Connect(Box::new(e)))
    }

    /// Queues a job and waits for its `JobRemoved` signal. The signal stream is set
    /// up and `Subscribe` called *before* the job is queued: signals are only sent
    /// to subscribed clients and a fast job could otherwise finish unseen.
    #[tracing::instrument(skip(self), fields(unit = %unit, op = %op))]
    async fn run_job(&self, op: &'static str, unit: &str) -> Result<(), SystemdError> {
        let m = self.manager().await?;
        let call =
            |source| SystemdError::Call { method: op, unit: unit.to_owned(), source: Box::new(source) };
        let mut removed = m.receive_job_removed().await.map_err(call)?;
        match m.subscribe().await {
            Ok(()) => {}
            // The connection lives as long as the process, and systemd answers a second
            // Subscribe from the same client with this error: the first one still holds.
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
            Err(e) => return Err(call(e)),
        }
        let job = match op {
            "start" => m.start_unit(unit, "replace").await,
            "stop" => m.stop_unit(unit, "replace").await,
            _ => m.restart_unit(unit, "replace").await,
        }
        .map_err(call)?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job == job {
                    return Some(args.result.clone());
                }
            }
            None
        };
        match tokio::time::timeout(JOB_TIMEOUT, wait).await {
            Ok(Some(result)) if result == "done" => {
                tracing::debug!("systemd job done");
                Ok(())
            }
            Ok(Some(result)) => Err(SystemdError::JobFailed { op, unit: unit.to_owned(), result }),
            Ok(None) => {
                Err(SystemdError::JobFailed { op, unit: unit.to_owned(), result: "bus closed".into() })
            }
            Err(_) => Err(SystemdError::Timeout { op, unit: unit.to_owned(), timeout: JOB_TIMEOUT }),
        }
    }
}

#[async_trait]
impl Systemd for DbusSystemd {
    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        let m = self.manager().await?;
        m.reload().await.map_err(|source| SystemdError::Call {
            method: "Reload",
            unit: "(manager)".into(),
            source: Box::new(source),
        })
    }

    async fn enable(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let m = self.manager().await?;
        let (_, changes) = m.enable_unit_files(units, false, true).await.map_err(|source| {
            SystemdError::Call { method: "EnableUnitFiles", unit: units.join(" "), source: Box::new(source) }
        })?;
        Ok(!changes.is_empty())
    }

    async fn disable(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let m = self.manager().await?;
        let changes = m.disable_unit_files(units, false).await.map_err(|source| SystemdError::Call {
            method: "DisableUnitFiles",
            unit: units.join(" "),
            source: Box::new(source),
        })?;
        Ok(!changes.is_empty())
    }

    async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.run_job("start", unit).await
    }

    async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.run_job("restart", unit).await
    }

    async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.run_job("stop", unit).await
    }

    async fn queue_restart(&self, unit: &str) -> Result<(), SystemdError> {
        let m = self.manager().await?;
        m.restart_unit(unit, "replace").await.map(|_| ()).map_err(|source| SystemdError::Call {
            method: "RestartUnit",
            unit: unit.to_owned(),
            source: Box::new(source),
        })
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        let m = self.manager().await?;
        match m.reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            // Not loaded means nothing to reset.
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(())
            }
            Err(source) => Err(SystemdError::Call {
                method: "ResetFailedUnit",
                unit: unit.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let m = self.manager().await?;
        let call = |source| SystemdError::Call {
            method: "LoadUnit",
            unit: unit.to_owned(),
            source: Box::new(source),
        };
        let path = m.load_unit(unit).await.map_err(call)?;
        let u = UnitProxy::builder(m.inner().connection())
            .path(path)
            .map_err(call)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(call)?;
        Ok(UnitStatus {
            load_state: u.load_state().await.map_err(call)?,
            active_state: u.active_state().await.map_err(call)?,
            sub_state: u.sub_state().await.map_err(call)?,
            unit_file_state: u.unit_file_state().await.map_err(call)?,
        })
    }
}
