//! The stand-in as production code sees it: the real `kube` client, loaded from a
//! kubeconfig file the helper wrote (HTTPS, CA pinned), doing what `elysium-node recover`
//! and the drain code will do. Tests play the controllers through the Rust hooks.

// clippy.toml's allow-unwrap-in-tests covers #[test] functions only; the helpers
// here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind, WatchEvent};
use kube::discovery::{Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use kube_apiserver_standin::{ApiServer, Condition, Credentials, Failure, ObjectRef, Options, Verb};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

/// The field manager production code uses.
const MANAGER: &str = "elysium-node";
/// Generous: two cores shared with other builds.
const WAIT: Duration = Duration::from_secs(20);

const KS_API: &str = "kustomize.toolkit.fluxcd.io/v1";

/// A client built the way production builds one: kubeconfig file → `Kubeconfig::read_from`
/// → `Config::from_custom_kubeconfig`.
async fn client_with(server: &ApiServer, credentials: &Credentials) -> Client {
    client_config(server, credentials, true).await
}

/// kube's default client retries 429, 503 and 504 up to 15 times with exponential
/// backoff (5 ms doubling, minutes in total) unless the answer carries `Retry-After`;
/// tests that expect those codes turn that off, as callers that handle them must.
async fn client_config(server: &ApiServer, credentials: &Credentials, default_retry: bool) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/rancher/k3s/k3s.yaml");
    server.write_kubeconfig(&path, credentials).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    assert!(config.cluster_url.to_string().starts_with("https://127.0.0.1:"));
    let mut config = config;
    config.default_retry = default_retry;
    Client::try_from(config).unwrap()
}

async fn start() -> (ApiServer, Client) {
    let server = ApiServer::start().await.unwrap();
    let client = client_with(&server, &server.admin_credentials()).await;
    (server, client)
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER)
}

/// A cut-down Flux Kustomization CRD (kustomize.toolkit.fluxcd.io, v1 served and stored,
/// v1beta2 served), with the status subresource as upstream ships it.
fn kustomization_crd() -> CustomResourceDefinition {
    let schema = json!({"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}});
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "kustomizations.kustomize.toolkit.fluxcd.io"},
        "spec": {
            "group": "kustomize.toolkit.fluxcd.io",
            "names": {"kind": "Kustomization", "listKind": "KustomizationList", "plural": "kustomizations", "singular": "kustomization", "shortNames": ["ks"]},
            "scope": "Namespaced",
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": schema, "subresources": {"status": {}}},
                {"name": "v1beta2", "served": true, "storage": false, "schema": schema, "subresources": {"status": {}}},
            ],
        },
    }))
    .unwrap()
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// Applies the CRD and waits for Established; returns the Kustomization API resource
/// as discovery reports it.
async fn install_kustomization_crd(client: &Client) -> ApiResource {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = kustomization_crd();
    let name = "kustomizations.kustomize.toolkit.fluxcd.io";
    crds.patch(name, &apply(), &Patch::Apply(&crd)).await.unwrap();
    tokio::time::timeout(WAIT, await_condition(crds, name, conditions::is_crd_established()))
        .await
        .expect("CRD established in time")
        .unwrap();
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"))
        .unwrap();
    assert_eq!(caps.scope, Scope::Namespaced);
    ar
}

fn kustomization(ar: &ApiResource, name: &str, path: &str) -> DynamicObject {
    DynamicObject::new(name, ar).within("flux-system").data(json!({
        "spec": {"interval": "10m", "path": path, "prune": true, "sourceRef": {"kind": "GitRepository", "name": "flux-system"}},
    }))
}

