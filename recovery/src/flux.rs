//! What Flux needs from the repository to come back, in each of the forms a repository can
//! be bootstrapped in (docs/reference/flux.md#bootstrap-forms):
//! - **classic**: `flux bootstrap` committed `<path>/flux-system/gotk-components.yaml` and
//!   `gotk-sync.yaml` (the controllers, and the sync GitRepository and Kustomization);
//! - **FluxInstance**: the Flux Operator runs Flux; a `FluxInstance` object in the
//!   repository says which distribution and what to sync;
//! - **flux-instance chart**: the same FluxInstance, rendered by helm-controller from a
//!   `flux-instance` HelmRelease's `values.instance` — no file holds `kind: FluxInstance`;
//! - **none**: nothing of the above; the preflight says so and still checks the rest.
//!
//! Then the **layers**: the Flux Kustomizations the cluster path applies, found by building
//! each path as kustomize does ([`crate::kustomize`]), with what each applies, so that the
//! controller's HelmRelease and the SealedSecrets each layer needs are found by following
//! `resources:`, not by where files lie. Applying any of it is the apply phase's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml_ng::Value;

use crate::controller::{self, HELM_GROUP};
use crate::kustomize::{self, Included, KustomizeError};
use crate::manifests::{Object, Tree};

/// fluxcd/flux2 pkg/manifestgen/install/options.go (`ManifestFile`) and sync/options.go.
pub const BOOTSTRAP_DIR: &str = "flux-system";
pub const COMPONENTS_FILE: &str = "gotk-components.yaml";
pub const SYNC_FILE: &str = "gotk-sync.yaml";
/// API groups of the objects read here.
pub const KUSTOMIZE_GROUP: &str = "kustomize.toolkit.fluxcd.io";
pub const SOURCE_GROUP: &str = "source.toolkit.fluxcd.io";
/// The Flux Operator's API group (controlplaneio-fluxcd/flux-operator).
pub const FLUX_OPERATOR_GROUP: &str = "fluxcd.controlplane.io";
pub const FLUX_INSTANCE_API: &str = "fluxcd.controlplane.io/v1";
/// The Flux Operator's charts (`oci://ghcr.io/controlplaneio-fluxcd/charts/…`).
pub const OPERATOR_CHART: &str = "flux-operator";
pub const INSTANCE_CHART: &str = "flux-instance";
/// Where a GitRepository's ref defaults to (source-controller docs/spec/v1/gitrepositories.md).
pub const DEFAULT_GIT_BRANCH: &str = "master";

/// A namespaced object name, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: &str, name: &str) -> Self {
        NamespacedName { namespace: namespace.to_owned(), name: name.to_owned() }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why the Flux side of the repository cannot be read as it is.
#[derive(Debug, thiserror::Error)]
pub enum FluxError {
    #[error(
        "{file} is missing: `flux bootstrap` commits it next to the other bootstrap manifests; check --branch"
    )]
    BootstrapFileMissing { file: PathBuf },
    #[error("{file} has no {what}; it is not what `flux bootstrap` writes")]
    BootstrapInvalid { file: PathBuf, what: &'static str },
    #[error("Kustomization {name} is defined twice: in {first} and {second}")]
    Duplicate { name: NamespacedName, first: String, second: String },
    #[error("Kustomization {from} depends on {missing}, which no Kustomization applied from {path} defines")]
    MissingDependency { from: NamespacedName, missing: NamespacedName, path: String },
    #[error("the Kustomizations under {path} depend on each other in a cycle: {}", cycle.iter().map(ToString::to_string).collect::<Vec<_>>().join(" → "))]
    Cycle { path: String, cycle: Vec<NamespacedName> },
    #[error("the cluster path {path} cannot be built the way kustomize-controller builds it")]
    ClusterPath {
        path: String,
        #[source]
        source: KustomizeError,
    },
    #[error("{instance} ({origin}) has no spec.{what}: the Flux Operator would refuse it")]
    InstanceInvalid { instance: NamespacedName, origin: String, what: &'static str },
}

/// How the repository bootstraps Flux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootstrapForm {
    /// `flux bootstrap`'s gotk-components.yaml and gotk-sync.yaml.
    Classic,
    /// A FluxInstance object, applied after the Flux Operator.
    FluxInstance,
    /// A FluxInstance rendered from a `flux-instance` HelmRelease's values.
    FluxInstanceChart,
    /// Nothing that bootstraps Flux.
    None,
}

