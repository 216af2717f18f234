//! A repository laid out the way the Elysium cluster's is today, built here from the public
//! facts of that layout (docs/reference/flux.md#bootstrap-forms), not copied from it:
//!
//! - no `clusters/kyrion/flux-system/`: Flux is run by the Flux Operator, installed by a
//!   `flux-operator` HelmRelease (infra-controllers) from a pinned OCIRepository, and the
//!   FluxInstance is rendered from the `flux-instance` HelmRelease's `values.instance`
//!   (infra-configs, `dependsOn` flux-operator); no file holds `kind: FluxInstance`;
//! - `clusters/kyrion/kustomization.yaml` limits what the root sync applies; the layers
//!   point at wrapper directories (`clusters/kyrion/infrastructure/controllers/`) whose
//!   kustomization pulls the shared directory in with `../../../../infrastructure/…` and
//!   adds the cluster's SealedSecrets;
//! - `wait: true` layers whose HelmReleases read Secrets through `valuesFrom`
//!   (`tailscale-operator-secret`, `flux-web-client`);
//! - a decoy: another cluster's sealed-secrets HelmRelease, in files nothing of kyrion
//!   applies (a path-prefix search would find two controllers);
//! - a Helm chart kept in the repository, whose templates are not YAML;
//! - SealedSecrets in all three scopes, one without a namespace in a directory whose
//!   kustomization sets it; the committed certificate is the oldest key's (2024), most
//!   secrets are sealed with the newest.

use std::path::Path;

use elysium_recovery::sealed::Scope;

use super::{TestKey, commit_all, sealed_secret};

pub const CLUSTER: &str = "clusters/kyrion";
pub const CERT_FILE: &str = "etc/certs/pub-sealed-secrets.pem";
pub const TAILSCALE_SECRET: &str =
    "clusters/kyrion/infrastructure/controllers/tailscale-operator-secret.yaml";
pub const FLUX_WEB_SECRET: &str = "clusters/kyrion/infrastructure/configs/flux-web-client.yaml";
pub const INSTANCE_RELEASE: &str = "infrastructure/configs/flux-instance/release.yaml";
pub const INSTANCE_DIR: &str = "infrastructure/configs/flux-instance";
pub const SYNC_URL: &str = "ssh://git@github.com/example/elysium";

pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

fn kustomization(resources: &[&str], extra: &str) -> String {
    let mut y = String::from("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n");
    y.push_str(extra);
    y.push_str("resources:\n");
    for r in resources {
        y.push_str(&format!("  - {r}\n"));
    }
    y
}

fn flux_ks(name: &str, path: &str, wait: bool, depends: &[&str], substitute: bool) -> String {
    let mut y = format!(
        "---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: {name}\n  namespace: flux-system\nspec:\n"
    );
    if !depends.is_empty() {
        y.push_str("  dependsOn:\n");
        for d in depends {
            y.push_str(&format!("    - name: {d}\n"));
        }
    }
    y.push_str(&format!(
        "  interval: 1h\n  sourceRef:\n    kind: GitRepository\n    name: flux-system\n  prune: true\n  wait: {wait}\n  path: {path}\n"
    ));
    if substitute {
        y.push_str(
            "  postBuild:\n    substituteFrom:\n      - kind: Secret\n        name: cluster-secret-vars\n",
        );
    }
    y
}

fn helm_release(name: &str, ns: &str, chart: &str, extra: &str) -> String {
    format!(
        "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  interval: 1h\n  chart:\n    spec:\n      chart: {chart}\n      sourceRef:\n        kind: HelmRepository\n        name: {chart}\n{extra}"
    )
}

fn oci_release(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: {name}\n  namespace: flux-system\nspec:\n  interval: 1h\n  chartRef:\n    kind: OCIRepository\n    name: {name}\n    namespace: flux-system\n{extra}"
    )
}

fn oci_repository(name: &str) -> String {
    format!(
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: OCIRepository\nmetadata:\n  name: {name}\n  namespace: flux-system\nspec:\n  interval: 24h\n  url: oci://ghcr.io/controlplaneio-fluxcd/charts/{name}\n  ref:\n    tag: 0.57.0\n    digest: sha256:{}\n",
        "ab".repeat(32)
    )
}

