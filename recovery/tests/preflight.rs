//! The preflight against the real Elysium repository snapshot (74291b2), made into a local
//! Git repository, with test sealing keys.

mod common;

use common::*;
use elysium_recovery::PreflightError;
use elysium_recovery::backup::BackupError;
use elysium_recovery::flux::FluxError;
use elysium_recovery::keys::KeysError;
use elysium_recovery::repo::{DeployKey, RepoError};
use elysium_recovery::report::{Check, PreflightReport, Status, Verdict};
use elysium_recovery::sealed::Scope;

/// SealedSecret documents in the snapshot, all sealed to the real cluster's key.
const REAL_SEALED_SECRETS: usize = 21;

fn check<'a>(r: &'a PreflightReport, name: &str) -> Vec<&'a Check> {
    r.checks.iter().filter(|c| c.name == name).collect()
}

fn status(r: &PreflightReport, name: &str) -> Status {
    let c = check(r, name);
    assert_eq!(c.len(), 1, "one {name} check expected in {:#?}", r.checks);
    c[0].status
}

fn sealed<'a>(
    r: &'a PreflightReport,
    ns: &str,
    name: &str,
) -> &'a elysium_recovery::report::SealedSecretReport {
    r.sealed_secrets
        .iter()
        .find(|s| s.name == name && s.namespace.as_deref() == Some(ns))
        .unwrap_or_else(|| panic!("no SealedSecret {ns}/{name} in the report"))
}

fn two_keys_file(dir: &std::path::Path) -> std::path::PathBuf {
    let (a, b) = keys();
    write_keys_file(
        dir,
        &keys_list(&[
            KeySecret::active("sealed-secrets-keya1b2c", a),
            KeySecret::active("sealed-secrets-keyolder", b),
        ]),
    )
}

