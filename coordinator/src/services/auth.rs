//! Who is calling: the identity in the caller's client certificate, and the
//! checks each service makes of it.
//!
//! TLS has already verified the certificate against the coordinator's CA; this
//! reads what it names ([`pki::identify`]) and refuses the wrong kind. Admin
//! certificates must also be registered and not revoked ([`AdminGate`]): a
//! certificate the CA once signed is not enough.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::pki::{self, PeerIdentity};
use crate::state::{AdminCheck, Coordinator};

/// The identity in the caller's client certificate, which TLS has already
/// verified against our CA, and the certificate's fingerprint.
fn peer_identity<T>(request: &Request<T>) -> Result<(PeerIdentity, String), Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate issued by this coordinator is required")
    })?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
    let identity = pki::identify(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
    Ok((identity, pki::fingerprint(leaf)))
}

/// The admin a request was checked for, put on the request by [`AdminGate`].
#[derive(Debug, Clone)]
struct CheckedAdmin(String);

/// Checks every request to the Admin service, before the method runs: the
/// caller's certificate must be an admin certificate whose fingerprint is
/// registered and not revoked. Per request, not per connection, so a revoked
/// admin's next call is refused also on a channel opened before the revocation.
/// One gate in front of the whole service: a new RPC cannot forget the check.
#[derive(Clone)]
pub(crate) struct AdminGate {
    coordinator: Arc<Coordinator>,
}

impl AdminGate {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

impl tonic::service::Interceptor for AdminGate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let name = check_admin(&self.coordinator, &request)?;
        request.extensions_mut().insert(CheckedAdmin(name));
        Ok(request)
    }
}

fn check_admin<T>(coordinator: &Coordinator, request: &Request<T>) -> Result<String, Status> {
    let (identity, fingerprint) = peer_identity(request)?;
    let PeerIdentity::Admin(name) = identity else {
        return Err(Status::permission_denied(
            "the Admin service needs an admin certificate; node certificates may not call it",
        ));
    };
    match coordinator.admin_check(&fingerprint) {
        AdminCheck::Valid(registered) => Ok(registered),
        AdminCheck::Revoked(admin) => {
            tracing::warn!(admin = %admin.name, fingerprint = %admin.fingerprint, "refused a revoked admin certificate");
            Err(Status::unauthenticated(format!(
                "the admin credentials of {:?} (certificate {}) were revoked at {}; ask another admin for new ones (`elysium-node coordinator admin create NAME --out FILE`)",
                admin.name,
                short(&admin.fingerprint),
                unix_to_rfc3339(admin.revoked_unix)
            )))
        }
        AdminCheck::Unknown => {
            tracing::warn!(admin = %name, %fingerprint, "refused an admin certificate that is not registered");
            Err(Status::unauthenticated(format!(
                "the admin certificate of {name:?} (certificate {}) is not registered with this coordinator; see `elysium-node coordinator admin list`, or create credentials with `coordinator admin create`",
                short(&fingerprint)
            )))
        }
    }
}

/// The first 16 hex digits: enough to tell certificates apart in a message.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

fn unix_to_rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

/// The admin name of a request that passed [`AdminGate`]. Fails closed: a request
/// that did not pass the gate (a service mounted without it) is refused.
pub(crate) fn require_admin<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<CheckedAdmin>()
        .map(|a| a.0.clone())
        .ok_or_else(|| Status::unauthenticated("the Admin service needs a registered admin certificate"))
}

pub(crate) fn require_node<T>(request: &Request<T>) -> Result<String, Status> {
    match peer_identity(request)?.0 {
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
