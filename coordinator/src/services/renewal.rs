//! Node certificates over the session: which certificate a node may open a
//! session with, when it is asked to renew, and the signing of its new one.
//!
//! A node record holds the fingerprint of the node's current certificate and, while
//! a renewal is under way, of the one issued to replace it. A session may open with
//! either; the first session opened with the pending one makes it current, and from
//! then on the old one is refused (so is any other certificate naming this node
//! id, e.g. one from before a re-enrollment or a renewal that was superseded).

use std::sync::Arc;

use elysium_proto::v1 as pb;
use tonic::Status;

use super::status::{blocking, internal};
use crate::pki;
use crate::state::Coordinator;
use crate::store::NodeRecord;

/// What to do with a session opened with a given certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The node's current certificate.
    Current,
    /// The renewed certificate: it becomes current, the old one is refused from now on.
    Promote,
    /// A record from before fingerprints were checked: take the certificate as current.
    Adopt,
    Refuse,
}

/// Decides on the certificate with fingerprint `presented` for `node`.
pub(crate) fn admission(node: &NodeRecord, presented: &str) -> Admission {
    if node.certificate_sha256.is_empty() {
        Admission::Adopt
    } else if presented == node.certificate_sha256 {
        Admission::Current
    } else if !node.pending_certificate_sha256.is_empty() && presented == node.pending_certificate_sha256 {
        Admission::Promote
    } else {
        Admission::Refuse
    }
}

/// Checks the session's certificate against the record and records a promotion
/// or adoption. The record is written before the session counts as open, so a
/// refused old certificate can never win a race with the new one.
pub(crate) async fn admit(c: &Arc<Coordinator>, node: &mut NodeRecord, leaf: &[u8]) -> Result<(), Status> {
    let presented = pki::fingerprint(leaf);
    let admission = admission(node, &presented);
    let not_after = pki::validity(leaf).map(|v| v.not_after_unix).unwrap_or(0);
    let issuer = pki::issuer_text(leaf).unwrap_or_default();
    match admission {
        // A record from before expiries and issuers were kept learns them now
        // (for `certs status` and a CA rotation's progress).
        Admission::Current
            if (node.certificate_not_after_unix == 0 && not_after != 0)
                || node.certificate_issuer != issuer =>
        {
            node.certificate_not_after_unix = not_after;
            node.certificate_issuer = issuer;
            let (store, n) = (c.store.clone(), node.clone());
            blocking(move || store.update_node(&n)).await?.map_err(internal)?;
            return Ok(());
        }
        Admission::Current => return Ok(()),
        Admission::Refuse => {
            tracing::warn!(node = %node.name, certificate = %presented, "refusing a session with a certificate that is not the node's current one");
            return Err(Status::permission_denied(format!(
                "this certificate ({presented}) is not node {}'s current certificate: it was replaced by a renewal or a new enrollment. If this node lost its newer certificate, join it again with a new token",
                node.name
            )));
        }
        Admission::Promote | Admission::Adopt => {}
    }
    let previous = std::mem::replace(&mut node.certificate_sha256, presented.clone());
    node.pending_certificate_sha256 = String::new();
    node.certificate_not_after_unix = not_after;
    node.certificate_issuer = issuer;
    let (store, n) = (c.store.clone(), node.clone());
    blocking(move || store.update_node(&n)).await?.map_err(internal)?;
    if admission == Admission::Promote {
        c.event(
            "certs.node_renewed",
            &node.name,
            &format!(
                "certificate {presented} in use (valid until {}); {previous} no longer accepted",
                pki::format_unix(node.certificate_not_after_unix)
            ),
        );
    }
    Ok(())
}

/// When the node holding `leaf` should be asked to renew, Unix seconds: once a
/// third of its lifetime remains, at once if it was not issued by the current CA.
pub(crate) fn renew_at(c: &Coordinator, leaf: &[u8]) -> i64 {
    let issued_by_current = c.ca().issued(leaf);
    match pki::validity(leaf) {
        Ok(v) if issued_by_current => pki::renew_after(v),
        Ok(_) => 0,
        Err(_) => i64::MAX,
    }
}

pub(crate) fn renew_message() -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::RenewCertificate(pb::RenewCertificate {})),
    }
}

/// Signs the node's CSR for its next certificate and records it as pending
/// (replacing any earlier pending one: only the latest is accepted). `None` when
/// the CSR is unusable or the record could not be written; the node is asked
/// again on its next session.
pub(crate) async fn sign(
    c: &Arc<Coordinator>,
    node: &mut NodeRecord,
    request: pb::CertificateRequest,
) -> Option<pb::CoordinatorMessage> {
    let (cc, id) = (c.clone(), node.id.clone());
    let signed = blocking(move || cc.ca().sign_node_csr(&request.csr_der, &id)).await;
    let (cert_pem, cert_der) = match signed {
        Ok(Ok(signed)) => signed,
        Ok(Err(e)) => {
            tracing::warn!(node = %node.name, error = %e, "refusing a certificate request");
            return None;
        }
        Err(status) => {
            tracing::warn!(node = %node.name, %status, "could not sign a certificate request");
            return None;
        }
    };
    let fingerprint = pki::fingerprint(&cert_der);
    node.pending_certificate_sha256 = fingerprint.clone();
    let (store, n) = (c.store.clone(), node.clone());
    match blocking(move || store.update_node(&n)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return None,
        Ok(Err(e)) => {
            tracing::warn!(node = %node.name, error = %e, "could not record the renewed certificate");
            return None;
        }
        Err(status) => {
            tracing::warn!(node = %node.name, %status, "could not record the renewed certificate");
            return None;
        }
    }
    tracing::info!(node = %node.name, certificate = %fingerprint, "issued a renewed node certificate");
    Some(pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::NodeCertificate(pb::NodeCertificate {
            certificate_pem: cert_pem,
            ca_bundle_pem: c.trust_bundle(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Role;

    #[test]
    fn only_the_current_or_pending_certificate_opens_a_session() {
        let mut node = NodeRecord::for_test("n-1", "a", Role::Agent);
        assert_eq!(admission(&node, "x"), Admission::Adopt, "a record without a fingerprint");
        node.certificate_sha256 = "old".into();
        assert_eq!(admission(&node, "old"), Admission::Current);
        assert_eq!(admission(&node, "new"), Admission::Refuse);
        node.pending_certificate_sha256 = "new".into();
        assert_eq!(admission(&node, "new"), Admission::Promote);
        assert_eq!(
            admission(&node, "old"),
            Admission::Current,
            "the old one works until the new one is used"
        );
        assert_eq!(admission(&node, "other"), Admission::Refuse);
    }
}
