//! Where the sealed-secrets controller runs, read from the repository: the HelmRelease of
//! the `sealed-secrets` chart, resolved with helm-controller's naming rules and the chart's
//! `fullname` template. The keys must be restored into that namespace, and that Deployment
//! restarted, or the controller generates a fresh key and ignores the backup.

use serde::Serialize;
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

use crate::kustomize::Included;
use crate::manifests::{Object, Tree};

/// The chart's name, in both bitnami-labs' Helm repository and Bitnami's OCI registry.
pub const CHART: &str = "sealed-secrets";
pub const HELM_GROUP: &str = "helm.toolkit.fluxcd.io";
/// Upstream's defaults when nothing says otherwise: kubeseal's `--controller-namespace`
/// and `--controller-name`, and the namespace `controller.yaml` deploys to.
pub const DEFAULT_NAMESPACE: &str = "kube-system";
pub const DEFAULT_NAME: &str = "sealed-secrets-controller";

/// Where the controller was found, and how.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerLocation {
    pub namespace: String,
    /// The Deployment/Service name (what kubeseal calls `--controller-name`).
    pub name: String,
    /// The Helm release name, when found from a HelmRelease.
    pub release_name: Option<String>,
    /// `file#document` of the HelmRelease, or a word about flags.
    pub source: String,
}

/// The result of looking: found once, not at all, or ambiguously.
#[derive(Debug, Clone)]
pub enum Found {
    One(ControllerLocation),
    None,
    Many(Vec<String>),
}

/// Finds the HelmRelease(s) of the chart. Those the cluster's Kustomizations apply
/// (`reachable`, found by following kustomize's `resources:` from the cluster path, with
/// the namespace the build gives them) win over others, so a repository with several
/// clusters resolves to this cluster's. Only when none is reachable are the others looked at
/// (a controller committed but installed by hand).
pub fn find(tree: &Tree, reachable: &[Included]) -> Found {
    let near: Vec<(&Object, &str)> = reachable
        .iter()
        .map(|i| (&tree.objects[i.index], i.namespace.as_deref()))
        .filter(|(o, _)| o.is(HELM_GROUP, "HelmRelease") && chart_name(tree, o).as_deref() == Some(CHART))
        .map(|(o, ns)| (o, ns.unwrap_or_else(|| self::ns(o))))
        .collect();
    let pick = if near.is_empty() {
        tree.of(HELM_GROUP, "HelmRelease")
            .filter(|hr| chart_name(tree, hr).as_deref() == Some(CHART))
            .map(|o| (o, ns(o)))
            .collect()
    } else {
        near
    };
    match pick.as_slice() {
        [] => Found::None,
        [(hr, ns)] => Found::One(locate(hr, ns)),
        many => {
            Found::Many(many.iter().map(|(o, ns)| format!("{ns}/{} in {}", o.name(), o.origin())).collect())
        }
    }
}

fn ns(o: &Object) -> &str {
    o.namespace().unwrap_or("default")
}

/// The chart a HelmRelease installs, and where from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chart {
    pub name: String,
    /// The OCIRepository's or HelmRepository's URL, when that object is in the repository.
    pub url: Option<String>,
    /// `spec.ref.tag` of an OCIRepository, or `spec.chart.spec.version`.
    pub version: Option<String>,
    /// `spec.ref.digest` of an OCIRepository.
    pub digest: Option<String>,
}

/// `spec.chart.spec.chart`, or the last path element of the OCIRepository a `spec.chartRef`
/// points at (or, when that object is not in the repository, the chartRef's name).
pub fn chart(tree: &Tree, hr: &Object) -> Option<Chart> {
    if let Some(name) = hr.str_at(&["spec", "chart", "spec", "chart"]) {
        return Some(Chart {
            name: name.to_owned(),
            url: None,
            version: hr.str_at(&["spec", "chart", "spec", "version"]).map(str::to_owned),
            digest: None,
        });
    }
    let r = hr.at(&["spec", "chartRef"])?;
    let name = r.get("name").and_then(Value::as_str).unwrap_or("");
    let ref_ns = r.get("namespace").and_then(Value::as_str).unwrap_or(ns(hr));
    let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
    let target = tree
        .objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name && o.namespace().unwrap_or("default") == ref_ns);
    match target.and_then(|o| Some((o, o.str_at(&["spec", "url"])?))) {
        Some((o, url)) => Some(Chart {
            name: url.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_owned(),
            url: Some(url.to_owned()),
            version: o
                .str_at(&["spec", "ref", "tag"])
                .or(o.str_at(&["spec", "ref", "semver"]))
                .map(str::to_owned),
            digest: o.str_at(&["spec", "ref", "digest"]).map(str::to_owned),
        }),
        None => Some(Chart { name: name.to_owned(), url: None, version: None, digest: None }),
    }
}

pub fn chart_name(tree: &Tree, hr: &Object) -> Option<String> {
    chart(tree, hr).map(|c| c.name)
}

