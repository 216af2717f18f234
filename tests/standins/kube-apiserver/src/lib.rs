//! A **stand-in for the Kubernetes API server**, for tests only. It is not
//! kube-apiserver and runs no controllers: it serves the documented REST contract that
//! elysium-node's Kubernetes code relies on, faithfully enough that the real `kube`
//! (kube-rs) client, discovery and runtime (`watcher`, `await_condition`) run against it
//! unchanged, over HTTPS with a kubeconfig like K3s's `/etc/rancher/k3s/k3s.yaml`.
//! Tests play the controllers (Flux, sealed-secrets, the disruption controller) through
//! the Rust hooks on [`ApiServer`].
//!
//! # Implemented
//!
//! - **Transport**: HTTPS on `127.0.0.1:0` (HTTP/1.1, rustls with ring) under a
//!   self-signed CA; clients authenticate with a client certificate the CA signed or a
//!   bearer token; anything else is 401 (K3s runs `anonymous-auth=false`).
//!   [`ApiServer::write_kubeconfig`] writes a kubeconfig with either credential.
//! - **Discovery**: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`
//!   (classic `APIVersions`/`APIGroupList`/`APIGroup`/`APIResourceList`, with
//!   subresources such as `pods/eviction` and `*/status`), and aggregated discovery
//!   (`apidiscovery.k8s.io/v2`) when the `Accept` header asks for it. Groups of CRDs
//!   appear once the CRD is Established. `/healthz`, `/livez`, `/readyz`.
//! - **Kinds**: Namespace, Node, Secret, ConfigMap, ServiceAccount, Pod (core/v1);
//!   Deployment (apps/v1); PodDisruptionBudget (policy/v1); CustomResourceDefinition
//!   (apiextensions.k8s.io/v1); and every served version of each Established CRD, with
//!   its scope and `status` subresource. New built-ins are one table row
//!   ([`resources`]). The namespaces `default`, `kube-system`, `kube-public` and
//!   `kube-node-lease` exist at start.
//! - **Verbs**: get; list (label selectors, full grammar; field selectors
//!   `metadata.name`, `metadata.namespace` and per-kind fields such as `spec.nodeName`;
//!   `limit`/`continue`); watch (`?watch=true`, newline-delimited events, from a
//!   `resourceVersion` through the event history or from the current state, selector
//!   transitions as ADDED/DELETED, `timeoutSeconds`, `sendInitialEvents` with the
//!   `k8s.io/initial-events-end` bookmark, 410 Expired for a compacted version); create
//!   (409 AlreadyExists, `generateName`); replace (409 Conflict on a stale
//!   `resourceVersion`); JSON merge patch; strategic merge patch **as a merge patch**
//!   (lists replaced whole; `$patch` directives refused with 400); server-side apply
//!   (`application/apply-patch+yaml`, `fieldManager` required, `force`, create if absent,
//!   the ownership model of [`fields`], 409 with one cause per conflicting field);
//!   delete (a `Status`, or the object with `deletionTimestamp` while finalizers remain;
//!   preconditions); deletecollection; `dryRun=All` (every check, then nothing stored:
//!   a dry-run create in a missing namespace is 404 like a write).
//! - **Validation rules** ([`ValidationRule`]): objects refused with `422 Invalid`, on
//!   dry runs and writes alike, as an older or stricter server refuses them.
//! - **Object semantics**: `uid`, `creationTimestamp`, a global monotonic
//!   `resourceVersion`, `generation` bumped on changes outside metadata and status (for
//!   kinds that track it: CRDs, custom resources, Deployments, PDBs), no-op writes not
//!   persisted (same `resourceVersion`, no event), `managedFields` for apply and update.
//!   For kinds with a status subresource, main-resource writes keep the stored `.status`
//!   and `/status` writes change only `.status`. Namespaced writes into a missing
//!   namespace are 404 NotFound `namespaces "x" not found`. Secrets default `type:
//!   Opaque`, fold `stringData` into `data` and check base64. Namespaces get
//!   `kubernetes.io/metadata.name` and phase Active. Errors are `Status` objects with
//!   upstream's `reason` and `code`.
//! - **CRDs**: name and storage-version validation (422); after
//!   [`Options::establish_delay`] (default 0) `NamesAccepted` and `Established` become
//!   True with `acceptedNames` and `storedVersions`; until then the kind is 404 and not
//!   in discovery. Deleting a CRD deletes its objects; deleting a namespace its contents.
//! - **Eviction**: `POST pods/{name}/eviction` honouring PodDisruptionBudgets
//!   ([`eviction`]): 429 TooManyRequests when the budget would be violated, else the pod
//!   is deleted.
//! - **Test hooks** on [`ApiServer`]: read and write objects directly, set status
//!   conditions as a controller would, the request log with per-verb counts, the ordered
//!   mutation log (writes, not dry runs), injected failures per path, and making the
//!   server unreachable.
//!
//! # Not implemented
//!
//! No OpenAPI schema validation, defaulting, pruning or CEL rules for custom resources;
//! no conversion between versions (objects are returned under the requested
//! `apiVersion` as stored); no admission webhooks, RBAC (every authenticated user is an
//! admin), impersonation, audit, API priority and fairness; no controllers (nothing
//! schedules, starts or terminates pods, rolls Deployments, or maintains PDB status;
//! deletion is immediate, without grace periods); no JSON Patch (415), no protobuf or
//! CBOR, no HTTP/2, no `exec`/`logs`/`portforward`/`scale` subresources, no
//! `resourceVersionMatch=Exact` consistency (lists always read the latest state), no
//! periodic watch bookmarks; list-type-aware field ownership (`listType=map`) is
//! simplified to atomic lists.

