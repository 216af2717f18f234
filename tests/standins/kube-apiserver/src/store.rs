//! Object storage and the semantics of every verb: one generic store keyed by
//! (group, resource, namespace, name), a global `resourceVersion` counter, the event
//! history that watches replay, and the mutation log. Versions of one group/resource
//! share storage; objects are returned with the requested `apiVersion` and no
//! conversion (a CRD's `conversion.strategy: None`).
//!
//! Everything here runs under one lock and never awaits; the HTTP layer
//! ([`crate::server`]) parses requests into these calls.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::fields::{Managed, Part};
use crate::resources::{self, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError, Subject};
use crate::{Mutation, ValidationRule, Verb, meta};

/// Manager name of the stand-in's own status writes (CRD conditions), as upstream's
/// apiextensions-apiserver records them.
pub const APISERVER_MANAGER: &str = "kube-apiserver";

/// Where an object lives. Cluster-scoped objects have an empty namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone)]
struct Stored {
    obj: Value,
    managed: Managed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as watches replay it. `old` is the previous state of a modification,
/// for selector transitions.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub ty: EventType,
    pub key: ObjKey,
    pub obj: Value,
    pub old: Option<Value>,
}

/// A resolved request target.
#[derive(Debug, Clone)]
pub struct Target {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    /// One object by name, without a subresource.
    fn object(rt: &ResourceType, namespace: Option<&str>, name: &str) -> Self {
        Target {
            rt: rt.clone(),
            namespace: namespace.map(str::to_owned),
            name: Some(name.to_owned()),
            subresource: None,
        }
    }

