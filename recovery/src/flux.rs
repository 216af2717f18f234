//! What Flux needs from the repository to come back: the bootstrap manifests that
//! `flux bootstrap` commits (`<path>/flux-system/gotk-components.yaml`, `gotk-sync.yaml`),
//! the sync GitRepository and Kustomization in gotk-sync, and the dependency order of the
//! cluster's Kustomizations (`spec.dependsOn`). Refuses, with an explanation, repositories
//! bootstrapped by the Flux Operator. Applying any of it is the apply phase's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml_ng::Value;

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

/// Why the Flux side of the repository cannot be recovered as it is.
#[derive(Debug, thiserror::Error)]
pub enum FluxError {
    #[error(
        "{path}/{BOOTSTRAP_DIR}/ does not exist, and the repository has a FluxInstance ({instance} in {file}): \
         it is bootstrapped by the Flux Operator, which `recover` does not support yet (it restores clusters \
         bootstrapped with `flux bootstrap`, whose {COMPONENTS_FILE} and {SYNC_FILE} are committed). \
         Recover it by installing the Flux Operator and applying that FluxInstance after restoring the \
         sealed-secrets keys by hand, or point --branch at a commit that still has {path}/{BOOTSTRAP_DIR}/"
    )]
    FluxOperator { path: String, instance: String, file: PathBuf },
    #[error(
        "{path}/{BOOTSTRAP_DIR}/ does not exist: there are no Flux bootstrap manifests ({COMPONENTS_FILE}, \
         {SYNC_FILE}, written by `flux bootstrap`) to restore from; check --path and --branch"
    )]
    NoBootstrap { path: String },
    #[error(
        "{file} is missing: `flux bootstrap` commits it next to the other bootstrap manifests; check --branch"
    )]
    BootstrapFileMissing { file: PathBuf },
    #[error("{file} has no {what}; it is not what `flux bootstrap` writes")]
    BootstrapInvalid { file: PathBuf, what: &'static str },
    #[error("Kustomization {name} is defined twice: in {first} and {second}")]
    Duplicate { name: NamespacedName, first: String, second: String },
    #[error("Kustomization {from} depends on {missing}, which is not defined under {path}")]
    MissingDependency { from: NamespacedName, missing: NamespacedName, path: String },
    #[error("the Kustomizations under {path} depend on each other in a cycle: {}", cycle.iter().map(ToString::to_string).collect::<Vec<_>>().join(" → "))]
    Cycle { path: String, cycle: Vec<NamespacedName> },
}

/// The sync GitRepository of gotk-sync.yaml.
#[derive(Debug, Clone, Serialize)]
pub struct SyncSource {
    pub name: NamespacedName,
    pub url: String,
    pub branch: String,
    /// The deploy-key Secret it reads (`spec.secretRef.name`), `flux-system` by default.
    pub secret: Option<String>,
}

/// The bootstrap manifests: what the apply phase applies first.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    /// Relative to the repository root.
    pub components: PathBuf,
    pub sync: PathBuf,
    pub source: SyncSource,
    /// The root Kustomization (`flux-system`), which applies everything else under `path`.
    pub kustomization: NamespacedName,
    /// Its `spec.path`.
    pub kustomization_path: String,
    /// The Flux version the bootstrap installs (`v2.6.0`, or a range such as `2.x`), if
    /// it says: what [`crate::compat::requirement`] reads to check the server's version.
    pub flux_version: Option<String>,
}

/// Finds and reads `<path>/flux-system/`.
pub fn bootstrap(root: &Path, path: &str, tree: &Tree) -> Result<Bootstrap, FluxError> {
    let dir = Path::new(path).join(BOOTSTRAP_DIR);
    if !root.join(&dir).is_dir() {
        if let Some(fi) = tree.of(FLUX_OPERATOR_GROUP, "FluxInstance").next() {
            return Err(FluxError::FluxOperator {
                path: path.to_owned(),
                instance: format!("{}/{}", fi.namespace().unwrap_or("flux-system"), fi.name()),
                file: fi.file.clone(),
            });
        }
        return Err(FluxError::NoBootstrap { path: path.to_owned() });
    }
    let components = dir.join(COMPONENTS_FILE);
    let sync = dir.join(SYNC_FILE);
    for f in [&components, &sync] {
        if !root.join(f).is_file() {
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
    // Unreadable means no version, not an error: the apply reads the file again and names
    // it if it cannot.
    let flux_version = std::fs::read_to_string(root.join(&components))
        .ok()
        .and_then(|text| crate::compat::flux_version_from_components(&text));
    Ok(Bootstrap {
        components,
        sync: sync.clone(),
        source: SyncSource {
            name: NamespacedName::new(repo.namespace().unwrap_or(BOOTSTRAP_DIR), repo.name()),
            url: url.to_owned(),
            branch: repo.str_at(&["spec", "ref", "branch"]).unwrap_or(DEFAULT_GIT_BRANCH).to_owned(),
            secret: repo.str_at(&["spec", "secretRef", "name"]).map(str::to_owned),
        },
        kustomization: NamespacedName::new(ks.namespace().unwrap_or(BOOTSTRAP_DIR), ks.name()),
        kustomization_path: ks.str_at(&["spec", "path"]).unwrap_or("").to_owned(),
        flux_version,
    })
}

/// A Flux Kustomization under the cluster path.
#[derive(Debug, Clone, Serialize)]
pub struct Kustomization {
    pub name: NamespacedName,
    /// `spec.path`: the directory it applies.
    pub path: String,
    pub depends_on: Vec<NamespacedName>,
    /// Secrets it substitutes variables from (`spec.postBuild.substituteFrom`, kind Secret).
    pub substitute_from: Vec<SubstituteRef>,
    /// Where it is defined, `file#document`.
    pub origin: String,
}

/// One `postBuild.substituteFrom` Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SubstituteRef {
    pub secret: NamespacedName,
    /// `optional: true`: Flux goes on without it.
    pub optional: bool,
}

/// Every `kustomize.toolkit.fluxcd.io` Kustomization in files under `path`. One without a
/// namespace is taken to be in the root Kustomization's namespace (`flux-system`): that is
/// where every Flux bootstrap puts them, and Kustomizations outside it are unusual.
pub fn kustomizations(
    tree: &Tree,
    path: &str,
    default_namespace: &str,
) -> Result<Vec<Kustomization>, FluxError> {
    let dir = Path::new(path);
    let mut seen: BTreeMap<NamespacedName, String> = BTreeMap::new();
    let mut out = Vec::new();
    for o in tree.of(KUSTOMIZE_GROUP, "Kustomization").filter(|o| o.is_under(dir)) {
        let ns = o.namespace().unwrap_or(default_namespace);
        let name = NamespacedName::new(ns, o.name());
        if let Some(first) = seen.insert(name.clone(), o.origin()) {
            return Err(FluxError::Duplicate { name, first, second: o.origin() });
        }
        out.push(Kustomization {
            path: o.str_at(&["spec", "path"]).unwrap_or("").to_owned(),
            depends_on: refs(o, &["spec", "dependsOn"], ns),
            substitute_from: substitute_from(o, ns),
            origin: o.origin(),
            name,
        });
    }
    Ok(out)
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
            "Kustomization flux-system/apps depends on flux-system/infra, which is not defined under clusters/x"
        );
    }
}
