//! The checks against the target cluster before the apply's first write: is the API
//! server new enough for the repository's Flux ([`crate::compat`]), and does it accept
//! every object it can already judge in a server-side dry run (`dryRun=All`: every
//! stage of a write but persistence, docs/reference/kubernetes.md#dry-run)? A server
//! too old for Flux otherwise accepts the namespaces and the keys and then refuses the
//! first CRD, leaving a half-written cluster.
//!
//! CRDs are dry-run first (the server checks their schemas), then every other object
//! whose kind the server already serves and whose namespace already exists. Objects of
//! a kind that only a CRD in the plan will define, or in a namespace the plan creates,
//! cannot be judged yet (a dry-run create in a missing namespace is 404 NotFound): they
//! are counted, not refused. Nothing here writes; carrying the plan out is
//! [`crate::apply`]'s.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::cluster::{Cluster, Kinds};
use crate::compat::{KubeVersion, Requirement};
use crate::plan::{FIELD_MANAGER, Manifest, ObjectId, Plan};
use crate::progress::{Event, Ui};

/// Why the cluster refuses the recovery before anything is written. Each says that
/// nothing was applied and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(
        "the API server {server} runs Kubernetes {server_version}, and Flux {flux} needs Kubernetes {needs} or \
         newer ({reference}); nothing was applied. Install a K3s release of Kubernetes {needs} or newer (a \
         v{needs}.x+k3sN version or later) and run the same command again, or recover from a commit whose \
         Flux this Kubernetes supports"
    )]
    ServerTooOld {
        server: String,
        server_version: String,
        needs: KubeVersion,
        flux: String,
        /// How the minimum was found ([`Requirement::source`]). Not named `source`: that
        /// is the error's cause to thiserror.
        reference: String,
    },
    #[error(
        "the API server {server} ({server_version}) refuses {id} ({origin}) in a server-side dry run: {reason}; \
         nothing was applied. If the manifest is as Flux wrote it, this Kubernetes is likely too old for it: \
         upgrade K3s; otherwise fix the manifest in the repository, push, and run again"
    )]
    Rejected { server: String, server_version: String, id: Box<ObjectId>, origin: String, reason: String },
    #[error("the server-side dry run of {id} on {server} could not be done; nothing was applied")]
    Request {
        server: String,
        id: Box<ObjectId>,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("looking up {what} on {server} failed; nothing was applied")]
    Lookup {
        what: String,
        server: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// What the checks found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validated {
    /// Accepted by a server-side dry run.
    pub checked: Vec<ObjectId>,
    /// Not checkable yet, and why.
    pub skipped: Vec<(ObjectId, String)>,
}

/// Checks the server's version against `requirement` (none: the repository does not say
/// its Flux version) and dry-runs every object of `plan` the server can judge now.
/// `kinds` is the apply's cache of served kinds, filled further here.
#[tracing::instrument(skip_all, fields(server = %cluster.server, version = %cluster.version))]
pub async fn validate(
    cluster: &Cluster,
    kinds: &mut Kinds,
    plan: &Plan,
    requirement: Option<&Requirement>,
    ui: &mut dyn Ui,
) -> Result<Validated, ValidateError> {
    check_version(cluster, requirement, ui)?;

    let client = &cluster.client;
    let namespaces: BTreeSet<String> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| ValidateError::Lookup {
            what: "namespaces".into(),
            server: cluster.server.clone(),
            source: Box::new(source),
        })?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();

    // CRDs first: the objects that an old server refuses first.
    let (crds, rest): (Vec<&Manifest>, Vec<&Manifest>) = plan.manifests().partition(|m| m.is_crd());
    let mut out = Validated::default();
    for m in crds.into_iter().chain(rest) {
        let kind = kinds.resolve(client, &m.id).await.map_err(|source| ValidateError::Lookup {
            what: format!("the kind of {}", m.id),
            server: cluster.server.clone(),
            source: Box::new(source),
        })?;
        let Some(kind) = kind else {
            out.skipped.push((m.id.clone(), "its kind comes from a CRD in the plan".into()));
            continue;
        };
        let ns = if kind.namespaced { m.id.namespace.as_deref() } else { None };
        if let Some(ns) = ns.filter(|ns| !namespaces.contains(*ns)) {
            out.skipped.push((m.id.clone(), format!("namespace {ns} is created by the plan")));
            continue;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        match kind.api(client, ns).patch(&m.id.name, &params, &Patch::Apply(m.body())).await {
            Ok(_) => {
                tracing::debug!(object = %m.id, "accepted in a server-side dry run");
                out.checked.push(m.id.clone());
            }
            // Deleted between the list and now: as if it had not existed.
            Err(kube::Error::Api(s))
                if s.code == 404 && s.details.as_ref().is_some_and(|d| d.kind == "namespaces") =>
            {
                out.skipped
                    .push((m.id.clone(), format!("namespace {} does not exist", ns.unwrap_or_default())));
            }
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 409 | 422) => {
                return Err(ValidateError::Rejected {
                    server: cluster.server.clone(),
                    server_version: cluster.version.clone(),
                    id: Box::new(m.id.clone()),
                    origin: m.origin.clone(),
                    reason: reason(&s, m.secret),
                });
            }
            Err(source) => {
                return Err(ValidateError::Request {
                    server: cluster.server.clone(),
                    id: Box::new(m.id.clone()),
                    source: Box::new(source),
                });
            }
        }
    }
    tracing::info!(checked = out.checked.len(), skipped = out.skipped.len(), "validated against the cluster");
    ui.event(Event::Validated { checked: out.checked.len(), skipped: out.skipped.len() });
    Ok(out)
}

