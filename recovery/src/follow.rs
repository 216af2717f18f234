//! Following Flux after the bootstrap is applied: the sync GitRepository and every
//! Kustomization in dependency order, then the HelmReleases and SealedSecrets, until they
//! are ready, one of them cannot become ready, or the time is up.
//!
//! Readiness is judged by pure functions over the objects as the API returns them, with
//! `flux bootstrap`'s rules (fluxcd/flux2 `objectReconciled`,
//! docs/reference/flux.md#readiness): `Ready=True`
//! **and** `status.observedGeneration == metadata.generation` **and** the expected revision
//! (`<branch>@sha1:<commit>`) in `status.artifact.revision` (the GitRepository) or
//! `status.lastAttemptedRevision` (a Kustomization). `Ready=False` is shown at once with its
//! message, but waited on: during a recovery most of them are passing ("dependency … is
//! not ready"). `Stalled=True` and `spec.suspend: true` end the wait, since Flux will not
//! retry them by itself. A SealedSecret is done when the controller set `Synced`; `False`
//! is final (a value no restored key opens stays that way).
//!
//! The API is polled, not watched: a poll survives the API server restarting under it,
//! which happens on a node coming back.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use kube::api::{ListParams, ObjectList};
use kube::{Client, api::DynamicObject};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::cluster::{Kind, is_code};
use crate::flux::NamespacedName;
use crate::progress::{Event, Ui};

/// The kinds followed (source-controller, kustomize-controller and helm-controller v1/v2
/// APIs; bitnami-labs/sealed-secrets `bitnami.com/v1alpha1`).
pub fn git_repository() -> Kind {
    Kind::known("source.toolkit.fluxcd.io", "v1", "GitRepository", "gitrepositories", true)
}
pub fn kustomization() -> Kind {
    Kind::known("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations", true)
}
pub fn helm_release() -> Kind {
    Kind::known("helm.toolkit.fluxcd.io", "v2", "HelmRelease", "helmreleases", true)
}
pub fn sealed_secret() -> Kind {
    Kind::known("bitnami.com", "v1alpha1", "SealedSecret", "sealedsecrets", true)
}

/// Where one object stands (defined with the events that carry it).
pub use crate::progress::Readiness;

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Missing => f.write_str("not created yet"),
            Readiness::Progressing { message } => write!(f, "progressing: {message}"),
            Readiness::Ready { revision: Some(r) } => write!(f, "ready at {r}"),
            Readiness::Ready { revision: None } => f.write_str("ready"),
            Readiness::NotReady { reason, message } => write!(f, "NOT ready ({reason}): {message}"),
            Readiness::Stalled { reason, message } => write!(f, "STALLED ({reason}): {message}"),
            Readiness::Suspended => f.write_str("SUSPENDED (spec.suspend: true): Flux will not reconcile it"),
        }
    }
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn text(c: &Value, field: &str) -> String {
    c.get(field).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// The rules every Flux object shares: suspend, Stalled, generation, then `cond`.
fn judge_flux(obj: &Value, cond: &str) -> Result<(), Readiness> {
    if obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return Err(Readiness::Suspended);
    }
    if let Some(c) = condition(obj, "Stalled").filter(|c| text(c, "status") == "True") {
        return Err(Readiness::Stalled { reason: text(c, "reason"), message: text(c, "message") });
    }
    let Some(c) = condition(obj, cond) else {
        return Err(Readiness::Progressing { message: "waiting for its controller".into() });
    };
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = obj.pointer("/status/observedGeneration").and_then(Value::as_i64);
    match text(c, "status").as_str() {
        "False" => Err(Readiness::NotReady { reason: text(c, "reason"), message: text(c, "message") }),
        "True" if generation.is_some() && observed != generation => Err(Readiness::Progressing {
            message: format!(
                "generation {} not observed yet (observed {})",
                generation.unwrap_or_default(),
                observed.map_or_else(|| "none".to_owned(), |o| o.to_string())
            ),
        }),
        "True" => Ok(()),
        _ => {
            Err(Readiness::Progressing { message: format!("{}: {}", text(c, "reason"), text(c, "message")) })
        }
    }
}

fn revision_check(found: Option<&str>, expected: Option<&str>) -> Result<(), Readiness> {
    match (found, expected) {
        (Some(f), Some(e)) if f == e => Ok(()),
        (_, None) => Ok(()),
        (f, Some(e)) => Err(Readiness::Progressing {
            message: format!("at revision {}, waiting for {e}", f.unwrap_or("(none)")),
        }),
    }
}

