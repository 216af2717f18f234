//! `Enrollment.Enroll`: a node with a valid token trades its CSR for a certificate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use elysium_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::enroll_limit::{EnrollLimits, FailureLimiter};
use super::status::{blocking, internal};
use crate::convert;
use crate::pki::{self, NodeCsr};
use crate::state::Coordinator;
use crate::store::{EnrollRefusal, Enrolled, NodeRecord, SignedCertificate};
use crate::tokens::{JoinToken, TokenRejection};

/// Largest CSR we accept. A P-256 or RSA-4096 CSR is well under this.
const MAX_CSR_BYTES: usize = 8 * 1024;

pub(crate) struct EnrollmentService {
    coordinator: Arc<Coordinator>,
    failures: FailureLimiter,
}

impl EnrollmentService {
    #[cfg(test)]
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self::with_limits(coordinator, EnrollLimits::default())
    }

    pub fn with_limits(coordinator: Arc<Coordinator>, limits: EnrollLimits) -> Self {
        Self { coordinator, failures: FailureLimiter::new(limits) }
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

/// Metadata key of the seconds a rate-limited caller should wait.
const RETRY_AFTER: &str = "retry-after";

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    #[tracing::instrument(skip_all, fields(node))]
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        // Unknown only for in-process callers without a socket (unit tests).
        let source = request.remote_addr().map(|a| a.ip());
        if let Some(ip) = source
            && let Err(wait) = self.failures.check(ip, Instant::now())
        {
            return Err(limited(wait));
        }
        let result = self.enroll_checked(request.into_inner()).await;
        if let (Err(refusal), Some(ip)) = (&result, source)
            && counts_as_failure(refusal)
        {
            self.failures.failed(ip, Instant::now());
        }
        result.map(Response::new)
    }
}

/// A limited caller is told when to try again, in the message for people and in
/// the `retry-after` metadata (whole seconds) for programs.
fn limited(wait: Duration) -> Status {
    // Rounded up: retrying on the hint must not be refused again.
    let seconds = (wait.as_secs_f64().ceil() as u64).max(1);
    let mut status = Status::resource_exhausted(format!(
        "too many failed enrollments from this address; retry in {seconds} s with a valid token"
    ));
    if let Ok(v) = seconds.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER, v);
    }
    status
}

/// Refusals a guessing caller provokes; a taken name or an internal error is
/// not the caller guessing.
fn counts_as_failure(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::FailedPrecondition
    )
}