#[tokio::test]
async fn discovery_finds_core_kinds_classic_and_aggregated() {
    let (server, client) = start().await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "31"));
    assert_eq!(version.git_version, kube_apiserver_standin::DEFAULT_GIT_VERSION);

    for discovery in [
        Discovery::new(client.clone()).run().await.unwrap(),
        Discovery::new(client.clone()).run_aggregated().await.unwrap(),
    ] {
        for (g, v, k, scope) in [
            ("", "v1", "Namespace", Scope::Cluster),
            ("", "v1", "Secret", Scope::Namespaced),
            ("", "v1", "Node", Scope::Cluster),
            ("", "v1", "Pod", Scope::Namespaced),
            ("apps", "v1", "Deployment", Scope::Namespaced),
            ("policy", "v1", "PodDisruptionBudget", Scope::Namespaced),
            ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", Scope::Cluster),
        ] {
            let (ar, caps) = discovery.resolve_gvk(&GroupVersionKind::gvk(g, v, k)).expect(k);
            assert_eq!(caps.scope, scope, "{k}");
            assert!(caps.supports_operation("patch") && caps.supports_operation("watch"), "{k}");
            if k == "Pod" {
                let subs: Vec<&str> = caps.subresources.iter().map(|(a, _)| a.plural.as_str()).collect();
                assert!(subs.contains(&"eviction") && subs.contains(&"status"), "{subs:?}");
            }
            assert!(!ar.plural.is_empty());
        }
        assert!(!discovery.has_group("kustomize.toolkit.fluxcd.io"));
    }
    // oneshot discovery (what `kube::discovery::pinned_kind` callers use).
    let (ar, _) =
        kube::discovery::pinned_kind(&client, &GroupVersionKind::gvk("", "v1", "Secret")).await.unwrap();
    assert_eq!(ar.plural, "secrets");
    assert!(server.request_count(Verb::Get) > 0);
    assert_eq!(server.mutations(), []);
}

#[tokio::test]
async fn token_and_client_cert_authenticate_and_nothing_else_does() {
    let server = ApiServer::start().await.unwrap();
    let by_token = client_with(&server, &server.token_credentials()).await;
    Api::<Namespace>::all(by_token).get("default").await.unwrap();
    let other = server.issue_client_cert("alice", Some("ops")).unwrap();
    Api::<Namespace>::all(client_with(&server, &other).await).get("default").await.unwrap();
    let users: Vec<Option<String>> = server.requests().into_iter().map(|r| r.user).collect();
    assert_eq!(users, [Some("token:admin".to_owned()), Some("alice".to_owned())]);

    let wrong = client_with(&server, &Credentials::Token("not-the-token".into())).await;
    let err = Api::<Namespace>::all(wrong).get("default").await.unwrap_err();
    assert_eq!(api_error(err).0, 401);

    // The kubeconfig pins the CA: a client trusting another CA refuses the server.
    let elsewhere = ApiServer::start().await.unwrap();
    let mut yaml = server.kubeconfig(&server.admin_credentials());
    let theirs = elsewhere.kubeconfig(&server.admin_credentials());
    let ca_line = |y: &str| y.lines().find(|l| l.contains("certificate-authority-data")).unwrap().to_owned();
    yaml = yaml.replace(&ca_line(&yaml), &ca_line(&theirs));
    let kubeconfig: Kubeconfig = serde_yaml_ng::from_str(&yaml).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let err = Api::<Namespace>::all(Client::try_from(config).unwrap()).get("default").await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
}

