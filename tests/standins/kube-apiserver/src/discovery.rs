//! Discovery documents, built from the served resources: the classic endpoints
//! (`/api` `APIVersions`, `/api/v1` and `/apis/{g}/{v}` `APIResourceList`, `/apis`
//! `APIGroupList`, `/apis/{g}` `APIGroup`) that kube-rs's `Discovery::run` and
//! `discovery::oneshot` read, and aggregated discovery (`apidiscovery.k8s.io/v2`
//! `APIGroupDiscoveryList` on `/api` and `/apis`) that `Discovery::run_aggregated` and
//! kubectl ask for with their `Accept` header.

use serde_json::{Value, json};

use crate::resources::{self, ResourceType, STATUS_VERBS, VERBS};

/// Media type of aggregated discovery responses (and what a client's `Accept` names).
pub const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for aggregated discovery (v2 or v2beta1).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|t| {
        let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
        t.contains("g=apidiscovery.k8s.io") && t.contains("as=APIGroupDiscoveryList")
    })
}

/// Named groups in the order upstream lists them: built-in groups first, then CRD
/// groups alphabetically. Versions most-preferred first.
fn groups(rs: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut named: Vec<&ResourceType> = rs.iter().filter(|r| !r.group.is_empty()).collect();
    named.sort_by_key(|r| (r.crd.is_some(), if r.crd.is_some() { r.group.clone() } else { String::new() }));
    for r in named {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    versions.push(r.version.clone());
                }
            }
            None => out.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    for (_, versions) in &mut out {
        resources::sort_versions(versions);
    }
    out
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub fn api_group_list(rs: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(rs).iter().map(|(g, vs)| group_doc(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, if the group is served.
pub fn api_group(rs: &[ResourceType], group: &str) -> Option<Value> {
    let (g, vs) = groups(rs).into_iter().find(|(g, _)| g == group)?;
    let mut doc = group_doc(&g, &vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1` or `/apis/{group}/{version}`, if served.
pub fn resource_list(rs: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let here: Vec<&ResourceType> = rs.iter().filter(|r| r.group == group && r.version == version).collect();
    if here.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in here {
        let mut doc = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            doc["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            doc["categories"] = json!(r.categories);
        }
        resources.push(doc);
        if r.status_subresource {
            resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": STATUS_VERBS}));
        }
        for (sub, g, v, kind, verbs) in &r.subresources {
            resources.push(json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "group": g, "version": v, "kind": kind, "verbs": verbs}));
        }
    }
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn aggregated_group(rs: &[ResourceType], group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = rs
                .iter()
                .filter(|r| r.group == group && &r.version == v)
                .map(|r| {
                    let mut subs = Vec::new();
                    if r.status_subresource {
                        subs.push(json!({"subresource": "status", "responseKind": {"group": group, "version": v, "kind": r.kind}, "verbs": STATUS_VERBS}));
                    }
                    for (sub, g, sv, kind, verbs) in &r.subresources {
                        subs.push(json!({"subresource": sub, "responseKind": {"group": g, "version": sv, "kind": kind}, "verbs": verbs}));
                    }
                    json!({
                        "resource": r.plural,
                        "responseKind": {"group": group, "version": v, "kind": r.kind},
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": VERBS,
                        "shortNames": r.short_names,
                        "categories": r.categories,
                        "subresources": subs,
                    })
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group}, "versions": versions})
}

fn aggregated_list(items: Vec<Value>) -> Value {
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Aggregated `/api`: the core group.
pub fn aggregated_core(rs: &[ResourceType]) -> Value {
    aggregated_list(vec![aggregated_group(rs, "", &["v1".to_owned()])])
}

/// Aggregated `/apis`: every named group.
pub fn aggregated_apis(rs: &[ResourceType]) -> Value {
    aggregated_list(groups(rs).iter().map(|(g, vs)| aggregated_group(rs, g, vs)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_discovery() {
        let rs = resources::builtins();
        let list = api_group_list(&rs);
        let names: Vec<&str> =
            list["groups"].as_array().into_iter().flatten().filter_map(|g| g["name"].as_str()).collect();
        assert_eq!(names, ["apps", "policy", "apiextensions.k8s.io"]);
        let core = resource_list(&rs, "", "v1").unwrap_or_default();
        let names: Vec<&str> =
            core["resources"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
        assert!(
            names.contains(&"pods/eviction")
                && names.contains(&"namespaces/status")
                && names.contains(&"secrets")
        );
        assert!(!names.contains(&"secrets/status"));
        assert!(resource_list(&rs, "apps", "v2").is_none());
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
    }
}
