//! Applying a K3s plan as a transaction: download and verify first, journal what
//! will change, swap the binary (keeping the old one as `k3s.previous`), write the
//! files, restart, and wait for the health gate. A failed gate rolls everything
//! back; an agent killed at any point settles the operation from the journal when
//! it starts again (`recover`).

use std::path::Path;
use std::time::Duration;

use elysium_host::Host;
use elysium_installer::download::hash_node_file;
use elysium_installer::k3s_binary::{self, SymlinkPolicy};
use elysium_installer::k3s_service::K3sRole;

use super::journal::{self, Failed, FileBackup, Installed, Journal, Phase};
use super::plan::{DesiredK3s, K3sPlan};
use super::render::other_role_unit;
use super::{K3sError, K3sStep, health, now};

impl K3sStep {
    #[tracing::instrument(skip_all, fields(node = %self.node_name))]
    pub(super) async fn converge(
        &self,
        host: &Host,
        plan: &K3sPlan,
        desired: &DesiredK3s,
        installed: &Option<Installed>,
        timeout: Duration,
    ) -> Result<(), K3sError> {
        let role = desired.role;
        let unit = role.unit_name();
        if let Some(j) = &plan.recover {
            return self.recover(host, j.clone(), role, timeout).await;
        }

        // Download and verify first: until the hash matches, nothing on the node changes.
        let verified = match &plan.install {
            Some(install) => Some(self.download(host, install).await?),
            None => None,
        };
        // A transaction: the journal, with what the writes replace, goes to disk
        // before the first change, so a health failure or a crash can undo it all.
        let transaction = plan.install.is_some() || (!plan.writes.is_empty() && plan.restart.is_some());
        let mut j = Journal {
            phase: if plan.install.is_some() { Phase::Swapping } else { Phase::Restarting },
            from: plan.install.as_ref().map_or_else(|| installed.clone(), |i| i.from.clone()),
            to: match (&plan.install, installed) {
                (Some(i), _) => i.to.clone(),
                (None, Some(current)) => current.clone(),
                // Unreachable by the plan (no install means something is installed).
                (None, None) => Installed { version: String::new(), sha256: String::new() },
            },
            started_unix: now(),
            generation: desired.generation,
            reason: None,
            files: Vec::new(),
        };
        if transaction {
            for w in &plan.writes {
                let contents =
                    host.fs.read_optional(&w.file.path)?.map(|b| String::from_utf8_lossy(&b).into_owned());
                j.files.push(FileBackup { path: w.file.path.clone(), contents, mode: w.file.mode });
            }
            journal::save_journal(&host.fs, &j)?;
        }
        if let Some(verified) = verified {
            k3s_binary::keep_previous(&host.fs, &self.binary())?;
            verified.commit()?;
            k3s_binary::ensure_symlinks(&host.fs, &self.bin_dir, SymlinkPolicy::Create)?;
            j.phase = Phase::Restarting;
            journal::save_journal(&host.fs, &j)?;
        }
        for w in &plan.writes {
            elysium_installer::ensure_file(
                &host.fs,
                Path::new(&w.file.path),
                w.file.contents.as_bytes(),
                w.file.mode,
            )?;
        }
        if plan.remove_other_unit {
            let other = other_role_unit(role);
            let name = Path::new(&other).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            // Best effort: the other role's unit may be stopped or not loaded;
            // removing its file below is what matters.
            let _ = host.systemd.stop(&name).await;
            let _ = host.systemd.disable(&[&name]).await;
            host.fs.remove_file(&other)?;
        }
        if plan.daemon_reload {
            host.systemd.daemon_reload().await?;
        }
        if plan.enable {
            host.systemd.enable(&[&unit]).await?;
        }
        let Some(why) = plan.restart else { return Ok(()) };
        tracing::info!(unit = %unit, reason = why, "restarting K3s");
        host.systemd.reset_failed(&unit).await?;
        host.systemd.queue_restart(&unit).await?;
        match health::wait_healthy(self.probe(role), host.systemd.as_ref(), &unit, timeout).await {
            Ok(took) => {
                tracing::info!(unit = %unit, ?took, "K3s healthy");
                if let Some(install) = &plan.install {
                    self.finish(host, &install.to)?;
                    self.link.result(
                        "k3s-install",
                        true,
                        format!("K3s {} healthy after {took:?}", install.to.version),
                        desired.generation,
                    );
                } else if transaction {
                    journal::clear_journal(&host.fs)?;
                }
                self.report(host, role);
                Ok(())
            }
            Err(unhealthy) if transaction => {
                tracing::warn!(unit = %unit, reason = %unhealthy, "K3s failed its health gate; rolling back");
                j.phase = Phase::RollingBack;
                j.reason = Some(unhealthy.to_string());
                journal::save_journal(&host.fs, &j)?;
                self.rollback(host, j, role, timeout).await
            }
            Err(unhealthy) => Err(unhealthy.into()),
        }
    }