impl fmt::Display for BootstrapForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootstrapForm::Classic => "classic (flux bootstrap: gotk-components.yaml, gotk-sync.yaml)",
            BootstrapForm::FluxInstance => "Flux Operator (a FluxInstance object)",
            BootstrapForm::FluxInstanceChart => {
                "Flux Operator (a FluxInstance from the flux-instance HelmRelease)"
            }
            BootstrapForm::None => "none found",
        })
    }
}

/// The sync source: gotk-sync.yaml's GitRepository, or the one the Flux Operator makes from
/// the FluxInstance's `spec.sync`.
#[derive(Debug, Clone, Serialize)]
pub struct SyncSource {
    pub name: NamespacedName,
    pub url: String,
    pub branch: String,
    /// `ref.name` (`refs/heads/main`), which the FluxInstance uses. Source-controller then
    /// reports revisions as `refs/heads/main@sha1:<commit>` instead of `main@sha1:<commit>`.
    pub ref_name: Option<String>,
    /// The Secret it reads (`spec.secretRef.name`, or the FluxInstance's `sync.pullSecret`).
    pub secret: Option<String>,
}

impl SyncSource {
    /// The revision source-controller reports for `commit`.
    pub fn revision(&self, commit: &str) -> String {
        format!("{}@sha1:{commit}", self.ref_name.as_deref().unwrap_or(&self.branch))
    }
}

/// Who owns an object in Helm's eyes: what `helm` (and helm-controller) needs to adopt an
/// object that exists already instead of refusing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HelmOwner {
    /// The HelmRelease.
    pub helm_release: NamespacedName,
    pub origin: String,
    /// `meta.helm.sh/release-name`.
    pub release_name: String,
    /// `meta.helm.sh/release-namespace`.
    pub release_namespace: String,
}

/// The FluxInstance to apply, as the operator (or the flux-instance chart) would have it.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub name: NamespacedName,
    /// The object's `file#document`, or the HelmRelease's.
    pub origin: String,
    /// The object to apply (`fluxcd.controlplane.io/v1` FluxInstance).
    pub body: serde_json::Value,
    /// For the chart form: the flux-instance release, for the adoption metadata.
    pub helm: Option<HelmOwner>,
    /// `spec.distribution.version` (`2.x`, `2.7.x`, `2.9.3`).
    pub distribution_version: Option<String>,
}

/// The Flux Operator as the repository installs it: its HelmRelease and chart.
#[derive(Debug, Clone, Serialize)]
pub struct Operator {
    pub owner: HelmOwner,
    /// The chart's version (the OCIRepository's `ref.tag`): the release manifest to apply
    /// is the one of this version.
    pub version: Option<String>,
    pub chart_url: Option<String>,
    pub digest: Option<String>,
}

/// What the apply phase applies first, and what to follow.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    pub form: BootstrapForm,
    /// Classic: relative to the repository root.
    pub components: Option<PathBuf>,
    pub sync: Option<PathBuf>,
    /// The Flux Operator forms.
    pub instance: Option<Instance>,
    pub operator: Option<Operator>,
    pub source: SyncSource,
    /// The root Kustomization (`flux-system`), which applies everything else under `path`.
    pub kustomization: NamespacedName,
    /// Its `spec.path`.
    pub kustomization_path: String,
    /// The Flux version, when the repository says it (gotk-components.yaml's header, the
    /// FluxInstance's distribution version).
    pub flux_version: Option<String>,
    /// What was looked for (for the `none` form's report).
    pub looked_for: Vec<String>,
    pub notes: Vec<String>,
}

