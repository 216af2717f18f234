//! The preflight: everything that can be known before touching a cluster. Reads the key
//! backup and the repository, trial-decrypts every SealedSecret, finds the controller and
//! the bootstrap manifests, orders the Kustomizations, and judges whether recovery can
//! work. Returns the report and the parsed pieces the apply phase needs.
//!
//! What `--force` may override, and why:
//! - a substitution Secret (`cluster-secret-vars`) that no key opens: the operator may know
//!   the Secret will be recreated by hand;
//! - a committed sealing certificate that no backup key matches, **only if** some
//!   SealedSecret in the repository opened with the backup keys. That proves the keys are
//!   this cluster's (a stale certificate, or a backup missing the newest key, whose
//!   SealedSecrets are reported one by one). If nothing opens, the backup is most likely
//!   another cluster's and restoring it achieves nothing, so that stays fatal.
//!
//! No active key, an unknown controller location, and every structural problem (bad keys
//! file, wrong path, missing bootstrap, dependency cycles) are never overridable.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use std::time::{Duration, SystemTime};

use base64::Engine as _;

use crate::backup::{self, BackupError, KeySource};
use crate::controller::{self, ControllerLocation, Found};
use crate::flux::{
    self, Bootstrap, BootstrapForm, FluxError, Graph, Kustomization, NamespacedName, SubstituteRef,
};
use crate::keys::{self, SealingKey};
use crate::manifests::{self, Object, Tree};
use crate::repo::{self, Checkout, DeployKey, RepoError, RepoSource};
use crate::report::{
    CertReport, Check, KeyReport, PreflightReport, RepositoryReport, SealedSecretReport, Status, Verdict,
};
use crate::sealed::{self, Scope};

/// The SealedSecret CRD (bitnami-labs/sealed-secrets `GroupName`).
pub const SEALED_SECRETS_GROUP: &str = "bitnami.com";
/// kustomize's own Kustomization (`kustomization.yaml`), whose `namespace:` a SealedSecret
/// without one inherits.
const KUSTOMIZE_CONFIG_GROUP: &str = "kustomize.config.k8s.io";
/// The controller's default `--key-renew-period` (30 days): a newest key older than this
/// makes it generate a new one at start-up.
pub const KEY_RENEW_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);

/// What `elysium-node recover` was asked to do, minus the cluster side.
#[derive(Debug, Clone)]
pub struct PreflightOptions {
    /// `ssh://…`, `https://…` or a local path.
    pub repo: String,
    pub branch: String,
    /// The cluster directory Flux syncs (`clusters/kyrion`).
    pub path: String,
    /// The key backup (`kubectl get secret -l … -o yaml`, plaintext or age-encrypted),
    /// or keys already parsed.
    pub keys: KeySource,
    pub deploy_key: DeployKey,
    pub controller_namespace: Option<String>,
    pub controller_name: Option<String>,
    pub force: bool,
}

