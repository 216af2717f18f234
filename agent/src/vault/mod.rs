//! The node's half of the key vault: on K3s servers, watch the sealed-secrets key
//! Secrets (label `sealedsecrets.bitnami.com/sealed-secrets-key`, every namespace)
//! through the node's kubeconfig and hand each new or changed key to the session,
//! which sends it to the coordinator ([`keys`]). The coordinator keeps them; `recover`
//! then never has to start from a backup taken before the last renewal.
//!
//! A background task, not a reconciler step: a step runs only when the steps before
//! it succeed, and the backup matters most when something is broken (a K3s upgrade
//! that failed, a mirror that is down). The task needs nothing from a pass: it waits,
//! quietly, until this node holds a spec that makes it a K3s server and K3s has
//! written its kubeconfig, then watches for as long as the agent runs, reconnecting
//! when the API server goes away.

use std::time::Duration;

use elysium_host::{FsError, RootFs};
use elysium_kube::K3S_KUBECONFIG;
use elysium_kube::{ClientError, ClientOptions};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_stream::StreamExt as _;

use crate::link::StepLink;
use crate::sealing_keys as keys;
pub use crate::sealing_keys::KeySet;
use crate::state::{HeldSpec, NodeRole};

/// Where and how often.
#[derive(Debug, Clone)]
pub struct KeyWatchOptions {
    /// The kubeconfig to watch with, a node path under the host root.
    pub kubeconfig: String,
    /// How long to wait before looking again when this node is not (yet) a server,
    /// K3s has not written its kubeconfig, or the watch failed.
    pub retry: Duration,
}

impl Default for KeyWatchOptions {
    fn default() -> Self {
        Self { kubeconfig: K3S_KUBECONFIG.to_owned(), retry: Duration::from_secs(30) }
    }
}

/// Why the watch could not start or stopped. Names the file or the API, never data.
#[derive(Debug, thiserror::Error)]
pub enum KeyWatchError {
    #[error(transparent)]
    Read(#[from] FsError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the watch of sealed-secrets key Secrets failed")]
    Watch(#[source] watcher::Error),
    #[error("the watch of sealed-secrets key Secrets ended")]
    Ended,
}

/// What this node's held spec says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eligibility {
    /// Runs a K3s server: watch.
    Server,
    /// Not yet known (no spec, no `[k3s]` section): look again later.
    NotYet,
    /// A worker node for good (roles come from the join token).
    Never,
}

fn eligibility(held: Option<&HeldSpec>) -> Eligibility {
    match held {
        Some(h) if h.role == NodeRole::Agent => Eligibility::Never,
        Some(h) if h.k3s.as_ref().is_some_and(|k| k.role.is_server()) => Eligibility::Server,
        _ => Eligibility::NotYet,
    }
}

/// Starts the watcher in the background; it runs until the process ends or the
/// handle is aborted.
pub fn spawn(fs: RootFs, link: StepLink, options: KeyWatchOptions) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(fs, link, options))
}

