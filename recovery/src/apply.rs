//! The apply half of `elysium-node recover`: from a passing [`Preflight`], put the
//! sealing keys and Flux's bootstrap into the cluster in the order of [`crate::plan`],
//! restart a sealed-secrets controller that was already running, follow Flux until the
//! cluster is healthy ([`crate::follow`]), and report.
//!
//! observe → plan → apply: everything local is read and checked first (bootstrap
//! manifests, deploy key, known_hosts), then the API server must answer, then the cluster
//! is looked at (its identity, the deploy-key Secret, which kinds it serves) and the plan
//! made; only then is anything applied. Every kind the plan needs must be served already
//! or come from a CRD in the plan, so a missing kind stops the run with nothing applied;
//! then [`crate::validate`] checks the server's version against the repository's Flux
//! and dry-runs what the server can judge, so a server that would refuse stops the run
//! with nothing applied too.
//!
//! Writes are server-side apply with field manager [`FIELD_MANAGER`] and `force`. Force is
//! right for recovery: the repository is the source of truth, and the objects may be owned
//! by another manager in a half-restored or re-bootstrapped cluster (a `kubectl apply`,
//! an earlier `flux bootstrap`); without force those fields would conflict (409) and stop
//! the recovery half-way. kustomize-controller itself applies with force right after and
//! takes the same fields over.
//!
//! Re-running picks up where a run stopped: the [`Ledger`] records each object applied with
//! the hash of its content, and an object whose content is recorded *and* that the cluster
//! still has is skipped, so nothing is applied twice. (Not "still managed by
//! [`FIELD_MANAGER`]": kustomize-controller takes the bootstrap objects' fields over with its
//! own forced apply, after which our managedFields entry is gone; re-applying them then
//! would be exactly the double apply to avoid.) An object deleted since is applied again.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use serde::{Deserialize as _, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::cluster::{self, Cluster, ClusterError, Kinds};
use crate::compat;
use crate::deploykey::{self, DeployKeyError};
use crate::flux::{BootstrapForm, NamespacedName};
use crate::follow::{self, FollowOutcome, Readiness, Targets};
use crate::keys::{SealingKey, TLS_CRT, TLS_KEY, TLS_SECRET_TYPE};
use crate::ledger::{self, Ledger, LedgerError, Loaded};
use crate::plan::{self, FIELD_MANAGER, Manifest, ManifestError, ObjectId, Phase, PlanInput, Step};
use crate::preflight::Preflight;
use crate::progress::{Event, Ui};
use crate::repo::DeployKey as DeployKeyOption;
use crate::validate::{self, ValidateError};

/// kubectl's restart annotation (`kubectl rollout restart`, k8s.io/kubectl
/// pkg/polymorphichelpers/objectrestarter.go): changing it rolls the pods.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The longest a CRD may take to become Established (it takes seconds).
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(300);
/// How often Flux's objects are read while following.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);

/// How the apply phase runs.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// `--kubeconfig` ([`cluster::DEFAULT_KUBECONFIG`]).
    pub kubeconfig: PathBuf,
    /// Where progress is kept ([`ledger::DEFAULT_PATH`]).
    pub state_file: PathBuf,
    /// `--deploy-key FILE`, `--generate-deploy-key`, or neither.
    pub deploy_key: DeployKeyOption,
    /// `--known-hosts FILE`.
    pub known_hosts: Option<PathBuf>,
    /// Print the plan and check it with server-side dry run; change nothing.
    pub dry_run: bool,
    /// Do not wait for the operator to confirm a generated deploy key.
    pub yes: bool,
    /// The whole run, following Flux included.
    pub timeout: Duration,
    pub poll_interval: Duration,
    /// `--flux-operator-manifest FILE|URL`: the Flux Operator's release manifest
    /// (`install.yaml`) for repositories the operator bootstraps. Without it, the release
    /// of the version the flux-operator HelmRelease pins is downloaded.
    pub flux_operator_manifest: Option<String>,
    /// `--skip-version-check`: go on when the server is older than the Kubernetes the
    /// repository's Flux supports. The server-side dry run still runs, so an object the
    /// server cannot take still stops the run before the first write.
    pub skip_version_check: bool,
}

impl ApplyOptions {
    pub fn new(kubeconfig: PathBuf) -> Self {
        ApplyOptions {
            kubeconfig,
            state_file: PathBuf::from(ledger::DEFAULT_PATH),
            deploy_key: DeployKeyOption::None,
            known_hosts: None,
            dry_run: false,
            yes: false,
            timeout: Duration::from_secs(30 * 60),
            poll_interval: DEFAULT_POLL,
            flux_operator_manifest: None,
            skip_version_check: false,
        }
    }
}

