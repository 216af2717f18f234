//! `Hardware/GpuLabels`: whether the GPU labels K3s registered the node with still
//! match the hardware. K3s applies `node-label` only when a node registers, so a
//! GPU added or removed, or a driver switched, later leaves the Node's labels
//! stale; this condition says so and how to fix it.

use elysium_host::Host;

use super::{K3sStep, journal};
use crate::reconcile::SubCondition;

/// The sub-condition reporting GPU label drift.
pub const GPU_LABELS: &str = "Hardware/GpuLabels";

impl K3sStep {
    /// The condition, once K3s is installed; `None` before.
    pub(super) fn gpu_label_condition(&self, host: &Host) -> Option<SubCondition> {
        let mut state = journal::load_state(&host.fs);
        state.installed.as_ref()?;
        let detected = match crate::hardware::detect_gpus(&host.fs) {
            Ok(report) => crate::hardware::gpu_labels(&report.gpus),
            Err(e) => {
                return Some(SubCondition {
                    kind: GPU_LABELS.into(),
                    ok: false,
                    reason: "DetectionFailed".into(),
                    message: format!("GPU detection failed: {e}"),
                });
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
            return Some(SubCondition {
                kind: GPU_LABELS.into(),
                ok: true,
                reason: "InSync".into(),
                message: String::new(),
            });
        }
        let list: Vec<String> = drift.iter().map(ToString::to_string).collect();
        Some(SubCondition {
            kind: GPU_LABELS.into(),
            ok: false,
            reason: "LabelDrift".into(),
            message: format!(
                "the node's GPU labels no longer match its hardware: {}. K3s applies node labels only when a node registers; relabel it with `kubectl label node {} --overwrite KEY=VALUE` (or `KEY-` to remove)",
                list.join("; "),
                self.node_name
            ),
        })
    }
}
