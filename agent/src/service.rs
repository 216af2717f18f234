//! `elysium-node agent`: the systemd service on every node.
//!
//! Two loops share two watch channels. The session loop keeps an mTLS stream with
//! the coordinator (reconnecting with capped exponential backoff and jitter),
//! persists every new spec and reports status. The reconcile loop applies the held
//! spec whenever it changes and periodically, whether or not the coordinator is
//! reachable. Nothing polls: both wait on channels and timers, so an idle agent
//! uses no CPU.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use elysium_host::Host;
use tokio::sync::{Notify, watch};

use crate::config::{AgentConfig, ConfigError};
use elysium_host::notify;

use crate::held::Held;
use crate::reconcile::Reconciler;
pub use crate::reconcile::{ReconcileState, ReconcileStatus};
pub use crate::session::AgentOptions;
use crate::state;
use crate::{link, session};

/// Reconcile period before any spec says otherwise.
const DEFAULT_RECONCILE_PERIOD: Duration = Duration::from_secs(300);

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error(transparent)]
    NodeCert(#[from] crate::node_cert::NodeCertError),
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
    // Read again for every session (a renewal replaces it); read here so that a
    // node without a usable identity says so at start.
    let identity = crate::node_cert::load(&host.fs)?;
    let target = config.target()?;
    // Parsed once here, and once per spec the session receives; everything else
    // subscribes to the link's channel.
    let held = state::load_spec(&host.fs).map(Held::new);
    let applied = state::load_applied(&host.fs);
    tracing::info!(
        node = %config.node_name,
        coordinator = %config.coordinator,
        certificate = %identity.fingerprint,
        held_generation = held.as_ref().map(|h| h.spec.generation),
        applied_generation = applied,
        "agent starting"
    );
    if let Some(h) = &held {
        notify::ready(&format!("working from persisted spec generation {}", h.spec.generation));
    }

    let spec_tx = link.spec_sender();
    spec_tx.send_replace(held);
    let spec_rx = spec_tx.subscribe();
    let (status_tx, status_rx) = watch::channel(ReconcileStatus {
        applied_generation: applied,
        state: ReconcileState::Waiting,
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

    let ctx = session::SessionContext { host, target, spec_tx, spec_rx, status_rx, trigger, options, link };
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

fn period_of(held: Option<&Held>) -> Duration {
    held.and_then(Held::cluster)
        .map(|spec| Duration::from_secs(spec.agent.reconcile_seconds.into()))
        .unwrap_or(DEFAULT_RECONCILE_PERIOD)
}

/// Applies the held spec on every change, on demand and every period.
async fn reconcile_loop(
    host: Host,
    reconciler: Arc<Reconciler>,
    mut spec_rx: watch::Receiver<Option<Arc<Held>>>,
    status_tx: watch::Sender<ReconcileStatus>,
    trigger: Arc<Notify>,
) {
    loop {
        let held = spec_rx.borrow_and_update().clone();
        if let Some(held) = &held {
            let applied = status_tx.borrow().applied_generation;
            status_tx.send_modify(|s| s.state = ReconcileState::Reconciling);
            let status = match &held.desired {
                Err(e) => ReconcileStatus {
                    applied_generation: applied,
                    conditions: status_tx.borrow().conditions.clone(),
                    state: ReconcileState::Failed,
                    error: format!(
                        "spec generation {} cannot be used by agent {}: {}",
                        held.spec.generation,
                        env!("CARGO_PKG_VERSION"),
                        crate::error_chain(e)
                    ),
                },
                Ok(desired) => {
                    let report = reconciler.reconcile(&host, desired, false).await;
                    let conditions = report.conditions(&status_tx.borrow().conditions, unix_now());
                    match report.first_error() {
                        None => {
                            if let Err(e) = state::save_applied(&host.fs, desired.generation) {
                                tracing::warn!(error = %e, "could not persist the applied generation");
                            }
                            ReconcileStatus {
                                applied_generation: desired.generation,
                                state: ReconcileState::Converged,
                                error: String::new(),
                                conditions,
                            }
                        }
                        Some(error) => ReconcileStatus {
                            applied_generation: applied,
                            state: ReconcileState::Failed,
                            error,
                            conditions,
                        },
                    }
                }
            };
            if status.state == ReconcileState::Failed {
                tracing::warn!(generation = held.spec.generation, error = %status.error, "reconcile failed");
            } else {
                tracing::info!(generation = held.spec.generation, "reconciled");
            }
            status_tx.send_replace(status);
        }
        let period = period_of(held.as_deref());
        tokio::select! {
            changed = spec_rx.changed() => if changed.is_err() { return },
            () = trigger.notified() => {}
            () = tokio::time::sleep(period) => {}
        }
    }
}
