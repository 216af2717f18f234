//! The Tailscale step: puts the node on the tailnet through tailscaled's
//! LocalAPI and tells the K3s step the node's Tailscale address.
//!
//! Never runs `tailscale up`: logging in is `POST /localapi/v0/start` with the
//! auth key in the body (never in argv), and later changes are `PATCH
//! /localapi/v0/prefs` (`tailscale set` semantics), so editing the spec never
//! fails the way re-running `up` with other flags does.

pub mod localapi;
pub mod plan;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elysium_host::Host;
use elysium_spec::K3sOverTailscale;

use crate::reconcile::{Desired, MissingSecret, Step};
use localapi::{LocalApi, LocalApiError, Prefs, Status};
use plan::{AuthKey, DesiredTailscale, TailscaleAction};

pub const STEP: &str = "Tailscale";
/// The interface tailscaled creates in kernel (TUN) mode.
pub const INTERFACE: &str = "tailscale0";

/// What the Tailscale step learned this pass, for the steps after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailnetFacts {
    pub ipv4: Option<String>,
    pub ips: Vec<String>,
    pub dns_name: String,
}

/// Shared between the Tailscale step (writes) and the K3s step (reads). Steps
/// run in order within a pass, and a failing step stops the pass, so K3s never
/// reads an address from an earlier, different tailnet state.
#[derive(Debug, Clone, Default)]
pub struct Tailnet(Arc<Mutex<Option<TailnetFacts>>>);

impl Tailnet {
    pub fn get(&self) -> Option<TailnetFacts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, facts: Option<TailnetFacts>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = facts;
    }

    fn record(&self, status: &Status) {
        let dns_name = status
            .self_status
            .as_ref()
            .map(|s| s.dns_name.trim_end_matches('.').to_owned())
            .unwrap_or_default();
        self.set(Some(TailnetFacts {
            ipv4: status.ipv4(),
            ips: status.tailscale_ips.clone().unwrap_or_default(),
            dns_name,
        }));
    }
}

#[derive(Debug)]
pub struct TailscaleStep {
    node_name: String,
    tailnet: Tailnet,
    /// How often to re-read the state while waiting for `Running`.
    poll: Duration,
}

impl TailscaleStep {
    pub fn new(node_name: &str, tailnet: Tailnet) -> Self {
        Self { node_name: node_name.to_owned(), tailnet, poll: Duration::from_millis(250) }
    }
}

/// What observe found.
#[derive(Debug)]
pub enum Observation {
    Unmanaged,
    Managed {
        desired: Box<DesiredTailscale>,
        status: Box<Status>,
        prefs: Box<Prefs>,
        socket: std::path::PathBuf,
    },
}

/// An action plus where to apply it.
#[derive(Debug)]
pub struct Action {
    action: TailscaleAction,
    socket: std::path::PathBuf,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.action.fmt(f)
    }
}

/// Why the node is not (yet) on the tailnet as the spec says. Never holds the
/// auth key, only the name of the secret that holds it.
#[derive(Debug, thiserror::Error)]
pub enum TailscaleError {
    #[error(transparent)]
    Secret(#[from] MissingSecret),
    #[error(transparent)]
    LocalApi(#[from] LocalApiError),
    /// The plan refuses the spec on this node (userspace networking under K3s, …).
    #[error("{0}")]
    Refused(String),
    #[error(
        "logged in, but the node waits for device approval: approve it in the tailnet's admin console (or use a pre-approved auth key)"
    )]
    AwaitingApproval,
    #[error(
        "the control server refused the auth key from secret {secret:?} (expired, revoked, or single-use and already used); create a new key and run `elysium-node secret set {secret} --from-file FILE`"
    )]
    KeyRefused { secret: String },
    #[error(
        "tailscaled did not reach Running within {}s (state {state}{}); check `journalctl -u tailscaled`",
        timeout.as_secs(),
        if health.is_empty() { String::new() } else { format!("; health: {health}") }
    )]
    NotRunning { timeout: Duration, state: String, health: String },
}