/// Watches for as long as it is useful: returns only on a worker node. Follows
/// the held spec through the link (no polling of `spec.json`); only K3s's
/// kubeconfig, which appears when K3s first starts, is looked for on a timer.
pub async fn run(fs: RootFs, link: StepLink, options: KeyWatchOptions) {
    let mut spec = link.subscribe_spec();
    // Log a failure once, at warn; its repeats at debug until the watch works again.
    let mut failing = false;
    loop {
        let now = eligibility(spec.borrow_and_update().as_ref().map(|h| &h.spec));
        match now {
            Eligibility::Never => {
                tracing::debug!("not a server node: no sealing keys to back up");
                return;
            }
            // Nothing to do until the spec changes.
            Eligibility::NotYet => {
                if spec.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Eligibility::Server => match connect(&fs, &options.kubeconfig).await {
                Ok(None) => {
                    tracing::debug!(path = %options.kubeconfig, "no kubeconfig yet (K3s not up?); looking again later");
                }
                Ok(Some(client)) => {
                    let end = watch(client, &link, &mut failing).await;
                    report_failure(&end, &mut failing);
                }
                Err(e) => report_failure(&e, &mut failing),
            },
        }
        tokio::select! {
            () = tokio::time::sleep(options.retry) => {}
            changed = spec.changed() => if changed.is_err() { return },
        }
    }
}

fn report_failure(e: &KeyWatchError, failing: &mut bool) {
    let error = crate::error_chain(e);
    if *failing {
        tracing::debug!(%error, "sealing key watch still failing");
    } else {
        tracing::warn!(%error, "sealing key backup paused; retrying");
    }
    *failing = true;
}

/// A client from the kubeconfig at `path`; `None` when there is no such file.
async fn connect(fs: &RootFs, path: &str) -> Result<Option<Client>, KeyWatchError> {
    let Some(bytes) = fs.read_optional(path)? else { return Ok(None) };
    // The watcher's caller retries on its own clock.
    let connection = elysium_kube::client_from_kubeconfig(
        &String::from_utf8_lossy(&bytes),
        path,
        ClientOptions::default(),
    )
    .await?;
    Ok(Some(connection.client))
}

/// Publishes the cluster's key Secrets into the link until the watch fails.
async fn watch(client: Client, link: &StepLink, failing: &mut bool) -> KeyWatchError {
    let api: Api<Secret> = Api::all(client);
    let config = watcher::Config::default().labels(keys::KEY_LABEL);
    let mut stream = std::pin::pin!(watcher::watcher(api, config));
    // A (re)list is buffered and replaces the set at its end, so keys deleted while
    // the watch was down leave the set too.
    let mut listing: Option<KeySet> = None;
    loop {
        let event = match stream.next().await {
            None => return KeyWatchError::Ended,
            Some(Err(e)) => return KeyWatchError::Watch(e),
            Some(Ok(event)) => event,
        };
        match event {
            Event::Init => listing = Some(KeySet::default()),
            Event::InitApply(secret) => {
                if let (Some(set), Some(report)) = (listing.as_mut(), usable(&secret)) {
                    set.insert(report);
                }
            }
            Event::InitDone => {
                let set = listing.take().unwrap_or_default();
                if *failing {
                    tracing::info!("sealing key watch works again");
                    *failing = false;
                }
                tracing::info!(keys = set.len(), names = ?set.names().collect::<Vec<_>>(), "watching sealed-secrets keys");
                link.publish_sealing_keys(|current| {
                    let changed = *current != set;
                    *current = set;
                    changed
                });
            }
            Event::Apply(secret) => {
                if let Some(report) = usable(&secret) {
                    let at = format!("{}/{}", report.namespace, report.name);
                    if link.publish_sealing_keys(|set| set.insert(report)) {
                        tracing::info!(key = %at, "sealed-secrets key new or changed");
                    }
                }
            }
            Event::Delete(secret) => {
                let (ns, name) =
                    (secret.metadata.namespace.unwrap_or_default(), secret.metadata.name.unwrap_or_default());
                if link.publish_sealing_keys(|set| set.remove(&ns, &name)) {
                    // The coordinator keeps it: old keys still open old SealedSecrets.
                    tracing::info!(key = %format!("{ns}/{name}"), "sealed-secrets key deleted from the cluster");
                }
            }
        }
    }
}

/// The report for a labelled Secret, or `None` (logged) when it is not a usable key.
fn usable(secret: &Secret) -> Option<elysium_proto::v1::SealingKeyReport> {
    match keys::report(secret) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a Secret labelled as a sealing key");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{HeldSpec, K3sAssignedRole, K3sAssignment};

    fn held(role: &str, k3s_role: Option<&str>) -> HeldSpec {
        fn parse<T: serde::de::DeserializeOwned>(s: &str) -> T {
            serde_json::from_value(serde_json::Value::String(s.into())).unwrap()
        }
        let role: NodeRole = parse(role);
        HeldSpec {
            generation: 1,
            cluster_spec_toml: String::new(),
            role,
            labels: Default::default(),
            k3s: k3s_role.map(|r| K3sAssignment {
                role: parse::<K3sAssignedRole>(r),
                server_url: String::new(),
                token: String::new(),
                version: String::new(),
                agent_token: String::new(),
            }),
            secrets: Default::default(),
        }
    }

    #[test]
    fn only_k3s_servers_watch_and_workers_stop_looking() {
        assert_eq!(eligibility(None), Eligibility::NotYet);
        assert_eq!(eligibility(Some(&held("server", None))), Eligibility::NotYet, "no [k3s] yet");
        assert_eq!(eligibility(Some(&held("server", Some("server-init")))), Eligibility::Server);
        assert_eq!(eligibility(Some(&held("server", Some("server")))), Eligibility::Server);
        assert_eq!(eligibility(Some(&held("agent", Some("agent")))), Eligibility::Never);
        assert_eq!(eligibility(Some(&held("agent", None))), Eligibility::Never);
    }
}