impl EnrollmentService {
    /// The enrollment, cheapest checks first: the token's form and CA, the
    /// name, then the token in a read transaction (no write lock for an unknown
    /// id), then the CSR's self-signature; the CA signs last, inside the
    /// transaction that consumes the token, so a refused token costs no
    /// signature.
    async fn enroll_checked(&self, req: pb::EnrollRequest) -> Result<pb::EnrollResponse, Status> {
        let c = &self.coordinator;
        let token = JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A token made before a CA rotation pins the previous CA, which is
        // trusted (and presented to joiners) until the rotation finishes.
        if token.ca_fingerprint != c.ca().fingerprint() && !c.pins_previous_ca(&token.ca_fingerprint) {
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
        let now = c.now();

        // A read transaction, on this worker: it takes no lock a writer holds
        // and does not fsync, so a flood of unknown ids neither queues behind
        // enrollments nor fills the blocking pool.
        let known = c.store.get_token(&token.id).map_err(internal)?;
        let refused = |r: TokenRejection| {
            tracing::info!(reason = %r, "enrollment refused");
            rejection_status(r)
        };
        let Some(record) = known else { return Err(refused(TokenRejection::Unknown)) };
        record.check_life(&token, now).map_err(refused)?;
        let csr = NodeCsr::parse(&req.csr_der).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Err(used_up) = record.check(&token, now) {
            // Spent, unless this key enrolled with it before and is asking again.
            if c.store.node_by_key(csr.key_sha256()).map_err(internal)?.is_none() {
                return Err(refused(used_up));
            }
        }

        let node = NodeRecord {
            id: format!("n-{}", hex::encode(rand::random::<[u8; 8]>())),
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
            // Set by the store from the certificate it has signed.
            certificate_sha256: String::new(),
            token_id: token.id.clone(),
            conditions: Vec::new(),
            // Stored apart by the store, which also sets the hash.
            hardware_json: req.hardware_json,
            hardware_sha256: String::new(),
            k3s_version: String::new(),
            k3s_failed_version: String::new(),
            k3s_failure: String::new(),
            pending_certificate_sha256: String::new(),
            // Set by the store too, with the fingerprint.
            certificate_not_after_unix: 0,
            certificate_issuer: String::new(),
        };

        // The token decides the role and labels; the store applies them in the same
        // transaction that consumes the token.
        let c2 = c.clone();
        let result = blocking(move || {
            let sign = |node_id: &str| {
                let (pem, der) =
                    c2.ca().sign_node(&csr, node_id).map_err(|e| EnrollRefusal::Sign(e.to_string()))?;
                let not_after_unix = pki::validity(&der).map(|v| v.not_after_unix).unwrap_or(0);
                let issuer = pki::issuer_text(&der).unwrap_or_default();
                Ok(SignedCertificate { pem, sha256: pki::fingerprint(&der), not_after_unix, issuer })
            };
            c2.store.enroll(&token, now, csr.key_sha256(), &node, &sign)
        })
        .await?;
        let Enrolled { token: token_rec, node, certificate_pem, repeated } = match result {
            Ok(stored) => stored,
            Err(EnrollRefusal::Token(r)) => return Err(refused(r)),
            Err(e @ (EnrollRefusal::NameTaken(_) | EnrollRefusal::KeyEnrolled(_))) => {
                return Err(Status::already_exists(e.to_string()));
            }
            Err(EnrollRefusal::Sign(e)) => return Err(Status::internal(e)),
            Err(EnrollRefusal::Store(e)) => return Err(internal(e)),
        };
        if repeated {
            tracing::info!(node = %node.name, "enrollment repeated with the same key: certificate issued again");
            c.event(
                "node.reenrolled",
                &node.name,
                &format!("same key and token {} (the reply was lost)", token_rec.id),
            );
        } else {
            c.event(
                "node.enrolled",
                &name,
                &format!("role {} with token {}", node.role.as_str(), token_rec.id),
            );
        }
        let claim = {
            let (c, node) = (c.clone(), node.clone());
            blocking(move || c.claim_first_server(&node)).await?
        };
        claim.map_err(internal)?;
        let spec = c.cluster.borrow().node_spec(&node);
        Ok(pb::EnrollResponse {
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            certificate_pem,
            ca_certificate_pem: c.trust_bundle(),
            spec: Some(spec),
        })
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

    fn coordinator() -> (tempfile::TempDir, Arc<Coordinator>) {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&tmp.path().join("state.redb")).unwrap();
        let (ca, _) = Ca::generate("test").unwrap();
        let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000));
        let c = Coordinator::new(Arc::new(store), ca, VaultKey::generate(), Arc::new(clock)).unwrap();
        (tmp, c)
    }

    fn from(mut request: Request<pb::EnrollRequest>, ip: &str) -> Request<pb::EnrollRequest> {
        let remote_addr = Some(std::net::SocketAddr::new(ip.parse().unwrap(), 40_000));
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr });
        request
    }

    /// Every refusal comes before the CA signs: an unknown id, a wrong secret,
    /// a spent token with another key, a taken name. Only the enrollment that
    /// succeeds costs a signature.
    #[tokio::test]
    async fn refusals_cost_no_signature() {
        let (_tmp, c) = coordinator();
        let service = EnrollmentService::new(c.clone());
        let (token, _) = c.issue_token(60, 1, Role::Agent, BTreeMap::new()).unwrap();
        let unknown = JoinToken::generate(&c.ca().fingerprint());
        let refused = service.enroll(request(&unknown, "node1")).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        let other = JoinToken::generate(&c.ca().fingerprint());
        let forged = JoinToken::parse(&other.expose().replace(&other.id, &token.id)).unwrap();
        assert_eq!(
            service.enroll(request(&forged, "node1")).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(c.ca().signatures(), 0);

        service.enroll(request(&token, "node1")).await.expect("enrolls");
        assert_eq!(c.ca().signatures(), 1);
        let spent = service.enroll(request(&token, "node2")).await.unwrap_err();
        assert_eq!(spent.code(), Code::PermissionDenied, "{}", spent.message());
        let (fresh, _) = c.issue_token(60, 1, Role::Agent, BTreeMap::new()).unwrap();
        let taken = service.enroll(request(&fresh, "node1")).await.unwrap_err();
        assert_eq!(taken.code(), Code::AlreadyExists);
        assert_eq!(c.ca().signatures(), 1);
    }

    /// Failures from one address use up its burst; then it is told to wait,
    /// before its token is even looked at. Other addresses are not affected.
    #[tokio::test]
    async fn failures_are_limited_per_source() {
        let (_tmp, c) = coordinator();
        let limits = EnrollLimits { burst: 2, per_second: 0.5, max_sources: 16 };
        let service = EnrollmentService::with_limits(c.clone(), limits);
        let unknown = JoinToken::generate(&c.ca().fingerprint());
        for _ in 0..2 {
            let r = service.enroll(from(request(&unknown, "node1"), "10.0.0.1")).await.unwrap_err();
            assert_eq!(r.code(), Code::Unauthenticated);
        }
        let (token, _) = c.issue_token(60, 1, Role::Agent, BTreeMap::new()).unwrap();
        let limited = service.enroll(from(request(&token, "node1"), "10.0.0.1")).await.unwrap_err();
        assert_eq!(limited.code(), Code::ResourceExhausted);
        assert!(limited.message().contains("retry in 2 s"), "{}", limited.message());
        assert_eq!(limited.metadata().get("retry-after").unwrap(), "2");
        service.enroll(from(request(&token, "node1"), "10.0.0.2")).await.expect("another source enrolls");
        assert_eq!(c.ca().signatures(), 1);
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
