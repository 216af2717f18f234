//! What the agent keeps on disk between runs: the last spec received (so the node
//! stays converged while the coordinator is away) and the generation last applied,
//! and the roles that spec gives the node.

use elysium_host::{FsError, RootFs};
use elysium_installer::k3s_service::K3sRole;
use elysium_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::paths;

/// The role a node joined with (its token's): a K3s server or a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Server,
    Agent,
}

impl NodeRole {
    /// Unset or unknown on the wire reads as a worker: the role with least power.
    pub fn from_pb(role: i32) -> Self {
        match pb::NodeRole::try_from(role) {
            Ok(pb::NodeRole::Server) => Self::Server,
            _ => Self::Agent,
        }
    }
}

/// This node's part in K3s, as the coordinator assigned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum K3sAssignedRole {
    /// The first server: it runs `cluster-init`.
    ServerInit,
    /// A server that joins the first one.
    Server,
    Agent,
}

impl K3sAssignedRole {
    /// From `K3sAssignment`: the enum, or the string an older coordinator sends
    /// (`server-init`, `server`, `agent`). Unknown reads as an agent.
    pub fn from_pb(assignment: &pb::K3sAssignment) -> Self {
        match pb::K3sRole::try_from(assignment.k3s_role) {
            Ok(pb::K3sRole::ServerInit) => Self::ServerInit,
            Ok(pb::K3sRole::Server) => Self::Server,
            Ok(pb::K3sRole::Agent) => Self::Agent,
            Ok(pb::K3sRole::Unspecified) | Err(_) => match assignment.role.as_str() {
                "server-init" => Self::ServerInit,
                "server" => Self::Server,
                _ => Self::Agent,
            },
        }
    }

    /// What the installer renders for it.
    pub fn k3s_role(self) -> K3sRole {
        match self {
            Self::ServerInit => K3sRole::Server { cluster_init: true },
            Self::Server => K3sRole::Server { cluster_init: false },
            Self::Agent => K3sRole::Agent,
        }
    }

    /// Servers run an API server (and hold the sealing keys).
    pub fn is_server(self) -> bool {
        matches!(self, Self::ServerInit | Self::Server)
    }
}

/// The persisted form of a node spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSpec {
    pub generation: u64,
    pub cluster_spec_toml: String,
    pub role: NodeRole,
    pub labels: std::collections::BTreeMap<String, String>,
    /// This node's part in the K3s cluster (absent when K3s is not managed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<K3sAssignment>,
    /// The coordinator secrets the spec refers to. This file is 0600.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
}

/// Secret values by name; `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(std::collections::BTreeMap<String, String>);

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl FromIterator<(String, String)> for Secrets {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// See `elysium.v1.K3sAssignment`. `token` is a secret: this file is 0600.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct K3sAssignment {
    pub role: K3sAssignedRole,
    pub server_url: String,
    pub token: String,
    /// A rollout's pin: run exactly this version. Empty: as `[k3s]` says.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Servers only: the agent secret, K3s's `agent-token`. A secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_token: String,
}

impl std::fmt::Debug for K3sAssignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K3sAssignment")
            .field("role", &self.role)
            .field("server_url", &self.server_url)
            .field("version", &self.version)
            .field("token", &if self.token.is_empty() { "<none>" } else { "<redacted>" })
            .field("agent_token", &if self.agent_token.is_empty() { "<none>" } else { "<redacted>" })
            .finish()
    }
}