/// Problems that stop the preflight before there is anything to report.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(
        "no sealed-secrets keys from {origin}: the vault (or backup) holds none to check the repository against"
    )]
    NoKeys { origin: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("--path {path:?} must be a relative directory inside the repository, without `..`")]
    BadPath { path: String },
    #[error("--path {path} is not a directory in the repository; {}", available_list(available))]
    ClusterPath { path: String, available: Vec<String> },
    #[error("could not read the checked-out repository at {root}")]
    Read {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Flux(#[from] FluxError),
}

fn available_list(a: &[String]) -> String {
    if a.is_empty() {
        "the repository has no clusters/ directory".to_owned()
    } else {
        format!("cluster directories found: {}", a.join(", "))
    }
}

/// The preflight's outcome: the report, and what the apply phase works from.
#[derive(Debug)]
pub struct Preflight {
    pub report: PreflightReport,
    /// Every key of the backup, to restore as Secrets in the controller's namespace.
    pub keys: Vec<SealingKey>,
    /// The repository on disk (a clone is deleted when this is dropped).
    pub checkout: Checkout,
    /// Paths are relative to `checkout.root()`.
    pub bootstrap: Bootstrap,
    /// `None` only when the verdict failed on it.
    pub controller: Option<ControllerLocation>,
    pub kustomizations: Vec<Kustomization>,
    /// Dependencies first; the root sync Kustomization first of all.
    pub order: Vec<NamespacedName>,
}

/// Runs the preflight. Blocking (git, file reads, RSA): call it from a blocking thread.
pub fn run(opts: &PreflightOptions) -> Result<Preflight, PreflightError> {
    // The keys first: no network needed to find out the backup is unusable.
    let (keys, keys_origin) = backup::load(&opts.keys)?;
    tracing::debug!(keys = keys.len(), origin = %keys_origin, "sealing keys read");
    if keys.is_empty() {
        return Err(PreflightError::NoKeys { origin: keys_origin });
    }

    let path = normalize_path(&opts.path)?;
    let source = RepoSource::parse(&opts.repo)?;
    let checkout = repo::fetch(&source, &opts.branch, &opts.deploy_key)?;
    let root = checkout.root().to_owned();
    if !root.join(&path).is_dir() {
        return Err(PreflightError::ClusterPath { path, available: flux::cluster_dirs(&root) });
    }
    let tree = Tree::load(&root).map_err(|source| PreflightError::Read { root: root.clone(), source })?;
    tracing::info!(objects = tree.objects.len(), skipped = tree.skipped.len(), "repository read");

    // The layers first (bootstrap detection looks at what they apply), with the default
    // sync name; again if the bootstrap names its source otherwise.
    let mut graph = flux::graph(&root, &tree, &path, flux::BOOTSTRAP_DIR, flux::BOOTSTRAP_DIR)?;
    let bootstrap = flux::bootstrap(&root, &path, &tree, &graph)?;
    if bootstrap.source.name.name != flux::BOOTSTRAP_DIR {
        graph = flux::graph(
            &root,
            &tree,
            &path,
            &bootstrap.kustomization.namespace,
            &bootstrap.source.name.name,
        )?;
    }
    if bootstrap.form != BootstrapForm::Classic {
        graph.add_root(&bootstrap.kustomization, &path);
    }
    let kustomizations = graph.kustomizations();
    let order = flux::order(&kustomizations, &bootstrap.kustomization, &path)?;
    let reachable = graph.reachable();
    tracing::info!(
        form = ?bootstrap.form,
        layers = graph.layers.len(),
        objects = reachable.len(),
        "cluster path followed"
    );

    let mut checks = Vec::new();
    let mut notes: Vec<String> = tree
        .skipped
        .iter()
        .map(|s| format!("{} skipped: not valid YAML ({})", s.file.display(), s.reason))
        .collect();
    notes.extend(bootstrap.notes.iter().cloned());
    notes.extend(graph.notes.iter().cloned());
    checks.push(bootstrap_check(&bootstrap));
    let broken: Vec<String> = graph
        .layers
        .iter()
        .filter_map(|l| {
            Some(format!("{} ({}): {}", l.kustomization.name, l.kustomization.path, l.problem.as_ref()?))
        })
        .collect();
    if !broken.is_empty() {
        checks.push(check(
            "layers",
            Status::Fail,
            format!(
                "kustomize-controller cannot build {} Kustomization(s), so they and everything that depends on \
                 them never reconcile: {}",
                broken.len(),
                broken.join("; ")
            ),
        ));
    }

    // Keys.
    let loaded: Vec<&SealingKey> = keys.iter().filter(|k| k.is_loaded_by_controller()).collect();
    let newest = loaded.iter().max_by_key(|k| k.not_before()).map(|k| k.name().to_owned());
    checks.push(if loaded.is_empty() {
        check(
            "keys",
            Status::Fail,
            format!(
                "{} key(s), none the controller would load: it loads keys labelled {}={} (or named {})",
                keys.len(),
                keys::KEY_LABEL,
                keys::ACTIVE,
                keys::LEGACY_KEY_NAME
            ),
        )
    } else {
        check(
            "keys",
            Status::Pass,
            format!(
                "{} key(s), each private key matches its certificate; {} loaded by the controller",
                keys.len(),
                loaded.len()
            ),
        )
    });
    if let Some(newest) = loaded.iter().max_by_key(|k| k.not_before()) {
        let age = SystemTime::now().duration_since(newest.not_before()).unwrap_or_default();
        if age > KEY_RENEW_PERIOD {
            notes.push(format!(
                "the newest key ({}) is {} days old, past the controller's 30-day renewal period: it will \
                 generate a new key at start-up and seal new secrets with it; fetch the new certificate \
                 (kubeseal --fetch-cert) and commit it after recovery",
                newest.name(),
                age.as_secs() / 86_400
            ));
        }
    }

    // Trial decryption of every SealedSecret.
    let mut opened_values = vec![0usize; keys.len()];
    let mut key_order = KeyOrder::new(&keys);
    // Those the layers apply, in the namespace the builds give them; then any other in the
    // repository (another cluster's, or not applied at all), in their own.
    let applied: BTreeSet<usize> = reachable.iter().map(|i| i.index).collect();
    let mut sealed_reports: Vec<SealedSecretReport> = reachable
        .iter()
        .filter(|i| tree.objects[i.index].is(SEALED_SECRETS_GROUP, "SealedSecret"))
        .map(|i| {
            let o = &tree.objects[i.index];
            let layer = graph.layer_of(i.index).map(|l| l.kustomization.name.to_string());
            let mut r = try_open(
                o,
                i.namespace.clone(),
                &tree,
                &keys,
                &mut key_order,
                &mut opened_values,
                &mut notes,
            );
            r.layer = layer.or_else(|| Some(bootstrap.kustomization.to_string()));
            r
        })
        .collect();
    let others = tree
        .objects
        .iter()
        .enumerate()
        .filter(|(i, o)| !applied.contains(i) && o.is(SEALED_SECRETS_GROUP, "SealedSecret"))
        .map(|(_, o)| o)
        .collect::<Vec<_>>();
    for o in others {
        let r = try_open(o, None, &tree, &keys, &mut key_order, &mut opened_values, &mut notes);
        sealed_reports.push(r);
    }
    let any_opened = sealed_reports.iter().any(|s| s.opened && s.values > 0);
    let not_opened: Vec<String> =
        sealed_reports.iter().filter(|s| !s.opened).map(|s| s.display_name()).collect();
    tracing::info!(
        sealed_secrets = sealed_reports.len(),
        not_opened = not_opened.len(),
        "trial decryption done"
    );
    checks.push(if not_opened.is_empty() {
        check("sealed-secrets", Status::Pass, format!("all {} SealedSecrets open", sealed_reports.len()))
    } else {
        check(
            "sealed-secrets",
            Status::Warn,
            format!(
                "{} of {} SealedSecrets do not open with the backup keys and will stay sealed (each is listed above)",
                not_opened.len(),
                sealed_reports.len(),
            ),
        )
    });

    // Committed sealing certificates.
    let cert_files = manifests::committed_sealing_certs(&root)
        .map_err(|source| PreflightError::Read { root: root.clone(), source })?;
    let mut cert_reports = Vec::new();
    let mut key_certs: Vec<Vec<String>> = vec![Vec::new(); keys.len()];
    for file in &cert_files {
        let shown = file.display().to_string();
        let parsed = std::fs::read(root.join(file))
            .map_err(|e| e.to_string())
            .and_then(|b| keys::parse_pem_certificate(&b));
        let mut rep = CertReport { file: shown.clone(), not_before: None, matched_by: None, problem: None };
        match parsed {
            Err(problem) => rep.problem = Some(problem),
            Ok(cert) => {
                rep.not_before = Some(humantime::format_rfc3339_seconds(cert.not_before).to_string());
                match &cert.public {
                    None => rep.problem = Some("its public key is not RSA".into()),
                    Some(public) => {
                        for (i, k) in keys.iter().enumerate() {
                            if k.matches(public) {
                                key_certs[i].push(shown.clone());
                                if k.is_loaded_by_controller() || rep.matched_by.is_none() {
                                    rep.matched_by = Some(k.name().to_owned());
                                }
                            }
                        }
                    }
                }
            }
        }
        cert_reports.push(rep);
    }
    checks.push(cert_check(&cert_reports, &keys, any_opened, opts.force));

    // The Secrets the Kustomizations substitute from.
    let mut subs: BTreeSet<&SubstituteRef> = BTreeSet::new();
    for k in &kustomizations {
        subs.extend(k.substitute_from.iter());
    }
    for sub in subs {
        checks.push(substitution_check(sub, &sealed_reports, opts.force));
    }
    // The Secrets HelmReleases read their values from.
    for c in values_checks(&graph, &tree, &sealed_reports, &order, opts.force) {
        checks.push(c);
    }

    // The controller.
    let (controller, controller_check) = controller_location(
        controller::find(&tree, &reachable),
        opts.controller_namespace.as_deref(),
        opts.controller_name.as_deref(),
    );
    checks.push(controller_check);
    if let Some(c) = &controller {
        let elsewhere: BTreeSet<&str> =
            keys.iter().filter_map(|k| k.namespace()).filter(|ns| *ns != c.namespace).collect();
        if !elsewhere.is_empty() {
            notes.push(format!(
                "the keys were backed up from namespace {}; they are restored into {}, where the controller runs",
                elsewhere.into_iter().collect::<Vec<_>>().join(", "),
                c.namespace
            ));
        }
    }

    // gotk-sync against what was asked.
    checks.push(sync_check(&bootstrap, &source, &opts.branch, &path));

    let verdict = Verdict::of(&checks);
    let key_reports = keys
        .iter()
        .enumerate()
        .map(|(i, k)| KeyReport {
            name: k.name().to_owned(),
            state: k.state().map(str::to_owned),
            loaded_by_controller: k.is_loaded_by_controller(),
            not_before: humantime::format_rfc3339_seconds(k.not_before()).to_string(),
            newest: newest.as_deref() == Some(k.name()),
            fingerprint: k.fingerprint().to_owned(),
            matches_committed_certs: key_certs[i].clone(),
            opened_values: opened_values[i],
            opened_sealed_secrets: sealed_reports
                .iter()
                .filter(|s| s.keys.iter().any(|n| n == k.name()))
                .map(SealedSecretReport::display_name)
                .collect(),
        })
        .collect();
    let report = PreflightReport {
        repository: RepositoryReport {
            source: source.to_string(),
            kind: match source {
                RepoSource::Ssh(_) => "ssh",
                RepoSource::Https(_) => "https",
                RepoSource::LocalGit(_) => "local git",
                RepoSource::Directory(_) => "directory",
            },
            branch: checkout.branch().map(str::to_owned),
            commit: checkout.commit().map(str::to_owned),
            path: path.clone(),
        },
        keys: key_reports,
        committed_certs: cert_reports,
        sealed_secrets: sealed_reports,
        controller: controller.clone(),
        bootstrap: bootstrap.clone(),
        kustomization_order: order.clone(),
        checks,
        notes,
        verdict,
    };
    tracing::info!(verdict = ?report.verdict, "preflight done");
    Ok(Preflight { report, keys, checkout, bootstrap, controller, kustomizations, order })
}

fn check(name: &'static str, status: Status, detail: String) -> Check {
    Check { name, status, detail }
}

/// `./clusters/kyrion/` → `clusters/kyrion`; absolute paths and `..` are refused.
fn normalize_path(p: &str) -> Result<String, PreflightError> {
    let bad = || PreflightError::BadPath { path: p.to_owned() };
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(bad)?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if parts.is_empty() {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

/// Trial-decrypts one SealedSecret's values with every key the controller would load.
/// Plaintexts are dropped (and wiped) as soon as they open.
fn try_open(
    o: &Object,
    applied_namespace: Option<String>,
    tree: &Tree,
    keys: &[SealingKey],
    order: &mut KeyOrder,
    opened_values: &mut [usize],
    notes: &mut Vec<String>,
) -> SealedSecretReport {
    // The controller unseals with the SealedSecret's own name, namespace and annotations
    // (`Unseal` → `labelFor(s.GetObjectMeta())`); kubeseal writes the same annotations into
    // spec.template, and a difference means someone edited one of them.
    let scope = Scope::from_annotations(&o.string_map(&["metadata", "annotations"]));
    let template_scope =
        Scope::from_annotations(&o.string_map(&["spec", "template", "metadata", "annotations"]));
    if scope != template_scope {
        notes.push(format!(
            "{} ({}): metadata says {scope} but spec.template says {template_scope}; the controller unseals as {scope}",
            o.name(),
            o.origin()
        ));
    }
    let namespace = applied_namespace
        .or_else(|| o.namespace().map(str::to_owned))
        .or_else(|| kustomize_namespace(tree, o));
    let mut rep = SealedSecretReport {
        layer: None,
        name: o.name().to_owned(),
        namespace: namespace.clone(),
        scope,
        origin: o.origin(),
        values: 0,
        opened: false,
        keys: Vec::new(),
        unopened_values: Vec::new(),
        problem: None,
    };
    let encrypted = o.string_map(&["spec", "encryptedData"]);
    if encrypted.is_empty() && o.at(&["spec", "data"]).is_some() {
        rep.problem = Some("uses the deprecated spec.data, which the controller refuses by default".into());
        return rep;
    }
    let namespace = match (namespace, scope) {
        (Some(ns), _) => ns,
        (None, Scope::ClusterWide) => String::new(),
        (None, _) => {
            rep.problem = Some("has no namespace (in metadata or its directory's kustomization.yaml), so its scope label is unknown".into());
            return rep;
        }
    };
    let label = scope.label(&namespace, o.name());
    rep.values = encrypted.len();
    let mut used = BTreeSet::new();
    for (entry, b64) in &encrypted {
        let compact: String = b64.split_whitespace().collect();
        let Ok(sealed_bytes) = base64::engine::general_purpose::STANDARD.decode(compact) else {
            rep.unopened_values.push(format!("{entry} (not base64)"));
            continue;
        };
        let opened = order.try_each(|i| sealed::open(keys[i].private_key(), &sealed_bytes, &label).is_ok());
        match opened {
            Some(i) => {
                opened_values[i] += 1;
                used.insert(keys[i].name().to_owned());
            }
            None => rep.unopened_values.push(entry.clone()),
        }
    }
    rep.keys = used.into_iter().collect();
    rep.opened = rep.unopened_values.is_empty();
    rep
}

/// The order keys are tried in: the one that opened the last value first. Every try with
/// a wrong key costs a full RSA private-key operation, and a backup holds a key per month;
/// but kubeseal seals all of a SealedSecret's values with one key, and a repository's
/// secrets were mostly sealed with few keys, so the last key that worked is nearly always
/// the next one that works. The start is newest first: new secrets are sealed with it.
pub(crate) struct KeyOrder(Vec<usize>);

impl KeyOrder {
    /// The keys the controller would load, newest first.
    pub(crate) fn new(keys: &[SealingKey]) -> KeyOrder {
        let mut v: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].is_loaded_by_controller()).collect();
        v.sort_by_key(|&i| std::cmp::Reverse(keys[i].not_before()));
        KeyOrder(v)
    }

    /// The first key `opens` accepts, which moves to the front.
    fn try_each(&mut self, mut opens: impl FnMut(usize) -> bool) -> Option<usize> {
        let pos = self.0.iter().position(|&i| opens(i))?;
        let i = self.0.remove(pos);
        self.0.insert(0, i);
        Some(i)
    }
}

/// `namespace:` of a kustomization.yaml in the SealedSecret's own directory.
fn kustomize_namespace(tree: &Tree, o: &Object) -> Option<String> {
    let dir = o.file.parent()?;
    tree.of(KUSTOMIZE_CONFIG_GROUP, "Kustomization")
        .find(|k| k.file.parent() == Some(dir))
        .and_then(|k| k.value.get("namespace"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

fn cert_check(certs: &[CertReport], keys: &[SealingKey], any_opened: bool, force: bool) -> Check {
    const NAME: &str = "committed-certificate";
    if certs.is_empty() {
        return check(
            NAME,
            Status::Warn,
            "no sealing certificate committed (looked for .pem/.crt/.cert files in a certs/ directory or named *sealed*)".into(),
        );
    }
    let loaded_match = |c: &CertReport| {
        c.matched_by
            .as_deref()
            .is_some_and(|n| keys.iter().any(|k| k.name() == n && k.is_loaded_by_controller()))
    };
    let unmatched: Vec<&str> =
        certs.iter().filter(|c| c.problem.is_none() && !loaded_match(c)).map(|c| c.file.as_str()).collect();
    let unreadable: Vec<&str> =
        certs.iter().filter(|c| c.problem.is_some()).map(|c| c.file.as_str()).collect();
    if unmatched.is_empty() {
        let detail = certs
            .iter()
            .filter_map(|c| Some(format!("{} is key {}", c.file, c.matched_by.as_deref()?)))
            .collect::<Vec<_>>()
            .join(", ");
        let status = if unreadable.is_empty() { Status::Pass } else { Status::Warn };
        let extra = if unreadable.is_empty() {
            String::new()
        } else {
            format!("; unreadable: {}", unreadable.join(", "))
        };
        return check(NAME, status, format!("{detail}{extra}"));
    }
    let mut detail = format!(
        "{} matches no active backup key: kubeseal --cert with it seals for a key the restored controller does not have",
        unmatched.join(", ")
    );
    let status = if !any_opened {
        detail.push_str("; and no SealedSecret opens with the backup keys, so they are most likely another cluster's (not overridable)");
        Status::Fail
    } else if force {
        Status::Overridden
    } else {
        detail
            .push_str("; the backup may lack the newest key (some SealedSecrets do open): --force to go on");
        Status::Fail
    };
    check(NAME, status, detail)
}

fn substitution_check(sub: &SubstituteRef, sealed: &[SealedSecretReport], force: bool) -> Check {
    const NAME: &str = "substitution-secret";
    let id = &sub.secret;
    let matching: Vec<&SealedSecretReport> = sealed
        .iter()
        .filter(|s| s.name == id.name && s.namespace.as_deref() == Some(id.namespace.as_str()))
        .collect();
    // This cluster's copy (one its layers apply) wins when the repository holds several
    // clusters' secrets.
    let candidates: Vec<&SealedSecretReport> = if matching.iter().any(|s| s.layer.is_some()) {
        matching.iter().filter(|s| s.layer.is_some()).copied().collect()
    } else {
        matching
    };
    let failing = |what: String| {
        if sub.optional {
            check(NAME, Status::Warn, format!("{what} (optional: Flux goes on without its variables)"))
        } else if force {
            check(NAME, Status::Overridden, what)
        } else {
            check(NAME, Status::Fail, format!("{what}; --force to go on anyway"))
        }
    };
    if let Some(s) = candidates.iter().find(|s| s.opened) {
        return check(NAME, Status::Pass, format!("{id} ({}) opens with key {}", s.origin, s.keys.join("+")));
    }
    if candidates.is_empty() {
        return failing(format!(
            "no SealedSecret {id} in the repository, but Kustomizations substitute variables from it: they cannot reconcile"
        ));
    }
    let origins: Vec<&str> = candidates.iter().map(|s| s.origin.as_str()).collect();
    failing(format!(
        "{id} ({}) does not open with any backup key: every Kustomization that substitutes from it fails, \
         so nothing past the root sync reconciles",
        origins.join(", ")
    ))
}

/// One check per Secret a HelmRelease reads values from (`spec.valuesFrom`, kind Secret,
/// not optional). helm-controller does not install a release whose values Secret is
/// missing; in a `wait: true` layer that keeps the layer from Ready, and every layer that
/// depends on it waits forever: as fatal as a substitution Secret (docs/reference/flux.md#valuesfrom).
fn values_checks(
    graph: &Graph,
    tree: &Tree,
    sealed: &[SealedSecretReport],
    order: &[NamespacedName],
    force: bool,
) -> Vec<Check> {
    const NAME: &str = "values-secret";
    let mut out = Vec::new();
    let reachable = graph.reachable();
    let mut seen = BTreeSet::new();
    for layer in &graph.layers {
        for inc in &layer.objects {
            let hr = &tree.objects[inc.index];
            if !hr.is(controller::HELM_GROUP, "HelmRelease") {
                continue;
            }
            let ns = inc.namespace.as_deref().or(hr.namespace()).unwrap_or("default");
            let Some(list) = hr.at(&["spec", "valuesFrom"]).and_then(|v| v.as_sequence()) else { continue };
            for v in list {
                let field = |k: &str| v.get(k).and_then(|x| x.as_str());
                if field("kind") != Some("Secret")
                    || v.get("optional").and_then(|x| x.as_bool()) == Some(true)
                {
                    continue;
                }
                let Some(name) = field("name") else { continue };
                let secret = NamespacedName::new(ns, name);
                let hr_id = NamespacedName::new(ns, hr.name());
                if !seen.insert((hr_id.clone(), secret.clone())) {
                    continue;
                }
                let k = &layer.kustomization;
                let reader = format!("HelmRelease {hr_id} ({}, layer {})", hr.origin(), k.name);
                let matching: Vec<&SealedSecretReport> = sealed
                    .iter()
                    .filter(|s| {
                        s.name == secret.name && s.namespace.as_deref() == Some(secret.namespace.as_str())
                    })
                    .filter(|s| s.layer.is_some())
                    .collect();
                if let Some(s) = matching.iter().find(|s| s.opened) {
                    out.push(check(
                        NAME,
                        Status::Pass,
                        format!("{reader} reads {secret}: {} opens with key {}", s.origin, s.keys.join("+")),
                    ));
                    continue;
                }
                let plain = reachable.iter().any(|i| {
                    let o = &tree.objects[i.index];
                    o.group().is_empty()
                        && o.kind() == "Secret"
                        && o.name() == secret.name
                        && i.namespace.as_deref().or(o.namespace()) == Some(secret.namespace.as_str())
                });
                if plain {
                    out.push(check(
                        NAME,
                        Status::Pass,
                        format!("{reader} reads {secret}, a plain Secret in the repository"),
                    ));
                    continue;
                }
                if matching.is_empty() {
                    out.push(check(
                        NAME,
                        Status::Warn,
                        format!("{reader} reads Secret {secret}, which nothing in the repository makes: it must be created by hand or by another controller"),
                    ));
                    continue;
                }
                let origins: Vec<&str> = matching.iter().map(|s| s.origin.as_str()).collect();
                let what = format!(
                    "{reader} reads Secret {secret}, but SealedSecret {secret} ({}) does not open with any backup key",
                    origins.join(", ")
                );
                if !k.wait {
                    out.push(check(NAME, Status::Warn, format!("{what}: that release fails; {} does not wait for it, so the layers after it go on", k.name)));
                    continue;
                }
                let blocked = dependents(graph, &k.name, order);
                let consequence = if blocked.is_empty() {
                    format!("{} (wait: true) never becomes Ready", k.name)
                } else {
                    format!(
                        "{} (wait: true) never becomes Ready, and {} never reconcile",
                        k.name,
                        blocked.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    )
                };
                out.push(if force {
                    check(NAME, Status::Overridden, format!("{what}: {consequence}"))
                } else {
                    check(NAME, Status::Fail, format!("{what}: {consequence}; --force to go on anyway"))
                });
            }
        }
    }
    out
}

/// Every layer that depends on `of`, directly or not, in bring-up order.
fn dependents(graph: &Graph, of: &NamespacedName, order: &[NamespacedName]) -> Vec<NamespacedName> {
    let mut blocked: BTreeSet<NamespacedName> = BTreeSet::new();
    let mut changed = true;
    while changed {
        changed = false;
        for l in &graph.layers {
            let k = &l.kustomization;
            if !blocked.contains(&k.name) && k.depends_on.iter().any(|d| d == of || blocked.contains(d)) {
                blocked.insert(k.name.clone());
                changed = true;
            }
        }
    }
    order.iter().filter(|n| blocked.contains(*n)).cloned().collect()
}

fn bootstrap_check(b: &Bootstrap) -> Check {
    const NAME: &str = "bootstrap";
    match b.form {
        BootstrapForm::None => check(
            NAME,
            Status::Fail,
            format!(
                "nothing bootstraps Flux: looked for {}; the keys, the certificate and every SealedSecret \
                 are still checked below, but there is nothing to apply",
                b.looked_for.join("; ")
            ),
        ),
        BootstrapForm::Classic => check(
            NAME,
            Status::Pass,
            format!(
                "{}: {} and {}",
                b.form,
                b.components.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                b.sync.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
            ),
        ),
        BootstrapForm::FluxInstance | BootstrapForm::FluxInstanceChart => {
            let i = b.instance.as_ref();
            let mut detail = format!(
                "{}: FluxInstance {} from {}, Flux {}",
                b.form,
                i.map(|i| i.name.to_string()).unwrap_or_default(),
                i.map(|i| i.origin.as_str()).unwrap_or(""),
                b.flux_version.as_deref().unwrap_or("(version not given)"),
            );
            match &b.operator {
                Some(o) => {
                    detail.push_str(&format!(
                        "; the operator from HelmRelease {} (chart {})",
                        o.owner.helm_release,
                        o.version.as_deref().unwrap_or("version not pinned")
                    ));
                }
                None => detail.push_str("; no flux-operator HelmRelease is applied, so --flux-operator-manifest must say which operator to install"),
            }
            detail.push_str(
                "; recovery needs the operator's registry (ghcr.io/controlplaneio-fluxcd) reachable from the cluster, \
                 or a mirror: the Flux controllers' manifests come from there",
            );
            check(NAME, Status::Pass, detail)
        }
    }
}

fn controller_location(
    found: Found,
    ns_flag: Option<&str>,
    name_flag: Option<&str>,
) -> (Option<ControllerLocation>, Check) {
    const NAME: &str = "controller";
    let from_flags = |base: Option<ControllerLocation>| {
        let mut c = base.unwrap_or(ControllerLocation {
            namespace: String::new(),
            name: String::new(),
            release_name: None,
            source: String::new(),
        });
        if let Some(ns) = ns_flag {
            c.namespace = ns.to_owned();
        }
        if let Some(n) = name_flag {
            c.name = n.to_owned();
        }
        c
    };
    match found {
        Found::One(c) if ns_flag.is_none() && name_flag.is_none() => {
            let detail = format!("{}/{} from {}", c.namespace, c.name, c.source);
            (Some(c), check(NAME, Status::Pass, detail))
        }
        Found::One(c) => {
            let mut c2 = from_flags(Some(c.clone()));
            c2.source = format!("flags (the repository says {}/{}, {})", c.namespace, c.name, c.source);
            let detail = format!("{}/{} from {}", c2.namespace, c2.name, c2.source);
            (Some(c2), check(NAME, Status::Pass, detail))
        }
        Found::None | Found::Many(_) if ns_flag.is_some() && name_flag.is_some() => {
            let mut c = from_flags(None);
            c.source = "--controller-namespace and --controller-name".into();
            let detail = format!("{}/{} from {}", c.namespace, c.name, c.source);
            (Some(c), check(NAME, Status::Pass, detail))
        }
        Found::None => (
            None,
            check(
                NAME,
                Status::Fail,
                format!(
                    "no HelmRelease of chart {} in the repository: pass --controller-namespace and --controller-name \
                     (upstream's controller.yaml uses {}/{})",
                    controller::CHART,
                    controller::DEFAULT_NAMESPACE,
                    controller::DEFAULT_NAME
                ),
            ),
        ),
        Found::Many(list) => (
            None,
            check(
                NAME,
                Status::Fail,
                format!(
                    "several HelmReleases of chart {}: {}; pass --controller-namespace and --controller-name",
                    controller::CHART,
                    list.join("; ")
                ),
            ),
        ),
    }
}

/// Whether gotk-sync.yaml syncs what was verified. Differences are warnings: a local
/// mirror or a test branch is a legitimate thing to verify.
fn sync_check(b: &Bootstrap, source: &RepoSource, branch: &str, path: &str) -> Check {
    const NAME: &str = "flux-sync";
    let what = match (&b.sync, &b.instance) {
        (Some(f), _) => f.display().to_string(),
        (None, Some(i)) => format!("FluxInstance {}", i.name),
        (None, None) => {
            return check(NAME, Status::Warn, "no sync source to compare with what was verified".into());
        }
    };
    let mut diffs = Vec::new();
    let canon = |u: &str| u.trim_end_matches('/').trim_end_matches(".git").to_ascii_lowercase();
    if source.is_remote() && canon(&source.to_string()) != canon(&b.source.url) {
        diffs.push(format!("it syncs {} but {source} was verified", b.source.url));
    }
    if !matches!(source, RepoSource::Directory(_)) && b.source.branch != branch {
        diffs.push(format!("it syncs branch {} but branch {branch} was verified", b.source.branch));
    }
    if normalize_path(&b.kustomization_path).ok().as_deref() != Some(path) {
        diffs.push(format!("its Kustomization applies {:?}, not ./{path}", b.kustomization_path));
    }
    let reference = b
        .source
        .ref_name
        .as_deref()
        .map(|r| format!("ref {r}"))
        .unwrap_or_else(|| format!("branch {}", b.source.branch));
    if diffs.is_empty() {
        check(NAME, Status::Pass, format!("{what} syncs {} {reference} path ./{path}", b.source.url))
    } else {
        check(NAME, Status::Warn, format!("{what}: {}", diffs.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_that_opened_last_is_tried_first() {
        let mut o = KeyOrder(vec![0, 1, 2, 3]);
        let mut tried = Vec::new();
        assert_eq!(
            o.try_each(|i| {
                tried.push(i);
                i == 2
            }),
            Some(2)
        );
        assert_eq!(tried, [0, 1, 2]);
        tried.clear();
        assert_eq!(
            o.try_each(|i| {
                tried.push(i);
                i == 2
            }),
            Some(2)
        );
        assert_eq!(tried, [2], "the last key that opened is tried first");
        tried.clear();
        assert_eq!(
            o.try_each(|i| {
                tried.push(i);
                false
            }),
            None
        );
        assert_eq!(tried, [2, 0, 1, 3], "a value nothing opens tries every key once");
    }

    #[test]
    fn paths_are_normalized_and_confined() {
        assert_eq!(normalize_path("./clusters/kyrion/").expect("ok"), "clusters/kyrion");
        assert!(matches!(normalize_path("../etc"), Err(PreflightError::BadPath { .. })));
        assert!(matches!(normalize_path("/clusters/kyrion"), Err(PreflightError::BadPath { .. })));
        assert!(matches!(normalize_path("."), Err(PreflightError::BadPath { .. })));
    }
}
