//! The eviction subresource's PodDisruptionBudget check
//! (`k8s.io/kubernetes/pkg/registry/core/pod/storage/eviction.go`), computed from the
//! pods at the time of the request: no disruption controller runs here, so a PDB's
//! `status` is not consulted or maintained.
//!
//! - Pods that are terminating, `Pending`, `Succeeded` or `Failed` are evicted without a
//!   budget check, as upstream's `canIgnorePDB`.
//! - A pod is healthy when `status.phase` is `Running` and its `Ready` condition is `True`.
//! - `minAvailable` / `maxUnavailable`: integers or percentages (rounded up) of the pods
//!   the PDB's selector matches in the namespace; neither set means `minAvailable: 1`.
//! - A PDB with a null or empty selector matches no pod; more than one matching PDB is
//!   upstream's 500.
//! - A healthy pod may go when `healthy - desiredHealthy >= 1`; a running but unready
//!   pod also when `healthy >= desiredHealthy > 0` or with
//!   `unhealthyPodEvictionPolicy: AlwaysAllow`.
//! - The refusal is 429 TooManyRequests without `Retry-After` (upstream's
//!   `retryAfterSeconds: 0`), with a `DisruptionBudget` cause.

use serde_json::{Value, json};

use crate::selector::LabelSelector;
use crate::status::ApiError;

pub fn check(pod: &Value, pdbs: &[Value], pods: &[Value]) -> Result<(), ApiError> {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
    if pod.pointer("/metadata/deletionTimestamp").is_some()
        || matches!(phase, "Pending" | "Succeeded" | "Failed")
    {
        return Ok(());
    }
    let matching: Vec<(&Value, LabelSelector)> = pdbs
        .iter()
        .filter_map(|pdb| {
            // A null or empty selector matches nothing (upstream: "not everything").
            let sel = pdb.pointer("/spec/selector").filter(|s| !s.is_null())?;
            let sel = LabelSelector::from_object(sel).ok().filter(|s| !s.is_empty())?;
            sel.matches(pod).then_some((pdb, sel))
        })
        .collect();
    let (pdb, selector) = match matching.as_slice() {
        [] => return Ok(()),
        [one] => one,
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let expected: Vec<&Value> = pods
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none() && selector.matches(p))
        .collect();
    let healthy = expected.iter().filter(|p| is_healthy(p)).count() as i64;
    let total = expected.len() as i64;
    let desired = match (pdb.pointer("/spec/minAvailable"), pdb.pointer("/spec/maxUnavailable")) {
        (Some(min), _) => scaled(min, total),
        (None, Some(max)) => (total - scaled(max, total)).max(0),
        (None, None) => 1,
    };
    let always_allow =
        pdb.pointer("/spec/unhealthyPodEvictionPolicy").and_then(Value::as_str) == Some("AlwaysAllow");
    let budget_left = healthy - desired >= 1;
    let allowed = if is_healthy(pod) {
        budget_left
    } else {
        always_allow || (healthy >= desired && desired > 0) || budget_left
    };
    if allowed {
        return Ok(());
    }
    let name = pdb.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    Err(ApiError::too_many_requests(
        "Cannot evict pod as it would violate the pod's disruption budget.",
        json!([{
            "reason": "DisruptionBudget",
            "message": format!("The disruption budget {name} needs {desired} healthy pods and has {healthy} currently"),
        }]),
    ))
}

fn is_healthy(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// An `IntOrString`: an integer, or a percentage of `total` rounded up.
fn scaled(v: &Value, total: i64) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(pct) => (pct * total + 99) / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": "web"}}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn pdb(spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        json!({"metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn budgets() {
        let pods = [pod("a", true), pod("b", true)];
        assert!(check(&pods[0], &[pdb(json!({"minAvailable": 1}))], &pods).is_ok());
        let err = check(&pods[0], &[pdb(json!({"minAvailable": 2}))], &pods).err().map(|e| e.code);
        assert_eq!(err, Some(429));
        assert_eq!(
            check(&pods[0], &[pdb(json!({"maxUnavailable": 0}))], &pods).err().map(|e| e.code),
            Some(429)
        );
        assert!(check(&pods[0], &[pdb(json!({"maxUnavailable": "50%"}))], &pods).is_ok());
        assert_eq!(
            check(&pods[0], &[pdb(json!({"minAvailable": "100%"}))], &pods).err().map(|e| e.code),
            Some(429)
        );
        // No PDB, a pod the PDB does not select, or an empty selector: allowed.
        assert!(check(&pods[0], &[], &pods).is_ok());
        let mut everything = pdb(json!({"minAvailable": 2}));
        everything["spec"]["selector"] = json!({});
        assert!(check(&pods[0], &[everything], &pods).is_ok());
        let mut other = pod("c", true);
        other["metadata"]["labels"] = json!({"app": "db"});
        assert!(check(&other, &[pdb(json!({"minAvailable": 2}))], &pods).is_ok());
        // Two PDBs: upstream's 500.
        let two = [pdb(json!({"minAvailable": 1})), pdb(json!({"minAvailable": 1}))];
        assert_eq!(check(&pods[0], &two, &pods).err().map(|e| e.code), Some(500));
    }

    #[test]
    fn unready_pods_go_when_the_budget_holds() {
        let pods = [pod("a", true), pod("b", false)];
        assert!(check(&pods[1], &[pdb(json!({"minAvailable": 1}))], &pods).is_ok());
        assert!(check(&pods[1], &[pdb(json!({"minAvailable": 2}))], &pods).is_err());
        assert!(
            check(
                &pods[1],
                &[pdb(json!({"minAvailable": 2, "unhealthyPodEvictionPolicy": "AlwaysAllow"}))],
                &pods
            )
            .is_ok()
        );
    }
}
