//! The K3s step: installs K3s as the node's spec says, keeps it configured and
//! upgrades it safely, rolling back by itself when an upgrade does not come up
//! healthy. It does what `curl -sfL https://get.k3s.io | sh -` does on systemd
//! (binary, symlinks, unit, env file; see the installer's `k3s_service`), driven
//! through the host seam, and keeps a journal so a crash at any point converges.
//!
//! This module is the step itself (observe → plan → apply); its parts each own one
//! job: [`render`] the files K3s needs, [`release`] which version to run,
//! [`plan`] the pure decision, [`transaction`] the journalled apply with its
//! rollback and crash recovery, [`download`] the verified download with progress,
//! [`health`] the gate, [`journal`] the state on disk, [`report`] what goes to the
//! coordinator, [`gpu_labels`] the label-drift condition, [`cert_expiry`] the
//! K3s certificates' expiry condition on servers; [`reset`] is
//! `elysium-node reset`.

pub mod cert_expiry;
mod download;
pub mod gpu_labels;
pub mod health;
pub mod journal;
pub mod plan;
pub mod release;
mod render;
pub mod report;
pub mod reset;
mod transaction;

use std::path::PathBuf;
use std::time::Duration;

use elysium_host::{FsError, Host, SystemdError};
use elysium_installer::download::{DownloadError, Fetcher, HttpOptions, hash_node_file};
use elysium_installer::k3s_binary;
use elysium_installer::k3s_release::Arch;
use elysium_installer::k3s_service::{self, K3sRole};

use crate::error_chain;
use crate::link::StepLink;
use crate::reconcile::{Desired, Step, SubCondition};
use crate::state::StateError;
use health::{Probe, Unhealthy};
use journal::Installed;
use plan::{Blocked, DesiredK3s, K3sPlan, ObservedK3s};
pub use report::SERVER_TOKEN_FILE;

const STEP: &str = "K3s";

/// Why K3s on this node is not as the spec says. Names what failed and keeps its
/// source; the reconciler shows the whole chain once.
#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("bad release URL {url}")]
    BadUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("bad published hash")]
    BadHash(#[source] hex::FromHexError),
    #[error(transparent)]
    Unhealthy(#[from] Unhealthy),
    #[error("could not restore {}", path.display())]
    Restore {
        path: PathBuf,
        #[source]
        source: FsError,
    },
    /// The health gate failed and the change was undone (as far as `after` says).
    #[error("upgrade to {to} failed: {reason}; {after}")]
    UpgradeRolledBack { to: String, reason: String, after: String },
    #[error("configuration change failed: {reason}; {after}")]
    ChangeRolledBack { reason: String, after: String },
}

/// The step could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum K3sStepError {
    #[error("this machine's architecture ({0}) has no K3s release")]
    Arch(String),
    #[error(transparent)]
    Http(#[from] elysium_installer::download::DownloadError),
}

/// Health endpoints; tests on one machine point them at other ports.
#[derive(Debug, Clone)]
pub struct Probes {
    pub server: Probe,
    pub agent: Probe,
}

impl Default for Probes {
    fn default() -> Self {
        Self { server: Probe::server(), agent: Probe::agent() }
    }
}

pub struct K3sStep {
    node_name: String,
    fetcher: Fetcher,
    arch: Arch,
    bin_dir: PathBuf,
    probes: Probes,
    link: StepLink,
    /// The node's tailnet address, from the Tailscale step earlier in the pass.
    tailnet: crate::steps::tailscale::Tailnet,
    /// The date the K3s certificates' expiry is judged at.
    clock: std::sync::Arc<dyn elysium_host::Clock>,
}

impl std::fmt::Debug for K3sStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K3sStep").field("node_name", &self.node_name).finish_non_exhaustive()
    }
}

impl K3sStep {
    pub fn new(node_name: &str, link: StepLink) -> Result<Self, K3sStepError> {
        let arch = Arch::host().ok_or_else(|| K3sStepError::Arch(std::env::consts::ARCH.into()))?;
        Ok(Self {
            node_name: node_name.to_owned(),
            fetcher: Fetcher::new(&HttpOptions::default())?,
            arch,
            bin_dir: PathBuf::from(k3s_service::BIN_DIR),
            probes: Probes::default(),
            link,
            tailnet: Default::default(),
            clock: std::sync::Arc::new(elysium_host::SystemClock),
        })
    }

    /// Another clock for the certificate-expiry condition (tests).
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn elysium_host::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where to read the node's Tailscale address (K3s over the tailnet).
    pub fn with_tailnet(mut self, tailnet: crate::steps::tailscale::Tailnet) -> Self {
        self.tailnet = tailnet;
        self
    }

    /// Other health endpoints (tests running several K3s stand-ins on one host).
    pub fn with_probes(mut self, probes: Probes) -> Self {
        self.probes = probes;
        self
    }

