//! Drain and uncordon on a server node's agent, with the real `kube` client against the
//! kube-apiserver stand-in (tests/standins/kube-apiserver) through a K3s-style
//! kubeconfig in a temporary node root: which pods go and which stay, PodDisruptionBudgets
//! holding a drain until its timeout (then failing, or deleting with force), idempotence,
//! the error paths, and the whole loop through a coordinator's rollout and the session.

// clippy.toml's allow-unwrap-in-tests covers #[test] functions only; the helpers
// here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elysium_agent::config::AgentConfig;
use elysium_agent::fleet::drain::{DrainError, DrainOptions, Drainer, Progress, Skip};
use elysium_agent::fleet::{self, FleetCommand, FleetError};
use elysium_agent::link;
use elysium_agent::reconcile::Reconciler;
use elysium_agent::service::{self as agent, AgentOptions};
use elysium_host::RootFs;
use elysium_kube::K3S_KUBECONFIG;
use elysium_proto::v1 as pb;
use elysium_tests::harness::{TestCoordinator, TestNode, eventually};
use kube_apiserver_standin::{ApiServer, ObjectRef, Verb};
use serde_json::{Value, json};

/// Generous: two cores shared with other builds.
const WAIT: Duration = Duration::from_secs(30);

/// A cluster with node `n1` (and `n2`) and a node root whose kubeconfig points at it.
struct Cluster {
    server: ApiServer,
    _root: tempfile::TempDir,
    fs: RootFs,
}

impl Cluster {
    async fn start() -> Self {
        let server = ApiServer::start().await.unwrap();
        let root = tempfile::tempdir().unwrap();
        let fs = RootFs::new(root.path());
        server.write_kubeconfig(&fs.resolve(K3S_KUBECONFIG), &server.admin_credentials()).unwrap();
        for node in ["n1", "n2"] {
            server
                .put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}, "spec": {}}))
                .unwrap();
        }
        Self { server, _root: root, fs }
    }

    async fn drainer(&self) -> Drainer {
        Drainer::connect(&self.fs, K3S_KUBECONFIG)
            .await
            .unwrap()
            .with_intervals(Duration::from_millis(100), Duration::from_millis(50))
    }

    fn pod(&self, name: &str, node: &str, extra: Value) {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        });
        merge(&mut pod, extra);
        self.server.put(pod).unwrap();
    }

    fn has_pod(&self, name: &str) -> bool {
        self.server.get(&ObjectRef::namespaced("v1", "Pod", "default", name)).is_some()
    }

    fn unschedulable(&self, node: &str) -> bool {
        let node = self.server.get(&ObjectRef::cluster("v1", "Node", node)).unwrap();
        node.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false)
    }

    /// Evictions so far: (pod, HTTP code).
    fn evictions(&self) -> Vec<(String, u16)> {
        self.server
            .mutations()
            .into_iter()
            .filter(|m| m.subresource.as_deref() == Some("eviction"))
            .map(|m| (m.name.unwrap_or_default(), m.code))
            .collect()
    }
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn owned_by(kind: &str) -> Value {
    json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": "owner", "uid": "u1", "controller": true}]}})
}

fn options(timeout_ms: u64, force: bool, delete_emptydir_data: bool) -> DrainOptions {
    DrainOptions { timeout: Duration::from_millis(timeout_ms), force, delete_emptydir_data }
}

/// A progress sink that keeps the messages.
fn recorder() -> (Arc<Mutex<Vec<Progress>>>, impl Fn(Progress) + Send + Sync) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |p: Progress| sink.lock().unwrap().push(p))
}

fn web(c: &Cluster, name: &str, node: &str) {
    let mut extra = owned_by("ReplicaSet");
    merge(&mut extra, json!({"metadata": {"labels": {"app": "web"}}}));
    c.pod(name, node, extra);
}

fn budget(c: &Cluster, min_available: i64) {
    c.server
        .put(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web-budget", "namespace": "default"},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": "web"}}},
        }))
        .unwrap();
}

