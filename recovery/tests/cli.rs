//! `elysium-node recover` as a user runs it: the built binary (`cargo build -p
//! elysium-agent` first; `tests/run` does), its exit status, report and errors; the apply
//! against the API server stand-in, with the test playing Flux.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::cluster;
use common::*;

/// `<repo>/target/debug/elysium-node`, or `$ELYSIUM_NODE_BIN`, like the e2e harness.
fn binary() -> PathBuf {
    let path = std::env::var_os("ELYSIUM_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/elysium-node"));
    assert!(
        path.is_file(),
        "the elysium-node binary is missing at {}: run `cargo build -p elysium-agent` first (or set ELYSIUM_NODE_BIN)",
        path.display()
    );
    path
}

fn recover(repo: &Path, keys_file: &Path, extra: &[&str]) -> (Output, String, String) {
    let out = Command::new(binary())
        .arg("recover")
        .arg("--repo")
        .arg(repo)
        .arg("--sealed-secrets-keys")
        .arg(keys_file)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run elysium-node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (a, b) = keys();
    for text in [&stdout, &stderr] {
        assert_no_key_material(text, &a.key_pem);
        assert_no_key_material(text, &b.key_pem);
    }
    (out, stdout, stderr)
}

/// [`recover`] on a blocking thread: the API server stand-in runs on this
/// test's runtime and must keep answering meanwhile.
async fn recover_blocking(repo: PathBuf, keys: PathBuf, args: Vec<String>) -> (Output, String, String) {
    tokio::task::spawn_blocking(move || {
        recover(&repo, &keys, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("run")
}

fn keys_file(dir: &Path) -> PathBuf {
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
fn verify_only_passes_on_a_recoverable_repository() {
    let (a, _) = keys();
    let (repo, sha) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().expect("tempdir");
    let (out, stdout, stderr) = recover(repo.path(), &keys_file(work.path()), &["--verify-only"]);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for part in [
        &format!("commit      {sha}"),
        "sealed-secrets-keya1b2c  active, newest: seals new secrets",
        "etc/certs/pub-sealed-secrets.pem  matches key sealed-secrets-keya1b2c",
        "opened      flux-system/cluster-secret-vars  (strict, key sealed-secrets-keya1b2c)",
        "NOT opened  n8n/n8n-secret",
        "flux-system/sealed-secrets-controller  (HelmRelease flux-system/sealed-secrets",
        "clusters/kyrion/flux-system/gotk-components.yaml",
        "   1. flux-system/flux-system\n   2. ai/openclaw\n   3. flux-system/infra-controllers\n   4. flux-system/infra-configs\n   5. flux-system/apps",
        "Verdict: OK",
    ] {
        assert!(stdout.contains(part), "{part:?} missing from:\n{stdout}");
    }

    let (out, stdout, _) = recover(repo.path(), &keys_file(work.path()), &["--verify-only", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(json["verdict"], "ok");
    assert_eq!(json["controller"]["namespace"], "flux-system");
    assert_eq!(json["repository"]["commit"], sha.as_str());
}

#[test]
fn verify_only_fails_on_keys_that_are_not_the_clusters() {
    let (repo, _) = real_repo();
    let work = tempfile::tempdir().expect("tempdir");
    let (out, stdout, _) = recover(repo.path(), &keys_file(work.path()), &["--verify-only", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("[forced] substitution-secret"), "{stdout}");
    assert!(stdout.contains("Verdict: FAILED (committed-certificate)"), "{stdout}");
}

/// An age-encrypted backup through the binary, logging at trace level: it opens with
/// `--age-identity`; without one, or needing a passphrase off a terminal (the test's
/// standard input is not one), it says what to do. No secret reaches the output.
#[test]
fn verify_only_opens_an_age_backup_and_never_prompts_off_a_terminal() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().expect("tempdir");
    let (id, id_file) = identity_file(work.path(), "keys.txt");
    let plain = std::fs::read(keys_file(work.path())).expect("keys file");
    let sealed = work.path().join("sealed-secrets-keys.yaml.age");
    std::fs::write(&sealed, encrypt_to(&plain, &[&id.to_public()], true)).expect("write");
    let passphrase = "a passphrase nobody types 4471";
    let by_passphrase = work.path().join("by-passphrase.age");
    std::fs::write(&by_passphrase, encrypt_passphrase(&plain, passphrase, false)).expect("write");

    let run = |file: &Path, extra: &[&Path]| {
        let mut cmd = Command::new(binary());
        cmd.arg("recover")
            .arg("--verify-only")
            .arg("--repo")
            .arg(repo.path())
            .arg("--sealed-secrets-keys")
            .arg(file);
        for i in extra {
            cmd.arg("--age-identity").arg(i);
        }
        let argv: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let out = cmd.env("RUST_LOG", "trace").output().expect("run elysium-node");
        let text = format!(
            "{}{}{}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (ka, kb) = keys();
        assert_no_key_material(&text, &ka.key_pem);
        assert_no_key_material(&text, &kb.key_pem);
        use age::secrecy::ExposeSecret as _;
        assert!(!text.contains(&id.to_string().expose_secret()[16..]), "{text}");
        assert!(!has_age_secret_key(&text), "{text}");
        assert!(!text.contains(passphrase), "{text}");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run(&sealed, &[&id_file]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("Verdict: OK"), "{stdout}");
    assert!(stderr.contains("key backup decrypted"), "the trace log was not captured: {stderr}");

    let (code, _, stderr) = run(&sealed, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is age-encrypted (age, ASCII-armored); pass --age-identity FILE"), "{stderr}");

    let (code, _, stderr) = run(&by_passphrase, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "is encrypted with a passphrase, but no passphrase can be asked for: run on a terminal"
        ),
        "{stderr}"
    );
}

/// The binary against the API server stand-in, with the test playing Flux: the happy path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_applies_and_follows_flux_to_healthy() {
    let (a, _) = keys();
    let (repo, sha) = cluster::repo(a);
    let work = tempfile::tempdir().expect("tempdir");
    let (server, kubeconfig) = cluster::start(work.path(), Duration::ZERO).await;
    let _flux = cluster::play_flux(server.clone(), cluster::FluxScript::healthy(repo.path(), &sha));
    let keys = keys_file(work.path());
    let state = work.path().join("recover-state.json");
    let args = apply_args(&kubeconfig, &state, &["--generate-deploy-key", "--yes", "--timeout", "2m"]);
    let (out, stdout, stderr) = recover_blocking(repo.path().to_owned(), keys, args).await;
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for part in [
        "Verdict: OK",
        "applied Namespace flux-system",
        "applied Secret flux-system/sealed-secrets-keya1b2c",
        "14 CRDs Established",
        "deploy key for Secret flux-system/flux-system (generated), SHA256:",
        "--yes: not waiting for the deploy key",
        "Kustomization flux-system/apps: ready at main@sha1:",
        "Kustomizations: 9 of 9 ready",
        "Result: HEALTHY",
    ] {
        assert!(stdout.contains(part), "{part:?} missing from:\n{stdout}");
    }
    let dk = server
        .get(&kube_apiserver_standin::ObjectRef::namespaced("v1", "Secret", "flux-system", "flux-system"))
        .expect("deploy key Secret");
    let identity = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        dk["data"]["identity"].as_str().expect("identity"),
    )
    .expect("base64");
    let identity = String::from_utf8(identity).expect("utf8");
    assert_no_key_material(&stdout, &identity);
    assert_no_key_material(&stderr, &identity);
    assert!(state.is_file());
}

/// Errors through the binary: each names the problem and nothing reaches the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_errors_apply_nothing() {
    let (a, b) = keys();
    let (repo, _) = cluster::repo(a);
    let work = tempfile::tempdir().expect("tempdir");
    let (server, kubeconfig) = cluster::start(work.path(), Duration::ZERO).await;
    let state = work.path().join("recover-state.json");
    let good = keys_file(work.path());
    let run = |keys: PathBuf, extra: Vec<String>| {
        let mut args = apply_args(&kubeconfig, &state, &["--generate-deploy-key", "--yes"]);
        args.extend(extra);
        recover_blocking(repo.path().to_owned(), keys, args)
    };

    // The API server is down.
    server.set_unreachable(true);
    let (out, _, stderr) = run(good.clone(), vec![]).await;
    server.set_unreachable(false);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "error: the Kubernetes API server {} (from {}) cannot be reached; nothing was applied",
        server.url(),
        kubeconfig.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // A malformed keys file, a key that is not its certificate's, a wrong --path.
    let malformed = work.path().join("malformed.key");
    std::fs::write(&malformed, "apiVersion: v1\nitems:\n- kind: Secret\n  data: [oops\n").expect("write");
    let (out, _, stderr) = run(malformed, vec![]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("malformed.key is not usable\n  caused by: document 1 is not valid YAML"),
        "{stderr}"
    );

    let dir = work.path().join("mismatch");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mismatch = write_keys_file(
        &dir,
        &keys_list(&[KeySecret { cert_pem: &b.cert_pem, ..KeySecret::active("sealed-secrets-keya1b2c", a) }]),
    );
    let (out, _, stderr) = run(mismatch, vec![]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("(Secret sealed-secrets-keya1b2c): tls.key does not belong to tls.crt"),
        "{stderr}"
    );

    let (out, _, stderr) = run(good.clone(), vec!["--path".into(), "clusters/prod".into()]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--path clusters/prod is not a directory in the repository"), "{stderr}");

    // No deploy key and none in the cluster: found by looking, before applying.
    let args = apply_args(&kubeconfig, &state, &[]);
    let (out, _, stderr) = recover_blocking(repo.path().to_owned(), good.clone(), args).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pass --deploy-key FILE"), "{stderr}");

    assert!(server.mutations().is_empty(), "{:?}", server.mutations());
    assert!(!state.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_as_json_changes_nothing() {
    let (a, _) = keys();
    let (repo, _) = cluster::repo(a);
    let work = tempfile::tempdir().expect("tempdir");
    let (server, kubeconfig) = cluster::start(work.path(), Duration::ZERO).await;
    let keys = keys_file(work.path());
    let state = work.path().join("recover-state.json");
    let args = apply_args(&kubeconfig, &state, &["--generate-deploy-key", "--dry-run", "-o", "json"]);
    let (out, stdout, stderr) = recover_blocking(repo.path().to_owned(), keys, args).await;
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is only the JSON");
    assert_eq!(json["preflight"]["verdict"], "ok");
    assert_eq!(json["apply"]["dry_run"], true);
    assert!(
        stderr.contains("plan:") && stderr.contains("apply GitRepository flux-system/flux-system"),
        "{stderr}"
    );
    assert!(
        server.get(&kube_apiserver_standin::ObjectRef::cluster("v1", "Namespace", "flux-system")).is_none()
    );
    assert!(!state.exists());
}

fn apply_args(kubeconfig: &Path, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--kubeconfig".to_owned(),
        kubeconfig.display().to_string(),
        "--state-file".to_owned(),
        state.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

#[test]
fn errors_name_the_problem() {
    let work = tempfile::tempdir().expect("tempdir");
    let good = keys_file(work.path());

    let (out, _, stderr) =
        recover(Path::new("git@github.com:alecsg77/elysium.git"), &good, &["--verify-only"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("use ssh://git@github.com/alecsg77/elysium.git"), "{stderr}");

    let (repo, _) = real_repo();
    let (out, _, stderr) = recover(repo.path(), &good, &["--verify-only", "--path", "clusters/prod"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("--path clusters/prod is not a directory in the repository; cluster directories found: clusters/kyrion"), "{stderr}");

    let (a, _) = keys();
    let bad = write_keys_file(
        work.path(),
        &keys_list(&[KeySecret { secret_type: "Opaque", ..KeySecret::active("k1", a) }]),
    );
    let (out, _, stderr) = recover(repo.path(), &bad, &["--verify-only"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("is not usable\n  caused by: document 1, item 1 (Secret k1): has type \"Opaque\""),
        "{stderr}"
    );
}

#[test]
fn help_shows_examples() {
    let out = Command::new(binary()).args(["recover", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for part in ["--verify-only", "--sealed-secrets-keys <FILE>", "Examples:", "kubectl get secret"] {
        assert!(help.contains(part), "{part:?} missing from:\n{help}");
    }
}