impl HeldSpec {
    pub fn from_pb(spec: &pb::NodeSpec) -> Self {
        Self {
            generation: spec.generation,
            cluster_spec_toml: spec.cluster_spec_toml.clone(),
            role: NodeRole::from_pb(spec.role),
            labels: spec.labels.clone().into_iter().collect(),
            k3s: spec.k3s.as_ref().map(|k| K3sAssignment {
                role: K3sAssignedRole::from_pb(k),
                server_url: k.server_url.clone(),
                token: k.token.clone(),
                version: k.version.clone(),
                agent_token: k.agent_token.clone(),
            }),
            secrets: spec.secrets.clone().into_iter().collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    generation: u64,
}

/// State could not be persisted (here and by the K3s journal); what was there
/// before is kept.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Write(#[from] FsError),
    #[error("could not serialise {path}")]
    Serialise {
        path: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Persists a spec received from the coordinator (atomic replace, 0600: a spec
/// will carry secrets such as the K3s token).
pub fn save_spec(fs: &RootFs, spec: &pb::NodeSpec) -> Result<HeldSpec, StateError> {
    let held = HeldSpec::from_pb(spec);
    save_held(fs, &held)?;
    Ok(held)
}

/// Persists a held spec as it is.
pub fn save_held(fs: &RootFs, held: &HeldSpec) -> Result<(), StateError> {
    // Serialise first: a failure must leave the file that is there, never an empty one.
    let bytes = serde_json::to_vec_pretty(held)
        .map_err(|source| StateError::Serialise { path: paths::SPEC_FILE, source })?;
    fs.create_dir_all(paths::STATE_DIR, 0o700)?;
    fs.write_atomic(paths::SPEC_FILE, &bytes, 0o600)?;
    Ok(())
}

/// The last spec held, `None` when there is none or it is unreadable (a corrupt
/// file is reported and ignored: the coordinator will send the spec again).
pub fn load_spec(fs: &RootFs) -> Option<HeldSpec> {
    let bytes = fs.read_optional(paths::SPEC_FILE).ok()??;
    match serde_json::from_slice(&bytes) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::warn!(path = paths::SPEC_FILE, error = %e, "ignoring unreadable persisted spec");
            None
        }
    }
}

pub fn save_applied(fs: &RootFs, generation: u64) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(&Applied { generation })
        .map_err(|source| StateError::Serialise { path: paths::APPLIED_FILE, source })?;
    fs.create_dir_all(paths::STATE_DIR, 0o700)?;
    fs.write_atomic(paths::APPLIED_FILE, &bytes, 0o600)?;
    Ok(())
}

pub fn load_applied(fs: &RootFs) -> u64 {
    fs.read_optional(paths::APPLIED_FILE)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<Applied>(&b).ok())
        .map(|a| a.generation)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        assert!(load_spec(&fs).is_none());
        let spec = pb::NodeSpec {
            generation: 7,
            cluster_spec_toml: "[cluster]\nname = \"x\"\n".into(),
            role: pb::NodeRole::Server.into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            k3s: Some(pb::K3sAssignment {
                role: "agent".into(),
                k3s_role: pb::K3sRole::Unspecified.into(),
                server_url: "https://s:6443".into(),
                token: "K10x".into(),
                version: String::new(),
                agent_token: String::new(),
            }),
            secrets: [("ts".to_string(), "tskey-auth-s3cret".to_string())].into(),
        };
        save_spec(&fs, &spec).unwrap();
        assert_eq!(fs.mode(paths::SPEC_FILE).unwrap(), 0o600);
        let held = load_spec(&fs).unwrap();
        assert_eq!((held.generation, held.role), (7, NodeRole::Server));
        assert_eq!(held.k3s.as_ref().unwrap().token, "K10x");
        assert!(!format!("{held:?}").contains("K10x"), "Debug leaks the K3s token");
        assert_eq!(held.secrets.get("ts"), Some("tskey-auth-s3cret"));
        assert!(!format!("{held:?}").contains("s3cret"), "Debug leaks a secret");
        fs.write_atomic(paths::SPEC_FILE, b"{not json", 0o600).unwrap();
        assert!(load_spec(&fs).is_none());
        save_applied(&fs, 7).unwrap();
        assert_eq!(load_applied(&fs), 7);
    }

    #[test]
    fn roles_read_the_enum_and_fall_back_to_an_older_coordinators_string() {
        let assignment = |k3s_role: pb::K3sRole, role: &str| pb::K3sAssignment {
            role: role.into(),
            k3s_role: k3s_role.into(),
            ..Default::default()
        };
        use K3sAssignedRole as R;
        assert_eq!(R::from_pb(&assignment(pb::K3sRole::ServerInit, "")), R::ServerInit);
        assert_eq!(R::from_pb(&assignment(pb::K3sRole::Server, "agent")), R::Server, "the enum wins");
        assert_eq!(R::from_pb(&assignment(pb::K3sRole::Unspecified, "server-init")), R::ServerInit);
        assert_eq!(R::from_pb(&assignment(pb::K3sRole::Unspecified, "server")), R::Server);
        assert_eq!(R::from_pb(&assignment(pb::K3sRole::Unspecified, "bogus")), R::Agent);
        assert_eq!(NodeRole::from_pb(pb::NodeRole::Unspecified.into()), NodeRole::Agent);
        // The file an earlier agent wrote reads the same.
        let old = r#"{"generation":1,"cluster_spec_toml":"","role":"server","labels":{},
            "k3s":{"role":"server-init","server_url":"","token":""}}"#;
        let held: HeldSpec = serde_json::from_str(old).unwrap();
        assert_eq!((held.role, held.k3s.unwrap().role), (NodeRole::Server, R::ServerInit));
    }

    #[test]
    fn the_applied_generation_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        save_applied(&fs, 7).unwrap();
        assert_eq!(load_applied(&fs), 7);
    }
}
