//! Named admin credentials: the rules for an admin's name, and the record that
//! registers an admin certificate with the coordinator.
//!
//! TLS accepts any certificate the CA signed; the Admin service accepts only one
//! whose fingerprint is registered and not revoked (`services::auth`). So an admin
//! whose laptop is lost is revoked by name, without re-keying everyone else.
//! Pure: no I/O; the store keeps the records, the live state checks requests.

use crate::pki::{self, PeerIdentity, PkiError};
use crate::store::AdminRecord;

/// Longest admin name; it goes into the certificate's common name.
pub const MAX_NAME: usize = 64;

/// The name is not one an admin can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("admin name {0:?} is not valid: use 1 to {MAX_NAME} of a-z, A-Z, 0-9, '.', '_' and '-'")]
pub struct BadName(pub String);

/// Checks an admin's name: short, and nothing a terminal or a log could
/// misread (it is shown in events and tables).
pub fn check_name(name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(BadName(name.to_owned())) }
}

/// Why a certificate cannot be registered as an admin.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the certificate is not an admin certificate (its subject is not admin:<name>)")]
    NotAdmin,
}

/// The record registering `cert_der` (an admin certificate), created at `now` by
/// `created_by` (empty for the first admin).
pub fn record_for(cert_der: &[u8], created_by: &str, now: i64) -> Result<AdminRecord, RecordError> {
    let PeerIdentity::Admin(name) = pki::identify(cert_der)? else { return Err(RecordError::NotAdmin) };
    Ok(AdminRecord {
        name,
        fingerprint: pki::fingerprint(cert_der),
        created_unix: now,
        expires_unix: pki::validity(cert_der)?.not_after_unix,
        revoked_unix: 0,
        created_by: created_by.to_owned(),
        issuer: pki::issuer_text(cert_der).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    #[test]
    fn names_are_short_and_plain() {
        for good in ["alice", "ops-1", "a.b_c", &"x".repeat(MAX_NAME)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "al ice", "a/b", "é", "bob\u{1b}[2J", &"x".repeat(MAX_NAME + 1)] {
            let err = check_name(bad).unwrap_err();
            assert!(err.to_string().contains("not valid"), "{err}");
        }
    }

    #[test]
    fn a_record_names_the_certificate_and_its_expiry() {
        let (ca, _) = Ca::generate("test").unwrap();
        let admin = ca.issue_admin("alice").unwrap();
        let rec = record_for(&admin.cert_der, "operator", 1_000).unwrap();
        assert_eq!(rec.name, "alice");
        assert_eq!(rec.fingerprint, pki::fingerprint(&admin.cert_der));
        assert_eq!(rec.created_by, "operator");
        assert!(rec.expires_unix > 1_000 && !rec.is_revoked());
        // A node certificate is not an admin.
        let (_, csr) = elysium_identity::cert::node_key_and_csr().unwrap();
        let (_, node) = ca.sign_node_csr(&csr, "n-1").unwrap();
        assert!(matches!(record_for(&node, "", 0), Err(RecordError::NotAdmin)));
    }
}