#[test]
fn repository_resealed_with_the_backup_key_passes() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    // One SealedSecret per scope, and one whose own annotation disagrees with how it was
    // sealed (the controller goes by the SealedSecret's own metadata, so it must not open).
    let extra = [
        sealed_secret(a, "coder", "ns-wide", Scope::NamespaceWide, Scope::NamespaceWide, &[("token", "t")]),
        sealed_secret(
            a,
            "raiplaysoundrss",
            "anywhere",
            Scope::ClusterWide,
            Scope::ClusterWide,
            &[("token", "t")],
        ),
        sealed_secret(a, "coder", "mislabelled", Scope::NamespaceWide, Scope::Strict, &[("token", "t")]),
    ]
    .concat();
    std::fs::create_dir_all(repo.path().join("apps/kyrion/recovery-test")).unwrap();
    std::fs::write(repo.path().join("apps/kyrion/recovery-test/sealed.yaml"), extra).unwrap();
    std::fs::write(repo.path().join("apps/kyrion/recovery-test/notes.txt"), "kind: SealedSecret\n").unwrap();
    let sha = commit_all(repo.path(), "scopes");

    let work = tempfile::tempdir().unwrap();
    let keys_file = two_keys_file(work.path());
    let p = preflight(&options(repo.path(), &keys_file));
    let r = &p.report;

    assert_eq!(r.verdict, Verdict::Ok, "{r}");
    assert_eq!(r.repository.commit.as_deref(), Some(sha.as_str()));
    assert_eq!((r.repository.kind, r.repository.branch.as_deref()), ("local git", Some("main")));

    let c = p.controller.as_ref().expect("controller");
    assert_eq!((c.namespace.as_str(), c.name.as_str()), ("flux-system", "sealed-secrets-controller"));
    assert!(c.source.contains("infrastructure/controllers/sealed-secrets/release.yaml"), "{}", c.source);

    let order: Vec<String> = p.order.iter().map(ToString::to_string).collect();
    assert_eq!(
        order,
        [
            "flux-system/flux-system",
            // Applied by apps (apps/base/openclaw), with its own source.
            "ai/openclaw",
            "flux-system/infra-controllers",
            "flux-system/infra-configs",
            "flux-system/apps",
            "flux-system/monitoring-controllers",
            "flux-system/monitoring-configs",
            // Applied by infra-controllers and apps, each with its own source.
            "flux-system/system-upgrade",
            "n8n/n8n",
        ]
    );

    assert_eq!(p.bootstrap.form, elysium_recovery::flux::BootstrapForm::Classic);
    assert_eq!(
        p.bootstrap.components.as_deref(),
        Some(std::path::Path::new("clusters/kyrion/flux-system/gotk-components.yaml"))
    );
    assert_eq!(
        p.bootstrap.sync.as_deref(),
        Some(std::path::Path::new("clusters/kyrion/flux-system/gotk-sync.yaml"))
    );
    assert_eq!(p.bootstrap.source.url, "ssh://git@github.com/alecsg77/elysium");
    assert_eq!(p.bootstrap.source.branch, "main");
    assert!(
        p.checkout.root().join(p.bootstrap.components.as_deref().expect("components")).is_file(),
        "the apply phase reads it from the checkout"
    );

    // The keys: A is the newest and the committed certificate's; both restored byte for byte.
    assert_eq!(p.keys.len(), 2);
    assert_eq!(p.keys[0].key_pem(), a.key_pem.as_bytes());
    let ka = &r.keys[0];
    assert!(ka.newest && ka.loaded_by_controller && ka.opened_values >= 5, "{ka:?}");
    assert_eq!(ka.matches_committed_certs, [CERT_FILE]);
    assert!(!r.keys[1].newest && r.keys[1].matches_committed_certs.is_empty());
    assert_eq!(r.committed_certs[0].matched_by.as_deref(), Some("sealed-secrets-keya1b2c"));

    // Trial decryption.
    let vars = sealed(r, "flux-system", "cluster-secret-vars");
    assert!(vars.opened && vars.values == 3 && vars.keys == ["sealed-secrets-keya1b2c"], "{vars:?}");
    assert!(sealed(r, "coder", "ns-wide").opened);
    assert_eq!(sealed(r, "coder", "ns-wide").scope, Scope::NamespaceWide);
    assert!(sealed(r, "raiplaysoundrss", "anywhere").opened);
    assert!(!sealed(r, "coder", "mislabelled").opened);
    assert!(
        r.notes.iter().any(|n| n.contains("mislabelled") && n.contains("unseals as strict")),
        "{:?}",
        r.notes
    );
    // The real ones (all but the re-sealed cluster-secret-vars) stay closed and are named.
    let closed = r.sealed_secrets.iter().filter(|s| !s.opened).count();
    assert_eq!(closed, REAL_SEALED_SECRETS - 1 + 1, "the real ones and the mislabelled one");
    assert!(!sealed(r, "ai", "librechat-credentials-env").opened);
    assert!(!sealed(r, "raiplaysoundrss", "regcred").opened);

    for (name, want) in [
        ("keys", Status::Pass),
        ("committed-certificate", Status::Pass),
        ("substitution-secret", Status::Pass),
        ("controller", Status::Pass),
        ("flux-sync", Status::Pass), // a local copy: only branch and path are compared
        ("sealed-secrets", Status::Warn),
    ] {
        assert_eq!(status(r, name), want, "{name} in\n{r}");
    }

    let text = r.to_string();
    assert!(text.contains("Verdict: OK"), "{text}");
    assert!(text.contains("NOT opened  ai/librechat-credentials-env"), "{text}");
    assert!(
        text.contains("opened      flux-system/cluster-secret-vars  (strict, key sealed-secrets-keya1b2c)"),
        "{text}"
    );
    assert!(text.contains("flux-system/sealed-secrets-controller"), "{text}");
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["verdict"], "ok");
    assert_eq!(json["kustomization_order"][2]["name"], "infra-controllers");

    // Nothing printable carries key material.
    for text in [text, json.to_string(), format!("{p:?}")] {
        assert_no_key_material(&text, &a.key_pem);
    }
}

