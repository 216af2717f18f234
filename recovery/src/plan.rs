//! The apply phase's plan: which objects go to the cluster and in which order, as data.
//! Built by a pure function from what the preflight found, the bootstrap manifests and the
//! deploy key; `--dry-run` prints it, [`crate::apply`] carries it out. Reading files and
//! talking to the cluster are not this module's.
//!
//! The order is the one that cannot strand the cluster (issue 5; docs/reference/flux.md#bootstrap,
//! docs/reference/sealed-secrets.md#start-up):
//! 1. Namespaces, then the sealing-key Secrets, **before** any sealed-secrets controller
//!    starts: it lists the keys once, at start-up, and generates a fresh one if it finds
//!    none.
//! 2. `gotk-components.yaml`: CustomResourceDefinitions first, wait until Established, then
//!    the rest in kind order (Helm's install order), then the deploy-key Secret the
//!    GitRepository reads, then `gotk-sync.yaml`. Applying the sync objects last means
//!    source-controller's first clone already has its credentials.
//! 3. Restart a sealed-secrets controller that was already running, so it reads the keys.
//! 4. Follow Flux until every Kustomization is ready.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::flux::NamespacedName;

/// The field manager of every write `recover` makes (server-side apply and patches).
pub use elysium_kube::FIELD_MANAGER;
/// Helm's ownership metadata (helm/helm pkg/action/validate.go `existingResourceConflict`).
pub const HELM_MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "Helm");
pub const HELM_RELEASE_NAME: &str = "meta.helm.sh/release-name";
pub const HELM_RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";
/// `apiextensions.k8s.io`: CRDs are applied before everything else in gotk-components.
pub const CRD_GROUP: &str = "apiextensions.k8s.io";

/// Metadata the API server owns. A backup (`kubectl get -o yaml`) carries them and the
/// server refuses or misreads them on a new cluster ("resourceVersion should not be set on
/// objects to be created", docs/reference/kubernetes.md#objects-from-backups); the
/// last-applied annotation may hold a copy of a Secret's data.
const SERVER_METADATA: &[&str] = &[
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Helm's install order (helm/helm `pkg/releaseutil/kind_sorter.go`, `InstallOrder`): kinds
/// that others refer to come first. Kinds not listed go after, in file order.
const KIND_ORDER: &[&str] = &[
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// Which object: what server-side apply addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectId {
    /// The API group (empty for the core group).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }
    pub fn version(&self) -> &str {
        self.api_version.rsplit_once('/').map_or(self.api_version.as_str(), |(_, v)| v)
    }
    /// A stable key for the progress ledger.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.api_version,
            self.kind,
            self.namespace.as_deref().unwrap_or(""),
            self.name
        )
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Where in the order an object belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Namespaces,
    SealingKeys,
    Crds,
    Components,
    DeployKey,
    Sync,
}

impl Phase {
    pub fn title(self) -> &'static str {
        match self {
            Phase::Namespaces => "namespaces",
            Phase::SealingKeys => "sealing keys (before the controller starts)",
            Phase::Crds => "Flux CRDs",
            Phase::Components => "Flux components",
            Phase::DeployKey => "deploy key",
            Phase::Sync => "Flux sync",
        }
    }
}

/// Why a manifest cannot be applied as it is.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{origin}: not a Kubernetes object (no apiVersion, kind or metadata.name)")]
    Incomplete { origin: String },
}

/// One object to apply. Its body may hold secrets (the sealing keys, the deploy key):
/// `Debug` shows only its identity, and nothing prints the body.
#[derive(Clone)]
pub struct Manifest {
    pub phase: Phase,
    pub id: ObjectId,
    /// `file#document`, or what it was built from.
    pub origin: String,
    /// A Secret whose values must never be shown.
    pub secret: bool,
    body: Value,
    hash: String,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("phase", &self.phase)
            .field("id", &self.id)
            .field("origin", &self.origin)
            .field("hash", &self.hash)
            .field("body", &"<not shown>")
            .finish()
    }
}

