//! `recover`: bring a cluster back from its GitOps repository and a sealed-secrets key
//! backup. The preflight (the `elysium-recovery` crate) is built: `--verify-only` prints its
//! report. The apply phase (Kubernetes) is not built yet; without `--verify-only` the
//! preflight runs and the command then says so.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use elysium_recovery::repo::DeployKey;
use elysium_recovery::{PreflightOptions, Verdict};

use super::Output;

pub const RECOVER_HELP: &str = "\
The keys file is the backup of the old cluster's sealed-secrets keys, taken with
  kubectl get secret -n NAMESPACE -o yaml \\
      -l sealedsecrets.bitnami.com/sealed-secrets-key > main.key
(every key: the controller adds one every 30 days and never deletes old ones).

The preflight touches no cluster. It clones --branch (shallow), checks every key against its
certificate and the committed sealing certificate, trial-decrypts every SealedSecret in the
repository, finds the controller's namespace and name from its HelmRelease, the Flux bootstrap
manifests in PATH/flux-system/ and the Kustomizations' dependency order, and gives a verdict.
--force lets it pass when cluster-secret-vars (the Secret the Kustomizations substitute from)
does not open, or when the committed certificate matches no key although some SealedSecrets
open. Exit status with --verify-only: 0 when the verdict is OK (also when forced), 1 otherwise.

Examples:
  # Check a backup against the repository, changing nothing
  elysium-node recover --verify-only --repo ssh://git@github.com/alecsg77/elysium \\
      --deploy-key /root/flux-deploy-key --sealed-secrets-keys /root/main.key

  # A local clone, another cluster directory, the report as JSON
  elysium-node recover --verify-only --repo ~/src/elysium --path clusters/kyrion \\
      --sealed-secrets-keys main.key -o json";

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The GitOps repository: ssh://git@HOST/ORG/REPO (the form Flux accepts; not
    /// git@HOST:ORG/REPO), https://…, or a local path (a Git repository or a directory).
    #[arg(long, value_name = "URL_OR_PATH")]
    pub repo: String,
    /// Branch to clone and check.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// The cluster directory Flux syncs, relative to the repository root.
    #[arg(long, default_value = "clusters/kyrion")]
    pub path: String,
    /// The sealed-secrets key backup (`kubectl get secret -l … -o yaml`). Never printed.
    #[arg(long, value_name = "FILE")]
    pub sealed_secrets_keys: PathBuf,
    /// Private SSH key that reads the repository (Flux's deploy key); only its path is
    /// passed to git.
    #[arg(long, value_name = "FILE", conflicts_with = "generate_deploy_key")]
    pub deploy_key: Option<PathBuf>,
    /// Generate a new deploy key for Flux (apply phase). The preflight then clones with
    /// your own SSH agent and configuration.
    #[arg(long)]
    pub generate_deploy_key: bool,
    /// The cluster to restore into (apply phase).
    #[arg(long, value_name = "FILE", default_value = "/etc/rancher/k3s/k3s.yaml")]
    pub kubeconfig: PathBuf,
    /// Namespace of the sealed-secrets controller (default: from its HelmRelease).
    #[arg(long, value_name = "NS")]
    pub controller_namespace: Option<String>,
    /// Name of the sealed-secrets controller (default: from its HelmRelease).
    #[arg(long, value_name = "NAME")]
    pub controller_name: Option<String>,
    /// Go on past the checks that allow it (see below).
    #[arg(long)]
    pub force: bool,
    /// Print what would be applied; change nothing (apply phase).
    #[arg(long)]
    pub dry_run: bool,
    /// Run the preflight, print its report and stop.
    #[arg(long)]
    pub verify_only: bool,
    /// Report format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub async fn run(args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let opts = PreflightOptions {
        repo: args.repo.clone(),
        branch: args.branch.clone(),
        path: args.path.clone(),
        keys_file: args.sealed_secrets_keys.clone(),
        deploy_key: match (&args.deploy_key, args.generate_deploy_key) {
            (Some(f), _) => DeployKey::File(f.clone()),
            (None, true) => DeployKey::Generate,
            (None, false) => DeployKey::None,
        },
        controller_namespace: args.controller_namespace.clone(),
        controller_name: args.controller_name.clone(),
        force: args.force,
    };
    // git, file reads and RSA: off the async workers.
    let preflight = tokio::task::spawn_blocking(move || elysium_recovery::preflight(&opts))
        .await
        .context("the preflight stopped unexpectedly")??;

    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&preflight.report)?),
        Output::Table => print!("{}", preflight.report),
    }
    let verdict = preflight.report.verdict;
    if args.verify_only {
        return Ok(if verdict.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if verdict == Verdict::Failed {
        anyhow::bail!("the preflight failed (see the checks above); nothing was applied");
    }
    anyhow::bail!("applying to the cluster is not built yet; use --verify-only")
}