#[tokio::test]
async fn secret_server_side_apply_is_idempotent() {
    let (server, client) = start().await;
    create_namespace(&client, "flux-system").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "flux-system");
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sealed-secrets-keyab12c", "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
    }))
    .unwrap();
    let first = secrets.patch("sealed-secrets-keyab12c", &apply(), &Patch::Apply(&secret)).await.unwrap();
    let second = secrets.patch("sealed-secrets-keyab12c", &apply(), &Patch::Apply(&secret)).await.unwrap();
    // A no-op apply is not persisted: same resourceVersion (upstream skips no-op writes).
    assert_eq!(first.metadata.resource_version, second.metadata.resource_version);
    assert_eq!(first.metadata.uid, second.metadata.uid);
    // Secrets do not track generation upstream; it stays absent.
    assert_eq!((first.metadata.generation, second.metadata.generation), (None, None));
    assert_eq!(second.data.unwrap()["tls.key"].0, b"key");
    let mf = second.metadata.managed_fields.unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!((mf[0].manager.as_deref(), mf[0].operation.as_deref()), (Some(MANAGER), Some("Apply")));
    let fields = &mf[0].fields_v1.as_ref().unwrap().0;
    assert!(fields["f:data"].get("f:tls.key").is_some(), "{fields}");

    // Changing a value is a write: new resourceVersion, no generation.
    let mut changed = secret.clone();
    changed.data.as_mut().unwrap().insert("tls.key".into(), k8s_openapi::ByteString(b"new".to_vec()));
    let third = secrets.patch("sealed-secrets-keyab12c", &apply(), &Patch::Apply(&changed)).await.unwrap();
    assert_ne!(third.metadata.resource_version, second.metadata.resource_version);

    // fieldManager is required for apply.
    let err = secrets
        .patch("sealed-secrets-keyab12c", &PatchParams::default(), &Patch::Apply(&secret))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 400);

    let mutations = server.mutations();
    let verbs: Vec<(Verb, &str, u16)> =
        mutations.iter().map(|m| (m.verb, m.resource.as_str(), m.code)).collect();
    assert_eq!(
        verbs,
        [
            (Verb::Create, "namespaces", 201),
            (Verb::Apply, "secrets", 201),
            (Verb::Apply, "secrets", 200),
            (Verb::Apply, "secrets", 200),
            (Verb::Apply, "secrets", 400),
        ]
    );
}

#[tokio::test]
async fn crd_becomes_established_then_dynamic_apply_works() {
    let server =
        ApiServer::start_with(Options { establish_delay: Duration::from_millis(300), ..Options::default() })
            .await
            .unwrap();
    let client = client_with(&server, &server.admin_credentials()).await;
    create_namespace(&client, "flux-system").await;

    // Before the CRD, the kind is not served.
    let early = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "flux-system", &early);
    let err = api.get("flux-system").await.unwrap_err();
    assert_eq!(api_error(err).0, 404);

    let ar = install_kustomization_crd(&client).await;
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get("kustomizations.kustomize.toolkit.fluxcd.io")
        .await
        .unwrap();
    let status = crd.status.unwrap();
    let types: Vec<(&str, &str)> =
        status.conditions.as_ref().unwrap().iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
    assert_eq!(types, [("NamesAccepted", "True"), ("Established", "True")]);
    assert_eq!(status.stored_versions, Some(vec!["v1".to_owned()]));

    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "flux-system", &ar);
    let created = api
        .patch(
            "flux-system",
            &apply(),
            &Patch::Apply(&kustomization(&ar, "flux-system", "./clusters/kyrion")),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.data["spec"]["path"], "./clusters/kyrion");
    let again = api
        .patch(
            "flux-system",
            &apply(),
            &Patch::Apply(&kustomization(&ar, "flux-system", "./clusters/kyrion")),
        )
        .await
        .unwrap();
    assert_eq!(again.metadata.generation, Some(1));
    assert_eq!(again.metadata.resource_version, created.metadata.resource_version);
    let moved = api
        .patch("flux-system", &apply(), &Patch::Apply(&kustomization(&ar, "flux-system", "./clusters/other")))
        .await
        .unwrap();
    assert_eq!(moved.metadata.generation, Some(2));

    // Other served version, same storage.
    let v1beta2 = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1beta2", "Kustomization"),
        "kustomizations",
    );
    let old: Api<DynamicObject> = Api::namespaced_with(client.clone(), "flux-system", &v1beta2);
    let same = old.get("flux-system").await.unwrap();
    assert_eq!(same.types.unwrap().api_version, "kustomize.toolkit.fluxcd.io/v1beta2");
    assert_eq!(same.metadata.uid, moved.metadata.uid);

    // The hook sees what the client wrote.
    let stored =
        server.get(&ObjectRef::namespaced(KS_API, "Kustomization", "flux-system", "flux-system")).unwrap();
    assert_eq!(stored["spec"]["path"], "./clusters/other");
}