    fn binary(&self) -> PathBuf {
        self.bin_dir.join(k3s_binary::BINARY_NAME)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What observe found, plus the desired state it resolved (the release behind a
/// channel is outside the node, so resolving it is observation, not planning).
#[derive(Debug)]
pub enum Observation {
    /// The spec has no `[k3s]` section.
    Unmanaged,
    Managed {
        desired: Box<DesiredK3s>,
        observed: Box<ObservedK3s>,
        timeout: Duration,
    },
    Blocked(Blocked),
}

/// The step's one action: see [`K3sPlan`] for why it is one.
#[derive(Debug)]
pub enum K3sAction {
    Converge { plan: Box<K3sPlan>, desired: Box<DesiredK3s>, installed: Option<Installed>, timeout: Duration },
    Blocked(Blocked),
}

impl std::fmt::Display for K3sAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            K3sAction::Converge { plan, .. } => write!(f, "{plan}"),
            K3sAction::Blocked(b) => write!(f, "blocked: {b}"),
        }
    }
}

impl K3sStep {
    fn probe(&self, role: K3sRole) -> &Probe {
        match role {
            K3sRole::Server { .. } => &self.probes.server,
            K3sRole::Agent => &self.probes.agent,
        }
    }
}

impl Step for K3sStep {
    type Observed = Observation;
    type Action = K3sAction;
    type Error = K3sError;

    fn name(&self) -> &'static str {
        STEP
    }

    /// K3s over the tailnet needs the node's Tailscale address from this pass.
    fn depends_on(&self) -> &'static [&'static str] {
        &[crate::steps::tailscale::STEP]
    }

    async fn observe(&self, host: &Host, desired: &Desired) -> Result<Observation, K3sError> {
        let Some(section) = desired.spec.k3s.as_ref() else { return Ok(Observation::Unmanaged) };
        let Some(assignment) = desired.k3s.as_ref() else { return Ok(Observation::Unmanaged) };
        let role = assignment.role.k3s_role();
        let server_url = (!assignment.server_url.is_empty()).then(|| assignment.server_url.clone());
        if !matches!(role, K3sRole::Server { cluster_init: true }) && server_url.is_none() {
            return Ok(Observation::Blocked(Blocked::WaitingForServer));
        }
        let files = match self.files(host, desired, section, role, server_url, assignment) {
            Ok(files) => files,
            Err(b) => return Ok(Observation::Blocked(b)),
        };

        let state = journal::load_state(&host.fs);
        let binary_sha = hash_node_file(&host.fs, &self.binary()).await?.map(|d| d.to_string());
        let (target, target_error, binary_url) =
            match self.target(section, &assignment.version, &state, binary_sha.as_deref()).await {
                Ok((t, url)) => (Some(t), None, url),
                // Not an error of the pass yet: the plan decides whether it blocks.
                Err(e) => (None, Some(error_chain(&e)), String::new()),
            };
        let mut current = Vec::new();
        for f in &files {
            let bytes = host.fs.read_optional(&f.path)?;
            current.push(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()));
        }
        let unit = role.unit_name();
        let status = host.systemd.status(&unit).await.ok();
        let observed = ObservedK3s {
            installed: state.installed.clone(),
            binary_sha256: binary_sha,
            last_failed: state.last_failed.clone(),
            journal: journal::load_journal(&host.fs),
            files: current,
            unit_active: status.as_ref().is_some_and(|s| s.is_active()),
            unit_enabled: status.as_ref().is_some_and(|s| s.is_enabled()),
            other_unit_present: host.fs.exists(render::other_role_unit(role)),
        };
        let desired = DesiredK3s {
            role,
            token: assignment.token.clone(),
            target,
            target_error,
            binary_url,
            files,
            allow_downgrade: section.allow_downgrade,
            generation: desired.generation,
        };
        let timeout = Duration::from_secs(section.health_timeout_seconds.into());
        Ok(Observation::Managed { desired: Box::new(desired), observed: Box::new(observed), timeout })
    }

    fn plan(&self, _: &Desired, observation: &Observation) -> Vec<K3sAction> {
        match observation {
            Observation::Unmanaged => vec![],
            Observation::Blocked(b) => vec![K3sAction::Blocked(b.clone())],
            Observation::Managed { desired, observed, timeout } => match plan::plan(desired, observed) {
                Ok(p) if p.is_empty() => vec![],
                Ok(p) => vec![K3sAction::Converge {
                    plan: Box::new(p),
                    desired: desired.clone(),
                    installed: observed.installed.clone(),
                    timeout: *timeout,
                }],
                Err(b) => vec![K3sAction::Blocked(b)],
            },
        }
    }

    async fn apply(&self, host: &Host, action: &K3sAction) -> Result<(), K3sError> {
        match action {
            K3sAction::Blocked(b) => Err(b.clone().into()),
            K3sAction::Converge { plan, desired, installed, timeout } => {
                self.converge(host, plan, desired, installed, *timeout).await
            }
        }
    }

    /// After the pass (also a failed one): report to the coordinator, whether
    /// the node's GPU labels still match its hardware, and on servers how soon
    /// K3s's own certificates expire.
    async fn conditions(&self, host: &Host, desired: &Desired) -> Vec<SubCondition> {
        let (Some(_), Some(assignment)) = (&desired.spec.k3s, &desired.k3s) else { return vec![] };
        let role = assignment.role.k3s_role();
        self.report(host, role);
        let mut out: Vec<SubCondition> = self.gpu_label_condition(host).into_iter().collect();
        if matches!(role, K3sRole::Server { .. })
            && let Some(observed) = cert_expiry::observe(&host.fs)
        {
            out.push(cert_expiry::judge(&observed, self.clock.now()));
        }
        out
    }
}
