//! The reconciler: each thing the agent manages is a [`Step`] with the same shape,
//! observe → plan → apply.
//!
//! `observe` reads the node through the host seam, `plan` is a pure function from
//! (desired, observed) to actions (printable, testable without a machine), and
//! `apply` carries out one action idempotently. Each step has its own error type,
//! which keeps its sources; the reconciler renders it once, with its whole chain,
//! into the step's report. The steps themselves are in `crate::steps`.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use elysium_host::Host;
use elysium_proto::v1 as pb;
use elysium_spec::ClusterSpec;

use crate::error_chain;
use crate::state::{HeldSpec, NodeRole};

/// What the node should look like.
#[derive(Debug, Clone)]
pub struct Desired {
    pub generation: u64,
    pub spec: ClusterSpec,
    pub role: NodeRole,
    pub labels: std::collections::BTreeMap<String, String>,
    pub k3s: Option<crate::state::K3sAssignment>,
    pub secrets: crate::state::Secrets,
}

impl Desired {
    /// Parses a held spec. A spec this agent cannot read (written for a newer
    /// agent, say) is an error for the operator to see, not something to guess at.
    pub fn from_held(held: &HeldSpec) -> Result<Self, elysium_spec::SpecError> {
        Ok(Self {
            generation: held.generation,
            spec: ClusterSpec::parse(&held.cluster_spec_toml)?,
            role: held.role,
            labels: held.labels.clone(),
            k3s: held.k3s.clone(),
            secrets: held.secrets.clone(),
        })
    }

    /// A secret the spec refers to. Missing means the coordinator has not sent it
    /// (it refuses specs naming unset secrets, so this is a transient state).
    pub fn secret(&self, name: &str) -> Result<&str, MissingSecret> {
        self.secrets.get(name).ok_or_else(|| MissingSecret { name: name.to_owned() })
    }
}

/// A secret the spec names has not reached this node (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name:?} has not reached this node; check `elysium-node secret list` on the coordinator")]
pub struct MissingSecret {
    pub name: String,
}

/// A plain error with a message, for steps with nothing more to say (and tests).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub step: &'static str,
    pub message: String,
}

/// Where the reconciler stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReconcileState {
    /// No spec held yet.
    #[default]
    Waiting,
    Reconciling,
    Converged,
    Failed,
}

impl ReconcileState {
    pub fn to_pb(self) -> elysium_proto::v1::ReconcileState {
        use elysium_proto::v1::ReconcileState as P;
        match self {
            Self::Waiting => P::Waiting,
            Self::Reconciling => P::Reconciling,
            Self::Converged => P::Converged,
            Self::Failed => P::Failed,
        }
    }

    /// The name older coordinators read (`Heartbeat.reconcile_state`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Reconciling => "reconciling",
            Self::Converged => "converged",
            Self::Failed => "failed",
        }
    }
}

/// What the reconciler last reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconcileStatus {
    pub applied_generation: u64,
    pub state: ReconcileState,
    pub error: String,
    /// One per step, from the last pass.
    pub conditions: Vec<elysium_proto::v1::Condition>,
}

/// One managed aspect of the node.
pub trait Step: Send + Sync {
    type Observed: Send + Sync;
    type Action: fmt::Display + Send + Sync;
    /// What went wrong, with its sources; shown to the operator as one line
    /// (the error and its chain).
    type Error: std::error::Error + Send + Sync + 'static;

    fn name(&self) -> &'static str;
    /// Steps that must have succeeded in this pass before this one runs (K3s
    /// over the tailnet needs Tailscale). Any other failure does not hold this
    /// step up: a failing K3s must not keep the media library unmounted.
    fn depends_on(&self) -> &'static [&'static str] {
        &[]
    }
    /// Reads what is on the node (and, where the desired state names something
    /// outside the node, such as a release, what that resolves to).
    fn observe(
        &self,
        host: &Host,
        desired: &Desired,
    ) -> impl Future<Output = Result<Self::Observed, Self::Error>> + Send;
    /// Pure: no I/O.
    fn plan(&self, desired: &Desired, observed: &Self::Observed) -> Vec<Self::Action>;
    fn apply(
        &self,
        host: &Host,
        action: &Self::Action,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Conditions of the objects this step manages, read after the pass (also
    /// when it failed). Default: none beyond the step's own.
    fn conditions(&self, _host: &Host, _desired: &Desired) -> impl Future<Output = Vec<SubCondition>> + Send {
        async { Vec::new() }
    }
}

/// What one step did in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub step: &'static str,
    pub actions: Vec<String>,
    pub error: Option<String>,
    /// One condition per object the step manages (each mount, say), read after
    /// the pass.
    pub details: Vec<SubCondition>,
}

