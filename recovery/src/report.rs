//! The preflight's findings as data (serde, for `-o json`) and as text for a person. Holds
//! names, fingerprints, dates and verdicts only: nothing in a report is secret.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::controller::ControllerLocation;
use crate::flux::{Bootstrap, NamespacedName};
use crate::sealed::Scope;

#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    pub repository: RepositoryReport,
    pub keys: Vec<KeyReport>,
    pub committed_certs: Vec<CertReport>,
    pub sealed_secrets: Vec<SealedSecretReport>,
    pub controller: Option<ControllerLocation>,
    pub bootstrap: Bootstrap,
    /// Kustomizations under the cluster path, dependencies first.
    pub kustomization_order: Vec<NamespacedName>,
    pub checks: Vec<Check>,
    /// Things worth knowing that pass or fail nothing.
    pub notes: Vec<String>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepositoryReport {
    /// URL or path as given (no credentials: URLs with passwords are refused).
    pub source: String,
    /// `ssh`, `https`, `local git` or `directory`.
    pub kind: &'static str,
    pub branch: Option<String>,
    pub commit: Option<String>,
    /// The cluster path (`--path`).
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    pub name: String,
    /// The `sealedsecrets.bitnami.com/sealed-secrets-key` label: `active`, `compromised`.
    pub state: Option<String>,
    /// Labelled active or the legacy name: the controller loads it.
    pub loaded_by_controller: bool,
    /// Certificate NotBefore, RFC 3339.
    pub not_before: String,
    /// The newest loaded key: the one the controller seals with.
    pub newest: bool,
    /// SHA-256 of the public key, hex.
    pub fingerprint: String,
    /// Committed certificates that are this key's.
    pub matches_committed_certs: Vec<String>,
    /// SealedSecret values it opened.
    pub opened_values: usize,
    /// The SealedSecrets (`namespace/name`) it opened values of.
    pub opened_sealed_secrets: Vec<String>,
}

