//! The event log's writer: events go to a thread that appends them to the store
//! in batches.
//!
//! Appending is a durable store commit, which must not block the async workers,
//! and batching many into one commit keeps up with bursts (a thousand nodes
//! enrolling). Owns the queue and the thread; does not own what an event says
//! (its callers) nor reading the log (the `Admin` service, from the store).

use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::store::{NewEvent, Store, StoreError};

/// Most events written in one commit.
const BATCH: usize = 1000;

/// The running writer. Dropping it writes the events still queued, then returns.
#[derive(Debug)]
pub(crate) struct EventLog {
    /// `None` only while dropping: closing it ends the writer's loop.
    queue: Option<mpsc::Sender<NewEvent>>,
    writer: Option<JoinHandle<()>>,
}

impl EventLog {
    /// Starts the writer thread over `store`.
    pub(crate) fn start(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<NewEvent>();
        let writer = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(BATCH));
                    if let Err(e) = store.append_events(&batch) {
                        tracing::warn!(error = %e, lost = batch.len(), "could not record events");
                    }
                }
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Self { queue: Some(tx), writer: Some(writer) })
    }

    /// Queues `event`; never blocks on the store.
    pub(crate) fn append(&self, event: NewEvent) {
        if let Some(tx) = &self.queue {
            // Only fails once the writer is gone, at shutdown.
            let _ = tx.send(event);
        }
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
