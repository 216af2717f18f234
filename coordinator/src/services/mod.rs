//! The three gRPC services of `elysium.v1` and the rules for who may call them.

mod admin;
mod enrollment;
mod session;

pub(crate) use admin::AdminService;
pub(crate) use enrollment::EnrollmentService;
pub(crate) use session::SessionService;

use tonic::{Request, Status};

use crate::pki::{self, PeerIdentity};
use crate::store::StoreError;

/// The identity in the caller's client certificate, which TLS has already
/// verified against our CA.
fn peer_identity<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate issued by this coordinator is required")
    })?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
    pki::identify(leaf).map_err(|e| Status::unauthenticated(e.to_string()))
}

pub(crate) fn require_admin<T>(request: &Request<T>) -> Result<String, Status> {
    match peer_identity(request)? {
        PeerIdentity::Admin(name) => Ok(name),
        PeerIdentity::Node(_) => Err(Status::permission_denied(
            "the Admin service needs the admin certificate; node certificates may not call it",
        )),
    }
}

pub(crate) fn require_node<T>(request: &Request<T>) -> Result<String, Status> {
    match peer_identity(request)? {
        PeerIdentity::Node(id) => Ok(id),
        PeerIdentity::Admin(_) => Err(Status::permission_denied("node sessions need a node certificate")),
    }
}

/// Store failures are our problem, not the caller's: log the detail, say little.
pub(crate) fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store failure");
    Status::internal("the coordinator's state store failed; see the coordinator log")
}

/// Runs a blocking store operation off the async workers (redb commits fsync).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|_| Status::internal("a store task panicked"))
}

/// [`blocking`] for a store call outside a request (no `Status` to return).
pub(crate) async fn blocking_store<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(StoreError::Thread("a store task panicked".into())))
}
