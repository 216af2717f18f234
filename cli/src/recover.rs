//! `recover`: bring a cluster back from its GitOps repository and a sealed-secrets key
//! backup. Runs the preflight (the `elysium-recovery` crate); `--verify-only` prints its
//! report and stops. Otherwise the apply phase restores the keys and Flux over the
//! Kubernetes API and follows Flux until the cluster is healthy. This file parses flags,
//! draws progress and picks the exit status; the work is the library's.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use elysium_recovery::backup::SecretString;
use elysium_recovery::follow::Readiness;
use elysium_recovery::repo::DeployKey;
use elysium_recovery::{
    AgeOptions, ApplyOptions, Event, KeySource, PassphraseSource, PreflightOptions, Ui, Verdict,
};

use super::Output;

/// Exit status when everything was applied but the cluster is not healthy (yet).
const EXIT_NOT_HEALTHY: u8 = 3;
/// Exit status after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

pub const RECOVER_HELP: &str = "\
The keys file is the backup of the old cluster's sealed-secrets keys, taken with
  kubectl get secret -n NAMESPACE -o yaml \\
      -l sealedsecrets.bitnami.com/sealed-secrets-key > main.key
(every key: the controller adds one every 30 days and never deletes old ones), or that
file age-encrypted (`age -e -r age1… main.key > main.key.age`, binary or --armor): pass
--age-identity FILE with the identity it was encrypted to. A backup encrypted with a
passphrase (`age -p`), and an identity file that is, ask for the passphrase on the
terminal; it is never read from arguments or the environment.

The preflight touches no cluster. It clones --branch (shallow), checks every key against its
certificate and the committed sealing certificate, trial-decrypts every SealedSecret in the
repository, follows the cluster PATH the way kustomize does (resources:, wrapper directories)
to every Flux Kustomization and what it applies, finds the controller's namespace and name from
its HelmRelease, how Flux is bootstrapped (PATH/flux-system/ from `flux bootstrap`, a
FluxInstance object, or the flux-instance HelmRelease of the Flux Operator) and the
Kustomizations' dependency order, and gives a verdict. --force lets it pass when a Secret the
Kustomizations substitute from (cluster-secret-vars) or a wait: true layer's HelmRelease reads
values from does not open, or when the committed certificate matches no key although some
SealedSecrets open.

