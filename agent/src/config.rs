//! The node's agent configuration (`/etc/elysium/agent.toml`), written by
//! `elysium-node join` and read by `elysium-node agent`.

use std::sync::Arc;

use elysium_host::{FsError, RootFs};
use serde::{Deserialize, Serialize};

use crate::paths;
use crate::transport::{self, Target, TransportError};

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `https://HOST:PORT` of the coordinator.
    pub coordinator: String,
    /// This node's name in the cluster.
    pub node_name: String,
    /// This node's id, as in its certificate.
    pub node_id: String,
}

/// The agent configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("this node has not joined a coordinator ({path} is missing); run `elysium-node join` first")]
    NotEnrolled { path: String },
    #[error("{path} is not valid")]
    Invalid {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("could not serialise the agent configuration")]
    Serialise(#[source] toml::ser::Error),
    #[error("the node's TLS identity in {dir} is unusable")]
    Identity {
        dir: &'static str,
        #[source]
        source: TransportError,
    },
}

impl AgentConfig {
    /// Reads the configuration at `path`; `Ok(None)` when the node has not joined.
    pub fn load_optional(fs: &RootFs, path: &str) -> Result<Option<Self>, ConfigError> {
        let Some(bytes) = fs.read_optional(path)? else { return Ok(None) };
        let text = String::from_utf8_lossy(&bytes);
        toml::from_str(&text)
            .map(Some)
            .map_err(|source| ConfigError::Invalid { path: path.to_owned(), source })
    }

    pub fn load(fs: &RootFs, path: &str) -> Result<Self, ConfigError> {
        Self::load_optional(fs, path)?.ok_or_else(|| ConfigError::NotEnrolled { path: path.to_owned() })
    }

    /// The file `join` writes. An error rather than an empty file if it cannot be made.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(self).map_err(ConfigError::Serialise)?;
        Ok(format!(
            "# Written by `elysium-node join`. The node's identity is in ca.crt, node.crt and node.key.\n{body}"
        ))
    }

    pub fn target(&self) -> Result<Target, TransportError> {
        Target::parse(&self.coordinator)
    }

    /// The mTLS client configuration from the node's identity files.
    pub fn tls(&self, fs: &RootFs) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        let ca = fs.read_to_string(paths::CA_CERT)?;
        let cert = fs.read_to_string(paths::NODE_CERT)?;
        let key = fs.read_to_string(paths::NODE_KEY)?;
        transport::mtls(&ca, &cert, &key)
            .map_err(|source| ConfigError::Identity { dir: paths::CONFIG_DIR, source })
    }
}
