//! The admin credentials the Admin service accepts, held in memory and kept in
//! step with the store: every Admin request is checked against this set (not only
//! the connection's first), so a revocation refuses the very next call, also on a
//! channel that was open before it.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use super::Coordinator;
use crate::admins::{self, BadName, RecordError};
use crate::pki::PkiError;
use crate::store::{AdminRecord, AdminRevocation, AdminWriteError, Store, StoreError};

/// Every admin record by certificate fingerprint, revoked ones included so a
/// refusal can say why.
#[derive(Debug, Default)]
pub(crate) struct Admins {
    by_fingerprint: RwLock<HashMap<String, AdminRecord>>,
    /// Serialises "write the store, then memory", so memory never ends up with
    /// an older write applied after a newer one.
    write: Mutex<()>,
}

/// What the set says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdminCheck {
    /// Registered and not revoked: the admin's name.
    Valid(String),
    Revoked(AdminRecord),
    /// Signed by our CA but never registered (or registered in another
    /// coordinator's store).
    Unknown,
}

impl Admins {
    pub(crate) fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let map = store.list_admins()?.into_iter().map(|a| (a.fingerprint.clone(), a)).collect();
        Ok(Self { by_fingerprint: RwLock::new(map), write: Mutex::new(()) })
    }

    pub(crate) fn check(&self, fingerprint: &str) -> AdminCheck {
        let map = self.by_fingerprint.read().unwrap_or_else(|p| p.into_inner());
        match map.get(fingerprint) {
            Some(a) if a.is_revoked() => AdminCheck::Revoked(a.clone()),
            Some(a) => AdminCheck::Valid(a.name.clone()),
            None => AdminCheck::Unknown,
        }
    }

    fn put(&self, admin: AdminRecord) {
        self.by_fingerprint
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(admin.fingerprint.clone(), admin);
    }

    pub(crate) fn all(&self) -> Vec<AdminRecord> {
        let mut out: Vec<AdminRecord> =
            self.by_fingerprint.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        out.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
        out
    }
}

/// Why an admin could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateAdminError {
    #[error(transparent)]
    BadName(#[from] BadName),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Write(#[from] AdminWriteError),
}

impl Coordinator {
    /// Whether the certificate with this fingerprint may call the Admin service.
    pub(crate) fn admin_check(&self, fingerprint: &str) -> AdminCheck {
        self.admins.check(fingerprint)
    }

    /// Every admin credential, revoked ones too, oldest first.
    pub(crate) fn list_admins(&self) -> Vec<AdminRecord> {
        self.admins.all()
    }

    /// Signs `csr_der` as the admin certificate of `name` and registers it.
    /// Returns the record and the certificate (PEM). Blocking (store write).
    pub(crate) fn create_admin(
        &self,
        name: &str,
        csr_der: &[u8],
        by: &str,
    ) -> Result<(AdminRecord, String), CreateAdminError> {
        admins::check_name(name)?;
        let _guard = self.admins.write.lock().unwrap_or_else(|p| p.into_inner());
        // Refuse a taken name before signing anything.
        if self.admins.all().iter().any(|a| a.name == name && !a.is_revoked()) {
            return Err(AdminWriteError::NameTaken(name.to_owned()).into());
        }
        let (pem, der) = self.ca().sign_admin_csr(csr_der, name)?;
        let record = admins::record_for(&der, by, self.now())?;
        self.store.create_admin(&record)?;
        self.admins.put(record.clone());
        Ok((record, pem))
    }

    /// Signs `csr_der` as `name`'s next certificate (by the current CA) and
    /// registers it in place of the valid certificate `old`. `None` when `old`
    /// is no longer valid. Blocking (store write).
    pub(crate) fn renew_admin(
        &self,
        name: &str,
        old: &str,
        csr_der: &[u8],
    ) -> Result<Option<(AdminRecord, String)>, CreateAdminError> {
        let _guard = self.admins.write.lock().unwrap_or_else(|p| p.into_inner());
        if !self.admins.all().iter().any(|a| a.fingerprint == old && a.name == name && !a.is_revoked()) {
            return Ok(None);
        }
        let (pem, der) = self.ca().sign_admin_csr(csr_der, name)?;
        let record = admins::record_for(&der, name, self.now())?;
        let Some(revoked) =
            self.store.replace_admin(old, &record, self.now()).map_err(AdminWriteError::Store)?
        else {
            return Ok(None);
        };
        self.admins.put(revoked);
        self.admins.put(record.clone());
        Ok(Some((record, pem)))
    }

    /// Revokes the admin `name`: from the next request on, its certificate is
    /// refused. Blocking (store write).
    pub(crate) fn revoke_admin(&self, name: &str, allow_last: bool) -> Result<AdminRevocation, StoreError> {
        let _guard = self.admins.write.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.store.revoke_admin(name, self.now(), allow_last)?;
        if let AdminRevocation::Revoked(record) = &outcome {
            self.admins.put(record.clone());
        }
        Ok(outcome)
    }
}