Then, unless --verify-only, it applies to the cluster of --kubeconfig (checked to answer
first; nothing is applied otherwise), with server-side apply as field manager elysium-node:
  1. the namespaces, then the keys as Secrets in the controller's namespace, before any
     sealed-secrets controller starts (it reads its keys once, at start-up);
  2. PATH/flux-system/gotk-components.yaml (CRDs first, once Established the rest), the
     deploy-key Secret the GitRepository reads, then gotk-sync.yaml; for the Flux Operator,
     its release manifest (--flux-operator-manifest, labelled so that helm-controller adopts
     it), the deploy key, then the FluxInstance, waiting until it is Ready (the cluster must
     reach the operator's registry, ghcr.io/controlplaneio-fluxcd, or a mirror);
  3. a restart of the sealed-secrets controller if it was already running;
  4. it follows the GitRepository and every Kustomization in dependency order, then the
     HelmReleases and SealedSecrets, and reports.
The deploy key is --deploy-key FILE (the key the Git host already knows), or
--generate-deploy-key: a new ECDSA P-384 key whose public half is printed to add to the Git
host before Flux starts (--yes does not wait). known_hosts is --known-hosts FILE, or GitHub's
published keys for github.com. Progress is kept in --state-file: run the same command again
after an interruption and it goes on where it stopped; nothing is applied twice.

Exit status: with --verify-only, 0 when the verdict is OK (also when forced), 1 otherwise.
Else 0 when the cluster is healthy (or --dry-run found nothing wrong), 1 on an error (the
message says what was applied and what to do), 3 when everything was applied but Flux is
not healthy (the report says why), 130 when interrupted.

Examples:
  # Check a backup against the repository, changing nothing
  elysium-node recover --verify-only --repo ssh://git@github.com/alecsg77/elysium \\
      --deploy-key /root/flux-deploy-key --sealed-secrets-keys /root/main.key

  # A local clone, another cluster directory, the report as JSON
  elysium-node recover --verify-only --repo ~/src/elysium --path clusters/kyrion \\
      --sealed-secrets-keys main.key -o json

  # What would be applied to this node's K3s
  elysium-node recover --dry-run --repo ssh://git@github.com/alecsg77/elysium \\
      --deploy-key /root/flux-deploy-key --sealed-secrets-keys /root/main.key

  # An age-encrypted backup (from `elysium-node keys export --encrypt-to age1…`)
  elysium-node recover --verify-only --repo ~/src/elysium \\
      --sealed-secrets-keys sealed-secrets-keys.yaml.age --age-identity ~/.config/age/keys.txt

  # Recover, with a new deploy key
  elysium-node recover --repo ssh://git@github.com/alecsg77/elysium \\
      --generate-deploy-key --sealed-secrets-keys /root/main.key";

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
    /// The sealed-secrets key backup (`kubectl get secret -l … -o yaml`), plaintext or
    /// age-encrypted (binary or armored; told apart by content). Never printed.
    #[arg(long, value_name = "FILE")]
    pub sealed_secrets_keys: PathBuf,
    /// age identity file that opens an age-encrypted backup, like `age -d -i FILE`
    /// (AGE-SECRET-KEY-1… lines; a passphrase-encrypted identity file asks for its
    /// passphrase on the terminal). Repeatable. A backup made with `age -p` needs none:
    /// its passphrase is asked on the terminal.
    #[arg(long, value_name = "FILE")]
    pub age_identity: Vec<PathBuf>,
    /// Private SSH key that reads the repository (Flux's deploy key); only its path is
    /// passed to git.
    #[arg(long, value_name = "FILE", conflicts_with = "generate_deploy_key")]
    pub deploy_key: Option<PathBuf>,
    /// Generate a new deploy key for Flux (ECDSA P-384), print its public key to add to
    /// the Git host and wait for confirmation. The preflight then clones with your own
    /// SSH agent and configuration.
    #[arg(long)]
    pub generate_deploy_key: bool,
    /// The cluster to restore into (K3s writes its admin kubeconfig here).
    #[arg(long, value_name = "FILE", default_value = elysium_recovery::cluster::DEFAULT_KUBECONFIG)]
    pub kubeconfig: PathBuf,
    /// known_hosts for the Git host of the GitRepository (ssh-keyscan HOST, checked);
    /// github.com's published keys are built in.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Where progress is kept, so that a second run goes on where the first stopped
    /// (mode 0600; names and hashes only).
    #[arg(long, value_name = "FILE", default_value = elysium_recovery::ledger::DEFAULT_PATH)]
    pub state_file: PathBuf,
    /// How long to wait in all, following Flux included.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Do not wait for confirmation that a generated deploy key is on the Git host.
    #[arg(long)]
    pub yes: bool,
    /// Namespace of the sealed-secrets controller (default: from its HelmRelease).
    #[arg(long, value_name = "NS")]
    pub controller_namespace: Option<String>,
    /// Name of the sealed-secrets controller (default: from its HelmRelease).
    #[arg(long, value_name = "NAME")]
    pub controller_name: Option<String>,
    /// Go on past the checks that allow it (see below).
    #[arg(long)]
    pub force: bool,
    /// Print the ordered plan and check it with server-side dry run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the preflight, print its report and stop.
    #[arg(long)]
    pub verify_only: bool,
    /// For a repository the Flux Operator bootstraps: the operator's release manifest
    /// (`install.yaml`), a file (offline) or an https:// URL. Default: the release of the
    /// version the flux-operator HelmRelease pins, from the operator's GitHub releases.
    #[arg(long, value_name = "FILE|URL")]
    pub flux_operator_manifest: Option<String>,
    /// Go on when the cluster's Kubernetes is older than the repository's Flux supports
    /// (the server-side dry run of every object still runs before the first write).
    #[arg(long)]
    pub skip_version_check: bool,
    /// Report format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub async fn run(args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let opts = PreflightOptions {
        repo: args.repo.clone(),
        branch: args.branch.clone(),
        path: args.path.clone(),
        keys: KeySource::File {
            path: args.sealed_secrets_keys.clone(),
            age: AgeOptions {
                identities: args.age_identity.clone(),
                passphrase: TerminalPassphrase::if_terminal(),
            },
        },
        deploy_key: deploy_key(&args),
        controller_namespace: args.controller_namespace.clone(),
        controller_name: args.controller_name.clone(),
        force: args.force,
    };
    // git, file reads and RSA: off the async workers.
    let preflight = tokio::task::spawn_blocking(move || elysium_recovery::preflight(&opts))
        .await
        .context("the preflight stopped unexpectedly")??;

    let json = matches!(args.output, Output::Json);
    if args.verify_only {
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&preflight.report)?),
            Output::Table => print!("{}", preflight.report),
        }
        let ok = preflight.report.verdict.is_ok();
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if !json {
        print!("{}", preflight.report);
    }
    if preflight.report.verdict == Verdict::Failed {
        if json {
            println!("{}", serde_json::to_string_pretty(&preflight.report)?);
        }
        anyhow::bail!("the preflight failed (see the checks above); nothing was applied");
    }

    let apply = ApplyOptions {
        kubeconfig: args.kubeconfig.clone(),
        state_file: args.state_file.clone(),
        deploy_key: deploy_key(&args),
        known_hosts: args.known_hosts.clone(),
        dry_run: args.dry_run,
        yes: args.yes,
        timeout: args.timeout,
        poll_interval: elysium_recovery::apply::DEFAULT_POLL,
        flux_operator_manifest: args.flux_operator_manifest.clone(),
        skip_version_check: args.skip_version_check,
    };
    let mut ui = TerminalUi::new(json);
    let result = tokio::select! {
        r = elysium_recovery::apply::run(&preflight, &apply, &mut ui) => r,
        () = super::shutdown_signal() => {
            ui.finish();
            eprintln!(
                "interrupted: what was applied is recorded in {}; run the same command again to go on",
                args.state_file.display()
            );
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    ui.finish();
    let report = result?;
    if json {
        let both = serde_json::json!({"preflight": preflight.report, "apply": report});
        println!("{}", serde_json::to_string_pretty(&both)?);
    } else {
        print!("\n{report}");
    }
    Ok(if report.healthy || report.dry_run { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_HEALTHY) })
}

