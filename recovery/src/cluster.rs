//! The cluster as the apply phase reaches it: a `kube` client built from `--kubeconfig`
//! (K3s writes `/etc/rancher/k3s/k3s.yaml`), checked to answer before anything is applied,
//! and the lookups of which kinds the API server serves.
//!
//! kube's default client retries 429/503/504 up to 15 times with backoff, which turns an
//! API server that is down into minutes of silence; the client here does not retry. The
//! apply stops at the first failure (its progress is in the ledger, so a re-run goes on)
//! and following Flux polls anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use elysium_kube::{ClientError, ClientOptions, Connection};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;

use crate::plan::ObjectId;

/// Where K3s writes the admin kubeconfig (k3s-io/k3s `--write-kubeconfig` default).
pub use elysium_kube::K3S_KUBECONFIG as DEFAULT_KUBECONFIG;
/// How long connecting may take: an address that drops packets fails in this time, not
/// in the OS's minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("could not load the kubeconfig {path} (K3s writes {DEFAULT_KUBECONFIG}; pass --kubeconfig)")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigSource,
    },
    #[error(
        "the Kubernetes API server {server} (from {kubeconfig}) cannot be reached; nothing was applied. \
         Is K3s running (systemctl status k3s) and is this the right kubeconfig?"
    )]
    Unreachable {
        server: String,
        kubeconfig: PathBuf,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "the Kubernetes API server {server} refused the credentials in {kubeconfig}; nothing was applied. \
         Use the cluster's admin kubeconfig ({DEFAULT_KUBECONFIG} on a K3s server)"
    )]
    Refused {
        server: String,
        kubeconfig: PathBuf,
        #[source]
        source: Box<kube::Error>,
    },
}

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The API server URL, from the kubeconfig.
    pub server: String,
    pub kubeconfig: PathBuf,
    /// `gitVersion` of the server.
    pub version: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("server", &self.server).field("kubeconfig", &self.kubeconfig).finish()
    }
}

/// Why a kubeconfig gave no client: unreadable, or not one kube can use.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigSource {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Loads the kubeconfig and checks the API server answers.
#[tracing::instrument(skip_all, fields(kubeconfig = %kubeconfig.display()))]
pub async fn connect(kubeconfig: &Path) -> Result<Cluster, ClusterError> {
    let failed = |source: KubeconfigSource| ClusterError::Kubeconfig { path: kubeconfig.to_owned(), source };
    let yaml = std::fs::read_to_string(kubeconfig).map_err(|e| failed(e.into()))?;
    let options = ClientOptions { connect_timeout: Some(CONNECT_TIMEOUT), ..ClientOptions::default() };
    let Connection { client, server } =
        elysium_kube::client_from_kubeconfig(&yaml, &kubeconfig.display().to_string(), options)
            .await
            .map_err(|e| failed(e.into()))?;
    let version = match client.apiserver_version().await {
        Ok(v) => v.git_version,
        Err(source) if is_code(&source, &[401, 403]) => {
            return Err(ClusterError::Refused {
                server,
                kubeconfig: kubeconfig.to_owned(),
                source: Box::new(source),
            });
        }
        Err(source) => {
            return Err(ClusterError::Unreachable {
                server,
                kubeconfig: kubeconfig.to_owned(),
                source: Box::new(source),
            });
        }
    };
    tracing::info!(server = %server, version = %version, "connected to the Kubernetes API server");
    Ok(Cluster { client, server, kubeconfig: kubeconfig.to_owned(), version })
}

/// Whether `e` is an API answer with one of these HTTP codes.
pub fn is_code(e: &kube::Error, codes: &[u16]) -> bool {
    matches!(e, kube::Error::Api(s) if codes.contains(&s.code))
}

/// A served kind: how to address it.
#[derive(Debug, Clone)]
pub struct Kind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

impl Kind {
    /// A kind known without asking (Flux's and sealed-secrets' own kinds, for reads).
    pub fn known(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Kind {
        Kind {
            resource: ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
            namespaced,
        }
    }

    /// The API for one object of this kind.
    pub fn api(&self, client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &self.resource),
            (true, None) => Api::all_with(client.clone(), &self.resource),
            (false, _) => Api::all_with(client.clone(), &self.resource),
        }
    }
}

/// Kinds looked up through discovery, one group/version at a time, remembered. A kind a
/// new CRD defines is looked up again once the CRD is Established.
#[derive(Debug, Default)]
pub struct Kinds {
    found: HashMap<(String, String, String), Kind>,
}

impl Kinds {
    /// The kind of `id` if the server serves it now; `Ok(None)` if it does not.
    pub async fn resolve(&mut self, client: &Client, id: &ObjectId) -> Result<Option<Kind>, kube::Error> {
        let key = (id.group().to_owned(), id.version().to_owned(), id.kind.clone());
        if let Some(k) = self.found.get(&key) {
            return Ok(Some(k.clone()));
        }
        let gvk = GroupVersionKind::gvk(id.group(), id.version(), &id.kind);
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok((resource, caps)) => {
                let k = Kind { resource, namespaced: caps.scope == Scope::Namespaced };
                self.found.insert(key, k.clone());
                Ok(Some(k))
            }
            // The group/version is not served (404), or it is but without this kind.
            Err(e) if is_code(&e, &[404]) => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