/// Why the apply phase stopped. Each says what was applied (nothing, or what the state
/// file records) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the preflight failed (see its checks); nothing was applied")]
    PreflightFailed,
    #[error(
        "the preflight found no sealed-secrets controller; pass --controller-namespace and --controller-name; nothing was applied"
    )]
    NoController,
    #[error("the repository has no Flux bootstrap to apply (looked for: {looked_for}); nothing was applied")]
    NoBootstrap { looked_for: String },
    #[error(
        "the repository is bootstrapped by the Flux Operator, but no flux-operator HelmRelease with a pinned \
         chart version is applied from it: pass --flux-operator-manifest FILE|URL (the operator's install.yaml); \
         nothing was applied"
    )]
    OperatorVersionUnknown,
    #[error(
        "could not download the Flux Operator manifest {url}; download it where there is access and pass --flux-operator-manifest FILE; nothing was applied"
    )]
    OperatorDownload {
        url: String,
        #[source]
        source: Box<reqwest::Error>,
    },
    #[error("the Flux Operator manifest {source_name} holds no {what}; is it the operator's install.yaml?")]
    OperatorManifest { source_name: String, what: &'static str },
    #[error(
        "FluxInstance {instance} did not become Ready in time ({state}); the objects applied are recorded in the state file: run again to go on"
    )]
    InstanceNotReady { instance: NamespacedName, state: String },
    #[error("waiting for FluxInstance {instance} failed; run again to go on")]
    InstanceWait {
        instance: NamespacedName,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("could not read the bootstrap manifest {file}")]
    ReadManifest {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}, document {document}, is not valid YAML")]
    Yaml {
        file: PathBuf,
        document: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    DeployKey(#[from] DeployKeyError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Refused by the checks against the cluster before the first write.
    #[error(transparent)]
    Refused(#[from] ValidateError),
    #[error(
        "the API server does not serve {api_version} {kind} ({id}, from {origin}), and no CRD in the bootstrap \
         defines it; nothing was applied"
    )]
    KindNotServed { api_version: String, kind: String, id: String, origin: String },
    #[error("{id} ({origin}) is a namespaced kind but has no metadata.namespace; nothing was applied")]
    NoNamespace { id: String, origin: String },
    #[error(
        "the GitRepository reads the Secret {secret}, which the cluster does not have: pass --deploy-key FILE \
         (the key the Git host knows) or --generate-deploy-key; nothing was applied"
    )]
    NoDeployKey { secret: NamespacedName },
    #[error("looking up {what} on {server} failed; nothing more was applied")]
    Lookup {
        what: String,
        server: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "applying {id} ({origin}) failed; {applied} object(s) before it are applied and recorded in {state}: \
         fix the cause and run the same command again to go on"
    )]
    Apply {
        id: Box<ObjectId>,
        origin: String,
        applied: usize,
        state: PathBuf,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "CRD {name} was not Established within {}; run again to go on",
        humantime::format_duration(*timeout)
    )]
    NotEstablished { name: String, timeout: Duration },
    #[error("waiting for CRD {name} to be Established failed; run again to go on")]
    Establish {
        name: String,
        #[source]
        source: Box<kube::runtime::wait::Error>,
    },
    #[error(
        "the deploy key was not confirmed: add it to {repository} with read access, then run the same command \
         again (the key stays in the Secret {secret}; it is not generated again)"
    )]
    NotConfirmed { repository: String, secret: NamespacedName },
    #[error("restarting Deployment {deployment} failed; run again to go on")]
    Restart {
        deployment: NamespacedName,
        #[source]
        source: Box<kube::Error>,
    },
}

/// The deploy key as reported: public half and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct DeployKeyReport {
    pub secret: String,
    pub public: String,
    pub fingerprint: String,
    /// `generated`, `from FILE`, `generated by an earlier run`, or `kept (already in the cluster)`.
    pub origin: String,
}

/// The outcome of the apply phase.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub server: String,
    pub dry_run: bool,
    pub state_file: PathBuf,
    pub applied: Vec<String>,
    /// Applied by an earlier run: skipped.
    pub already_applied: Vec<String>,
    pub deploy_key: Option<DeployKeyReport>,
    /// What was done about the running sealed-secrets controller.
    pub controller: String,
    /// `None` with `--dry-run`.
    pub flux: Option<FollowOutcome>,
    pub healthy: bool,
    /// What to do when not healthy.
    pub next_steps: Vec<String>,
}