/// The state of one object a step manages, e.g. `Mount/media-library`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubCondition {
    /// `Step/object`, e.g. `Mount/media-library`.
    pub kind: String,
    pub ok: bool,
    /// CamelCase, e.g. `Mounted`, `BadCredentials`, `RemoteUnreachable`.
    pub reason: String,
    /// What a human should know, including what to do.
    pub message: String,
}

/// What a whole pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub generation: u64,
    pub steps: Vec<StepReport>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.error.is_none())
    }

    /// One condition per step that ran: `True` when it converged, `False` with its
    /// error otherwise. `since` is carried over from `previous` while the status
    /// stays the same, so it tells how long a step has been failing.
    pub fn conditions(&self, previous: &[pb::Condition], now_unix: i64) -> Vec<pb::Condition> {
        let condition = |kind: &str, status: &str, reason: &str, message: String| {
            let since = previous
                .iter()
                .find(|p| p.r#type == kind && p.status == status)
                .map(|p| p.since_unix)
                .unwrap_or(now_unix);
            pb::Condition {
                r#type: kind.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                since_unix: since,
            }
        };
        let mut out = Vec::new();
        for s in &self.steps {
            out.push(match &s.error {
                None => condition(s.step, "True", "Converged", String::new()),
                Some(e) => condition(s.step, "False", "ApplyFailed", e.clone()),
            });
            for d in &s.details {
                let status = if d.ok { "True" } else { "False" };
                out.push(condition(&d.kind, status, &d.reason, d.message.clone()));
            }
        }
        out
    }

    pub fn first_error(&self) -> Option<String> {
        self.steps.iter().find_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.step)))
    }
}

/// Object-safe form of [`Step`], so steps of different types share one list.
#[async_trait]
trait DynStep: Send + Sync {
    fn name(&self) -> &'static str;
    fn depends_on(&self) -> &'static [&'static str];
    async fn run(&self, host: &Host, desired: &Desired, dry_run: bool) -> StepReport;
}

#[async_trait]
impl<S: Step> DynStep for S {
    fn name(&self) -> &'static str {
        Step::name(self)
    }

    fn depends_on(&self) -> &'static [&'static str] {
        Step::depends_on(self)
    }

    async fn run(&self, host: &Host, desired: &Desired, dry_run: bool) -> StepReport {
        let step = self.name();
        let (actions, error) = match self.observe(host, desired).await {
            // The one place a step's error becomes text.
            Err(e) => (vec![], Some(error_chain(&e))),
            Ok(observed) => {
                let plan = self.plan(desired, &observed);
                let mut actions = Vec::with_capacity(plan.len());
                let mut error = None;
                for action in &plan {
                    actions.push(action.to_string());
                    if dry_run {
                        continue;
                    }
                    tracing::info!(step, action = %action, "applying");
                    if let Err(e) = self.apply(host, action).await {
                        error = Some(error_chain(&e));
                        break;
                    }
                }
                (actions, error)
            }
        };
        let details = if dry_run { Vec::new() } else { self.conditions(host, desired).await };
        StepReport { step, actions, error, details }
    }
}

/// The ordered list of steps.
#[derive(Default)]
pub struct Reconciler {
    steps: Vec<Box<dyn DynStep>>,
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler").field("steps", &self.steps.len()).finish()
    }
}

impl Reconciler {
    pub fn with_step(mut self, step: impl Step + 'static) -> Self {
        self.steps.push(Box::new(step));
        self
    }