#[test]
fn real_repository_with_other_keys_fails_and_force_does_not_save_it() {
    let (repo, _) = real_repo();
    let work = tempfile::tempdir().unwrap();
    let keys_file = two_keys_file(work.path());
    let mut opts = options(repo.path(), &keys_file);

    let r = preflight(&opts).report;
    assert_eq!(r.verdict, Verdict::Failed, "{r}");
    assert_eq!(status(&r, "committed-certificate"), Status::Fail);
    assert_eq!(status(&r, "substitution-secret"), Status::Fail);
    assert!(r.sealed_secrets.iter().all(|s| !s.opened), "no test key opens a real SealedSecret");
    assert_eq!(r.sealed_secrets.len(), REAL_SEALED_SECRETS);
    let text = r.to_string();
    assert!(text.contains("FAILED (committed-certificate, substitution-secret)"), "{text}");
    assert!(
        text.contains(
            "flux-system/cluster-secret-vars (clusters/kyrion/sealed-secrets.yaml#1) does not open"
        ),
        "{text}"
    );

    // --force overrides the cluster-secret-vars check, but not a certificate mismatch
    // when nothing opens at all: these keys are not this cluster's.
    opts.force = true;
    let r = preflight(&opts).report;
    assert_eq!(status(&r, "substitution-secret"), Status::Overridden);
    assert_eq!(status(&r, "committed-certificate"), Status::Fail);
    assert!(check(&r, "committed-certificate")[0].detail.contains("not overridable"));
    assert_eq!(r.verdict, Verdict::Failed);
}

#[test]
fn unopenable_cluster_secret_vars_fails_unless_forced() {
    let (a, _) = keys();
    // The committed certificate is the backup's, but cluster-secret-vars was sealed to a key
    // the backup lacks.
    let (repo, _) = repo_resealed_with(a, true, false);
    let work = tempfile::tempdir().unwrap();
    let keys_file = two_keys_file(work.path());
    let mut opts = options(repo.path(), &keys_file);

    let r = preflight(&opts).report;
    assert_eq!(status(&r, "committed-certificate"), Status::Pass);
    assert_eq!(status(&r, "substitution-secret"), Status::Fail);
    assert_eq!(r.verdict, Verdict::Failed);

    opts.force = true;
    let r = preflight(&opts).report;
    assert_eq!(status(&r, "substitution-secret"), Status::Overridden);
    assert_eq!(r.verdict, Verdict::OkForced, "{r}");
    assert!(r.verdict.is_ok());
    assert!(r.to_string().contains("[forced] substitution-secret"), "{r}");
}

#[test]
fn stale_committed_certificate_is_overridable_when_the_keys_open_secrets() {
    let (a, _) = keys();
    // cluster-secret-vars opens with A, but the committed certificate is the real cluster's.
    let (repo, _) = repo_resealed_with(a, false, true);
    let work = tempfile::tempdir().unwrap();
    let keys_file = two_keys_file(work.path());
    let mut opts = options(repo.path(), &keys_file);

    let r = preflight(&opts).report;
    assert_eq!(status(&r, "substitution-secret"), Status::Pass);
    assert_eq!(status(&r, "committed-certificate"), Status::Fail);
    assert!(check(&r, "committed-certificate")[0].detail.contains("--force"), "{r}");
    assert_eq!(r.verdict, Verdict::Failed);

    opts.force = true;
    let r = preflight(&opts).report;
    assert_eq!(status(&r, "committed-certificate"), Status::Overridden);
    assert_eq!(r.verdict, Verdict::OkForced);
}

#[test]
fn flags_override_the_controller_location() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().unwrap();
    let mut opts = options(repo.path(), &two_keys_file(work.path()));
    opts.controller_namespace = Some("kube-system".into());
    let p = preflight(&opts);
    let c = p.controller.expect("controller");
    assert_eq!((c.namespace.as_str(), c.name.as_str()), ("kube-system", "sealed-secrets-controller"));
    assert!(c.source.starts_with("flags"), "{}", c.source);
    assert!(
        p.report.notes.iter().any(|n| n.contains("backed up from namespace flux-system")),
        "{:?}",
        p.report.notes
    );
}

#[test]
fn a_plain_directory_is_read_as_it_is() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    std::fs::remove_dir_all(repo.path().join(".git")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let p = preflight(&options(repo.path(), &two_keys_file(work.path())));
    assert_eq!(p.report.repository.kind, "directory");
    assert_eq!(p.report.repository.commit, None);
    assert_eq!(p.report.verdict, Verdict::Ok, "{}", p.report);
}

