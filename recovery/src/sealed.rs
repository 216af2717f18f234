//! The sealed-secrets hybrid encryption and the scope rules that pick its label, as
//! bitnami-labs/sealed-secrets does them (`pkg/crypto/crypto.go` `HybridEncrypt`/
//! `HybridDecrypt`, `pkg/apis/sealedsecrets/v1alpha1/sealedsecret_expansion.go`
//! `EncryptionLabel`/`SecretScope`/`Unseal`). This module owns the bytes; finding
//! SealedSecrets in a repository and reporting on them is `preflight`'s.
//!
//! The format of one sealed value (before base64):
//!
//! ```text
//! u16 big-endian len(rsa) || RSA-OAEP-SHA256(session key, label) || AES-256-GCM(value)
//! ```
//!
//! with a fresh 32-byte session key per value and an all-zero 12-byte GCM nonce (safe:
//! each session key encrypts exactly one message). The OAEP label binds the value to
//! where it may be unsealed: `namespace/name` (strict, the default), `namespace`
//! (namespace-wide) or empty (cluster-wide).
//!
//! About RUSTSEC-2023-0071 (the `rsa` crate's Marvin timing side channel): it lets an
//! attacker who can time many decryptions of chosen ciphertexts recover the key. Here
//! decryption runs once per value of files already on disk, offline, and its outcome or
//! timing is never reported to anyone who chose the ciphertext: there is no oracle.
//! Decryption is blinded anyway, which costs nothing at this volume.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rsa::rand_core::{OsRng, RngCore};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Annotation that makes a SealedSecret cluster-wide (`SealedSecretClusterWideAnnotation`:
/// `"sealedsecrets." + GroupName + "/cluster-wide"`, GroupName `bitnami.com`).
pub const CLUSTER_WIDE_ANNOTATION: &str = "sealedsecrets.bitnami.com/cluster-wide";
/// Annotation that makes a SealedSecret namespace-wide (`SealedSecretNamespaceWideAnnotation`).
pub const NAMESPACE_WIDE_ANNOTATION: &str = "sealedsecrets.bitnami.com/namespace-wide";

/// `sessionKeyBytes` in crypto.go: AES-256.
const SESSION_KEY_BYTES: usize = 32;
/// Go's `cipher.NewGCM` default nonce size.
const GCM_NONCE_BYTES: usize = 12;

/// Where a sealed value may be unsealed; decides the OAEP label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Only as the Secret `namespace/name` (the default).
    Strict,
    /// Under any name in one namespace.
    NamespaceWide,
    /// Anywhere.
    ClusterWide,
}

