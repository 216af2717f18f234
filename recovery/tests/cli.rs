//! `elysium-node recover` as a user runs it: the built binary (`cargo build -p
//! elysium-agent` first; `tests/run` does), its exit status, report and errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
        "   1. flux-system/flux-system\n   2. flux-system/infra-controllers\n   3. flux-system/infra-configs\n   4. flux-system/apps",
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

#[test]
fn applying_is_not_built_yet() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().expect("tempdir");
    let (out, stdout, stderr) = recover(repo.path(), &keys_file(work.path()), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("Verdict: OK"), "the preflight still runs and reports: {stdout}");
    assert!(stderr.contains("applying to the cluster is not built yet; use --verify-only"), "{stderr}");
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