/// A Flux Kustomization the cluster path applies.
#[derive(Debug, Clone, Serialize)]
pub struct Kustomization {
    pub name: NamespacedName,
    /// `spec.path`: the directory it applies.
    pub path: String,
    pub depends_on: Vec<NamespacedName>,
    /// Secrets it substitutes variables from (`spec.postBuild.substituteFrom`, kind Secret).
    pub substitute_from: Vec<SubstituteRef>,
    /// `spec.wait: true`: it is Ready only once everything it applies is, so one HelmRelease
    /// that cannot install holds back every Kustomization that depends on it.
    pub wait: bool,
    /// Where it is defined, `file#document` (or what it was made from).
    pub origin: String,
}

/// One `postBuild.substituteFrom` Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SubstituteRef {
    pub secret: NamespacedName,
    /// `optional: true`: Flux goes on without it.
    pub optional: bool,
}

/// A layer: a Kustomization and what its path applies.
#[derive(Debug, Clone)]
pub struct Layer {
    pub kustomization: Kustomization,
    /// With namespaces as the build and `spec.targetNamespace` give them.
    pub objects: Vec<Included>,
    /// Why its path could not be built, when it could not.
    pub problem: Option<String>,
}

/// The cluster as the repository describes it: the cluster path's own objects and every
/// layer reachable from it.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// What the cluster path itself applies (the root sync's objects).
    pub root: Vec<Included>,
    pub layers: Vec<Layer>,
    pub notes: Vec<String>,
}

impl Graph {
    /// Every object some layer (or the cluster path) applies, each once.
    pub fn reachable(&self) -> Vec<Included> {
        let mut seen = BTreeSet::new();
        self.root
            .iter()
            .chain(self.layers.iter().flat_map(|l| l.objects.iter()))
            .filter(|i| seen.insert(i.index))
            .cloned()
            .collect()
    }

    pub fn kustomizations(&self) -> Vec<Kustomization> {
        self.layers.iter().map(|l| l.kustomization.clone()).collect()
    }

    /// The layer that applies object `index` (the first, in discovery order).
    pub fn layer_of(&self, index: usize) -> Option<&Layer> {
        self.layers.iter().find(|l| l.objects.iter().any(|i| i.index == index))
    }
}

/// Follows the cluster path: builds it, takes the Flux Kustomizations it applies as layers,
/// builds each layer's `spec.path`, and so on. Kustomizations syncing from another source
/// are listed but not followed (their files are in another repository). The root layer of
/// a classic bootstrap (gotk-sync's Kustomization, whose path is the cluster path) is found
/// like any other; the Flux Operator's root is added with [`Graph::add_root`].
pub fn graph(
    root: &Path,
    tree: &Tree,
    path: &str,
    default_namespace: &str,
    source: &str,
) -> Result<Graph, FluxError> {
    let built = kustomize::build(root, tree, Path::new(path))
        .map_err(|source| FluxError::ClusterPath { path: path.to_owned(), source })?;
    let mut g = Graph { root: built.objects, layers: Vec::new(), notes: built.notes };
    let mut built_paths: BTreeSet<String> = BTreeSet::from([path.to_owned()]);
    let mut queue: Vec<Vec<Included>> = vec![g.root.clone()];
    let mut defined: BTreeMap<NamespacedName, String> = BTreeMap::new();
    while let Some(objects) = queue.pop() {
        for inc in objects {
            let o = &tree.objects[inc.index];
            if !o.is(KUSTOMIZE_GROUP, "Kustomization") {
                continue;
            }
            let ns = inc.namespace.clone().unwrap_or_else(|| default_namespace.to_owned());
            let name = NamespacedName::new(&ns, o.name());
            if let Some(first) = defined.get(&name) {
                if *first != o.origin() {
                    return Err(FluxError::Duplicate { name, first: first.clone(), second: o.origin() });
                }
                continue;
            }
            defined.insert(name.clone(), o.origin());
            let k = Kustomization {
                path: o.str_at(&["spec", "path"]).unwrap_or("").to_owned(),
                depends_on: refs(o, &["spec", "dependsOn"], &ns),
                substitute_from: substitute_from(o, &ns),
                wait: o.at(&["spec", "wait"]).and_then(Value::as_bool).unwrap_or(false),
                origin: o.origin(),
                name,
            };
            let src = o.str_at(&["spec", "sourceRef", "name"]).unwrap_or(source);
            let mut layer = Layer { kustomization: k, objects: Vec::new(), problem: None };
            if src != source {
                g.notes.push(format!(
                    "Kustomization {} syncs from {} {src}, another source: what it applies is not followed",
                    layer.kustomization.name,
                    o.str_at(&["spec", "sourceRef", "kind"]).unwrap_or("source"),
                ));
            } else {
                match normalize(&layer.kustomization.path) {
                    None => {
                        layer.problem = Some(format!(
                            "spec.path {:?} is not a path inside the repository",
                            layer.kustomization.path
                        ))
                    }
                    Some(p) if built_paths.contains(&p) => {
                        // The root sync's own path, or a path two layers share: followed once.
                        if p == path {
                            layer.objects = g.root.clone();
                        }
                    }
                    Some(p) => {
                        built_paths.insert(p.clone());
                        match kustomize::build(root, tree, Path::new(&p)) {
                            Ok(b) => {
                                g.notes.extend(b.notes);
                                let target = o.str_at(&["spec", "targetNamespace"]).filter(|s| !s.is_empty());
                                layer.objects = b
                                    .objects
                                    .into_iter()
                                    .map(|mut i| {
                                        if let Some(t) = target
                                            && !kustomize::is_cluster_scoped(tree.objects[i.index].kind())
                                        {
                                            i.namespace = Some(t.to_owned());
                                        }
                                        i
                                    })
                                    .collect();
                                queue.push(layer.objects.clone());
                            }
                            Err(e) => layer.problem = Some(e.to_string()),
                        }
                    }
                }
            }
            g.layers.push(layer);
        }
    }
    Ok(g)
}