/// The version check alone.
fn check_version(
    cluster: &Cluster,
    requirement: Option<&Requirement>,
    ui: &mut dyn Ui,
) -> Result<(), ValidateError> {
    let Some(req) = requirement else {
        ui.event(Event::Note(
            "the bootstrap does not say which Flux version it installs: the server's Kubernetes version is not \
             checked against it"
                .into(),
        ));
        return Ok(());
    };
    let Some(server) = KubeVersion::parse(&cluster.version) else {
        ui.event(Event::Note(format!(
            "the API server reports version {:?}, which is not major.minor: not checked against Flux {}",
            cluster.version, req.flux_version
        )));
        return Ok(());
    };
    if server < req.min_kubernetes {
        return Err(ValidateError::ServerTooOld {
            server: cluster.server.clone(),
            server_version: cluster.version.clone(),
            needs: req.min_kubernetes,
            flux: req.flux_version.clone(),
            reference: req.source.clone(),
        });
    }
    ui.event(Event::Note(format!(
        "Kubernetes {} meets Flux {}'s minimum, {} ({})",
        cluster.version, req.flux_version, req.min_kubernetes, req.source
    )));
    Ok(())
}

/// What the server said about a refused object. For a Secret only the reason and the
/// fields it names: the message of a validation or admission webhook may quote values.
fn reason(s: &kube::core::Status, secret: bool) -> String {
    if !secret {
        return s.message.clone();
    }
    let fields: Vec<&str> = s
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.field.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    let mut out = format!("{} (HTTP {})", if s.reason.is_empty() { "refused" } else { &s.reason }, s.code);
    if !fields.is_empty() {
        out.push_str(&format!(" on {}", fields.join(", ")));
    }
    out.push_str("; the server's message is not shown for a Secret, as it may quote the values");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};

    fn status(message: &str) -> kube::core::Status {
        kube::core::Status {
            code: 422,
            reason: "Invalid".into(),
            message: message.into(),
            details: Some(StatusDetails {
                name: "k".into(),
                kind: "Secret".into(),
                causes: vec![StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: \"c2VjcmV0\"".into(),
                    field: "data[tls.key]".into(),
                }],
                group: String::new(),
                uid: String::new(),
                retry_after_seconds: 0,
            }),
            ..kube::core::Status::default()
        }
    }

    #[test]
    fn a_secrets_refusal_names_fields_never_values() {
        let s = status("Secret \"k\" is invalid: data[tls.key]: Invalid value: \"c2VjcmV0\"");
        let r = reason(&s, true);
        assert!(!r.contains("c2VjcmV0"), "{r}");
        assert!(r.starts_with("Invalid (HTTP 422) on data[tls.key]"), "{r}");
        assert_eq!(reason(&s, false), s.message);
    }
}