    fn key(&self, name: &str) -> ObjKey {
        ObjKey {
            group: self.rt.group.clone(),
            resource: self.rt.plural.clone(),
            namespace: if self.rt.namespaced {
                self.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    fn subject<'a>(&'a self, name: &'a str) -> Subject<'a> {
        Subject { group: &self.rt.group, resource: &self.rt.plural, name }
    }

    fn part(&self) -> Part {
        if self.subresource.as_deref() == Some("status") {
            Part::Status
        } else {
            Part::Main { keep_status: !self.rt.status_subresource }
        }
    }
}

/// Query options of writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub field_manager: Option<String>,
    /// Manager for non-apply writes without `fieldManager` (upstream: the user agent
    /// up to its first `/`).
    pub default_manager: String,
    pub dry_run: bool,
    pub force: bool,
}

impl WriteOpts {
    fn manager(&self) -> &str {
        self.field_manager.as_deref().unwrap_or(&self.default_manager)
    }
}

/// Query options of list and watch.
#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// The patch types the stand-in accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Apply,
}

/// What a watch starts from, decided under the lock so no event is missed.
#[derive(Debug)]
pub struct WatchStart {
    /// Events to send first (synthetic ADDED for the current state, or history replay).
    pub backlog: Vec<Arc<Event>>,
    /// The state's `resourceVersion` when the backlog is a synthetic list.
    pub snapshot_rv: u64,
    pub rx: broadcast::Receiver<Arc<Event>>,
}

#[derive(Debug)]
pub struct Store {
    rv: u64,
    builtins: Vec<ResourceType>,
    objects: BTreeMap<ObjKey, Stored>,
    history: VecDeque<Arc<Event>>,
    /// Every event with `rv > history_floor` is still in `history`.
    history_floor: u64,
    history_limit: usize,
    tx: broadcast::Sender<Arc<Event>>,
    pub mutations: Vec<Mutation>,
    /// Refusals a stricter or older server would make ([`ValidationRule`]).
    pub validation_rules: Vec<ValidationRule>,
    pub establish_delay: Duration,
    /// CRDs to establish once `establish_delay` has passed (drained by the server).
    pub pending_establish: Vec<String>,
}

type Result<T> = std::result::Result<T, ApiError>;

impl Store {
    pub fn new(establish_delay: Duration, history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            rv: 0,
            builtins: resources::builtins(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_floor: 0,
            history_limit: history_limit.max(1),
            tx,
            mutations: Vec::new(),
            establish_delay,
            pending_establish: Vec::new(),
            validation_rules: Vec::new(),
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    // ---- kinds ---------------------------------------------------------------------

    /// Every served resource: built-ins, then those of established CRDs.
    pub fn resources(&self) -> Vec<ResourceType> {
        let mut out = self.builtins.clone();
        let crds = self.objects.range(crd_range()).filter(|(k, _)| is_crd_key(k));
        for (_, s) in crds {
            out.extend(resources::from_crd(&s.obj));
        }
        out
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.resources().into_iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.resources().into_iter().find(|r| r.api_version() == api_version && r.kind == kind)
    }

    // ---- reads ---------------------------------------------------------------------

    pub fn get(&self, t: &Target) -> Result<Value> {
        let name = t.name.as_deref().unwrap_or_default();
        let s = self.objects.get(&t.key(name)).ok_or_else(|| ApiError::not_found(t.subject(name)))?;
        Ok(as_version(&s.obj, &t.rt))
    }

    /// Objects of a resource, optionally in one namespace, in key order.
    fn scan<'a>(
        &'a self,
        rt: &'a ResourceType,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
        self.objects
            .iter()
            .filter(move |(k, _)| {
                k.group == rt.group && k.resource == rt.plural && ns.is_none_or(|n| k.namespace == n)
            })
            .map(|(k, s)| (k, &s.obj))
    }

    pub fn list(&self, t: &Target, opts: &ListOpts) -> Result<Value> {
        let ns = t.namespace.as_deref().filter(|_| t.rt.namespaced);
        let start = match &opts.continue_token {
            Some(token) => token
                .split_once(':')
                .and_then(|(_, i)| i.parse::<usize>().ok())
                .ok_or_else(|| ApiError::bad_request(format!("invalid continue token {token:?}")))?,
            None => 0,
        };
        let matching: Vec<Value> = self
            .scan(&t.rt, ns)
            .filter(|(_, o)| opts.labels.matches(o) && opts.fields.matches(o))
            .map(|(_, o)| as_version(o, &t.rt))
            .collect();
        let end = opts.limit.filter(|l| *l > 0).map_or(matching.len(), |l| (start + l).min(matching.len()));
        let items: Vec<Value> = matching.get(start..end).map(<[Value]>::to_vec).unwrap_or_default();
        let mut metadata = json!({"resourceVersion": self.rv.to_string()});
        if end < matching.len() {
            metadata["continue"] = json!(format!("{}:{end}", self.rv));
            metadata["remainingItemCount"] = json!(matching.len() - end);
        }
        Ok(
            json!({"kind": t.rt.list_kind, "apiVersion": t.rt.api_version(), "metadata": metadata, "items": items}),
        )
    }

    /// Starts a watch: `from` is the client's `resourceVersion` (`None` or `0`: the
    /// current state as ADDED events first).
    pub fn watch(&self, t: &Target, from: Option<u64>) -> Result<WatchStart> {
        let rx = self.tx.subscribe();
        match from {
            None | Some(0) => {
                let ns = t.namespace.as_deref().filter(|_| t.rt.namespaced);
                let backlog = self
                    .scan(&t.rt, ns)
                    .map(|(k, o)| {
                        Arc::new(Event {
                            rv: self.rv,
                            ty: EventType::Added,
                            key: k.clone(),
                            obj: o.clone(),
                            old: None,
                        })
                    })
                    .collect();
                Ok(WatchStart { backlog, snapshot_rv: self.rv, rx })
            }
            Some(rv) if rv < self.history_floor => {
                Err(ApiError::expired(format!("too old resource version: {rv} ({})", self.history_floor + 1)))
            }
            Some(rv) => {
                let backlog = self.history.iter().filter(|e| e.rv > rv).cloned().collect();
                Ok(WatchStart { backlog, snapshot_rv: self.rv, rx })
            }
        }
    }

    // ---- writes --------------------------------------------------------------------

    pub fn create(&mut self, t: &Target, mut body: Value, opts: &WriteOpts) -> Result<Value> {
        check_type(&t.rt, &body, false)?;
        let ns = self.check_namespace_field(t, &mut body)?;
        let meta = body.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let name = match (
            meta.get("name").and_then(Value::as_str),
            meta.get("generateName").and_then(Value::as_str),
        ) {
            (Some(n), _) if !n.is_empty() => n.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => meta::generate_name(prefix),
            _ => {
                return Err(ApiError::invalid(
                    t.subject(""),
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        };
        validate_name(t, &name)?;
        self.require_namespace(t, ns.as_deref())?;
        let key = t.key(&name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(t.subject(&name)));
        }
        let mut obj = body;
        init_metadata(&mut obj, &t.rt, &name, ns.as_deref());
        if t.rt.status_subresource {
            strip(&mut obj, "status");
        }
        admit(&t.rt, &mut obj, None)?;
        self.validate(&t.rt, &obj)?;
        let mut managed = Managed::default();
        managed.record_update(opts.manager(), &t.rt.api_version(), t.part(), None, &obj);
        if opts.dry_run {
            return Ok(obj);
        }
        let out = self.commit(&t.rt, key, obj, managed, None);
        self.after_write(&t.rt, &name);
        Ok(out)
    }

    pub fn replace(&mut self, t: &Target, mut body: Value, opts: &WriteOpts) -> Result<Value> {
        let name = t.name.clone().unwrap_or_default();
        check_type(&t.rt, &body, false)?;
        self.check_namespace_field(t, &mut body)?;
        let body_name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let old = self.stored(t, &name)?;
        check_precondition(t, &name, &old.obj, &body)?;
        self.update(t, &name, old, body, opts)
    }

    pub fn patch(
        &mut self,
        t: &Target,
        ty: PatchType,
        patch: Value,
        opts: &WriteOpts,
    ) -> Result<(u16, Value)> {
        let name = t.name.clone().unwrap_or_default();
        if ty == PatchType::Apply {
            return self.apply(t, &name, patch, opts);
        }
        if !patch.is_object() {
            return Err(ApiError::bad_request("patch body must be a JSON object"));
        }
        let old = self.stored(t, &name)?;
        check_precondition(t, &name, &old.obj, &patch)?;
        let mut candidate = old.obj.clone();
        match ty {
            PatchType::Strategic => {
                crate::fields::strategic_merge_patch(&mut candidate, &patch).map_err(ApiError::bad_request)?
            }
            _ => crate::fields::merge_patch(&mut candidate, &patch),
        }
        if candidate.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()) {
            return Err(ApiError::bad_request("metadata.name cannot be changed by a patch"));
        }
        Ok((200, self.update(t, &name, old, candidate, opts)?))
    }

    /// PUT and merge patches after the candidate object is known.
    fn update(
        &mut self,
        t: &Target,
        name: &str,
        old: Stored,
        candidate: Value,
        opts: &WriteOpts,
    ) -> Result<Value> {
        let mut new = match t.part() {
            Part::Status => {
                let mut n = old.obj.clone();
                match candidate.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => strip(&mut n, "status"),
                }
                n
            }
            Part::Main { .. } => {
                let mut n = candidate;
                keep_system_metadata(&mut n, &old.obj);
                if t.rt.status_subresource {
                    match old.obj.get("status") {
                        Some(s) => n["status"] = s.clone(),
                        None => strip(&mut n, "status"),
                    }
                }
                n
            }
        };
        set_type(&mut new, &t.rt);
        admit(&t.rt, &mut new, Some(&old.obj))?;
        self.validate(&t.rt, &new)?;
        let mut managed = old.managed.clone();
        managed.record_update(opts.manager(), &t.rt.api_version(), t.part(), Some(&old.obj), &new);
        if opts.dry_run {
            return Ok(as_version(&new, &t.rt));
        }
        let out = self.commit(&t.rt, t.key(name), new, managed, Some(old));
        self.after_write(&t.rt, name);
        Ok(as_version(&out, &t.rt))
    }

    fn apply(&mut self, t: &Target, name: &str, mut intent: Value, opts: &WriteOpts) -> Result<(u16, Value)> {
        let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        };
        check_type(&t.rt, &intent, true)?;
        let ns = self.check_namespace_field(t, &mut intent)?;
        match intent.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            None => intent["metadata"]["name"] = json!(name),
        }
        let key = t.key(name);
        let api_version = t.rt.api_version();
        match self.objects.get(&key).cloned() {
            None => {
                if t.part() == Part::Status {
                    return Err(ApiError::not_found(t.subject(name)));
                }
                validate_name(t, name)?;
                self.require_namespace(t, ns.as_deref())?;
                let mut base = json!({"apiVersion": api_version, "kind": t.rt.kind, "metadata": {}});
                init_metadata(&mut base, &t.rt, name, ns.as_deref());
                let mut managed = Managed::default();
                let mut obj = managed
                    .apply(&manager, &api_version, t.part(), opts.force, &base, &intent)
                    .map_err(|c| ApiError::apply_conflicts(t.subject(name), &c))?;
                admit(&t.rt, &mut obj, None)?;
                self.validate(&t.rt, &obj)?;
                self.validate(&t.rt, &obj)?;
                if opts.dry_run {
                    return Ok((201, obj));
                }
                let out = self.commit(&t.rt, key, obj, managed, None);
                self.after_write(&t.rt, name);
                Ok((201, out))
            }
            Some(old) => {
                check_precondition(t, name, &old.obj, &intent)?;
                let mut managed = old.managed.clone();
                let mut obj = managed
                    .apply(&manager, &api_version, t.part(), opts.force, &old.obj, &intent)
                    .map_err(|c| ApiError::apply_conflicts(t.subject(name), &c))?;
                set_type(&mut obj, &t.rt);
                admit(&t.rt, &mut obj, Some(&old.obj))?;
                self.validate(&t.rt, &obj)?;
                if opts.dry_run {
                    return Ok((200, as_version(&obj, &t.rt)));
                }
                let out = self.commit(&t.rt, key, obj, managed, Some(old));
                self.after_write(&t.rt, name);
                Ok((200, as_version(&out, &t.rt)))
            }
        }
    }

