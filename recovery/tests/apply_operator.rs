//! The apply phase for a repository the Flux Operator bootstraps (`common::today`), against
//! the kube-apiserver stand-in, with the test playing the operator and Flux: the operator's
//! release manifest and the FluxInstance applied with Helm's adoption metadata, the
//! instance followed to Ready, then the chain; a run stopped half-way goes on without
//! applying anything twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{self, FLUX_INSTANCE, FluxScript, RecordingUi, play_flux};
use common::today;
use common::*;
use elysium_recovery::apply::{self, ApplyError};
use elysium_recovery::{ApplyReport, Event};
use kube_apiserver_standin::{ApiServer, Mutation, ObjectRef, Verb};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A Flux Operator release manifest shaped like upstream's install.yaml (the namespace,
/// the FluxInstance CRD, RBAC, the ServiceAccount and the Deployment), made here: the
/// real one is only on GitHub.
fn operator_manifest() -> String {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "fluxinstances.fluxcd.controlplane.io"},
        "spec": {
            "group": "fluxcd.controlplane.io",
            "names": {"kind": "FluxInstance", "plural": "fluxinstances", "singular": "fluxinstance", "listKind": "FluxInstanceList"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}}],
        },
    });
    let docs = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
        crd,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "flux-operator", "namespace": "flux-system"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "flux-operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "flux-operator", "namespace": "flux-system"}]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "flux-operator", "namespace": "flux-system"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "flux-operator"}},
                "template": {"metadata": {"labels": {"app.kubernetes.io/name": "flux-operator"}},
                    "spec": {"serviceAccountName": "flux-operator",
                        "containers": [{"name": "manager", "image": "ghcr.io/controlplaneio-fluxcd/flux-operator:v0.57.0"}]}}}}),
    ];
    docs.iter().map(|d| serde_yaml_ng::to_string(d).expect("yaml")).collect::<Vec<_>>().join("---\n")
}

struct Setup {
    work: tempfile::TempDir,
    repo: tempfile::TempDir,
    sha: String,
    server: Arc<ApiServer>,
    kubeconfig: std::path::PathBuf,
    keys_file: std::path::PathBuf,
    manifest: std::path::PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let (a, b) = keys();
        let (repo, sha) = today::repo(a, b);
        let work = tempfile::tempdir().expect("tempdir");
        let (server, kubeconfig) = cluster::start(work.path(), Duration::from_millis(100)).await;
        let keys_file = write_keys_file(
            work.path(),
            &keys_list(&[
                KeySecret::active("sealed-secrets-keynew01", a),
                KeySecret::active("sealed-secrets-keyold24", b),
            ]),
        );
        let manifest = work.path().join("install.yaml");
        std::fs::write(&manifest, operator_manifest()).expect("write manifest");
        Setup { work, repo, sha, server, kubeconfig, keys_file, manifest }
    }

    fn options(&self, timeout: Duration) -> elysium_recovery::ApplyOptions {
        let mut o = cluster::apply_options(&self.kubeconfig, &self.work.path().join("state.json"), timeout);
        o.flux_operator_manifest = Some(self.manifest.display().to_string());
        o
    }

    async fn run(
        &self,
        opts: &elysium_recovery::ApplyOptions,
        ui: &mut RecordingUi,
    ) -> Result<ApplyReport, ApplyError> {
        let popts = options(self.repo.path(), &self.keys_file);
        let p = tokio::task::spawn_blocking(move || preflight(&popts)).await.expect("preflight thread");
        apply::run(&p, opts, ui).await
    }

    fn flux(&self) -> FluxScript {
        FluxScript::operator(self.repo.path(), &self.sha)
    }
}

