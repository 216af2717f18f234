//! `elysium-node agent`: the systemd service on every node.
//!
//! Two loops share two watch channels. The session loop keeps an mTLS stream with
//! the coordinator (reconnecting with capped exponential backoff and jitter),
//! persists every new spec and reports status. The reconcile loop applies the held
//! spec whenever it changes and periodically, whether or not the coordinator is
//! reachable. Nothing polls: both wait on channels and timers, so an idle agent
//! uses no CPU.

pub mod link;
pub mod reconcile;
pub mod session;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use elysium_host::Host;
use tokio::sync::{Notify, watch};

use crate::config::{AgentConfig, ConfigError};
use crate::notify;
use reconcile::{Desired, Reconciler};
use state::HeldSpec;

/// Reconcile period before any spec says otherwise.
const DEFAULT_RECONCILE_PERIOD: Duration = Duration::from_secs(300);

/// What the reconciler last reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconcileStatus {
    pub applied_generation: u64,
    /// `waiting` (no spec yet), `reconciling`, `converged`, `failed`.
    pub state: String,
    pub error: String,
    /// One per step, from the last pass.
    pub conditions: Vec<elysium_proto::v1::Condition>,
}

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}

/// Tunables, mostly for tests.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self { backoff_initial: Duration::from_millis(500), backoff_max: Duration::from_secs(30) }
    }
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    host: Host,
    config: AgentConfig,
    reconciler: Reconciler,
    link: link::SessionLink,
    options: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let tls = config.tls(&host.fs)?;
    let target = config.target()?;
    let held = state::load_spec(&host.fs);
    let applied = state::load_applied(&host.fs);
    tracing::info!(
        node = %config.node_name,
        coordinator = %config.coordinator,
        held_generation = held.as_ref().map(|h| h.generation),
        applied_generation = applied,
        "agent starting"
    );
    if let Some(h) = &held {
        notify::ready(&format!("working from persisted spec generation {}", h.generation));
    }

    let (spec_tx, spec_rx) = watch::channel(held);
    let (status_tx, status_rx) = watch::channel(ReconcileStatus {
        applied_generation: applied,
        state: "waiting".into(),
        error: String::new(),
        conditions: Vec::new(),
    });
    let trigger = Arc::new(Notify::new());
    let watchdog = notify::spawn_watchdog();
    let reconcile_task = tokio::spawn(reconcile_loop(
        host.clone(),
        Arc::new(reconciler),
        spec_rx.clone(),
        status_tx,
        trigger.clone(),
    ));

    let ctx =
        session::SessionContext { host, target, tls, spec_tx, spec_rx, status_rx, trigger, options, link };
    tokio::select! {
        () = session::run(ctx) => {}
        () = shutdown => {}
    }
    notify::stopping();
    tracing::info!("agent stopping");
    reconcile_task.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn period_of(held: Option<&HeldSpec>) -> Duration {
    held.and_then(|h| Desired::from_held(h).ok())
        .map(|d| Duration::from_secs(d.spec.agent.reconcile_seconds.into()))
        .unwrap_or(DEFAULT_RECONCILE_PERIOD)
}

/// Applies the held spec on every change, on demand and every period.
async fn reconcile_loop(
    host: Host,
    reconciler: Arc<Reconciler>,
    mut spec_rx: watch::Receiver<Option<HeldSpec>>,
    status_tx: watch::Sender<ReconcileStatus>,
    trigger: Arc<Notify>,
) {
    loop {
        let held = spec_rx.borrow_and_update().clone();
        if let Some(held) = &held {
            let applied = status_tx.borrow().applied_generation;
            status_tx.send_modify(|s| s.state = "reconciling".into());
            let status = match Desired::from_held(held) {
                Err(e) => {
                    let detail = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                    ReconcileStatus {
                        applied_generation: applied,
                        conditions: status_tx.borrow().conditions.clone(),
                        state: "failed".into(),
                        error: format!(
                            "spec generation {} cannot be used by agent {}: {e}{detail}",
                            held.generation,
                            env!("CARGO_PKG_VERSION")
                        ),
                    }
                }
                Ok(desired) => {
                    let report = reconciler.reconcile(&host, &desired, false).await;
                    let conditions = report.conditions(&status_tx.borrow().conditions, unix_now());
                    match report.first_error() {
                        None => {
                            if let Err(e) = state::save_applied(&host.fs, desired.generation) {
                                tracing::warn!(error = %e, "could not persist the applied generation");
                            }
                            ReconcileStatus {
                                applied_generation: desired.generation,
                                state: "converged".into(),
                                error: String::new(),
                                conditions,
                            }
                        }
                        Some(error) => ReconcileStatus {
                            applied_generation: applied,
                            state: "failed".into(),
                            error,
                            conditions,
                        },
                    }
                }
            };
            if status.state == "failed" {
                tracing::warn!(generation = held.generation, error = %status.error, "reconcile failed");
            } else {
                tracing::info!(generation = held.generation, "reconciled");
            }
            status_tx.send_replace(status);
        }
        let period = period_of(held.as_ref());
        tokio::select! {
            changed = spec_rx.changed() => if changed.is_err() { return },
            () = trigger.notified() => {}
            () = tokio::time::sleep(period) => {}
        }
    }
}
