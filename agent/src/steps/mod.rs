//! The reconciler's steps: one module per thing the agent manages on a node.

pub mod k3s;

use crate::agent::link::StepLink;
use crate::agent::reconcile::Reconciler;

/// The production reconciler, steps in dependency order.
pub fn reconciler(node_name: &str, link: StepLink) -> Result<Reconciler, k3s::K3sStepError> {
    Ok(Reconciler::default().with_step(k3s::K3sStep::new(node_name, link)?))
}