    pub fn delete(&mut self, t: &Target, body: Option<&Value>, dry_run: bool) -> Result<Value> {
        let name = t.name.clone().unwrap_or_default();
        let old = self.stored(t, &name)?;
        if let Some(pre) = body.and_then(|b| b.get("preconditions")) {
            let uid = old.obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
            let rv = old.obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
            if let Some(want) = pre.get("uid").and_then(Value::as_str).filter(|w| *w != uid) {
                return Err(ApiError::conflict(
                    t.subject(&name),
                    &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
                ));
            }
            if let Some(want) = pre.get("resourceVersion").and_then(Value::as_str).filter(|w| *w != rv) {
                return Err(ApiError::conflict(
                    t.subject(&name),
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in meta: {rv}"
                    ),
                ));
            }
        }
        let has_finalizers =
            old.obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if dry_run {
            return Ok(as_version(&old.obj, &t.rt));
        }
        if has_finalizers {
            if old.obj.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(as_version(&old.obj, &t.rt));
            }
            let mut obj = old.obj.clone();
            obj["metadata"]["deletionTimestamp"] = json!(meta::now());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let managed = old.managed.clone();
            let out = self.commit(&t.rt, t.key(&name), obj, managed, Some(old));
            return Ok(as_version(&out, &t.rt));
        }
        let uid = old.obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
        self.remove(&t.key(&name));
        let mut details = json!({"name": name, "kind": t.rt.plural, "uid": uid});
        if !t.rt.group.is_empty() {
            details["group"] = json!(t.rt.group);
        }
        Ok(status::success(200, Some(details)))
    }

    pub fn delete_collection(&mut self, t: &Target, opts: &ListOpts, dry_run: bool) -> Result<Value> {
        let ns = t.namespace.as_deref().filter(|_| t.rt.namespaced);
        let names: Vec<(String, String)> = self
            .scan(&t.rt, ns)
            .filter(|(_, o)| opts.labels.matches(o) && opts.fields.matches(o))
            .map(|(k, _)| (k.namespace.clone(), k.name.clone()))
            .collect();
        let mut items = Vec::new();
        for (ns, name) in names {
            let one = Target {
                rt: t.rt.clone(),
                namespace: Some(ns).filter(|n| !n.is_empty()),
                name: Some(name),
                subresource: None,
            };
            if let Ok(obj) = self.get(&one) {
                items.push(obj);
            }
            self.delete(&one, None, dry_run)?;
        }
        Ok(
            json!({"kind": t.rt.list_kind, "apiVersion": t.rt.api_version(), "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
        )
    }

    /// Removes an object and what lives under it: a namespace's objects, a CRD's
    /// custom resources. Upstream deletes these through the namespace controller and
    /// the CRD finalizer, asynchronously; the stand-in does it at once.
    fn remove(&mut self, key: &ObjKey) {
        let children: Vec<ObjKey> = if key.group.is_empty() && key.resource == "namespaces" {
            self.objects.keys().filter(|k| k.namespace == key.name).cloned().collect()
        } else if is_crd_key(key) {
            let (plural, group) = key.name.split_once('.').unwrap_or_default();
            self.objects.keys().filter(|k| k.group == group && k.resource == plural).cloned().collect()
        } else {
            Vec::new()
        };
        for child in children {
            self.remove(&child);
        }
        if let Some(s) = self.objects.remove(key) {
            self.rv += 1;
            let mut obj = s.obj;
            obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.publish(Event { rv: self.rv, ty: EventType::Deleted, key: key.clone(), obj, old: None });
        }
    }

    /// Stores a write: no-op writes change nothing (no new `resourceVersion`, no event),
    /// as upstream skips them; otherwise bumps `resourceVersion`, bumps `generation` on
    /// changes outside metadata and status, renders managed fields, records the event.
    fn commit(
        &mut self,
        rt: &ResourceType,
        key: ObjKey,
        mut obj: Value,
        managed: Managed,
        old: Option<Stored>,
    ) -> Value {
        if let Some(old) = &old {
            let same_fields = old.managed.0.len() == managed.0.len()
                && old.managed.0.iter().zip(&managed.0).all(|(a, b)| {
                    a.manager == b.manager
                        && a.operation == b.operation
                        && a.subresource == b.subresource
                        && a.fields == b.fields
                });
            if same_fields && comparable(&old.obj) == comparable(&obj) {
                return old.obj.clone();
            }
        }
        self.rv += 1;
        if rt.tracks_generation {
            let generation = match &old {
                None => 1,
                Some(o) => {
                    let g = o.obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                    if spec_part(&o.obj, rt) != spec_part(&obj, rt) { g + 1 } else { g }
                }
            };
            obj["metadata"]["generation"] = json!(generation);
        }
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        obj["metadata"]["managedFields"] = managed.render();
        let finalized = obj.pointer("/metadata/deletionTimestamp").is_some()
            && obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
        let ty = if old.is_some() { EventType::Modified } else { EventType::Added };
        self.objects.insert(key.clone(), Stored { obj: obj.clone(), managed });
        self.publish(Event { rv: self.rv, ty, key: key.clone(), obj: obj.clone(), old: old.map(|o| o.obj) });
        if finalized {
            self.remove(&key);
        }
        obj
    }

    fn publish(&mut self, event: Event) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.history_floor = e.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    /// A CRD was written: establish it now or after the configured delay.
    fn after_write(&mut self, rt: &ResourceType, name: &str) {
        if rt.group != "apiextensions.k8s.io" || rt.plural != "customresourcedefinitions" {
            return;
        }
        if self.establish_delay.is_zero() {
            self.establish(name);
        } else {
            self.pending_establish.push(name.to_owned());
        }
    }

    /// Sets a CRD's `NamesAccepted` and `Established` conditions, `acceptedNames` and
    /// `storedVersions`, as apiextensions-apiserver's controllers do.
    pub fn establish(&mut self, name: &str) {
        let Some(rt) = self.builtins.iter().find(|r| r.plural == "customresourcedefinitions").cloned() else {
            return;
        };
        let key = ObjKey {
            group: rt.group.clone(),
            resource: rt.plural.clone(),
            namespace: String::new(),
            name: name.to_owned(),
        };
        let Some(old) = self.objects.get(&key).cloned() else { return };
        if old.obj.pointer("/metadata/deletionTimestamp").is_some() {
            return;
        }
        let mut status = old.obj.get("status").cloned().unwrap_or_else(|| json!({}));
        let mut names = old.obj.pointer("/spec/names").cloned().unwrap_or_else(|| json!({}));
        let kind = names.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        if names.get("singular").is_none() {
            names["singular"] = json!(kind.to_lowercase());
        }
        if names.get("listKind").is_none() {
            names["listKind"] = json!(format!("{kind}List"));
        }
        status["acceptedNames"] = names;
        let storage: Vec<Value> = old
            .obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                    .filter_map(|v| v.get("name").cloned())
                    .collect()
            })
            .unwrap_or_default();
        let mut stored = status.get("storedVersions").and_then(Value::as_array).cloned().unwrap_or_default();
        for v in storage {
            if !stored.contains(&v) {
                stored.push(v);
            }
        }
        status["storedVersions"] = Value::Array(stored);
        set_condition(&mut status, "NamesAccepted", "True", "NoConflicts", "no conflicts found", None);
        set_condition(
            &mut status,
            "Established",
            "True",
            "InitialNamesAccepted",
            "the initial names have been accepted",
            None,
        );
        let mut obj = old.obj.clone();
        obj["status"] = status;
        let mut managed = old.managed.clone();
        managed.record_update(
            APISERVER_MANAGER,
            "apiextensions.k8s.io/v1",
            Part::Status,
            Some(&old.obj),
            &obj,
        );
        self.commit(&rt, key, obj, managed, Some(old));
    }

    // ---- test hooks ----------------------------------------------------------------

    /// Writes `obj` as a controller would, status included, creating or replacing it.
    /// No admission beyond defaulting; the namespace need not exist.
    pub fn put(&mut self, mut obj: Value, manager: &str) -> std::result::Result<Value, String> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let rt = self
            .find_kind(&api_version, &kind)
            .ok_or_else(|| format!("{api_version} {kind} is not served"))?;
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned);
        if name.is_empty() || (rt.namespaced && ns.is_none()) {
            return Err("metadata.name (and metadata.namespace for namespaced kinds) must be set".to_owned());
        }
        let key = Target::object(&rt, ns.as_deref(), &name).key(&name);
        let old = self.objects.get(&key).cloned();
        let all = Part::Main { keep_status: true };
        match &old {
            Some(o) => keep_system_metadata(&mut obj, &o.obj),
            None => init_metadata(&mut obj, &rt, &name, ns.as_deref()),
        }
        admit(&rt, &mut obj, old.as_ref().map(|o| &o.obj)).map_err(|e| e.message)?;
        let mut managed = old.as_ref().map(|o| o.managed.clone()).unwrap_or_default();
        managed.record_update(manager, &api_version, all, old.as_ref().map(|o| &o.obj), &obj);
        let out = self.commit(&rt, key, obj, managed, old);
        self.after_write(&rt, &name);
        Ok(out)
    }

    /// Changes an object's `.status` through `f`, as a controller's status write would.
    pub fn update_status(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        manager: &str,
        f: impl FnOnce(&mut Value, i64),
    ) -> Option<Value> {
        let key = Target::object(rt, namespace, name).key(name);
        let old = self.objects.get(&key)?.clone();
        let generation = old.obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        let mut obj = old.obj.clone();
        let mut status = obj.get("status").cloned().unwrap_or_else(|| json!({}));
        f(&mut status, generation);
        obj["status"] = status;
        let part = if rt.status_subresource { Part::Status } else { Part::Main { keep_status: true } };
        let mut managed = old.managed.clone();
        managed.record_update(manager, &rt.api_version(), part, Some(&old.obj), &obj);
        Some(self.commit(rt, key, obj, managed, Some(old)))
    }

    pub fn hook_get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.objects.get(&Target::object(rt, namespace, name).key(name)).map(|s| as_version(&s.obj, rt))
    }

    pub fn hook_list(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        self.scan(rt, namespace.filter(|_| rt.namespaced)).map(|(_, o)| as_version(o, rt)).collect()
    }

    pub fn hook_delete(&mut self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> bool {
        let key = Target::object(rt, namespace, name).key(name);
        let existed = self.objects.contains_key(&key);
        self.remove(&key);
        existed
    }

    // ---- eviction ------------------------------------------------------------------

    /// `POST pods/{name}/eviction` (policy/v1 `Eviction`): deletes the pod unless a
    /// PodDisruptionBudget would be violated (429). See [`crate::eviction`].
    pub fn evict(&mut self, t: &Target, body: &Value) -> Result<Value> {
        let name = t.name.clone().unwrap_or_default();
        if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str).filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object: {n} != {name}"
            )));
        }
        let pod = self.stored(t, &name)?.obj;
        let ns = t.namespace.clone().unwrap_or_default();
        let pdb_rt = self
            .builtins
            .iter()
            .find(|r| r.plural == "poddisruptionbudgets")
            .cloned()
            .ok_or_else(|| ApiError::internal("poddisruptionbudgets not registered"))?;
        let pdbs: Vec<Value> = self.scan(&pdb_rt, Some(&ns)).map(|(_, o)| o.clone()).collect();
        let pods: Vec<Value> = self.scan(&t.rt, Some(&ns)).map(|(_, o)| o.clone()).collect();
        crate::eviction::check(&pod, &pdbs, &pods)?;
        let dry_run =
            body.pointer("/deleteOptions/dryRun").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        if !dry_run {
            let plain = Target { subresource: None, ..t.clone() };
            self.delete(&plain, body.get("deleteOptions"), false)?;
        }
        Ok(status::success(201, None))
    }

    // ---- helpers -------------------------------------------------------------------

    fn stored(&self, t: &Target, name: &str) -> Result<Stored> {
        self.objects.get(&t.key(name)).cloned().ok_or_else(|| ApiError::not_found(t.subject(name)))
    }

    /// Namespaced kinds: the body's namespace must match the URL's; it is filled in
    /// when absent. Returns the namespace.
    fn check_namespace_field(&self, t: &Target, body: &mut Value) -> Result<Option<String>> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        if !body.get("metadata").is_some_and(Value::is_object) {
            body["metadata"] = json!({});
        }
        if !t.rt.namespaced {
            if let Some(m) = body["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            return Ok(None);
        }
        let url_ns = t
            .namespace
            .clone()
            .ok_or_else(|| ApiError::bad_request("a namespace is required for this resource"))?;
        match body.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != url_ns => Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
            _ => {
                body["metadata"]["namespace"] = json!(url_ns);
                Ok(Some(url_ns))
            }
        }
    }

    /// Namespaced objects need their namespace (upstream's NamespaceLifecycle admission).
    /// The [`ValidationRule`]s, after admission's defaults, before anything is stored:
    /// where upstream validates, and so for dry runs as for writes.
    fn validate(&self, rt: &ResourceType, obj: &Value) -> Result<()> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        match self.validation_rules.iter().find(|r| r.matches(&rt.group, &rt.kind, name)) {
            Some(r) => Err(ApiError::invalid_object(&rt.group, &rt.kind, name, &r.field, &r.message)),
            None => Ok(()),
        }
    }

    fn require_namespace(&self, t: &Target, ns: Option<&str>) -> Result<()> {
        let Some(ns) = ns.filter(|_| t.rt.namespaced) else { return Ok(()) };
        let key = ObjKey {
            group: String::new(),
            resource: "namespaces".into(),
            namespace: String::new(),
            name: ns.to_owned(),
        };
        if self.objects.contains_key(&key) {
            Ok(())
        } else {
            Err(ApiError::not_found(Subject { group: "", resource: "namespaces", name: ns }))
        }
    }
}

