//! The apply phase against the kube-apiserver stand-in, through the real `kube` client and
//! a kubeconfig file, with the real Elysium repository (74291b2) as a local Git repository
//! resealed with test keys, and the test playing Flux.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{self, FluxScript, RecordingUi, play_flux};
use common::*;
use elysium_recovery::apply::{self, ApplyError};
use elysium_recovery::cluster::ClusterError;
use elysium_recovery::follow::Readiness;
use elysium_recovery::{ApplyReport, Event};
use kube_apiserver_standin::{ApiServer, Failure, Mutation, ObjectRef, Verb};
use serde_json::{Value, json};

const KEY_LABEL: &str = "sealedsecrets.bitnami.com/sealed-secrets-key";
/// Generous: two cores shared with other builds.
const TIMEOUT: Duration = Duration::from_secs(60);

struct Setup {
    work: tempfile::TempDir,
    repo: tempfile::TempDir,
    sha: String,
    server: Arc<ApiServer>,
    kubeconfig: std::path::PathBuf,
    keys_file: std::path::PathBuf,
}

impl Setup {
    async fn new(establish_delay: Duration) -> Setup {
        let (a, b) = keys();
        let (repo, sha) = cluster::repo(a);
        let work = tempfile::tempdir().expect("tempdir");
        let (server, kubeconfig) = cluster::start(work.path(), establish_delay).await;
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

    fn options(&self, timeout: Duration) -> elysium_recovery::ApplyOptions {
        cluster::apply_options(&self.kubeconfig, &self.state(), timeout)
    }

    /// A fresh preflight (each run of `recover` makes its own) and the apply.
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
        FluxScript::healthy(self.repo.path(), &self.sha)
    }
}

