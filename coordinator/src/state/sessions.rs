//! The registry of open node sessions: who is online now, how to end a session,
//! and each session's outbound queue, through which commands (drain, uncordon)
//! reach a node.
//!
//! Owns only the in-memory registry. Does not own running a session (the
//! `NodeSession` service) nor deciding what to send (the services, the rollout
//! driver).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use elysium_proto::v1 as pb;
use tokio::sync::Notify;

/// What the coordinator knows about a node that has a session open now.
#[derive(Debug)]
pub(crate) struct LiveSession {
    /// Distinguishes this session from a newer one of the same node.
    pub session_id: u64,
    /// Notified to end the session (node removed, replaced by a newer session).
    pub end: Arc<Notify>,
    pub last_seen_unix: i64,
    /// The session's outbound queue, for commands (drain, uncordon).
    pub commands: Outbound,
}

/// A session's outbound queue (specs, heartbeat acknowledgements, commands).
///
/// Messages are boxed because tokio's mpsc allocates its slots 32 at a time: an
/// unboxed `Result<CoordinatorMessage, Status>` is 232 bytes, so every session
/// held a 7,456-byte block for messages that pass one or two at a time (36 MiB
/// with 5,000 sessions, in a live-heap histogram; docs/BENCHMARKS-fleet.md).
/// Boxed, the block is 288 bytes, for one small allocation per message.
#[derive(Debug, Clone)]
pub(crate) struct Outbound(tokio::sync::mpsc::Sender<OutboundMessage>);

pub(crate) type OutboundMessage = Box<Result<pb::CoordinatorMessage, tonic::Status>>;

impl Outbound {
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<OutboundMessage>) -> Self {
        Self(tx)
    }

    pub(crate) fn try_send(
        &self,
        msg: Result<pb::CoordinatorMessage, tonic::Status>,
    ) -> Result<(), tokio::sync::mpsc::error::TrySendError<OutboundMessage>> {
        self.0.try_send(Box::new(msg))
    }

    /// Boxes the message before the future is made: an `async fn` would hold
    /// it unboxed (~300 bytes) in every awaiting session's task.
    pub(crate) fn send(
        &self,
        msg: Result<pb::CoordinatorMessage, tonic::Status>,
    ) -> impl std::future::Future<Output = Result<(), tokio::sync::mpsc::error::SendError<OutboundMessage>>> + '_
    {
        self.0.send(Box::new(msg))
    }
}

/// Node id → its open session.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, LiveSession>>,
    next_id: AtomicU64,
}

impl Sessions {
    /// The open sessions. Held briefly: every session's messages take this lock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, LiveSession>> {
        // The map stays consistent whatever a panicking holder did: each change
        // is one insert or remove.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session id no other session of this coordinator has had.
    pub(crate) fn next_id(&self) -> u64 {
        // Starts at 1, as before the registry had its own module.
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}