fn crd_range() -> std::ops::RangeFrom<ObjKey> {
    ObjKey {
        group: "apiextensions.k8s.io".into(),
        resource: "customresourcedefinitions".into(),
        namespace: String::new(),
        name: String::new(),
    }..
}

fn is_crd_key(k: &ObjKey) -> bool {
    k.group == "apiextensions.k8s.io" && k.resource == "customresourcedefinitions"
}

/// The object with the requested version's `apiVersion` (storage is version-less).
fn as_version(obj: &Value, rt: &ResourceType) -> Value {
    let mut o = obj.clone();
    set_type(&mut o, rt);
    o
}

fn set_type(obj: &mut Value, rt: &ResourceType) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
}

fn strip(obj: &mut Value, key: &str) {
    if let Some(m) = obj.as_object_mut() {
        m.remove(key);
    }
}

/// `apiVersion` and `kind` in a body must name the resource of the URL (`required`:
/// apply bodies must carry both).
fn check_type(rt: &ResourceType, body: &Value, required: bool) -> Result<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    let api_version = body.get("apiVersion").and_then(Value::as_str);
    let kind = body.get("kind").and_then(Value::as_str);
    if required && (api_version.is_none() || kind.is_none()) {
        return Err(ApiError::bad_request("apiVersion and kind must be set in an apply patch"));
    }
    // A body in another served version of the same group is accepted, as upstream does.
    let group_of = |av: &str| av.rsplit_once('/').map(|(g, _)| g.to_owned()).unwrap_or_default();
    if let Some(av) = api_version
        && group_of(av) != rt.group
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if let Some(k) = kind
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    Ok(())
}