impl KeyReport {
    /// Worth a line of its own: it matches a committed certificate, opens something,
    /// seals new secrets, or is one the controller would not load.
    fn notable(&self) -> bool {
        !self.matches_committed_certs.is_empty()
            || self.opened_values > 0
            || self.newest
            || !self.loaded_by_controller
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CertReport {
    pub file: String,
    pub not_before: Option<String>,
    /// The backup key whose certificate this is.
    pub matched_by: Option<String>,
    /// Why it could not be read, when it could not.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SealedSecretReport {
    pub name: String,
    pub namespace: Option<String>,
    /// The scope the controller unseals with (the SealedSecret's own annotations).
    pub scope: Scope,
    /// `file#document`.
    pub origin: String,
    /// encryptedData entries.
    pub values: usize,
    /// Every value opened with some backup key.
    pub opened: bool,
    /// The keys that opened its values.
    pub keys: Vec<String>,
    /// Values no key opened.
    pub unopened_values: Vec<String>,
    /// Why not, when it is not about keys (no namespace, deprecated format, bad base64).
    pub problem: Option<String>,
    /// The Flux Kustomization that applies it; `None` when nothing the cluster path applies
    /// reaches it (another cluster's, or unused).
    pub layer: Option<String>,
}

impl SealedSecretReport {
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace.as_deref().unwrap_or("?"), self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    /// Worth reading; does not fail the preflight.
    Warn,
    Fail,
    /// Would fail; `--force` was given and this check allows it.
    Overridden,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Ok,
    /// OK only because `--force` overrode failed checks.
    OkForced,
    Failed,
}

impl Verdict {
    /// Whether recovery may go on.
    pub fn is_ok(self) -> bool {
        self != Verdict::Failed
    }

    pub(crate) fn of(checks: &[Check]) -> Verdict {
        if checks.iter().any(|c| c.status == Status::Fail) {
            Verdict::Failed
        } else if checks.iter().any(|c| c.status == Status::Overridden) {
            Verdict::OkForced
        } else {
            Verdict::Ok
        }
    }
}

impl fmt::Display for PreflightReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let r = &self.repository;
        let _ = writeln!(out, "Repository    {} ({})", r.source, r.kind);
        if let Some(b) = &r.branch {
            let _ = writeln!(out, "  branch      {b}");
        }
        if let Some(c) = &r.commit {
            let _ = writeln!(out, "  commit      {c}");
        }
        let _ = writeln!(out, "  cluster     {}", r.path);

        // A backup holds a key per 30 days since the cluster began: list the keys that
        // matter for this repository and count the rest in one line.
        let _ = writeln!(out, "\nSealing keys ({})", self.keys.len());
        for k in self.keys.iter().filter(|k| k.notable()) {
            let mut tags = Vec::new();
            tags.push(k.state.clone().unwrap_or_else(|| "legacy".into()));
            if !k.loaded_by_controller {
                tags.push("not loaded by the controller".into());
            }
            if k.newest {
                tags.push("newest: seals new secrets".into());
            }
            let _ = writeln!(out, "  {}  {}", k.name, tags.join(", "));
            let _ = writeln!(
                out,
                "      not before {}  fingerprint {}",
                k.not_before,
                &k.fingerprint[..16.min(k.fingerprint.len())]
            );
            if !k.matches_committed_certs.is_empty() {
                let _ = writeln!(
                    out,
                    "      is the committed certificate {}",
                    k.matches_committed_certs.join(", ")
                );
            }
            if k.opened_values > 0 {
                let _ = writeln!(
                    out,
                    "      opened {} value(s) of {} SealedSecret(s): {}",
                    k.opened_values,
                    k.opened_sealed_secrets.len(),
                    k.opened_sealed_secrets.join(", ")
                );
            } else {
                out.push_str("      opened nothing\n");
            }
        }
        let rest: Vec<&KeyReport> = self.keys.iter().filter(|k| !k.notable()).collect();
        if let (Some(first), Some(last)) = (
            rest.iter().min_by(|a, b| a.not_before.cmp(&b.not_before)),
            rest.iter().max_by(|a, b| a.not_before.cmp(&b.not_before)),
        ) {
            let span = if rest.len() == 1 {
                format!("{} (not before {})", first.name, first.not_before)
            } else {
                format!("from {} ({}) to {} ({})", first.name, first.not_before, last.name, last.not_before)
            };
            let _ = writeln!(
                out,
                "  + {} more key(s) {span}: match no committed certificate and open no SealedSecret here \
                 (restored all the same; every key is in -o json)",
                rest.len()
            );
        }

        out.push_str("\nCommitted sealing certificates\n");
        if self.committed_certs.is_empty() {
            out.push_str("  none found\n");
        }
        for c in &self.committed_certs {
            let state = match (&c.matched_by, &c.problem) {
                (_, Some(p)) => format!("unreadable: {p}"),
                (Some(k), None) => format!("matches key {k}"),
                (None, None) => "matches NO backup key".into(),
            };
            let _ = writeln!(out, "  {}  {state}", c.file);
        }

        let opened = self.sealed_secrets.iter().filter(|s| s.opened).count();
        let _ = writeln!(
            out,
            "\nSealedSecrets: {opened} of {} open with the backup keys",
            self.sealed_secrets.len()
        );
        for s in self.sealed_secrets.iter().filter(|s| s.opened) {
            let _ = writeln!(
                out,
                "  opened      {}  ({}, key {}) {}",
                s.display_name(),
                s.scope,
                s.keys.join("+"),
                s.origin
            );
        }
        for s in self.sealed_secrets.iter().filter(|s| !s.opened) {
            let why =
                s.problem.clone().unwrap_or_else(|| format!("no key opens {}", s.unopened_values.join(", ")));
            let _ = writeln!(out, "  NOT opened  {}  ({}) {}: {why}", s.display_name(), s.scope, s.origin);
        }

        out.push_str("\nSealed-secrets controller\n");
        match &self.controller {
            Some(c) => {
                let _ = writeln!(out, "  {}/{}  ({})", c.namespace, c.name, c.source);
            }
            None => out.push_str("  not found\n"),
        }

        let b = &self.bootstrap;
        out.push_str("\nFlux bootstrap\n");
        let _ = writeln!(out, "  form        {}", b.form);
        match b.form {
            crate::flux::BootstrapForm::None => {
                for l in &b.looked_for {
                    let _ = writeln!(out, "  looked for  {l}");
                }
            }
            crate::flux::BootstrapForm::Classic => {
                for f in b.components.iter().chain(b.sync.iter()) {
                    let _ = writeln!(out, "  {}", f.display());
                }
            }
            _ => {
                if let Some(i) = &b.instance {
                    let _ = writeln!(out, "  instance    FluxInstance {} ({})", i.name, i.origin);
                }
                if let Some(o) = &b.operator {
                    let _ = writeln!(
                        out,
                        "  operator    HelmRelease {} ({}), chart {}",
                        o.owner.helm_release,
                        o.owner.origin,
                        o.version.as_deref().unwrap_or("not pinned")
                    );
                }
            }
        }
        if let Some(v) = &b.flux_version {
            let _ = writeln!(out, "  flux        {v}");
        }
        if b.form != crate::flux::BootstrapForm::None {
            let reference =
                b.source.ref_name.clone().unwrap_or_else(|| format!("branch {}", b.source.branch));
            let _ = writeln!(
                out,
                "  GitRepository {} → {} ({reference})\n  Kustomization {} → {}",
                b.source.name, b.source.url, b.kustomization, b.kustomization_path
            );
        }

        out.push_str("\nKustomization order\n");
        for (i, k) in self.kustomization_order.iter().enumerate() {
            let _ = writeln!(out, "  {:>2}. {k}", i + 1);
        }

        out.push_str("\nChecks\n");
        for c in &self.checks {
            let tag = match c.status {
                Status::Pass => "  ok  ",
                Status::Warn => " warn ",
                Status::Fail => " FAIL ",
                Status::Overridden => "forced",
            };
            let _ = writeln!(out, "  [{tag}] {}: {}", c.name, c.detail);
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes\n");
            for n in &self.notes {
                let _ = writeln!(out, "  - {n}");
            }
        }
        let verdict = match self.verdict {
            Verdict::Ok => "OK: the repository and the keys can bring the cluster back".to_owned(),
            Verdict::OkForced => "OK with --force: failed checks overridden, see [forced] above".to_owned(),
            Verdict::Failed => {
                let failed: Vec<&str> =
                    self.checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.name).collect();
                format!("FAILED ({})", failed.join(", "))
            }
        };
        let _ = writeln!(out, "\nVerdict: {verdict}");
        f.write_str(&out)
    }
}