/// A GitRepository: ready at the expected revision in `status.artifact.revision`.
pub fn judge_source(obj: &Value, expected: Option<&str>) -> Readiness {
    if let Err(r) = judge_flux(obj, "Ready") {
        return r;
    }
    let revision = obj.pointer("/status/artifact/revision").and_then(Value::as_str);
    match revision_check(revision, expected) {
        Ok(()) => Readiness::Ready { revision: revision.map(str::to_owned) },
        Err(r) => r,
    }
}

/// A Kustomization: ready with `lastAttemptedRevision` at the expected revision when it
/// reads the sync source (`source`); others only need to be ready.
pub fn judge_kustomization(obj: &Value, source: &NamespacedName, expected: Option<&str>) -> Readiness {
    if let Err(r) = judge_flux(obj, "Ready") {
        return r;
    }
    let own_ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let r = |f: &str| obj.pointer(&format!("/spec/sourceRef/{f}")).and_then(Value::as_str);
    let reads_sync = r("kind") == Some("GitRepository")
        && r("name") == Some(source.name.as_str())
        && r("namespace").unwrap_or(own_ns) == source.namespace;
    let attempted = obj.pointer("/status/lastAttemptedRevision").and_then(Value::as_str);
    match revision_check(attempted, if reads_sync { expected } else { None }) {
        Ok(()) => Readiness::Ready {
            revision: obj.pointer("/status/lastAppliedRevision").and_then(Value::as_str).map(str::to_owned),
        },
        Err(r) => r,
    }
}

/// A FluxInstance: `Ready=True` for the current generation (the operator sets it once
/// the distribution is installed and the sync objects are made).
pub fn judge_instance(obj: &Value) -> Readiness {
    match judge_flux(obj, "Ready") {
        Ok(()) => Readiness::Ready { revision: None },
        Err(r) => r,
    }
}

pub fn flux_instance() -> Kind {
    Kind::known("fluxcd.controlplane.io", "v1", "FluxInstance", "fluxinstances", true)
}

/// Polls the FluxInstance until it is Ready, turns terminal, or `limit` passes; returns
/// where it stands then. Each change of state is an event.
pub async fn wait_instance(
    client: &Client,
    name: &NamespacedName,
    limit: Duration,
    poll: Duration,
    ui: &mut dyn Ui,
) -> Result<Readiness, kube::Error> {
    let api = flux_instance().api(client, Some(&name.namespace));
    let until = tokio::time::Instant::now() + limit;
    let mut last: Option<Readiness> = None;
    loop {
        let r = match api.get_opt(&name.name).await? {
            None => Readiness::Missing,
            Some(o) => judge_instance(&serde_json::to_value(&o).unwrap_or_default()),
        };
        if last.as_ref() != Some(&r) {
            ui.event(Event::Status { what: format!("FluxInstance {name}"), readiness: r.clone() });
            last = Some(r.clone());
        }
        if r.is_ready() || r.is_terminal() || tokio::time::Instant::now() >= until {
            return Ok(r);
        }
        tokio::time::sleep(poll).await;
    }
}

/// A HelmRelease: `Ready=True` for the current generation.
pub fn judge_helm_release(obj: &Value) -> Readiness {
    match judge_flux(obj, "Ready") {
        Ok(()) => Readiness::Ready { revision: None },
        Err(r) => r,
    }
}

/// A SealedSecret: `Synced=True` means the controller unsealed it into a Secret.
pub fn judge_sealed_secret(obj: &Value) -> Readiness {
    let Some(c) = condition(obj, "Synced") else {
        return Readiness::Progressing { message: "not unsealed yet".into() };
    };
    match text(c, "status").as_str() {
        "True" => Readiness::Ready { revision: None },
        _ => Readiness::NotReady { reason: text(c, "reason"), message: text(c, "message") },
    }
}

/// One followed object and where it stands.
#[derive(Debug, Clone, Serialize)]
pub struct Followed {
    pub kind: &'static str,
    /// `namespace/name`.
    pub name: String,
    pub readiness: Readiness,
}

impl Followed {
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

/// What following found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowOutcome {
    pub sources: Vec<Followed>,
    pub kustomizations: Vec<Followed>,
    pub helm_releases: Vec<Followed>,
    pub sealed_secrets: Vec<Followed>,
    /// The time ran out before everything was settled.
    pub timed_out: bool,
    /// Kinds that were not served, reads that failed.
    pub notes: Vec<String>,
}

