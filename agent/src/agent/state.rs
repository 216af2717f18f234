//! What the agent keeps on disk between runs: the last spec received (so the node
//! stays converged while the coordinator is away) and the generation last applied.

use elysium_host::{FsError, RootFs};
use elysium_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::paths;

/// The persisted form of a node spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSpec {
    pub generation: u64,
    pub cluster_spec_toml: String,
    /// `server` or `agent`.
    pub role: String,
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
    pub role: String,
    pub server_url: String,
    pub token: String,
    /// A rollout's pin: run exactly this version. Empty: as `[k3s]` says.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

impl std::fmt::Debug for K3sAssignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K3sAssignment")
            .field("role", &self.role)
            .field("server_url", &self.server_url)
            .field("version", &self.version)
            .field("token", &if self.token.is_empty() { "<none>" } else { "<redacted>" })
            .finish()
    }
}

impl HeldSpec {
    pub fn from_pb(spec: &pb::NodeSpec) -> Self {
        let role = match pb::NodeRole::try_from(spec.role) {
            Ok(pb::NodeRole::Server) => "server",
            _ => "agent",
        };
        Self {
            generation: spec.generation,
            cluster_spec_toml: spec.cluster_spec_toml.clone(),
            role: role.to_owned(),
            labels: spec.labels.clone().into_iter().collect(),
            k3s: spec.k3s.as_ref().map(|k| K3sAssignment {
                role: k.role.clone(),
                server_url: k.server_url.clone(),
                token: k.token.clone(),
                version: k.version.clone(),
            }),
            secrets: spec.secrets.clone().into_iter().collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    generation: u64,
}

/// Persists a spec received from the coordinator (atomic replace, 0600: a spec
/// will carry secrets such as the K3s token).
pub fn save_spec(fs: &RootFs, spec: &pb::NodeSpec) -> Result<HeldSpec, FsError> {
    let held = HeldSpec::from_pb(spec);
    fs.create_dir_all(paths::STATE_DIR, 0o700)?;
    fs.write_atomic(paths::SPEC_FILE, &serde_json::to_vec_pretty(&held).unwrap_or_default(), 0o600)?;
    Ok(held)
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

pub fn save_applied(fs: &RootFs, generation: u64) -> Result<(), FsError> {
    fs.create_dir_all(paths::STATE_DIR, 0o700)?;
    fs.write_atomic(
        paths::APPLIED_FILE,
        &serde_json::to_vec(&Applied { generation }).unwrap_or_default(),
        0o600,
    )
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
                server_url: "https://s:6443".into(),
                token: "K10x".into(),
                version: String::new(),
            }),
            secrets: [("ts".to_string(), "tskey-auth-s3cret".to_string())].into(),
        };
        save_spec(&fs, &spec).unwrap();
        assert_eq!(fs.mode(paths::SPEC_FILE).unwrap(), 0o600);
        let held = load_spec(&fs).unwrap();
        assert_eq!((held.generation, held.role.as_str()), (7, "server"));
        assert_eq!(held.k3s.as_ref().unwrap().token, "K10x");
        assert!(!format!("{held:?}").contains("K10x"), "Debug leaks the K3s token");
        assert_eq!(held.secrets.get("ts"), Some("tskey-auth-s3cret"));
        assert!(!format!("{held:?}").contains("s3cret"), "Debug leaks a secret");
        fs.write_atomic(paths::SPEC_FILE, b"{not json", 0o600).unwrap();
        assert!(load_spec(&fs).is_none());
        save_applied(&fs, 7).unwrap();
        assert_eq!(load_applied(&fs), 7);
    }
}