// ---- errors: each names the problem, none carries key material ----

fn preflight_err(opts: &elysium_recovery::PreflightOptions) -> (PreflightError, String) {
    match elysium_recovery::preflight(opts) {
        Ok(p) => panic!("expected an error, got a report:\n{}", p.report),
        Err(e) => {
            let text = chain(&e);
            let (a, b) = keys();
            assert_no_key_material(&text, &a.key_pem);
            assert_no_key_material(&text, &b.key_pem);
            (e, text)
        }
    }
}

/// The keys file is checked before the repository is even looked at (no network is needed
/// to find a backup unusable), so any repository will do.
fn keys_error(contents: &str) -> (KeysError, String) {
    let work = tempfile::tempdir().expect("tempdir");
    let file = write_keys_file(work.path(), contents);
    let (e, text) = preflight_err(&options(&work.path().join("not-cloned"), &file));
    assert!(text.contains(&file.display().to_string()), "names the keys file: {text}");
    match e {
        PreflightError::Backup(BackupError::Keys { source, .. }) => (source, text),
        other => panic!("expected a keys error, got {}", chain(&other)),
    }
}

#[test]
fn malformed_keys_file() {
    let (a, _) = keys();
    let good = keys_list(&[KeySecret::active("sealed-secrets-keya1b2c", a)]);
    // Cut in the middle of tls.key's base64 and break the structure after it.
    let cut = good.find("tls.key: ").unwrap() + 200;
    let broken = format!("{}\n  - : [unclosed\n", &good[..cut]);
    let (e, text) = keys_error(&broken);
    assert!(matches!(e, KeysError::Yaml { document: 1, .. }), "{text}");

    // Valid YAML, but tls.key's base64 damaged.
    let b64_key = b64(a.key_pem.as_bytes());
    let damaged = good.replace(&b64_key, &format!("{}!!{}", &b64_key[..100], &b64_key[100..]));
    let (e, text) = keys_error(&damaged);
    assert!(matches!(e, KeysError::Base64 { field: "tls.key", .. }), "{text}");
    assert!(
        text.contains(
            "document 1, item 1 (Secret sealed-secrets-keya1b2c): data.tls.key is not valid base64"
        ),
        "{text}"
    );

    // A PEM that is not a key at all.
    let junk = good
        .replace(&b64_key, &b64(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"));
    let (e, _) = keys_error(&junk);
    assert!(matches!(e, KeysError::PrivateKey { .. }));

    let (e, text) = keys_error("apiVersion: v1\nkind: List\nitems: []\n");
    assert!(matches!(e, KeysError::NoKeys), "{text}");
    assert!(text.contains("kubectl get secret"), "says what is expected: {text}");
}

#[test]
fn private_key_that_is_not_the_certificates() {
    let (a, b) = keys();
    let crossed = KeySecret { cert_pem: &b.cert_pem, ..KeySecret::active("sealed-secrets-keyx", a) };
    let list = keys_list(&[KeySecret::active("sealed-secrets-keyok", b), crossed]);
    let (e, text) = keys_error(&list);
    assert!(matches!(e, KeysError::Mismatch { .. }), "{text}");
    assert!(
        text.contains("document 1, item 2 (Secret sealed-secrets-keyx): tls.key does not belong to tls.crt"),
        "{text}"
    );
}

#[test]
fn non_tls_secret() {
    let (a, _) = keys();
    let opaque = KeySecret { secret_type: "Opaque", ..KeySecret::active("sealed-secrets-keyopq", a) };
    let (e, text) = keys_error(&keys_list(&[opaque]));
    assert!(matches!(e, KeysError::NotTls { .. }), "{text}");
    assert!(text.contains("(Secret sealed-secrets-keyopq): has type \"Opaque\""), "{text}");

    // Several documents instead of a List work the same way, and count documents.
    let doc = |name: &str, k: &TestKey, ty: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\ntype: {ty}\nmetadata:\n  name: {name}\n  labels:\n    sealedsecrets.bitnami.com/sealed-secrets-key: active\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(k.cert_pem.as_bytes()),
            b64(k.key_pem.as_bytes())
        )
    };
    let docs = format!("{}{}", doc("good", a, "kubernetes.io/tls"), doc("bad", a, "Opaque"));
    let (_, text) = keys_error(&docs);
    assert!(text.contains("document 2 (Secret bad)"), "{text}");
}