impl FollowOutcome {
    pub fn healthy(&self) -> bool {
        !self.sources.is_empty()
            && [&self.sources, &self.kustomizations, &self.helm_releases, &self.sealed_secrets]
                .iter()
                .all(|v| v.iter().all(|f| f.readiness.is_ready()))
    }
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct Targets {
    pub source: NamespacedName,
    pub kustomizations: Vec<NamespacedName>,
    pub expected_revision: Option<String>,
}

/// Emits a Status event for every object whose readiness changed since the last poll.
struct Changes {
    last: BTreeMap<String, Readiness>,
}

impl Changes {
    fn report(&mut self, ui: &mut dyn Ui, items: &[Followed]) {
        for f in items {
            let label = f.label();
            if self.last.get(&label) != Some(&f.readiness) {
                ui.event(Event::Status { what: label.clone(), readiness: f.readiness.clone() });
                self.last.insert(label, f.readiness.clone());
            }
        }
    }
}

async fn get(client: &Client, kind: &Kind, n: &NamespacedName) -> Result<Option<Value>, kube::Error> {
    let obj = kind.api(client, Some(&n.namespace)).get_opt(&n.name).await?;
    Ok(obj.map(|o| serde_json::to_value(o).unwrap_or_default()))
}

/// Lists a kind in every namespace; `Ok(None)` when the kind is not served (its CRD is not
/// installed yet).
async fn list(client: &Client, kind: &Kind) -> Result<Option<Vec<Value>>, kube::Error> {
    match kind.api(client, None).list(&ListParams::default()).await {
        Ok(ObjectList { items, .. }) => Ok(Some(
            items.into_iter().map(|o: DynamicObject| serde_json::to_value(o).unwrap_or_default()).collect(),
        )),
        Err(e) if is_code(&e, &[404]) => Ok(None),
        Err(e) => Err(e),
    }
}

fn name_of(v: &Value) -> String {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default();
    format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
}

/// Polls until ready, terminal or `deadline`.
#[tracing::instrument(skip_all, fields(source = %targets.source))]
pub async fn follow(
    client: &Client,
    targets: &Targets,
    deadline: Instant,
    poll: Duration,
    ui: &mut dyn Ui,
) -> FollowOutcome {
    let mut out = FollowOutcome::default();
    let mut changes = Changes { last: BTreeMap::new() };
    let mut read_error_shown = false;
    let expected = targets.expected_revision.as_deref();

    // The GitRepository and the Kustomizations.
    let flux_ready = loop {
        let mut items = Vec::new();
        let mut failed = false;
        match get(client, &git_repository(), &targets.source).await {
            Ok(obj) => items.push(Followed {
                kind: "GitRepository",
                name: targets.source.to_string(),
                readiness: obj.map_or(Readiness::Missing, |o| judge_source(&o, expected)),
            }),
            Err(e) => failed = note_read_error(ui, &mut read_error_shown, &e),
        }
        for k in &targets.kustomizations {
            if failed {
                break;
            }
            match get(client, &kustomization(), k).await {
                Ok(obj) => items.push(Followed {
                    kind: "Kustomization",
                    name: k.to_string(),
                    readiness: obj
                        .map_or(Readiness::Missing, |o| judge_kustomization(&o, &targets.source, expected)),
                }),
                Err(e) => failed = note_read_error(ui, &mut read_error_shown, &e),
            }
        }
        if !failed {
            read_error_shown = false;
            changes.report(ui, &items);
            let (sources, kustomizations): (Vec<Followed>, Vec<Followed>) =
                items.into_iter().partition(|f| f.kind == "GitRepository");
            out.sources = sources;
            out.kustomizations = kustomizations;
        }
        let all = out.sources.iter().chain(&out.kustomizations);
        if !failed && all.clone().all(|f| f.readiness.is_ready()) {
            break true;
        }
        if all.clone().any(|f| f.readiness.is_terminal()) {
            break false;
        }
        if Instant::now() >= deadline {
            out.timed_out = true;
            break false;
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
    };

    // HelmReleases and SealedSecrets: waited on once Flux is through, else looked at once.
    loop {
        let mut settled = true;
        let mut failed = false;
        for (kind, label, judge, hr) in [
            (helm_release(), "HelmRelease", judge_helm_release as fn(&Value) -> Readiness, true),
            (sealed_secret(), "SealedSecret", judge_sealed_secret as fn(&Value) -> Readiness, false),
        ] {
            let items = match list(client, &kind).await {
                Ok(Some(objs)) => objs
                    .iter()
                    .map(|o| Followed { kind: label, name: name_of(o), readiness: judge(o) })
                    .collect(),
                Ok(None) => {
                    let note = format!("no {label} kind is served (its CRD is not installed)");
                    if !out.notes.contains(&note) {
                        out.notes.push(note);
                    }
                    Vec::new()
                }
                Err(e) => {
                    failed = note_read_error(ui, &mut read_error_shown, &e);
                    continue;
                }
            };
            changes.report(ui, &items);
            settled &= items.iter().all(|f| {
                // A HelmRelease that is not ready is retried by helm-controller; a
                // SealedSecret that did not open stays so.
                f.readiness.is_ready()
                    || f.readiness.is_terminal()
                    || (!hr && matches!(f.readiness, Readiness::NotReady { .. }))
            });
            if hr {
                out.helm_releases = items;
            } else {
                out.sealed_secrets = items;
            }
        }
        if !flux_ready || (settled && !failed) {
            break;
        }
        if Instant::now() >= deadline {
            out.timed_out = true;
            break;
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    out
}

/// A failed read while following: shown once, then polled again (the API server may be
/// restarting). Returns true (the poll failed).
fn note_read_error(ui: &mut dyn Ui, shown: &mut bool, e: &kube::Error) -> bool {
    if !*shown {
        ui.event(Event::Note(format!("reading Flux's status failed, retrying: {e}")));
        *shown = true;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REV: &str = "main@sha1:0123456789abcdef0123456789abcdef01234567";

    fn obj(generation: i64, observed: i64, ready: &str, extra: Value) -> Value {
        let mut o = json!({
            "metadata": {"name": "apps", "namespace": "flux-system", "generation": generation},
            "spec": {"sourceRef": {"kind": "GitRepository", "name": "flux-system"}},
            "status": {"observedGeneration": observed, "conditions": [
                {"type": "Ready", "status": ready, "reason": "R", "message": "m"}]},
        });
        if let (Some(s), Some(e)) = (o["status"].as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        o
    }

    fn fs() -> NamespacedName {
        NamespacedName::new("flux-system", "flux-system")
    }

    #[test]
    fn a_kustomization_is_ready_only_at_the_expected_revision_and_generation() {
        let at = |rev: &str| json!({"lastAttemptedRevision": rev, "lastAppliedRevision": rev});
        assert_eq!(
            judge_kustomization(&obj(2, 2, "True", at(REV)), &fs(), Some(REV)),
            Readiness::Ready { revision: Some(REV.into()) }
        );
        assert!(matches!(
            judge_kustomization(&obj(2, 1, "True", at(REV)), &fs(), Some(REV)),
            Readiness::Progressing { message } if message.contains("generation 2 not observed")
        ));
        assert!(matches!(
            judge_kustomization(&obj(2, 2, "True", at("main@sha1:old")), &fs(), Some(REV)),
            Readiness::Progressing { message } if message.contains("at revision main@sha1:old")
        ));
        // Another source: its own revisions.
        let mut other = obj(1, 1, "True", at("v1.2.3@sha1:x"));
        other["spec"]["sourceRef"]["name"] = json!("charts");
        assert!(judge_kustomization(&other, &fs(), Some(REV)).is_ready());
        assert_eq!(
            judge_kustomization(&obj(1, 1, "False", at(REV)), &fs(), Some(REV)),
            Readiness::NotReady { reason: "R".into(), message: "m".into() }
        );
        let mut suspended = obj(1, 1, "True", at(REV));
        suspended["spec"]["suspend"] = json!(true);
        assert!(judge_kustomization(&suspended, &fs(), Some(REV)).is_terminal());
        let mut stalled = obj(1, 1, "False", at(REV));
        stalled["status"]["conditions"]
            .as_array_mut()
            .expect("conditions")
            .push(json!({"type": "Stalled", "status": "True", "reason": "BuildFailed", "message": "kustomize build failed"}));
        assert_eq!(
            judge_kustomization(&stalled, &fs(), Some(REV)),
            Readiness::Stalled { reason: "BuildFailed".into(), message: "kustomize build failed".into() }
        );
        assert!(matches!(
            judge_kustomization(&json!({"metadata": {"generation": 1}}), &fs(), Some(REV)),
            Readiness::Progressing { .. }
        ));
    }

    #[test]
    fn sources_and_sealed_secrets() {
        let artifact = json!({"artifact": {"revision": REV}});
        assert!(judge_source(&obj(1, 1, "True", artifact.clone()), Some(REV)).is_ready());
        assert!(judge_source(&obj(1, 1, "True", artifact), None).is_ready());
        assert!(!judge_source(&obj(1, 1, "True", json!({})), Some(REV)).is_ready());
        let ss = |status: &str| json!({"status": {"conditions": [{"type": "Synced", "status": status, "reason": "", "message": "no key could decrypt secret (token)"}]}});
        assert!(judge_sealed_secret(&ss("True")).is_ready());
        assert!(
            matches!(judge_sealed_secret(&ss("False")), Readiness::NotReady { message, .. } if message.contains("no key could decrypt"))
        );
        assert!(!judge_sealed_secret(&json!({})).is_ready());
    }
}