impl Manifest {
    /// An object as it is to be applied: server-owned metadata and `status` removed.
    pub fn new(
        phase: Phase,
        origin: String,
        mut body: Value,
        secret: bool,
    ) -> Result<Manifest, ManifestError> {
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SERVER_METADATA {
                meta.remove(*k);
            }
            if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                ann.remove(LAST_APPLIED);
                if ann.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
        if let Some(obj) = body.as_object_mut() {
            obj.remove("status");
        }
        let s =
            |p: &str| body.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let (Some(api_version), Some(kind), Some(name)) = (s("/apiVersion"), s("/kind"), s("/metadata/name"))
        else {
            return Err(ManifestError::Incomplete { origin });
        };
        let id = ObjectId { api_version, kind, namespace: s("/metadata/namespace"), name };
        // serde_json's maps are sorted, so equal objects hash equally.
        let hash = crate::keys::hex(&Sha256::digest(body.to_string().as_bytes()));
        Ok(Manifest { phase, id, origin, secret, body, hash })
    }

    /// The same object with the metadata Helm adopts an existing object by
    /// (docs/reference/flux.md#helm-adoption): the `app.kubernetes.io/managed-by: Helm`
    /// label and the `meta.helm.sh/release-name`/`release-namespace` annotations of the
    /// release that will own it. Without them helm-controller refuses to install over it
    /// ("exists and cannot be imported into the current release").
    pub fn adopted_by(&self, owner: &crate::flux::HelmOwner) -> Result<Manifest, ManifestError> {
        let mut body = self.body.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            let labels = meta.entry("labels").or_insert_with(|| serde_json::json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert(HELM_MANAGED_BY.0.into(), HELM_MANAGED_BY.1.into());
            }
            let ann = meta.entry("annotations").or_insert_with(|| serde_json::json!({}));
            if let Some(a) = ann.as_object_mut() {
                a.insert(HELM_RELEASE_NAME.into(), owner.release_name.clone().into());
                a.insert(HELM_RELEASE_NAMESPACE.into(), owner.release_namespace.clone().into());
            }
        }
        Manifest::new(self.phase, self.origin.clone(), body, self.secret)
    }

    /// The object to send. Never log or print it.
    pub fn body(&self) -> &Value {
        &self.body
    }

    /// SHA-256 of the body: what the ledger records, so that a changed object is applied
    /// again and an unchanged one is not.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn is_crd(&self) -> bool {
        self.id.group() == CRD_GROUP && self.id.kind == "CustomResourceDefinition"
    }

    pub fn is_namespace(&self) -> bool {
        self.id.api_version == "v1" && self.id.kind == "Namespace"
    }

    /// For a CRD: the group, served versions, kind, plural and whether it is namespaced,
    /// which the objects that use it need before discovery knows it.
    pub fn crd_defines(&self) -> Option<CrdKind> {
        if !self.is_crd() {
            return None;
        }
        let spec = self.body.get("spec")?;
        let s = |p: &str| spec.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
                    .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Some(CrdKind {
            group: s("/group")?,
            kind: s("/names/kind")?,
            plural: s("/names/plural")?,
            versions,
            namespaced: s("/scope").as_deref() == Some("Namespaced"),
        })
    }
}

/// What a CRD in the plan will serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdKind {
    pub group: String,
    pub kind: String,
    pub plural: String,
    pub versions: Vec<String>,
    pub namespaced: bool,
}

impl CrdKind {
    pub fn serves(&self, id: &ObjectId) -> bool {
        self.group == id.group() && self.kind == id.kind && self.versions.iter().any(|v| v == id.version())
    }
}

/// One thing to do, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Server-side apply with [`FIELD_MANAGER`] and force.
    Apply(Manifest),
    /// Wait until these CRDs are Established, then look their kinds up again.
    WaitEstablished { crds: Vec<String> },
    /// Print the new deploy key's public half and wait until the operator has added it
    /// to the Git host.
    ConfirmDeployKey { repository: String },
    /// Restart the sealed-secrets controller if it is running, so it loads the keys.
    RestartController { deployment: NamespacedName },
    /// Wait until the Flux Operator reports the FluxInstance Ready (it installed the
    /// controllers and made the sync objects).
    WaitInstance { instance: NamespacedName },
    /// Follow the GitRepository and the Kustomizations until ready.
    Follow { source: NamespacedName, kustomizations: Vec<NamespacedName>, expected_revision: Option<String> },
}

