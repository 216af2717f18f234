//! The preflight half of `elysium-node recover`: given the GitOps repository and the
//! sealed-secrets key backup, find out — without touching any cluster — whether the keys
//! open the repository's SealedSecrets, where the controller runs, which bootstrap
//! manifests to apply and in which order the Kustomizations come up. The apply half
//! (Kubernetes) consumes [`Preflight`]; this crate has no Kubernetes client.
//!
//! Modules: [`repo`] (getting the repository), [`keys`] (the key backup), [`sealed`] (the
//! sealed-secrets hybrid crypto), [`manifests`] (reading YAML), [`flux`] (bootstrap and
//! Kustomization order), [`controller`] (where the controller runs), [`preflight`] (the
//! checks), [`report`] (what is printed).

pub mod controller;
pub mod flux;
pub mod keys;
pub mod manifests;
pub mod preflight;
pub mod repo;
pub mod report;
pub mod sealed;

pub use preflight::{Preflight, PreflightError, PreflightOptions, run as preflight};
pub use report::{PreflightReport, Verdict};