    /// One pass over every step, in order. A step whose dependency failed (or
    /// was itself held up) does not run; it reports which one it waits for.
    pub async fn reconcile(&self, host: &Host, desired: &Desired, dry_run: bool) -> Report {
        let mut steps: Vec<StepReport> = Vec::new();
        for step in &self.steps {
            let blocked_by = step
                .depends_on()
                .iter()
                .find(|dep| steps.iter().any(|s| s.step == **dep && s.error.is_some()));
            let report = match blocked_by {
                Some(dep) => StepReport {
                    step: step.name(),
                    actions: vec![],
                    error: Some(format!("not run: it needs {dep}, which failed in this pass")),
                    details: vec![],
                },
                None => step.run(host, desired, dry_run).await,
            };
            steps.push(report);
        }
        Report { generation: desired.generation, steps }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use elysium_host::FakeSystemd;

    use super::*;

    /// A step managing one file whose content is the cluster name: enough to check
    /// the observe → plan → apply contract and idempotence.
    struct MotdStep;

    #[derive(Debug)]
    enum MotdAction {
        Write(String),
    }

    impl fmt::Display for MotdAction {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let MotdAction::Write(s) = self;
            write!(f, "write /etc/motd = {s:?}")
        }
    }

    impl Step for MotdStep {
        type Observed = Option<String>;
        type Action = MotdAction;
        type Error = elysium_host::FsError;
        fn name(&self) -> &'static str {
            "motd"
        }
        async fn observe(&self, host: &Host, _: &Desired) -> Result<Option<String>, Self::Error> {
            host.fs.read_optional("/etc/motd").map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
        }
        fn plan(&self, desired: &Desired, observed: &Option<String>) -> Vec<MotdAction> {
            let want = desired.spec.cluster.name.clone();
            if observed.as_deref() == Some(want.as_str()) { vec![] } else { vec![MotdAction::Write(want)] }
        }
        async fn apply(&self, host: &Host, action: &MotdAction) -> Result<(), Self::Error> {
            let MotdAction::Write(s) = action;
            host.fs.write_atomic("/etc/motd", s.as_bytes(), 0o644)
        }
    }

    fn host(dir: &std::path::Path) -> Host {
        let fs = elysium_host::RootFs::new(dir);
        Host::with_root(dir, Arc::new(FakeSystemd::new(fs)))
    }

    fn desired(name: &str) -> Desired {
        let held = HeldSpec {
            generation: 3,
            cluster_spec_toml: format!("[cluster]\nname = \"{name}\"\n"),
            role: NodeRole::Agent,
            labels: Default::default(),
            k3s: None,
            secrets: Default::default(),
        };
        Desired::from_held(&held).unwrap()
    }

    #[tokio::test]
    async fn plans_applies_then_converges() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path());
        let r = Reconciler::default().with_step(MotdStep);
        let dry = r.reconcile(&host, &desired("kyrion"), true).await;
        assert_eq!(dry.steps[0].actions, ["write /etc/motd = \"kyrion\""]);
        assert!(!host.fs.exists("/etc/motd"), "dry run must not change the node");
        let first = r.reconcile(&host, &desired("kyrion"), false).await;
        assert!(first.ok());
        assert_eq!(host.fs.read_to_string("/etc/motd").unwrap(), "kyrion");
        let second = r.reconcile(&host, &desired("kyrion"), false).await;
        assert!(second.steps[0].actions.is_empty(), "a converged node needs no action");
        let conditions = second.conditions(&[], 100);
        assert_eq!((conditions[0].r#type.as_str(), conditions[0].status.as_str()), ("motd", "True"));
        // `since` survives while the status holds.
        assert_eq!(second.conditions(&conditions, 200)[0].since_unix, 100);
    }

    #[tokio::test]
    async fn an_empty_reconciler_is_converged() {
        let dir = tempfile::tempdir().unwrap();
        let report = Reconciler::default().reconcile(&host(dir.path()), &desired("x"), false).await;
        assert!(report.ok() && report.steps.is_empty());
    }

    #[test]
    fn a_spec_for_a_newer_agent_is_an_error() {
        let held = HeldSpec {
            generation: 1,
            cluster_spec_toml: "[future]\n".into(),
            role: NodeRole::Agent,
            labels: Default::default(),
            k3s: None,
            secrets: Default::default(),
        };
        assert!(Desired::from_held(&held).is_err());
    }
}