impl Step for TailscaleStep {
    type Observed = Observation;
    type Action = Action;
    type Error = TailscaleError;

    fn name(&self) -> &'static str {
        STEP
    }

    async fn observe(&self, host: &Host, desired: &Desired) -> Result<Observation, TailscaleError> {
        self.tailnet.set(None);
        let Some(section) = &desired.spec.tailscale else { return Ok(Observation::Unmanaged) };
        let auth_key = AuthKey {
            secret_name: section.auth_key_secret.clone(),
            value: desired.secret(&section.auth_key_secret)?.to_owned(),
        };
        let want = DesiredTailscale {
            hostname: section.render_hostname(&self.node_name, &desired.spec.cluster.name),
            tags: section.canonical_tags(),
            accept_routes: section.accept_routes,
            accept_dns: section.accept_dns,
            control_url: section.login_server.clone(),
            needs_tun: section.k3s != K3sOverTailscale::Off && desired.spec.k3s.is_some(),
            auth_key,
            up_timeout: Duration::from_secs(section.up_timeout_seconds.into()),
        };
        // Through the root, so a test's stand-in socket lives in its temp root.
        let socket = host.fs.resolve(&section.socket);
        let api = LocalApi::new(&socket);
        let status = api.status().await?;
        let prefs = api.prefs().await?;
        if status.backend_state == "Running" {
            self.tailnet.record(&status);
        }
        Ok(Observation::Managed {
            desired: Box::new(want),
            status: Box::new(status),
            prefs: Box::new(prefs),
            socket,
        })
    }

    fn plan(&self, _desired: &Desired, observed: &Observation) -> Vec<Action> {
        match observed {
            Observation::Unmanaged => vec![],
            Observation::Managed { desired, status, prefs, socket } => plan::plan(desired, status, prefs)
                .into_iter()
                .map(|action| Action { action, socket: socket.clone() })
                .collect(),
        }
    }

    async fn apply(&self, _host: &Host, action: &Action) -> Result<(), TailscaleError> {
        let api = LocalApi::new(&action.socket);
        match &action.action {
            TailscaleAction::Refuse(why) => Err(TailscaleError::Refused(why.clone())),
            TailscaleAction::Set(patch) => {
                tracing::info!(settings = %patch, "changing Tailscale settings");
                Ok(api.edit_prefs(patch).await.map(drop)?)
            }
            TailscaleAction::Login { auth_key, prefs } => {
                tracing::info!(secret = %auth_key.secret_name, hostname = %prefs.hostname, "logging in to the tailnet");
                Ok(api.start(&auth_key.value, prefs).await?)
            }
            TailscaleAction::WaitRunning { timeout, after_login } => {
                let status = self.wait_running(&api, *timeout, after_login.as_deref()).await?;
                self.tailnet.record(&status);
                tracing::info!(ips = ?status.tailscale_ips, "on the tailnet");
                Ok(())
            }
        }
    }
}

impl TailscaleStep {
    async fn wait_running(
        &self,
        api: &LocalApi,
        timeout: Duration,
        after_login: Option<&str>,
    ) -> Result<Status, TailscaleError> {
        let started = Instant::now();
        loop {
            let status = api.status().await?;
            match status.backend_state.as_str() {
                "Running" if status.ipv4().is_some() || started.elapsed() >= timeout => return Ok(status),
                "NeedsMachineAuth" => return Err(TailscaleError::AwaitingApproval),
                // The control server turned the key down and offers an interactive
                // login instead: waiting longer will not change that.
                "NeedsLogin" if !status.auth_url.is_empty() => {
                    let secret = after_login.unwrap_or("the auth key secret").to_owned();
                    return Err(TailscaleError::KeyRefused { secret });
                }
                _ => {}
            }
            if started.elapsed() >= timeout {
                return Err(TailscaleError::NotRunning {
                    timeout,
                    state: status.backend_state.clone(),
                    health: status.health_summary(),
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Faster polling for tests.
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }
}