    /// Records a healthy install and closes the journal.
    fn finish(&self, host: &Host, to: &Installed) -> Result<(), K3sError> {
        let mut state = journal::load_state(&host.fs);
        state.installed = Some(to.clone());
        if state.last_failed.as_ref().is_some_and(|f| f.version == to.version) {
            state.last_failed = None;
        }
        journal::save_state(&host.fs, &state)?;
        Ok(journal::clear_journal(&host.fs)?)
    }

    /// Puts the previous binary back, restarts it and checks it; records the
    /// failed version so it is not retried in a loop.
    async fn rollback(
        &self,
        host: &Host,
        j: Journal,
        role: K3sRole,
        timeout: Duration,
    ) -> Result<(), K3sError> {
        let unit = role.unit_name();
        let reason = j.reason.clone().unwrap_or_else(|| "interrupted".into());
        let upgrade = j.from.as_ref() != Some(&j.to);
        // Files first (they are what the restored binary will read), then the binary.
        for f in &j.files {
            match &f.contents {
                Some(text) => host.fs.write_atomic(&f.path, text.as_bytes(), f.mode)?,
                None => {
                    host.fs.remove_file(&f.path)?;
                }
            }
        }
        let binary = self.binary();
        let previous = k3s_binary::previous_path(&binary);
        let restorable = match &j.from {
            Some(from) => {
                let current = hash_node_file(&host.fs, &binary).await?.map(|d| d.to_string());
                if current.as_deref() != Some(from.sha256.as_str()) {
                    host.fs
                        .rename(&previous, &binary)
                        .map_err(|source| K3sError::Restore { path: previous.clone(), source })?;
                }
                true
            }
            None => false,
        };
        let mut state = journal::load_state(&host.fs);
        if upgrade {
            state.installed = j.from.clone();
            state.last_failed = Some(Failed {
                version: j.to.version.clone(),
                reason: reason.clone(),
                unix: now(),
                generation: j.generation,
            });
        }
        if restorable {
            host.systemd.daemon_reload().await?;
            host.systemd.reset_failed(&unit).await?;
            host.systemd.queue_restart(&unit).await?;
        }
        let after = if !restorable {
            "nothing to roll back to (fresh install)".to_owned()
        } else {
            let what = if upgrade {
                format!("rolled back to {}", j.from.as_ref().map(|f| f.version.as_str()).unwrap_or("?"))
            } else {
                "restored the previous configuration".to_owned()
            };
            match health::wait_healthy(self.probe(role), host.systemd.as_ref(), &unit, timeout).await {
                Ok(_) => format!("{what}, healthy"),
                Err(e) => format!("{what}, but still unhealthy: {e}"),
            }
        };
        journal::save_state(&host.fs, &state)?;
        journal::clear_journal(&host.fs)?;
        let failure = if upgrade {
            K3sError::UpgradeRolledBack { to: j.to.version.clone(), reason, after }
        } else {
            K3sError::ChangeRolledBack { reason, after }
        };
        self.link.result("k3s-install", false, failure.to_string(), j.generation);
        Err(failure)
    }

    /// Settles an operation a crash interrupted.
    async fn recover(
        &self,
        host: &Host,
        mut j: Journal,
        role: K3sRole,
        timeout: Duration,
    ) -> Result<(), K3sError> {
        tracing::warn!(to = %j.to.version, phase = ?j.phase, "found an interrupted K3s operation; settling it");
        let unit = role.unit_name();
        let current = hash_node_file(&host.fs, &self.binary()).await?.map(|d| d.to_string());
        match j.phase {
            Phase::Swapping if current.as_deref() != Some(j.to.sha256.as_str()) => {
                // The swap never happened: forget the operation; the next pass redoes it.
                Ok(journal::clear_journal(&host.fs)?)
            }
            Phase::Swapping | Phase::Restarting => {
                host.systemd.reset_failed(&unit).await?;
                host.systemd.queue_restart(&unit).await?;
                match health::wait_healthy(self.probe(role), host.systemd.as_ref(), &unit, timeout).await {
                    Ok(_) => {
                        self.finish(host, &j.to)?;
                        self.report(host, role);
                        Ok(())
                    }
                    Err(e) => {
                        j.phase = Phase::RollingBack;
                        j.reason = Some(e.to_string());
                        journal::save_journal(&host.fs, &j)?;
                        self.rollback(host, j, role, timeout).await
                    }
                }
            }
            Phase::RollingBack => self.rollback(host, j, role, timeout).await,
        }
    }
}
