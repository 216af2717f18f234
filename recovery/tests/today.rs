//! The preflight on a repository laid out as the cluster's is today (Flux Operator,
//! wrapper kustomizations, valuesFrom Secrets; `common::today`), and on the other
//! bootstrap forms made from it.

mod common;

use common::today::{self, CLUSTER, FLUX_WEB_SECRET, INSTANCE_DIR, INSTANCE_RELEASE, TAILSCALE_SECRET};
use common::*;
use elysium_recovery::flux::BootstrapForm;
use elysium_recovery::report::{Check, PreflightReport, Status, Verdict};
use elysium_recovery::sealed::Scope;

fn checks<'a>(r: &'a PreflightReport, name: &str) -> Vec<&'a Check> {
    r.checks.iter().filter(|c| c.name == name).collect()
}

fn keys_file(dir: &std::path::Path) -> std::path::PathBuf {
    let (a, b) = keys();
    write_keys_file(
        dir,
        &keys_list(&[
            KeySecret::active("sealed-secrets-keynew01", a),
            KeySecret::active("sealed-secrets-keyold24", b),
        ]),
    )
}

fn run(repo: &std::path::Path) -> elysium_recovery::Preflight {
    let work = tempfile::tempdir().unwrap();
    let keys = keys_file(work.path());
    let mut opts = options(repo, &keys);
    opts.path = CLUSTER.into();
    preflight(&opts)
}

#[test]
fn todays_layout_passes_with_the_instance_from_the_chart() {
    let (a, b) = keys();
    let (repo, sha) = today::repo(a, b);
    let p = run(repo.path());
    let r = &p.report;
    assert_eq!(r.verdict, Verdict::Ok, "{r}");

    // The bootstrap: the FluxInstance the flux-instance chart renders.
    let bs = &p.bootstrap;
    assert_eq!(bs.form, BootstrapForm::FluxInstanceChart);
    let inst = bs.instance.as_ref().expect("instance");
    assert_eq!(inst.name.to_string(), "flux-system/flux");
    assert_eq!(inst.origin, format!("{INSTANCE_RELEASE}#1"));
    assert_eq!(inst.body["kind"], "FluxInstance");
    assert_eq!(inst.body["spec"]["distribution"]["version"], "2.7.x");
    // The chart's defaults fill what values leave out; lists replace.
    assert_eq!(inst.body["spec"]["cluster"]["domain"], "cluster.local");
    assert_eq!(inst.body["spec"]["components"].as_array().map(Vec::len), Some(4));
    let owner = inst.helm.as_ref().expect("helm owner");
    assert_eq!(
        (owner.release_name.as_str(), owner.release_namespace.as_str()),
        ("flux-instance", "flux-system")
    );
    assert_eq!(bs.source.url, today::SYNC_URL);
    assert_eq!(bs.source.ref_name.as_deref(), Some("refs/heads/main"));
    assert_eq!(bs.source.branch, "main");
    assert_eq!(bs.source.secret.as_deref(), Some("flux-system"));
    assert_eq!(bs.source.revision(&sha), format!("refs/heads/main@sha1:{sha}"));
    assert_eq!(bs.kustomization.to_string(), "flux-system/flux-system");
    assert_eq!(bs.flux_version.as_deref(), Some("2.7.x"));
    let op = bs.operator.as_ref().expect("operator");
    assert_eq!(op.version.as_deref(), Some("0.57.0"));
    assert_eq!(op.owner.release_name, "flux-operator");

    // The report names the form, the instance, its sync URL, ref and path.
    let text = r.to_string();
    for want in ["Flux Operator", "flux-system/flux", today::SYNC_URL, "refs/heads/main", "./clusters/kyrion"]
    {
        assert!(text.contains(want), "report lacks {want:?}:\n{text}");
    }
    assert!(text.contains("registry"), "the report says the operator's registry must be reachable:\n{text}");

    // The controller through the wrapper, not the other cluster's.
    let c = p.controller.as_ref().expect("controller");
    assert_eq!((c.namespace.as_str(), c.name.as_str()), ("flux-system", "sealed-secrets-controller"));

    // Layers: the operator's root first; what clusters/kyrion does not list is not applied.
    let order: Vec<String> = p.order.iter().map(|n| n.name.clone()).collect();
    assert_eq!(order, ["flux-system", "infra-controllers", "infra-configs", "apps"]);

    // Every SealedSecret, in the namespace the builds give it, opened by the right key.
    let find = |ns: &str, name: &str| {
        r.sealed_secrets
            .iter()
            .find(|s| s.name == name && s.namespace.as_deref() == Some(ns))
            .unwrap_or_else(|| panic!("no {ns}/{name} in {:#?}", r.sealed_secrets))
    };
    let media = find("media", "library");
    assert!(media.opened && media.keys == ["sealed-secrets-keyold24"], "{media:?}");
    assert_eq!(media.layer.as_deref(), Some("flux-system/apps"));
    assert_eq!(find("whoami", "anywhere").scope, Scope::ClusterWide);
    assert_eq!(find("flux-system", "flux-web-client").layer.as_deref(), Some("flux-system/infra-configs"));
    assert!(r.sealed_secrets.iter().all(|s| s.opened), "{r}");

    // The values Secrets of the wait: true layers are checked, and pass.
    let values = checks(r, "values-secret");
    assert_eq!(values.len(), 2, "{values:#?}");
    assert!(values.iter().all(|c| c.status == Status::Pass), "{values:#?}");

    // Which key matches the committed certificate.
    let old = r.keys.iter().find(|k| k.name == "sealed-secrets-keyold24").expect("old key");
    assert_eq!(old.matches_committed_certs, [today::CERT_FILE]);
    // Helm chart templates are skipped without a word.
    assert!(r.notes.iter().all(|n| !n.contains("charts/local")), "{:?}", r.notes);
}