pub mod discovery;
pub mod eviction;
pub mod fields;
pub mod kubeconfig;
pub mod meta;
pub mod pki;
pub mod resources;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

pub use kubeconfig::Credentials;
pub use status::ApiError;

use server::{Shared, lock};
use store::Store;

/// The version `/version` reports by default: the K3s release the project's example
/// spec pins (`docs/examples/cluster.toml`).
pub const DEFAULT_GIT_VERSION: &str = "v1.31.4+k3s1";

/// Namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Field manager of status writes made through [`ApiServer::set_condition`] and
/// [`ApiServer::update_status`].
pub const CONTROLLER_MANAGER: &str = "standin-controller";

/// Field manager of objects written through [`ApiServer::put`].
pub const TEST_MANAGER: &str = "standin-test";

/// How the stand-in starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time from a CRD's creation to its `Established` condition.
    pub establish_delay: Duration,
    /// `gitVersion` of `/version`.
    pub git_version: String,
    /// Namespaces that exist at start.
    pub namespaces: Vec<String>,
    /// Events kept for watches that resume from a `resourceVersion`; older ones get
    /// 410 Expired.
    pub history_limit: usize,
    /// Objects refused as invalid, as an older or stricter server would
    /// ([`ValidationRule`]); more can be added with [`ApiServer::add_validation_rule`].
    pub validation_rules: Vec<ValidationRule>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            establish_delay: Duration::ZERO,
            git_version: DEFAULT_GIT_VERSION.to_owned(),
            namespaces: INITIAL_NAMESPACES.iter().map(|s| (*s).to_owned()).collect(),
            history_limit: 10_000,
            validation_rules: Vec::new(),
        }
    }
}

/// Kubernetes verbs as the request and mutation logs name them. Server-side apply is
/// the `patch` verb upstream; it is told apart here so tests can assert on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Apply,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn is_mutating(self) -> bool {
        !matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// One request as the server saw it. `verb` is `None` for requests that named no
/// served resource (404) or were refused before routing (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub verb: Option<Verb>,
    /// The authenticated user: the client certificate's common name, or `token:admin`.
    pub user: Option<String>,
    pub code: u16,
}

