//! The vault's age identity (X25519), in its own file `DATA_DIR/vault.key` (0600),
//! apart from `state.redb`: what is in the store is ciphertext that only this file
//! opens, so a copied `state.redb` (or a backup of it) gives away no key.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use elysium_host::{FsError, RootFs};
use zeroize::Zeroizing;

/// Why the vault identity or an item could not be used.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "{} holds no age identity (an AGE-SECRET-KEY-1… line); restore the vault key from your offline copy",
        .0.display()
    )]
    BadIdentity(PathBuf),
    #[error("vault item {id} could not be encrypted")]
    Encrypt {
        id: String,
        #[source]
        source: Box<age::EncryptError>,
    },
    #[error("vault item {id} does not open with this coordinator's vault key (was vault.key replaced?)")]
    Decrypt {
        id: String,
        #[source]
        source: Box<age::DecryptError>,
    },
    #[error("vault item {id} is corrupt: its content does not match its record")]
    Corrupt { id: String },
    /// Never the item itself: it holds key material.
    #[error("vault item {id} could not be serialised")]
    Serialise { id: String },
}

/// The age identity that encrypts and decrypts vault items, and the store's
/// secret-bearing records ([`crate::store::Sealer`]).
#[derive(Clone)]
pub struct VaultKey {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
}

// By hand: the identity is the secret; the recipient is public.
impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKey").field("recipient", &self.recipient.to_string()).finish_non_exhaustive()
    }
}

impl VaultKey {
    pub fn generate() -> Self {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        Self { identity, recipient }
    }

    /// The public half, `age1…`: what items are encrypted to.
    pub fn recipient(&self) -> String {
        self.recipient.to_string()
    }

    /// The identity file's text, in age-keygen's layout plus why it matters.
    pub fn file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "# elysium-node coordinator key vault identity (age X25519).\n\
             # It decrypts the sealed-secrets keys, K3s tokens and secrets kept in state.redb.\n\
             # Keep a copy offline and apart from backups of state.redb: without it the\n\
             # vault cannot be read; together with them it reveals the keys.\n\
             # public key: {}\n{}\n",
            self.recipient,
            self.identity.to_string().expose_secret()
        ))
    }

    /// Parses an identity file (comments and blank lines ignored).
    pub fn parse(text: &str, path: &Path) -> Result<Self, VaultError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .ok_or_else(|| VaultError::BadIdentity(path.to_owned()))?;
        // age's parse error is a fixed string, but say nothing that could echo the line.
        let identity =
            age::x25519::Identity::from_str(line).map_err(|_| VaultError::BadIdentity(path.to_owned()))?;
        let recipient = identity.to_public();
        Ok(Self { identity, recipient })
    }

    /// Reads the identity at `path`, creating it (0600) when there is none: at
    /// `coordinator init`, or at the first start of a coordinator initialised
    /// before the vault existed.
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        let fs = RootFs::new("/");
        if let Some(bytes) = fs.read_optional(path)? {
            let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
            let key = Self::parse(&text, path)?;
            if let Ok(mode) = fs.mode(path)
                && mode & 0o077 != 0
            {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the vault key is readable by others; chmod 600 it");
            }
            return Ok(key);
        }
        let key = Self::generate();
        fs.write_atomic(path, key.file_text().as_bytes(), 0o600)?;
        tracing::info!(path = %path.display(), recipient = %key.recipient, "created the key vault identity; keep a copy of it offline");
        Ok(key)
    }

    /// Encrypts `plaintext` to this identity.
    pub fn seal(&self, id: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        age::encrypt(&self.recipient, plaintext)
            .map_err(|source| VaultError::Encrypt { id: id.to_owned(), source: Box::new(source) })
    }

    /// Decrypts what [`Self::seal`] produced.
    pub fn open(&self, id: &str, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        age::decrypt(&self.identity, ciphertext)
            .map(Zeroizing::new)
            .map_err(|source| VaultError::Decrypt { id: id.to_owned(), source: Box::new(source) })
    }
}

/// The store's records are sealed to the same identity as the vault's items:
/// one key to keep offline, one file that a copied `state.redb` lacks.
impl crate::store::Sealer for VaultKey {
    fn seal(&self, plaintext: &[u8]) -> Option<Vec<u8>> {
        age::encrypt(&self.recipient, plaintext).ok()
    }

    fn open(&self, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        age::decrypt(&self.identity, sealed).ok().map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_age_round_trip_and_wrong_key() {
        let key = VaultKey::generate();
        let secret = b"-----BEGIN RSA PRIVATE KEY-----\nvault-round-trip\n";
        let sealed = key.seal("sealing-key/x", secret).unwrap();
        assert!(!sealed.windows(16).any(|w| w == b"vault-round-trip"), "plaintext in the ciphertext");
        assert_eq!(key.open("sealing-key/x", &sealed).unwrap().as_slice(), secret);

        let other = VaultKey::generate();
        let err = other.open("sealing-key/x", &sealed).unwrap_err();
        assert!(matches!(err, VaultError::Decrypt { .. }), "{err}");
        assert!(err.to_string().contains("sealing-key/x"));
    }

    #[test]
    fn vault_identity_file_is_created_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let created = VaultKey::load_or_create(&path).unwrap();
        assert_eq!(RootFs::new("/").mode(&path).unwrap(), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("# public key: {}", created.recipient())));
        let loaded = VaultKey::load_or_create(&path).unwrap();
        assert_eq!(loaded.recipient(), created.recipient(), "an existing identity must be kept");
        let sealed = created.seal("a", b"x").unwrap();
        assert_eq!(loaded.open("a", &sealed).unwrap().as_slice(), b"x");
        // Debug shows the public half only.
        let debug = format!("{loaded:?}");
        assert!(debug.contains("age1") && !debug.contains("AGE-SECRET-KEY"), "{debug}");

        std::fs::write(&path, "# nothing here\n").unwrap();
        let err = VaultKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, VaultError::BadIdentity(_)), "{err}");
    }
}
