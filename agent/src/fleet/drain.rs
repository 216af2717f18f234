//! Cordon, drain and uncordon one Kubernetes node through the API server, the way
//! `kubectl drain` does (k8s.io/kubectl `pkg/drain`): DaemonSet and mirror pods
//! stay, pods with emptyDir data are refused unless allowed, the rest are evicted
//! through the eviction subresource so PodDisruptionBudgets are honoured, and the
//! drain waits until the evicted pods are gone.
//!
//! Which node to drain, when, and whether to uncordon it afterwards is the
//! coordinator's decision (its rollouts); this module only carries it out. Every
//! operation is idempotent: draining a drained node succeeds and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use elysium_host::{FsError, RootFs};
use elysium_kube::{ClientError, ClientOptions, Connection, FIELD_MANAGER};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

/// The annotation the kubelet puts on the API's copy of a static pod
/// (k8s.io/api `core/v1` `MirrorPodAnnotationKey`). Evicting one does nothing.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// `terminationGracePeriodSeconds` when a pod does not set it (core/v1 default).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// After the longest grace period, how long the kubelet may take to report the
/// pod gone before the drain gives up on it.
const GONE_MARGIN: Duration = Duration::from_secs(30);
/// Refused evictions are retried this often (kubectl drain waits 5 s after a 429).
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Evicted pods are looked for this often (kubectl's `waitForDelete` interval).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// One API request, connect to last byte. None of ours stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a cordon, drain or uncordon did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("there is no kubeconfig at {path}: this node is not a K3s server, or K3s is not up")]
    NoKubeconfig { path: String },
    #[error("could not read the kubeconfig {path}")]
    ReadKubeconfig {
        path: String,
        #[source]
        source: FsError,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the Kubernetes API at {url} is unreachable while {action} (is K3s running on this server?)")]
    Unreachable {
        url: String,
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("node {node:?} is not in the Kubernetes cluster (`kubectl get nodes` lists the names)")]
    NodeNotFound { node: String },
    #[error("the Kubernetes API refused {action}: {code} {reason}: {message}")]
    Api { action: String, code: u16, reason: String, message: String },
    #[error("{action} failed")]
    Request {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{node} runs pods with emptyDir volumes, whose data a drain deletes: {}; allow it with [upgrade.drain] delete_emptydir_data = true",
        join(pods)
    )]
    LocalData { node: String, pods: Vec<PodRef> },
    #[error(
        "{} pod(s) on {node} were not evicted within {}s, held by PodDisruptionBudgets: {}; the node stays cordoned. Fix the budgets, raise [upgrade.drain] timeout_seconds, or set force = true",
        blocked.len(), timeout.as_secs(), blocked.iter().map(|(p, why)| format!("{p} ({why})")).collect::<Vec<_>>().join(", ")
    )]
    Blocked { node: String, timeout: Duration, blocked: BTreeMap<PodRef, String> },
    #[error("evicted pods on {node} were still not gone after {}s: {}", waited.as_secs(), join(pods))]
    NotGone { node: String, waited: Duration, pods: Vec<PodRef> },
}

fn join(pods: &[PodRef]) -> String {
    pods.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// A pod by namespace and name; `uid` tells it from a later pod of the same name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    fn of(pod: &Pod) -> Self {
        let m = &pod.metadata;
        Self {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a pod stays on a drained node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its DaemonSet would recreate it at once (and tolerates the cordon).
    DaemonSet,
    /// A static pod's API copy: the kubelet runs it from a file.
    Mirror,
}

/// What a drain does with the pods it found: pure data, from [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainPlan {
    pub evict: Vec<PodRef>,
    pub skip: Vec<(PodRef, Skip)>,
    /// Pods with emptyDir data, when deleting it is not allowed: the drain refuses.
    pub local_data: Vec<PodRef>,
    /// The longest termination grace period among the pods to evict.
    pub longest_grace: Duration,
}