/// Runs the apply phase. Call it only with a preflight whose verdict is OK.
#[tracing::instrument(skip_all, fields(kubeconfig = %opts.kubeconfig.display(), dry_run = opts.dry_run))]
pub async fn run(
    preflight: &Preflight,
    opts: &ApplyOptions,
    ui: &mut dyn Ui,
) -> Result<ApplyReport, ApplyError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    if !preflight.report.verdict.is_ok() {
        return Err(ApplyError::PreflightFailed);
    }
    let controller = preflight.controller.as_ref().ok_or(ApplyError::NoController)?;

    // Local inputs first: nothing needs the cluster to be found wrong.
    let (components, sync) = bootstrap_manifests(preflight, opts, ui).await?;
    let keys = key_manifests(&preflight.keys, &controller.namespace)?;
    let source = &preflight.bootstrap.source;
    let deploy_secret = source.secret.as_ref().map(|s| NamespacedName::new(&source.name.namespace, s));
    let mut notes = Vec::new();
    let given_key = match (&opts.deploy_key, &deploy_secret) {
        (DeployKeyOption::None, _) => None,
        (_, None) => {
            notes.push(format!(
                "the GitRepository {} has no secretRef: the deploy key option is not used",
                source.name
            ));
            None
        }
        (_, Some(secret)) if deploykey::ssh_host(&source.url).is_none() => {
            return Err(DeployKeyError::NotSsh { url: source.url.clone(), secret: secret.to_string() }.into());
        }
        (DeployKeyOption::File(p), Some(_)) => Some(Some(deploykey::DeployKey::from_file(p)?)),
        // Generated only if no earlier run did: decided once the ledger is read.
        (DeployKeyOption::Generate, Some(_)) => Some(None),
    };
    let known_hosts = match given_key {
        Some(_) => Some(deploykey::known_hosts(&source.url, opts.known_hosts.as_deref())?),
        None => None,
    };

    // The cluster: it must answer before anything is applied.
    let cluster = cluster::connect(&opts.kubeconfig).await?;
    ui.event(Event::Connected { server: cluster.server.clone(), version: cluster.version.clone() });
    for n in notes {
        ui.event(Event::Note(n));
    }
    let client = cluster.client.clone();
    let lookup = |what: &str| {
        let what = what.to_owned();
        let server = cluster.server.clone();
        move |source: kube::Error| ApplyError::Lookup { what, server, source: Box::new(source) }
    };
    let kube_system = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .map_err(lookup("namespace kube-system"))?;
    let scope = ledger::Scope {
        cluster_uid: kube_system.metadata.uid.unwrap_or_default(),
        server: cluster.server.clone(),
        commit: preflight.checkout.commit().map(str::to_owned),
    };
    let (mut ledger, loaded) = Ledger::load(&opts.state_file, scope)?;
    ui.event(Event::Ledger {
        message: match &loaded {
            Loaded::New => format!("no earlier run recorded in {}", opts.state_file.display()),
            Loaded::Resumed { applied } => {
                format!(
                    "resuming: {applied} object(s) applied by an earlier run ({})",
                    opts.state_file.display()
                )
            }
            Loaded::Discarded { why } => {
                format!("{} set aside: {why}; everything is applied again", opts.state_file.display())
            }
        },
    });

    // The deploy key: given, generated now, generated by an earlier run, or kept.
    let mut deploy_report = None;
    let mut deploy_manifest = None;
    let mut confirm = false;
    if let Some(secret) = &deploy_secret {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
        let live = secrets.get_opt(&secret.name).await.map_err(lookup(&format!("Secret {secret}")))?;
        let secret_id = secret_object_id(secret);
        let still_there = live.as_ref().is_some_and(|s| s.metadata.deletion_timestamp.is_none());
        match given_key {
            Some(Some(key)) => {
                deploy_report = Some(key_report(
                    secret,
                    &key.public,
                    &key.fingerprint,
                    match &key.origin {
                        deploykey::Origin::File(p) => format!("from {}", p.display()),
                        deploykey::Origin::Generated => "generated".into(),
                    },
                ));
                let body = key.secret(secret, known_hosts.as_deref().unwrap_or_default());
                deploy_manifest = Some(Manifest::new(Phase::DeployKey, "the deploy key".into(), body, true)?);
            }
            Some(None) if ledger.has_applied(&secret_id.key()) && still_there => {
                // An earlier run generated it (and perhaps the operator already added it).
                let public = live
                    .as_ref()
                    .and_then(|s| s.data.as_ref())
                    .and_then(|d| d.get(deploykey::IDENTITY_PUB))
                    .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
                    .unwrap_or_default();
                let fingerprint = ssh_key::PublicKey::from_openssh(&public)
                    .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
                    .unwrap_or_default();
                deploy_report =
                    Some(key_report(secret, &public, &fingerprint, "generated by an earlier run".into()));
                confirm = true;
            }
            Some(None) => {
                let key = deploykey::DeployKey::generate()?;
                deploy_report = Some(key_report(secret, &key.public, &key.fingerprint, "generated".into()));
                let body = key.secret(secret, known_hosts.as_deref().unwrap_or_default());
                deploy_manifest =
                    Some(Manifest::new(Phase::DeployKey, "a new deploy key".into(), body, true)?);
                confirm = true;
            }
            None if live.is_some() => {
                ui.event(Event::Note(format!(
                    "the cluster already has the Secret {secret}: kept as it is (no --deploy-key given)"
                )));
                let public = live
                    .as_ref()
                    .and_then(|s| s.data.as_ref())
                    .and_then(|d| d.get(deploykey::IDENTITY_PUB))
                    .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned());
                if let Some(public) = public {
                    let fingerprint = ssh_key::PublicKey::from_openssh(&public)
                        .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
                        .unwrap_or_default();
                    deploy_report = Some(key_report(
                        secret,
                        &public,
                        &fingerprint,
                        "kept (already in the cluster)".into(),
                    ));
                }
            }
            None => return Err(ApplyError::NoDeployKey { secret: secret.clone() }),
        }
    }

    let checkout = &preflight.checkout;
    let expected_revision = match (checkout.branch(), checkout.commit()) {
        (Some(b), Some(c)) if b == source.branch => Some(source.revision(c)),
        _ => {
            ui.event(Event::Note(format!(
                "the checked revision is not what the GitRepository syncs (branch {}): any revision is accepted",
                source.branch
            )));
            None
        }
    };
    let keys_hash =
        crate::keys::hex(&Sha256::digest(keys.iter().map(Manifest::hash).collect::<Vec<_>>().join(",")));
    let plan = plan::plan(PlanInput {
        components,
        sync,
        keys,
        key_namespace: controller.namespace.clone(),
        deploy_key: deploy_manifest,
        confirm_deploy_key: confirm,
        repository: source.url.clone(),
        controller: NamespacedName::new(&controller.namespace, &controller.name),
        source: source.name.clone(),
        kustomizations: preflight.order.clone(),
        expected_revision,
        instance: preflight.bootstrap.instance.as_ref().map(|i| i.name.clone()),
    });
    ui.event(Event::Plan { text: plan.to_string() });

    // Every kind must be served now or come from a CRD in the plan.
    let mut kinds = Kinds::default();
    let crd_kinds = plan.crd_kinds();
    for m in plan.manifests() {
        let namespaced =
            match kinds.resolve(&client, &m.id).await.map_err(lookup(&format!("the kind of {}", m.id)))? {
                Some(k) => k.namespaced,
                None => match crd_kinds.iter().find(|c| c.serves(&m.id)) {
                    Some(c) => c.namespaced,
                    None => {
                        return Err(ApplyError::KindNotServed {
                            api_version: m.id.api_version.clone(),
                            kind: m.id.kind.clone(),
                            id: m.id.to_string(),
                            origin: m.origin.clone(),
                        });
                    }
                },
            };
        if namespaced && m.id.namespace.is_none() {
            return Err(ApplyError::NoNamespace { id: m.id.to_string(), origin: m.origin.clone() });
        }
    }

    // Validation against the cluster before the first write, in --dry-run too
    // (crate::validate): a server too old for this Flux, or refusing an object, stops
    // the run here with the cluster and the ledger untouched.
    let requirement = match preflight.bootstrap.flux_version.as_deref() {
        Some(v) if opts.skip_version_check => {
            ui.event(Event::Note(format!(
                "--skip-version-check: the server's Kubernetes version is not checked against Flux {v}; \
                 the server-side dry run still is"
            )));
            None
        }
        Some(v) => {
            let r = compat::requirement(v);
            if r.is_none() {
                ui.event(Event::Note(format!(
                    "the bootstrap's Flux version {v:?} is not one whose Kubernetes minimum is known"
                )));
            }
            r
        }
        None => None,
    };
    validate::validate(&cluster, &mut kinds, &plan, requirement.as_ref(), ui).await?;
    // End of the validation.

    let mut run = Run {
        cluster: &cluster,
        kinds,
        ledger: &mut ledger,
        dry_run: opts.dry_run,
        existing_namespaces: BTreeSet::new(),
        applied: Vec::new(),
        already: Vec::new(),
    };
    if opts.dry_run {
        let list = Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(lookup("namespaces"))?;
        run.existing_namespaces = list.items.into_iter().filter_map(|n| n.metadata.name).collect();
    }

    let mut controller_note = String::from("not checked (dry run)");
    let mut flux = None;
    for step in &plan.steps {
        match step {
            Step::Apply(m) => run.apply(m, ui).await?,
            Step::WaitEstablished { crds } if !opts.dry_run => {
                ui.event(Event::WaitingEstablished { crds: crds.len() });
                let api: Api<CustomResourceDefinition> = Api::all(client.clone());
                let limit = ESTABLISH_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
                for name in crds {
                    match tokio::time::timeout(
                        limit,
                        await_condition(api.clone(), name, conditions::is_crd_established()),
                    )
                    .await
                    {
                        Err(_) => {
                            return Err(ApplyError::NotEstablished { name: name.clone(), timeout: limit });
                        }
                        Ok(Err(source)) => {
                            return Err(ApplyError::Establish {
                                name: name.clone(),
                                source: Box::new(source),
                            });
                        }
                        Ok(Ok(_)) => {}
                    }
                }
                ui.event(Event::Established { crds: crds.len() });
            }
            Step::WaitEstablished { .. } => {}
            Step::WaitInstance { instance } if !opts.dry_run => {
                let limit = deadline.saturating_duration_since(Instant::now());
                match follow::wait_instance(&client, instance, limit, opts.poll_interval, ui).await {
                    Ok(r) if r.is_ready() => {}
                    Ok(r) => {
                        return Err(ApplyError::InstanceNotReady {
                            instance: instance.clone(),
                            state: r.to_string(),
                        });
                    }
                    Err(source) => {
                        return Err(ApplyError::InstanceWait {
                            instance: instance.clone(),
                            source: Box::new(source),
                        });
                    }
                }
            }
            Step::WaitInstance { .. } => {}
            Step::ConfirmDeployKey { repository } => {
                if let Some(r) = &deploy_report {
                    ui.event(Event::DeployKey {
                        secret: deploy_secret.clone().unwrap_or_else(|| NamespacedName::new("", "")),
                        public: r.public.clone(),
                        fingerprint: r.fingerprint.clone(),
                        origin: r.origin.clone(),
                    });
                }
                if opts.dry_run || run.ledger.deploy_key_confirmed() {
                    continue;
                }
                if opts.yes {
                    ui.event(Event::Note(format!(
                        "--yes: not waiting for the deploy key to be added to {repository}; Flux cannot clone until it is"
                    )));
                } else if !ui.confirm(&format!(
                    "Add the deploy key above to {repository} (read access is enough), then confirm"
                )) {
                    return Err(ApplyError::NotConfirmed {
                        repository: repository.clone(),
                        secret: deploy_secret.clone().unwrap_or_else(|| NamespacedName::new("", "")),
                    });
                }
                run.ledger.record_deploy_key_confirmed()?;
            }
            Step::RestartController { deployment } => {
                controller_note = run.controller(deployment, &keys_hash, ui).await?;
            }
            Step::Follow { source, kustomizations, expected_revision } if !opts.dry_run => {
                let targets = Targets {
                    source: source.clone(),
                    kustomizations: kustomizations.clone(),
                    expected_revision: expected_revision.clone(),
                };
                flux = Some(follow::follow(&client, &targets, deadline, opts.poll_interval, ui).await);
            }
            Step::Follow { .. } => {}
        }
    }

    let Run { applied, already, .. } = run;
    let healthy = flux.as_ref().is_some_and(FollowOutcome::healthy);
    let mut report = ApplyReport {
        server: cluster.server.clone(),
        dry_run: opts.dry_run,
        state_file: opts.state_file.clone(),
        applied,
        already_applied: already,
        deploy_key: deploy_report,
        controller: controller_note,
        flux,
        healthy,
        next_steps: Vec::new(),
    };
    report.next_steps = next_steps(&report, preflight, opts);
    Ok(report)
}