fn applies(ms: &[Mutation]) -> Vec<String> {
    ms.iter()
        .filter(|m| m.verb == Verb::Apply)
        .map(|m| {
            format!(
                "{} {}/{}",
                m.kind,
                m.namespace.as_deref().unwrap_or("-"),
                m.name.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

fn helm_meta(obj: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        obj["metadata"]["labels"]["app.kubernetes.io/managed-by"].as_str(),
        obj["metadata"]["annotations"]["meta.helm.sh/release-name"].as_str(),
        obj["metadata"]["annotations"]["meta.helm.sh/release-namespace"].as_str(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_instance_are_applied_for_helm_to_adopt_and_followed_to_healthy() {
    let s = Setup::new().await;
    let _flux = play_flux(s.server.clone(), s.flux());
    let mut ui = RecordingUi::default();
    let report = s.run(&s.options(TIMEOUT), &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    let text = format!("{}{report}", ui.text());
    assert!(report.healthy, "{text}");

    let ms = s.server.mutations();
    let order = applies(&ms);
    let pos = |what: &str| {
        order.iter().position(|a| a == what).unwrap_or_else(|| panic!("{what} not applied: {order:#?}"))
    };
    // Keys before any controller, the operator before its instance, the deploy key before
    // the sync that reads it.
    assert!(
        pos("Secret flux-system/sealed-secrets-keyold24")
            < pos("CustomResourceDefinition -/fluxinstances.fluxcd.controlplane.io")
    );
    assert!(pos("Deployment flux-system/flux-operator") < pos("FluxInstance flux-system/flux"));
    assert!(pos("Secret flux-system/flux-system") < pos("FluxInstance flux-system/flux"));
    assert_eq!(order.last().map(String::as_str), Some("FluxInstance flux-system/flux"), "{order:#?}");

    // Helm's adoption metadata: the operator's objects are the flux-operator release's,
    // the instance the flux-instance release's; the namespace is nobody's.
    let get = |api: &str, kind: &str, ns: Option<&str>, name: &str| {
        let r = match ns {
            Some(ns) => ObjectRef::namespaced(api, kind, ns, name),
            None => ObjectRef::cluster(api, kind, name),
        };
        s.server.get(&r).unwrap_or_else(|| panic!("{kind} {name} missing"))
    };
    let deployment = get("apps/v1", "Deployment", Some("flux-system"), "flux-operator");
    assert_eq!(helm_meta(&deployment), (Some("Helm"), Some("flux-operator"), Some("flux-system")));
    let crd = get(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "fluxinstances.fluxcd.controlplane.io",
    );
    assert_eq!(helm_meta(&crd), (Some("Helm"), Some("flux-operator"), Some("flux-system")));
    let ns = get("v1", "Namespace", None, "flux-system");
    assert_eq!(helm_meta(&ns), (None, None, None));
    let instance = get(FLUX_INSTANCE, "FluxInstance", Some("flux-system"), "flux");
    assert_eq!(helm_meta(&instance), (Some("Helm"), Some("flux-instance"), Some("flux-system")));
    assert_eq!(instance["spec"]["sync"]["url"], today::SYNC_URL);
    assert_eq!(instance["spec"]["distribution"]["version"], "2.7.x");

    // Followed: the instance to Ready, then the source at the ref.name revision, then the
    // layers of the today layout.
    assert!(
        ui.events.iter().any(|e| matches!(e, Event::Status { what, readiness } if what == "FluxInstance flux-system/flux" && readiness.is_ready())),
        "{text}"
    );
    let flux = report.flux.as_ref().expect("followed");
    let source = flux.sources.first().expect("source");
    assert!(
        matches!(&source.readiness, elysium_recovery::follow::Readiness::Ready { revision: Some(r) } if *r == format!("refs/heads/main@sha1:{}", s.sha)),
        "{text}"
    );
    let names: Vec<&str> = flux.kustomizations.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "flux-system/flux-system",
            "flux-system/infra-controllers",
            "flux-system/infra-configs",
            "flux-system/apps"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_is_not_ready_stops_the_run_and_the_next_run_applies_nothing_twice() {
    let s = Setup::new().await;
    // First run: the operator cannot pull the distribution; the instance stays not ready.
    let broken = FluxScript { operator: Some(false), ..s.flux() };
    let flux = play_flux(s.server.clone(), broken);
    let mut ui = RecordingUi::default();
    let e = s.run(&s.options(Duration::from_secs(3)), &mut ui).await.expect_err("instance never ready");
    assert!(matches!(e, ApplyError::InstanceNotReady { .. }), "{}", chain(&e));
    let msg = chain(&e);
    assert!(msg.contains("flux-system/flux") && msg.contains("pulling the distribution failed"), "{msg}");
    drop(flux);
    let first: Vec<String> = applies(&s.server.mutations());
    assert!(first.iter().any(|a| a == "FluxInstance flux-system/flux"), "{first:#?}");

    // Second run, the operator healthy now: nothing of the first run is sent again.
    s.server.clear_logs();
    let _flux = play_flux(s.server.clone(), s.flux());
    let mut ui = RecordingUi::default();
    let report = s.run(&s.options(TIMEOUT), &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(report.healthy, "{}{report}", ui.text());
    let second = applies(&s.server.mutations());
    assert!(second.is_empty(), "applied again: {second:#?}");
    // Everything the first run applied is skipped; the deploy key is reported on its own.
    assert_eq!(report.already_applied.len() + 1, first.len(), "{report}");
    assert_eq!(report.deploy_key.as_ref().map(|d| d.origin.as_str()), Some("generated by an earlier run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_manifest_or_a_pinned_version_nothing_is_applied() {
    let s = Setup::new().await;
    // The operator's HelmRelease no longer pins a chart version.
    let repo_file = s.repo.path().join("infrastructure/controllers/flux-operator/repository.yaml");
    let text = std::fs::read_to_string(&repo_file).unwrap();
    let unpinned: String = text
        .lines()
        .filter(|l| !l.contains("tag:") && !l.contains("digest:") && !l.trim().starts_with("ref:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&repo_file, unpinned).unwrap();
    commit_all(s.repo.path(), "unpinned");
    let mut opts = s.options(TIMEOUT);
    opts.flux_operator_manifest = None;
    let mut ui = RecordingUi::default();
    let e = s.run(&opts, &mut ui).await.expect_err("no manifest");
    assert!(matches!(e, ApplyError::OperatorVersionUnknown), "{}", chain(&e));
    assert!(chain(&e).contains("--flux-operator-manifest"), "{}", chain(&e));
    assert!(s.server.mutations().is_empty(), "{:#?}", s.server.mutations());

    // A file that is not the operator's manifest is refused, also before any write.
    std::fs::write(&s.manifest, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: y}\n")
        .unwrap();
    let e = s.run(&s.options(TIMEOUT), &mut ui).await.expect_err("not the operator");
    assert!(matches!(e, ApplyError::OperatorManifest { .. }), "{}", chain(&e));
    assert!(s.server.mutations().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_too_old_for_the_instances_flux_is_refused_before_any_write() {
    let (a, b) = keys();
    let (repo, _) = today::repo(a, b);
    let work = tempfile::tempdir().expect("tempdir");
    // The instance asks for Flux 2.7.x, which needs Kubernetes 1.32.
    let standin =
        kube_apiserver_standin::Options { git_version: "v1.31.4+k3s1".into(), ..cluster::standin_options() };
    let (server, kubeconfig) = cluster::start_with(work.path(), standin).await;
    let keys_file = write_keys_file(
        work.path(),
        &keys_list(&[
            KeySecret::active("sealed-secrets-keynew01", a),
            KeySecret::active("sealed-secrets-keyold24", b),
        ]),
    );
    let manifest = work.path().join("install.yaml");
    std::fs::write(&manifest, operator_manifest()).expect("write manifest");
    let mut opts = cluster::apply_options(&kubeconfig, &work.path().join("state.json"), TIMEOUT);
    opts.flux_operator_manifest = Some(manifest.display().to_string());
    let popts = options(repo.path(), &keys_file);
    let p = tokio::task::spawn_blocking(move || preflight(&popts)).await.expect("preflight thread");
    let mut ui = RecordingUi::default();
    let e = apply::run(&p, &opts, &mut ui).await.expect_err("too old");
    let msg = chain(&e);
    assert!(
        matches!(e, ApplyError::Refused(elysium_recovery::validate::ValidateError::ServerTooOld { .. })),
        "{msg}"
    );
    assert!(msg.contains("v1.31.4+k3s1") && msg.contains("2.7.x"), "{msg}");
    assert!(server.mutations().is_empty(), "{:#?}", server.mutations());

    // --skip-version-check: the operator's objects are dry-run and accepted, so it goes on
    // (and stops later only because nothing plays the operator here).
    opts.skip_version_check = true;
    opts.timeout = Duration::from_secs(2);
    let mut ui = RecordingUi::default();
    let e = apply::run(&p, &opts, &mut ui).await.expect_err("no operator runs");
    assert!(matches!(e, ApplyError::InstanceNotReady { .. }), "{}", chain(&e));
    assert!(ui.text().contains("--skip-version-check"), "{}", ui.text());
    assert!(!server.mutations().is_empty());
}