#[tokio::test]
async fn drain_evicts_what_kubectl_would_and_leaves_daemonset_and_mirror_pods() {
    let c = Cluster::start().await;
    c.pod("web", "n1", owned_by("ReplicaSet"));
    c.pod("agent", "n1", owned_by("DaemonSet"));
    c.pod("kube-vip-n1", "n1", json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "0f3c"}}}));
    let mut cache = owned_by("ReplicaSet");
    merge(&mut cache, json!({"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}));
    c.pod("cache", "n1", cache);
    c.pod("elsewhere", "n2", owned_by("ReplicaSet"));
    let d = c.drainer().await;

    // emptyDir data may not be deleted: refused before any eviction, node cordoned.
    let err = d.drain("n1", &options(5_000, false, false), &|_| {}).await.unwrap_err();
    assert!(
        matches!(&err, DrainError::LocalData { pods, .. } if pods.len() == 1 && pods[0].name == "cache"),
        "{err:?}"
    );
    assert!(err.to_string().contains("default/cache"), "{err}");
    assert!(c.unschedulable("n1"));
    assert!(c.evictions().is_empty());

    let (seen, sink) = recorder();
    let report = d.drain("n1", &options(5_000, false, true), &sink).await.unwrap();
    let mut evicted: Vec<&str> = report.evicted.iter().map(|p| p.name.as_str()).collect();
    evicted.sort_unstable();
    assert_eq!(evicted, ["cache", "web"]);
    let mut skipped: Vec<(&str, Skip)> = report.skipped.iter().map(|(p, s)| (p.name.as_str(), *s)).collect();
    skipped.sort_unstable_by_key(|(n, _)| *n);
    assert_eq!(skipped, [("agent", Skip::DaemonSet), ("kube-vip-n1", Skip::Mirror)]);
    assert!(report.deleted.is_empty());
    assert!(!c.has_pod("web") && !c.has_pod("cache"));
    assert!(c.has_pod("agent") && c.has_pod("kube-vip-n1") && c.has_pod("elsewhere"));
    assert!(c.unschedulable("n1") && !c.unschedulable("n2"));
    let mut codes = c.evictions();
    codes.sort_unstable();
    assert_eq!(codes, [("cache".to_string(), 201), ("web".to_string(), 201)]);
    // Writes carry our field manager; nothing was deleted outright.
    let mutations = c.server.mutations();
    let cordons: Vec<_> = mutations.iter().filter(|m| m.kind == "Node").collect();
    assert!(
        !cordons.is_empty() && cordons.iter().all(|m| m.field_manager.as_deref() == Some("elysium-node"))
    );
    assert!(mutations.iter().all(|m| m.verb != Verb::Delete), "{mutations:?}");
    let steps: Vec<String> =
        seen.lock().unwrap().iter().map(|p| format!("{} {}", p.step, p.message)).collect();
    assert!(steps.iter().any(|s| s == "cordon cordoned n1"), "{steps:?}");
    assert!(steps.iter().any(|s| s.starts_with("evict evicted default/web (")), "{steps:?}");

    // Again: nothing left to evict, and that is success.
    let again = d.drain("n1", &options(5_000, false, true), &|_| {}).await.unwrap();
    assert!(again.evicted.is_empty() && again.deleted.is_empty());
    assert_eq!(c.evictions().len(), 2);

    d.uncordon("n1").await.unwrap();
    assert!(!c.unschedulable("n1"));
    d.uncordon("n1").await.unwrap();
    assert!(!c.unschedulable("n1"));
}

#[tokio::test]
async fn a_budget_holds_the_drain_until_it_allows_the_eviction() {
    let c = Cluster::start().await;
    web(&c, "web-1", "n1");
    web(&c, "web-2", "n1");
    budget(&c, 1);
    let d = c.drainer().await;
    // The first eviction leaves one healthy pod, so the second waits until the
    // ReplicaSet's replacement (played here) runs on the other node.
    let server_side = async {
        eventually("web-1 to be evicted", WAIT, || async { (!c.has_pod("web-1")).then_some(()) }).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        web(&c, "web-3", "n2");
    };
    let opts = options(20_000, false, true);
    let (report, ()) = tokio::join!(d.drain("n1", &opts, &|_| {}), server_side);
    let report = report.unwrap();
    assert_eq!(report.evicted.len(), 2);
    assert!(!c.has_pod("web-2") && c.has_pod("web-3"));
    let refused = c.evictions().iter().filter(|(p, code)| p == "web-2" && *code == 429).count();
    assert!(refused >= 2, "web-2's eviction was retried: {:?}", c.evictions());
}

#[tokio::test]
async fn a_budget_that_never_allows_fails_the_drain_at_the_timeout_unless_forced() {
    let c = Cluster::start().await;
    web(&c, "web-1", "n1");
    web(&c, "web-2", "n1");
    budget(&c, 2);
    let d = c.drainer().await;

    let started = Instant::now();
    let err = d.drain("n1", &options(1_000, false, true), &|_| {}).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_secs(1));
    let DrainError::Blocked { blocked, .. } = &err else { panic!("{err:?}") };
    assert_eq!(blocked.len(), 2);
    let text = err.to_string();
    assert!(text.contains("default/web-1 (") && text.contains("default/web-2 ("), "{text}");
    assert!(text.contains("web-budget"), "the budget is named: {text}");
    assert!(text.contains("stays cordoned"), "{text}");
    assert!(c.has_pod("web-1") && c.has_pod("web-2"));
    // The coordinator uncordons; the drain leaves the node as it made it.
    assert!(c.unschedulable("n1"));
    assert!(c.evictions().iter().all(|(_, code)| *code == 429));
    assert!(c.evictions().len() >= 4, "retried: {:?}", c.evictions());

    let (seen, sink) = recorder();
    let report = d.drain("n1", &options(500, true, true), &sink).await.unwrap();
    let mut deleted: Vec<&str> = report.deleted.iter().map(|p| p.name.as_str()).collect();
    deleted.sort_unstable();
    assert_eq!(deleted, ["web-1", "web-2"]);
    assert!(report.evicted.is_empty());
    assert!(!c.has_pod("web-1") && !c.has_pod("web-2"));
    let deletes =
        c.server.mutations().into_iter().filter(|m| m.verb == Verb::Delete && m.kind == "Pod").count();
    assert_eq!(deletes, 2);
    assert!(seen.lock().unwrap().iter().any(|p| p.step == "delete"));
    assert!(report.to_string().contains("deleted 2 after the timeout"), "{report}");
}

#[tokio::test]
async fn errors_say_what_is_wrong() {
    let c = Cluster::start().await;
    let d = c.drainer().await;
    let err = d.drain("ghost", &options(1_000, false, true), &|_| {}).await.unwrap_err();
    assert!(matches!(err, DrainError::NodeNotFound { ref node } if node == "ghost"), "{err:?}");
    assert!(
        d.uncordon("ghost")
            .await
            .unwrap_err()
            .to_string()
            .contains("\"ghost\" is not in the Kubernetes cluster")
    );

    c.server.set_unreachable(true);
    let err = d.drain("n1", &options(1_000, false, true), &|_| {}).await.unwrap_err();
    assert!(matches!(err, DrainError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&c.server.url()) && text.contains("unreachable"), "{text}");
    c.server.set_unreachable(false);

    let empty = RootFs::new(tempfile::tempdir().unwrap().path());
    let err = Drainer::connect(&empty, K3S_KUBECONFIG).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "there is no kubeconfig at /etc/rancher/k3s/k3s.yaml: this node is not a K3s server, or K3s is not up"
    );
    empty.write_atomic(K3S_KUBECONFIG, b"clusters: [oops", 0o600).unwrap();
    assert!(matches!(
        Drainer::connect(&empty, K3S_KUBECONFIG).await,
        Err(DrainError::Client(elysium_kube::ClientError::Kubeconfig { .. }))
    ));

    // An agent-role node refuses before looking for a kubeconfig.
    let cmd = FleetCommand::Uncordon { node: "n1".into() };
    let err = fleet::run(&c.fs, K3S_KUBECONFIG, false, &cmd, &|_| {}).await.unwrap_err();
    assert!(matches!(err, FleetError::NotServer) && err.to_string().starts_with("not a server"), "{err}");
    assert_eq!(fleet::run(&c.fs, K3S_KUBECONFIG, true, &cmd, &|_| {}).await.unwrap(), "uncordoned n1");
}