impl Graph {
    /// The Flux Operator's root Kustomization, which is not in the repository: it applies
    /// the cluster path, as gotk-sync's does.
    pub fn add_root(&mut self, name: &NamespacedName, path: &str) {
        if self.layers.iter().any(|l| &l.kustomization.name == name) {
            return;
        }
        self.layers.insert(
            0,
            Layer {
                kustomization: Kustomization {
                    name: name.clone(),
                    path: format!("./{path}"),
                    depends_on: Vec::new(),
                    substitute_from: Vec::new(),
                    wait: false,
                    origin: "made by the Flux Operator from the FluxInstance's spec.sync".into(),
                },
                objects: self.root.clone(),
                problem: None,
            },
        );
    }
}

/// `./clusters/kyrion/` → `clusters/kyrion`; `None` for paths leaving the repository.
pub fn normalize(p: &str) -> Option<String> {
    let joined = kustomize::join_inside(Path::new(""), p)?;
    let s = joined.to_str()?.to_owned();
    (!s.is_empty()).then_some(s)
}

/// Finds how the repository bootstraps Flux. `graph` must be the cluster path's.
pub fn bootstrap(root: &Path, path: &str, tree: &Tree, graph: &Graph) -> Result<Bootstrap, FluxError> {
    let reachable = graph.reachable();
    let instances: Vec<&Included> =
        reachable.iter().filter(|i| tree.objects[i.index].is(FLUX_OPERATOR_GROUP, "FluxInstance")).collect();
    let charts: Vec<&Included> = reachable
        .iter()
        .filter(|i| {
            let o = &tree.objects[i.index];
            o.is(HELM_GROUP, "HelmRelease")
                && controller::chart_name(tree, o).as_deref() == Some(INSTANCE_CHART)
        })
        .collect();
    let operator = reachable
        .iter()
        .find(|i| {
            let o = &tree.objects[i.index];
            o.is(HELM_GROUP, "HelmRelease")
                && controller::chart_name(tree, o).as_deref() == Some(OPERATOR_CHART)
        })
        .map(|i| operator_of(tree, i));

    let dir = Path::new(path).join(BOOTSTRAP_DIR);
    if root.join(&dir).is_dir() {
        let mut b = classic(root, path, tree)?;
        if let Some(i) = instances.first().or(charts.first()) {
            b.notes.push(format!(
                "the repository also has a FluxInstance ({}): once Flux reconciles it, the Flux Operator takes                  over from the classic bootstrap restored here",
                tree.objects[i.index].origin()
            ));
        }
        return Ok(b);
    }
    let mut notes = Vec::new();
    let form_and_instance = if let Some(i) = instances.first() {
        if instances.len() > 1 || !charts.is_empty() {
            notes.push(format!(
                "{} FluxInstance objects and {} flux-instance HelmReleases are applied; using {}",
                instances.len(),
                charts.len(),
                tree.objects[i.index].origin()
            ));
        }
        Some((BootstrapForm::FluxInstance, instance_object(tree, i)))
    } else if let Some(i) = charts.first() {
        if charts.len() > 1 {
            notes.push(format!(
                "{} flux-instance HelmReleases are applied; using {}",
                charts.len(),
                tree.objects[i.index].origin()
            ));
        }
        Some((BootstrapForm::FluxInstanceChart, instance_from_chart(tree, i)))
    } else {
        None
    };
    let Some((form, instance)) = form_and_instance else {
        let elsewhere: Vec<String> = tree
            .of(FLUX_OPERATOR_GROUP, "FluxInstance")
            .map(|o| o.origin())
            .chain(
                tree.of(HELM_GROUP, "HelmRelease")
                    .filter(|o| controller::chart_name(tree, o).as_deref() == Some(INSTANCE_CHART))
                    .map(|o| o.origin()),
            )
            .collect();
        if !elsewhere.is_empty() {
            notes.push(format!(
                "a FluxInstance is in the repository but nothing {path} applies reaches it: {}",
                elsewhere.join(", ")
            ));
        }
        return Ok(Bootstrap {
            form: BootstrapForm::None,
            components: None,
            sync: None,
            instance: None,
            operator,
            source: SyncSource {
                name: NamespacedName::new(BOOTSTRAP_DIR, BOOTSTRAP_DIR),
                url: String::new(),
                branch: DEFAULT_GIT_BRANCH.into(),
                ref_name: None,
                secret: None,
            },
            kustomization: NamespacedName::new(BOOTSTRAP_DIR, BOOTSTRAP_DIR),
            kustomization_path: format!("./{path}"),
            flux_version: None,
            looked_for: vec![
                format!("{path}/{BOOTSTRAP_DIR}/{COMPONENTS_FILE} and {SYNC_FILE} (flux bootstrap)"),
                format!("a {FLUX_INSTANCE_API} FluxInstance applied from {path}"),
                format!("a HelmRelease of the {INSTANCE_CHART} chart applied from {path}"),
            ],
            notes,
        });
    };
    let spec = instance.body.get("spec");
    let sync = spec.and_then(|s| s.get("sync"));
    let sync_str = |k: &str| sync.and_then(|s| s.get(k)).and_then(serde_json::Value::as_str);
    let invalid = |what| FluxError::InstanceInvalid {
        instance: instance.name.clone(),
        origin: instance.origin.clone(),
        what,
    };
    if sync.is_none() {
        return Err(invalid("sync"));
    }
    let url = sync_str("url").ok_or_else(|| invalid("sync.url"))?.to_owned();
    let ns = &instance.name.namespace;
    // The operator names the source and the Kustomization after `sync.name`, else after
    // the namespace (docs/reference/flux.md#flux-operator).
    let sync_name = sync_str("name").unwrap_or(ns).to_owned();
    let reference = sync_str("ref").unwrap_or("").to_owned();
    let branch = reference.strip_prefix("refs/heads/").unwrap_or(&reference).to_owned();
    let sync_path = sync_str("path").unwrap_or("").to_owned();
    if sync_str("kind").is_some_and(|k| k != "GitRepository") {
        notes.push(format!(
            "{} syncs from a {}, not a GitRepository: the revision is not checked against this commit",
            instance.name,
            sync_str("kind").unwrap_or("")
        ));
    }
    Ok(Bootstrap {
        form,
        components: None,
        sync: None,
        operator,
        source: SyncSource {
            name: NamespacedName::new(ns, &sync_name),
            url,
            branch,
            ref_name: (!reference.is_empty()).then_some(reference),
            secret: sync_str("pullSecret").map(str::to_owned),
        },
        kustomization: NamespacedName::new(ns, &sync_name),
        kustomization_path: sync_path,
        flux_version: instance.distribution_version.clone(),
        instance: Some(instance),
        looked_for: Vec::new(),
        notes,
    })
}