/// Sorts the pods of a node as `kubectl drain` does (its DaemonSet, mirror and
/// local-storage filters; finished pods lose nothing, so their emptyDir is fine).
pub fn plan(pods: &[Pod], delete_emptydir_data: bool) -> DrainPlan {
    let mut plan = DrainPlan::default();
    for pod in pods {
        let r = PodRef::of(pod);
        let m = &pod.metadata;
        if m.owner_references.iter().flatten().any(|o| o.kind == "DaemonSet") {
            plan.skip.push((r, Skip::DaemonSet));
            continue;
        }
        if m.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)) {
            plan.skip.push((r, Skip::Mirror));
            continue;
        }
        let spec = pod.spec.as_ref();
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let empty_dir =
            spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten().any(|v| v.empty_dir.is_some());
        if empty_dir && !finished && !delete_emptydir_data {
            plan.local_data.push(r);
            continue;
        }
        let grace = spec
            .and_then(|s| s.termination_grace_period_seconds)
            .map(|s| Duration::from_secs(s.max(0).unsigned_abs()))
            .unwrap_or(DEFAULT_GRACE);
        plan.longest_grace = plan.longest_grace.max(grace);
        plan.evict.push(r);
    }
    plan
}

/// How to drain, from the coordinator's `DrainNode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOptions {
    /// How long evictions may be refused by PodDisruptionBudgets.
    pub timeout: Duration,
    /// After the timeout, delete the remaining pods instead of failing.
    pub force: bool,
    pub delete_emptydir_data: bool,
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub evicted: Vec<PodRef>,
    /// Deleted after the timeout (`force`), budgets notwithstanding.
    pub deleted: Vec<PodRef>,
    pub skipped: Vec<(PodRef, Skip)>,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "evicted {} pod(s)", self.evicted.len())?;
        if !self.deleted.is_empty() {
            write!(f, ", deleted {} after the timeout ({})", self.deleted.len(), join(&self.deleted))?;
        }
        let count = |k: Skip| self.skipped.iter().filter(|(_, s)| *s == k).count();
        write!(f, "; left {} DaemonSet and {} mirror pod(s)", count(Skip::DaemonSet), count(Skip::Mirror))
    }
}

/// One step of a drain, for the coordinator's progress log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// `cordon`, `evict`, `delete` or `wait`.
    pub step: &'static str,
    pub message: String,
    /// 0..=100, or -1 when unknown.
    pub percent: i32,
}

/// Talks to one cluster's API server. Built when a command arrives and dropped
/// after it, so an idle agent holds no client.
#[derive(Clone)]
pub struct Drainer {
    client: Client,
    url: String,
    retry_interval: Duration,
    poll_interval: Duration,
}

impl fmt::Debug for Drainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drainer").field("url", &self.url).finish_non_exhaustive()
    }
}

/// What one eviction request came to.
enum Eviction {
    Done,
    /// 429: a PodDisruptionBudget (or the API server's rate limits) said not now.
    Refused(String),
}

