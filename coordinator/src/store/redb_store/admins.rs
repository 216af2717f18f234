//! The admin credentials' table: each write is one transaction that checks and
//! changes together (a name taken, the last valid admin), so two admins acting at
//! once cannot get past a check the other one's write would have failed.

use redb::{ReadableTable, Table};

use super::{ADMINS, RedbStore, decode, encode, engine};
use crate::store::{AdminRecord, AdminRevocation, AdminWriteError, StoreError};

fn all(table: &Table<'_, &'static str, &'static [u8]>) -> Result<Vec<AdminRecord>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(engine)? {
        let (k, v) = entry.map_err(engine)?;
        out.push(decode::<AdminRecord>(k.value(), v.value())?);
    }
    Ok(out)
}

impl RedbStore {
    pub(super) fn insert_admin(&self, admin: &AdminRecord) -> Result<(), AdminWriteError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut table = txn.open_table(ADMINS).map_err(engine)?;
            if all(&table)?.iter().any(|a| a.name == admin.name && !a.is_revoked()) {
                return Err(AdminWriteError::NameTaken(admin.name.clone()));
            }
            table.insert(admin.fingerprint.as_str(), encode(admin).as_slice()).map_err(engine)?;
        }
        txn.commit().map_err(engine)?;
        Ok(())
    }

    pub(super) fn insert_first_admin(&self, admin: &AdminRecord) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let inserted = {
            let mut table = txn.open_table(ADMINS).map_err(engine)?;
            let empty = table.iter().map_err(engine)?.next().is_none();
            if empty {
                table.insert(admin.fingerprint.as_str(), encode(admin).as_slice()).map_err(engine)?;
            }
            empty
        };
        txn.commit().map_err(engine)?;
        Ok(inserted)
    }

    pub(super) fn replace_admin_record(
        &self,
        old: &str,
        new: &AdminRecord,
        now: i64,
    ) -> Result<Option<AdminRecord>, StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let revoked = {
            let mut table = txn.open_table(ADMINS).map_err(engine)?;
            let current = match table.get(old).map_err(engine)? {
                Some(v) => Some(decode::<AdminRecord>(old, v.value())?),
                None => None,
            };
            match current {
                Some(mut record) if !record.is_revoked() && record.name == new.name => {
                    record.revoked_unix = now.max(1);
                    table.insert(old, encode(&record).as_slice()).map_err(engine)?;
                    table.insert(new.fingerprint.as_str(), encode(new).as_slice()).map_err(engine)?;
                    Some(record)
                }
                _ => None,
            }
        };
        if revoked.is_some() {
            txn.commit().map_err(engine)?;
        } else {
            txn.abort().map_err(engine)?;
        }
        Ok(revoked)
    }

    pub(super) fn revoke_admin_named(
        &self,
        name: &str,
        now: i64,
        allow_last: bool,
    ) -> Result<AdminRevocation, StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        let outcome = {
            let mut table = txn.open_table(ADMINS).map_err(engine)?;
            let valid: Vec<AdminRecord> = all(&table)?.into_iter().filter(|a| !a.is_revoked()).collect();
            match valid.iter().find(|a| a.name == name) {
                None => AdminRevocation::NotFound,
                Some(a) if valid.len() == 1 && !allow_last => AdminRevocation::Last(a.clone()),
                Some(a) => {
                    let mut revoked = a.clone();
                    // 0 means "valid": a clock before 1970 must still revoke.
                    revoked.revoked_unix = now.max(1);
                    table
                        .insert(revoked.fingerprint.as_str(), encode(&revoked).as_slice())
                        .map_err(engine)?;
                    AdminRevocation::Revoked(revoked)
                }
            }
        };
        if matches!(outcome, AdminRevocation::Revoked(_)) {
            txn.commit().map_err(engine)?;
        } else {
            txn.abort().map_err(engine)?;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{AdminRecord, AdminRevocation, AdminWriteError, RedbStore, Store};

    fn admin(name: &str, fingerprint: &str, created: i64) -> AdminRecord {
        AdminRecord {
            name: name.into(),
            fingerprint: fingerprint.into(),
            created_unix: created,
            expires_unix: created + 1000,
            revoked_unix: 0,
            created_by: String::new(),
            issuer: String::new(),
        }
    }

    #[test]
    fn names_are_unique_among_valid_admins_and_the_last_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            store.create_admin(&admin("alice", "aa", 1)).unwrap();
            store.create_admin(&admin("bob", "bb", 2)).unwrap();
            let err = store.create_admin(&admin("alice", "a2", 3)).unwrap_err();
            assert!(matches!(err, AdminWriteError::NameTaken(ref n) if n == "alice"), "{err}");

            let AdminRevocation::Revoked(rec) = store.revoke_admin("alice", 10, false).unwrap() else {
                panic!("alice not revoked")
            };
            assert_eq!((rec.fingerprint.as_str(), rec.revoked_unix), ("aa", 10));
            assert_eq!(store.revoke_admin("alice", 11, false).unwrap(), AdminRevocation::NotFound);
            // bob is the last valid admin: kept unless forced.
            assert!(matches!(store.revoke_admin("bob", 12, false).unwrap(), AdminRevocation::Last(_)));
            // A revoked name can be given to a new certificate.
            store.create_admin(&admin("alice", "a3", 13)).unwrap();
            assert!(matches!(store.revoke_admin("bob", 14, false).unwrap(), AdminRevocation::Revoked(_)));
            assert!(matches!(store.revoke_admin("alice", 15, false).unwrap(), AdminRevocation::Last(_)));
            assert!(matches!(store.revoke_admin("alice", 16, true).unwrap(), AdminRevocation::Revoked(_)));
        }
        // Survives a reopen, oldest first.
        let store = RedbStore::open(&path).unwrap();
        let all = store.list_admins().unwrap();
        let seen: Vec<(&str, &str, bool)> =
            all.iter().map(|a| (a.name.as_str(), a.fingerprint.as_str(), a.is_revoked())).collect();
        assert_eq!(seen, [("alice", "aa", true), ("bob", "bb", true), ("alice", "a3", true)]);
    }

    #[test]
    fn the_first_admin_is_adopted_only_into_an_empty_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        assert!(store.adopt_first_admin(&admin("operator", "op", 1)).unwrap());
        assert!(!store.adopt_first_admin(&admin("other", "ot", 2)).unwrap());
        // Not even after every admin was revoked: records exist.
        store.revoke_admin("operator", 3, true).unwrap();
        assert!(!store.adopt_first_admin(&admin("other", "ot", 4)).unwrap());
        assert_eq!(store.list_admins().unwrap().len(), 1);
    }
}
