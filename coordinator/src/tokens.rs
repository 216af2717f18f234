//! Join tokens on the coordinator: what it keeps of each and the rules that decide
//! whether one may be used.
//!
//! The token format itself (`ELY10<ca-sha256>::<id>.<secret>`) belongs to
//! `elysium-identity`, which the joining node shares; it is re-exported here for
//! the coordinator's own code. The coordinator stores only the SHA-256 of the
//! secret, so a leaked store does not leak usable tokens.

use std::collections::BTreeMap;

pub use elysium_identity::token::{JoinToken, MalformedToken, TOKEN_PREFIX};
use serde::{Deserialize, Serialize};

/// Default lifetime of a token (one hour) and default number of uses (one).
pub const DEFAULT_TTL_SECONDS: u64 = 3600;
pub const DEFAULT_USES: u32 = 1;

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
        self.check_life(token, now_unix)?;
        if self.uses_consumed >= self.uses_allowed {
            return Err(TokenRejection::UsedUp { uses: self.uses_consumed });
        }
        Ok(())
    }

    /// [`TokenRecord::check`] without the count of uses: whether `token` is this
    /// one's secret and still alive. A repeat of an enrollment that already
    /// consumed a use (its reply was lost) needs no more than that.
    pub fn check_life(&self, token: &JoinToken, now_unix: i64) -> Result<(), TokenRejection> {
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
    fn rules() {
        let t = JoinToken::generate(&"ab".repeat(32));
        let mut r = record(&t);
        assert_eq!(r.check(&t, 1500), Ok(()));
        assert_eq!(r.check(&t, 2000), Err(TokenRejection::Expired { ago_seconds: 0 }));
        let other = JoinToken::generate(&"ab".repeat(32));
        let forged = JoinToken::parse(&other.expose().replace(&other.id, &t.id)).unwrap();
        assert_eq!(r.check(&forged, 1500), Err(TokenRejection::Unknown));
        r.uses_consumed = 1;
        assert_eq!(r.check(&t, 1500), Err(TokenRejection::UsedUp { uses: 1 }));
        r.uses_consumed = 0;
        r.revoked = true;
        assert_eq!(r.check(&t, 1500), Err(TokenRejection::Revoked));
    }
}
