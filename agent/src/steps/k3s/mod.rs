//! The K3s step: installs K3s as the node's spec says, keeps it configured and
//! upgrades it safely, rolling back by itself when an upgrade does not come up
//! healthy. It does what `curl -sfL https://get.k3s.io | sh -` does on systemd
//! (binary, symlinks, unit, env file; see the installer's `k3s_service`), driven
//! through the host seam, and keeps a journal so a crash at any point converges.

pub mod health;
pub mod journal;
pub mod plan;
pub mod reset;

use std::path::{Path, PathBuf};
use std::time::Duration;

use elysium_host::Host;
use elysium_installer::download::{Fetcher, HttpOptions, hash_node_file};
use elysium_installer::k3s_binary::{self, SymlinkPolicy};
use elysium_installer::k3s_release::{Arch, K3sRelease, Sha256Digest, VersionSelector};
use elysium_installer::k3s_service::{self, K3sConfig, K3sRole};
use elysium_installer::k3s_version::K3sVersion;
use elysium_proto::v1 as pb;

use crate::agent::link::StepLink;
use crate::agent::reconcile::{Desired, Step, StepError, SubCondition};
use crate::error_chain;
use elysium_spec::K3sOverTailscale;
use health::Probe;
use journal::{Failed, FileBackup, Installed, Journal, K3sState, Phase};
use plan::{Blocked, DesiredK3s, FileSpec, K3sPlan, ObservedK3s};

const STEP: &str = "K3s";
/// Where the first server's K3s writes the secure cluster token.
pub const SERVER_TOKEN_FILE: &str = "/var/lib/rancher/k3s/server/token";

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
        })
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