fn operator_of(tree: &Tree, i: &Included) -> Operator {
    let o = &tree.objects[i.index];
    let ns = i.namespace.as_deref().or(o.namespace()).unwrap_or("default");
    let (release_namespace, release_name) = controller::release_of(o, ns);
    let chart = controller::chart(tree, o);
    Operator {
        owner: HelmOwner {
            helm_release: NamespacedName::new(ns, o.name()),
            origin: o.origin(),
            release_name,
            release_namespace,
        },
        version: chart.as_ref().and_then(|c| c.version.clone()),
        chart_url: chart.as_ref().and_then(|c| c.url.clone()),
        digest: chart.and_then(|c| c.digest),
    }
}

fn instance_object(tree: &Tree, i: &Included) -> Instance {
    let o = &tree.objects[i.index];
    let ns = i.namespace.as_deref().or(o.namespace()).unwrap_or(BOOTSTRAP_DIR);
    let mut body = serde_json::to_value(&o.value).unwrap_or_default();
    if let Some(meta) = body.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
        meta.insert("namespace".into(), ns.into());
    }
    let version =
        body.pointer("/spec/distribution/version").and_then(serde_json::Value::as_str).map(str::to_owned);
    Instance {
        name: NamespacedName::new(ns, o.name()),
        origin: o.origin(),
        body,
        helm: None,
        distribution_version: version,
    }
}

