//! The cluster side of the apply tests: the kube-apiserver stand-in with a kubeconfig, the
//! repository adapted to what the stand-in serves, a recording [`Ui`], and a test that
//! plays Flux (source-, kustomize- and helm-controller, and the sealed-secrets controller)
//! by writing status the way those controllers do.
//!
//! The stand-in serves only some built-in kinds (tests/standins/kube-apiserver
//! `resources.rs`). Of what gotk-components.yaml holds, it lacks ClusterRole,
//! ClusterRoleBinding and NetworkPolicy, which [`start`] serves through CRDs of the same
//! group, version, kind and scope (seeded, so they are not in the mutation log), and
//! Service and ResourceQuota, which a CRD cannot stand in for (core group): [`repo`]
//! removes those documents from the test copy of gotk-components.yaml. Everything else
//! (the 14 large CRDs, the Namespace, ServiceAccounts, Deployments, gotk-sync) is the real
//! repository's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use elysium_recovery::{ApplyOptions, Event, Ui};
use kube_apiserver_standin::{ApiServer, Condition, ObjectRef, Options};
use serde_json::{Value, json};

use super::{TestKey, commit_all, repo_resealed_with};

pub const GOTK_COMPONENTS: &str = "clusters/kyrion/flux-system/gotk-components.yaml";
/// Kinds the stand-in lacks that a CRD can stand in for: (group, kind, plural, namespaced).
const EMULATED: &[(&str, &str, &str, bool)] = &[
    ("rbac.authorization.k8s.io", "ClusterRole", "clusterroles", false),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding", "clusterrolebindings", false),
    ("networking.k8s.io", "NetworkPolicy", "networkpolicies", true),
];
/// Kinds it lacks that nothing can stand in for: removed from the test repository.
const UNSERVED: &[&str] = &["Service", "ResourceQuota"];

pub const GIT_REPOSITORY: &str = "source.toolkit.fluxcd.io/v1";
pub const KUSTOMIZATION: &str = "kustomize.toolkit.fluxcd.io/v1";

fn crd(group: &str, kind: &str, plural: &str, namespaced: bool) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}}],
        },
    })
}

/// Serves the kinds of [`EMULATED`] on `server`.
pub fn serve_emulated_kinds(server: &ApiServer) {
    for (group, kind, plural, namespaced) in EMULATED {
        server.put(crd(group, kind, plural, *namespaced)).expect("seed CRD");
        server.establish(&format!("{plural}.{group}"));
    }
}

/// The `gitVersion` the stand-in reports in these tests: a K3s release new enough for the
/// snapshot's Flux (v2.9.3, which needs Kubernetes 1.33 or newer: recovery/src/compat.rs).
pub const K3S_VERSION: &str = "v1.33.5+k3s1";

/// A stand-in serving what the real gotk-components needs (minus [`UNSERVED`]), and a
/// kubeconfig for it in `dir`.
pub async fn start(dir: &Path, establish_delay: Duration) -> (Arc<ApiServer>, PathBuf) {
    start_with(dir, Options { establish_delay, ..standin_options() }).await
}

/// What [`start`] starts the stand-in with: its defaults, reporting [`K3S_VERSION`].
pub fn standin_options() -> Options {
    Options { git_version: K3S_VERSION.to_owned(), ..Options::default() }
}

/// [`start`] with these options ([`standin_options`] and changes).
pub async fn start_with(dir: &Path, options: Options) -> (Arc<ApiServer>, PathBuf) {
    let server = ApiServer::start_with(options).await.expect("stand-in");
    serve_emulated_kinds(&server);
    let kubeconfig = dir.join("k3s.yaml");
    server.write_kubeconfig(&kubeconfig, &server.admin_credentials()).expect("kubeconfig");
    (Arc::new(server), kubeconfig)
}