/// One mutating request on a resource, in the order the server processed them (failed
/// ones included, with their code). An eviction is `Create` on subresource `eviction`.
/// Dry runs (`dryRun=All`) change nothing and are not in this log, only in the request
/// log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    pub verb: Verb,
    pub api_version: String,
    pub kind: String,
    /// The resource (plural), e.g. `secrets`.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub field_manager: Option<String>,
    pub code: u16,
}

/// An injected failure: requests whose path starts with `path_prefix` (and whose
/// method matches, if set) get a `Status` with `code`, `remaining` times or forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub method: Option<String>,
    pub path_prefix: String,
    pub code: u16,
    pub remaining: Option<u32>,
}

impl Failure {
    /// HTTP 500 for every request under `path_prefix`.
    pub fn on(path_prefix: &str) -> Self {
        Self { method: None, path_prefix: path_prefix.to_owned(), code: 500, remaining: None }
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    pub fn code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }

    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n.max(1));
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        path.starts_with(&self.path_prefix) && self.method.as_deref().is_none_or(|m| m == method)
    }
}

/// The stand-in of the API server's validation and validating admission for what the
/// stand-in does not model itself: built-in schemas, a CRD schema an older server does
/// not accept (a CEL rule, a field of a newer API), a ValidatingAdmissionPolicy. An
/// object of the rule's group and kind (and name, if set) is refused with `422 Invalid`
/// in upstream's shape ([`ApiError::invalid_object`]), after admission's defaulting and
/// before anything is stored. Like upstream, which runs every stage of a request but
/// persistence for `dryRun=All`, it refuses dry runs and real writes alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationRule {
    /// API group (`""` for the core group).
    pub group: String,
    pub kind: String,
    /// Only the object of this name; `None`: every object of the kind.
    pub name: Option<String>,
    /// The field the cause names, e.g. `spec.versions[0].schema.openAPIV3Schema`.
    pub field: String,
    /// The cause's text, as upstream writes it: `Invalid value: …`, `Unsupported value: …`.
    pub message: String,
}

impl ValidationRule {
    /// Refuses every object of `group`/`kind`, naming `field` with `message`.
    pub fn refuse(group: &str, kind: &str, field: &str, message: &str) -> Self {
        Self {
            group: group.to_owned(),
            kind: kind.to_owned(),
            name: None,
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Only the object called `name`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub(crate) fn matches(&self, group: &str, kind: &str, name: &str) -> bool {
        self.group == group && self.kind == kind && self.name.as_deref().is_none_or(|n| n == name)
    }
}

/// An object for the test hooks: `apiVersion`, `kind`, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// A cluster-scoped object.
    pub fn cluster(api_version: &str, kind: &str, name: &str) -> Self {
        Self {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            namespace: None,
            name: name.to_owned(),
        }
    }

    pub fn namespaced(api_version: &str, kind: &str, namespace: &str, name: &str) -> Self {
        Self { namespace: Some(namespace.to_owned()), ..Self::cluster(api_version, kind, name) }
    }
}

/// A status condition as a controller sets it (`metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(type_: &str, status: bool, reason: &str, message: &str) -> Self {
        Self {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
        }
    }

    pub fn unknown(type_: &str, reason: &str, message: &str) -> Self {
        Self { status: "Unknown".to_owned(), ..Self::new(type_, false, reason, message) }
    }
}

/// Why the stand-in could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("generating the stand-in's certificates")]
    Pki(#[source] pki::Error),
    #[error("configuring TLS")]
    Tls(#[source] rustls::Error),
    #[error("listening on 127.0.0.1")]
    Bind(#[source] std::io::Error),
}

/// Why a test hook could not do what it was asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("{api_version} {kind} is not served (is its CRD established?)")]
    UnknownKind { api_version: String, kind: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error("the stand-in refused the object: {0}")]
    Rejected(String),
}

/// A running stand-in API server. Dropping it stops the server.
#[derive(Debug)]
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca: pki::Ca,
    admin: pki::Pair,
    shutdown: watch::Sender<bool>,
}

