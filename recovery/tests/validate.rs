//! The checks against the target cluster before the apply's first write
//! (recovery/src/validate.rs), against the kube-apiserver stand-in made to answer like an
//! older or stricter server: a version too old for the repository's Flux (v2.9.3 in the
//! snapshot), a CRD or a Secret it refuses as invalid. Each refusal must leave the
//! cluster and the ledger exactly as they were: not even the namespace or the keys.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{self, FluxScript, RecordingUi, play_flux};
use common::*;
use elysium_recovery::apply::{self, ApplyError};
use elysium_recovery::validate::ValidateError;
use elysium_recovery::{ApplyReport, Event};
use kube_apiserver_standin::{ApiServer, ObjectRef, Options, ValidationRule, Verb};
use serde_json::json;

/// Generous: two cores shared with other builds.
const TIMEOUT: Duration = Duration::from_secs(60);
const REFUSED_CRD: &str = "helmreleases.helm.toolkit.fluxcd.io";

struct Setup {
    work: tempfile::TempDir,
    repo: tempfile::TempDir,
    sha: String,
    server: Arc<ApiServer>,
    kubeconfig: std::path::PathBuf,
    keys_file: std::path::PathBuf,
}

impl Setup {
    async fn new(options: Options) -> Setup {
        let (a, b) = keys();
        let (repo, sha) = cluster::repo(a);
        let work = tempfile::tempdir().expect("tempdir");
        let (server, kubeconfig) = cluster::start_with(work.path(), options).await;
        let keys_file = write_keys_file(
            work.path(),
            &keys_list(&[
                KeySecret::active("sealed-secrets-keya1b2c", a),
                KeySecret::active("sealed-secrets-keyolder", b),
            ]),
        );
        Setup { work, repo, sha, server, kubeconfig, keys_file }
    }

    fn state(&self) -> std::path::PathBuf {
        self.work.path().join("state/recover-state.json")
    }

    async fn run(&self, dry_run: bool, ui: &mut RecordingUi) -> Result<ApplyReport, ApplyError> {
        let popts = options(self.repo.path(), &self.keys_file);
        let p = tokio::task::spawn_blocking(move || preflight(&popts)).await.expect("preflight thread");
        let mut opts = cluster::apply_options(&self.kubeconfig, &self.state(), TIMEOUT);
        opts.dry_run = dry_run;
        apply::run(&p, &opts, ui).await
    }

    /// Nothing was written: no mutation at all, every mutating request a dry run, no
    /// namespace, no Secret, no state file.
    fn untouched(&self) {
        assert_eq!(self.server.mutations(), [], "the mutation log holds writes");
        let writes: Vec<String> = self
            .server
            .requests()
            .into_iter()
            .filter(|r| r.verb.is_some_and(Verb::is_mutating) && !r.query.contains("dryRun=All"))
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect();
        assert!(writes.is_empty(), "{writes:#?}");
        assert!(self.server.get(&ObjectRef::cluster("v1", "Namespace", "flux-system")).is_none());
        assert!(self.server.list("v1", "Secret", None).is_empty());
        assert!(!self.state().exists(), "the ledger was written");
    }
}

fn no_secrets_in(text: &str) {
    let (a, b) = keys();
    assert_no_key_material(text, &a.key_pem);
    assert_no_key_material(text, &b.key_pem);
}

