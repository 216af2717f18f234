//! Field paths, patches and field ownership (`metadata.managedFields`).
//!
//! # The simplified ownership model
//!
//! Upstream's structured-merge-diff tracks ownership per field with list-type aware
//! paths. The stand-in keeps its shape at a coarser grain, and documents it here:
//!
//! - A *field* is a leaf path through nested maps: a scalar, a list (every list is
//!   atomic: `listType=atomic`, no `k:`/`v:` item keys), `null`, or an empty map.
//!   Ownable are the object without `apiVersion`/`kind`, and of `metadata` only
//!   `labels.*`, `annotations.*`, `finalizers` and `ownerReferences`. Fields under
//!   `status` belong to the `status` subresource when the kind has one.
//! - **Apply** (manager M, intent I): a field of I conflicts when another manager owns it
//!   and the live value differs from I's; with conflicts and no `force` the apply fails
//!   with 409. With `force`, the conflicting owners lose the field. Owners of equal
//!   values share it. Fields M applied before and left out of I are removed from the
//!   object unless someone else owns them. Then I's fields are written into the object
//!   (maps merge key by key, everything else is replaced) and M owns exactly I's fields.
//! - **Update** (create, PUT, merge patch by manager U): U takes the fields whose values
//!   changed or appeared; everyone else loses changed and removed fields.
//! - Managed fields sent in request bodies are ignored; the server's record is rendered
//!   into `metadata.managedFields` as `FieldsV1` (`{"f:spec":{"f:x":{}}}`).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field: map keys from the object root (`["spec", "interval"]`).
pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource; `keep_status`: the kind has no status subresource, so
    /// `.status` is part of it.
    Main { keep_status: bool },
    /// The `status` subresource: `.status` only.
    Status,
}

impl Part {
    pub fn subresource(self) -> &'static str {
        match self {
            Part::Main { .. } => "",
            Part::Status => "status",
        }
    }
}