fn validate_name(t: &Target, name: &str) -> Result<()> {
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if name.contains('/') || name == "." || name == ".." || (t.rt.plural == "namespaces" && !dns_label(name))
    {
        return Err(ApiError::invalid(
            t.subject(name),
            "metadata.name",
            "Invalid value: a lowercase RFC 1123 name is required",
        ));
    }
    Ok(())
}

/// `metadata.resourceVersion` in a body is an optimistic-concurrency precondition.
fn check_precondition(t: &Target, name: &str, old: &Value, body: &Value) -> Result<()> {
    let want = body.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty());
    let have = old.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
    match want {
        Some(w) if w != have => Err(ApiError::conflict(
            t.subject(name),
            "the object has been modified; please apply your changes to the latest version and try again",
        )),
        _ => Ok(()),
    }
}

/// Server-owned metadata of a new object.
fn init_metadata(obj: &mut Value, rt: &ResourceType, name: &str, ns: Option<&str>) {
    set_type(obj, rt);
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let m = &mut obj["metadata"];
    if let Some(map) = m.as_object_mut() {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            map.remove(k);
        }
    }
    m["name"] = json!(name);
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m["uid"] = json!(meta::new_uid());
    m["creationTimestamp"] = json!(meta::now());
}

/// Metadata the client cannot change on update, copied from the stored object.
fn keep_system_metadata(new: &mut Value, old: &Value) {
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    let Some(nm) = new["metadata"].as_object_mut() else { return };
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
        "managedFields",
        "generateName",
    ] {
        match old.pointer(&format!("/metadata/{k}")) {
            Some(v) => {
                nm.insert(k.into(), v.clone());
            }
            None => {
                nm.remove(k);
            }
        }
    }
}