#[tokio::test]
async fn watcher_and_await_condition_see_conditions_set_by_the_test_controller() {
    let (server, client) = start().await;
    create_namespace(&client, "flux-system").await;
    let ar = install_kustomization_crd(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "flux-system", &ar);
    api.patch("apps", &apply(), &Patch::Apply(&kustomization(&ar, "apps", "./apps"))).await.unwrap();

    let ready = |obj: Option<&DynamicObject>| {
        obj.and_then(|o| o.data["status"]["conditions"].as_array().cloned())
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    let waiter = tokio::spawn(await_condition(api.clone(), "apps", ready));
    let mut seen = Box::pin(watcher(api.clone(), watcher::Config::default()).applied_objects());
    let first = tokio::time::timeout(WAIT, seen.next()).await.unwrap().unwrap().unwrap();
    assert!(first.data["status"].is_null());

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    let r = ObjectRef::namespaced(KS_API, "Kustomization", "flux-system", "apps");
    server
        .set_condition(&r, &Condition::new("Reconciling", true, "Progressing", "Reconciliation in progress"))
        .unwrap();
    server
        .set_condition(
            &r,
            &Condition::new("Ready", true, "ReconciliationSucceeded", "Applied revision: main@sha1:74291b2"),
        )
        .unwrap();

    let done = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap().unwrap().unwrap();
    let status = &done.data["status"];
    assert_eq!(status["observedGeneration"], 1);
    let ready_condition =
        status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready_condition["observedGeneration"], 1);
    assert_eq!(ready_condition["reason"], "ReconciliationSucceeded");
    // The watcher saw both status writes.
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let o = tokio::time::timeout(WAIT, seen.next()).await.unwrap().unwrap().unwrap();
        reasons.push(o.data["status"]["conditions"].as_array().map_or(0, Vec::len));
    }
    assert_eq!(reasons, [1, 2]);
    // Status writes do not bump generation.
    assert_eq!(api.get("apps").await.unwrap().metadata.generation, Some(1));
}

#[tokio::test]
async fn raw_watch_resumes_from_a_resource_version_and_honours_timeout() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = |name: &str, v: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": v}})).unwrap()
    };
    let a = cms.create(&PostParams::default(), &cm("a", "1")).await.unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    cms.replace("a", &PostParams::default(), &{
        let mut x = a.clone();
        x.data = cm("a", "2").data;
        x
    })
    .await
    .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();

    let started = std::time::Instant::now();
    let events: Vec<_> =
        cms.watch(&WatchParams::default().timeout(1), &rv).await.unwrap().collect::<Vec<_>>().await;
    assert!(started.elapsed() >= Duration::from_millis(900), "timeoutSeconds ends the stream");
    let kinds: Vec<String> = events
        .into_iter()
        .map(|e| match e.unwrap() {
            WatchEvent::Added(_) => "ADDED".into(),
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.data.unwrap()["k"]),
            WatchEvent::Deleted(_) => "DELETED".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["MODIFIED 2", "DELETED"]);
    assert_eq!(server.request_count(Verb::Watch), 1);
}