/// helm-controller's release namespace and name of a HelmRelease in namespace `ns`:
/// `targetNamespace` or its own; `releaseName` or `[targetNamespace-]name`
/// (`GetReleaseName`), shortened past 53 characters (`release.ShortenName`).
pub fn release_of(hr: &Object, ns: &str) -> (String, String) {
    let target = hr.str_at(&["spec", "targetNamespace"]).filter(|s| !s.is_empty());
    let release_ns = target.unwrap_or(ns).to_owned();
    let release = match (hr.str_at(&["spec", "releaseName"]).filter(|s| !s.is_empty()), target) {
        (Some(r), _) => r.to_owned(),
        (None, Some(t)) => format!("{t}-{}", hr.name()),
        (None, None) => hr.name().to_owned(),
    };
    (release_ns, shorten_release_name(&release))
}

/// The release as [`release_of`] names it, then the chart's `sealed-secrets.fullname`:
/// `fullnameOverride`, else the release name if it contains the chart name (nameOverride
/// replacing it), else `<release>-<chart>`, cut to 63; `values.namespace` overrides the
/// namespace (`sealed-secrets.namespace`).
fn locate(hr: &Object, hr_ns: &str) -> ControllerLocation {
    let (release_ns, release) = release_of(hr, hr_ns);
    let values = |k: &str| hr.str_at(&["spec", "values", k]).filter(|s| !s.is_empty());
    let name = match values("fullnameOverride") {
        Some(f) => trunc63(f),
        None => {
            let chart = values("nameOverride").unwrap_or(CHART);
            if release.contains(chart) { trunc63(&release) } else { trunc63(&format!("{release}-{chart}")) }
        }
    };
    ControllerLocation {
        namespace: values("namespace").unwrap_or(&release_ns).to_owned(),
        name,
        release_name: Some(release),
        source: format!("HelmRelease {hr_ns}/{} in {}", hr.name(), hr.origin()),
    }
}

/// helm-controller's `release.ShortenName`.
pub fn shorten_release_name(name: &str) -> String {
    const MAX: usize = 53;
    const HASH: usize = 12;
    if name.len() <= MAX {
        return name.to_owned();
    }
    let sum = crate::keys::hex(&Sha256::digest(name.as_bytes()));
    format!("{}-{}", &name[..MAX - (HASH + 1)], &sum[..HASH])
}

/// Helm's `trunc 63 | trimSuffix "-"`.
fn trunc63(s: &str) -> String {
    let cut: String = s.chars().take(63).collect();
    cut.strip_suffix('-').map(str::to_owned).unwrap_or(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("infra")).expect("mkdir");
        std::fs::write(dir.path().join("infra/release.yaml"), yaml).expect("write");
        Tree::load(dir.path()).expect("load")
    }

    fn one(t: &Tree) -> ControllerLocation {
        match find(t, &[]) {
            Found::One(c) => c,
            other => panic!("expected one controller, got {other:?}"),
        }
    }

    #[test]
    fn elysium_release() {
        let t = tree(
            "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: sealed-secrets, namespace: flux-system}\n\
             spec:\n  chart: {spec: {chart: sealed-secrets}}\n  releaseName: sealed-secrets-controller\n  targetNamespace: flux-system\n",
        );
        let c = one(&t);
        assert_eq!((c.namespace.as_str(), c.name.as_str()), ("flux-system", "sealed-secrets-controller"));
        assert_eq!(c.source, "HelmRelease flux-system/sealed-secrets in infra/release.yaml#1");
    }

    #[test]
    fn default_names_follow_helm_controller_and_the_chart() {
        let t = tree(
            "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: sealed-secrets, namespace: flux-system}\n\
             spec:\n  chart: {spec: {chart: sealed-secrets}}\n  targetNamespace: kube-system\n",
        );
        let c = one(&t);
        assert_eq!(c.release_name.as_deref(), Some("kube-system-sealed-secrets"));
        assert_eq!((c.namespace.as_str(), c.name.as_str()), ("kube-system", "kube-system-sealed-secrets"));

        let t = tree(
            "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: ss, namespace: infra}\n\
             spec:\n  chartRef: {kind: OCIRepository, name: ss-chart}\n  values: {fullnameOverride: sealed-secrets-controller}\n\
             ---\napiVersion: source.toolkit.fluxcd.io/v1\nkind: OCIRepository\nmetadata: {name: ss-chart, namespace: infra}\n\
             spec: {url: oci://registry-1.docker.io/bitnamicharts/sealed-secrets}\n",
        );
        let c = one(&t);
        assert_eq!((c.namespace.as_str(), c.name.as_str()), ("infra", "sealed-secrets-controller"));
        assert_eq!(c.release_name.as_deref(), Some("ss"));
    }

    #[test]
    fn long_release_names_are_shortened_like_helm_controller() {
        let long = "a-very-long-target-namespace-name-for-the-release-sealed-secrets";
        let s = shorten_release_name(long);
        assert_eq!(s.len(), 53);
        assert!(s.starts_with(&long[..40]) && s.as_bytes()[40] == b'-', "{s}");
        assert_eq!(shorten_release_name("short"), "short");
    }
}