/// Asks for age passphrases on the terminal, without echo (rpassword reads /dev/tty).
/// Only offered when standard input is a terminal: otherwise nobody is there to answer,
/// and the library says so instead of hanging.
#[derive(Debug)]
struct TerminalPassphrase;

impl TerminalPassphrase {
    fn if_terminal() -> Option<std::sync::Arc<dyn PassphraseSource>> {
        std::io::stdin().is_terminal().then(|| std::sync::Arc::new(TerminalPassphrase) as _)
    }
}

impl PassphraseSource for TerminalPassphrase {
    fn passphrase(&self, prompt: &str) -> Option<SecretString> {
        let typed = zeroize::Zeroizing::new(rpassword::prompt_password(prompt).ok()?);
        // Trailing CR from a Windows-style terminal is not part of the passphrase.
        let trimmed = typed.trim_end_matches(['\r', '\n']);
        (!trimmed.is_empty()).then(|| SecretString::from(trimmed))
    }
}

fn deploy_key(args: &RecoverArgs) -> DeployKey {
    match (&args.deploy_key, args.generate_deploy_key) {
        (Some(f), _) => DeployKey::File(f.clone()),
        (None, true) => DeployKey::Generate,
        (None, false) => DeployKey::None,
    }
}

/// Draws the apply phase's events: plain lines, or on a terminal a spinner per Flux
/// object while following. With `-o json` everything goes to stderr so stdout is the JSON.
struct TerminalUi {
    to_stderr: bool,
    bars: Option<indicatif::MultiProgress>,
    spinners: Vec<(String, indicatif::ProgressBar)>,
}

impl TerminalUi {
    fn new(json: bool) -> Self {
        let tty = if json { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
        let bars = tty.then(|| {
            let target = if json {
                indicatif::ProgressDrawTarget::stderr()
            } else {
                indicatif::ProgressDrawTarget::stdout()
            };
            indicatif::MultiProgress::with_draw_target(target)
        });
        TerminalUi { to_stderr: json, bars, spinners: Vec::new() }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            // Printed above the spinners, which stay at the bottom.
            Some(m) if !self.spinners.is_empty() => {
                let _ = m.println(text);
            }
            _ if self.to_stderr => eprintln!("{text}"),
            _ => println!("{text}"),
        }
    }

    fn status(&mut self, what: String, readiness: &Readiness) {
        let Some(m) = &self.bars else {
            self.line(&format!("{what}: {readiness}"));
            return;
        };
        // Ready=False is shown at once, as a line of its own that stays.
        if matches!(readiness, Readiness::NotReady { .. } | Readiness::Stalled { .. } | Readiness::Suspended)
        {
            let _ = m.println(format!("{what}: {readiness}"));
        }
        let bar = match self.spinners.iter().find(|(w, _)| *w == what) {
            Some((_, b)) => b.clone(),
            None => {
                let b = m.add(indicatif::ProgressBar::new_spinner());
                b.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                b.enable_steady_tick(Duration::from_millis(120));
                self.spinners.push((what.clone(), b.clone()));
                b
            }
        };
        if readiness.is_ready() {
            bar.finish_with_message(format!("✓ {what}: {readiness}"));
        } else {
            bar.set_message(format!("{what}: {readiness}"));
        }
    }

    fn finish(&mut self) {
        for (_, b) in self.spinners.drain(..) {
            if !b.is_finished() {
                b.abandon();
            }
        }
    }
}

impl Ui for TerminalUi {
    fn event(&mut self, event: Event) {
        match event {
            Event::Status { what, readiness } => self.status(what, &readiness),
            other => self.line(&other.to_string()),
        }
    }

    fn confirm(&mut self, question: &str) -> bool {
        eprint!("{question}: press Enter to go on (Ctrl-C to stop) ");
        let mut answer = String::new();
        // Blocks this worker until the operator answers; nothing else is running meanwhile.
        match std::io::stdin().lock().read_line(&mut answer) {
            Ok(n) if n > 0 => true,
            _ => {
                eprintln!("\nno answer (standard input is closed): pass --yes to go on without waiting");
                false
            }
        }
    }
}