/// The FluxInstance the flux-instance chart renders: named `fullnameOverride` (the chart's
/// default is `flux`, which is also the only name the operator accepts), in the release
/// namespace, with the chart's defaults under `values.instance` (docs/reference/flux.md#the-flux-instance-chart).
fn instance_from_chart(tree: &Tree, i: &Included) -> Instance {
    let hr = &tree.objects[i.index];
    let ns = i.namespace.as_deref().or(hr.namespace()).unwrap_or("default");
    let (release_namespace, release_name) = controller::release_of(hr, ns);
    let values = |k: &str| hr.str_at(&["spec", "values", k]).filter(|s| !s.is_empty());
    let name = values("fullnameOverride").map(str::to_owned).unwrap_or_else(|| "flux".into());
    let mut spec = serde_json::json!({
        "distribution": {
            "version": "2.x",
            "registry": "ghcr.io/fluxcd",
            "artifact": "oci://ghcr.io/controlplaneio-fluxcd/flux-operator-manifests:latest",
        },
        "components": ["source-controller", "kustomize-controller", "helm-controller", "notification-controller"],
        "cluster": {"type": "kubernetes", "multitenant": false, "networkPolicy": true, "domain": "cluster.local"},
    });
    if let Some(given) = hr.at(&["spec", "values", "instance"]) {
        merge(&mut spec, serde_json::to_value(given).unwrap_or_default());
    }
    let version =
        spec.pointer("/distribution/version").and_then(serde_json::Value::as_str).map(str::to_owned);
    let body = serde_json::json!({
        "apiVersion": FLUX_INSTANCE_API,
        "kind": "FluxInstance",
        "metadata": {"name": name, "namespace": release_namespace},
        "spec": spec,
    });
    Instance {
        name: NamespacedName::new(&release_namespace, &name),
        origin: hr.origin(),
        body,
        helm: Some(HelmOwner {
            helm_release: NamespacedName::new(ns, hr.name()),
            origin: hr.origin(),
            release_name,
            release_namespace: release_namespace.clone(),
        }),
        distribution_version: version,
    }
}