/// The flux-instance HelmRelease's values (the FluxInstance spec).
pub fn instance_values() -> String {
    format!(
        "  values:\n    fullnameOverride: flux\n    instance:\n      distribution:\n        version: 2.7.x\n        registry: ghcr.io/fluxcd\n      components:\n        - source-controller\n        - kustomize-controller\n        - helm-controller\n        - notification-controller\n      sync:\n        kind: GitRepository\n        url: {SYNC_URL}\n        ref: refs/heads/main\n        path: ./clusters/kyrion\n        pullSecret: flux-system\n        name: flux-system\n    healthcheck:\n      enabled: false\n"
    )
}

/// The same FluxInstance as a plain object (the other form a repository may hold).
pub fn instance_object() -> String {
    format!(
        "apiVersion: fluxcd.controlplane.io/v1\nkind: FluxInstance\nmetadata:\n  name: flux\n  namespace: flux-system\nspec:\n  distribution:\n    version: 2.7.x\n    registry: ghcr.io/fluxcd\n  sync:\n    kind: GitRepository\n    url: {SYNC_URL}\n    ref: refs/heads/main\n    path: ./clusters/kyrion\n    pullSecret: flux-system\n"
    )
}

/// Keys: `new` seals most secrets (the controller's newest), `old` (2024) is the one whose
/// certificate is committed and seals the oldest secret.
pub fn build(root: &Path, new: &TestKey, old: &TestKey) {
    // The root sync's own kustomization: only what it lists is applied.
    write(
        root,
        "clusters/kyrion/kustomization.yaml",
        &kustomization(
            &["infrastructure.yaml", "apps.yaml", "cluster-secret-vars.yaml", "cluster-vars.yaml"],
            "",
        ),
    );
    // Not listed: a root sync applying the whole directory would pick this up.
    write(
        root,
        "clusters/kyrion/README.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: not-applied\n  namespace: flux-system\n",
    );
    write(
        root,
        "clusters/kyrion/infrastructure.yaml",
        &[
            flux_ks("infra-controllers", "./clusters/kyrion/infrastructure/controllers", true, &[], true),
            flux_ks(
                "infra-configs",
                "./clusters/kyrion/infrastructure/configs",
                true,
                &["infra-controllers"],
                true,
            ),
        ]
        .concat(),
    );
    write(
        root,
        "clusters/kyrion/apps.yaml",
        &flux_ks("apps", "./apps/kyrion", false, &["infra-configs"], true),
    );
    write(
        root,
        "clusters/kyrion/cluster-secret-vars.yaml",
        &sealed_secret(
            new,
            "flux-system",
            "cluster-secret-vars",
            Scope::Strict,
            Scope::Strict,
            &[("DOMAIN", "example.org"), ("EMAIL", "ops@example.org")],
        ),
    );
    write(
        root,
        "clusters/kyrion/cluster-vars.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cluster-vars\n  namespace: flux-system\ndata:\n  TZ: Europe/Rome\n",
    );

    // Wrapper directories: the shared layer plus this cluster's secrets and patches.
    write(
        root,
        "clusters/kyrion/infrastructure/controllers/kustomization.yaml",
        &kustomization(
            &["../../../../infrastructure/controllers", "tailscale-operator-secret.yaml"],
            "patches:\n  - target:\n      kind: HelmRelease\n      name: tailscale-operator\n    patch: |\n      - op: add\n        path: /spec/values/operatorConfig\n        value: {hostname: kyrion}\n",
        ),
    );
    write(
        root,
        TAILSCALE_SECRET,
        &sealed_secret(
            new,
            "flux-system",
            "tailscale-operator-secret",
            Scope::Strict,
            Scope::Strict,
            &[("oauth-client-secret", "tskey-client-x")],
        ),
    );
    write(
        root,
        "clusters/kyrion/infrastructure/configs/kustomization.yaml",
        &kustomization(&["../../../../infrastructure/configs", "flux-web-client.yaml"], ""),
    );
    write(
        root,
        FLUX_WEB_SECRET,
        &sealed_secret(
            new,
            "flux-system",
            "flux-web-client",
            Scope::NamespaceWide,
            Scope::NamespaceWide,
            &[("client-secret", "s3cret")],
        ),
    );

    // The shared layers.
    write(
        root,
        "infrastructure/controllers/kustomization.yaml",
        &kustomization(&["sealed-secrets", "flux-operator", "tailscale-operator"], ""),
    );
    write(
        root,
        "infrastructure/controllers/sealed-secrets/kustomization.yaml",
        &kustomization(&["release.yaml"], ""),
    );
    write(
        root,
        "infrastructure/controllers/sealed-secrets/release.yaml",
        &helm_release(
            "sealed-secrets",
            "flux-system",
            "sealed-secrets",
            "  releaseName: sealed-secrets-controller\n  targetNamespace: flux-system\n",
        ),
    );
    write(
        root,
        "infrastructure/controllers/flux-operator/kustomization.yaml",
        &kustomization(&["repository.yaml", "release.yaml"], ""),
    );
    write(root, "infrastructure/controllers/flux-operator/repository.yaml", &oci_repository("flux-operator"));
    write(
        root,
        "infrastructure/controllers/flux-operator/release.yaml",
        &oci_release(
            "flux-operator",
            "  install:\n    crds: CreateReplace\n  values:\n    web:\n      enabled: false\n",
        ),
    );
    write(
        root,
        "infrastructure/controllers/tailscale-operator/kustomization.yaml",
        &kustomization(&["release.yaml"], ""),
    );
    write(
        root,
        "infrastructure/controllers/tailscale-operator/release.yaml",
        &helm_release(
            "tailscale-operator",
            "flux-system",
            "tailscale-operator",
            "  targetNamespace: tailscale\n  values:\n    oauth:\n      clientId: ${ts_oauth_clientID}\n  valuesFrom:\n    - kind: Secret\n      name: tailscale-operator-secret\n      valuesKey: oauth-client-secret\n      targetPath: oauth.clientSecret\n",
        ),
    );
    write(
        root,
        "infrastructure/configs/kustomization.yaml",
        &kustomization(&["flux-instance", "flux-web"], ""),
    );
    write(
        root,
        "infrastructure/configs/flux-instance/kustomization.yaml",
        &kustomization(&["repository.yaml", "release.yaml"], ""),
    );
    write(root, "infrastructure/configs/flux-instance/repository.yaml", &oci_repository("flux-instance"));
    write(
        root,
        INSTANCE_RELEASE,
        &oci_release(
            "flux-instance",
            &format!("  dependsOn:\n    - name: flux-operator\n{}", instance_values()),
        ),
    );
    write(root, "infrastructure/configs/flux-web/kustomization.yaml", &kustomization(&["release.yaml"], ""));
    write(
        root,
        "infrastructure/configs/flux-web/release.yaml",
        &helm_release(
            "flux-web",
            "flux-system",
            "flux-operator-web",
            "  valuesFrom:\n    - kind: Secret\n      name: flux-web-client\n      valuesKey: client-secret\n      targetPath: web.config.clientSecret\n",
        ),
    );

    // Apps: a shared base and this cluster's directory that sets a namespace.
    write(root, "apps/kyrion/kustomization.yaml", &kustomization(&["../base/whoami", "media"], ""));
    write(root, "apps/base/whoami/kustomization.yaml", &kustomization(&["sealed.yaml"], ""));
    write(
        root,
        "apps/base/whoami/sealed.yaml",
        &sealed_secret(new, "whoami", "anywhere", Scope::ClusterWide, Scope::ClusterWide, &[("token", "t")]),
    );
    write(
        root,
        "apps/kyrion/media/kustomization.yaml",
        &kustomization(&["sealed.yaml"], "namespace: media\n"),
    );
    // Sealed (strict) for media/library with the old key; its file names no namespace.
    let media =
        sealed_secret(old, "media", "library", Scope::Strict, Scope::Strict, &[("rclone.conf", "[x]\n")])
            .replacen("  namespace: media\n", "", 1);
    write(root, "apps/kyrion/media/sealed.yaml", &media);

    // A Helm chart kept in the repository: its templates are Go templates.
    write(root, "charts/local/Chart.yaml", "apiVersion: v2\nname: local\nversion: 0.1.0\n");
    write(
        root,
        "charts/local/templates/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ include \"local.fullname\" . }}\n{{- with .Values.labels }}\n  labels: {{ toYaml . | nindent 4 }}\n{{- end }}\n",
    );

    // Another cluster's controller, which nothing kyrion applies reaches.
    write(
        root,
        "infrastructure/staging/sealed-secrets/release.yaml",
        &helm_release("sealed-secrets", "kube-system", "sealed-secrets", ""),
    );

    write(root, CERT_FILE, &old.cert_pem);
}

/// The repository as a Git repository on `main`.
pub fn repo(new: &TestKey, old: &TestKey) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), new, old);
    let sha = commit_all(dir.path(), "the cluster as it is today");
    (dir, sha)
}