fn err(message: impl std::fmt::Display) -> StepError {
    StepError { step: STEP, message: message.to_string() }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// K3s's network settings for this node.
#[derive(Debug, Default)]
struct K3sNetwork {
    node_ip: Option<String>,
    flannel_iface: Option<String>,
    /// The `vpn-auth-file` contents (a secret: it holds the auth key).
    vpn_auth: Option<String>,
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

fn role_of(assignment: &str) -> K3sRole {
    match assignment {
        "server-init" => K3sRole::Server { cluster_init: true },
        "server" => K3sRole::Server { cluster_init: false },
        _ => K3sRole::Agent,
    }
}

fn other_role_unit(role: K3sRole) -> String {
    match role {
        K3sRole::Server { .. } => K3sRole::Agent.unit_path(),
        K3sRole::Agent => K3sRole::Server { cluster_init: false }.unit_path(),
    }
}

impl K3sStep {
    /// Renders the files K3s needs for this node.
    fn files(
        &self,
        host: &Host,
        desired: &Desired,
        section: &elysium_spec::K3sSection,
        role: K3sRole,
        server_url: Option<String>,
        token: &str,
    ) -> Result<Vec<FileSpec>, Blocked> {
        // Cluster-wide labels, then the node's own (from its join token), then
        // what its hardware says (Intel GPUs), which the Intel device plugin's
        // scheduling relies on.
        let mut labels = section.node_labels.clone();
        labels.extend(desired.labels.clone());
        match crate::hardware::detect_gpus(&host.fs) {
            Ok(report) => labels.extend(crate::hardware::gpu_labels(&report.gpus)),
            Err(e) => tracing::warn!(error = %e, "GPU detection failed; registering without GPU labels"),
        }
        let network = self.network(desired)?;
        let config = K3sConfig {
            role,
            node_name: self.node_name.clone(),
            server_url,
            node_labels: labels,
            node_taints: section.node_taints.clone(),
            node_ip: network.node_ip,
            flannel_iface: network.flannel_iface,
            vpn_auth_file: network.vpn_auth.as_ref().map(|_| k3s_service::VPN_AUTH_PATH.to_owned()),
            disable: if matches!(role, K3sRole::Agent) { vec![] } else { section.disable.clone() },
            tls_san: if matches!(role, K3sRole::Agent) { vec![] } else { section.tls_san.clone() },
            write_kubeconfig_mode: section.write_kubeconfig_mode.clone(),
            extra: section
                .extra_config
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null)))
                .collect(),
        };
        let yaml = k3s_service::render_config(&config).map_err(|e| Blocked::Refused(e.to_string()))?;
        let mut files = vec![];
        if let Some(vpn_auth) = network.vpn_auth {
            files.push(FileSpec {
                path: k3s_service::VPN_AUTH_PATH.into(),
                contents: vpn_auth,
                mode: 0o600,
                secret: true,
            });
        }
        files.extend([
            FileSpec {
                path: k3s_service::TOKEN_PATH.into(),
                contents: format!("{token}\n"),
                mode: 0o600,
                secret: true,
            },
            FileSpec {
                path: role.env_path(),
                contents: k3s_service::render_env(&Default::default()),
                mode: 0o600,
                secret: false,
            },
            FileSpec { path: k3s_service::CONFIG_PATH.into(), contents: yaml, mode: 0o600, secret: false },
            FileSpec {
                path: role.unit_path(),
                contents: k3s_service::render_unit(role),
                mode: 0o644,
                secret: false,
            },
        ]);
        Ok(files)
    }

    /// How K3s reaches the other nodes: its defaults, or the tailnet.
    fn network(&self, desired: &Desired) -> Result<K3sNetwork, Blocked> {
        let Some(ts) = &desired.spec.tailscale else { return Ok(K3sNetwork::default()) };
        match ts.k3s {
            K3sOverTailscale::Off => Ok(K3sNetwork::default()),
            K3sOverTailscale::Flannel => {
                let ip = self.tailnet.get().and_then(|f| f.ipv4).ok_or_else(|| {
                    Blocked::Refused(
                        "K3s rides the tailnet but this node has no Tailscale IPv4 address yet".into(),
                    )
                })?;
                Ok(K3sNetwork {
                    node_ip: Some(ip),
                    flannel_iface: Some(crate::steps::tailscale::INTERFACE.into()),
                    vpn_auth: None,
                })
            }
            K3sOverTailscale::VpnAuth => {
                let key =
                    desired.secret(STEP, &ts.auth_key_secret).map_err(|e| Blocked::Refused(e.message))?;
                let hostname = ts.render_hostname(&self.node_name, &desired.spec.cluster.name);
                let vpn = k3s_service::VpnAuth {
                    join_key: key.to_owned(),
                    control_server_url: ts.login_server.clone(),
                    hostname,
                    tags: ts.canonical_tags(),
                    accept_routes: ts.accept_routes,
                };
                Ok(K3sNetwork {
                    node_ip: None,
                    flannel_iface: None,
                    vpn_auth: Some(k3s_service::render_vpn_auth(&vpn)),
                })
            }
        }
    }

    /// The release to run, resolving a channel and fetching the published hash
    /// only when what is installed does not already answer the question.
    async fn target(
        &self,
        section: &elysium_spec::K3sSection,
        pin: &str,
        state: &K3sState,
        binary_sha: Option<&str>,
    ) -> Result<(Installed, String), String> {
        // A rollout's pin outranks [k3s]: the coordinator moves nodes one by one.
        let pinned = (!pin.is_empty()).then_some(pin);
        let selector = match (pinned.or(section.version.as_deref()), &section.channel) {
            (Some(v), _) => VersionSelector::Pinned(v.parse::<K3sVersion>().map_err(|e| e.to_string())?),
            (None, Some(c)) => VersionSelector::Channel(c.clone()),
            (None, None) => VersionSelector::Channel("stable".into()),
        };
        let release = K3sRelease {
            version: selector.clone(),
            channel_url: section.channel_url.clone(),
            release_url: section.release_url.clone(),
            arch: self.arch,
        };
        if let (VersionSelector::Pinned(v), Some(installed)) = (&selector, &state.installed)
            && installed.version == v.to_string()
            && binary_sha == Some(installed.sha256.as_str())
        {
            let url = release.binary_url(v).map(|u| u.to_string()).unwrap_or_default();
            return Ok((installed.clone(), url));
        }
        let version =
            k3s_binary::resolve_version(&self.fetcher, &release).await.map_err(|e| error_chain(&e))?;
        let sha = k3s_binary::published_hash(&self.fetcher, &release, &version)
            .await
            .map_err(|e| error_chain(&e))?;
        let url = release.binary_url(&version).map_err(|e| e.to_string())?;
        Ok((Installed { version: version.to_string(), sha256: sha.to_string() }, url.to_string()))
    }

    fn probe(&self, role: K3sRole) -> &Probe {
        match role {
            K3sRole::Server { .. } => &self.probes.server,
            K3sRole::Agent => &self.probes.agent,
        }
    }

    /// Tells the coordinator the version running healthy and the last version
    /// that failed its health gate (rollouts halt on it); servers also report the
    /// secure token K3s wrote: the first server's goes to the other nodes, and the
    /// key vault backs up every server's (etcd snapshots need it to be restored).
    fn report(&self, host: &Host, role: K3sRole) {
        let state = journal::load_state(&host.fs);
        let Some(installed) = &state.installed else { return };
        let mut server_token = String::new();
        if matches!(role, K3sRole::Server { .. })
            && let Ok(Some(bytes)) = host.fs.read_optional(SERVER_TOKEN_FILE)
        {
            let token = String::from_utf8_lossy(&bytes).trim().to_owned();
            if token.starts_with("K10") {
                server_token = token;
            }
        }
        let (failed_version, failure) = state.last_failed.map(|f| (f.version, f.reason)).unwrap_or_default();
        self.link.report_k3s(pb::K3sReport {
            server_token,
            version: installed.version.clone(),
            failed_version,
            failure,
        });
    }
}