#[tokio::test]
async fn status_subresource_semantics() {
    let (server, client) = start().await;
    create_namespace(&client, "flux-system").await;
    let ar = install_kustomization_crd(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "flux-system", &ar);
    // Status in a main-resource apply is ignored.
    let mut obj = kustomization(&ar, "infra", "./infra");
    obj.data["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    let created = api.patch("infra", &apply(), &Patch::Apply(&obj)).await.unwrap();
    assert!(created.data.get("status").is_none(), "{:?}", created.data);

    // A status patch changes only status, and not generation.
    let patched = api
        .patch_status(
            "infra",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"path": "./evil"}, "status": {"lastAppliedRevision": "main@sha1:1"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["lastAppliedRevision"], "main@sha1:1");
    assert_eq!(patched.data["spec"]["path"], "./infra");
    assert_eq!(patched.metadata.generation, Some(1));
    assert_ne!(patched.metadata.resource_version, created.metadata.resource_version);

    // A main-resource replace keeps the stored status and bumps generation on spec change.
    let mut replaced = patched.clone();
    replaced.data["spec"]["path"] = json!("./infra/v2");
    replaced.data["status"] = json!({"lastAppliedRevision": "forged"});
    let after = api.replace("infra", &PostParams::default(), &replaced).await.unwrap();
    assert_eq!(after.data["status"]["lastAppliedRevision"], "main@sha1:1");
    assert_eq!(after.metadata.generation, Some(2));

    // get_status reads the same object.
    let s = api.get_status("infra").await.unwrap();
    assert_eq!(s.data["spec"]["path"], "./infra/v2");

    // Secrets have no status subresource.
    let err = Api::<Secret>::namespaced(client.clone(), "flux-system")
        .patch_status("x", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 404);
    assert!(server.mutations().iter().any(|m| m.subresource.as_deref() == Some("status") && m.code == 200));
}

#[tokio::test]
async fn conflicts_are_409() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}),
    )
    .unwrap();
    cms.patch("c", &apply(), &Patch::Apply(&cm)).await.unwrap();
    // Another manager applying a different value conflicts...
    let mut theirs = cm.clone();
    theirs.data = Some([("a".to_owned(), "2".to_owned())].into());
    let err = cms.patch("c", &PatchParams::apply("flux"), &Patch::Apply(&theirs)).await.unwrap_err();
    let (code, reason, message) = api_error(err);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains(r#"conflict with "elysium-node""#) && message.contains(".data.a"), "{message}");
    // ...the same value does not...
    cms.patch("c", &PatchParams::apply("flux"), &Patch::Apply(&cm)).await.unwrap();
    // ...and force takes the field.
    let forced = cms.patch("c", &PatchParams::apply("flux").force(), &Patch::Apply(&theirs)).await.unwrap();
    assert_eq!(forced.data.unwrap()["a"], "2");
    let err = cms.patch("c", &apply(), &Patch::Apply(&cm)).await.unwrap_err();
    assert_eq!(api_error(err).0, 409);

    // A stale resourceVersion on replace.
    let current = cms.get("c").await.unwrap();
    let mut stale = current.clone();
    cms.patch("c", &PatchParams::default(), &Patch::Merge(json!({"data": {"b": "x"}}))).await.unwrap();
    stale.data = Some([("a".to_owned(), "3".to_owned())].into());
    let (code, reason, message) =
        api_error(cms.replace("c", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains("the object has been modified"), "{message}");

    // Create of an existing object.
    let (code, reason, _) = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
}

#[tokio::test]
async fn missing_namespace_is_not_found() {
    let (server, client) = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "flux-system");
    let secret: Secret = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}),
    )
    .unwrap();
    for result in [
        secrets.create(&PostParams::default(), &secret).await,
        secrets.patch("s", &apply(), &Patch::Apply(&secret)).await,
    ] {
        let (code, reason, message) = api_error(result.unwrap_err());
        assert_eq!(
            (code, reason.as_str(), message.as_str()),
            (404, "NotFound", r#"namespaces "flux-system" not found"#)
        );
    }
    let (code, _, message) = api_error(secrets.get("s").await.unwrap_err());
    assert_eq!((code, message.as_str()), (404, r#"secrets "s" not found"#));
    // stringData folds into data once the namespace exists.
    create_namespace(&client, "flux-system").await;
    let s = secrets.create(&PostParams::default(), &secret).await.unwrap();
    assert_eq!(s.data.unwrap()["k"].0, b"v");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    assert!(s.string_data.is_none());
    let codes: Vec<u16> = server.mutations().iter().map(|m| m.code).collect();
    assert_eq!(codes, [404, 404, 201, 201]);
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, labels) in [
        ("web-1", json!({"app": "web", "tier": "front"})),
        ("web-2", json!({"app": "web"})),
        ("db", json!({"app": "db"})),
    ] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.into_iter().map(|c| c.metadata.name.unwrap()).collect()
    };
    assert_eq!(names(cms.list(&ListParams::default().labels("app=web")).await.unwrap()), ["web-1", "web-2"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("app!=web")).await.unwrap()), ["db"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("tier")).await.unwrap()), ["web-1"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("app in (db)")).await.unwrap()), ["db"]);
    assert_eq!(
        names(cms.list(&ListParams::default().fields("metadata.name=web-2")).await.unwrap()),
        ["web-2"]
    );
    // Pagination.
    let page = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let token = page.metadata.continue_.clone().unwrap();
    assert_eq!(names(page), ["db", "web-1"]);
    assert_eq!(
        names(cms.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap()),
        ["web-2"]
    );
    // Pods by node, across namespaces, as drain lists them.
    for (ns, name, node) in [("default", "p1", "n1"), ("kube-system", "p2", "n1"), ("default", "p3", "n2")] {
        server.put(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {"nodeName": node}})).unwrap();
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let on_n1: Vec<String> = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(on_n1, ["p1", "p2"]);
    let (code, _, message) =
        api_error(pods.list(&ListParams::default().fields("spec.bogus=x")).await.unwrap_err());
    assert_eq!((code, message.as_str()), (400, "field label not supported: spec.bogus"));
}