/// A server node whose agent reports `version` for its K3s, as the K3s step would.
async fn server_agent(node: &TestNode, version: &str) -> (link::StepLink, tokio::sync::oneshot::Sender<()>) {
    let config = AgentConfig::load(&node.host.fs, elysium_agent::paths::AGENT_CONFIG).unwrap();
    let (steps, session) = link::link();
    steps.report_k3s(pb::K3sReport { version: version.into(), ..Default::default() });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options =
        AgentOptions { backoff_initial: Duration::from_millis(50), backoff_max: Duration::from_millis(400) };
    let host = node.host.clone();
    tokio::spawn(async move {
        agent::run(host, config, Reconciler::default(), session, options, async move {
            let _ = stopped.await;
        })
        .await
    });
    (steps, stop)
}

async fn event(c: &TestCoordinator, kind: &str, subject: &str) -> pb::Event {
    eventually(&format!("event {kind} for {subject}"), WAIT, || async {
        let events = c.admin().await.list_events(pb::ListEventsRequest { after_seq: 0, limit: 500 }).await;
        events.unwrap().into_inner().events.into_iter().find(|e| e.kind == kind && e.subject == subject)
    })
    .await
}

#[tokio::test]
async fn a_rollout_drains_through_the_server_agent_and_uncordons_after() {
    let c = TestCoordinator::start().await;
    let node = TestNode::new("s1");
    let token = c.token_for(pb::NodeRole::Server, 1, 3600).await;
    node.join(&c.url(), &token).await.unwrap();
    let api = ApiServer::start().await.unwrap();
    api.write_kubeconfig(&node.host.fs.resolve(K3S_KUBECONFIG), &api.admin_credentials()).unwrap();
    api.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "s1"}, "spec": {}})).unwrap();
    api.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u1", "controller": true}]},
        "spec": {"nodeName": "s1", "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running"},
    }))
    .unwrap();
    let (steps, stop) = server_agent(&node, "v1.31.4+k3s1").await;
    eventually("s1 online with its K3s version", WAIT, || async {
        c.node("s1").await.filter(|n| n.online && n.k3s_version == "v1.31.4+k3s1")
    })
    .await;

    let mut admin = c.admin().await;
    let spec = "[k3s]\nversion = \"v1.31.4+k3s1\"\n[upgrade]\nversion = \"v1.31.5+k3s1\"\n[upgrade.drain]\ntimeout_seconds = 10\n";
    c.set_spec(spec).await;
    admin.upgrade_start(pb::UpgradeStartRequest { version: "v1.31.5+k3s1".into() }).await.unwrap();

    let drained = event(&c, "drain.succeeded", "s1").await;
    assert!(
        drained.message.starts_with("drain-") && drained.message.contains("drained s1: evicted 1 pod(s)"),
        "{drained:?}"
    );
    let unschedulable = |api: &ApiServer| {
        api.get(&ObjectRef::cluster("v1", "Node", "s1"))
            .unwrap()
            .pointer("/spec/unschedulable")
            .and_then(Value::as_bool)
    };
    assert_eq!(unschedulable(&api), Some(true));
    assert!(api.get(&ObjectRef::namespaced("v1", "Pod", "default", "web")).is_none());

    // K3s comes back on the target: the rollout uncordons the node it cordoned.
    steps.report_k3s(pb::K3sReport { version: "v1.31.5+k3s1".into(), ..Default::default() });
    eventually("s1 uncordoned", WAIT, || async { (unschedulable(&api) == Some(false)).then_some(()) }).await;
    event(&c, "upgrade.node-done", "s1").await;
    let _ = stop.send(());
}