/// The ownable projection of an object for one part.
pub fn project(obj: &Value, part: Part) -> Value {
    let Some(o) = obj.as_object() else { return json!({}) };
    let mut out = Map::new();
    match part {
        Part::Status => {
            if let Some(s) = o.get("status") {
                out.insert("status".into(), s.clone());
            }
        }
        Part::Main { keep_status } => {
            for (k, v) in o {
                match k.as_str() {
                    "apiVersion" | "kind" => {}
                    "status" if !keep_status => {}
                    "metadata" => {
                        let mut m = Map::new();
                        for key in ["labels", "annotations", "finalizers", "ownerReferences"] {
                            if let Some(x) = v.get(key) {
                                m.insert(key.into(), x.clone());
                            }
                        }
                        if !m.is_empty() {
                            out.insert(k.clone(), Value::Object(m));
                        }
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    Value::Object(out)
}

/// Every leaf path of a value.
pub fn leaves(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

/// Writes `value` at `path`, making maps on the way. An empty map over an existing
/// map leaves it alone (the empty map claims the field, not its contents).
pub fn set(v: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = v;
    for k in parents {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(map) = cur.as_object_mut() else { return };
        cur = map.entry(k.clone()).or_insert_with(|| json!({}));
    }
    if !cur.is_object() {
        *cur = json!({});
    }
    let Some(map) = cur.as_object_mut() else { return };
    if value.as_object().is_some_and(Map::is_empty) && map.get(last).is_some_and(Value::is_object) {
        return;
    }
    map.insert(last.clone(), value);
}

/// Removes the field at `path` and then any maps left empty below the top level.
pub fn remove(v: &mut Value, path: &[String]) {
    fn go(cur: &mut Value, path: &[String], depth: usize) {
        let Some(map) = cur.as_object_mut() else { return };
        match path {
            [] => {}
            [last] => {
                map.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = map.get_mut(first) {
                    go(child, rest, depth + 1);
                    if depth >= 1 && child.as_object().is_some_and(Map::is_empty) {
                        map.remove(first);
                    }
                }
            }
        }
    }
    go(v, path, 0);
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Some(t) = target.as_object_mut() else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A strategic merge patch, applied as a JSON merge patch: maps merge key by key and
/// lists are replaced whole (upstream merges lists with a `patchMergeKey` item by item).
/// Patch directives (`$patch`, `$retainKeys`, `$setElementOrder/…`,
/// `$deleteFromPrimitiveList/…`) are refused rather than silently misapplied.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    fn check(v: &Value) -> Result<(), String> {
        match v {
            Value::Object(m) => {
                if let Some(k) = m.keys().find(|k| k.starts_with('$')) {
                    return Err(format!(
                        "strategic merge patch directive {k:?} is not supported by the stand-in"
                    ));
                }
                m.values().try_for_each(check)
            }
            Value::Array(a) => a.iter().try_for_each(check),
            _ => Ok(()),
        }
    }
    check(patch)?;
    merge_patch(target, patch);
    Ok(())
}

/// The operation of a managed-fields entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub subresource: &'static str,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

/// The managed-fields record of one object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Managed(pub Vec<Entry>);

/// A field as conflict messages print it: `.spec.interval`.
pub fn render_path(p: &Path) -> String {
    p.iter().map(|k| format!(".{k}")).collect()
}

impl Managed {
    fn entry_mut(
        &mut self,
        manager: &str,
        op: Operation,
        sub: &'static str,
        api_version: &str,
    ) -> &mut Entry {
        let pos =
            self.0.iter().position(|e| e.manager == manager && e.operation == op && e.subresource == sub);
        let i = match pos {
            Some(i) => i,
            None => {
                self.0.push(Entry {
                    manager: manager.to_owned(),
                    operation: op,
                    subresource: sub,
                    api_version: api_version.to_owned(),
                    time: crate::meta::now(),
                    fields: FieldSet::new(),
                });
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    fn is_self(e: &Entry, manager: &str, op: Operation, sub: &str) -> bool {
        e.manager == manager && e.operation == op && e.subresource == sub
    }

    /// Records a non-apply write of `part` from `old` (absent on create) to `new`.
    pub fn record_update(
        &mut self,
        manager: &str,
        api_version: &str,
        part: Part,
        old: Option<&Value>,
        new: &Value,
    ) {
        let sub = part.subresource();
        let new_proj = project(new, part);
        let new_leaves = leaves(&new_proj);
        let (changed, removed): (FieldSet, FieldSet) = match old {
            None => (new_leaves, FieldSet::new()),
            Some(old) => {
                let old_proj = project(old, part);
                let old_leaves = leaves(&old_proj);
                let changed =
                    new_leaves.iter().filter(|p| get(&old_proj, p) != get(&new_proj, p)).cloned().collect();
                (changed, old_leaves.difference(&new_leaves).cloned().collect())
            }
        };
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        for e in self
            .0
            .iter_mut()
            .filter(|e| e.subresource == sub && !Self::is_self(e, manager, Operation::Update, sub))
        {
            e.fields.retain(|p| !changed.contains(p) && !removed.contains(p));
        }
        let e = self.entry_mut(manager, Operation::Update, sub, api_version);
        e.fields.extend(changed);
        e.fields.retain(|p| !removed.contains(p));
        e.time = crate::meta::now();
        e.api_version = api_version.to_owned();
        self.0.retain(|e| !e.fields.is_empty());
    }

    /// Server-side apply of `intent` to `current` (module docs). Returns the new object,
    /// or the conflicts as (manager, field) pairs.
    pub fn apply(
        &mut self,
        manager: &str,
        api_version: &str,
        part: Part,
        force: bool,
        current: &Value,
        intent: &Value,
    ) -> Result<Value, Vec<(String, String)>> {
        let sub = part.subresource();
        let intent_proj = project(intent, part);
        let current_proj = project(current, part);
        let fields = leaves(&intent_proj);
        let mut conflicts = Vec::new();
        let mut lose: Vec<(usize, Path)> = Vec::new();
        for (i, e) in self.0.iter().enumerate() {
            if e.subresource != sub || Self::is_self(e, manager, Operation::Apply, sub) {
                continue;
            }
            for p in fields.intersection(&e.fields) {
                if get(&current_proj, p) != get(&intent_proj, p) {
                    conflicts.push((e.manager.clone(), render_path(p)));
                    lose.push((i, p.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        for (i, p) in lose {
            self.0[i].fields.remove(&p);
        }
        let mut out = current.clone();
        let previous = self
            .0
            .iter()
            .find(|e| Self::is_self(e, manager, Operation::Apply, sub))
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        for p in previous.difference(&fields) {
            let owned_elsewhere = self.0.iter().any(|e| {
                e.subresource == sub
                    && !Self::is_self(e, manager, Operation::Apply, sub)
                    && e.fields.contains(p)
            });
            if !owned_elsewhere {
                remove(&mut out, p);
            }
        }
        for p in &fields {
            if let Some(v) = get(&intent_proj, p) {
                set(&mut out, p, v.clone());
            }
        }
        let e = self.entry_mut(manager, Operation::Apply, sub, api_version);
        if e.fields != fields {
            e.time = crate::meta::now();
        }
        e.fields = fields;
        e.api_version = api_version.to_owned();
        self.0.retain(|e| !e.fields.is_empty());
        Ok(out)
    }

    /// `metadata.managedFields`.
    pub fn render(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|e| {
                    let mut fields = json!({});
                    for p in &e.fields {
                        let keyed: Path = p.iter().map(|k| format!("f:{k}")).collect();
                        set(&mut fields, &keyed, json!({}));
                    }
                    let mut entry = json!({
                        "manager": e.manager,
                        "operation": match e.operation { Operation::Apply => "Apply", Operation::Update => "Update" },
                        "apiVersion": e.api_version,
                        "time": e.time,
                        "fieldsType": "FieldsV1",
                        "fieldsV1": fields,
                    });
                    if !e.subresource.is_empty() {
                        entry["subresource"] = json!(e.subresource);
                    }
                    entry
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: Part = Part::Main { keep_status: false };

    fn p(s: &str) -> Path {
        s.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        merge_patch(&mut t, &json!({"a": [3]}));
        assert_eq!(t, json!({"a": [3]}));
        assert!(strategic_merge_patch(&mut t, &json!({"$patch": "replace"})).is_err());
    }

    #[test]
    fn projection_keeps_only_ownable_metadata() {
        let obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a", "uid": "u", "labels": {"x": "1"}}, "data": {"k": "dg=="}, "status": {"s": 1}});
        assert_eq!(
            leaves(&project(&obj, MAIN)),
            [p("metadata.labels.x"), p("data.k")].into_iter().collect::<FieldSet>()
        );
        assert_eq!(leaves(&project(&obj, Part::Status)), [p("status.s")].into_iter().collect::<FieldSet>());
    }

    #[test]
    fn apply_conflicts_force_and_prune() {
        let mut m = Managed::default();
        let base = json!({"metadata": {"name": "x"}});
        let a =
            m.apply("a", "v1", MAIN, false, &base, &json!({"spec": {"x": 1, "y": 2}})).unwrap_or_default();
        assert_eq!(a, json!({"metadata": {"name": "x"}, "spec": {"x": 1, "y": 2}}));
        // Same value from another manager: shared, no conflict.
        let b = m.apply("b", "v1", MAIN, false, &a, &json!({"spec": {"x": 1}})).unwrap_or_default();
        assert_eq!(b, a);
        // Different value: conflict with a (and b).
        let err = m.apply("c", "v1", MAIN, false, &b, &json!({"spec": {"y": 3}}));
        assert_eq!(err, Err(vec![("a".to_owned(), ".spec.y".to_owned())]));
        let forced = m.apply("c", "v1", MAIN, true, &b, &json!({"spec": {"y": 3}})).unwrap_or_default();
        assert_eq!(forced["spec"], json!({"x": 1, "y": 3}));
        // a drops x: b still owns it, so it stays; a drops everything it owned alone.
        let dropped =
            m.apply("a", "v1", MAIN, false, &forced, &json!({"spec": {"z": 9}})).unwrap_or_default();
        assert_eq!(dropped["spec"], json!({"x": 1, "y": 3, "z": 9}));
        let gone = m
            .apply("b", "v1", MAIN, false, &dropped, &json!({"metadata": {"labels": {"l": "v"}}}))
            .unwrap_or_default();
        assert_eq!(gone["spec"], json!({"y": 3, "z": 9}));
        assert_eq!(gone["metadata"]["labels"], json!({"l": "v"}));
    }

    #[test]
    fn updates_take_ownership_of_changed_fields() {
        let mut m = Managed::default();
        let a =
            m.apply("applier", "v1", MAIN, false, &json!({}), &json!({"spec": {"x": 1}})).unwrap_or_default();
        let mut edited = a.clone();
        edited["spec"]["x"] = json!(2);
        m.record_update("editor", "v1", MAIN, Some(&a), &edited);
        let err = m.apply("applier", "v1", MAIN, false, &edited, &json!({"spec": {"x": 1}}));
        assert_eq!(err, Err(vec![("editor".to_owned(), ".spec.x".to_owned())]));
        let rendered = m.render();
        assert_eq!(rendered[0]["manager"], "editor");
        assert_eq!(rendered[0]["fieldsV1"], json!({"f:spec": {"f:x": {}}}));
    }
}
