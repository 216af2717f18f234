//! One way to build a Kubernetes client from a kubeconfig, and the names this
//! project uses toward the Kubernetes API (the K3s kubeconfig path, our field
//! manager).
//!
//! The node agent (drains, the sealing-key watch) and `recover` all talk to a K3s
//! API server with the kubeconfig K3s writes. They read that file their own way (a
//! node path under the host seam's root, or a path given on the command line) and
//! hand its text here. What this crate does not own: which resources anyone reads
//! or writes.

use std::time::Duration;

use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Where K3s writes the admin kubeconfig on a server (`--write-kubeconfig`'s
/// default, docs.k3s.io/cli/server; docs/reference/k3s.md#files).
pub const K3S_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

/// Our server-side-apply field manager, on everything we write.
pub const FIELD_MANAGER: &str = "elysium-node";

/// How the client behaves beyond what the kubeconfig says.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientOptions {
    /// Time allowed to open a connection; kube's default when `None`.
    pub connect_timeout: Option<Duration>,
    /// Time allowed for a response; kube's default when `None`.
    pub read_timeout: Option<Duration>,
}

/// A client could not be built. `name` is the kubeconfig's path, for the message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{name} is not a usable kubeconfig")]
    Kubeconfig {
        name: String,
        #[source]
        source: Box<KubeconfigError>,
    },
    #[error("could not build a Kubernetes client from {name}")]
    Client {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// A connected client and the API server's URL (without a trailing `/`).
#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    pub server: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("server", &self.server).finish_non_exhaustive()
    }
}

/// Builds a client from a kubeconfig's text. `name` (its path) names it in errors.
///
/// kube's own retries are off: kube retries 429/503/504 by itself, up to 15 times
/// over minutes. Every caller here keeps its own clock: a drain must see the 429s
/// that are PodDisruptionBudgets, the key watch retries on its own period, and
/// `recover` reports an API server that is down instead of waiting on it.
pub async fn client_from_kubeconfig(
    yaml: &str,
    name: &str,
    options: ClientOptions,
) -> Result<Connection, ClientError> {
    let kubeconfig_error =
        |source| ClientError::Kubeconfig { name: name.to_owned(), source: Box::new(source) };
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(kubeconfig_error)?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_error)?;
    config.default_retry = false;
    if options.connect_timeout.is_some() {
        config.connect_timeout = options.connect_timeout;
    }
    if options.read_timeout.is_some() {
        config.read_timeout = options.read_timeout;
    }
    let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
    let client = Client::try_from(config)
        .map_err(|source| ClientError::Client { name: name.to_owned(), source: Box::new(source) })?;
    Ok(Connection { client, server })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: https://127.0.0.1:6443/
    insecure-skip-tls-verify: true
contexts:
- name: default
  context: {cluster: default, user: default}
current-context: default
users:
- name: default
  user: {token: not-a-real-token}
";

    #[tokio::test]
    async fn a_kubeconfig_gives_a_client_and_its_server_url() {
        let c = client_from_kubeconfig(KUBECONFIG, "/k.yaml", ClientOptions::default()).await.unwrap();
        assert_eq!(c.server, "https://127.0.0.1:6443");
        assert!(!format!("{c:?}").contains("not-a-real-token"));
    }

    #[tokio::test]
    async fn a_broken_kubeconfig_is_named() {
        let e =
            client_from_kubeconfig("clusters: [", "/etc/k.yaml", ClientOptions::default()).await.unwrap_err();
        assert!(matches!(e, ClientError::Kubeconfig { .. }), "{e:?}");
        assert_eq!(e.to_string(), "/etc/k.yaml is not a usable kubeconfig");
    }
}