#[test]
fn wrong_path_lists_the_clusters() {
    let (repo, _) = real_repo();
    let work = tempfile::tempdir().unwrap();
    let mut opts = options(repo.path(), &two_keys_file(work.path()));
    opts.path = "clusters/production".into();
    let (e, text) = preflight_err(&opts);
    assert!(matches!(e, PreflightError::ClusterPath { .. }));
    assert_eq!(
        text,
        "--path clusters/production is not a directory in the repository; cluster directories found: clusters/kyrion"
    );
    opts.path = "../clusters/kyrion".into();
    assert!(matches!(preflight_err(&opts).0, PreflightError::BadPath { .. }));
}

#[test]
fn scp_like_url_is_refused_with_the_ssh_url() {
    let work = tempfile::tempdir().unwrap();
    let mut opts = options(work.path(), &two_keys_file(work.path()));
    opts.repo = "git@github.com:alecsg77/elysium.git".into();
    let (e, text) = preflight_err(&opts);
    assert!(matches!(e, PreflightError::Repo(RepoError::ScpLike { .. })));
    assert!(text.contains("use ssh://git@github.com/alecsg77/elysium.git"), "{text}");
}

#[test]
fn missing_repository_branch_and_deploy_key() {
    let (repo, _) = real_repo();
    let work = tempfile::tempdir().unwrap();
    let keys_file = two_keys_file(work.path());

    let mut opts = options(&work.path().join("no-such-repo"), &keys_file);
    let (e, text) = preflight_err(&opts);
    assert!(matches!(e, PreflightError::Repo(RepoError::NotFound { .. })), "{text}");
    assert!(text.contains("no-such-repo does not exist"), "{text}");

    opts = options(repo.path(), &keys_file);
    opts.branch = "release-9".into();
    let (e, text) = preflight_err(&opts);
    assert!(matches!(e, PreflightError::Repo(RepoError::Clone { .. })), "{text}");
    assert!(
        text.contains(&format!(
            "git clone of {} at branch release-9 failed",
            repo.path().canonicalize().unwrap().display()
        )),
        "{text}"
    );
    assert!(text.contains("check: that the branch exists"), "{text}");

    opts = options(repo.path(), &keys_file);
    opts.deploy_key = DeployKey::File(work.path().join("id_ecdsa"));
    let (e, text) = preflight_err(&opts);
    assert!(matches!(e, PreflightError::Repo(RepoError::DeployKey { .. })), "{text}");
    assert!(text.contains("id_ecdsa cannot be read"), "{text}");
}