#[test]
fn the_bootstrap_says_its_flux_version() {
    let (a, _) = keys();
    let (repo, _) = cluster::repo(a);
    let work = tempfile::tempdir().expect("tempdir");
    let keys_file =
        write_keys_file(work.path(), &keys_list(&[KeySecret::active("sealed-secrets-keya1b2c", a)]));
    let p = preflight(&options(repo.path(), &keys_file));
    assert_eq!(p.bootstrap.flux_version.as_deref(), Some("v2.9.3"));
    let needs = elysium_recovery::compat::min_kubernetes("v2.9.3").expect("known");
    let k3s = elysium_recovery::compat::KubeVersion::parse(cluster::K3S_VERSION).expect("version");
    assert!(k3s >= needs, "the tests' K3s {k3s} must be new enough for the snapshot's Flux ({needs})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_too_old_for_the_repositorys_flux_is_refused_before_anything_is_written() {
    let s = Setup::new(Options { git_version: "v1.28.5+k3s1".into(), ..cluster::standin_options() }).await;
    for dry_run in [false, true] {
        let mut ui = RecordingUi::default();
        let err = s.run(dry_run, &mut ui).await.expect_err("too old");
        let msg = chain(&err);
        match &err {
            ApplyError::Refused(ValidateError::ServerTooOld { server_version, needs, flux, .. }) => {
                assert_eq!((server_version.as_str(), flux.as_str()), ("v1.28.5+k3s1", "v2.9.3"), "{msg}");
                assert_eq!(needs.to_string(), "1.33", "{msg}");
            }
            other => panic!("expected ServerTooOld, got {other:?}: {msg}"),
        }
        assert!(
            msg.contains("runs Kubernetes v1.28.5+k3s1, and Flux v2.9.3 needs Kubernetes 1.33 or newer"),
            "{msg}"
        );
        assert!(
            msg.contains("nothing was applied") && msg.contains("K3s release of Kubernetes 1.33"),
            "{msg}"
        );
        assert!(!ui.events.iter().any(|e| matches!(e, Event::Applied { .. } | Event::Validated { .. })));
        // Not even a dry run was sent: the version alone decides.
        assert_eq!(s.server.request_count(Verb::Apply), 0);
        s.untouched();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_the_server_refuses_in_a_dry_run_stops_the_run_with_nothing_written() {
    let reason = "Forbidden: selectableFields is not supported by this server";
    let rule = ValidationRule::refuse(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "spec.selectableFields",
        reason,
    )
    .named(REFUSED_CRD);
    let s = Setup::new(Options { validation_rules: vec![rule], ..cluster::standin_options() }).await;
    for dry_run in [false, true] {
        let mut ui = RecordingUi::default();
        let err = s.run(dry_run, &mut ui).await.expect_err("refused");
        let msg = chain(&err);
        let ApplyError::Refused(ValidateError::Rejected { id, origin, reason: said, .. }) = &err else {
            panic!("expected Rejected, got {err:?}: {msg}")
        };
        assert_eq!((id.kind.as_str(), id.name.as_str()), ("CustomResourceDefinition", REFUSED_CRD), "{msg}");
        assert!(origin.starts_with("clusters/kyrion/flux-system/gotk-components.yaml#"), "{msg}");
        assert_eq!(
            said,
            &format!(
                "CustomResourceDefinition.apiextensions.k8s.io \"{REFUSED_CRD}\" is invalid: spec.selectableFields: {reason}"
            )
        );
        assert!(msg.contains(&format!("refuses CustomResourceDefinition {REFUSED_CRD}")), "{msg}");
        assert!(msg.contains(cluster::K3S_VERSION) && msg.contains("nothing was applied"), "{msg}");
        assert!(msg.contains("upgrade K3s") && msg.contains("fix the manifest"), "{msg}");
        s.untouched();
        // The CRD was asked about in a dry run, like the CRDs before it.
        assert!(
            s.server
                .requests()
                .iter()
                .any(|r| r.path.ends_with(REFUSED_CRD) && r.query.contains("dryRun=All"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_is_named_without_its_values() {
    let (a, _) = keys();
    // A webhook that quotes what it refuses: its message must not reach the operator.
    let quoted = format!("Invalid value: {:?}", b64(a.key_pem.as_bytes()));
    let rule =
        ValidationRule::refuse("", "Secret", "data[tls.key]", &quoted).named("sealed-secrets-keya1b2c");
    let s = Setup::new(Options { validation_rules: vec![rule], ..cluster::standin_options() }).await;
    // The controller's namespace exists, so the key Secrets can be judged.
    s.server
        .put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}))
        .expect("ns");
    let mut ui = RecordingUi::default();
    let err = s.run(false, &mut ui).await.expect_err("refused");
    let msg = format!("{}{:?}{}", chain(&err), err, ui.text());
    let ApplyError::Refused(ValidateError::Rejected { id, reason, .. }) = &err else {
        panic!("expected Rejected, got {err:?}")
    };
    assert_eq!(id.name, "sealed-secrets-keya1b2c");
    assert!(reason.starts_with("Invalid (HTTP 422) on data[tls.key]"), "{reason}");
    no_secrets_in(&msg);
    assert_eq!(s.server.mutations(), []);
    assert!(s.server.list("v1", "Secret", None).is_empty());
    assert!(!s.state().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_recovery_validates_first_then_writes() {
    let s = Setup::new(cluster::standin_options()).await;
    let _flux = play_flux(s.server.clone(), FluxScript::healthy(s.repo.path(), &s.sha));
    let mut ui = RecordingUi::default();
    let report = s.run(false, &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    let text = format!("{}{report}", ui.text());
    assert!(report.healthy, "{text}");

    let (checked, skipped) = ui
        .events
        .iter()
        .find_map(|e| match e {
            Event::Validated { checked, skipped } => Some((*checked, *skipped)),
            _ => None,
        })
        .expect("validated");
    let validated_at = ui.events.iter().position(|e| matches!(e, Event::Validated { .. })).expect("event");
    let first_applied = ui.events.iter().position(|e| matches!(e, Event::Applied { .. })).expect("applied");
    assert!(validated_at < first_applied, "{text}");
    // A fresh cluster: the Namespace and the 14 CRDs (and the stand-in's emulated
    // cluster-scoped RBAC kinds) can be judged; what lives in flux-system or is of a Flux
    // kind cannot yet.
    assert!(checked >= 15 && skipped > 0, "checked {checked}, skipped {skipped}");
    assert_eq!(checked + skipped, report.applied.len(), "every object is checked or counted: {text}");
    assert!(text.contains("cannot be checked before the plan creates their CRD or namespace"), "{text}");
    assert!(text.contains("meets Flux v2.9.3's minimum, 1.33"), "{text}");

    // On the wire: the dry runs, CRDs first, all before the first write.
    let mutating: Vec<_> =
        s.server.requests().into_iter().filter(|r| r.verb.is_some_and(Verb::is_mutating)).collect();
    let first_write = mutating.iter().position(|r| !r.query.contains("dryRun=All")).expect("writes");
    assert_eq!(first_write, checked, "{mutating:#?}");
    assert!(mutating[..14].iter().all(|r| r.path.contains("customresourcedefinitions")), "{mutating:#?}");
    // Dry runs are not writes: the mutation log starts with the Namespace.
    let ms = s.server.mutations();
    assert_eq!((ms[0].kind.as_str(), ms[0].name.as_deref()), ("Namespace", Some("flux-system")));
    assert_eq!(ms.iter().filter(|m| m.kind == "CustomResourceDefinition").count(), 14);
    no_secrets_in(&text);
}
