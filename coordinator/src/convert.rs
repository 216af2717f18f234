//! Conversions between the wire types of `elysium.v1` and the coordinator's domain types.

use elysium_proto::v1 as pb;

use crate::store::{Condition, EventRecord, Inventory, NodeRecord};
use crate::tokens::{Role, TokenRecord};

pub fn role_to_pb(role: Role) -> pb::NodeRole {
    match role {
        Role::Server => pb::NodeRole::Server,
        Role::Agent => pb::NodeRole::Agent,
    }
}

/// Unspecified means the default role, agent.
pub fn role_from_pb(role: i32) -> Role {
    match pb::NodeRole::try_from(role) {
        Ok(pb::NodeRole::Server) => Role::Server,
        _ => Role::Agent,
    }
}

pub fn inventory_from_pb(i: pb::NodeInventory) -> Inventory {
    Inventory {
        hostname: i.hostname,
        machine_id: i.machine_id,
        os: i.os,
        kernel: i.kernel,
        arch: i.arch,
        cpu_model: i.cpu_model,
        cpu_cores: i.cpu_cores,
        cpu_threads: i.cpu_threads,
        memory_bytes: i.memory_bytes,
        addresses: i.addresses,
    }
}

impl From<pb::NodeInventory> for Inventory {
    fn from(i: pb::NodeInventory) -> Self {
        inventory_from_pb(i)
    }
}

pub fn inventory_to_pb(i: &Inventory) -> pb::NodeInventory {
    pb::NodeInventory {
        hostname: i.hostname.clone(),
        machine_id: i.machine_id.clone(),
        os: i.os.clone(),
        kernel: i.kernel.clone(),
        arch: i.arch.clone(),
        cpu_model: i.cpu_model.clone(),
        cpu_cores: i.cpu_cores,
        cpu_threads: i.cpu_threads,
        memory_bytes: i.memory_bytes,
        addresses: i.addresses.clone(),
    }
}

pub fn token_to_pb(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        role: role_to_pb(t.role).into(),
        labels: t.labels.clone().into_iter().collect(),
        created_unix: t.created_unix,
        expires_unix: t.expires_unix,
        uses_allowed: t.uses_allowed,
        uses_consumed: t.uses_consumed,
        revoked: t.revoked,
    }
}

pub fn node_to_pb(n: &NodeRecord, online: bool) -> pb::NodeRecord {
    pb::NodeRecord {
        id: n.id.clone(),
        name: n.name.clone(),
        role: role_to_pb(n.role).into(),
        labels: n.labels.clone().into_iter().collect(),
        online,
        last_seen_unix: n.last_seen_unix,
        enrolled_unix: n.enrolled_unix,
        agent_version: n.agent_version.clone(),
        inventory: Some(inventory_to_pb(&n.inventory)),
        applied_generation: n.applied_generation,
        reconcile_state: n.reconcile_state.clone(),
        reconcile_error: n.reconcile_error.clone(),
        certificate_sha256: n.certificate_sha256.clone(),
        token_id: n.token_id.clone(),
        conditions: n.conditions.iter().map(condition_to_pb).collect(),
        hardware_json: n.hardware_json.clone(),
        k3s_version: n.k3s_version.clone(),
        certificate_not_after_unix: n.certificate_not_after_unix,
        pending_certificate_sha256: n.pending_certificate_sha256.clone(),
        certificate_issuer: n.certificate_issuer.clone(),
    }
}

pub fn condition_to_pb(c: &Condition) -> pb::Condition {
    pb::Condition {
        r#type: c.kind.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        since_unix: c.since_unix,
    }
}

pub fn condition_from_pb(c: pb::Condition) -> Condition {
    Condition {
        kind: c.r#type,
        status: c.status,
        reason: c.reason,
        message: c.message,
        since_unix: c.since_unix,
    }
}

pub fn event_to_pb(e: EventRecord) -> pb::Event {
    pb::Event { seq: e.seq, unix: e.unix, kind: e.kind, subject: e.subject, message: e.message }
}

/// The name a node record keeps for a heartbeat's reconcile state: from the enum,
/// or the string an agent that predates it sends (kept as sent).
pub(crate) fn reconcile_state_name(state: i32, legacy: String) -> String {
    use pb::ReconcileState as S;
    match S::try_from(state) {
        Ok(S::Waiting) => "waiting".into(),
        Ok(S::Reconciling) => "reconciling".into(),
        Ok(S::Converged) => "converged".into(),
        Ok(S::Failed) => "failed".into(),
        Ok(S::Unspecified) | Err(_) => legacy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconcile_state_comes_from_the_enum_or_an_older_agents_string() {
        assert_eq!(reconcile_state_name(pb::ReconcileState::Failed.into(), "converged".into()), "failed");
        assert_eq!(
            reconcile_state_name(pb::ReconcileState::Unspecified.into(), "converged".into()),
            "converged"
        );
        assert_eq!(reconcile_state_name(99, "reconciling".into()), "reconciling");
    }
}