/// What `generation` tracks: everything but metadata (and status, when it is a
/// subresource).
fn spec_part(obj: &Value, rt: &ResourceType) -> Value {
    let mut o = obj.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "apiVersion", "kind"] {
        o.remove(k);
    }
    if rt.status_subresource {
        o.remove("status");
    }
    Value::Object(o)
}

/// An object for no-op detection: without resourceVersion and managed fields.
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
        m.remove("generation");
    }
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
    }
    o
}

/// Per-kind defaulting and validation (upstream's strategies, the parts that matter here).
fn admit(rt: &ResourceType, obj: &mut Value, old: Option<&Value>) -> Result<()> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let subject = Subject { group: &rt.group, resource: &rt.plural, name: &name };
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        ("", "Pod") if old.is_none() && obj.pointer("/status/phase").is_none() => {
            obj["status"] = json!({"phase": "Pending"});
        }
        ("", "Secret") => {
            if obj.get("type").is_none() {
                obj["type"] = json!("Opaque");
            }
            if let Some(old_type) = old.and_then(|o| o.get("type"))
                && obj.get("type") != Some(old_type)
            {
                return Err(ApiError::invalid(subject, "type", "field is immutable"));
            }
            if let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                let engine = base64::engine::general_purpose::STANDARD;
                for (k, v) in string_data {
                    let text = v.as_str().unwrap_or_default();
                    obj["data"][k] = json!(engine.encode(text.as_bytes()));
                }
            }
            if let Some(data) = obj.get("data").and_then(Value::as_object) {
                let engine = base64::engine::general_purpose::STANDARD;
                for (k, v) in data {
                    if v.as_str().is_none_or(|s| engine.decode(s).is_err()) {
                        return Err(ApiError::invalid(
                            subject,
                            &format!("data[{k}]"),
                            "Invalid value: must be base64",
                        ));
                    }
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => validate_crd(obj, subject)?,
        _ => {}
    }
    Ok(())
}

