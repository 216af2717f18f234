//! Store calls from a request: run off the async workers, and a failure told to
//! the caller as a gRPC status that says little (the detail goes to the log).

use tonic::Status;

use crate::store::StoreError;

/// Store failures are our problem, not the caller's: log the detail, say little.
pub(crate) fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store failure");
    Status::internal("the coordinator's state store failed; see the coordinator log")
}

/// Runs a blocking store operation off the async workers (redb commits fsync).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|_| Status::internal("a store task panicked"))
}