fn running_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

#[tokio::test]
async fn cordon_and_eviction_honour_the_disruption_budget() {
    let server = ApiServer::start().await.unwrap();
    let client = client_config(&server, &server.admin_credentials(), false).await;
    server.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}})).unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let cordoned = nodes
        .patch("n1", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"unschedulable": true}})))
        .await
        .unwrap();
    assert_eq!(cordoned.spec.unwrap().unschedulable, Some(true));
    let unschedulable = nodes.list(&ListParams::default().fields("spec.unschedulable=true")).await.unwrap();
    assert_eq!(unschedulable.items.len(), 1);

    for name in ["web-1", "web-2"] {
        server.put(running_pod(name)).unwrap();
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (code, reason, message) = api_error(pods.evict("web-1", &EvictParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (429, "TooManyRequests"));
    assert!(message.contains("disruption budget"), "{message}");
    assert!(pods.get("web-1").await.is_ok());

    pdbs.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"minAvailable": 1}})))
        .await
        .unwrap();
    let status = pods.evict("web-1", &EvictParams::default()).await.unwrap();
    assert_eq!(status.code, 201);
    assert_eq!(api_error(pods.get("web-1").await.unwrap_err()).0, 404);
    // One left, minAvailable 1: the next eviction is refused.
    assert_eq!(api_error(pods.evict("web-2", &EvictParams::default()).await.unwrap_err()).0, 429);
    let evictions: Vec<(Option<String>, u16)> = server
        .mutations()
        .into_iter()
        .filter(|m| m.subresource.as_deref() == Some("eviction"))
        .map(|m| (m.name, m.code))
        .collect();
    assert_eq!(
        evictions,
        [(Some("web-1".into()), 429), (Some("web-1".into()), 201), (Some("web-2".into()), 429)]
    );
}