impl Step for K3sStep {
    type Observed = Observation;
    type Action = K3sAction;

    fn name(&self) -> &'static str {
        STEP
    }

    /// K3s over the tailnet needs the node's Tailscale address from this pass.
    fn depends_on(&self) -> &'static [&'static str] {
        &[crate::steps::tailscale::STEP]
    }

    async fn observe(&self, host: &Host, desired: &Desired) -> Result<Observation, StepError> {
        let Some(section) = desired.spec.k3s.as_ref() else { return Ok(Observation::Unmanaged) };
        let Some(assignment) = desired.k3s.as_ref() else { return Ok(Observation::Unmanaged) };
        let role = role_of(&assignment.role);
        let server_url = (!assignment.server_url.is_empty()).then(|| assignment.server_url.clone());
        if !matches!(role, K3sRole::Server { cluster_init: true }) && server_url.is_none() {
            return Ok(Observation::Blocked(Blocked::WaitingForServer));
        }
        let files = match self.files(host, desired, section, role, server_url, &assignment.token) {
            Ok(files) => files,
            Err(b) => return Ok(Observation::Blocked(b)),
        };

        let state = journal::load_state(&host.fs);
        let binary_sha = hash_node_file(&host.fs, &self.binary()).await.map_err(err)?.map(|d| d.to_string());
        let (target, target_error, binary_url) =
            match self.target(section, &assignment.version, &state, binary_sha.as_deref()).await {
                Ok((t, url)) => (Some(t), None, url),
                Err(e) => (None, Some(e), String::new()),
            };
        let mut current = Vec::new();
        for f in &files {
            let bytes = host.fs.read_optional(&f.path).map_err(err)?;
            current.push(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()));
        }
        let unit = role.unit_name();
        let status = host.systemd.status(&unit).await.ok();
        self.report(host, role);
        let observed = ObservedK3s {
            installed: state.installed.clone(),
            binary_sha256: binary_sha,
            last_failed: state.last_failed.clone(),
            journal: journal::load_journal(&host.fs),
            files: current,
            unit_active: status.as_ref().is_some_and(|s| s.is_active()),
            unit_enabled: status.as_ref().is_some_and(|s| s.is_enabled()),
            other_unit_present: host.fs.exists(other_role_unit(role)),
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

    async fn apply(&self, host: &Host, action: &K3sAction) -> Result<(), StepError> {
        match action {
            K3sAction::Blocked(b) => Err(err(b)),
            K3sAction::Converge { plan, desired, installed, timeout } => {
                self.converge(host, plan, desired, installed, *timeout).await
            }
        }
    }

    /// `Hardware/GpuLabels`: whether the GPU labels K3s registered the node with
    /// still match the hardware (a GPU added or removed, a driver switched).
    async fn conditions(&self, host: &Host, desired: &Desired) -> Vec<SubCondition> {
        if desired.spec.k3s.is_none() {
            return vec![];
        }
        let mut state = journal::load_state(&host.fs);
        if state.installed.is_none() {
            return vec![];
        }
        let detected = match crate::hardware::detect_gpus(&host.fs) {
            Ok(report) => crate::hardware::gpu_labels(&report.gpus),
            Err(e) => {
                return vec![SubCondition {
                    kind: GPU_LABELS.into(),
                    ok: false,
                    reason: "DetectionFailed".into(),
                    message: format!("GPU detection failed: {e}"),
                }];
            }
        };
        let registered = match &state.registered_gpu_labels {
            Some(r) => r.clone(),
            // First healthy pass after install: what K3s registered with now.
            None => {
                state.registered_gpu_labels = Some(detected.clone());
                if let Err(e) = journal::save_state(&host.fs, &state) {
                    tracing::warn!(error = %e, "could not record the registered GPU labels");
                }
                detected.clone()
            }
        };
        let drift = crate::hardware::label_drift(&detected, &registered);
        if drift.is_empty() {
            return vec![SubCondition {
                kind: GPU_LABELS.into(),
                ok: true,
                reason: "InSync".into(),
                message: String::new(),
            }];
        }
        let list: Vec<String> = drift.iter().map(ToString::to_string).collect();
        vec![SubCondition {
            kind: GPU_LABELS.into(),
            ok: false,
            reason: "LabelDrift".into(),
            message: format!(
                "the node's GPU labels no longer match its hardware: {}. K3s applies node labels only when a node registers; relabel it with `kubectl label node {} --overwrite KEY=VALUE` (or `KEY-` to remove)",
                list.join("; "),
                self.node_name
            ),
        }]
    }
}