/// The repository resealed with `key` (as [`repo_resealed_with`]), with the [`UNSERVED`]
/// documents removed from gotk-components.yaml; returns it and the commit.
pub fn repo(key: &TestKey) -> (tempfile::TempDir, String) {
    let (dir, _) = repo_resealed_with(key, true, true);
    let file = dir.path().join(GOTK_COMPONENTS);
    let text = std::fs::read_to_string(&file).expect("read gotk-components");
    let mut kept = Vec::new();
    let mut removed = 0;
    for doc in text.split("\n---\n") {
        let kind = doc.lines().find_map(|l| l.strip_prefix("kind: ")).unwrap_or_default().trim();
        if UNSERVED.contains(&kind) {
            removed += 1;
        } else {
            kept.push(doc);
        }
    }
    assert_eq!(removed, 4, "the snapshot has 3 Services and 1 ResourceQuota");
    std::fs::write(&file, kept.join("\n---\n")).expect("write gotk-components");
    let sha = commit_all(dir.path(), "the stand-in serves no Service or ResourceQuota");
    (dir, sha)
}

/// Options for a test run: the given kubeconfig and state file, a generated deploy key
/// without waiting for confirmation, short polls.
pub fn apply_options(kubeconfig: &Path, state_file: &Path, timeout: Duration) -> ApplyOptions {
    ApplyOptions {
        deploy_key: elysium_recovery::repo::DeployKey::Generate,
        state_file: state_file.to_owned(),
        yes: true,
        timeout,
        poll_interval: Duration::from_millis(50),
        ..ApplyOptions::new(kubeconfig.to_owned())
    }
}

/// Collects events; answers confirmations with `answer`.
#[derive(Debug, Default)]
pub struct RecordingUi {
    pub events: Vec<Event>,
    pub questions: Vec<String>,
    pub answer: bool,
}

impl RecordingUi {
    /// Every event as the CLI would print it.
    pub fn text(&self) -> String {
        self.events.iter().map(|e| format!("{e}\n")).collect()
    }
}

impl Ui for RecordingUi {
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
    fn confirm(&mut self, question: &str) -> bool {
        self.questions.push(question.to_owned());
        self.answer
    }
}

/// How the test's Flux behaves.
#[derive(Debug, Clone)]
pub struct FluxScript {
    /// `main@sha1:<commit>`.
    pub revision: String,
    /// The repository, for the child Kustomizations kustomize-controller would create.
    pub repo: PathBuf,
    /// Kustomizations that stay `Ready=False` with this message.
    pub not_ready: Vec<(String, String)>,
    /// SealedSecrets (namespace, name, synced, message) the sealed-secrets controller reports.
    pub sealed_secrets: Vec<(String, String, bool, String)>,
    /// Files (relative to the repository) holding the Kustomizations the root applies.
    pub children: Vec<String>,
    /// Every Kustomization kustomize-controller ends up creating, `(namespace, name)`, the
    /// root included: those not in `children` (nested ones, in layers' own directories) are
    /// made minimal.
    pub layers: Vec<(String, String)>,
    /// Play the Flux Operator: once FluxInstance flux-system/flux exists, make the sync
    /// GitRepository and Kustomization (as the operator does from `spec.sync`) and report
    /// the instance Ready — unless this is false, then it stays not ready.
    pub operator: Option<bool>,
}

impl FluxScript {
    pub fn healthy(repo: &Path, commit: &str) -> Self {
        FluxScript {
            revision: format!("main@sha1:{commit}"),
            repo: repo.to_owned(),
            not_ready: Vec::new(),
            sealed_secrets: vec![("flux-system".into(), "cluster-secret-vars".into(), true, String::new())],
            children: ["infrastructure.yaml", "apps.yaml", "monitoring.yaml"]
                .iter()
                .map(|f| format!("clusters/kyrion/{f}"))
                .collect(),
            layers: layers(&[
                "flux-system/flux-system",
                "flux-system/infra-controllers",
                "flux-system/infra-configs",
                "flux-system/apps",
                "flux-system/monitoring-controllers",
                "flux-system/monitoring-configs",
                // Nested: infrastructure/controllers/system-upgrade.yaml,
                // apps/base/n8n/release.yaml, apps/base/openclaw/openclaw-install.yaml.
                "flux-system/system-upgrade",
                "n8n/n8n",
                "ai/openclaw",
            ]),
            operator: None,
        }
    }