/// What the plan is made from: everything already read and checked.
#[derive(Debug)]
pub struct PlanInput {
    /// The documents of gotk-components.yaml, in file order.
    pub components: Vec<Manifest>,
    /// The documents of gotk-sync.yaml, in file order.
    pub sync: Vec<Manifest>,
    /// The sealing-key Secrets, already in the controller's namespace.
    pub keys: Vec<Manifest>,
    /// The controller's namespace: it must exist before the keys go in.
    pub key_namespace: String,
    /// The deploy-key Secret to apply, if one is to be applied (none when the cluster
    /// already has it and no key was given).
    pub deploy_key: Option<Manifest>,
    /// The deploy key was generated now: the operator must add it to the Git host.
    pub confirm_deploy_key: bool,
    pub repository: String,
    pub controller: NamespacedName,
    pub source: NamespacedName,
    /// Kustomizations in dependency order, the root sync first.
    pub kustomizations: Vec<NamespacedName>,
    pub expected_revision: Option<String>,
    /// The FluxInstance among the sync objects, for a Flux Operator bootstrap.
    pub instance: Option<NamespacedName>,
}

/// The ordered steps.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// Every object the plan applies, in order.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.steps.iter().filter_map(|s| match s {
            Step::Apply(m) => Some(m),
            _ => None,
        })
    }

    /// The CRDs the plan applies, and what they serve.
    pub fn crd_kinds(&self) -> Vec<CrdKind> {
        self.manifests().filter_map(Manifest::crd_defines).collect()
    }
}

fn kind_rank(kind: &str) -> usize {
    KIND_ORDER.iter().position(|k| *k == kind).unwrap_or(KIND_ORDER.len())
}

