//! Secrets at rest: the records that hold secret values (the K3s cluster record
//! with its init secret, server token and agent secret; every `secret set`
//! value) are encrypted before they reach `state.redb`, so a copied store, or a
//! backup of it, reveals none of them.
//!
//! The store does not own the key: a [`Sealer`] is handed to it, in production
//! the coordinator's vault identity (`vault/identity.rs`, the age X25519 key in
//! `DATA_DIR/vault.key`, kept apart from the store). A sealed record is the age
//! ciphertext of the record's JSON; records written before sealing are JSON, so
//! the two are told apart by their first bytes, and [`RedbStore::open_sealed`]
//! seals those it finds.
//!
//! [`RedbStore::open_sealed`]: super::RedbStore::open_sealed

use zeroize::Zeroizing;

/// Encrypts and decrypts whole records for the store. Errors carry nothing: the
/// store names the record, and what failed inside a cipher says nothing useful.
pub trait Sealer: Send + Sync {
    fn seal(&self, plaintext: &[u8]) -> Option<Vec<u8>>;
    fn open(&self, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>>;
}

/// The start of every age file (`age-encryption.org/v1`): how a sealed record
/// is told from a JSON one, which starts with `{`.
pub(super) const AGE_MAGIC: &[u8] = b"age-encryption.org/";

pub(super) fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(AGE_MAGIC)
}