impl ApiServer {
    /// Starts with [`Options::default`].
    pub async fn start() -> Result<Self, StartError> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Result<Self, StartError> {
        let ca = pki::Ca::generate().map_err(StartError::Pki)?;
        let serving = pki::issue_serving(&ca).map_err(StartError::Pki)?;
        let admin = ca.issue_client("system:admin", Some("system:masters")).map_err(StartError::Pki)?;
        let tls = pki::server_config(&ca, &serving).map_err(StartError::Tls)?;
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(StartError::Bind)?;
        let addr = tcp.local_addr().map_err(StartError::Bind)?;

        let mut store = Store::new(options.establish_delay, options.history_limit);
        store.validation_rules = options.validation_rules;
        for ns in &options.namespaces {
            let obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            // Built-in kind, valid names: cannot fail.
            let _ = store.put(obj, "k3s");
        }
        let cut = Arc::new(AtomicBool::new(false));
        let (cut_signal, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            hooks: Mutex::new(server::Hooks::default()),
            token: random_token(),
            git_version: options.git_version,
            server_address: addr.to_string(),
            cut: cut.clone(),
            cut_signal,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let listener =
            server::TlsListener::spawn(tcp, tls, cut, shutdown_rx.clone()).map_err(StartError::Bind)?;
        let app = axum::Router::new().fallback(server::dispatch).with_state(shared.clone());
        let mut stop = shutdown_rx;
        let signal_shared = shared.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app.into_make_service_with_connect_info::<server::Peer>())
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                    // End open watches so graceful shutdown does not wait for them.
                    signal_shared.cut_signal.send_modify(|g| *g += 1);
                });
            let _ = serve.await;
        });
        Ok(Self { shared, addr, ca, admin, shutdown })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The admin client certificate (`system:admin`, `system:masters`), as K3s's kubeconfig has.
    pub fn admin_credentials(&self) -> Credentials {
        Credentials::ClientCert { cert_pem: self.admin.cert_pem.clone(), key_pem: self.admin.key_pem.clone() }
    }

    pub fn token_credentials(&self) -> Credentials {
        Credentials::Token(self.shared.token.clone())
    }

    /// A client certificate for another user, signed by the cluster CA.
    pub fn issue_client_cert(&self, user: &str, group: Option<&str>) -> Result<Credentials, pki::Error> {
        let pair = self.ca.issue_client(user, group)?;
        Ok(Credentials::ClientCert { cert_pem: pair.cert_pem, key_pem: pair.key_pem })
    }

    /// A kubeconfig for this server (HTTPS, CA pinned) with these credentials.
    pub fn kubeconfig(&self, credentials: &Credentials) -> String {
        kubeconfig::render(&self.url(), self.ca_pem(), credentials)
    }

    /// Writes [`Self::kubeconfig`] to `path` (mode 0600), like K3s writes `k3s.yaml`.
    pub fn write_kubeconfig(&self, path: &Path, credentials: &Credentials) -> std::io::Result<()> {
        kubeconfig::write(path, &self.kubeconfig(credentials))
    }

    /// Stops serving: open watches end, new connections are refused.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    // ---- objects -------------------------------------------------------------------

    fn kind(&self, api_version: &str, kind: &str) -> Result<resources::ResourceType, HookError> {
        lock(&self.shared.store).find_kind(api_version, kind).ok_or_else(|| HookError::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        })
    }

    /// An object as stored (with the requested `apiVersion`).
    pub fn get(&self, r: &ObjectRef) -> Option<Value> {
        let rt = self.kind(&r.api_version, &r.kind).ok()?;
        lock(&self.shared.store).hook_get(&rt, r.namespace.as_deref(), &r.name)
    }

    /// Objects of a kind, in one namespace or all.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        match self.kind(api_version, kind) {
            Ok(rt) => lock(&self.shared.store).hook_list(&rt, namespace),
            Err(_) => Vec::new(),
        }
    }

    /// Creates or replaces an object as written, `.status` included (seeding Nodes and
    /// running Pods, or playing a controller). Watchers see it; the mutation log does not.
    pub fn put(&self, obj: Value) -> Result<Value, HookError> {
        lock(&self.shared.store).put(obj, TEST_MANAGER).map_err(HookError::Rejected)
    }

    /// Deletes an object at once (finalizers ignored). Returns whether it existed.
    pub fn delete(&self, r: &ObjectRef) -> Result<bool, HookError> {
        let rt = self.kind(&r.api_version, &r.kind)?;
        Ok(lock(&self.shared.store).hook_delete(&rt, r.namespace.as_deref(), &r.name))
    }

    /// Changes `.status` through `f` as a controller's status write: new
    /// `resourceVersion`, a MODIFIED event, no `generation` bump.
    pub fn update_status(&self, r: &ObjectRef, f: impl FnOnce(&mut Value)) -> Result<Value, HookError> {
        let rt = self.kind(&r.api_version, &r.kind)?;
        lock(&self.shared.store)
            .update_status(&rt, r.namespace.as_deref(), &r.name, CONTROLLER_MANAGER, |status, _| f(status))
            .ok_or_else(|| HookError::NotFound { kind: r.kind.clone(), name: r.name.clone() })
    }

    /// Sets a condition in `status.conditions` as a Flux-style controller does after a
    /// reconcile: `observedGeneration` on the condition and `status.observedGeneration`
    /// set to the object's `metadata.generation`; `lastTransitionTime` changes only
    /// with the condition's status.
    pub fn set_condition(&self, r: &ObjectRef, c: &Condition) -> Result<Value, HookError> {
        let rt = self.kind(&r.api_version, &r.kind)?;
        lock(&self.shared.store)
            .update_status(&rt, r.namespace.as_deref(), &r.name, CONTROLLER_MANAGER, |status, generation| {
                store::set_condition(status, &c.type_, &c.status, &c.reason, &c.message, Some(generation));
                status["observedGeneration"] = serde_json::json!(generation);
            })
            .ok_or_else(|| HookError::NotFound { kind: r.kind.clone(), name: r.name.clone() })
    }

    /// Establishes a CRD now, whatever [`Options::establish_delay`] says.
    pub fn establish(&self, crd_name: &str) {
        lock(&self.shared.store).establish(crd_name);
    }

    /// The current (latest) `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    // ---- logs ----------------------------------------------------------------------

    /// Every request so far, in arrival order of their completion.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.hooks).requests.clone()
    }

    /// How many requests had this verb.
    pub fn request_count(&self, verb: Verb) -> usize {
        lock(&self.shared.hooks).requests.iter().filter(|r| r.verb == Some(verb)).count()
    }

    /// Mutating requests on resources, in processing order.
    pub fn mutations(&self) -> Vec<Mutation> {
        lock(&self.shared.store).mutations.clone()
    }

    /// Forgets the request and mutation logs.
    pub fn clear_logs(&self) {
        lock(&self.shared.hooks).requests.clear();
        lock(&self.shared.store).mutations.clear();
    }

    // ---- faults --------------------------------------------------------------------

    /// Adds a [`ValidationRule`]: matching writes and dry runs are refused from now on.
    pub fn add_validation_rule(&self, rule: ValidationRule) {
        lock(&self.shared.store).validation_rules.push(rule);
    }

    /// Adds an injected failure; the first matching rule answers.
    pub fn fail(&self, failure: Failure) {
        lock(&self.shared.hooks).failures.push(failure);
    }

    pub fn clear_failures(&self) {
        lock(&self.shared.hooks).failures.clear();
    }

    /// While set, every open connection fails (reset) and new ones are closed at once:
    /// the API server looks down. Open watches end.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.shared.cut.store(unreachable, Ordering::SeqCst);
        if unreachable {
            self.shared.cut_signal.send_modify(|g| *g += 1);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