/// Orders everything. Pure: the same input gives the same plan.
pub fn plan(input: PlanInput) -> Plan {
    let PlanInput {
        components,
        sync,
        keys,
        key_namespace,
        deploy_key,
        confirm_deploy_key,
        repository,
        controller,
        source,
        kustomizations,
        expected_revision,
        instance,
    } = input;
    let mut steps = Vec::new();

    // 1. Namespaces: those the manifests define, then the controller's if none defines it.
    let (mut namespaces, components): (Vec<Manifest>, Vec<Manifest>) =
        components.into_iter().partition(Manifest::is_namespace);
    let (sync_namespaces, sync): (Vec<Manifest>, Vec<Manifest>) =
        sync.into_iter().partition(Manifest::is_namespace);
    for ns in sync_namespaces {
        if !namespaces.iter().any(|n| n.id == ns.id) {
            namespaces.push(ns);
        }
    }
    if !namespaces.iter().any(|n| n.id.name == key_namespace) {
        let body =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": key_namespace}});
        // A literal with apiVersion, kind and name: cannot fail.
        if let Ok(m) =
            Manifest::new(Phase::Namespaces, "the sealed-secrets controller's namespace".into(), body, false)
        {
            namespaces.push(m);
        }
    }
    for mut ns in namespaces {
        ns.phase = Phase::Namespaces;
        steps.push(Step::Apply(ns));
    }

    // 1b. The sealing keys.
    for mut k in keys {
        k.phase = Phase::SealingKeys;
        steps.push(Step::Apply(k));
    }

    // 2. CRDs, Established, the rest by kind.
    let (crds, mut rest): (Vec<Manifest>, Vec<Manifest>) = components.into_iter().partition(Manifest::is_crd);
    let crd_names: Vec<String> = crds.iter().map(|c| c.id.name.clone()).collect();
    for mut c in crds {
        c.phase = Phase::Crds;
        steps.push(Step::Apply(c));
    }
    if !crd_names.is_empty() {
        steps.push(Step::WaitEstablished { crds: crd_names });
    }
    rest.sort_by_key(|m| kind_rank(&m.id.kind)); // stable: file order within a kind
    for mut m in rest {
        m.phase = Phase::Components;
        steps.push(Step::Apply(m));
    }

    // Deploy key, its confirmation, then the sync objects.
    if let Some(mut dk) = deploy_key {
        dk.phase = Phase::DeployKey;
        steps.push(Step::Apply(dk));
    }
    if confirm_deploy_key {
        steps.push(Step::ConfirmDeployKey { repository });
    }
    for mut m in sync {
        m.phase = Phase::Sync;
        steps.push(Step::Apply(m));
    }
    if let Some(instance) = instance {
        steps.push(Step::WaitInstance { instance });
    }

    // 3. and 4.
    steps.push(Step::RestartController { deployment: controller });
    steps.push(Step::Follow { source, kustomizations, expected_revision });
    Plan { steps }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut n = 0;
        let mut phase = None;
        for step in &self.steps {
            n += 1;
            match step {
                Step::Apply(m) => {
                    if phase != Some(m.phase) {
                        writeln!(f, "  {}", m.phase.title())?;
                        phase = Some(m.phase);
                    }
                    writeln!(f, "    {n:>3}. apply {}  ({})", m.id, m.origin)?;
                }
                Step::WaitEstablished { crds } => {
                    phase = None;
                    writeln!(f, "    {n:>3}. wait until the {} CRDs are Established", crds.len())?;
                }
                Step::ConfirmDeployKey { repository } => {
                    writeln!(f, "    {n:>3}. wait until the new deploy key is added to {repository}")?;
                }
                Step::WaitInstance { instance } => {
                    phase = None;
                    writeln!(
                        f,
                        "    {n:>3}. wait until FluxInstance {instance} is Ready (the operator installs Flux)"
                    )?;
                }
                Step::RestartController { deployment } => {
                    phase = None;
                    writeln!(f, "  sealed-secrets controller")?;
                    writeln!(f, "    {n:>3}. restart Deployment {deployment} if it is already running")?;
                }
                Step::Follow { source, kustomizations, expected_revision } => {
                    writeln!(f, "  Flux")?;
                    let rev = expected_revision.as_deref().unwrap_or("any revision");
                    writeln!(f, "    {n:>3}. follow GitRepository {source} until Ready at {rev}")?;
                    let names: Vec<String> = kustomizations.iter().map(ToString::to_string).collect();
                    writeln!(f, "         then Kustomizations {}", names.join(" → "))?;
                    writeln!(f, "         then HelmReleases and SealedSecrets")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(kind: &str, api: &str, ns: Option<&str>, name: &str) -> Manifest {
        let mut body = json!({"apiVersion": api, "kind": kind, "metadata": {"name": name}});
        if let Some(ns) = ns {
            body["metadata"]["namespace"] = json!(ns);
        }
        Manifest::new(Phase::Components, format!("{name}.yaml#1"), body, false).expect("manifest")
    }

    fn input() -> PlanInput {
        let fs = NamespacedName::new("flux-system", "flux-system");
        PlanInput {
            components: vec![
                m("Namespace", "v1", None, "flux-system"),
                m("CustomResourceDefinition", "apiextensions.k8s.io/v1", None, "a.example.org"),
                m("Deployment", "apps/v1", Some("flux-system"), "source-controller"),
                m("ServiceAccount", "v1", Some("flux-system"), "sa"),
                m("CustomResourceDefinition", "apiextensions.k8s.io/v1", None, "b.example.org"),
                m("ClusterRole", "rbac.authorization.k8s.io/v1", None, "role"),
            ],
            sync: vec![
                m("GitRepository", "source.toolkit.fluxcd.io/v1", Some("flux-system"), "flux-system"),
                m("Kustomization", "kustomize.toolkit.fluxcd.io/v1", Some("flux-system"), "flux-system"),
            ],
            keys: vec![m("Secret", "v1", Some("kube-system"), "sealed-secrets-keyab12c")],
            key_namespace: "kube-system".into(),
            deploy_key: Some(m("Secret", "v1", Some("flux-system"), "flux-system")),
            confirm_deploy_key: true,
            repository: "ssh://git@github.com/x/y".into(),
            controller: NamespacedName::new("kube-system", "sealed-secrets-controller"),
            source: fs.clone(),
            kustomizations: vec![fs],
            expected_revision: Some("main@sha1:abc".into()),
            instance: None,
        }
    }

    fn shape(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .map(|s| match s {
                Step::Apply(m) => format!("{:?} {}", m.phase, m.id),
                Step::WaitEstablished { crds } => format!("wait {}", crds.join(",")),
                Step::ConfirmDeployKey { .. } => "confirm".into(),
                Step::WaitInstance { instance } => format!("wait instance {instance}"),
                Step::RestartController { deployment } => format!("restart {deployment}"),
                Step::Follow { .. } => "follow".into(),
            })
            .collect()
    }

    #[test]
    fn the_order_cannot_strand_the_cluster() {
        assert_eq!(
            shape(&plan(input())),
            [
                "Namespaces Namespace flux-system",
                "Namespaces Namespace kube-system",
                "SealingKeys Secret kube-system/sealed-secrets-keyab12c",
                "Crds CustomResourceDefinition a.example.org",
                "Crds CustomResourceDefinition b.example.org",
                "wait a.example.org,b.example.org",
                "Components ServiceAccount flux-system/sa",
                "Components ClusterRole role",
                "Components Deployment flux-system/source-controller",
                "DeployKey Secret flux-system/flux-system",
                "confirm",
                "Sync GitRepository flux-system/flux-system",
                "Sync Kustomization flux-system/flux-system",
                "restart kube-system/sealed-secrets-controller",
                "follow",
            ]
        );
    }

    #[test]
    fn an_operator_bootstrap_waits_for_its_instance_before_the_controller_and_flux() {
        let mut i = input();
        i.sync = vec![m("FluxInstance", "fluxcd.controlplane.io/v1", Some("flux-system"), "flux")];
        i.instance = Some(NamespacedName::new("flux-system", "flux"));
        let s = shape(&plan(i));
        let tail: Vec<&str> = s.iter().rev().take(4).rev().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "Sync FluxInstance flux-system/flux",
                "wait instance flux-system/flux",
                "restart kube-system/sealed-secrets-controller",
                "follow"
            ]
        );
    }

    #[test]
    fn adoption_adds_helms_ownership_and_keeps_the_rest() {
        let owner = crate::flux::HelmOwner {
            helm_release: NamespacedName::new("flux-system", "flux-operator"),
            origin: "r.yaml#1".into(),
            release_name: "flux-operator".into(),
            release_namespace: "flux-system".into(),
        };
        let mut body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "flux-system", "labels": {"app": "x"}}});
        let plain = Manifest::new(Phase::Components, "m#1".into(), body.clone(), false).expect("manifest");
        let adopted = plain.adopted_by(&owner).expect("adopted");
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("Helm");
        body["metadata"]["annotations"] = json!({"meta.helm.sh/release-name": "flux-operator", "meta.helm.sh/release-namespace": "flux-system"});
        assert_eq!(adopted.body(), &body);
        assert_ne!(adopted.hash(), plain.hash(), "the ledger sees the change");
    }

    #[test]
    fn server_metadata_and_status_are_stripped_and_the_hash_follows_content() {
        let body = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "k", "namespace": "ns", "resourceVersion": "12", "uid": "u", "creationTimestamp": "t",
                "managedFields": [], "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"},
                "annotations": {LAST_APPLIED: "{\"data\":{}}"}},
            "data": {"tls.key": "a2V5"}, "status": {},
        });
        let a = Manifest::new(Phase::SealingKeys, "keys".into(), body.clone(), true).expect("manifest");
        assert_eq!(
            a.body()["metadata"],
            json!({"name": "k", "namespace": "ns", "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}})
        );
        assert!(a.body().get("status").is_none());
        assert!(!format!("{a:?}").contains("a2V5"));
        let mut changed = body;
        changed["data"]["tls.key"] = json!("b3RoZXI=");
        let b = Manifest::new(Phase::SealingKeys, "keys".into(), changed, true).expect("manifest");
        assert_ne!(a.hash(), b.hash());
        assert!(matches!(
            Manifest::new(Phase::Components, "x#2".into(), json!({"kind": "A"}), false),
            Err(ManifestError::Incomplete { .. })
        ));
    }

    #[test]
    fn crds_say_what_they_serve() {
        let crd = Manifest::new(
            Phase::Crds,
            "c#1".into(),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "gitrepositories.source.toolkit.fluxcd.io"},
                "spec": {"group": "source.toolkit.fluxcd.io", "scope": "Namespaced",
                    "names": {"kind": "GitRepository", "plural": "gitrepositories"},
                    "versions": [{"name": "v1", "served": true}, {"name": "v1beta1", "served": false}]}}),
            false,
        )
        .expect("manifest");
        let k = crd.crd_defines().expect("a CRD");
        assert!(k.namespaced && k.plural == "gitrepositories");
        let id = |v: &str| ObjectId {
            api_version: format!("source.toolkit.fluxcd.io/{v}"),
            kind: "GitRepository".into(),
            namespace: Some("flux-system".into()),
            name: "x".into(),
        };
        assert!(k.serves(&id("v1")));
        assert!(!k.serves(&id("v1beta1")));
    }
}