impl Scope {
    /// The scope annotated in an object's metadata (`SecretScope`): cluster-wide wins over
    /// namespace-wide, and only the exact value `"true"` counts.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Scope {
        let is_true = |k: &str| annotations.get(k).is_some_and(|v| v == "true");
        if is_true(CLUSTER_WIDE_ANNOTATION) {
            Scope::ClusterWide
        } else if is_true(NAMESPACE_WIDE_ANNOTATION) {
            Scope::NamespaceWide
        } else {
            Scope::Strict
        }
    }

    /// The OAEP label (`EncryptionLabel`).
    pub fn label(self, namespace: &str, name: &str) -> String {
        match self {
            Scope::Strict => format!("{namespace}/{name}"),
            Scope::NamespaceWide => namespace.to_owned(),
            Scope::ClusterWide => String::new(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Strict => "strict",
            Scope::NamespaceWide => "namespace-wide",
            Scope::ClusterWide => "cluster-wide",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a value could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("RSA-OAEP encryption of the session key failed")]
    Rsa(#[source] rsa::Error),
    #[error("AES-GCM encryption failed")]
    Aes,
    #[error("the RSA ciphertext is {0} bytes, more than the 2-byte length prefix can hold")]
    TooLong(usize),
}

/// Why a value did not open. None of these carry plaintext or key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// `ErrTooShort` upstream.
    #[error("sealed data is too short")]
    TooShort,
    /// Wrong key, wrong label (scope, namespace or name), or corrupted data: OAEP cannot
    /// tell these apart, by design.
    #[error("the session key does not decrypt with this key and scope label")]
    SessionKey,
    #[error("the decrypted session key is {0} bytes, not {SESSION_KEY_BYTES}")]
    SessionKeyLength(usize),
    /// The session key opened but the payload's GCM tag does not verify: corrupted data.
    #[error("the payload fails AES-GCM authentication")]
    Payload,
}

/// Seals `plaintext` for `public` under `label` (`HybridEncrypt`).
pub fn seal(public: &RsaPublicKey, plaintext: &[u8], label: &str) -> Result<Vec<u8>, SealError> {
    let mut session_key = Zeroizing::new([0u8; SESSION_KEY_BYTES]);
    OsRng.fill_bytes(session_key.as_mut());
    let rsa_ciphertext = public
        .encrypt(&mut OsRng, Oaep::new_with_label::<Sha256, _>(label), session_key.as_ref())
        .map_err(SealError::Rsa)?;
    let len = u16::try_from(rsa_ciphertext.len()).map_err(|_| SealError::TooLong(rsa_ciphertext.len()))?;
    let cipher = Aes256Gcm::new_from_slice(session_key.as_ref()).map_err(|_| SealError::Aes)?;
    let payload =
        cipher.encrypt(Nonce::from_slice(&[0u8; GCM_NONCE_BYTES]), plaintext).map_err(|_| SealError::Aes)?;

    let mut out = Vec::with_capacity(2 + rsa_ciphertext.len() + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&rsa_ciphertext);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Opens a value sealed by [`seal`] or by kubeseal (`HybridDecrypt`). The plaintext is
/// wiped when dropped.
pub fn open(private: &RsaPrivateKey, sealed: &[u8], label: &str) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let (len, rest) = sealed.split_first_chunk::<2>().ok_or(OpenError::TooShort)?;
    let rsa_len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < rsa_len {
        return Err(OpenError::TooShort);
    }
    let (rsa_ciphertext, payload) = rest.split_at(rsa_len);
    let session_key = Zeroizing::new(
        private
            .decrypt_blinded(&mut OsRng, Oaep::new_with_label::<Sha256, _>(label), rsa_ciphertext)
            .map_err(|_| OpenError::SessionKey)?,
    );
    if session_key.len() != SESSION_KEY_BYTES {
        return Err(OpenError::SessionKeyLength(session_key.len()));
    }
    let cipher = Aes256Gcm::new_from_slice(&session_key)
        .map_err(|_| OpenError::SessionKeyLength(session_key.len()))?;
    cipher
        .decrypt(Nonce::from_slice(&[0u8; GCM_NONCE_BYTES]), payload)
        .map(Zeroizing::new)
        .map_err(|_| OpenError::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RsaPrivateKey {
        // 1024 bits keeps the unit tests fast; the format does not depend on the size.
        RsaPrivateKey::new(&mut OsRng, 1024).expect("generate RSA key")
    }

    #[test]
    fn labels_follow_encryption_label() {
        assert_eq!(
            Scope::Strict.label("flux-system", "cluster-secret-vars"),
            "flux-system/cluster-secret-vars"
        );
        assert_eq!(Scope::NamespaceWide.label("coder", "dockerconfig"), "coder");
        assert_eq!(Scope::ClusterWide.label("raiplaysoundrss", "regcred"), "");
    }

    #[test]
    fn scope_from_annotations() {
        let mut a = BTreeMap::new();
        assert_eq!(Scope::from_annotations(&a), Scope::Strict);
        a.insert(NAMESPACE_WIDE_ANNOTATION.to_owned(), "true".to_owned());
        assert_eq!(Scope::from_annotations(&a), Scope::NamespaceWide);
        a.insert(CLUSTER_WIDE_ANNOTATION.to_owned(), "true".to_owned());
        assert_eq!(Scope::from_annotations(&a), Scope::ClusterWide, "cluster-wide wins");
        a.insert(CLUSTER_WIDE_ANNOTATION.to_owned(), "yes".to_owned());
        assert_eq!(Scope::from_annotations(&a), Scope::NamespaceWide, "only \"true\" counts");
    }

    #[test]
    fn layout_is_length_prefix_rsa_then_gcm() {
        let k = key();
        let sealed = seal(&k.to_public_key(), b"hello", "ns/name").expect("seal");
        let rsa_len = usize::from(u16::from_be_bytes([sealed[0], sealed[1]]));
        assert_eq!(rsa_len, 128, "1024-bit modulus");
        // GCM appends a 16-byte tag to the 5-byte message.
        assert_eq!(sealed.len(), 2 + rsa_len + 5 + 16);
        assert_eq!(open(&k, &sealed, "ns/name").expect("open").as_slice(), b"hello");
    }

    #[test]
    fn wrong_label_wrong_key_and_damage_do_not_open() {
        let k = key();
        let other = key();
        let mut sealed = seal(&k.to_public_key(), b"v", "ns/a").expect("seal");
        assert_eq!(open(&k, &sealed, "ns/b"), Err(OpenError::SessionKey));
        assert_eq!(open(&other, &sealed, "ns/a"), Err(OpenError::SessionKey));
        assert_eq!(open(&k, &sealed[..1], "ns/a"), Err(OpenError::TooShort));
        assert_eq!(open(&k, &sealed[..100], "ns/a"), Err(OpenError::TooShort));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(open(&k, &sealed, "ns/a"), Err(OpenError::Payload));
    }
}