fn key_report(secret: &NamespacedName, public: &str, fingerprint: &str, origin: String) -> DeployKeyReport {
    DeployKeyReport {
        secret: secret.to_string(),
        public: public.to_owned(),
        fingerprint: fingerprint.to_owned(),
        origin,
    }
}

fn secret_object_id(secret: &NamespacedName) -> ObjectId {
    ObjectId {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(secret.namespace.clone()),
        name: secret.name.clone(),
    }
}

/// The carrying out of a plan.
struct Run<'a> {
    cluster: &'a Cluster,
    kinds: Kinds,
    ledger: &'a mut Ledger,
    dry_run: bool,
    /// With `--dry-run`: namespaces that exist, so objects in the others are not sent.
    existing_namespaces: BTreeSet<String>,
    applied: Vec<String>,
    already: Vec<String>,
}

impl Run<'_> {
    fn lookup_err(&self, what: String) -> impl FnOnce(kube::Error) -> ApplyError + use<> {
        let server = self.cluster.server.clone();
        move |source: kube::Error| ApplyError::Lookup { what, server, source: Box::new(source) }
    }

    #[tracing::instrument(skip_all, fields(object = %m.id, phase = ?m.phase))]
    async fn apply(&mut self, m: &Manifest, ui: &mut dyn Ui) -> Result<(), ApplyError> {
        let client = &self.cluster.client;
        let Some(kind) = self
            .kinds
            .resolve(client, &m.id)
            .await
            .map_err(self.lookup_err(format!("the kind of {}", m.id)))?
        else {
            if self.dry_run {
                ui.event(Event::NotCheckable {
                    id: m.id.clone(),
                    why: "its CRD is applied by an earlier step".into(),
                });
                return Ok(());
            }
            return Err(ApplyError::KindNotServed {
                api_version: m.id.api_version.clone(),
                kind: m.id.kind.clone(),
                id: m.id.to_string(),
                origin: m.origin.clone(),
            });
        };
        let ns = if kind.namespaced { m.id.namespace.as_deref() } else { None };
        if self.dry_run && ns.is_some_and(|ns| !self.existing_namespaces.contains(ns)) {
            ui.event(Event::NotCheckable {
                id: m.id.clone(),
                why: format!("namespace {} is created by an earlier step", ns.unwrap_or_default()),
            });
            return Ok(());
        }
        let api = kind.api(client, ns);
        let key = m.id.key();
        if self.ledger.was_applied(&key, m.hash()) {
            let live = api.get_opt(&m.id.name).await.map_err(self.lookup_err(m.id.to_string()))?;
            if live.is_some_and(|o| o.metadata.deletion_timestamp.is_none()) {
                tracing::info!("already applied by an earlier run");
                ui.event(Event::AlreadyApplied { id: m.id.clone() });
                self.already.push(m.id.to_string());
                return Ok(());
            }
        }
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = self.dry_run;
        if let Err(source) = api.patch(&m.id.name, &params, &Patch::Apply(m.body())).await {
            return Err(ApplyError::Apply {
                id: Box::new(m.id.clone()),
                origin: m.origin.clone(),
                applied: self.applied.len() + self.already.len(),
                state: self.ledger.path().to_owned(),
                source: Box::new(source),
            });
        }
        if !self.dry_run {
            self.ledger.record_applied(key, m.hash().to_owned())?;
        }
        tracing::info!("applied");
        ui.event(Event::Applied { id: m.id.clone(), phase: m.phase, dry_run: self.dry_run });
        self.applied.push(m.id.to_string());
        Ok(())
    }

    /// Restarts the controller's Deployment if it exists, so it loads the restored keys
    /// (it reads them once, at start-up: docs/reference/sealed-secrets.md#start-up). The
    /// restart is kubectl's: the `restartedAt` annotation on the pod template, so the
    /// Deployment rolls its pods with its own strategy, whatever labels the chart or
    /// manifest gave them (deleting pods by label would need to know which). A Deployment
    /// that exists but is not available is restarted too: a pod that is up but not ready
    /// has still read its keys.
    #[tracing::instrument(skip_all, fields(deployment = %deployment))]
    async fn controller(
        &mut self,
        deployment: &NamespacedName,
        keys_hash: &str,
        ui: &mut dyn Ui,
    ) -> Result<String, ApplyError> {
        let api: Api<Deployment> = Api::namespaced(self.cluster.client.clone(), &deployment.namespace);
        let live = api
            .get_opt(&deployment.name)
            .await
            .map_err(self.lookup_err(format!("Deployment {deployment}")))?;
        let running =
            live.as_ref().is_some_and(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) > 0);
        if self.dry_run {
            return Ok(if running {
                format!("Deployment {deployment} is running: it would be restarted")
            } else {
                format!("Deployment {deployment} is not running: nothing to restart")
            });
        }
        if self.ledger.controller_done_for(keys_hash) {
            return Ok(format!("Deployment {deployment}: dealt with by an earlier run"));
        }
        let note = if running {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}});
            let params =
                PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
            api.patch(&deployment.name, &params, &Patch::Merge(&patch)).await.map_err(|source| {
                ApplyError::Restart { deployment: deployment.clone(), source: Box::new(source) }
            })?;
            ui.event(Event::ControllerRestarted { deployment: deployment.clone() });
            format!("Deployment {deployment} restarted so it loads the restored keys")
        } else {
            ui.event(Event::ControllerNotRunning { deployment: deployment.clone() });
            format!("Deployment {deployment} was not running: it loads the keys when Flux installs it")
        };
        self.ledger.record_controller_done(keys_hash.to_owned())?;
        Ok(note)
    }
}

