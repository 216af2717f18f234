//! The Admin calls `CreateAdmin`, `ListAdmins` and `RevokeAdmin`: named admin
//! credentials on the wire. The rules are `crate::admins`', the registry
//! `state::admins`'.

use std::sync::Arc;

use elysium_proto::v1 as pb;
use tonic::Status;

use super::status::{blocking, internal};
use crate::state::{Coordinator, CreateAdminError};
use crate::store::{AdminRecord, AdminRevocation, AdminWriteError};

/// A CSR is a few hundred bytes; this leaves room for an RSA-4096 key.
const MAX_CSR_BYTES: usize = 16 * 1024;

pub(crate) fn info(a: &AdminRecord) -> pb::AdminInfo {
    pb::AdminInfo {
        name: a.name.clone(),
        fingerprint: a.fingerprint.clone(),
        created_unix: a.created_unix,
        expires_unix: a.expires_unix,
        revoked_unix: a.revoked_unix,
        created_by: a.created_by.clone(),
        issuer: a.issuer.clone(),
    }
}

fn check_csr_size(csr_der: &[u8]) -> Result<(), Status> {
    if csr_der.len() > MAX_CSR_BYTES {
        return Err(Status::invalid_argument(format!("the CSR is larger than {MAX_CSR_BYTES} bytes")));
    }
    Ok(())
}

/// The status for an admin certificate that could not be signed or registered.
fn signing_status(e: CreateAdminError) -> Status {
    match e {
        CreateAdminError::BadName(e) => Status::invalid_argument(e.to_string()),
        CreateAdminError::Pki(e) => Status::invalid_argument(e.to_string()),
        CreateAdminError::Record(e) => Status::internal(e.to_string()),
        CreateAdminError::Write(AdminWriteError::NameTaken(n)) => {
            Status::already_exists(AdminWriteError::NameTaken(n).to_string())
        }
        CreateAdminError::Write(AdminWriteError::Store(e)) => internal(e),
    }
}

pub(crate) async fn create(
    c: &Arc<Coordinator>,
    by: &str,
    req: pb::CreateAdminRequest,
) -> Result<pb::CreateAdminResponse, Status> {
    check_csr_size(&req.csr_der)?;
    let (cc, name, by_owned) = (c.clone(), req.name.clone(), by.to_owned());
    let (record, pem) =
        blocking(move || cc.create_admin(&name, &req.csr_der, &by_owned)).await?.map_err(signing_status)?;
    c.event("admin.created", &record.name, &format!("by {by}, certificate {}", record.fingerprint));
    Ok(pb::CreateAdminResponse { info: Some(info(&record)), certificate_pem: pem })
}

/// `RenewAdmin`: a new certificate for the caller's own name, the one it called
/// with revoked in the same transaction.
pub(crate) async fn renew(
    c: &Arc<Coordinator>,
    by: &str,
    leaf: Vec<u8>,
    req: pb::RenewAdminRequest,
) -> Result<pb::RenewAdminResponse, Status> {
    check_csr_size(&req.csr_der)?;
    let old = crate::pki::fingerprint(&leaf);
    let (cc, name, old_fp) = (c.clone(), by.to_owned(), old.clone());
    let renewed =
        blocking(move || cc.renew_admin(&name, &old_fp, &req.csr_der)).await?.map_err(signing_status)?;
    let Some((record, pem)) = renewed else {
        return Err(Status::permission_denied("this admin certificate was revoked meanwhile"));
    };
    c.event(
        "admin.renewed",
        &record.name,
        &format!("certificate {} (issuer {}) replaces {old}", record.fingerprint, record.issuer),
    );
    Ok(pb::RenewAdminResponse {
        info: Some(info(&record)),
        certificate_pem: pem,
        ca_bundle_pem: c.trust_bundle(),
    })
}

pub(crate) fn list(c: &Coordinator) -> pb::ListAdminsResponse {
    pb::ListAdminsResponse { admins: c.list_admins().iter().map(info).collect() }
}

pub(crate) async fn revoke(
    c: &Arc<Coordinator>,
    by: &str,
    req: pb::RevokeAdminRequest,
) -> Result<pb::AdminInfo, Status> {
    let (cc, name) = (c.clone(), req.name.clone());
    let outcome = blocking(move || cc.revoke_admin(&name, req.force)).await?.map_err(internal)?;
    match outcome {
        AdminRevocation::Revoked(record) => {
            let message = if record.name == by {
                format!("by {by} (itself), certificate {}", record.fingerprint)
            } else {
                format!("by {by}, certificate {}", record.fingerprint)
            };
            c.event("admin.revoked", &record.name, &message);
            Ok(info(&record))
        }
        AdminRevocation::NotFound => Err(Status::not_found(format!(
            "no valid admin named {:?}; see `elysium-node coordinator admin list`",
            req.name
        ))),
        AdminRevocation::Last(_) => Err(Status::failed_precondition(format!(
            "{:?} is the last valid admin: revoking it leaves nobody who can administer the coordinator over the network; create another admin first, or pass --force (a new one can then be made only on the coordinator's machine, with `coordinator admin create --data-dir`)",
            req.name
        ))),
    }
}
