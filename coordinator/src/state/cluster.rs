//! What every session watches: the cluster spec (parsed once per change), the K3s
//! cluster facts, the secrets and the latest rollout, and the node spec that
//! follows from them for each node.
//!
//! Owns deriving a node's spec and K3s version pin from that state. Does not own
//! changing it (the [`Coordinator`](super::Coordinator) does, and publishes each
//! change on its watch channel) nor the rollout policy (`rollout`).

use std::collections::BTreeMap;
use std::sync::Arc;

use elysium_proto::v1 as pb;
use elysium_spec::ClusterSpec;

use crate::convert;
use crate::rollout::{Published, State, window};
use crate::store::{K3sCluster, NodeRecord, SecretRecord, StoredSpec};

/// The cluster spec as stored (the operator's TOML, comments included, and its
/// generation) and as parsed, made together: the TOML is parsed once when it
/// changes, and everyone who needs the typed spec reads this.
#[derive(Debug)]
pub struct ParsedSpec {
    stored: StoredSpec,
    parsed: ClusterSpec,
}

impl ParsedSpec {
    /// `stored` with the parse that validated it before it was stored.
    pub fn new(stored: StoredSpec, parsed: ClusterSpec) -> Self {
        Self { stored, parsed }
    }

    /// Parses a spec read back from the store.
    ///
    /// Stored specs were validated when they were set, so a failure means the
    /// parser changed under an old document; the nodes then get the empty spec
    /// (they manage nothing) until an operator sets a valid one, as before.
    pub fn from_stored(stored: StoredSpec) -> Self {
        let parsed = ClusterSpec::parse(&stored.toml).unwrap_or_else(|e| {
            let detail = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
            tracing::warn!(generation = stored.generation, error = %e, detail, "the stored cluster spec does not parse; using an empty spec");
            ClusterSpec::default()
        });
        Self { stored, parsed }
    }

    pub fn generation(&self) -> u64 {
        self.stored.generation
    }

    /// The document as the operator wrote it.
    pub fn toml(&self) -> &str {
        &self.stored.toml
    }

    pub fn parsed(&self) -> &ClusterSpec {
        &self.parsed
    }
}

/// What sessions watch: the cluster spec, the K3s cluster facts and the secrets
/// the spec refers to.
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// Shared: sessions read it from the watch channel, none parses it again.
    pub spec: Arc<ParsedSpec>,
    pub k3s: K3sCluster,
    /// name → secret. Shared: cloned into every session's view on each change.
    pub secrets: Arc<BTreeMap<String, SecretRecord>>,
    /// The latest rollout; it pins each node's K3s version.
    pub rollout: Option<Arc<Published>>,
    /// Bumped when the CAs nodes should trust change (a CA rotation's steps):
    /// every session sends the new bundle.
    pub trust_generation: u64,
    /// Bumped when the signing CA changes: every session whose certificate the
    /// old CA signed asks its node to renew.
    pub ca_generation: u64,
}

impl ClusterState {
    /// The spec a given node should hold.
    pub fn node_spec(&self, node: &NodeRecord) -> pb::NodeSpec {
        pb::NodeSpec { cluster_spec_toml: self.spec.toml().to_owned(), ..self.node_spec_without_toml(node) }
    }

    /// [`Self::node_spec`] without the cluster spec's TOML, which follows from
    /// the generation: what sessions compare on every change of the cluster
    /// state, without copying the TOML for each of them.
    pub fn node_spec_without_toml(&self, node: &NodeRecord) -> pb::NodeSpec {
        let parsed = self.spec.parsed();
        let mut k3s = crate::k3s::assignment(node, parsed, &self.k3s);
        if let Some(a) = &mut k3s {
            a.version = self.pinned_version(node).unwrap_or_default();
        }
        pb::NodeSpec {
            generation: self.spec.generation(),
            cluster_spec_toml: String::new(),
            role: convert::role_to_pb(node.role).into(),
            labels: node.labels.clone().into_iter().collect(),
            k3s,
            // Only what the spec refers to: a node never learns other secrets.
            secrets: parsed
                .secret_refs()
                .into_iter()
                .filter_map(|name| self.secrets.get(name).map(|s| (name.to_owned(), s.value.clone())))
                .collect(),
        }
    }

    /// The version `node` must run, or `None` to let `[k3s]` decide.
    ///
    /// With `[upgrade]`, a node's version changes only through rollouts: the latest
    /// rollout pins the nodes it concerns (the target once their turn came, their
    /// old version until then), every other node stays on what it reports, and a
    /// node that never ran K3s installs what the last finished rollout installed.
    /// A node that reports the target is pinned to it.
    pub fn pinned_version(&self, node: &NodeRecord) -> Option<String> {
        self.spec.parsed().upgrade.as_ref()?;
        if let Some(r) = &self.rollout
            && let Some(v) = r.pinned_version(&node.id)
        {
            // A node that already runs the target (it came back upgraded after it
            // timed out) is never sent back; `advance` marks it done.
            if node.k3s_version == r.target {
                return Some(r.target.clone());
            }
            return Some(v);
        }
        if !node.k3s_version.is_empty() {
            return Some(node.k3s_version.clone());
        }
        self.rollout.as_ref().filter(|r| r.state == State::Done).map(|r| r.target.clone())
    }

    /// Whether a maintenance window of the current spec is open at `now`.
    pub fn window_open(&self, now: i64) -> bool {
        self.spec.parsed().upgrade.as_ref().is_none_or(|u| window::any_open(&u.windows, now))
    }

    /// When the next maintenance window opens, if one is closed now.
    pub fn next_window(&self, now: i64) -> Option<i64> {
        self.spec.parsed().upgrade.as_ref().and_then(|u| window::next_open(&u.windows, now))
    }
}