#[test]
fn the_snapshot_without_flux_system_is_bootstrapped_by_its_flux_instance_release() {
    // 74291b2 is half-way to the Flux Operator: it already holds the flux-operator and
    // flux-instance HelmReleases. Without flux-system/, those are the bootstrap.
    let (a, _) = keys();
    let (dir, _) = repo_resealed_with(a, true, true);
    std::fs::remove_dir_all(dir.path().join("clusters/kyrion/flux-system")).unwrap();
    commit_all(dir.path(), "operator");
    let work = tempfile::tempdir().unwrap();
    let p = preflight(&options(dir.path(), &two_keys_file(work.path())));
    let b = &p.bootstrap;
    assert_eq!(b.form, elysium_recovery::flux::BootstrapForm::FluxInstanceChart, "{}", p.report);
    let i = b.instance.as_ref().expect("instance");
    assert_eq!(i.name.to_string(), "flux-system/flux");
    assert_eq!(i.origin, "infrastructure/configs/flux-instance/release.yaml#1");
    assert_eq!(b.flux_version.as_deref(), Some("2.9.3"));
    assert_eq!(b.source.url, "ssh://git@github.com/alecsg77/elysium");
    assert_eq!(b.source.ref_name.as_deref(), Some("refs/heads/main"));
    assert_eq!(b.kustomization_path, "./clusters/kyrion");
    assert_eq!(b.operator.as_ref().and_then(|o| o.version.as_deref()), Some("0.57.0"));
    assert_eq!(p.order.first().map(|n| n.to_string()).as_deref(), Some("flux-system/flux-system"));

    // A FluxInstance object wins over the chart, and one the operator would refuse is named.
    std::fs::write(
        dir.path().join("clusters/kyrion/flux-instance.yaml"),
        "apiVersion: fluxcd.controlplane.io/v1\nkind: FluxInstance\nmetadata:\n  name: flux\n  namespace: flux-system\nspec:\n  distribution: {version: 2.x}\n",
    )
    .unwrap();
    commit_all(dir.path(), "an instance without sync");
    let (e, text) = preflight_err(&options(dir.path(), &two_keys_file(work.path())));
    assert!(matches!(e, PreflightError::Flux(FluxError::InstanceInvalid { .. })), "{text}");
    assert!(
        text.contains("flux-system/flux (clusters/kyrion/flux-instance.yaml#1) has no spec.sync"),
        "{text}"
    );
}

#[test]
fn dependency_cycle_is_named() {
    let dir = unpack();
    let f = dir.path().join("clusters/kyrion/infrastructure.yaml");
    let text = std::fs::read_to_string(&f).unwrap();
    // infra-controllers (which infra-configs, and so apps, depend on) now waits for apps.
    let changed = text.replacen(
        "  name: infra-controllers\n  namespace: flux-system\nspec:\n",
        "  name: infra-controllers\n  namespace: flux-system\nspec:\n  dependsOn:\n    - name: apps\n",
        1,
    );
    assert_ne!(text, changed);
    std::fs::write(&f, changed).unwrap();
    commit_all(dir.path(), "cycle");
    let work = tempfile::tempdir().unwrap();
    let (e, text) = preflight_err(&options(dir.path(), &two_keys_file(work.path())));
    assert!(matches!(e, PreflightError::Flux(FluxError::Cycle { .. })), "{text}");
    assert!(
        text.contains(
            "flux-system/apps → flux-system/infra-configs → flux-system/infra-controllers → flux-system/apps"
        ),
        "{text}"
    );
}

#[test]
fn keys_handed_over_in_memory_are_judged_like_the_same_keys_in_a_file() {
    let (a, _) = keys();
    let (repo, sha) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().unwrap();
    let file = two_keys_file(work.path());
    let from_file = preflight(&options(repo.path(), &file));
    let parsed = elysium_recovery::keys::parse(&std::fs::read(&file).unwrap()).unwrap();
    let mut opts = options(repo.path(), &file);
    opts.keys = elysium_recovery::KeySource::Keys { keys: parsed, origin: "a test's memory".into() };
    // Not read from disk: the file may go.
    std::fs::remove_file(&file).unwrap();
    let in_memory = preflight(&opts);
    let (f, m) = (&from_file.report, &in_memory.report);
    assert_eq!((m.verdict, f.verdict), (Verdict::Ok, Verdict::Ok), "{m}");
    assert_eq!(m.repository.commit.as_deref(), Some(sha.as_str()));
    let names =
        |r: &PreflightReport| r.keys.iter().map(|k| (k.name.clone(), k.opened_values)).collect::<Vec<_>>();
    assert_eq!(names(m), names(f));
    let opened = |r: &PreflightReport| r.sealed_secrets.iter().filter(|s| s.opened).count();
    assert_eq!(opened(m), opened(f));
    assert_eq!(in_memory.keys.len(), 2, "the apply phase gets the keys too");

    opts.keys = elysium_recovery::KeySource::Keys { keys: Vec::new(), origin: "an empty vault".into() };
    let (e, text) = preflight_err(&opts);
    assert!(matches!(e, PreflightError::NoKeys { .. }), "{text}");
    assert!(text.contains("an empty vault"), "{text}");
}
