//! The event log's writer: events go to a thread that appends them to the store
//! in batches.
//!
//! Appending is a durable store commit, which must not block the async workers,
//! and batching many into one commit keeps up with bursts (a thousand nodes
//! enrolling). Owns the queue and the thread; does not own what an event says
//! (its callers) nor reading the log (the `Admin` service, from the store).
//!
//! The queue is bounded: nodes cause events, and a queue that grows while the
//! store is slow (or a node floods) would take the coordinator's memory. When it
//! is full an event is dropped, never waited for (a session must not stall on
//! the log); the drops are counted, warned about once, and recorded as one
//! `events.dropped` event when the writer has caught up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::store::{NewEvent, Store, StoreError};

/// Most events written in one commit.
const BATCH: usize = 1000;
/// Events queued for the writer at most (each message is at most
/// `MAX_EVENT_MESSAGE_BYTES`, so this is a few MiB at worst).
pub(crate) const QUEUE: usize = 4096;

/// Events dropped since the last `events.dropped` record, and whether that
/// stretch was warned about.
#[derive(Debug, Default)]
struct Drops {
    count: AtomicU64,
    warned: AtomicBool,
    /// Every event ever dropped (for tests and the operator's logs).
    total: AtomicU64,
}

/// The running writer. Dropping it writes the events still queued, then returns.
#[derive(Debug)]
pub(crate) struct EventLog {
    /// `None` only while dropping: closing it ends the writer's loop.
    queue: Option<mpsc::SyncSender<NewEvent>>,
    writer: Option<JoinHandle<()>>,
    drops: Arc<Drops>,
}

impl EventLog {
    /// Starts the writer thread over `store`.
    pub(crate) fn start(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<NewEvent>(QUEUE);
        let drops = Arc::new(Drops::default());
        let counted = drops.clone();
        let writer = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(BATCH));
                    let dropped = counted.count.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let unix = batch.last().map_or(0, |e| e.unix);
                        batch.push(NewEvent {
                            unix,
                            kind: "events.dropped".into(),
                            subject: "coordinator".into(),
                            message: format!(
                                "{dropped} events were dropped: more arrived than the log could write                                  (queue of {QUEUE}); see the coordinator's journal"
                            ),
                        });
                        counted.warned.store(false, Ordering::Relaxed);
                    }
                    if let Err(e) = store.append_events(&batch) {
                        tracing::warn!(error = %e, lost = batch.len(), "could not record events");
                    }
                }
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Self { queue: Some(tx), writer: Some(writer), drops })
    }

    /// Queues `event`; never blocks on the store. Drops it when the queue is full.
    pub(crate) fn append(&self, event: NewEvent) {
        let Some(tx) = &self.queue else { return };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(event)) => {
                self.drops.count.fetch_add(1, Ordering::Relaxed);
                self.drops.total.fetch_add(1, Ordering::Relaxed);
                if !self.drops.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        queue = QUEUE,
                        kind = %event.kind,
                        subject = %event.subject,
                        "the event log is behind; dropping events until it catches up (counted in an events.dropped event)"
                    );
                }
            }
            // Only once the writer is gone, at shutdown.
            Err(mpsc::TrySendError::Disconnected(_)) => {}
        }
    }

    /// Events dropped for a full queue since the coordinator started.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.drops.total.load(Ordering::Relaxed)
    }
}

impl Drop for EventLog {
    /// Writes the events still queued before the store closes.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}