fn validate_crd(obj: &Value, subject: Subject<'_>) -> Result<()> {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let (group, plural, kind, scope) =
        (s("/spec/group"), s("/spec/names/plural"), s("/spec/names/kind"), s("/spec/scope"));
    for (field, value) in [("spec.group", group), ("spec.names.plural", plural), ("spec.names.kind", kind)] {
        if value.is_empty() {
            return Err(ApiError::invalid(subject, field, "Required value"));
        }
    }
    if subject.name != format!("{plural}.{group}") {
        return Err(ApiError::invalid(
            subject,
            "metadata.name",
            "Invalid value: must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if scope != "Namespaced" && scope != "Cluster" {
        return Err(ApiError::invalid(
            subject,
            "spec.scope",
            "Unsupported value: supported values: \"Cluster\", \"Namespaced\"",
        ));
    }
    let versions = obj.pointer("/spec/versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        return Err(ApiError::invalid(
            subject,
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let storage = versions.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).count();
    if storage != 1 {
        return Err(ApiError::invalid(
            subject,
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    Ok(())
}

/// Sets a condition in `status.conditions` the way controllers do with
/// `meta.SetStatusCondition`: `lastTransitionTime` changes only with `status`.
pub fn set_condition(
    status: &mut Value,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
) {
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let Some(conditions) = status["conditions"].as_array_mut() else { return };
    let mut c = Map::new();
    c.insert("type".into(), json!(type_));
    c.insert("status".into(), json!(value));
    if let Some(g) = observed_generation {
        c.insert("observedGeneration".into(), json!(g));
    }
    c.insert("lastTransitionTime".into(), json!(meta::now()));
    c.insert("reason".into(), json!(reason));
    c.insert("message".into(), json!(message));
    match conditions.iter_mut().find(|x| x.get("type").and_then(Value::as_str) == Some(type_)) {
        Some(existing) => {
            if existing.get("status").and_then(Value::as_str) == Some(value)
                && let Some(t) = existing.get("lastTransitionTime")
            {
                c.insert("lastTransitionTime".into(), t.clone());
            }
            *existing = Value::Object(c);
        }
        None => conditions.push(Value::Object(c)),
    }
}

/// Records one mutating request in the log.
pub fn mutation(
    verb: Verb,
    t: &Target,
    name: Option<String>,
    field_manager: Option<String>,
    code: u16,
) -> Mutation {
    Mutation {
        verb,
        api_version: t.rt.api_version(),
        kind: t.rt.kind.clone(),
        resource: t.rt.plural.clone(),
        subresource: t.subresource.clone(),
        namespace: t.namespace.clone().filter(|_| t.rt.namespaced),
        name,
        field_manager,
        code,
    }
}