#[tokio::test]
async fn mutation_log_records_the_recovery_order() {
    let (server, client) = start().await;
    create_namespace(&client, "flux-system").await;
    let secret: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "flux-system"}, "stringData": {"identity": "k"}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), "flux-system")
        .patch("flux-system", &apply(), &Patch::Apply(&secret))
        .await
        .unwrap();
    let ar = install_kustomization_crd(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "flux-system", &ar);
    api.patch(
        "flux-system",
        &apply(),
        &Patch::Apply(&kustomization(&ar, "flux-system", "./clusters/kyrion")),
    )
    .await
    .unwrap();

    let log: Vec<String> = server
        .mutations()
        .iter()
        .map(|m| {
            format!(
                "{:?} {} {}/{}",
                m.verb,
                m.kind,
                m.namespace.as_deref().unwrap_or("-"),
                m.name.as_deref().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        log,
        [
            "Create Namespace -/flux-system",
            "Apply Secret flux-system/flux-system",
            "Apply CustomResourceDefinition -/kustomizations.kustomize.toolkit.fluxcd.io",
            "Apply Kustomization flux-system/flux-system",
        ]
    );
    assert!(
        server
            .mutations()
            .iter()
            .filter(|m| m.verb == Verb::Apply)
            .all(|m| m.field_manager.as_deref() == Some(MANAGER))
    );

    // A read-only pass applies nothing.
    server.clear_logs();
    api.list(&ListParams::default()).await.unwrap();
    Discovery::new(client.clone()).run().await.unwrap();
    assert_eq!(server.request_count(Verb::Apply), 0);
    assert!(server.mutations().is_empty());
    assert!(server.request_count(Verb::List) >= 1);
}

#[tokio::test]
async fn injected_failures_and_an_unreachable_server() {
    let (server, client) = start().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // One 503: kube's default client retries it and the caller never sees it.
    server.fail(Failure::on("/api/v1/namespaces/default").code(503).times(1));
    namespaces.get("default").await.unwrap();
    let codes: Vec<u16> = server.requests().iter().map(|r| r.code).collect();
    assert_eq!(codes, [503, 200]);
    // Without kube's retry the caller gets it.
    server.fail(Failure::on("/api/v1/namespaces/default").code(503).times(1));
    let no_retry = client_config(&server, &server.admin_credentials(), false).await;
    let (code, reason, _) = api_error(Api::<Namespace>::all(no_retry).get("default").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (503, "ServiceUnavailable"));

    server.fail(Failure::on("/apis/apiextensions.k8s.io").method("PATCH"));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let err = crds
        .patch("kustomizations.kustomize.toolkit.fluxcd.io", &apply(), &Patch::Apply(&kustomization_crd()))
        .await;
    assert_eq!(api_error(err.unwrap_err()).0, 500);
    assert!(crds.list(&ListParams::default()).await.is_ok(), "only PATCH fails");
    let failed = server.mutations();
    assert_eq!((failed.len(), failed[0].verb, failed[0].code), (1, Verb::Apply, 500));
    server.clear_failures();

    server.set_unreachable(true);
    let err = namespaces.get("default").await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "a transport error, not an API answer: {err:?}");
    let fresh = client_with(&server, &server.admin_credentials()).await;
    assert!(Api::<Namespace>::all(fresh).get("default").await.is_err());
    server.set_unreachable(false);
    namespaces.get("default").await.unwrap();
}

