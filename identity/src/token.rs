//! The join-token format: `ELY10<ca-sha256>::<id>.<secret>`, after K3s's secure
//! `K10<ca-sha256>::<user>:<password>`. The joining node learns the fingerprint of
//! the coordinator's CA from the token itself and refuses any coordinator that
//! does not present that CA, before it sends anything. Whether a token may be used
//! is the coordinator's business (it stores only the secret's SHA-256).

use std::fmt;

use sha2::{Digest, Sha256};

/// Prefix and format version of every token.
pub const TOKEN_PREFIX: &str = "ELY10";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 16;

/// A parsed join token. `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the coordinator CA certificate (DER).
    pub ca_fingerprint: String,
    pub id: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

/// Why a string is not a token. Never contains the string itself: a mistyped token
/// is still mostly a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the join token is malformed: {0} (expected `{TOKEN_PREFIX}<64 hex>::<id>.<secret>` as printed by `elysium-node token create`)"
)]
pub struct MalformedToken(&'static str);

impl JoinToken {
    /// A new random token for a CA.
    pub fn generate(ca_fingerprint: &str) -> Self {
        let id: [u8; ID_BYTES] = rand::random();
        let secret: [u8; SECRET_BYTES] = rand::random();
        Self { ca_fingerprint: ca_fingerprint.to_owned(), id: hex::encode(id), secret: hex::encode(secret) }
    }

    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let text = text.trim();
        let rest = text.strip_prefix(TOKEN_PREFIX).ok_or(MalformedToken("it does not start with ELY10"))?;
        let (fp, cred) = rest.split_once("::").ok_or(MalformedToken("the `::` separator is missing"))?;
        if fp.len() != 64 || !is_lower_hex(fp) {
            return Err(MalformedToken("the CA fingerprint is not 64 lowercase hex digits"));
        }
        let (id, secret) =
            cred.split_once('.').ok_or(MalformedToken("the `.` between id and secret is missing"))?;
        if id.len() != ID_BYTES * 2 || !is_lower_hex(id) {
            return Err(MalformedToken("the token id is not 12 lowercase hex digits"));
        }
        if secret.len() != SECRET_BYTES * 2 || !is_lower_hex(secret) {
            return Err(MalformedToken("the secret is not 32 lowercase hex digits"));
        }
        Ok(Self { ca_fingerprint: fp.to_owned(), id: id.to_owned(), secret: secret.to_owned() })
    }

    /// The full token text. This is the secret: print it once, never log it.
    pub fn expose(&self) -> String {
        format!("{TOKEN_PREFIX}{}::{}.{}", self.ca_fingerprint, self.id, self.secret)
    }

    /// What the coordinator stores instead of the secret.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_redaction() {
        let t = JoinToken::generate(&"ab".repeat(32));
        let text = t.expose();
        assert!(text.starts_with("ELY10abab"));
        assert_eq!(JoinToken::parse(&format!(" {text}\n")).unwrap(), t);
        let debug = format!("{t:?}");
        assert!(!debug.contains(&t.secret), "Debug leaks the secret: {debug}");
    }

    #[test]
    fn malformed_tokens_are_explained_without_echoing_them() {
        for bad in ["", "K10abc::server:pw", "ELY10zz::a.b", &format!("ELY10{}::abc.def", "a".repeat(64))] {
            let e = JoinToken::parse(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("malformed"), "{msg}");
            if !bad.is_empty() {
                assert!(!msg.contains(bad), "error echoes the token: {msg}");
            }
        }
    }
}