/// The documents of one bootstrap file, in order.
fn read_manifests(root: &Path, file: &Path) -> Result<Vec<Manifest>, ApplyError> {
    let bytes = std::fs::read(root.join(file))
        .map_err(|source| ApplyError::ReadManifest { file: file.to_owned(), source })?;
    parse_manifests(&bytes, &file.display().to_string(), file)
}

fn parse_manifests(bytes: &[u8], origin: &str, file: &Path) -> Result<Vec<Manifest>, ApplyError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_slice(bytes).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| ApplyError::Yaml {
            file: file.to_owned(),
            document: i + 1,
            source,
        })?;
        if value.is_null() {
            continue;
        }
        out.push(Manifest::new(Phase::Components, format!("{origin}#{}", i + 1), value, false)?);
    }
    Ok(out)
}

/// The Flux Operator's release manifest for `version` (docs/reference/flux.md#flux-operator).
pub fn operator_manifest_url(version: &str) -> String {
    format!("{OPERATOR_RELEASES}/download/v{}/install.yaml", version.trim_start_matches('v'))
}
const OPERATOR_RELEASES: &str = "https://github.com/controlplaneio-fluxcd/flux-operator/releases";

/// What comes first and what syncs: gotk-components and gotk-sync for a classic bootstrap;
/// for the Flux Operator, its release manifest and then the FluxInstance, each labelled so
/// that helm-controller adopts them when Flux reconciles their HelmReleases.
async fn bootstrap_manifests(
    preflight: &Preflight,
    opts: &ApplyOptions,
    ui: &mut dyn Ui,
) -> Result<(Vec<Manifest>, Vec<Manifest>), ApplyError> {
    let b = &preflight.bootstrap;
    let root = preflight.checkout.root();
    match b.form {
        BootstrapForm::None => Err(ApplyError::NoBootstrap { looked_for: b.looked_for.join("; ") }),
        BootstrapForm::Classic => {
            let (Some(components), Some(sync)) = (&b.components, &b.sync) else {
                return Err(ApplyError::NoBootstrap { looked_for: b.looked_for.join("; ") });
            };
            Ok((read_manifests(root, components)?, read_manifests(root, sync)?))
        }
        BootstrapForm::FluxInstance | BootstrapForm::FluxInstanceChart => {
            let Some(instance) = &b.instance else {
                return Err(ApplyError::NoBootstrap { looked_for: b.looked_for.join("; ") });
            };
            let (name, bytes) = match &opts.flux_operator_manifest {
                Some(given) if given.starts_with("https://") || given.starts_with("http://") => {
                    (given.clone(), download(given).await?)
                }
                Some(file) => {
                    let p = PathBuf::from(file);
                    let bytes = std::fs::read(&p)
                        .map_err(|source| ApplyError::ReadManifest { file: p.clone(), source })?;
                    (file.clone(), bytes)
                }
                None => {
                    let version = b
                        .operator
                        .as_ref()
                        .and_then(|o| o.version.as_deref())
                        .ok_or(ApplyError::OperatorVersionUnknown)?;
                    let url = operator_manifest_url(version);
                    ui.event(Event::Note(format!(
                        "downloading the Flux Operator {version} manifest from {url}"
                    )));
                    (url.clone(), download(&url).await?)
                }
            };
            let mut components = parse_manifests(&bytes, &name, Path::new(&name))?;
            if !components.iter().any(|m| m.id.kind == "Deployment") {
                return Err(ApplyError::OperatorManifest { source_name: name, what: "Deployment" });
            }
            if !components.iter().filter_map(Manifest::crd_defines).any(|c| c.kind == "FluxInstance") {
                return Err(ApplyError::OperatorManifest { source_name: name, what: "FluxInstance CRD" });
            }
            if let Some(owner) = b.operator.as_ref().map(|o| &o.owner) {
                for m in &mut components {
                    if !m.is_namespace() {
                        *m = m.adopted_by(owner)?;
                    }
                }
            }
            let mut inst = Manifest::new(Phase::Sync, instance.origin.clone(), instance.body.clone(), false)?;
            if let Some(owner) = &instance.helm {
                inst = inst.adopted_by(owner)?;
            }
            Ok((components, vec![inst]))
        }
    }
}

