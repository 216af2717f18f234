//! `Enrollment.Enroll`: a node with a valid token trades its CSR for a certificate.

use std::collections::BTreeMap;
use std::sync::Arc;

use elysium_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::status::{blocking, internal};
use crate::convert;
use crate::pki;
use crate::state::Coordinator;
use crate::store::{EnrollRefusal, NodeRecord};
use crate::tokens::{JoinToken, TokenRejection};

/// Largest CSR we accept. A P-256 or RSA-4096 CSR is well under this.
const MAX_CSR_BYTES: usize = 8 * 1024;

pub(crate) struct EnrollmentService {
    coordinator: Arc<Coordinator>,
}

impl EnrollmentService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

/// Kubernetes node names are DNS subdomains (RFC 1123): lowercase alphanumerics,
/// `-` and `.`, at most 253 characters.
pub(crate) fn validate_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name {name:?} is not a valid Kubernetes node name (lowercase letters, digits, '-' and '.'); choose one with --name"
        ))
    }
}

fn rejection_status(r: TokenRejection) -> Status {
    match r {
        TokenRejection::Unknown => Status::unauthenticated(r.to_string()),
        _ => Status::permission_denied(r.to_string()),
    }
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    #[tracing::instrument(skip_all, fields(node))]
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let c = &self.coordinator;
        let req = request.into_inner();
        let token = JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if token.ca_fingerprint != c.ca.fingerprint() {
            return Err(Status::failed_precondition(
                "the join token was issued by another coordinator (its CA fingerprint is not this coordinator's)",
            ));
        }
        let inventory = req.inventory.unwrap_or_default();
        let name =
            if req.requested_name.is_empty() { inventory.hostname.clone() } else { req.requested_name };
        validate_node_name(&name).map_err(Status::invalid_argument)?;
        tracing::Span::current().record("node", name.as_str());
        if req.csr_der.is_empty() || req.csr_der.len() > MAX_CSR_BYTES {
            return Err(Status::invalid_argument(format!(
                "the CSR must be 1..={MAX_CSR_BYTES} bytes of DER"
            )));
        }

        let node_id = format!("n-{}", hex::encode(rand::random::<[u8; 8]>()));
        let (cert_pem, cert_der) =
            c.ca.sign_node_csr(&req.csr_der, &node_id)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = c.now();
        let node = NodeRecord {
            id: node_id,
            name: name.clone(),
            role: Default::default(),
            labels: BTreeMap::new(),
            inventory: convert::inventory_from_pb(inventory),
            enrolled_unix: now,
            last_seen_unix: now,
            agent_version: String::new(),
            applied_generation: 0,
            reconcile_state: String::new(),
            reconcile_error: String::new(),
            certificate_sha256: pki::fingerprint(&cert_der),
            token_id: token.id.clone(),
            conditions: Vec::new(),
            // Stored apart by the store, which also sets the hash.
            hardware_json: req.hardware_json,
            hardware_sha256: String::new(),
            k3s_version: String::new(),
            k3s_failed_version: String::new(),
            k3s_failure: String::new(),
            pending_certificate_sha256: String::new(),
            certificate_not_after_unix: pki::validity(&cert_der).map(|v| v.not_after_unix).unwrap_or(0),
        };

        // The token decides the role and labels; the store applies them in the same
        // transaction that consumes the token.
        let store = c.store.clone();
        let result = blocking(move || {
            let check = |rec: &crate::tokens::TokenRecord| rec.check(&token, now);
            store.enroll(&token.id, &check, &node)
        })
        .await?;
        let (token_rec, node) = match result {
            Ok(stored) => stored,
            Err(EnrollRefusal::Token(r)) => {
                tracing::info!(reason = %r, "enrollment refused");
                return Err(rejection_status(r));
            }
            Err(EnrollRefusal::NameTaken(n)) => {
                return Err(Status::already_exists(EnrollRefusal::NameTaken(n).to_string()));
            }
            Err(EnrollRefusal::Store(e)) => return Err(internal(e)),
        };
        c.event("node.enrolled", &name, &format!("role {} with token {}", node.role.as_str(), token_rec.id));
        let claim = {
            let (c, node) = (c.clone(), node.clone());
            blocking(move || c.claim_first_server(&node)).await?
        };
        claim.map_err(internal)?;
        let spec = c.cluster.borrow().node_spec(&node);
        Ok(Response::new(pb::EnrollResponse {
            node_id: node.id.clone(),
            node_name: name,
            certificate_pem: cert_pem,
            ca_certificate_pem: c.ca.cert_pem().to_owned(),
            spec: Some(spec),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use elysium_host::FakeClock;
    use elysium_proto::v1::enrollment_server::Enrollment as _;
    use tonic::Code;

    use super::*;
    use crate::pki::Ca;
    use crate::store::RedbStore;
    use crate::tokens::Role;
    use crate::vault::VaultKey;

    /// A CSR as a joining node makes one (the coordinator reads only its key).
    fn csr_der() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec()
    }

    fn request(token: &JoinToken, name: &str) -> Request<pb::EnrollRequest> {
        Request::new(pb::EnrollRequest {
            token: token.expose(),
            csr_der: csr_der(),
            requested_name: name.into(),
            ..Default::default()
        })
    }

    /// Expiry is decided by the coordinator's clock, not the machine's: moved
    /// past a token's lifetime, the clock makes the coordinator refuse it. With
    /// the system clock both tokens would still be fresh.
    #[tokio::test]
    async fn a_token_expires_by_the_coordinators_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&tmp.path().join("state.redb")).unwrap();
        let (ca, _) = Ca::generate("test").unwrap();
        let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let clock = FakeClock::new(issued_at);
        let c = Coordinator::new(Arc::new(store), ca, VaultKey::generate(), Arc::new(clock.clone())).unwrap();
        let service = EnrollmentService::new(c.clone());
        let (first, _) = c.issue_token(60, 1, Role::Agent, BTreeMap::new()).unwrap();
        let (second, record) = c.issue_token(60, 1, Role::Agent, BTreeMap::new()).unwrap();
        assert_eq!(record.expires_unix, 1_900_000_060);

        clock.advance(Duration::from_secs(59));
        service.enroll(request(&first, "node1")).await.expect("a token within its lifetime enrolls");

        clock.advance(Duration::from_secs(2));
        let refused = service.enroll(request(&second, "node2")).await.expect_err("the token has expired");
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("expired 1 s ago"), "{}", refused.message());
    }

    #[test]
    fn node_names() {
        for good in ["node1", "rack-2.lab", "a"] {
            assert!(validate_node_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Node1", "-x", "a..b", "under_score", &"x".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }
}
