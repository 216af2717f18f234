//! Who is calling: the identity in the caller's client certificate, and the
//! checks each service makes of it.
//!
//! TLS has already verified the certificate against the coordinator's CA; this
//! only reads what it names ([`pki::identify`]) and refuses the wrong kind.

use tonic::{Request, Status};

use crate::pki::{self, PeerIdentity};

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

/// The leaf certificate the caller presented (DER), which TLS verified.
pub(crate) fn presented_leaf<T>(request: &Request<T>) -> Result<Vec<u8>, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate issued by this coordinator is required")
    })?;
    certs
        .first()
        .map(|c| c.to_vec())
        .ok_or_else(|| Status::unauthenticated("no client certificate presented"))
}
