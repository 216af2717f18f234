//! What the apply phase tells the operator while it runs, and the one question it asks.
//! The library emits [`Event`]s through a [`Ui`]; the CLI draws them (a spinner per Flux
//! object on a terminal, plain lines otherwise), tests collect them. Events carry names,
//! states and public keys only, never Secret contents.

use std::fmt;

use serde::Serialize;

use crate::flux::NamespacedName;
use crate::plan::{ObjectId, Phase};

/// Where one object stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Readiness {
    /// Does not exist yet.
    Missing,
    /// Being reconciled, or waiting for its first reconciliation.
    Progressing {
        message: String,
    },
    Ready {
        revision: Option<String>,
    },
    /// `Ready=False` (`Synced=False` for a SealedSecret).
    NotReady {
        reason: String,
        message: String,
    },
    /// `Stalled=True`: Flux gave up until something changes.
    Stalled {
        reason: String,
        message: String,
    },
    /// `spec.suspend: true`.
    Suspended,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready { .. })
    }
    /// Will not change without someone acting.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Readiness::Stalled { .. } | Readiness::Suspended)
    }
}

/// Something happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected {
        server: String,
        version: String,
    },
    /// The ledger was found, or not, or set aside.
    Ledger {
        message: String,
    },
    /// The ordered plan, as text.
    Plan {
        text: String,
    },
    Applied {
        id: ObjectId,
        phase: Phase,
        dry_run: bool,
    },
    /// Recorded in the ledger and still in the cluster: not sent again.
    AlreadyApplied {
        id: ObjectId,
    },
    /// `--dry-run` could not ask the server about it (its namespace or kind comes from an
    /// earlier step that a dry run does not carry out).
    NotCheckable {
        id: ObjectId,
        why: String,
    },
    /// The checks against the cluster before the first write passed
    /// ([`crate::validate`]): `checked` objects passed a server-side dry run; `skipped`
    /// could not be checked yet (their kind comes from a CRD in the plan, or their
    /// namespace from a Namespace in it).
    Validated {
        checked: usize,
        skipped: usize,
    },
    WaitingEstablished {
        crds: usize,
    },
    Established {
        crds: usize,
    },
    /// The deploy key the GitRepository will use (public half only).
    DeployKey {
        secret: NamespacedName,
        public: String,
        fingerprint: String,
        origin: String,
    },
    ControllerRestarted {
        deployment: NamespacedName,
    },
    ControllerNotRunning {
        deployment: NamespacedName,
    },
    /// A followed object changed state.
    Status {
        what: String,
        readiness: Readiness,
    },
    Note(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Connected { server, version } => write!(f, "connected to {server} ({version})"),
            Event::Ledger { message } => f.write_str(message),
            Event::Plan { text } => write!(f, "plan:\n{}", text.trim_end()),
            Event::Applied { id, dry_run: false, .. } => write!(f, "applied {id}"),
            Event::Applied { id, dry_run: true, .. } => write!(f, "would apply {id} (server dry run passed)"),
            Event::AlreadyApplied { id } => write!(f, "already applied {id} (earlier run): skipped"),
            Event::NotCheckable { id, why } => write!(f, "would apply {id} (not checked: {why})"),
            Event::Validated { checked, skipped: 0 } => {
                write!(f, "the API server accepts all {checked} object(s) in a server-side dry run")
            }
            Event::Validated { checked, skipped } => write!(
                f,
                "the API server accepts {checked} object(s) in a server-side dry run; {skipped} cannot be \
                 checked before the plan creates their CRD or namespace"
            ),
            Event::WaitingEstablished { crds } => write!(f, "waiting for {crds} CRDs to be Established"),
            Event::Established { crds } => write!(f, "{crds} CRDs Established"),
            Event::DeployKey { secret, public, fingerprint, origin } => {
                write!(f, "deploy key for Secret {secret} ({origin}), {fingerprint}:\n  {public}")
            }
            Event::ControllerRestarted { deployment } => {
                write!(f, "restarted Deployment {deployment} so it loads the restored keys")
            }
            Event::ControllerNotRunning { deployment } => write!(
                f,
                "Deployment {deployment} is not running yet: it will load the restored keys when Flux installs it"
            ),
            Event::Status { what, readiness } => write!(f, "{what}: {readiness}"),
            Event::Note(n) => f.write_str(n),
        }
    }
}

/// Where events go, and who answers.
pub trait Ui: Send {
    fn event(&mut self, event: Event);
    /// Asks the operator to confirm `question`; may block (the CLI reads stdin). Returns
    /// whether they confirmed.
    fn confirm(&mut self, question: &str) -> bool;
}
