//! Join tokens: format, parsing and the rules that decide whether one may be used.
//!
//! A token reads `ELY10<ca-sha256>::<id>.<secret>`, after K3s's secure
//! `K10<ca-sha256>::<user>:<password>`: the joining node learns the fingerprint of
//! the coordinator's CA from the token itself and refuses any coordinator that
//! does not present that CA, before it sends anything. The coordinator stores only
//! the SHA-256 of the secret, so a leaked store does not leak usable tokens.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix and format version of every token.
pub const TOKEN_PREFIX: &str = "ELY10";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 16;

/// Default lifetime of a token (one hour) and default number of uses (one).
pub const DEFAULT_TTL_SECONDS: u64 = 3600;
pub const DEFAULT_USES: u32 = 1;

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

/// The role a node gets when it joins with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    #[default]
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

/// What the coordinator keeps about a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub role: Role,
    pub labels: BTreeMap<String, String>,
    pub created_unix: i64,
    pub expires_unix: i64,
    pub uses_allowed: u32,
    pub uses_consumed: u32,
    pub revoked: bool,
}

/// Why a well-formed token may not be used. The messages are what the joining
/// operator sees, so each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the join token is not known to this coordinator; create one with `elysium-node token create`")]
    Unknown,
    #[error("the join token expired {ago_seconds} s ago; create a new one with `elysium-node token create`")]
    Expired { ago_seconds: i64 },
    #[error("the join token was revoked; create a new one with `elysium-node token create`")]
    Revoked,
    #[error(
        "the join token was already used {uses} time(s), its limit; create a new one with `elysium-node token create`"
    )]
    UsedUp { uses: u32 },
}

impl TokenRecord {
    /// Decides whether `token` may enroll one more node at `now_unix`. A wrong
    /// secret is reported as unknown so the id alone reveals nothing.
    pub fn check(&self, token: &JoinToken, now_unix: i64) -> Result<(), TokenRejection> {
        // Compare hashes, not secrets: equal-length hex, and the timing of a
        // comparison of hashes reveals nothing useful about the secret.
        if token.id != self.id || token.secret_hash() != self.secret_sha256 {
            return Err(TokenRejection::Unknown);
        }
        if self.revoked {
            return Err(TokenRejection::Revoked);
        }
        if now_unix >= self.expires_unix {
            return Err(TokenRejection::Expired { ago_seconds: now_unix - self.expires_unix });
        }
        if self.uses_consumed >= self.uses_allowed {
            return Err(TokenRejection::UsedUp { uses: self.uses_consumed });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: &JoinToken) -> TokenRecord {
        TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            role: Role::Agent,
            labels: BTreeMap::new(),
            created_unix: 1000,
            expires_unix: 2000,
            uses_allowed: 1,
            uses_consumed: 0,
            revoked: false,
        }
    }

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

    #[test]
    fn rules() {
        let t = JoinToken::generate(&"ab".repeat(32));
        let mut r = record(&t);
        assert_eq!(r.check(&t, 1500), Ok(()));
        assert_eq!(r.check(&t, 2000), Err(TokenRejection::Expired { ago_seconds: 0 }));
        let other = JoinToken::generate(&"ab".repeat(32));
        let forged = JoinToken { id: t.id.clone(), ..other };
        assert_eq!(r.check(&forged, 1500), Err(TokenRejection::Unknown));
        r.uses_consumed = 1;
        assert_eq!(r.check(&t, 1500), Err(TokenRejection::UsedUp { uses: 1 }));
        r.uses_consumed = 0;
        r.revoked = true;
        assert_eq!(r.check(&t, 1500), Err(TokenRejection::Revoked));
    }
}