/// The sub-condition reporting GPU label drift.
const GPU_LABELS: &str = "Hardware/GpuLabels";

impl K3sStep {
    #[tracing::instrument(skip_all, fields(node = %self.node_name))]
    async fn converge(
        &self,
        host: &Host,
        plan: &K3sPlan,
        desired: &DesiredK3s,
        installed: &Option<Installed>,
        timeout: Duration,
    ) -> Result<(), StepError> {
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
                let contents = host
                    .fs
                    .read_optional(&w.file.path)
                    .map_err(err)?
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                j.files.push(FileBackup { path: w.file.path.clone(), contents, mode: w.file.mode });
            }
            journal::save_journal(&host.fs, &j).map_err(err)?;
        }
        if let Some(verified) = verified {
            k3s_binary::keep_previous(&host.fs, &self.binary()).map_err(err)?;
            verified.commit().map_err(err)?;
            k3s_binary::ensure_symlinks(&host.fs, &self.bin_dir, SymlinkPolicy::Create).map_err(err)?;
            j.phase = Phase::Restarting;
            journal::save_journal(&host.fs, &j).map_err(err)?;
        }
        for w in &plan.writes {
            elysium_installer::ensure_file(
                &host.fs,
                Path::new(&w.file.path),
                w.file.contents.as_bytes(),
                w.file.mode,
            )
            .map_err(err)?;
        }
        if plan.remove_other_unit {
            let other = other_role_unit(role);
            let name = Path::new(&other).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            // Best effort: the other role's unit may be stopped or not loaded;
            // removing its file below is what matters.
            let _ = host.systemd.stop(&name).await;
            let _ = host.systemd.disable(&[&name]).await;
            host.fs.remove_file(&other).map_err(err)?;
        }
        if plan.daemon_reload {
            host.systemd.daemon_reload().await.map_err(err)?;
        }
        if plan.enable {
            host.systemd.enable(&[&unit]).await.map_err(err)?;
        }
        let Some(why) = plan.restart else { return Ok(()) };
        tracing::info!(unit = %unit, reason = why, "restarting K3s");
        host.systemd.reset_failed(&unit).await.map_err(err)?;
        host.systemd.queue_restart(&unit).await.map_err(err)?;
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
                    journal::clear_journal(&host.fs).map_err(err)?;
                }
                self.report(host, role);
                Ok(())
            }
            Err(unhealthy) if transaction => {
                tracing::warn!(unit = %unit, reason = %unhealthy, "K3s failed its health gate; rolling back");
                j.phase = Phase::RollingBack;
                j.reason = Some(unhealthy.to_string());
                journal::save_journal(&host.fs, &j).map_err(err)?;
                self.rollback(host, j, role, timeout).await
            }
            Err(unhealthy) => Err(err(unhealthy)),
        }
    }

    async fn download(
        &self,
        host: &Host,
        install: &plan::Install,
    ) -> Result<elysium_installer::download::VerifiedDownload, StepError> {
        let url = url::Url::parse(&install.url)
            .map_err(|e| err(format!("bad release URL {}: {e}", install.url)))?;
        let expected: Sha256Digest =
            install.to.sha256.parse().map_err(|e| err(format!("bad published hash: {e}")))?;
        let link = self.link.clone();
        let version = install.to.version.clone();
        let mut last_percent = -1i32;
        // On a terminal (the agent run by hand), a bar; under systemd, progress
        // events to the coordinator (and both in any case through `link`).
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("K3s {version}"));
            bar
        });
        let progress_bar = bar.clone();
        let progress = move |p: elysium_installer::download::Progress| {
            if let Some(bar) = &progress_bar {
                if let Some(total) = p.total {
                    bar.set_length(total);
                }
                bar.set_position(p.downloaded);
            }
            let percent =
                p.total.map(|t| (p.downloaded * 100).checked_div(t).map_or(100, |v| v as i32)).unwrap_or(-1);
            if percent != last_percent && (percent % 10 == 0 || percent < 0) {
                last_percent = percent;
                link.progress(
                    "k3s-install",
                    "download",
                    format!("K3s {version}: {} bytes", p.downloaded),
                    percent,
                );
            }
        };
        let result = self
            .fetcher
            .download_verified(&host.fs, &url, &self.binary(), &expected, progress)
            .await
            .map_err(|e| err(error_chain(&e)));
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        result
    }

    /// Records a healthy install and closes the journal.
    fn finish(&self, host: &Host, to: &Installed) -> Result<(), StepError> {
        let mut state = journal::load_state(&host.fs);
        state.installed = Some(to.clone());
        if state.last_failed.as_ref().is_some_and(|f| f.version == to.version) {
            state.last_failed = None;
        }
        journal::save_state(&host.fs, &state).map_err(err)?;
        journal::clear_journal(&host.fs).map_err(err)
    }

    /// Puts the previous binary back, restarts it and checks it; records the
    /// failed version so it is not retried in a loop.
    async fn rollback(
        &self,
        host: &Host,
        j: Journal,
        role: K3sRole,
        timeout: Duration,
    ) -> Result<(), StepError> {
        let unit = role.unit_name();
        let reason = j.reason.clone().unwrap_or_else(|| "interrupted".into());
        let upgrade = j.from.as_ref() != Some(&j.to);
        // Files first (they are what the restored binary will read), then the binary.
        for f in &j.files {
            match &f.contents {
                Some(text) => host.fs.write_atomic(&f.path, text.as_bytes(), f.mode).map_err(err)?,
                None => {
                    host.fs.remove_file(&f.path).map_err(err)?;
                }
            }
        }
        let binary = self.binary();
        let previous = k3s_binary::previous_path(&binary);
        let restorable = match &j.from {
            Some(from) => {
                let current = hash_node_file(&host.fs, &binary).await.map_err(err)?.map(|d| d.to_string());
                if current.as_deref() != Some(from.sha256.as_str()) {
                    std::fs::rename(host.fs.resolve(&previous), host.fs.resolve(&binary))
                        .map_err(|e| err(format!("could not restore {}: {e}", previous.display())))?;
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
            host.systemd.daemon_reload().await.map_err(err)?;
            host.systemd.reset_failed(&unit).await.map_err(err)?;
            host.systemd.queue_restart(&unit).await.map_err(err)?;
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
        journal::save_state(&host.fs, &state).map_err(err)?;
        journal::clear_journal(&host.fs).map_err(err)?;
        let message = if upgrade {
            format!("upgrade to {} failed: {reason}; {after}", j.to.version)
        } else {
            format!("configuration change failed: {reason}; {after}")
        };
        self.link.result("k3s-install", false, message.clone(), j.generation);
        Err(err(message))
    }

    /// Settles an operation a crash interrupted.
    async fn recover(
        &self,
        host: &Host,
        mut j: Journal,
        role: K3sRole,
        timeout: Duration,
    ) -> Result<(), StepError> {
        tracing::warn!(to = %j.to.version, phase = ?j.phase, "found an interrupted K3s operation; settling it");
        let unit = role.unit_name();
        let current = hash_node_file(&host.fs, &self.binary()).await.map_err(err)?.map(|d| d.to_string());
        match j.phase {
            Phase::Swapping if current.as_deref() != Some(j.to.sha256.as_str()) => {
                // The swap never happened: forget the operation; the next pass redoes it.
                journal::clear_journal(&host.fs).map_err(err)
            }
            Phase::Swapping | Phase::Restarting => {
                host.systemd.reset_failed(&unit).await.map_err(err)?;
                host.systemd.queue_restart(&unit).await.map_err(err)?;
                match health::wait_healthy(self.probe(role), host.systemd.as_ref(), &unit, timeout).await {
                    Ok(_) => {
                        self.finish(host, &j.to)?;
                        self.report(host, role);
                        Ok(())
                    }
                    Err(e) => {
                        j.phase = Phase::RollingBack;
                        j.reason = Some(e.to_string());
                        journal::save_journal(&host.fs, &j).map_err(err)?;
                        self.rollback(host, j, role, timeout).await
                    }
                }
            }
            Phase::RollingBack => self.rollback(host, j, role, timeout).await,
        }
    }
}