/// `Verb Kind ns/name` for every mutation.
fn log(ms: &[Mutation]) -> Vec<String> {
    ms.iter()
        .map(|m| {
            format!(
                "{:?} {} {}/{}",
                m.verb,
                m.kind,
                m.namespace.as_deref().unwrap_or("-"),
                m.name.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

/// Kinds of the applies in order, runs of the same kind folded into one.
fn kind_runs(ms: &[Mutation]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in ms.iter().filter(|m| m.verb == Verb::Apply) {
        let k = if m.kind == "Secret" {
            format!("Secret {}", if m.name.as_deref() == Some("flux-system") { "deploy-key" } else { "keys" })
        } else {
            m.kind.clone()
        };
        if out.last() != Some(&k) {
            out.push(k);
        }
    }
    out
}

fn no_secrets_in(text: &str) {
    let (a, b) = keys();
    assert_no_key_material(text, &a.key_pem);
    assert_no_key_material(text, &b.key_pem);
}

fn secret(server: &ApiServer, ns: &str, name: &str) -> Value {
    server
        .get(&ObjectRef::namespaced("v1", "Secret", ns, name))
        .unwrap_or_else(|| panic!("Secret {ns}/{name} missing"))
}

fn b64decode(v: &Value) -> String {
    use base64::Engine as _;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("base64 string")).expect("base64");
    String::from_utf8(bytes).expect("utf8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_in_the_order_that_cannot_strand_the_cluster_and_follows_flux_to_healthy() {
    // CRDs take a moment to be Established, as on a real API server.
    let s = Setup::new(Duration::from_millis(300)).await;
    // A sealed-secrets controller already running: it must be restarted after the keys.
    s.server
        .put(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "sealed-secrets-controller", "namespace": "flux-system"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "sealed-secrets"}},
                "template": {"metadata": {"labels": {"app.kubernetes.io/name": "sealed-secrets"}}, "spec": {"containers": []}}}}))
        .expect("controller");
    let _flux = play_flux(s.server.clone(), s.flux());
    let mut ui = RecordingUi::default();
    let report = s.run(&s.options(TIMEOUT), &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    let text = format!("{}{report}", ui.text());
    assert!(report.healthy, "{text}");

    // The order, from the API server's own log.
    let ms = s.server.mutations();
    assert_eq!(
        kind_runs(&ms),
        [
            "Namespace",
            "Secret keys",
            "CustomResourceDefinition",
            "NetworkPolicy",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Secret deploy-key",
            "GitRepository",
            "Kustomization",
        ],
        "{:#?}",
        log(&ms)
    );
    let applies: Vec<&Mutation> = ms.iter().filter(|m| m.verb == Verb::Apply).collect();
    assert!(
        applies.iter().all(|m| m.field_manager.as_deref() == Some("elysium-node") && m.code < 300),
        "{:#?}",
        log(&ms)
    );
    assert_eq!(applies.iter().filter(|m| m.kind == "CustomResourceDefinition").count(), 14);
    assert_eq!(applies.iter().filter(|m| m.kind == "Deployment").count(), 6);
    assert_eq!(log(&ms[..1]), ["Apply Namespace -/flux-system"]);
    // The controller's restart comes after the keys and the sync (kubectl's annotation).
    let restart = ms
        .iter()
        .position(|m| m.verb == Verb::Patch && m.name.as_deref() == Some("sealed-secrets-controller"))
        .expect("the running controller is restarted");
    let last_key =
        ms.iter().rposition(|m| m.name.as_deref() == Some("sealed-secrets-keyolder")).expect("key");
    assert!(restart > last_key);
    let controller = s
        .server
        .get(&ObjectRef::namespaced("apps/v1", "Deployment", "flux-system", "sealed-secrets-controller"))
        .expect("controller");
    assert!(
        controller["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    assert!(text.contains("restarted Deployment flux-system/sealed-secrets-controller"), "{text}");

    // The keys: as backed up, active label kept, nothing server-side carried over.
    let (a, _) = keys();
    let k = secret(&s.server, "flux-system", "sealed-secrets-keya1b2c");
    assert_eq!(k["metadata"]["labels"][KEY_LABEL], "active");
    assert_eq!(k["type"], "kubernetes.io/tls");
    assert_eq!(b64decode(&k["data"]["tls.key"]), a.key_pem);
    assert_ne!(
        k["metadata"]["uid"], "5f0c8a3e-0000-4000-8000-000000000000",
        "the backup's uid is not reused"
    );
    assert_ne!(k["metadata"]["resourceVersion"], "1234");
    assert!(k["metadata"].get("generateName").is_none());
    assert_ne!(k["metadata"]["creationTimestamp"], "2024-09-25T22:06:02Z");

    // The deploy key Secret, in Flux's format; its public half reported, never the private.
    let dk = secret(&s.server, "flux-system", "flux-system");
    let identity = b64decode(&dk["data"]["identity"]);
    let public = b64decode(&dk["data"]["identity.pub"]);
    assert!(identity.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert!(public.starts_with("ecdsa-sha2-nistp384 "));
    assert!(b64decode(&dk["data"]["known_hosts"]).starts_with("github.com ssh-ed25519 "));
    let dk_report = report.deploy_key.as_ref().expect("deploy key reported");
    assert_eq!((dk_report.public.as_str(), dk_report.origin.as_str()), (public.trim(), "generated"));
    assert!(text.contains(public.trim()), "the public key is printed for the Git host: {text}");
    no_secrets_in(&text);
    assert_no_key_material(&text, &identity);

    // Followed to the end, in dependency order, nested layers included.
    let flux = report.flux.as_ref().expect("followed");
    let ks: Vec<&str> = flux.kustomizations.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        ks,
        [
            "flux-system/flux-system",
            "ai/openclaw",
            "flux-system/infra-controllers",
            "flux-system/infra-configs",
            "flux-system/apps",
            "flux-system/monitoring-controllers",
            "flux-system/monitoring-configs",
            "flux-system/system-upgrade",
            "n8n/n8n",
        ]
    );
    let rev = format!("main@sha1:{}", s.sha);
    assert_eq!(flux.sources[0].readiness, Readiness::Ready { revision: Some(rev.clone()) });
    assert!(
        flux.kustomizations.iter().all(|k| k.readiness == Readiness::Ready { revision: Some(rev.clone()) })
    );
    assert_eq!(flux.helm_releases.len(), 1);
    assert_eq!(flux.sealed_secrets.len(), 1);
    assert!(text.contains("Result: HEALTHY"), "{text}");
    assert!(ui.events.iter().any(|e| matches!(e, Event::Established { crds: 14 })));

    // The state file: 0600, names and hashes only.
    let state = std::fs::read_to_string(s.state()).expect("state file");
    assert_eq!(std::fs::metadata(s.state()).expect("stat").permissions().mode() & 0o777, 0o600);
    no_secrets_in(&state);
    assert_no_key_material(&state, &identity);
    assert!(state.contains("v1/Secret/flux-system/sealed-secrets-keya1b2c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kustomization_stuck_not_ready_is_reported_with_its_message() {
    let s = Setup::new(Duration::ZERO).await;
    let mut script = s.flux();
    let message = "kustomize build failed: accumulating resources: 'apps/kyrion/n8n' not found";
    script.not_ready.push(("apps".into(), message.into()));
    let _flux = play_flux(s.server.clone(), script);
    let mut ui = RecordingUi::default();
    let report =
        s.run(&s.options(Duration::from_secs(8)), &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    let text = format!("{}{report}", ui.text());
    assert!(!report.healthy, "{text}");
    let flux = report.flux.as_ref().expect("followed");
    assert!(flux.timed_out);
    let apps = flux.kustomizations.iter().find(|k| k.name == "flux-system/apps").expect("apps");
    assert_eq!(apps.readiness, Readiness::NotReady { reason: "BuildFailed".into(), message: message.into() });
    // Shown as soon as it was seen, not only at the end.
    assert!(
        ui.events.iter().any(
            |e| matches!(e, Event::Status { what, readiness: Readiness::NotReady { .. } } if what == "Kustomization flux-system/apps")
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("Kustomization flux-system/apps: NOT ready (BuildFailed): {message}")),
        "{text}"
    );
    assert!(text.contains("Result: NOT HEALTHY: Flux had not finished in time"), "{text}");
    assert!(report.next_steps.iter().any(|s| s.contains("Kustomization flux-system/apps")), "{text}");
    assert!(report.next_steps.iter().any(|s| s.contains("run the same command again")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_and_applies_nothing_twice() {
    let s = Setup::new(Duration::ZERO).await;
    // The API server fails the first Deployment apply.
    s.server.fail(Failure::on("/apis/apps/v1/namespaces/flux-system/deployments").method("PATCH").times(1));
    let mut ui = RecordingUi::default();
    let err = s.run(&s.options(TIMEOUT), &mut ui).await.expect_err("interrupted");
    let msg = chain(&err);
    assert!(matches!(&err, ApplyError::Apply { id, .. } if id.kind == "Deployment"), "{msg}");
    assert!(
        msg.contains("run the same command again to go on") && msg.contains("recover-state.json"),
        "{msg}"
    );
    let first: Vec<String> = s
        .server
        .mutations()
        .iter()
        .filter(|m| m.verb == Verb::Apply && m.code < 300)
        .map(|m| format!("{} {}", m.kind, m.name.clone().unwrap_or_default()))
        .collect();
    assert!(first.len() > 20, "namespaces, keys, CRDs, RBAC, service accounts: {first:?}");
    assert!(s.server.get(&ObjectRef::namespaced("v1", "Secret", "flux-system", "flux-system")).is_none());

    // Run again: what the first run applied is not applied again, and it finishes.
    s.server.clear_logs();
    let _flux = play_flux(s.server.clone(), s.flux());
    let mut ui = RecordingUi::default();
    let report = s.run(&s.options(TIMEOUT), &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    let text = format!("{}{report}", ui.text());
    assert!(report.healthy, "{text}");
    let second: Vec<String> = s
        .server
        .mutations()
        .iter()
        .filter(|m| m.verb == Verb::Apply)
        .map(|m| format!("{} {}", m.kind, m.name.clone().unwrap_or_default()))
        .collect();
    for done in &first {
        assert!(!second.contains(done), "{done} applied twice; second run: {second:?}");
    }
    assert_eq!(report.already_applied.len(), first.len(), "{text}");
    assert!(second.iter().filter(|m| m.starts_with("Deployment ")).count() == 6, "{second:?}");
    assert!(text.contains("resuming:") && text.contains("skipped (already done)"), "{text}");

    // A third run applies only what was deleted since, keeps the generated deploy key and
    // follows.
    let key_version = secret(&s.server, "flux-system", "flux-system")["metadata"]["resourceVersion"].clone();
    let sa = ObjectRef::namespaced("v1", "ServiceAccount", "flux-system", "helm-controller");
    assert!(s.server.delete(&sa).expect("delete"));
    s.server.clear_logs();
    let mut ui = RecordingUi::default();
    let report = s.run(&s.options(TIMEOUT), &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(report.healthy);
    assert_eq!(report.applied, ["ServiceAccount flux-system/helm-controller"]);
    assert_eq!(log(&s.server.mutations()), ["Apply ServiceAccount flux-system/helm-controller"]);
    assert_eq!(secret(&s.server, "flux-system", "flux-system")["metadata"]["resourceVersion"], key_version);
    assert_eq!(report.deploy_key.as_ref().map(|k| k.origin.as_str()), Some("generated by an earlier run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_a_clear_error_and_nothing_is_applied() {
    let s = Setup::new(Duration::ZERO).await;
    s.server.set_unreachable(true);
    let mut ui = RecordingUi::default();
    let err = s.run(&s.options(TIMEOUT), &mut ui).await.expect_err("unreachable");
    let msg = chain(&err);
    assert!(matches!(err, ApplyError::Cluster(ClusterError::Unreachable { .. })), "{msg}");
    assert!(msg.contains(&s.server.url()) && msg.contains(&s.kubeconfig.display().to_string()), "{msg}");
    assert!(msg.contains("nothing was applied"), "{msg}");
    s.server.set_unreachable(false);
    assert!(s.server.mutations().is_empty());
    assert!(!s.state().exists());

    // A kubeconfig that is not there.
    let mut opts = s.options(TIMEOUT);
    opts.kubeconfig = s.work.path().join("nowhere.yaml");
    let err = s.run(&opts, &mut ui).await.expect_err("no kubeconfig");
    let msg = chain(&err);
    assert!(
        msg.starts_with(&format!("could not load the kubeconfig {}", opts.kubeconfig.display())),
        "{msg}"
    );
    assert!(s.server.mutations().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_plan_and_changes_nothing() {
    let s = Setup::new(Duration::ZERO).await;
    let mut opts = s.options(TIMEOUT);
    opts.dry_run = true;
    let mut ui = RecordingUi::default();
    let report = s.run(&opts, &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    let text = format!("{}{report}", ui.text());
    assert!(report.dry_run && report.flux.is_none(), "{text}");
    // The plan, in order.
    let plan = ui
        .events
        .iter()
        .find_map(|e| match e {
            Event::Plan { text } => Some(text.clone()),
            _ => None,
        })
        .expect("plan");
    let at = |s: &str| plan.find(s).unwrap_or_else(|| panic!("{s:?} not in the plan:\n{plan}"));
    assert!(at("apply Namespace flux-system") < at("apply Secret flux-system/sealed-secrets-keya1b2c"));
    assert!(at("sealed-secrets-keyolder") < at("apply CustomResourceDefinition"));
    assert!(
        at("wait until the 14 CRDs are Established") < at("apply Deployment flux-system/source-controller")
    );
    assert!(
        at("apply Deployment") < at("apply Secret flux-system/flux-system")
            && at("apply Secret flux-system/flux-system") < at("apply GitRepository")
    );
    assert!(
        at("restart Deployment flux-system/sealed-secrets-controller")
            > at("apply Kustomization flux-system/flux-system")
    );
    assert!(
        plan.contains("follow GitRepository flux-system/flux-system until Ready at main@sha1:"),
        "{plan}"
    );
    // Nothing changed: every write was a server-side dry run, no object exists, no state.
    assert!(
        s.server
            .requests()
            .iter()
            .filter(|r| r.verb.is_some_and(Verb::is_mutating))
            .all(|r| r.query.contains("dryRun=All"))
    );
    assert!(s.server.get(&ObjectRef::cluster("v1", "Namespace", "flux-system")).is_none());
    assert!(s.server.list("v1", "Secret", None).is_empty());
    assert!(!s.state().exists());
    assert!(text.contains("dry run done: nothing was changed"), "{text}");
    no_secrets_in(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_anything_is_applied() {
    // Kinds the API server does not serve (the stand-in has no ResourceQuota or Service):
    // stops before the first apply, naming the first.
    let (a, b) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().expect("tempdir");
    let (server, kubeconfig) = cluster::start(work.path(), Duration::ZERO).await;
    let keys_file = write_keys_file(
        work.path(),
        &keys_list(&[
            KeySecret::active("sealed-secrets-keya1b2c", a),
            KeySecret::active("sealed-secrets-keyolder", b),
        ]),
    );
    let p = preflight(&options(repo.path(), &keys_file));
    let opts = cluster::apply_options(&kubeconfig, &work.path().join("state.json"), TIMEOUT);
    let mut ui = RecordingUi::default();
    let err = apply::run(&p, &opts, &mut ui).await.expect_err("ResourceQuota not served");
    assert!(
        chain(&err).contains("the API server does not serve v1 ResourceQuota (ResourceQuota flux-system/critical-pods-flux-system, \
             from clusters/kyrion/flux-system/gotk-components.yaml#5)"),
        "{}",
        chain(&err)
    );
    assert!(server.mutations().is_empty(), "{:#?}", log(&server.mutations()));

    // No deploy key given and none in the cluster.
    let s = Setup::new(Duration::ZERO).await;
    let mut opts = s.options(TIMEOUT);
    opts.deploy_key = elysium_recovery::repo::DeployKey::None;
    let err = s.run(&opts, &mut ui).await.expect_err("no deploy key");
    assert!(chain(&err).contains("reads the Secret flux-system/flux-system, which the cluster does not have: pass --deploy-key FILE"), "{}", chain(&err));
    assert!(s.server.mutations().is_empty());

    // A deploy key file that is not there: found before connecting.
    s.server.clear_logs();
    opts.deploy_key = elysium_recovery::repo::DeployKey::File(s.work.path().join("missing-key"));
    let err = apply::run(&preflight(&options(s.repo.path(), &s.keys_file)), &opts, &mut ui)
        .await
        .expect_err("no key file");
    assert!(chain(&err).starts_with("could not read the deploy key"), "{}", chain(&err));
    assert!(s.server.requests().is_empty(), "not even connected");

    // A preflight that failed is never applied.
    let (real, _) = real_repo();
    let failed = preflight(&options(real.path(), &s.keys_file));
    assert!(!failed.report.verdict.is_ok());
    let err = apply::run(&failed, &s.options(TIMEOUT), &mut ui).await.expect_err("failed preflight");
    assert!(matches!(err, ApplyError::PreflightFailed));
    assert!(s.server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_deploy_key_and_known_hosts_are_used_as_they_are() {
    let s = Setup::new(Duration::ZERO).await;
    let key = elysium_recovery::deploykey::DeployKey::generate().expect("key");
    // Written by the test as an operator would have it (0600).
    let key_file = s.work.path().join("flux-deploy-key");
    let dk = json!(key.secret(&elysium_recovery::flux::NamespacedName::new("x", "y"), ""));
    let identity = b64decode(&dk["data"]["identity"]);
    std::fs::write(&key_file, &identity).expect("write key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let known_hosts = s.work.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("{}\n", elysium_recovery::deploykey::GITHUB_KNOWN_HOSTS.lines().next().expect("line")),
    )
    .expect("write");

    let _flux = play_flux(s.server.clone(), s.flux());
    let mut opts = s.options(TIMEOUT);
    opts.deploy_key = elysium_recovery::repo::DeployKey::File(key_file.clone());
    opts.known_hosts = Some(known_hosts);
    opts.yes = false; // a given key is not confirmed: the Git host already has it
    let mut ui = RecordingUi::default();
    let report = s.run(&opts, &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(report.healthy, "{}{report}", ui.text());
    assert!(ui.questions.is_empty());
    let secret = secret(&s.server, "flux-system", "flux-system");
    assert_eq!(b64decode(&secret["data"]["identity"]), identity);
    assert_eq!(b64decode(&secret["data"]["identity.pub"]).trim(), key.public);
    assert_eq!(b64decode(&secret["data"]["known_hosts"]).lines().count(), 1);
    assert_eq!(
        report.deploy_key.as_ref().map(|k| k.origin.clone()),
        Some(format!("from {}", key_file.display()))
    );
    assert_no_key_material(&format!("{}{report}", ui.text()), &identity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_deploy_key_waits_for_the_operator() {
    let s = Setup::new(Duration::ZERO).await;
    let mut opts = s.options(TIMEOUT);
    opts.yes = false;
    let mut ui = RecordingUi { answer: false, ..RecordingUi::default() };
    let err = s.run(&opts, &mut ui).await.expect_err("declined");
    assert!(
        chain(&err).contains("add it to ssh://git@github.com/alecsg77/elysium with read access"),
        "{}",
        chain(&err)
    );
    assert_eq!(ui.questions.len(), 1);
    // The key is in the cluster, the sync is not: Flux does not start cloning with a key
    // the Git host does not know yet.
    let first_key = secret(&s.server, "flux-system", "flux-system")["data"]["identity.pub"].clone();
    assert!(
        s.server
            .get(&ObjectRef::namespaced(
                cluster::GIT_REPOSITORY,
                "GitRepository",
                "flux-system",
                "flux-system"
            ))
            .is_none()
    );

    // Confirmed on the next run: the same key, asked again, then the sync.
    let _flux = play_flux(s.server.clone(), s.flux());
    let mut ui = RecordingUi { answer: true, ..RecordingUi::default() };
    let report = s.run(&opts, &mut ui).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(report.healthy);
    assert_eq!(ui.questions.len(), 1);
    assert_eq!(secret(&s.server, "flux-system", "flux-system")["data"]["identity.pub"], first_key);
    let shown = ui.text();
    assert!(shown.contains(&b64decode(&first_key).trim().to_owned()), "{shown}");
}