impl Drainer {
    /// A client from the kubeconfig at `path` (a node path under `fs`'s root),
    /// like `/etc/rancher/k3s/k3s.yaml` on a K3s server.
    pub async fn connect(fs: &RootFs, path: &str) -> Result<Self, DrainError> {
        let text = match fs.read_optional(path) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => return Err(DrainError::NoKubeconfig { path: path.to_owned() }),
            Err(source) => return Err(DrainError::ReadKubeconfig { path: path.to_owned(), source }),
        };
        // A drain must see 429s (they are PodDisruptionBudgets) and keeps its own clock.
        let options = ClientOptions { read_timeout: Some(REQUEST_TIMEOUT), ..ClientOptions::default() };
        let Connection { client, server: url } =
            elysium_kube::client_from_kubeconfig(&text, path, options).await?;
        Ok(Self { client, url, retry_interval: RETRY_INTERVAL, poll_interval: POLL_INTERVAL })
    }

    /// Shorter waits between retries and polls, for tests.
    pub fn with_intervals(mut self, retry: Duration, poll: Duration) -> Self {
        self.retry_interval = retry;
        self.poll_interval = poll;
        self
    }

    fn error(&self, action: &str, e: kube::Error) -> DrainError {
        match e {
            kube::Error::Api(s) => DrainError::Api {
                action: action.to_owned(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
                DrainError::Unreachable { url: self.url.clone(), action: action.to_owned(), source: e }
            }
            source => DrainError::Request { action: action.to_owned(), source },
        }
    }

    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), DrainError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        let patch = Patch::Merge(json!({"spec": {"unschedulable": unschedulable}}));
        let action = if unschedulable { "cordoning" } else { "uncordoning" };
        match nodes.patch(node, &params, &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                Err(DrainError::NodeNotFound { node: node.to_owned() })
            }
            Err(e) => Err(self.error(&format!("{action} {node}"), e)),
        }
    }

    /// Marks `node` unschedulable (`kubectl cordon`).
    #[tracing::instrument(skip(self), fields(url = %self.url))]
    pub async fn cordon(&self, node: &str) -> Result<(), DrainError> {
        self.set_unschedulable(node, true).await
    }

    /// Marks `node` schedulable again (`kubectl uncordon`).
    #[tracing::instrument(skip(self), fields(url = %self.url))]
    pub async fn uncordon(&self, node: &str) -> Result<(), DrainError> {
        self.set_unschedulable(node, false).await
    }

    async fn pods_on(&self, node: &str) -> Result<Vec<Pod>, DrainError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let list =
            pods.list(&params).await.map_err(|e| self.error(&format!("listing the pods on {node}"), e))?;
        Ok(list.items)
    }

    async fn evict(&self, pod: &PodRef) -> Result<Eviction, DrainError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.evict(&pod.name, &EvictParams::default()).await {
            Ok(_) => Ok(Eviction::Done),
            // Gone already (another drain, a controller): as good as evicted.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Eviction::Done),
            Err(kube::Error::Api(s)) if s.code == 429 => {
                // The budget's own words name it: "The disruption budget web needs 2
                // healthy pods and has 2 currently".
                let cause = s.details.as_ref().and_then(|d| d.causes.iter().find(|c| !c.message.is_empty()));
                Ok(Eviction::Refused(cause.map(|c| c.message.clone()).unwrap_or_else(|| s.message.clone())))
            }
            Err(e) => Err(self.error(&format!("evicting pod {pod}"), e)),
        }
    }

    async fn delete(&self, pod: &PodRef) -> Result<(), DrainError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.delete(&pod.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.error(&format!("deleting pod {pod}"), e)),
        }
    }

    /// Cordons `node`, evicts its pods (retrying those PodDisruptionBudgets hold up
    /// until `options.timeout`, then deleting them with `force` or failing), and
    /// waits until they are gone. The node stays cordoned whatever happens.
    #[tracing::instrument(skip(self, options, progress), fields(url = %self.url, timeout_s = options.timeout.as_secs(), force = options.force))]
    pub async fn drain(
        &self,
        node: &str,
        options: &DrainOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<DrainReport, DrainError> {
        let deadline = Instant::now() + options.timeout;
        self.cordon(node).await?;
        progress(Progress { step: "cordon", message: format!("cordoned {node}"), percent: 0 });

        let plan = plan(&self.pods_on(node).await?, options.delete_emptydir_data);
        if !plan.local_data.is_empty() {
            return Err(DrainError::LocalData { node: node.to_owned(), pods: plan.local_data });
        }
        let total = plan.evict.len();
        let mut report = DrainReport { skipped: plan.skip, ..DrainReport::default() };
        let mut pending = plan.evict;
        let mut blocked: BTreeMap<PodRef, String> = BTreeMap::new();
        loop {
            let mut refused = Vec::new();
            for pod in pending {
                match self.evict(&pod).await? {
                    Eviction::Done => {
                        blocked.remove(&pod);
                        tracing::info!(pod = %pod, "evicted");
                        let done = report.evicted.len() + 1;
                        progress(Progress {
                            step: "evict",
                            message: format!("evicted {pod} ({done}/{total})"),
                            percent: percent(done, total),
                        });
                        report.evicted.push(pod);
                    }
                    Eviction::Refused(why) => {
                        if blocked.get(&pod) != Some(&why) {
                            tracing::info!(pod = %pod, reason = %why, "eviction refused; retrying until the timeout");
                            progress(Progress {
                                step: "evict",
                                message: format!("{pod} held: {why}"),
                                percent: percent(report.evicted.len(), total),
                            });
                        }
                        blocked.insert(pod.clone(), why);
                        refused.push(pod);
                    }
                }
            }
            pending = refused;
            if pending.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                if !options.force {
                    return Err(DrainError::Blocked {
                        node: node.to_owned(),
                        timeout: options.timeout,
                        blocked,
                    });
                }
                for pod in pending {
                    self.delete(&pod).await?;
                    tracing::warn!(pod = %pod, "deleted after the drain timeout (force)");
                    progress(Progress {
                        step: "delete",
                        message: format!("deleted {pod} after the timeout, budgets notwithstanding"),
                        percent: -1,
                    });
                    report.deleted.push(pod);
                }
                break;
            }
            tokio::time::sleep(self.retry_interval.min(deadline - now)).await;
        }

        // The kubelet stops evicted pods within their grace period; give it that,
        // or what is left of the timeout if that is longer.
        let bound =
            (plan.longest_grace + GONE_MARGIN).max(deadline.saturating_duration_since(Instant::now()));
        let gone: Vec<PodRef> = report.evicted.iter().chain(&report.deleted).cloned().collect();
        if !gone.is_empty() {
            progress(Progress {
                step: "wait",
                message: format!("waiting for {} pod(s) to stop", gone.len()),
                percent: 100,
            });
        }
        self.wait_gone(node, &gone, bound).await?;
        Ok(report)
    }

    async fn wait_gone(&self, node: &str, pods: &[PodRef], bound: Duration) -> Result<(), DrainError> {
        if pods.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        loop {
            let present: BTreeSet<PodRef> = self.pods_on(node).await?.iter().map(PodRef::of).collect();
            // The same uid, or the same name when the API gave no uid.
            let left: Vec<PodRef> = pods
                .iter()
                .filter(|p| {
                    present.iter().any(|q| {
                        q == *p || (p.uid.is_empty() && q.namespace == p.namespace && q.name == p.name)
                    })
                })
                .cloned()
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= bound {
                return Err(DrainError::NotGone { node: node.to_owned(), waited: bound, pods: left });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}

fn percent(done: usize, total: usize) -> i32 {
    (done * 100).checked_div(total).map_or(100, |p| i32::try_from(p).unwrap_or(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running"},
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn owned_by(kind: &str) -> serde_json::Value {
        json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": "x", "uid": "u", "controller": true}]}})
    }

    fn empty_dir() -> serde_json::Value {
        json!({"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}})
    }

    fn names(pods: &[PodRef]) -> Vec<&str> {
        pods.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn drain_plan_skips_daemonsets_and_mirrors_and_refuses_local_data() {
        let pods = [
            pod("web", owned_by("ReplicaSet")),
            pod("agent", owned_by("DaemonSet")),
            pod("apiserver", json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "abc"}}})),
            pod("cache", empty_dir()),
            pod("done", {
                let mut v = empty_dir();
                merge(&mut v, json!({"status": {"phase": "Succeeded"}}));
                v
            }),
            pod("slow", json!({"spec": {"terminationGracePeriodSeconds": 120}})),
        ];
        let p = plan(&pods, false);
        assert_eq!(names(&p.evict), ["web", "done", "slow"]);
        assert_eq!(
            p.skip.iter().map(|(r, s)| (r.name.as_str(), *s)).collect::<Vec<_>>(),
            [("agent", Skip::DaemonSet), ("apiserver", Skip::Mirror)]
        );
        assert_eq!(names(&p.local_data), ["cache"]);
        assert_eq!(p.longest_grace, Duration::from_secs(120));

        let p = plan(&pods, true);
        assert_eq!(names(&p.evict), ["web", "cache", "done", "slow"]);
        assert!(p.local_data.is_empty());
    }

    #[test]
    fn drain_plan_of_a_drained_node_is_empty() {
        let p = plan(&[pod("agent", owned_by("DaemonSet"))], false);
        assert!(p.evict.is_empty() && p.local_data.is_empty());
        assert_eq!(p.longest_grace, Duration::ZERO);
        assert_eq!(plan(&[], false), DrainPlan::default());
    }

    #[test]
    fn drain_errors_say_what_to_do() {
        let r = |n: &str| PodRef { namespace: "default".into(), name: n.into(), uid: String::new() };
        let blocked = DrainError::Blocked {
            node: "n1".into(),
            timeout: Duration::from_secs(300),
            blocked: [(
                r("web-1"),
                "The disruption budget web-budget needs 2 healthy pods and has 2 currently".into(),
            )]
            .into_iter()
            .collect(),
        };
        let text = blocked.to_string();
        assert!(text.starts_with("1 pod(s) on n1 were not evicted within 300s"), "{text}");
        assert!(text.contains("default/web-1 (The disruption budget web-budget needs"), "{text}");
        assert!(text.contains("force = true"), "{text}");
        let none = DrainError::NoKubeconfig { path: "/etc/rancher/k3s/k3s.yaml".into() };
        assert!(none.to_string().contains("not a K3s server, or K3s is not up"));
    }
}
