//! [`FakeSystemd`]: systemd's contract in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::fs::RootFs;
use crate::systemd::{Systemd, SystemdError, UNIT_DIR, UnitStatus};

/// An in-memory service manager with systemd's contract: units need a unit file
/// under the root, enabling is idempotent, jobs can be scripted to fail.
#[derive(Debug)]
pub struct FakeSystemd {
    fs: RootFs,
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    enabled: BTreeMap<String, bool>,
    active: BTreeMap<String, bool>,
    failing: BTreeMap<String, String>,
    calls: Vec<String>,
}

impl FakeSystemd {
    pub fn new(fs: RootFs) -> Self {
        Self { fs, state: Mutex::new(FakeState::default()) }
    }

    /// Every call so far, as `"start elysium-node.service"`, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Makes start/restart jobs of `unit` end with `result` (e.g. `failed`).
    pub fn fail_jobs(&self, unit: &str, result: &str) {
        self.lock().failing.insert(unit.to_owned(), result.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        // A panic while holding the lock already failed the test; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a unit file exists where systemd looks for one: the administrator's
    /// (`UNIT_DIR`), runtime units, and the packages' (`/usr/lib/systemd/system`, where
    /// the Debian package installs ours).
    fn has_unit_file(&self, unit: &str) -> bool {
        [UNIT_DIR, "/run/systemd/system", "/usr/lib/systemd/system"]
            .iter()
            .any(|dir| self.fs.exists(PathBuf::from(dir).join(unit)))
    }

    fn require_file(&self, unit: &str) -> Result<(), SystemdError> {
        if self.has_unit_file(unit) {
            Ok(())
        } else {
            Err(SystemdError::NoUnitFile { unit: unit.to_owned() })
        }
    }

    fn job(&self, op: &'static str, unit: &str) -> Result<(), SystemdError> {
        self.lock().calls.push(format!("{op} {unit}"));
        if op != "stop" {
            self.require_file(unit)?;
        }
        let mut s = self.lock();
        if op != "stop"
            && let Some(result) = s.failing.get(unit).cloned()
        {
            s.active.insert(unit.to_owned(), false);
            return Err(SystemdError::JobFailed { op, unit: unit.to_owned(), result });
        }
        s.active.insert(unit.to_owned(), op != "stop");
        Ok(())
    }
}

#[async_trait]
impl Systemd for FakeSystemd {
    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.lock().calls.push("daemon-reload".into());
        Ok(())
    }

    async fn enable(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let mut changed = false;
        for unit in units {
            self.require_file(unit)?;
            let mut s = self.lock();
            s.calls.push(format!("enable {unit}"));
            changed |= s.enabled.insert((*unit).to_owned(), true) != Some(true);
        }
        Ok(changed)
    }

    async fn disable(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let mut changed = false;
        for unit in units {
            let mut s = self.lock();
            s.calls.push(format!("disable {unit}"));
            changed |= s.enabled.insert((*unit).to_owned(), false) == Some(true);
        }
        Ok(changed)
    }

    async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("start", unit)
    }

    async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("restart", unit)
    }

    async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("stop", unit)
    }

    async fn queue_restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("restart", unit)
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.lock().calls.push(format!("reset-failed {unit}"));
        Ok(())
    }

    async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let has_file = self.has_unit_file(unit);
        let s = self.lock();
        let active = s.active.get(unit).copied().unwrap_or(false);
        let failed = s.failing.contains_key(unit) && !active;
        Ok(UnitStatus {
            load_state: if has_file { "loaded" } else { "not-found" }.into(),
            active_state: if active {
                "active"
            } else if failed {
                "failed"
            } else {
                "inactive"
            }
            .into(),
            sub_state: if active { "running" } else { "dead" }.into(),
            unit_file_state: match (has_file, s.enabled.get(unit)) {
                (false, _) => String::new(),
                (true, Some(true)) => "enabled".into(),
                (true, _) => "disabled".into(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_needs_a_unit_file_and_tracks_state() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        let sd = FakeSystemd::new(fs.clone());
        assert!(matches!(sd.start("x.service").await, Err(SystemdError::NoUnitFile { .. })));
        fs.write_atomic("/etc/systemd/system/x.service", b"[Service]\n", 0o644).unwrap();
        assert!(sd.enable(&["x.service"]).await.unwrap());
        assert!(!sd.enable(&["x.service"]).await.unwrap(), "enabling twice changes nothing");
        sd.start("x.service").await.unwrap();
        let st = sd.status("x.service").await.unwrap();
        assert!(st.is_active() && st.is_enabled());
        sd.fail_jobs("x.service", "failed");
        let e = sd.restart("x.service").await.unwrap_err();
        assert!(e.to_string().contains("result `failed`"), "{e}");
        assert_eq!(sd.status("x.service").await.unwrap().active_state, "failed");
    }
}
