//! The reconciler's steps: one module per thing the agent manages on a node.

pub mod k3s;
pub mod mounts;
pub mod tailscale;

use crate::link::StepLink;
use crate::reconcile::Reconciler;

/// The production reconciler, steps in dependency order.
pub fn reconciler(node_name: &str, link: StepLink) -> Result<Reconciler, k3s::K3sStepError> {
    // Tailscale first: with K3s on the tailnet, K3s needs the node's Tailscale IP.
    let tailnet = tailscale::Tailnet::default();
    Ok(Reconciler::default()
        .with_step(tailscale::TailscaleStep::new(node_name, tailnet.clone()))
        .with_step(k3s::K3sStep::new(node_name, link)?.with_tailnet(tailnet))
        // After K3s: pods need their mounts, but K3s must not wait for storage.
        .with_step(mounts::MountsStep::new()))
}
