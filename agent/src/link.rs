//! How reconciler steps tell the coordinator things while they work: progress of
//! long operations (best effort: dropped when the queue is full), operation
//! results (queued until a session sends them, one per operation, never dropped
//! for progress) and facts the coordinator keeps (level-triggered: the latest
//! value is sent on every new session, so a reconnect never loses it); and, the
//! other way, the spec the node holds, parsed once, for whoever needs it (the
//! sealing-key watch subscribes instead of reading `spec.json`).

use std::sync::Arc;

use elysium_proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::held::Held;
use crate::sealing_keys::KeySet;

/// Progress messages queued before old ones are dropped.
const PROGRESS_QUEUE: usize = 64;

/// The steps' end.
#[derive(Debug, Clone)]
pub struct StepLink {
    progress: mpsc::Sender<pb::AgentMessage>,
    results: mpsc::UnboundedSender<pb::AgentMessage>,
    k3s: Arc<watch::Sender<Option<pb::K3sReport>>>,
    /// The sealed-secrets keys a server sees (`crate::vault`), level-triggered.
    keys: Arc<watch::Sender<KeySet>>,
    /// The held spec; the agent service sends, anyone subscribes.
    spec: Arc<watch::Sender<Option<Arc<Held>>>>,
}

/// The session's end.
#[derive(Debug)]
pub struct SessionLink {
    pub(crate) progress: mpsc::Receiver<pb::AgentMessage>,
    pub(crate) results: mpsc::UnboundedReceiver<pb::AgentMessage>,
    pub(crate) k3s: watch::Receiver<Option<pb::K3sReport>>,
    pub(crate) keys: watch::Receiver<KeySet>,
    /// For work the session starts itself (cluster commands), and to put back a
    /// result a closing session could not send.
    steps: StepLink,
}

pub fn link() -> (StepLink, SessionLink) {
    let (ptx, prx) = mpsc::channel(PROGRESS_QUEUE);
    let (rtx, rrx) = mpsc::unbounded_channel();
    let (ktx, krx) = watch::channel(None);
    let (vtx, vrx) = watch::channel(Default::default());
    let (spec, _) = watch::channel(None);
    let steps = StepLink {
        progress: ptx,
        results: rtx,
        k3s: Arc::new(ktx),
        keys: Arc::new(vtx),
        spec: Arc::new(spec),
    };
    (steps.clone(), SessionLink { progress: prx, results: rrx, k3s: krx, keys: vrx, steps })
}

impl SessionLink {
    pub(crate) fn step_link(&self) -> StepLink {
        self.steps.clone()
    }

    /// Where the agent service publishes the held spec.
    pub(crate) fn spec_sender(&self) -> Arc<watch::Sender<Option<Arc<Held>>>> {
        self.steps.spec.clone()
    }

    /// Queues a result again; the next session sends it.
    pub(crate) fn requeue(&self, result: pb::AgentMessage) {
        let _ = self.steps.results.send(result);
    }
}

impl StepLink {
    /// Reports progress of `operation`; `percent` -1 when unknown.
    pub fn progress(&self, operation: &str, step: &str, message: String, percent: i32) {
        let msg = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Progress(pb::OperationProgress {
                operation_id: operation.to_owned(),
                step: step.to_owned(),
                message,
                percent,
            })),
        };
        let _ = self.progress.try_send(msg);
    }

    /// Reports an operation's outcome; kept until a session sends it.
    pub fn result(&self, operation: &str, success: bool, message: String, generation: u64) {
        let msg = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Result(pb::OperationResult {
                operation_id: operation.to_owned(),
                success,
                message,
                generation,
            })),
        };
        let _ = self.results.send(msg);
    }

    /// Publishes what this node's K3s reports (the first server's token).
    pub fn report_k3s(&self, report: pb::K3sReport) {
        self.k3s.send_if_modified(|current| {
            if current.as_ref() == Some(&report) {
                false
            } else {
                *current = Some(report);
                true
            }
        });
    }

    /// Changes the set of sealing keys with `f`, which says whether it changed
    /// anything; sessions send what changed. Returns `f`'s answer.
    pub fn publish_sealing_keys(&self, f: impl FnOnce(&mut KeySet) -> bool) -> bool {
        self.keys.send_if_modified(f)
    }

    /// The held spec, now and whenever it changes (`None` until there is one).
    pub fn subscribe_spec(&self) -> watch::Receiver<Option<Arc<Held>>> {
        self.spec.subscribe()
    }
}
