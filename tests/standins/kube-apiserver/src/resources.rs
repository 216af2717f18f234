//! The kinds the stand-in serves: built-in ones as a table, and those of established
//! CustomResourceDefinitions derived from the CRD objects themselves. Adding a built-in
//! kind is one entry in [`builtins`]: storage, verbs, discovery and watch are generic.

use serde_json::Value;

/// Verbs of an ordinary resource, in the order discovery lists them.
pub const VERBS: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
/// Verbs of a `status` subresource.
pub const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// Fields every kind supports in field selectors (upstream's `DefaultClusterScopedAttr`
/// / `DefaultNamespaceScopedAttr`).
const META_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// One served resource at one group/version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `status` subresource: main-resource writes keep the stored `.status`, and
    /// `/status` writes change nothing else.
    pub status_subresource: bool,
    /// Keeps `metadata.generation` (bumped on changes outside metadata and status).
    pub tracks_generation: bool,
    /// Extra field-selector fields beyond `metadata.name` / `metadata.namespace`.
    pub extra_fields: &'static [&'static str],
    /// Other subresources for discovery: (name, group, version, kind, verbs).
    pub subresources: Vec<(&'static str, &'static str, &'static str, &'static str, &'static [&'static str])>,
    /// The CRD this kind comes from (`plural.group`), `None` for built-ins.
    pub crd: Option<String>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn field_selectors(&self) -> Vec<&'static str> {
        META_FIELDS.iter().chain(self.extra_fields).copied().collect()
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    generation: bool,
    fields: &'static [&'static str],
}

/// Built-in kinds (a K3s v1.31 server serves many more; these are the ones elysium-node
/// uses). Short names, scopes and field-selector support as upstream registers them.
const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        short: &["ns"],
        status: true,
        generation: false,
        fields: &["status.phase"],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        short: &["no"],
        status: true,
        generation: false,
        fields: &["spec.unschedulable"],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
        short: &[],
        status: false,
        generation: false,
        fields: &["type"],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
        short: &["cm"],
        status: false,
        generation: false,
        fields: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
        short: &["sa"],
        status: false,
        generation: false,
        fields: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        short: &["po"],
        status: true,
        generation: false,
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
        short: &["deploy"],
        status: true,
        generation: true,
        fields: &[],
    },
    Builtin {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        namespaced: true,
        short: &["pdb"],
        status: true,
        generation: true,
        fields: &[],
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
        short: &["crd", "crds"],
        status: true,
        generation: true,
        fields: &[],
    },
];

pub fn builtins() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|b| ResourceType {
            group: b.group.to_owned(),
            version: b.version.to_owned(),
            kind: b.kind.to_owned(),
            list_kind: format!("{}List", b.kind),
            plural: b.plural.to_owned(),
            singular: b.kind.to_lowercase(),
            namespaced: b.namespaced,
            short_names: b.short.iter().map(|s| (*s).to_owned()).collect(),
            categories: if matches!(b.kind, "Pod" | "Deployment") { vec!["all".to_owned()] } else { vec![] },
            status_subresource: b.status,
            tracks_generation: b.generation,
            extra_fields: b.fields,
            subresources: if b.kind == "Pod" {
                vec![("eviction", "policy", "v1", "Eviction", &["create"])]
            } else {
                vec![]
            },
            crd: None,
        })
        .collect()
}

/// The kinds a CRD object defines, one per served version, if it is Established.
pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
    if !condition_true(crd, "Established") {
        return Vec::new();
    }
    let Some(spec) = crd.get("spec") else { return Vec::new() };
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    let strings = |p: &str| -> Vec<String> {
        spec.pointer(p)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let (group, kind, plural) = (s("/group"), s("/names/kind"), s("/names/plural"));
    let singular =
        Some(s("/names/singular")).filter(|x| !x.is_empty()).unwrap_or_else(|| kind.to_lowercase());
    let list_kind =
        Some(s("/names/listKind")).filter(|x| !x.is_empty()).unwrap_or_else(|| format!("{kind}List"));
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .map(|v| ResourceType {
            group: group.clone(),
            version: v.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced: s("/scope") == "Namespaced",
            short_names: strings("/names/shortNames"),
            categories: strings("/names/categories"),
            status_subresource: v.pointer("/subresources/status").is_some(),
            tracks_generation: true,
            extra_fields: &[],
            subresources: vec![],
            crd: Some(name.clone()),
        })
        .collect()
}

/// Whether `status.conditions` has `type` with `status: "True"`.
pub fn condition_true(obj: &Value, type_: &str) -> bool {
    obj.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(type_)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

/// Kubernetes version priority (`v1` > `v1beta2` > `v1beta1` > `v1alpha1` > others by
/// name), as discovery orders versions and picks the preferred one.
pub fn version_priority(v: &str) -> (u8, u32, u32, String) {
    let parse = |rest: &str| -> Option<(u8, u32, u32)> {
        let (major, tail) = rest.split_at(rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len()));
        let major: u32 = major.parse().ok()?;
        if tail.is_empty() {
            return Some((3, major, 0));
        }
        for (label, rank) in [("beta", 2), ("alpha", 1)] {
            if let Some(n) = tail.strip_prefix(label) {
                return Some((rank, major, n.parse().ok()?));
            }
        }
        None
    };
    match v.strip_prefix('v').and_then(parse) {
        Some((rank, major, minor)) => (rank, major, minor, String::new()),
        None => (0, 0, 0, v.to_owned()),
    }
}

/// Versions sorted most-preferred first.
pub fn sort_versions(versions: &mut [String]) {
    versions.sort_by(|a, b| {
        let (pa, pb) = (version_priority(a), version_priority(b));
        (pb.0, pb.1, pb.2).cmp(&(pa.0, pa.1, pa.2)).then(pa.3.cmp(&pb.3))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v: Vec<String> = ["v1beta1", "foo", "v2", "v1alpha1", "v1", "v1beta2", "v10"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        sort_versions(&mut v);
        assert_eq!(v, ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }
}