#[test]
fn a_values_secret_sealed_to_a_foreign_key_stops_the_chain_and_is_named() {
    let (a, b) = keys();
    let (repo, _) = today::repo(a, b);
    let foreign = TestKey::generate(2025);
    today::write(
        repo.path(),
        TAILSCALE_SECRET,
        &sealed_secret(
            &foreign,
            "flux-system",
            "tailscale-operator-secret",
            Scope::Strict,
            Scope::Strict,
            &[("oauth-client-secret", "x")],
        ),
    );
    commit_all(repo.path(), "resealed to another cluster's key");
    let p = run(repo.path());
    let r = &p.report;
    assert_eq!(r.verdict, Verdict::Failed, "{r}");
    let failed: Vec<&Check> =
        checks(r, "values-secret").into_iter().filter(|c| c.status == Status::Fail).collect();
    assert_eq!(failed.len(), 1, "{:#?}", r.checks);
    let d = &failed[0].detail;
    for want in [
        "flux-system/tailscale-operator-secret",
        "flux-system/infra-controllers",
        "flux-system/infra-configs",
        "flux-system/apps",
        "--force",
    ] {
        assert!(d.contains(want), "{want:?} not in {d}");
    }

    // --force lets it through, marked.
    let work = tempfile::tempdir().unwrap();
    let keys = keys_file(work.path());
    let mut opts = options(repo.path(), &keys);
    opts.force = true;
    let forced = preflight(&opts);
    assert_eq!(forced.report.verdict, Verdict::OkForced, "{}", forced.report);
}

#[test]
fn a_values_secret_of_a_layer_that_does_not_wait_is_a_warning() {
    let (a, b) = keys();
    let (repo, _) = today::repo(a, b);
    let text = std::fs::read_to_string(repo.path().join("clusters/kyrion/infrastructure.yaml")).unwrap();
    // infra-configs no longer waits: flux-web failing does not hold the layers after it.
    let mut docs: Vec<String> = text.split("\n---\n").map(str::to_owned).collect();
    let last = docs.last_mut().unwrap();
    *last = last.replace("wait: true", "wait: false");
    today::write(repo.path(), "clusters/kyrion/infrastructure.yaml", &docs.join("\n---\n"));
    let foreign = TestKey::generate(2025);
    today::write(
        repo.path(),
        FLUX_WEB_SECRET,
        &sealed_secret(
            &foreign,
            "flux-system",
            "flux-web-client",
            Scope::NamespaceWide,
            Scope::NamespaceWide,
            &[("client-secret", "x")],
        ),
    );
    commit_all(repo.path(), "infra-configs does not wait");
    let r = run(repo.path()).report;
    assert_eq!(r.verdict, Verdict::Ok, "{r}");
    let warned: Vec<&Check> =
        checks(&r, "values-secret").into_iter().filter(|c| c.status == Status::Warn).collect();
    assert_eq!(warned.len(), 1, "{:#?}", r.checks);
    assert!(warned[0].detail.contains("flux-system/flux-web-client"), "{}", warned[0].detail);
}

#[test]
fn a_plain_flux_instance_object_is_the_bootstrap() {
    let (a, b) = keys();
    let (repo, _) = today::repo(a, b);
    std::fs::remove_file(repo.path().join(INSTANCE_RELEASE)).unwrap();
    std::fs::remove_file(repo.path().join(INSTANCE_DIR).join("repository.yaml")).unwrap();
    today::write(repo.path(), &format!("{INSTANCE_DIR}/instance.yaml"), &today::instance_object());
    today::write(
        repo.path(),
        &format!("{INSTANCE_DIR}/kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [instance.yaml]\n",
    );
    commit_all(repo.path(), "a FluxInstance object");
    let p = run(repo.path());
    assert_eq!(p.report.verdict, Verdict::Ok, "{}", p.report);
    assert_eq!(p.bootstrap.form, BootstrapForm::FluxInstance);
    let inst = p.bootstrap.instance.as_ref().expect("instance");
    assert!(inst.helm.is_none());
    assert_eq!(inst.origin, format!("{INSTANCE_DIR}/instance.yaml#1"));
    // No sync.name: the operator names the source after the namespace.
    assert_eq!(p.bootstrap.source.name.to_string(), "flux-system/flux-system");
}

#[test]
fn no_bootstrap_is_reported_and_everything_else_still_checked() {
    let (a, b) = keys();
    let (repo, _) = today::repo(a, b);
    today::write(
        repo.path(),
        "infrastructure/configs/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [flux-web]\n",
    );
    commit_all(repo.path(), "the instance is no longer applied");
    let r = run(repo.path()).report;
    assert_eq!(r.verdict, Verdict::Failed, "{r}");
    let b = checks(&r, "bootstrap");
    assert_eq!((b.len(), b[0].status), (1, Status::Fail), "{:#?}", r.checks);
    for want in ["flux-system/gotk-components.yaml", "FluxInstance", "flux-instance chart"] {
        assert!(b[0].detail.contains(want), "{want:?} not in {}", b[0].detail);
    }
    // Found but unreachable: said so.
    assert!(r.notes.iter().any(|n| n.contains(INSTANCE_RELEASE)), "{:?}", r.notes);
    // Keys, certificate and SealedSecrets were still checked.
    assert_eq!(checks(&r, "keys")[0].status, Status::Pass);
    assert_eq!(checks(&r, "committed-certificate")[0].status, Status::Pass);
    assert!(r.sealed_secrets.len() >= 5 && r.sealed_secrets.iter().all(|s| s.opened), "{r}");
    assert!(r.to_string().contains("looked for"), "{r}");
}