/// Helm's values merge: maps merge key by key, anything else (lists included) replaces.
fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Reads `<path>/flux-system/`.
fn classic(root: &Path, path: &str, tree: &Tree) -> Result<Bootstrap, FluxError> {
    let dir = Path::new(path).join(BOOTSTRAP_DIR);
    let components = dir.join(COMPONENTS_FILE);
    let sync = dir.join(SYNC_FILE);
    for f in [&components, &sync] {
        // Read from the tree, which holds only regular files inside the repository (a
        // symbolic link to elsewhere is not read).
        if !tree.has_file(f) {
            return Err(FluxError::BootstrapFileMissing { file: f.clone() });
        }
    }
    let in_sync = |group: &'static str, kind: &'static str| {
        tree.objects.iter().find(|o| o.file == sync && o.is(group, kind))
    };
    let repo = in_sync(SOURCE_GROUP, "GitRepository")
        .ok_or_else(|| FluxError::BootstrapInvalid { file: sync.clone(), what: "GitRepository" })?;
    let ks = in_sync(KUSTOMIZE_GROUP, "Kustomization")
        .ok_or_else(|| FluxError::BootstrapInvalid { file: sync.clone(), what: "Kustomization" })?;
    let url = repo
        .str_at(&["spec", "url"])
        .ok_or_else(|| FluxError::BootstrapInvalid { file: sync.clone(), what: "GitRepository spec.url" })?;
    let ref_name = repo.str_at(&["spec", "ref", "name"]).map(str::to_owned);
    let branch = repo
        .str_at(&["spec", "ref", "branch"])
        .map(str::to_owned)
        .or_else(|| ref_name.as_deref().and_then(|r| r.strip_prefix("refs/heads/")).map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_GIT_BRANCH.to_owned());
    // Unreadable means no version, not an error: the apply reads the file again and names
    // it if it cannot.
    let flux_version = std::fs::read_to_string(root.join(&components))
        .ok()
        .and_then(|text| crate::compat::flux_version_from_components(&text));
    Ok(Bootstrap {
        form: BootstrapForm::Classic,
        components: Some(components),
        sync: Some(sync.clone()),
        instance: None,
        operator: None,
        source: SyncSource {
            name: NamespacedName::new(repo.namespace().unwrap_or(BOOTSTRAP_DIR), repo.name()),
            url: url.to_owned(),
            branch,
            ref_name,
            secret: repo.str_at(&["spec", "secretRef", "name"]).map(str::to_owned),
        },
        kustomization: NamespacedName::new(ks.namespace().unwrap_or(BOOTSTRAP_DIR), ks.name()),
        kustomization_path: ks.str_at(&["spec", "path"]).unwrap_or("").to_owned(),
        flux_version,
        looked_for: Vec::new(),
        notes: Vec::new(),
    })
}

