//! Work a K3s server's agent does on the Kubernetes cluster for the coordinator:
//! cordon, drain and uncordon nodes ([`drain`]), with the server's own kubeconfig.
//!
//! The coordinator decides which node, when, and which nodes to uncordon (its
//! rollouts); commands arrive on the session and each is answered with one
//! `OperationResult` carrying the command id. K3s itself is `steps::k3s`'s.

pub mod drain;

use std::time::Duration;

use elysium_host::RootFs;
use elysium_proto::v1 as pb;

use crate::error_chain;
use crate::link::StepLink;
use drain::{DrainError, DrainOptions, Drainer, Progress};
use elysium_kube::K3S_KUBECONFIG;

/// A command on the cluster, from the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetCommand {
    Drain { node: String, options: DrainOptions },
    Uncordon { node: String },
}

impl FleetCommand {
    /// The commands this module runs; `None` for the others.
    pub fn from_pb(kind: &pb::command::Kind) -> Option<Self> {
        match kind {
            pb::command::Kind::Drain(d) => Some(Self::Drain {
                node: d.node.clone(),
                options: DrainOptions {
                    timeout: Duration::from_secs(d.timeout_seconds.into()),
                    force: d.force,
                    delete_emptydir_data: d.delete_emptydir_data,
                },
            }),
            pb::command::Kind::Uncordon(u) => Some(Self::Uncordon { node: u.node.clone() }),
            pb::command::Kind::Reconcile(_) => None,
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(
        "not a server: this node holds the agent role, and drains go through a K3s server's Kubernetes API"
    )]
    NotServer,
    #[error(transparent)]
    Drain(#[from] DrainError),
}

/// Runs `command` against the cluster whose kubeconfig is at `kubeconfig` (a node
/// path under `fs`'s root). The client lives only as long as the command.
/// Returns what was done, for the coordinator's event log.
pub async fn run(
    fs: &RootFs,
    kubeconfig: &str,
    is_server: bool,
    command: &FleetCommand,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<String, FleetError> {
    if !is_server {
        return Err(FleetError::NotServer);
    }
    let drainer = Drainer::connect(fs, kubeconfig).await?;
    match command {
        FleetCommand::Drain { node, options } => {
            let report = drainer.drain(node, options, progress).await?;
            Ok(format!("drained {node}: {report}"))
        }
        FleetCommand::Uncordon { node } => {
            drainer.uncordon(node).await?;
            Ok(format!("uncordoned {node}"))
        }
    }
}

/// Runs `command` in the background (the session keeps beating meanwhile) and
/// reports through `link`: progress while it works, then one `OperationResult`
/// with `id`, which the link keeps until a session sends it.
pub(crate) fn spawn(fs: RootFs, is_server: bool, link: StepLink, id: String, command: FleetCommand) {
    tokio::spawn(async move {
        tracing::info!(command = %id, ?command, "cluster command received");
        let report = |p: Progress| link.progress(&id, p.step, p.message, p.percent);
        let (success, message) = match run(&fs, K3S_KUBECONFIG, is_server, &command, &report).await {
            Ok(done) => {
                tracing::info!(command = %id, "{done}");
                (true, done)
            }
            Err(e) => {
                let message = error_chain(&e);
                tracing::warn!(command = %id, error = %message, "cluster command failed");
                (false, message)
            }
        };
        link.result(&id, success, message, 0);
    });
}