    /// The same for a Flux Operator repository (`common::today`): revisions of a
    /// `ref.name` sync, the today layout's layers, the operator played.
    pub fn operator(repo: &Path, commit: &str) -> Self {
        FluxScript {
            revision: format!("refs/heads/main@sha1:{commit}"),
            children: vec!["clusters/kyrion/infrastructure.yaml".into(), "clusters/kyrion/apps.yaml".into()],
            layers: layers(&[
                "flux-system/flux-system",
                "flux-system/infra-controllers",
                "flux-system/infra-configs",
                "flux-system/apps",
            ]),
            operator: Some(true),
            ..FluxScript::healthy(repo, commit)
        }
    }
}

pub const FLUX_INSTANCE: &str = "fluxcd.controlplane.io/v1";

fn layers(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| {
            let (ns, name) = n.split_once('/').expect("ns/name");
            (ns.to_owned(), name.to_owned())
        })
        .collect()
}

/// A running test Flux; stops when dropped.
#[derive(Debug)]
pub struct Flux {
    stop: Arc<AtomicBool>,
}

impl Drop for Flux {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Plays Flux against `server` until the returned handle is dropped.
pub fn play_flux(server: Arc<ApiServer>, script: FluxScript) -> Flux {
    let stop = Arc::new(AtomicBool::new(false));
    let running = stop.clone();
    tokio::spawn(async move {
        let mut done: Vec<String> = Vec::new();
        while !running.load(Ordering::SeqCst) {
            step(&server, &script, &mut done);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Flux { stop }
}

fn ks(ns: &str, name: &str) -> ObjectRef {
    ObjectRef::namespaced(KUSTOMIZATION, "Kustomization", ns, name)
}

/// The Kustomizations the root one applies.
fn child_kustomizations(repo: &Path, files: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(repo.join(f)).expect("read");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("yaml");
            if v["kind"] == "Kustomization" && v["apiVersion"] == KUSTOMIZATION {
                out.push(v);
            }
        }
    }
    out
}

fn step(server: &ApiServer, s: &FluxScript, done: &mut Vec<String>) {
    let once = |done: &mut Vec<String>, what: &str| {
        if done.iter().any(|d| d == what) {
            false
        } else {
            done.push(what.to_owned());
            true
        }
    };
    // The Flux Operator.
    let instance = ObjectRef::namespaced(FLUX_INSTANCE, "FluxInstance", "flux-system", "flux");
    if let Some(ready) = s.operator
        && server.get(&instance).is_some()
        && once(done, "operator")
    {
        if ready {
            // The distribution it installs: Flux's CRDs, the ones used here.
            for (group, kind, plural, version) in [
                ("source.toolkit.fluxcd.io", "GitRepository", "gitrepositories", "v1"),
                ("kustomize.toolkit.fluxcd.io", "Kustomization", "kustomizations", "v1"),
                ("helm.toolkit.fluxcd.io", "HelmRelease", "helmreleases", "v2"),
            ] {
                let mut c = crd(group, kind, plural, true);
                c["spec"]["versions"][0]["name"] = json!(version);
                server.put(c).expect("Flux CRD");
                server.establish(&format!("{plural}.{group}"));
            }
            let fi = server.get(&instance).expect("instance");
            let sync = &fi["spec"]["sync"];
            let name = sync["name"].as_str().unwrap_or("flux-system");
            server
                .put(json!({"apiVersion": GIT_REPOSITORY, "kind": "GitRepository",
                    "metadata": {"name": name, "namespace": "flux-system"},
                    "spec": {"interval": "1m", "url": sync["url"], "ref": {"name": sync["ref"]},
                        "secretRef": {"name": sync["pullSecret"]}}}))
                .expect("GitRepository");
            server
                .put(json!({"apiVersion": KUSTOMIZATION, "kind": "Kustomization",
                    "metadata": {"name": name, "namespace": "flux-system"},
                    "spec": {"interval": "10m", "path": sync["path"], "prune": true,
                        "sourceRef": {"kind": "GitRepository", "name": name}}}))
                .expect("Kustomization");
            server
                .set_condition(
                    &instance,
                    &Condition::new("Ready", true, "ReconciliationSucceeded", "Reconciliation finished"),
                )
                .expect("instance status");
        } else {
            server
                .set_condition(
                    &instance,
                    &Condition::new("Ready", false, "ArtifactFailed", "pulling the distribution failed"),
                )
                .expect("instance status");
        }
    }
    // source-controller
    let gr = ObjectRef::namespaced(GIT_REPOSITORY, "GitRepository", "flux-system", "flux-system");
    if server.get(&gr).is_some() && once(done, "gitrepository") {
        server
            .update_status(&gr, |st| st["artifact"] = json!({"revision": s.revision, "path": "x.tar.gz"}))
            .expect("status");
        let msg = format!("stored artifact for revision '{}'", s.revision);
        server.set_condition(&gr, &Condition::new("Ready", true, "Succeeded", &msg)).expect("condition");
    }
    // kustomize-controller: the root applies the children, each reports.
    if server.get(&ks("flux-system", "flux-system")).is_some()
        && done.iter().any(|d| d == "gitrepository")
        && once(done, "root")
    {
        for child in child_kustomizations(&s.repo, &s.children) {
            server.put(child).expect("child Kustomization");
        }
        for (ns, name) in &s.layers {
            if server.get(&ks(ns, name)).is_none() {
                server
                    .put(json!({"apiVersion": KUSTOMIZATION, "kind": "Kustomization",
                        "metadata": {"name": name, "namespace": ns},
                        "spec": {"interval": "1h", "path": "./", "prune": true,
                            "sourceRef": {"kind": "GitRepository", "name": "flux-system", "namespace": "flux-system"}}}))
                    .expect("nested Kustomization");
            }
        }
        // What the children's manifests bring that matters here: a HelmRelease and the
        // SealedSecret kind (the chart's CRD), with the SealedSecrets.
        server
            .put(json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
                "metadata": {"name": "sealed-secrets", "namespace": "flux-system"},
                "spec": {"chart": {"spec": {"chart": "sealed-secrets"}}, "releaseName": "sealed-secrets-controller"}}))
            .expect("HelmRelease");
        let mut sealed = crd("bitnami.com", "SealedSecret", "sealedsecrets", true);
        sealed["spec"]["versions"][0]["name"] = json!("v1alpha1");
        server.put(sealed).expect("SealedSecret CRD");
        server.establish("sealedsecrets.bitnami.com");
        for (ns, name, _, _) in &s.sealed_secrets {
            server
                .put(json!({"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
                    "metadata": {"name": name, "namespace": ns}, "spec": {"encryptedData": {}}}))
                .expect("SealedSecret");
        }
    }
    for (ns, name) in &s.layers {
        let r = ks(ns, name);
        if server.get(&r).is_none()
            || !done.iter().any(|d| d == "root")
            || !once(done, &format!("ks/{ns}/{name}"))
        {
            continue;
        }
        let failing = s.not_ready.iter().find(|(n, _)| n == name);
        let rev = s.revision.clone();
        server
            .update_status(&r, |st| {
                st["lastAttemptedRevision"] = json!(rev);
                if failing.is_none() {
                    st["lastAppliedRevision"] = json!(rev);
                }
            })
            .expect("status");
        let c = match failing {
            Some((_, message)) => Condition::new("Ready", false, "BuildFailed", message),
            None => {
                Condition::new("Ready", true, "ReconciliationSucceeded", &format!("Applied revision: {rev}"))
            }
        };
        server.set_condition(&r, &c).expect("condition");
    }
    // helm-controller and the sealed-secrets controller, once the children are there.
    if done.iter().any(|d| d == "root") && once(done, "helm+sealed") {
        let hr = ObjectRef::namespaced(
            "helm.toolkit.fluxcd.io/v2",
            "HelmRelease",
            "flux-system",
            "sealed-secrets",
        );
        server
            .set_condition(&hr, &Condition::new("Ready", true, "InstallSucceeded", "Helm install succeeded"))
            .expect("HelmRelease status");
        for (ns, name, synced, message) in &s.sealed_secrets {
            let r = ObjectRef::namespaced("bitnami.com/v1alpha1", "SealedSecret", ns, name);
            server
                .set_condition(&r, &Condition::new("Synced", *synced, "", message))
                .expect("SealedSecret status");
        }
    }
}