fn refs(o: &Object, at: &[&str], default_ns: &str) -> Vec<NamespacedName> {
    o.at(at)
        .and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .filter_map(|d| {
                    let name = d.get("name")?.as_str()?;
                    let ns = d.get("namespace").and_then(Value::as_str).unwrap_or(default_ns);
                    Some(NamespacedName::new(ns, name))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn substitute_from(o: &Object, ns: &str) -> Vec<SubstituteRef> {
    o.at(&["spec", "postBuild", "substituteFrom"])
        .and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .filter(|s| s.get("kind").and_then(Value::as_str) == Some("Secret"))
                .filter_map(|s| {
                    Some(SubstituteRef {
                        secret: NamespacedName::new(ns, s.get("name")?.as_str()?),
                        optional: s.get("optional").and_then(Value::as_bool).unwrap_or(false),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The order to bring Kustomizations up in: dependencies first. The root Kustomization
/// comes first, since it is what applies the others; ties are broken by name so the order
/// is stable. Missing dependencies and cycles are errors that name them.
pub fn order(
    ks: &[Kustomization],
    root: &NamespacedName,
    path: &str,
) -> Result<Vec<NamespacedName>, FluxError> {
    let defined: BTreeSet<&NamespacedName> = ks.iter().map(|k| &k.name).collect();
    let mut deps: BTreeMap<&NamespacedName, BTreeSet<&NamespacedName>> = BTreeMap::new();
    for k in ks {
        let mut d = BTreeSet::new();
        for dep in &k.depends_on {
            let Some(&dep) = defined.get(dep) else {
                return Err(FluxError::MissingDependency {
                    from: k.name.clone(),
                    missing: dep.clone(),
                    path: path.to_owned(),
                });
            };
            d.insert(dep);
        }
        if &k.name != root && defined.contains(root) {
            d.insert(root);
        }
        deps.insert(&k.name, d);
    }

    // Kahn's algorithm over a sorted ready set.
    let mut out = Vec::with_capacity(ks.len());
    let mut done: BTreeSet<&NamespacedName> = BTreeSet::new();
    loop {
        let ready = deps
            .iter()
            .filter(|(n, d)| !done.contains(*n) && d.iter().all(|x| done.contains(x)))
            .map(|(n, _)| *n)
            .min_by_key(|n| (*n != root, *n));
        let Some(next) = ready else { break };
        done.insert(next);
        out.push(next.clone());
    }
    if out.len() < deps.len() {
        let left: BTreeMap<&NamespacedName, Vec<&NamespacedName>> = deps
            .iter()
            .filter(|(n, _)| !done.contains(*n))
            .map(|(n, d)| (*n, d.iter().filter(|x| !done.contains(*x)).copied().collect()))
            .collect();
        return Err(FluxError::Cycle { path: path.to_owned(), cycle: find_cycle(&left) });
    }
    Ok(out)
}

/// One cycle among nodes that each still wait on another: walk "depends on" edges until a
/// node repeats.
fn find_cycle(left: &BTreeMap<&NamespacedName, Vec<&NamespacedName>>) -> Vec<NamespacedName> {
    let Some((&start, _)) = left.iter().next() else { return Vec::new() };
    let mut path = vec![start];
    let mut cur = start;
    while let Some(&next) = left.get(cur).and_then(|d| d.first()) {
        if let Some(pos) = path.iter().position(|n| *n == next) {
            let mut cycle: Vec<NamespacedName> = path[pos..].iter().map(|n| (*n).clone()).collect();
            cycle.push(next.clone());
            return cycle;
        }
        path.push(next);
        cur = next;
    }
    path.into_iter().cloned().collect()
}

/// Directories under `clusters/`, for the error about a wrong `--path`.
pub fn cluster_dirs(root: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(root.join("clusters"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(|n| format!("clusters/{n}")))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(name: &str, deps: &[&str]) -> Kustomization {
        Kustomization {
            name: NamespacedName::new("flux-system", name),
            path: String::new(),
            depends_on: deps.iter().map(|d| NamespacedName::new("flux-system", d)).collect(),
            substitute_from: Vec::new(),
            wait: false,
            origin: format!("{name}.yaml#1"),
        }
    }

    fn names(v: &[NamespacedName]) -> Vec<&str> {
        v.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn root_first_then_dependencies() {
        let root = NamespacedName::new("flux-system", "flux-system");
        let ks = vec![
            k("apps", &["infra-configs"]),
            k("infra-configs", &["infra-controllers"]),
            k("infra-controllers", &[]),
            k("flux-system", &[]),
            k("monitoring-configs", &["monitoring-controllers"]),
            k("monitoring-controllers", &["infra-configs"]),
        ];
        let o = order(&ks, &root, "clusters/kyrion").expect("order");
        assert_eq!(
            names(&o),
            [
                "flux-system",
                "infra-controllers",
                "infra-configs",
                "apps",
                "monitoring-controllers",
                "monitoring-configs"
            ]
        );
    }

    #[test]
    fn helm_values_merge_maps_and_replace_lists() {
        let mut base = serde_json::json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge(&mut base, serde_json::json!({"a": {"c": [3], "e": true}, "d": "y"}));
        assert_eq!(base, serde_json::json!({"a": {"b": 1, "c": [3], "e": true}, "d": "y"}));
    }

    #[test]
    fn cycles_and_missing_dependencies_are_named() {
        let root = NamespacedName::new("flux-system", "flux-system");
        let ks = vec![k("flux-system", &[]), k("a", &["b"]), k("b", &["c"]), k("c", &["a"]), k("d", &[])];
        let e = order(&ks, &root, "clusters/x").expect_err("cycle");
        assert_eq!(
            e.to_string(),
            "the Kustomizations under clusters/x depend on each other in a cycle: \
             flux-system/a → flux-system/b → flux-system/c → flux-system/a"
        );
        let ks = vec![k("flux-system", &[]), k("apps", &["infra"])];
        let e = order(&ks, &root, "clusters/x").expect_err("missing");
        assert_eq!(
            e.to_string(),
            "Kustomization flux-system/apps depends on flux-system/infra, which no Kustomization applied from clusters/x defines"
        );
    }
}