async fn download(url: &str) -> Result<Vec<u8>, ApplyError> {
    let err = |source| ApplyError::OperatorDownload { url: url.to_owned(), source: Box::new(source) };
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(err)?;
    let resp = client.get(url).send().await.map_err(err)?.error_for_status().map_err(err)?;
    Ok(resp.bytes().await.map_err(err)?.to_vec())
}

/// The sealing keys as Secrets in the controller's namespace: name, labels (the `active`
/// label above all), type and the two PEMs exactly as backed up. Nothing server-side
/// (resourceVersion, uid, …) is carried over: [`SealingKey`] keeps none of it.
fn key_manifests(keys: &[SealingKey], namespace: &str) -> Result<Vec<Manifest>, ApplyError> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    keys.iter()
        .map(|k| {
            let body = json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": k.name(), "namespace": namespace, "labels": k.labels()},
                "type": TLS_SECRET_TYPE,
                "data": {TLS_CRT: b64(k.cert_pem()), TLS_KEY: b64(k.key_pem())},
            });
            Ok(Manifest::new(Phase::SealingKeys, "the key backup".into(), body, true)?)
        })
        .collect()
}

fn next_steps(r: &ApplyReport, preflight: &Preflight, opts: &ApplyOptions) -> Vec<String> {
    let mut steps = Vec::new();
    let Some(flux) = &r.flux else { return steps };
    let unopened: BTreeSet<String> =
        preflight.report.sealed_secrets.iter().filter(|s| !s.opened).map(|s| s.display_name()).collect();
    let cert =
        preflight.report.committed_certs.first().map_or("the sealing certificate", |c| c.file.as_str());
    for f in flux.sources.iter().chain(&flux.kustomizations) {
        let (kind, name) =
            (f.kind.to_ascii_lowercase(), f.name.split_once('/').map_or(f.name.as_str(), |(_, n)| n));
        match &f.readiness {
            Readiness::Ready { .. } => {}
            Readiness::Suspended => steps.push(format!("{}: flux resume {kind} {name}", f.label())),
            Readiness::Stalled { .. } | Readiness::NotReady { .. } => steps.push(format!(
                "{}: read the message above and `flux events --for {}/{name}`; fix the cause in the repository and push, then run again to follow",
                f.label(),
                f.kind
            )),
            Readiness::Missing | Readiness::Progressing { .. } => {}
        }
    }
    for f in &flux.helm_releases {
        if !f.readiness.is_ready() {
            steps.push(format!(
                "{}: `flux get helmreleases -A` and `kubectl describe helmrelease -n {}`",
                f.label(),
                f.name.replace('/', " ")
            ));
        }
    }
    for f in &flux.sealed_secrets {
        if f.readiness.is_ready() {
            continue;
        }
        if unopened.contains(&f.name) {
            steps.push(format!(
                "{}: no restored key opens it (the preflight said so); re-seal its values with kubeseal --cert {cert} and push",
                f.label()
            ));
        } else {
            steps.push(format!(
                "{}: `kubectl describe sealedsecret -n {}`",
                f.label(),
                f.name.replace('/', " ")
            ));
        }
    }
    if flux.timed_out {
        steps.push(format!(
            "Flux had not finished within {}: run the same command again to keep following (nothing is applied twice), \
             or watch with `flux get all -A`",
            humantime::format_duration(opts.timeout)
        ));
    }
    steps
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Recovery of {}{}",
            self.server,
            if self.dry_run { " (dry run: nothing changed)" } else { "" }
        );
        let verb = if self.dry_run { "would apply" } else { "applied" };
        let _ = writeln!(
            out,
            "  {verb} {} object(s); {} already applied by an earlier run",
            self.applied.len(),
            self.already_applied.len()
        );
        if !self.already_applied.is_empty() {
            let _ = writeln!(out, "  skipped (already done): {}", self.already_applied.join(", "));
        }
        if let Some(k) = &self.deploy_key {
            let _ = writeln!(
                out,
                "  deploy key   Secret {} ({}), {}\n               {}",
                k.secret, k.origin, k.fingerprint, k.public
            );
        }
        let _ = writeln!(out, "  controller   {}", self.controller);
        let _ = writeln!(out, "  progress     {}", self.state_file.display());
        if let Some(flux) = &self.flux {
            for (title, items) in [
                ("Sources", &flux.sources),
                ("Kustomizations", &flux.kustomizations),
                ("HelmReleases", &flux.helm_releases),
                ("SealedSecrets", &flux.sealed_secrets),
            ] {
                let ready = items.iter().filter(|i| i.readiness.is_ready()).count();
                let _ = writeln!(out, "\n{title}: {ready} of {} ready", items.len());
                for i in items {
                    let mark = if i.readiness.is_ready() { "  ok  " } else { " FAIL " };
                    let _ = writeln!(out, "  [{mark}] {}  {}", i.name, i.readiness);
                }
            }
            if !flux.notes.is_empty() {
                out.push_str("\nNotes\n");
                for n in &flux.notes {
                    let _ = writeln!(out, "  - {n}");
                }
            }
        }
        if !self.next_steps.is_empty() {
            out.push_str("\nWhat to do\n");
            for s in &self.next_steps {
                let _ = writeln!(out, "  - {s}");
            }
        }
        let verdict = match (&self.flux, self.healthy) {
            (None, _) => "dry run done: nothing was changed",
            (Some(_), true) => "HEALTHY: every Kustomization, HelmRelease and SealedSecret is ready",
            (Some(f), false) if f.timed_out => "NOT HEALTHY: Flux had not finished in time",
            (Some(_), false) => "NOT HEALTHY",
        };
        let _ = writeln!(out, "\nResult: {verdict}");
        f.write_str(&out)
    }
}