#[tokio::test]
async fn deleting_a_crd_removes_its_kind_and_objects() {
    let (server, client) = start().await;
    create_namespace(&client, "flux-system").await;
    let ar = install_kustomization_crd(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "flux-system", &ar);
    api.patch("a", &apply(), &Patch::Apply(&kustomization(&ar, "a", "./a"))).await.unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .delete("kustomizations.kustomize.toolkit.fluxcd.io", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_error(api.get("a").await.unwrap_err()).0, 404);
    assert!(!Discovery::new(client.clone()).run().await.unwrap().has_group("kustomize.toolkit.fluxcd.io"));
    assert!(server.list(KS_API, "Kustomization", None).is_empty());

    // Finalizers hold deletion until removed.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let pending = cms.delete("held", &DeleteParams::default()).await.unwrap();
    assert!(pending.left().unwrap().metadata.deletion_timestamp.is_some());
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert_eq!(api_error(cms.get("held").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn dry_runs_check_everything_and_write_nothing() {
    let (server, client) = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "flux-system");
    let secret: Secret = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}),
    )
    .unwrap();
    let dry = PatchParams::apply(MANAGER).dry_run();
    // A missing namespace is the same 404 as for a write: the dry run runs every check.
    let (code, reason, message) =
        api_error(secrets.patch("s", &dry, &Patch::Apply(&secret)).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (404, "NotFound", r#"namespaces "flux-system" not found"#)
    );
    let post_dry = PostParams { dry_run: true, ..PostParams::default() };
    let (code, _, _) = api_error(secrets.create(&post_dry, &secret).await.unwrap_err());
    assert_eq!(code, 404);

    // Where it exists: the answer is the object as it would be, and nothing is stored.
    create_namespace(&client, "flux-system").await;
    server.clear_logs();
    let would = secrets.patch("s", &dry, &Patch::Apply(&secret)).await.unwrap();
    assert_eq!(would.data.unwrap()["k"].0, b"v");
    secrets.create(&post_dry, &secret).await.unwrap();
    assert!(server.get(&ObjectRef::namespaced("v1", "Secret", "flux-system", "s")).is_none());
    // The mutation log is of writes; the request log has the dry runs.
    assert_eq!(server.mutations(), []);
    let dry_runs: Vec<_> =
        server.requests().into_iter().filter(|r| r.verb.is_some_and(Verb::is_mutating)).collect();
    assert_eq!(dry_runs.len(), 2);
    assert!(dry_runs.iter().all(|r| r.query.contains("dryRun=All")), "{dry_runs:?}");
}

#[tokio::test]
async fn validation_rules_refuse_dry_runs_and_writes_as_upstream_does() {
    let server = ApiServer::start_with(Options {
        validation_rules: vec![
            kube_apiserver_standin::ValidationRule::refuse(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                "spec.versions[0].selectableFields",
                "Forbidden: not supported by this server",
            )
            .named("kustomizations.kustomize.toolkit.fluxcd.io"),
        ],
        ..Options::default()
    })
    .await
    .unwrap();
    let client = client_with(&server, &server.admin_credentials()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "kustomizations.kustomize.toolkit.fluxcd.io";
    let crd = kustomization_crd();
    let expected = format!(
        "CustomResourceDefinition.apiextensions.k8s.io \"{name}\" is invalid: spec.versions[0].selectableFields: \
         Forbidden: not supported by this server"
    );
    for params in [apply().dry_run(), apply()] {
        let e = crds.patch(name, &params, &Patch::Apply(&crd)).await.unwrap_err();
        let kube::Error::Api(s) = e else { panic!("expected an API error, got {e:?}") };
        assert_eq!((s.code, s.reason.as_str(), s.message.as_str()), (422, "Invalid", expected.as_str()));
        let d = s.details.as_ref().expect("details");
        assert_eq!(
            (d.kind.as_str(), d.group.as_str(), d.name.as_str()),
            ("CustomResourceDefinition", "apiextensions.k8s.io", name)
        );
        assert_eq!(d.causes.len(), 1);
        assert_eq!(
            (d.causes[0].reason.as_str(), d.causes[0].field.as_str()),
            ("FieldValueInvalid", "spec.versions[0].selectableFields")
        );
    }
    assert!(crds.get_opt(name).await.unwrap().is_none());
    // Only the real write is in the mutation log, refused.
    let codes: Vec<u16> = server.mutations().iter().map(|m| m.code).collect();
    assert_eq!(codes, [422]);
    // Other objects of the kind pass; a rule added later applies from then on.
    let mut other = kustomization_crd();
    other.metadata.name = Some("kustomizations.example.org".into());
    other.spec.group = "example.org".into();
    crds.patch("kustomizations.example.org", &apply(), &Patch::Apply(&other)).await.unwrap();
    server.add_validation_rule(kube_apiserver_standin::ValidationRule::refuse(
        "",
        "ConfigMap",
        "data",
        "Invalid value: too big",
    ));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "b"}})).unwrap();
    let (code, _, message) = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((code, message.as_str()), (422, "ConfigMap \"c\" is invalid: data: Invalid value: too big"));
}
