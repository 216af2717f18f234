//! Node labels derived from the detected GPUs, and the difference between those and the
//! labels a Node carries.
//!
//! K3s applies `node-label` only when the node registers (k3s-io/docs: docs/cli/agent.md,
//! "Node Labels and Taints for Agents"); after that the hardware can change (a GPU added,
//! firmware fixed, a driver switched to xe) while the labels stay. [`label_drift`] names
//! each difference so the caller can fix it through the API. Only keys under
//! `elysium.io/gpu` are compared: other labels belong to others.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gpu::Gpu;

/// Every key this module owns starts with this (exactly, or followed by `.`).
pub const GPU_LABEL_PREFIX: &str = "elysium.io/gpu";
/// `intel` when at least one GPU is usable by the Intel GPU plugin.
pub const LABEL_GPU: &str = "elysium.io/gpu";
/// `i915` or `xe`; `mixed` when usable GPUs use both (label values cannot hold a list).
pub const LABEL_GPU_DRIVER: &str = "elysium.io/gpu.driver";
/// Number of usable GPUs (before the plugin's `-shared-dev-num` multiplies them).
pub const LABEL_GPU_COUNT: &str = "elysium.io/gpu.count";

const VENDOR_INTEL: &str = "intel";
const DRIVER_MIXED: &str = "mixed";

/// The labels the detected GPUs call for. Only usable GPUs count: a GPU the plugin will
/// not offer must not attract pods. No usable GPU, no labels.
pub fn gpu_labels(gpus: &[Gpu]) -> BTreeMap<String, String> {
    let usable: Vec<&Gpu> = gpus.iter().filter(|g| g.verdict.is_usable()).collect();
    let mut labels = BTreeMap::new();
    if usable.is_empty() {
        return labels;
    }
    let mut drivers: Vec<&str> = usable.iter().filter_map(|g| g.facts.driver.as_deref()).collect();
    drivers.sort_unstable();
    drivers.dedup();
    let driver = match drivers.as_slice() {
        [one] => *one,
        _ => DRIVER_MIXED,
    };
    labels.insert(LABEL_GPU.to_owned(), VENDOR_INTEL.to_owned());
    labels.insert(LABEL_GPU_DRIVER.to_owned(), driver.to_owned());
    labels.insert(LABEL_GPU_COUNT.to_owned(), usable.len().to_string());
    labels
}

/// `elysium.io/gpu` itself or `elysium.io/gpu.<anything>`; not `elysium.io/gpus`.
pub fn is_gpu_label(key: &str) -> bool {
    key.strip_prefix(GPU_LABEL_PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// One difference between the labels the hardware calls for and the node's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// The hardware calls for the label; the node lacks it.
    Missing { key: String, want: String },
    /// Both have it, with different values.
    Changed { key: String, want: String, have: String },
    /// The node has it; the hardware no longer calls for it (GPU gone or unusable).
    Stale { key: String, have: String },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Missing { key, want } => write!(f, "{key}={want} missing"),
            Drift::Changed { key, want, have } => write!(f, "{key} is {have}, the hardware says {want}"),
            Drift::Stale { key, have } => write!(f, "{key}={have} no longer matches any usable GPU"),
        }
    }
}

/// Differences under `elysium.io/gpu`, sorted by key. Empty when in sync.
pub fn label_drift(desired: &BTreeMap<String, String>, node_labels: &BTreeMap<String, String>) -> Vec<Drift> {
    let mut keys: Vec<&String> =
        desired.keys().chain(node_labels.keys()).filter(|k| is_gpu_label(k)).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| match (desired.get(key), node_labels.get(key)) {
            (Some(want), None) => Some(Drift::Missing { key: key.clone(), want: want.clone() }),
            (Some(want), Some(have)) if want != have => {
                Some(Drift::Changed { key: key.clone(), want: want.clone(), have: have.clone() })
            }
            (None, Some(have)) => Some(Drift::Stale { key: key.clone(), have: have.clone() }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::fixtures;
    use crate::hardware::gpu;

    fn labels_of(root: &fixtures::FixtureRoot) -> BTreeMap<String, String> {
        gpu_labels(&gpu::detect(&root.fs()).unwrap().gpus)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn labels_for_each_hard_case() {
        let intel_i915_one = map(&[
            ("elysium.io/gpu", "intel"),
            ("elysium.io/gpu.count", "1"),
            ("elysium.io/gpu.driver", "i915"),
        ]);
        assert_eq!(labels_of(&fixtures::alder_lake_p()), intel_i915_one);
        assert_eq!(labels_of(&fixtures::dg1()), intel_i915_one);
        assert_eq!(labels_of(&fixtures::hybrid_laptop()), intel_i915_one);
        assert_eq!(
            labels_of(&fixtures::i915g_multifunction()),
            intel_i915_one,
            "00:02.1 is not a second GPU"
        );
        assert_eq!(
            labels_of(&fixtures::lunar_lake_xe()),
            map(&[
                ("elysium.io/gpu", "intel"),
                ("elysium.io/gpu.count", "1"),
                ("elysium.io/gpu.driver", "xe")
            ])
        );
        assert_eq!(
            labels_of(&fixtures::alder_lake_p_sriov()),
            map(&[
                ("elysium.io/gpu", "intel"),
                ("elysium.io/gpu.count", "2"),
                ("elysium.io/gpu.driver", "i915")
            ])
        );
        assert!(labels_of(&fixtures::haswell_no_module()).is_empty());
        assert!(labels_of(&fixtures::arc_a380_unbound()).is_empty());
        assert!(labels_of(&fixtures::alder_lake_p_guc_missing()).is_empty());
        assert!(labels_of(&fixtures::FixtureRoot::new()).is_empty());
    }

    #[test]
    fn drivers_mixed_on_one_node() {
        let root = fixtures::alder_lake_p();
        fixtures::add_dg2_on_xe(&root);
        assert_eq!(
            labels_of(&root),
            map(&[
                ("elysium.io/gpu", "intel"),
                ("elysium.io/gpu.count", "2"),
                ("elysium.io/gpu.driver", "mixed")
            ])
        );
    }

    #[test]
    fn drift_reports_missing_changed_and_stale_gpu_labels_only() {
        let desired = map(&[
            ("elysium.io/gpu", "intel"),
            ("elysium.io/gpu.count", "2"),
            ("elysium.io/gpu.driver", "xe"),
        ]);
        let node = map(&[
            ("elysium.io/gpu", "intel"),
            ("elysium.io/gpu.driver", "i915"),
            ("elysium.io/gpu.model", "dg1"),
            ("elysium.io/gpus", "whatever"),
            ("kubernetes.io/hostname", "node1"),
        ]);
        assert_eq!(
            label_drift(&desired, &node),
            [
                Drift::Missing { key: "elysium.io/gpu.count".into(), want: "2".into() },
                Drift::Changed {
                    key: "elysium.io/gpu.driver".into(),
                    want: "xe".into(),
                    have: "i915".into()
                },
                Drift::Stale { key: "elysium.io/gpu.model".into(), have: "dg1".into() },
            ]
        );
        assert!(label_drift(&desired, &desired).is_empty());
        // A GPU that became unusable: every label is stale.
        assert_eq!(label_drift(&BTreeMap::new(), &desired).len(), 3);
    }

    #[test]
    fn gpu_label_prefix_is_exact() {
        assert!(is_gpu_label("elysium.io/gpu"));
        assert!(is_gpu_label("elysium.io/gpu.count"));
        assert!(!is_gpu_label("elysium.io/gpus"));
        assert!(!is_gpu_label("gpu.intel.com/i915"));
    }
}
