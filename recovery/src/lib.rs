//! `elysium-node recover`: bring a cluster back from its GitOps repository and a
//! sealed-secrets key backup.
//!
//! The **preflight** ([`preflight()`]) finds out — without touching any cluster — whether
//! the keys open the repository's SealedSecrets, where the controller runs, which bootstrap
//! manifests to apply and in which order the Kustomizations come up. The **apply**
//! ([`apply::run`]) takes a passing [`Preflight`] and restores the keys and Flux over the
//! Kubernetes API (kube-rs, server-side apply), then follows Flux until the cluster is
//! healthy. Installing K3s and cloning with the operator's own credentials are not this
//! crate's.
//!
//! Preflight modules: [`repo`] (getting the repository), [`keys`] (the key backup),
//! [`sealed`] (the sealed-secrets hybrid crypto), [`manifests`] (reading YAML), [`flux`]
//! (bootstrap and Kustomization order), [`controller`] (where the controller runs),
//! [`preflight`] (the checks), [`report`] (what is printed). Apply modules: [`plan`] (the
//! ordered steps, pure), [`cluster`] (the client from a kubeconfig), [`deploykey`] (Flux's
//! SSH deploy key), [`ledger`] (progress on disk, for resuming), [`follow`] (readiness),
//! [`progress`] (events for the operator), [`apply`] (carrying the plan out).

pub mod apply;
pub mod cluster;
pub mod controller;
pub mod deploykey;
pub mod flux;
pub mod follow;
pub mod keys;
pub mod ledger;
pub mod manifests;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod repo;
pub mod report;
pub mod sealed;

pub use apply::{ApplyError, ApplyOptions, ApplyReport};
pub use preflight::{KeySource, Preflight, PreflightError, PreflightOptions, run as preflight};
pub use progress::{Event, Ui};
pub use report::{PreflightReport, Verdict};
